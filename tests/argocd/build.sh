#!/usr/bin/env bash
# Builds argocd-health (this folder's Go module, Argo CD v2.14's own Lua VM) once and prints
# the binary's path. The cache (../testbed/cached_build.sh) is keyed by go.mod, go.sum, main.go
# and the Go version, so a change to any of them builds anew.
#
# go.sum is committed and the build is -mod=readonly: every machine compiles the same module
# graph, and a go.mod edit without `go mod tidy` fails here rather than resolving afresh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0
# shellcheck source=../testbed/cached_build.sh
source "$here/../testbed/cached_build.sh"
build() {
  printf '[argocd-health-build] against Argo CD %s\n' \
    "$(awk '$1 == "github.com/argoproj/argo-cd/v2" {print $2; exit}' "$here/go.mod")" >&2
  (cd "$here" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$partial/argocd-health" .)
}
cached_build argocd-health argocd-health "$(cat "$here/go.mod" "$here/go.sum" "$here/main.go")"

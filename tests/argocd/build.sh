#!/usr/bin/env bash
# Builds argocd-health (this folder's Go module, Argo CD v2.14's own Lua VM) once and prints
# the binary's path. The cache folder is keyed by go.mod, go.sum, main.go and the Go version,
# so a change to any of them builds anew and a warm run only hashes four inputs.
#
# go.sum is committed and the build is -mod=readonly: every machine compiles the same module
# graph, and a go.mod edit without `go mod tidy` fails here rather than resolving afresh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0
cache=${RECSYS_CACHE:-$HOME/.cache/recsys-operator}
key=$( (cat "$here/go.mod" "$here/go.sum" "$here/main.go"; go version) | sha256sum | cut -c1-12)
out="$cache/argocd-health-$key"
bin="$out/argocd-health"
log() { printf '[argocd-health-build] %s\n' "$*" >&2; }

if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$out"
# One build at a time: a second caller waits for the first one's binary.
exec 9>"$cache/argocd-health.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
start=$(date +%s)
log "building against Argo CD $(awk '$1 == "github.com/argoproj/argo-cd/v2" {print $2; exit}' "$here/go.mod")"
(cd "$here" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
mv "$bin.tmp" "$bin"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"

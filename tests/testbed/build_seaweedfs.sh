#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (the testbed's S3-compatible artifact store, Apache-2.0) from its Go
# module once and prints the binary's path.
#
# Its pin lives here rather than in versions.env: that file keys the control plane's cache, and a
# SeaweedFS bump must not rebuild kube-apiserver. The cache (cached_build.sh) is keyed by this
# script (pin and flags) and the Go version.
#
# The module's go.mod carries a `replace`, which `go install module@version` refuses, so the
# binary is built inside the downloaded (read-only) module directory with -mod=readonly: its own
# go.mod and go.sum decide every dependency, nothing is resolved anew. No build tags: the optional
# filer stores (elastic, tikv, ydb, ...) stay out; the tests use the default embedded one.
set -euo pipefail
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6   # pseudo-version of the module's main branch
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0
# shellcheck source=cached_build.sh
source "$here/cached_build.sh"
build() {
  local dir commit=${SEAWEEDFS_VERSION##*-}
  dir=$(cd "$partial" && GOFLAGS=-mod=mod go mod download -json \
    "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  (cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "-s -w -X github.com/seaweedfs/seaweedfs/weed/util/version.COMMIT=$commit" \
    -o "$partial/weed" ./weed)
}
cached_build seaweedfs weed "$(cat "$here/build_seaweedfs.sh")"

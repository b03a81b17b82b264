#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (the testbed's S3-compatible artifact store, Apache-2.0) from its Go
# module once and prints the binary's path.
#
# Its pin lives here rather than in versions.env: that file keys the control plane's cache, and a
# SeaweedFS bump must not rebuild kube-apiserver. The cache folder is keyed by this script (pin
# and flags) and the Go version, so a warm run only hashes two inputs.
#
# The module's go.mod carries a `replace`, which `go install module@version` refuses, so the
# binary is built inside the downloaded (read-only) module directory with -mod=readonly: its own
# go.mod and go.sum decide every dependency, nothing is resolved anew. No build tags: the optional
# filer stores (elastic, tikv, ydb, ...) stay out; the tests use the default embedded one.
set -euo pipefail
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6   # pseudo-version of the module's main branch
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0
cache=${RECSYS_CACHE:-$HOME/.cache/recsys-operator}
key=$( (cat "$here/build_seaweedfs.sh"; go version) | sha256sum | cut -c1-12)
out="$cache/seaweedfs-$key"
bin="$out/weed"
log() { printf '[seaweedfs-build] %s\n' "$*" >&2; }

if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$out"
# One build at a time: a second caller waits for the first one's binary.
exec 9>"$cache/seaweedfs.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
start=$(date +%s)
log "building SeaweedFS weed ($SEAWEEDFS_VERSION)"
dir=$(cd "$out" && GOFLAGS=-mod=mod go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" |
  sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
commit=${SEAWEEDFS_VERSION##*-}
(cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath \
  -ldflags "-s -w -X github.com/seaweedfs/seaweedfs/weed/util/version.COMMIT=$commit" \
  -o "$out/.weed.partial" ./weed)
# Moved into place only when complete, so an interrupted build is never taken for a finished one.
mv "$out/.weed.partial" "$bin"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"

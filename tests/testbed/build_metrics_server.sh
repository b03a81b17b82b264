#!/usr/bin/env bash
# Builds metrics-server (sigs.k8s.io/metrics-server, Apache-2.0) from its Go module once and
# prints the binary's path: the resource metrics API (metrics.k8s.io) that the
# HorizontalPodAutoscaler controller reads a real node's pod CPU from (metrics_server.py).
#
# Its pin lives here rather than in versions.env, so a bump does not rebuild kube-apiserver. The
# cache folder is keyed by this script (pin and flags) and the Go version.
set -euo pipefail
METRICS_SERVER_VERSION=v0.8.0
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0
cache=${RECSYS_CACHE:-$HOME/.cache/recsys-operator}
key=$( (cat "$here/build_metrics_server.sh"; go version) | sha256sum | cut -c1-12)
out="$cache/metrics-server-$key"
bin="$out/metrics-server"
log() { printf '[metrics-server-build] %s\n' "$*" >&2; }

if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$out"
# One build at a time: a second caller waits for the first one's binary.
exec 9>"$cache/metrics-server.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
start=$(date +%s)
log "building metrics-server $METRICS_SERVER_VERSION"
GOBIN="$out/.partial" go install -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/metrics-server/pkg/version.gitVersion=$METRICS_SERVER_VERSION" \
  "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
# Moved into place only when complete, so an interrupted build is never taken for a finished one.
mv "$out/.partial/metrics-server" "$bin" && rmdir "$out/.partial"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"

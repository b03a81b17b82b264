#!/usr/bin/env bash
# Builds promtool (the chart's PrometheusRule is checked and unit-tested with it) from the same
# Prometheus Go module and version as build_prometheus.sh, once, and prints the binary's path.
#
# The pin is read out of build_prometheus.sh rather than repeated, so the two can never drift
# apart; the cache folder is keyed by this script, those pin lines and the Go version, so a
# Prometheus bump rebuilds promtool too. The same -tags as the server's build let the two share
# Go's build cache (most of the module graph is common), which makes this build short once the
# server is built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pins=$(grep -E '^PROMETHEUS_(VERSION|RELEASE)=' "$here/build_prometheus.sh")
eval "$pins"
: "${PROMETHEUS_VERSION:?build_prometheus.sh names no PROMETHEUS_VERSION}"
: "${PROMETHEUS_RELEASE:?build_prometheus.sh names no PROMETHEUS_RELEASE}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
cache=${RECSYS_CACHE:-$HOME/.cache/recsys-operator}
key=$( (cat "$here/build_promtool.sh"; echo "$pins"; go version) | sha256sum | cut -c1-12)
out="$cache/promtool-$key"
bin="$out/promtool"
log() { printf '[promtool-build] %s\n' "$*" >&2; }

if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$out"
# One build at a time: a second caller waits for the first one's binary.
exec 9>"$cache/promtool.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
start=$(date +%s)
log "building promtool $PROMETHEUS_RELEASE ($PROMETHEUS_VERSION)"
v=github.com/prometheus/common/version
GOBIN="$out/.gobin" go install -trimpath -tags remove_all_sd \
  -ldflags "-s -w -X $v.Version=$PROMETHEUS_RELEASE -X $v.Branch=HEAD -X $v.BuildUser=recsys-testbed -X $v.BuildDate=19700101-00:00:00" \
  "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
# Moved into place only when complete, so an interrupted build is never taken for a finished one.
mv "$out/.gobin/promtool" "$bin"
rmdir "$out/.gobin"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"

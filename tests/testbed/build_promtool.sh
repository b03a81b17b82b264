#!/usr/bin/env bash
# Builds promtool (the chart's PrometheusRule is checked and unit-tested with it) from the same
# Prometheus Go module and version as build_prometheus.sh, once, and prints the binary's path.
#
# The pin is read out of build_prometheus.sh rather than repeated, so the two can never drift
# apart; the cache (cached_build.sh) is keyed by this script, those pin lines and the Go version,
# so a Prometheus bump rebuilds promtool too. The same -tags as the server's build let the two
# share Go's build cache (most of the module graph is common), which makes this build short once
# the server is built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pins=$(grep -E '^PROMETHEUS_(VERSION|RELEASE)=' "$here/build_prometheus.sh")
eval "$pins"
: "${PROMETHEUS_VERSION:?build_prometheus.sh names no PROMETHEUS_VERSION}"
: "${PROMETHEUS_RELEASE:?build_prometheus.sh names no PROMETHEUS_RELEASE}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
# shellcheck source=cached_build.sh
source "$here/cached_build.sh"
build() {
  local v=github.com/prometheus/common/version
  GOBIN="$partial" go install -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X $v.Version=$PROMETHEUS_RELEASE -X $v.Branch=HEAD -X $v.BuildUser=recsys-testbed -X $v.BuildDate=19700101-00:00:00" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}
cached_build promtool promtool "$(cat "$here/build_promtool.sh"; echo "$pins")"

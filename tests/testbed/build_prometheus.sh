#!/usr/bin/env bash
# Builds Prometheus (the canary analysis' `prometheus` provider is tested against the real server)
# from its Go module once and prints the binary's path.
#
# Its pin lives here rather than in versions.env: that file keys the control plane's cache, and a
# Prometheus bump must not rebuild kube-apiserver. The cache (cached_build.sh) is keyed by this
# script (pin and flags) and the Go version.
#
# -tags remove_all_sd drops the cloud service discoveries (the tests scrape static targets only),
# which is most of the module graph and of the build time; without builtinassets the web UI is not
# embedded, and the HTTP API the provider queries is unaffected.
set -euo pipefail
PROMETHEUS_VERSION=v0.316.0   # the Go module's tag for Prometheus 3.16.0
PROMETHEUS_RELEASE=3.16.0     # what `prometheus --version` reports
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
# shellcheck source=cached_build.sh
source "$here/cached_build.sh"
build() {
  local v=github.com/prometheus/common/version
  GOBIN="$partial" go install -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X $v.Version=$PROMETHEUS_RELEASE -X $v.Branch=HEAD -X $v.BuildUser=recsys-testbed -X $v.BuildDate=19700101-00:00:00" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION"
}
cached_build prometheus prometheus "$(cat "$here/build_prometheus.sh")"

#!/usr/bin/env bash
# Builds metrics-server (sigs.k8s.io/metrics-server, Apache-2.0) from its Go module once and
# prints the binary's path: the resource metrics API (metrics.k8s.io) that the
# HorizontalPodAutoscaler controller reads a real node's pod CPU from (metrics_server.py).
#
# Its pin lives here rather than in versions.env, so a bump does not rebuild kube-apiserver; the
# cache (cached_build.sh) is keyed by this script (pin and flags) and the Go version.
set -euo pipefail
METRICS_SERVER_VERSION=v0.8.0
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0
# shellcheck source=cached_build.sh
source "$here/cached_build.sh"
build() {
  GOBIN="$partial" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/metrics-server/pkg/version.gitVersion=$METRICS_SERVER_VERSION" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
}
cached_build metrics-server metrics-server "$(cat "$here/build_metrics_server.sh")"

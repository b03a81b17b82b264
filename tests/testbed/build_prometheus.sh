#!/usr/bin/env bash
# Builds Prometheus (the canary analysis' `prometheus` provider is tested against the real server)
# from its Go module once and prints the binary's path.
#
# Its pin lives here rather than in versions.env: that file keys the control plane's cache, and a
# Prometheus bump must not rebuild kube-apiserver. The cache folder is keyed by this script (pin
# and flags) and the Go version, so a warm run only hashes two inputs.
#
# -tags remove_all_sd drops the cloud service discoveries (the tests scrape static targets only),
# which is most of the module graph and of the build time; without builtinassets the web UI is not
# embedded, and the HTTP API the provider queries is unaffected.
set -euo pipefail
PROMETHEUS_VERSION=v0.316.0   # the Go module's tag for Prometheus 3.16.0
PROMETHEUS_RELEASE=3.16.0     # what `prometheus --version` reports
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
cache=${RECSYS_CACHE:-$HOME/.cache/recsys-operator}
key=$( (cat "$here/build_prometheus.sh"; go version) | sha256sum | cut -c1-12)
out="$cache/prometheus-$key"
bin="$out/prometheus"
log() { printf '[prometheus-build] %s\n' "$*" >&2; }

if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$out"
# One build at a time: a second caller waits for the first one's binary.
exec 9>"$cache/prometheus.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
start=$(date +%s)
log "building Prometheus $PROMETHEUS_RELEASE ($PROMETHEUS_VERSION)"
v=github.com/prometheus/common/version
GOBIN="$out/.gobin" go install -trimpath -tags remove_all_sd \
  -ldflags "-s -w -X $v.Version=$PROMETHEUS_RELEASE -X $v.Branch=HEAD -X $v.BuildUser=recsys-testbed -X $v.BuildDate=19700101-00:00:00" \
  "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION"
# Moved into place only when complete, so an interrupted build is never taken for a finished one.
mv "$out/.gobin/prometheus" "$bin"
rmdir "$out/.gobin"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"

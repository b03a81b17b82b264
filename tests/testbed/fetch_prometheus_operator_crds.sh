#!/usr/bin/env bash
# Fetches the Prometheus Operator's CRDs for the kinds the chart renders (PodMonitor,
# ServiceMonitor, PrometheusRule) and prints the folder that holds them, so the chart's
# monitoring objects are validated by a real apiserver against the real schemas.
#
# They come from the prometheus-operator Go module: its zip carries
# example/prometheus-operator-crd/, the files the project's own releases are made from. Nothing
# is built; `go mod download` only unpacks the module into Go's module cache, and the three
# files are copied out of it into a folder keyed by the pin (the module cache is read-only and
# may be cleaned independently).
set -euo pipefail
PROMETHEUS_OPERATOR_VERSION=v0.89.0
KINDS="podmonitors servicemonitors prometheusrules"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
cache=${RECSYS_CACHE:-$HOME/.cache/recsys-operator}
out="$cache/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
log() { printf '[prometheus-operator-crds] %s\n' "$*" >&2; }

if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/prometheus-operator-crds.lock"
flock 9
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi
mkdir -p "$out"
module=github.com/prometheus-operator/prometheus-operator
dir=$(cd "$out" && go mod download -json "$module@$PROMETHEUS_OPERATOR_VERSION" |
  sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$dir/example/prometheus-operator-crd" ] || {
  log "$module@$PROMETHEUS_OPERATOR_VERSION has no example/prometheus-operator-crd/"; exit 1; }
for kind in $KINDS; do
  cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out/"
done
chmod u+w "$out"/*.yaml
touch "$out/.done"
log "$module@$PROMETHEUS_OPERATOR_VERSION: $(ls "$out"/*.yaml | wc -l) CRDs in $out"
echo "$out"

#!/usr/bin/env bash
# Builds the testbed's control plane from Go modules: kube-apiserver, kube-controller-manager,
# kube-scheduler (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3), kwok and helm; and, through
# tests/argocd/build.sh, argocd-health (`build.sh argocd` builds only that one), through
# build_prometheus.sh, Prometheus (`build.sh prometheus`), and through build_promtool.sh and
# fetch_prometheus_operator_crds.sh, promtool and the Prometheus Operator's CRDs for the chart's
# monitoring objects (`build.sh promtool`), and through build_seaweedfs.sh, SeaweedFS's `weed`, the
# S3-compatible artifact store (`build.sh seaweedfs`), and through build_metrics_server.sh,
# metrics-server, the resource metrics API for the autoscaler (`build.sh metrics-server`), and
# through build_coredns.sh, CoreDNS, the real node's cluster DNS (`build.sh coredns`). For the
# real node (real_node.py): kubelet and kube-proxy from the same kubernetes module, and a static
# `pause` (the pod sandbox's process) from pause.c (`build.sh realnode` builds only these three).
#
# No Docker and no release downloads are available here, but the Go module proxy is. The
# kubernetes module cannot be `go install`ed (its go.mod pins every staging module at v0.0.0
# and replaces it with a local path), so a throw-away wrapper module is written with a
# `replace` per staging module, derived from the downloaded go.mod rather than typed by hand.
#
# Output: one folder per pin set under $RECSYS_CACHE/bin/<key>/, printed on stdout at the end.
# A folder that is complete (has its .done stamp) is reused as is: warm runs take a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
cache=${RECSYS_CACHE:-$HOME/.cache/recsys-operator}
# Bump when the way binaries are built changes (flags, wrapper modules), so caches are rebuilt.
BUILD_REVISION=1
key=$( (cat "$here/versions.env"; echo "$BUILD_REVISION"; go version) | sha256sum | cut -c1-12)
out="$cache/bin/$key"
log() { printf '[testbed-build] %s\n' "$*" >&2; }

# argocd-health (Argo CD's Lua VM for the chart's health checks), Prometheus (the canary
# analysis' provider), promtool and the Prometheus Operator's CRDs (the chart's monitoring
# objects), SeaweedFS (the S3 artifact store), metrics-server and CoreDNS have their own cache keys and
# locks, so they are built before the control plane's early exit: a warm control-plane cache
# must not skip them.
case "${1:-all}" in
  realnode) ;;
  argocd) exec bash "$here/../argocd/build.sh";;
  prometheus) exec bash "$here/build_prometheus.sh";;
  promtool) bash "$here/fetch_prometheus_operator_crds.sh" >/dev/null; exec bash "$here/build_promtool.sh";;
  seaweedfs) exec bash "$here/build_seaweedfs.sh";;
  metrics-server) exec bash "$here/build_metrics_server.sh";;
  coredns) exec bash "$here/build_coredns.sh";;
  all) bash "$here/../argocd/build.sh" >/dev/null; bash "$here/build_prometheus.sh" >/dev/null
    bash "$here/build_promtool.sh" >/dev/null; bash "$here/fetch_prometheus_operator_crds.sh" >/dev/null
    bash "$here/build_seaweedfs.sh" >/dev/null; bash "$here/build_metrics_server.sh" >/dev/null
    bash "$here/build_coredns.sh" >/dev/null;;
esac

# The pod sandbox's process for the real node: a static binary from pause.c, cached by its hash.
build_pause() {
  local dir="$cache/bin/pause-$( (cat "$here/pause.c"; gcc --version | head -1) | sha256sum | cut -c1-12)"
  if [ ! -x "$dir/pause" ]; then
    mkdir -p "$dir"
    log "building pause"
    gcc -static -O2 -Wall -Werror -o "$dir/pause.tmp" "$here/pause.c" && strip "$dir/pause.tmp"
    mv "$dir/pause.tmp" "$dir/pause"
  fi
  ln -sfn "$dir/pause" "$out/pause"
}

# Complete: every binary of the set is there. kubelet and kube-proxy were added after the first
# caches were made; a cache with its .done stamp but without them builds only those two.
complete() { [ -f "$out/.done" ] && [ -x "$out/kubelet" ] && [ -x "$out/kube-proxy" ] && [ -x "$out/pause" ]; }
if complete; then echo "$out"; exit 0; fi
mkdir -p "$out" "$cache/src"
# One build at a time: concurrent test runs wait for the first one instead of compiling twice.
exec 9>"$cache/build.lock"
flock 9
if complete; then echo "$out"; exit 0; fi
start=$(date +%s)

build_kubernetes() {
  local v=$KUBERNETES_VERSION minor src mod
  minor=$(echo "$v" | cut -d. -f2)
  src="$cache/src/kubernetes-$v"; mkdir -p "$src"
  mod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module recsys.dev/testbed/kubernetes"
    grep -E '^go ' "$mod"
    grep -E '^godebug ' "$mod" || true
    echo "require k8s.io/kubernetes $v"
    # Every staging module is listed at v0.0.0: replace each with its real release (1.X.Y <-> v0.X.Y).
    awk '/^\t(k8s\.io\/[a-z0-9-]+) v0\.0\.0$/ {print $1}' "$mod" | sort -u |
      while read -r m; do echo "replace $m => $m v0.${v#v1.}"; done
  } > "$src/go.mod"
  log "kubernetes $v: $(grep -c '^replace' "$src/go.mod") staging modules replaced"
  # kubectl too: the one on a developer's PATH may be several minors away from this apiserver.
  local pkgs="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy"
  (cd "$src" && printf 'package tools\nimport (\n' > tools.go &&
     for p in $pkgs; do printf '\t_ "%s"\n' "$p" >> tools.go; done && printf ')\n' >> tools.go &&
     sed -i '1i //go:build tools' tools.go && go mod tidy >/dev/null 2>&1 || go mod tidy)
  local vb=k8s.io/component-base/version cb=k8s.io/client-go/pkg/version ld="-s -w"
  for pkgv in $vb $cb; do
    ld="$ld -X $pkgv.gitVersion=$v -X $pkgv.gitMajor=1 -X $pkgv.gitMinor=$minor -X $pkgv.gitTreeState=clean -X $pkgv.buildDate=1970-01-01T00:00:00Z"
  done
  for p in $pkgs; do
    [ -x "$out/$(basename "$p")" ] && continue
    log "building $(basename "$p")"
    (cd "$src" && go build -trimpath -ldflags "$ld" -o "$out/$(basename "$p")" "$p")
  done
}

build_etcd() {
  [ -x "$out/etcd" ] && return 0
  local src="$cache/src/etcd-$ETCD_VERSION"; mkdir -p "$src"
  cat > "$src/main.go" <<'GO'
// Command etcd runs the etcd server; a wrapper because etcd's own module cannot be go-installed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  printf 'module recsys.dev/testbed/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$src/go.mod"
  (cd "$src" && go mod tidy && log "building etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
}

build_installable() {  # name module@version [ldflags]
  [ -x "$out/$1" ] && return 0
  log "building $1"
  GOBIN="$out" go install -trimpath -ldflags "-s -w ${3:-}" "$2"
}

what=${1:-all}
case "$what" in all|kubernetes|realnode) build_kubernetes;; esac
case "$what" in all|realnode) build_pause;; esac
case "$what" in all|etcd) build_etcd;; esac
case "$what" in all|kwok)
  build_installable kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  # The standalone kwok has no built-in stages: keep the module's "fast" node and pod stages.
  kwok_dir=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION
  mkdir -p "$out/kwok-stages"
  for s in node/fast pod/fast; do cp "$kwok_dir/kustomize/stage/$s/"*.yaml "$out/kwok-stages/"; done
  chmod u+w "$out/kwok-stages/"*;;
esac
case "$what" in all|helm) build_installable helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION";; esac
if [ "$what" = all ]; then
  touch "$out/.done"
  log "built in $(( $(date +%s) - start )) s: $(du -sh "$out" | cut -f1)"
  ls -l "$out" >&2
fi
echo "$out"

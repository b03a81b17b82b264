#!/usr/bin/env bash
# Builds CoreDNS (github.com/coredns/coredns, Apache-2.0), the real node's cluster DNS
# (cluster_dns.py), from its Go module once and prints the binary's path.
#
# Only the plugins the testbed's Corefile names are compiled in, the way CoreDNS documents
# custom builds (a main package that imports coremain and the chosen plugins and sets the
# directive order): the stock binary's cloud DNS back ends (Route 53, Azure, Cloud DNS) pull in
# three cloud SDKs that nothing here uses. The wrapper module requires nothing but CoreDNS, so
# every other version comes from CoreDNS's own go.mod. Its pin lives here; the cache
# (cached_build.sh) is keyed by this script and the Go version.
set -euo pipefail
COREDNS_VERSION=v1.15.0
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
# shellcheck source=cached_build.sh
source "$here/cached_build.sh"
build() {
  local src="$partial/src"
  mkdir -p "$src"
  cat > "$src/main.go" <<'GO'
// CoreDNS with the testbed's plugins only (tests/testbed/build_coredns.sh).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order CoreDNS's plugin.cfg gives these plugins: a query meets them in this order.
func init() {
	dnsserver.Directives = []string{"bind", "ready", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
  (cd "$src" && go mod init recsys.dev/testbed/coredns 2>/dev/null \
    && go get "github.com/coredns/coredns@$COREDNS_VERSION" && go mod tidy \
    && go build -trimpath -ldflags "-s -w" -o "$partial/coredns" .) >&2
}
cached_build coredns coredns "$(cat "$here/build_coredns.sh")"

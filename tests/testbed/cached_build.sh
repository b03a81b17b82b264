# Sourced by the testbed's one-binary build scripts (metrics-server, CoreDNS, SeaweedFS, promtool):
# the cache folder, the lock and the move into place that each of them needs, written once.
#
#   source "$here/cached_build.sh"
#   build() { go install ... ; }          # writes "$partial/<binary>"
#   cached_build <name> <binary> "$(cat "$0")"
#
# The folder is $RECSYS_CACHE/<name>-<key>, keyed by the text given (the calling script, so its
# pin and flags; promtool adds the pins it reads elsewhere) and the Go version. A finished binary
# is printed at once; otherwise one build at a time runs `build` (a second caller waits on the
# lock and takes the first one's binary), and the binary is moved into place only when complete,
# so an interrupted build is never taken for a finished one.
cached_build() {
  local name=$1 binary=$2 key_text=$3
  local cache=${RECSYS_CACHE:-$HOME/.cache/recsys-operator}
  local key out bin start
  key=$( (printf '%s\n' "$key_text"; go version) | sha256sum | cut -c1-12)
  out="$cache/$name-$key"
  bin="$out/$binary"
  if [ -x "$bin" ]; then echo "$bin"; return 0; fi
  mkdir -p "$out"
  exec 9>"$cache/$name.lock"
  flock 9
  if [ -x "$bin" ]; then echo "$bin"; return 0; fi
  start=$(date +%s)
  printf '[%s-build] building\n' "$name" >&2
  partial="$out/.partial"
  rm -rf "$partial" && mkdir -p "$partial"
  build
  mv "$partial/$binary" "$bin" && rm -rf "$partial"
  printf '[%s-build] built in %s s: %s\n' "$name" "$(( $(date +%s) - start ))" "$bin" >&2
  echo "$bin"
}

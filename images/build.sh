#!/usr/bin/env bash
# Builds the project's container images with podman (`make images` calls it).
#
#   images/build.sh [NAME...]   build the named images (default: all), in dependency order
#   images/build.sh tags        print NAME=REFERENCE for every image, as the chart defaults them
#   images/build.sh inputs NAME the files NAME is built from; hash NAME: its inputs hash
#   images/build.sh base        only the base image
#   images/build.sh lock [VENV] rewrite images/constraints.txt from a virtual environment
#
# Names and tags come from the chart: the tag is Chart.yaml's appVersion and the registry is
# the directory of values.yaml's image.repository, so `make images`, the chart's defaults and the
# operator's built-in defaults (recsys_operator.images) name the same references.
#
# Caching: every image carries the label dev.recsys.inputs, a hash of the files it is built
# from plus its build arguments and revision label and its base's identity (the base image's
# ID, or for the Triton image built FROM the trainer, the trainer's hash). An image that already
# carries the hash is not rebuilt. The wheels pip downloads are kept on the host
# (CACHE_DIR/pip), so a rebuild downloads nothing it had.
#
# Environment:
#   BASE             base image of operator, workloads and trainer. Unset: a Debian bookworm root
#                    made with debootstrap and imported as localhost/recsys-base:<hash> (no base
#                    image needs pulling). Elsewhere: python:3.11-slim-bookworm, the default of
#                    the Containerfiles.
#   TRITON_BASE      base of recsys-triton; for production nvcr.io/nvidia/tritonserver:<ver>-py3
#                    (its own tritonserver is used). Unset: recsys-trainer (so the two share
#                    their torch layers), with the nvidia-pytriton wheel's tritonserver.
#   TORCH_INDEX_URL  where torch comes from. Unset: PyTorch's CPU-only index when it answers,
#                    else the default index (whose Linux torch carries the CUDA libraries).
#   CACHE_DIR        default ~/.cache/recsys-operator/images
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/recsys-operator/images}
IMAGES=(operator workloads trainer triton)
CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
SOURCE_URL=https://github.com/recsys-dev/recsys-operator
# Flags this machine's podman needs (crun refuses hybrid cgroups; the default rlimits exceed
# the hard limits) and that are harmless elsewhere.
PODMAN_FLAGS=(--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=9000:9000)
HOST_CA=/etc/ssl/certs/ca-certificates.crt

log() { echo "images: $*" >&2; }

version() { sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$ROOT/charts/recsys-operator/Chart.yaml"; }

registry() {
  # image.repository in values.yaml, less its last path component
  local repo
  repo=$(awk '/^image:/ {in_image=1; next} /^[^ #]/ {in_image=0}
              in_image && $1 == "repository:" {print $2; exit}' "$ROOT/charts/recsys-operator/values.yaml")
  echo "${repo%/*}"
}

ref() { echo "$(registry)/recsys-$1:$(version)"; }

tags() { local n; for n in "${IMAGES[@]}"; do echo "$n=$(ref "$n")"; done; }

need_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v runc >/dev/null || missing+=(runc)
  [ -n "${BASE:-}" ] || command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} = 0 ] && return
  log "installing ${missing[*]} (Debian)"
  local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- base --------------------------------------------------------------------------------------
# Debian's own mirror, as apt on this machine is configured (the first URIs: line).
mirror() {
  local m
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  echo "${m:-http://deb.debian.org/debian}"
}

# python3-venv: the images' environments; libpython3.11: the Triton python backend's stub
# embeds the interpreter as a shared library.
BASE_PACKAGES=python3,python3-venv,libpython3.11,ca-certificates
base_image() {
  if [ -n "${BASE:-}" ]; then echo "$BASE"; return; fi
  local key tag tarball
  key=$(printf 'bookworm minbase %s %s\n' "$BASE_PACKAGES" "$(mirror)" | sha256sum | cut -c1-12)
  tag=localhost/recsys-base:$key
  if ! podman image exists "$tag"; then
    tarball=$CACHE_DIR/base-$key.tar
    if [ ! -f "$tarball" ]; then
      log "debootstrap bookworm ($BASE_PACKAGES) from $(mirror)"
      local dir; dir=$(mktemp -d "$CACHE_DIR/base-XXXX")
      debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$dir" "$(mirror)" >"$dir.log" 2>&1 \
        || { tail -20 "$dir.log" >&2; rm -rf "$dir"; exit 1; }
      # apt's lists and caches are not part of the base
      rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
      tar -C "$dir" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
      rm -rf "$dir" "$dir.log"
    fi
    podman import --change 'CMD ["/usr/bin/python3"]' "$tarball" "$tag" >/dev/null
  fi
  echo "$tag"
}

# --- images ------------------------------------------------------------------------------------
# Files each image is built from (relative to the repository root); the .dockerignore's
# exclusions (__pycache__, *.egg-info, build/) apply to the hash too.
COMMON=(pyproject.toml README.md contract images/constraints.txt images/requirements.py .dockerignore)
inputs() {
  case $1 in
    operator) echo "${COMMON[@]}" operator images/operator/Containerfile ;;
    workloads) echo "${COMMON[@]}" workloads images/workloads/Containerfile ;;
    trainer) echo "${COMMON[@]}" workloads images/trainer/Containerfile ;;
    triton) echo "${COMMON[@]}" workloads images/triton/Containerfile ;;
  esac
}

content_hash() {
  # $1: image name; the rest: build arguments that shape the image
  local name=$1; shift
  # shellcheck disable=SC2046
  {
    (cd "$ROOT" && find $(inputs "$name") -type f \
        -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -not -path '*/build/*' \
        -not -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    printf '%s\n' "$@"
  } | sha256sum | cut -c1-16
}

revision() {
  # the last commit that changed the image's inputs (+ "-dirty" when the tree differs from it)
  local name=$1 rev
  # shellcheck disable=SC2046
  rev=$(cd "$ROOT" && git log -1 --format=%H -- $(inputs "$name") 2>/dev/null || true)
  # shellcheck disable=SC2046
  if [ -n "$rev" ] && [ -n "$(cd "$ROOT" && git status --porcelain -- $(inputs "$name"))" ]; then
    rev="$rev-dirty"
  fi
  echo "${rev:-unknown}"
}

label_of() { podman image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null || true; }

torch_index() {
  if [ -n "${TORCH_INDEX_URL+x}" ]; then echo "$TORCH_INDEX_URL"; return; fi
  if python3 - "$CPU_TORCH_INDEX" <<'PY' 2>/dev/null; then echo "$CPU_TORCH_INDEX"; else echo ""; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5).read(64)
PY
}

# The image NAME is built FROM.
base_of() {
  case $1 in
    # NVIDIA's Triton for production; here the trainer, whose torch and venv it then shares
    triton) echo "${TRITON_BASE:-$(ref trainer)}" ;;
    *) base_image ;;
  esac
}

# The build arguments that shape NAME (REVISION and SOURCE only label it).
args_of() {
  local name=$1 base=$2
  printf '%s\n' --build-arg "BASE=$base" --build-arg "VERSION=$(version)"
  case $name in
    trainer | triton) printf '%s\n' --build-arg "TORCH_INDEX_URL=${TORCH_INDEX=$(torch_index)}" ;;
  esac
}

# The inputs hash of NAME built FROM base: its files, its arguments and the base's identity
# (an image of ours as base is identified by its inputs hash, as its ID changes each build).
hash_of() {
  local name=$1 base=$2 from_id
  if [ "$name" = triton ] && [ -z "${TRITON_BASE:-}" ]; then
    from_id=$(label_of "$base" dev.recsys.inputs)
  else
    from_id=$(podman image inspect --format '{{.Id}}' "$base" 2>/dev/null) || {
      log "pulling $base"; podman pull -q "$base" >/dev/null
      from_id=$(podman image inspect --format '{{.Id}}' "$base"); }
  fi
  local args; mapfile -t args < <(args_of "$name" "$base")
  # the revision label too: committing the files an image was built from relabels it (only
  # the last layers are rebuilt; the Containerfiles declare REVISION at their end)
  content_hash "$name" "$from_id" "${args[@]}" "$(revision "$name")"
}

build_one() {
  local name=$1 tag base hash args
  tag=$(ref "$name")
  base=$(base_of "$name")
  hash=$(hash_of "$name" "$base")
  if [ "$(label_of "$tag" dev.recsys.inputs)" = "$hash" ]; then
    log "$tag is up to date ($hash)"
    return
  fi
  log "building $tag ($hash) from $base"
  mapfile -t args < <(args_of "$name" "$base")
  mkdir -p "$CACHE_DIR/pip"
  local start=$SECONDS volumes=(-v "$CACHE_DIR/pip:/var/cache/host-pip")
  [ -f "$HOST_CA" ] && volumes+=(-v "$HOST_CA:$HOST_CA:ro")
  podman build "${PODMAN_FLAGS[@]}" --network host "${volumes[@]}" \
    -f "images/$name/Containerfile" -t "$tag" \
    "${args[@]}" --build-arg HOST_PIP_CACHE=/var/cache/host-pip \
    --build-arg "REVISION=$(revision "$name")" --build-arg "SOURCE=$SOURCE_URL" \
    --label "dev.recsys.inputs=$hash" \
    "$ROOT" >"$CACHE_DIR/build-$name.log" 2>&1 \
    || { tail -40 "$CACHE_DIR/build-$name.log" >&2; log "$name failed: $CACHE_DIR/build-$name.log"; exit 1; }
  log "built $tag in $((SECONDS - start)) s"
}

build() {
  need_tools
  mkdir -p "$CACHE_DIR"
  local wanted=("$@") n
  [ ${#wanted[@]} = 0 ] && wanted=("${IMAGES[@]}")
  # what an image is built FROM is built first
  if printf '%s\n' "${wanted[@]}" | grep -qx triton && [ -z "${TRITON_BASE:-}" ]; then
    wanted+=(trainer)
  fi
  for n in "${IMAGES[@]}"; do
    printf '%s\n' "${wanted[@]}" | grep -qx "$n" && build_one "$n"
  done
  return 0
}

lock() {
  # Every distribution of the development environment, pinned. pip installs with -c, so an
  # image gets exactly these versions of whatever it needs; requirements.py check then fails
  # the build if anything it installed is missing here.
  local venv=${1:-$ROOT/.venv}
  {
    # Needed in an image but not in the development environment: redis needs async-timeout
    # on Python < 3.11.3 (Debian bookworm's python3 is 3.11.2).
    local extra=(async-timeout==5.0.1)
    echo "# Pins for every image build (pip install -c). Generated by \`images/build.sh lock\`"
    echo "# from the development environment (pip freeze --all); regenerate after changing"
    echo "# pyproject.toml's dependencies."
    "$venv/bin/python" -m pip freeze --all --exclude-editable 2>/dev/null \
      | grep -v '^#' | grep -v '^-e ' | grep -iv '^recsys-operator==' \
      | cat - <(printf '%s\n' "${extra[@]}") | LC_ALL=C sort -fu
  } >"$ROOT/images/constraints.txt"
  log "wrote images/constraints.txt ($(grep -vc '^#' "$ROOT/images/constraints.txt") pins)"
}

cd "$ROOT"
case ${1:-all} in
  tags) tags ;;
  inputs) inputs "$2" | tr ' ' '\n' ;;
  hash) hash_of "$2" "$(base_of "$2")" ;;
  base) need_tools; mkdir -p "$CACHE_DIR"; base_image ;;
  lock) lock "${2:-}" ;;
  all) build ;;
  *) build "$@" ;;
esac

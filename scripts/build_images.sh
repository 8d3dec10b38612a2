#!/usr/bin/env bash
# Build the container images of stratopt with podman, without any container registry:
#   localhost/debian-base:bookworm-<hash>   Debian bookworm minbase, made with debootstrap from the machine's mirror
#   localhost/stratopt:<hash>               the service (Containerfile)
#   localhost/stratopt-timescaledb:<hash>   PostgreSQL 15 + TimescaleDB (containers/timescaledb.Containerfile)
# Each tag is a content hash of what goes into the image, so a second run with nothing changed does nothing
# (a few seconds), and a changed source file gives a new tag. The final lines of standard output are
#   STRATOPT_IMAGE=...  and  TIMESCALEDB_IMAGE=...  (eval-able).
#
# Usage: bash scripts/build_images.sh [--print-only]
#   --print-only  print the tags the current sources would get, build nothing.
#
# podman runs with the project's own configuration only; the machine's container configuration is never read
# for anything this script sets and never written:
#   CONTAINERS_CONF=containers/containers.conf (runtime runc, default_ulimits = [] because this machine uses
#   cgroups v1 and forbids raising rlimits, cgroupfs, file event log), storage under $STRATOPT_PODMAN_DIR
#   (default .cache/podman: --root/--runroot). Builds use --network host; the machine's CA bundle
#   ($SSL_CERT_FILE, when set) is a build secret, mounted read-only at /run/build-ca/ca.pem only in the pip and
#   uv steps (which name it in SSL_CERT_FILE, PIP_CERT, REQUESTS_CA_BUNDLE) and never copied into an image. Environment: STRATOPT_DEBIAN_MIRROR overrides the mirror read from /etc/apt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/podman_env.sh
source scripts/podman_env.sh

print_only=0
[ "${1:-}" = "--print-only" ] && print_only=1

log() { echo "build_images: $*" >&2; }

hash_files() { # sha256sum lines (content + name) of the given files and directories, sorted, no caches
  find "$@" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
}

mirror="${STRATOPT_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -n1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi
mirror="${mirror%/}"

base_tag="bookworm-$(printf 'minbase bookworm %s v1\n' "$mirror" | sha256sum | cut -c1-16)"
BASE_IMAGE="localhost/debian-base:${base_tag}"
# The base image's tag enters the other tags, so a new base rebuilds both images.
STRATOPT_IMAGE="localhost/stratopt:$( (echo "$base_tag"; hash_files Containerfile .containerignore pyproject.toml \
  uv.lock README.md services command_side query_side stratopt_cli proto migrations) | sha256sum | cut -c1-16)"
TIMESCALEDB_IMAGE="localhost/stratopt-timescaledb:$( (echo "$base_tag"; hash_files containers/timescaledb.Containerfile \
  containers/timescaledb-entrypoint.sh scripts/install_timescaledb.sh) | sha256sum | cut -c1-16)"

if [ "$print_only" -eq 0 ]; then
  command -v podman >/dev/null || { log "podman is missing (scripts/setup.sh installs it)"; exit 1; }

  if ! stratopt_podman image exists "$BASE_IMAGE"; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing (scripts/setup.sh installs it)"; exit 1; }
    start=$SECONDS
    rootfs="$STRATOPT_PODMAN_DIR/rootfs.$$"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$STRATOPT_PODMAN_DIR/debootstrap.log" 2>&1 ||
      { tail -20 "$STRATOPT_PODMAN_DIR/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | stratopt_podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "built $BASE_IMAGE in $((SECONDS - start)) s"
  fi

  build_args=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE" --layers)
  if [ -n "${SSL_CERT_FILE:-}" ] && [ -f "$SSL_CERT_FILE" ]; then
    # A build secret: mounted read-only at /run/build-ca/ca.pem in the RUN steps that ask for it, never stored.
    build_args+=(--secret "id=build-ca,src=$(readlink -f "$SSL_CERT_FILE")")
  fi
  for spec in "$STRATOPT_IMAGE|Containerfile" "$TIMESCALEDB_IMAGE|containers/timescaledb.Containerfile"; do
    image="${spec%%|*}"
    file="${spec#*|}"
    if stratopt_podman image exists "$image"; then
      log "$image is current"
      continue
    fi
    start=$SECONDS
    log "building $image from $file"
    build_log="$STRATOPT_PODMAN_DIR/build-$(basename "${image%%:*}").log"
    stratopt_podman build "${build_args[@]}" -f "$file" -t "$image" . >"$build_log" 2>&1 ||
      { tail -40 "$build_log" >&2; exit 1; }
    log "built $image in $((SECONDS - start)) s"
    # Older tags of the same image in the project's storage are superseded: drop them and dangling layers.
    stratopt_podman images --format '{{.Repository}}:{{.Tag}}' "${image%%:*}" | grep -vxF "$image" |
      xargs -r "${STRATOPT_PODMAN_CMD[@]}" rmi -f >/dev/null 2>&1 || true
    stratopt_podman image prune -f >/dev/null 2>&1 || true
  done
fi

echo "BASE_IMAGE=$BASE_IMAGE"
echo "STRATOPT_IMAGE=$STRATOPT_IMAGE"
echo "TIMESCALEDB_IMAGE=$TIMESCALEDB_IMAGE"

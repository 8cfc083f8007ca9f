#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the gallery tests and print its SQLAlchemy URL.
#
#   export NOISECRAFT_TEST_POSTGRES=$(bash scripts/start_postgres.sh)
#
# Uses Debian's server binaries (/usr/lib/postgresql/*/bin, the newest), listens on 127.0.0.1 only,
# and makes the user `noisecraft` (password `noisecraft`) owning the database `noisecraft_test`.
# Run as root it runs the server as the `postgres` user. Safe to run again: a server already up in
# the same folder is reused. Only the URL goes to stdout (its last line); the chatter goes to stderr.
# Durability is switched off (fsync=off): this server is for tests, never for pictures you keep.
#
# Settings (environment): NOISECRAFT_PG_DIR (default /tmp/noisecraft-pg), NOISECRAFT_PG_PORT (54329).
# Stop it with: pg_ctl -D "$NOISECRAFT_PG_DIR/data" stop (as the same user).
set -euo pipefail

DIR=${NOISECRAFT_PG_DIR:-/tmp/noisecraft-pg}
PORT=${NOISECRAFT_PG_PORT:-54329}
ROLE=noisecraft
PASSWORD=noisecraft
DB=noisecraft_test

say() { echo "start_postgres: $*" >&2; }

BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$BIN" ] && command -v pg_config >/dev/null; then BIN=$(pg_config --bindir); fi
if [ -z "$BIN" ] || [ ! -x "$BIN/postgres" ]; then
    say "no PostgreSQL server found; install it (apt-get install postgresql)"
    exit 1
fi

# As root, run everything as `postgres` (initdb refuses root); otherwise as ourselves.
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    as_pg() { runuser -u postgres -- "$@"; }
    mkdir -p "$DIR"
    chown postgres "$DIR"
else
    as_pg() { "$@"; }
    mkdir -p "$DIR"
fi
chmod 700 "$DIR"
DATA=$DIR/data

psql_admin() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres "$@"; }

if ! as_pg "$BIN/pg_isready" -q -h "$DIR" -p "$PORT"; then
    if [ ! -s "$DATA/PG_VERSION" ]; then
        rm -rf "$DATA"
        say "initdb in $DATA"
        as_pg "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync >&2
        # Local socket: trust (the admin steps below); TCP from 127.0.0.1: password.
        as_pg sh -c "printf '%s\n' 'local all all trust' 'host all all 127.0.0.1/32 scram-sha-256' > '$DATA/pg_hba.conf'"
    fi
    say "starting $BIN/postgres on 127.0.0.1:$PORT"
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >&2 || { cat "$DIR/server.log" >&2; exit 1; }
fi

if [ "$(psql_admin -tA -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"
fi
if [ "$(psql_admin -tA -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
fi

echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"

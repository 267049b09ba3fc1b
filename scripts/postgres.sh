#!/usr/bin/env bash
# Starts a throw-away PostgreSQL on 127.0.0.1 for the test suite and prints
# its URL; `stop` shuts it down and removes its data.
#
#   url=$(scripts/postgres.sh start)
#   PLUGIND_TEST_POSTGRES_URL=$url cargo test --test store --test api_management
#   scripts/postgres.sh stop
#
# PLUGIND_PG_DIR (default /tmp/plugind-pg) and PLUGIND_PG_PORT (default 55432)
# choose where and on which port. Debian's postgresql package is installed
# when no initdb/pg_ctl is found. initdb refuses to run as root, so as root
# the server runs as the `postgres` user (created if missing).
set -euo pipefail

DIR="${PLUGIND_PG_DIR:-/tmp/plugind-pg}"
PORT="${PLUGIND_PG_PORT:-55432}"
DATA="$DIR/data"

find_bin() {
    local name=$1 candidate
    for candidate in "$(command -v "$name" 2>/dev/null || true)" /usr/local/bin/"$name" /usr/lib/postgresql/*/bin/"$name"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_binaries() {
    if ! find_bin initdb >/dev/null || ! find_bin pg_ctl >/dev/null; then
        echo "installing postgresql…" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    fi
    INITDB=$(find_bin initdb)
    PG_CTL=$(find_bin pg_ctl)
}

# Runs a command as the server's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown -R postgres "$DIR"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    ensure_binaries
    if [ -f "$DATA/postmaster.pid" ]; then
        echo "postgres://postgres@127.0.0.1:$PORT/postgres"
        return 0
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    as_owner "$INITDB" -D "$DATA" -U postgres --auth=trust --no-sync -E UTF8 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
    as_owner "$PG_CTL" -D "$DATA" -l "$DIR/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off" start >&2 \
        || { cat "$DIR/server.log" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$PORT/postgres"
}

stop() {
    if [ -f "$DATA/postmaster.pid" ]; then
        ensure_binaries
        as_owner "$PG_CTL" -D "$DATA" -m fast -w stop >&2 || true
    fi
    rm -rf "$DIR"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "postgres://postgres@127.0.0.1:$PORT/postgres" ;;
    *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Start (idempotently) the Postgres and Redis servers the test suite runs against.
# Both come from Debian packages, listen on loopback only, and keep their data in a
# temporary folder, so nothing on the machine's own services is touched.
#
#   scripts/services.sh start   install if missing, start if not running, print the env
#   scripts/services.sh stop    stop both servers
#   scripts/services.sh env     print the TRIFECTA_TEST_* variables for the running servers
set -euo pipefail

PG_PORT="${TRIFECTA_PG_PORT:-54329}"
REDIS_PORT="${TRIFECTA_REDIS_PORT:-63799}"
STATE_DIR="${TRIFECTA_SERVICES_DIR:-${TMPDIR:-/tmp}/trifecta-services-$(id -u)}"
PG_DATA="$STATE_DIR/pgdata"
PG_USER=trifecta
PG_DB=trifecta

log() { echo "services: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to install Debian packages ($*)"; exit 1; fi
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null && as_root apt-get install -y -q --no-install-recommends "$@" >/dev/null
  }
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

ensure_packages() {
  if [ -z "$(pg_bin)" ]; then log "installing postgresql"; apt_install postgresql; fi
  if ! command -v redis-server >/dev/null; then log "installing redis-server"; apt_install redis-server; fi
}

# Postgres refuses to run as root; run it as the Debian package's 'postgres' user then.
run_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin; bin=$(pg_bin)
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then return; fi
  mkdir -p "$STATE_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres "$STATE_DIR"; chmod 755 "$STATE_DIR"; fi
  if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    log "initialising Postgres in $PG_DATA"
    run_pg "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  log "starting Postgres on 127.0.0.1:$PG_PORT"
  run_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$STATE_DIR/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $STATE_DIR -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null
  local psql="$bin/psql -h 127.0.0.1 -p $PG_PORT -U postgres -v ON_ERROR_STOP=1 -q -t"
  if [ -z "$($psql -c "select 1 from pg_roles where rolname='$PG_USER'")" ]; then
    $psql -c "create role $PG_USER login superuser password '$PG_USER'" >/dev/null
  fi
  if [ -z "$($psql -c "select 1 from pg_database where datname='$PG_DB'")" ]; then
    $psql -c "create database $PG_DB owner $PG_USER" >/dev/null
  fi
}

start_redis() {
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
  mkdir -p "$STATE_DIR/redis"
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
    --dir "$STATE_DIR/redis" --logfile "$STATE_DIR/redis.log" --pidfile "$STATE_DIR/redis.pid"
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  log "Redis did not answer; see $STATE_DIR/redis.log"; exit 1
}

print_env() {
  echo "export TRIFECTA_TEST_POSTGRES_URL=postgresql+psycopg://$PG_USER:$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
  echo "export TRIFECTA_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

case "${1:-start}" in
  start) ensure_packages; start_postgres; start_redis; print_env ;;
  stop)
    bin=$(pg_bin || true)
    [ -n "$bin" ] && [ -d "$PG_DATA" ] && run_pg "$bin/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac

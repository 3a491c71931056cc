#!/usr/bin/env bash
# DeepTrace demo / accuracy-benchmark workload (issue #6). See docs/workload.md.
#
#   workload/run.sh up            install deps, build, start backends + services
#   workload/run.sh down          stop everything started by `up`
#   workload/run.sh status        show what runs (exit 1 if something is down)
#   workload/run.sh load [args]   run the load generator against the gateway
#   workload/run.sh check [args]  check the ground-truth logs for consistency
#   workload/run.sh truth-reset   empty the truth logs (do it while idle)
#   workload/run.sh bench [secs]  loadgen at concurrency 1, 8, 32, 128 + check
#
# Environment:
#   DEEPTRACE_STATE                state root (default <repo>/.state); ours is $DEEPTRACE_STATE/workload
#   DEEPTRACE_WORKLOAD_PORT_BASE   first service port (default 18080); services use base+0..5
#   DEEPTRACE_WORKLOAD_REDIS       use this Redis (host:port or redis:// URL) instead of starting one
#   DEEPTRACE_WORKLOAD_PG          use this PostgreSQL DSN instead of starting a cluster
#   DEEPTRACE_WORKLOAD_TRUTH       ground-truth directory (default $state/workload/truth)
#   DEEPTRACE_WORKLOAD_KEEP_TRUTH  1 = `up` keeps existing truth logs (default: emptied)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
STATE_ROOT="${DEEPTRACE_STATE:-$REPO/.state}"
WL="$STATE_ROOT/workload"
TRUTH="${DEEPTRACE_WORKLOAD_TRUTH:-$WL/truth}"
BASE="${DEEPTRACE_WORKLOAD_PORT_BASE:-18080}"

# name:lang:port-offset, in start order (callees first).
SERVICES=(ledger:node:5 inventory:go:3 catalog:node:2 payments:python:4 orders:python:1 gateway:go:0)
PY_SERVICES="orders payments"

log() { printf '[workload] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_of() { # service name -> port
  local s
  for s in "${SERVICES[@]}"; do
    IFS=: read -r n _ off <<<"$s"
    [[ $n == "$1" ]] && { echo $((BASE + off)); return; }
  done
  return 1
}

port_free() { # port -> 0 if nothing listens on 127.0.0.1:port
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
# SO_REUSEADDR as the servers set it: TIME_WAIT leftovers of a previous run do not count.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

free_port() { # a currently free loopback port, preferring $1
  if [[ -n ${1:-} ]] && port_free "$1"; then echo "$1"; return; fi
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port pid name: wait until the port accepts connections
  local port=$1 pid=$2 name=$3 i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited during start-up; last lines of $WL/logs/$name.log:"
      tail -n 30 "$WL/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  log "$name: port $port not ready after 30s"
  return 1
}

listener_pid() { # port -> pid of the process listening on it (or empty)
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}

alive() { [[ -f $WL/pids/$1.pid ]] && kill -0 "$(cat "$WL/pids/$1.pid")" 2>/dev/null; }

apt_install() { # packages...
  [[ $(id -u) -eq 0 ]] || die "need $* (apt-get install $*): run as root or install them"
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then # do not let the packages start their own daemons
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  mkdir -p /etc/postgresql-common
  [[ -e /etc/postgresql-common/createcluster.conf ]] || echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
  log "apt-get install $*"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >"$WL/logs/apt.log" 2>&1; then
    apt-get update >>"$WL/logs/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$WL/logs/apt.log" 2>&1 ||
      { [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d; die "apt-get install $* failed, see $WL/logs/apt.log"; }
  fi
  [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  return 0
}

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [[ -n $d && -x $d/initdb ]] && echo "$d"
}

# ---------------------------------------------------------------- install/build

install_deps() {
  mkdir -p "$WL"/{bin,logs,pids,node}
  # Go services.
  log "go build (workload/go) -> $WL/bin"
  (cd "$HERE/go" && go build -o "$WL/bin/" ./cmd/...) || die "go build failed"

  # Python venv.
  local want have
  want=$(cat "$HERE/python/requirements.txt" | sha256sum | cut -d' ' -f1)
  have=$(cat "$WL/venv/.stamp" 2>/dev/null || true)
  if [[ $want != "$have" ]]; then
    log "python venv + pip install -r workload/python/requirements.txt"
    [[ -x $WL/venv/bin/python ]] || python3 -m venv "$WL/venv"
    "$WL/venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/python/requirements.txt" >"$WL/logs/pip.log" 2>&1 ||
      die "pip install failed, see $WL/logs/pip.log"
    echo "$want" >"$WL/venv/.stamp"
  fi

  # Node modules (npm ci from the committed lock file, installed in the state dir).
  want=$(cat "$HERE/node/package.json" "$HERE/node/package-lock.json" | sha256sum | cut -d' ' -f1)
  have=$(cat "$WL/node/.stamp" 2>/dev/null || true)
  if [[ $want != "$have" ]]; then
    log "npm ci (workload/node/package-lock.json)"
    cp "$HERE/node/package.json" "$HERE/node/package-lock.json" "$WL/node/"
    (cd "$WL/node" && npm ci --omit=dev --no-audit --no-fund >"$WL/logs/npm.log" 2>&1) || die "npm ci failed, see $WL/logs/npm.log"
    echo "$want" >"$WL/node/.stamp"
  fi
}

# ---------------------------------------------------------------- backends

start_redis() {
  if [[ -n ${DEEPTRACE_WORKLOAD_REDIS:-} ]]; then
    REDIS_URL=$DEEPTRACE_WORKLOAD_REDIS
    [[ $REDIS_URL == *://* ]] || REDIS_URL="redis://$REDIS_URL/0"
    log "using Redis at $REDIS_URL"
    return
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  local port
  port=$(free_port $((BASE + 7)))
  mkdir -p "$WL/redis"
  (exec redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$WL/redis" \
    --protected-mode yes --daemonize no >>"$WL/logs/redis.log" 2>&1 </dev/null) &
  echo $! >"$WL/pids/redis.pid"
  wait_port "$port" "$!" redis || die "redis did not start"
  echo "$port" >"$WL/redis.port"
  REDIS_URL="redis://127.0.0.1:$port/0"
  log "redis-server on 127.0.0.1:$port (pid $(cat "$WL/pids/redis.pid"))"
}

pg_run() { # run a postgres binary as the unprivileged cluster owner
  if [[ $(id -u) -eq 0 ]]; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}

start_postgres() {
  if [[ -n ${DEEPTRACE_WORKLOAD_PG:-} ]]; then
    PG_DSN=$DEEPTRACE_WORKLOAD_PG
    log "using PostgreSQL at $PG_DSN"
    PSQL=(psql "$PG_DSN")
  else
    local bindir port data
    bindir=$(pg_bindir) || { apt_install postgresql; bindir=$(pg_bindir) || die "no PostgreSQL binaries after install"; }
    PG_OS_USER=$(id -un)
    if [[ $(id -u) -eq 0 ]]; then # postgres refuses to run as root
      PG_OS_USER=postgres
      id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
    fi
    data="$WL/pg"
    mkdir -p "$data"
    chown "$PG_OS_USER" "$data"
    if ! pg_run test -w "$data"; then # state dir not reachable by the postgres user
      data="/var/tmp/deeptrace-workload-pg-$(echo "$WL" | sha256sum | cut -c1-12)"
      mkdir -p "$data" && chown "$PG_OS_USER" "$data"
    fi
    echo "$data" >"$WL/pg.dir"
    mkdir -p "$data/run" && chown "$PG_OS_USER" "$data/run"
    if [[ ! -f $data/data/PG_VERSION ]]; then
      log "initdb $data/data"
      pg_run "$bindir/initdb" -D "$data/data" -U postgres --auth=trust -E UTF8 --no-sync >"$WL/logs/initdb.log" 2>&1 ||
        die "initdb failed, see $WL/logs/initdb.log"
    fi
    port=$(free_port $((BASE + 6)))
    touch "$WL/logs/postgres.log" && chown "$PG_OS_USER" "$WL/logs/postgres.log"
    pg_run "$bindir/pg_ctl" -D "$data/data" -l "$WL/logs/postgres.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$data/run -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=64MB -c max_connections=60" \
      >/dev/null || die "postgres did not start, see $WL/logs/postgres.log"
    head -n1 "$data/data/postmaster.pid" >"$WL/pids/postgres.pid"
    echo "$port" >"$WL/postgres.port"
    echo "$bindir" >"$WL/pg.bindir"
    log "postgres on 127.0.0.1:$port (pid $(cat "$WL/pids/postgres.pid"))"
    local psql=psql
    [[ -x $bindir/psql ]] && psql=$bindir/psql
    if ! "$psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname='workload'" | grep -q 1; then
      "$psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE workload" >/dev/null
    fi
    PG_DSN="postgres://postgres@127.0.0.1:$port/workload?sslmode=disable"
    PSQL=("$psql" -h 127.0.0.1 -p "$port" -U postgres -d workload)
  fi
  log "schema + seed (workload/sql/schema.sql)"
  "${PSQL[@]}" -q -v ON_ERROR_STOP=1 -f "$HERE/sql/schema.sql" >"$WL/logs/schema.log" 2>&1 ||
    die "schema failed, see $WL/logs/schema.log"
}

# ---------------------------------------------------------------- services

start_service() { # name lang port cmd...
  local name=$1 lang=$2 port=$3
  shift 3
  port_free "$port" || die "port $port for $name is taken (set DEEPTRACE_WORKLOAD_PORT_BASE)"
  (
    cd "$WL"
    export DEEPTRACE_WORKLOAD_TRUTH="$TRUTH" NODE_PATH="$WL/node/node_modules" PYTHONUNBUFFERED=1 \
      DEEPTRACE_WORKLOAD_CLOCKOFFSET="$WL/bin/clockoffset"
    exec "$@" >>"$WL/logs/$name.log" 2>&1 </dev/null
  ) &
  local pid=$!
  wait_port "$port" "$pid" "$name" || die "$name did not start"
  local lp
  lp=$(listener_pid "$port")
  [[ -n $lp ]] && pid=$lp
  echo "$pid" >"$WL/pids/$name.pid"
  echo "$name:$lang:$port" >"$WL/pids/$name.meta"
}

write_services_json() {
  local out="$WL/services.json" first=1 f name lang port pid exe
  {
    echo "["
    for f in "${SERVICES[@]}" redis:c:- postgres:c:-; do
      IFS=: read -r name lang _ <<<"$f"
      [[ -f $WL/pids/$name.pid ]] || continue
      pid=$(cat "$WL/pids/$name.pid")
      if [[ -f $WL/pids/$name.meta ]]; then
        port=$(cut -d: -f3 "$WL/pids/$name.meta"); kind=service
      else
        port=$(cat "$WL/$name.port"); kind=backend
      fi
      exe=$(readlink "/proc/$pid/exe" 2>/dev/null || echo "")
      [[ $first == 1 ]] || echo ","
      first=0
      printf '  {"name": "%s", "pid": %s, "port": %s, "lang": "%s", "exe": "%s", "kind": "%s"}' \
        "$name" "$pid" "$port" "$lang" "$exe" "$kind"
    done
    echo
    echo "]"
  } >"$out.tmp"
  mv "$out.tmp" "$out"
}

cmd_up() {
  mkdir -p "$WL"/{logs,pids}
  local s n running=()
  for s in "${SERVICES[@]}" redis:: postgres::; do
    n=${s%%:*}
    alive "$n" && running+=("$n")
  done
  [[ ${#running[@]} -eq 0 ]] || die "already running: ${running[*]} (run.sh down first)"
  rm -f "$WL"/pids/*
  local f
  for f in "$WL"/logs/*.log; do [[ -e $f ]] && mv -f "$f" "$f.prev"; done
  UP_DONE=0
  trap '[[ $UP_DONE == 1 ]] || { log "up failed: stopping what was started"; cmd_down; }' EXIT
  install_deps
  mkdir -p "$TRUTH"
  if [[ ${DEEPTRACE_WORKLOAD_KEEP_TRUTH:-0} != 1 ]]; then
    rm -f "$TRUTH"/{gateway,orders,catalog,inventory,payments,ledger,loadgen}.jsonl
  fi
  start_redis
  start_postgres
  log "seed redis"
  "$WL/venv/bin/python" "$HERE/python/seed_redis.py" "$REDIS_URL" >"$WL/logs/seed.log" 2>&1 || die "redis seed failed, see $WL/logs/seed.log"

  local gw ord cat inv pay led
  gw=$(port_of gateway); ord=$(port_of orders); cat=$(port_of catalog)
  inv=$(port_of inventory); pay=$(port_of payments); led=$(port_of ledger)
  start_service ledger node "$led" node "$HERE/node/ledger.js" --listen-port "$led" --pg "$PG_DSN" --pg-conns 8
  start_service inventory go "$inv" "$WL/bin/inventory" -listen "127.0.0.1:$inv" -pg "$PG_DSN" -pg-conns 8
  start_service catalog node "$cat" node "$HERE/node/catalog.js" --listen-port "$cat" --redis "$REDIS_URL"
  start_service payments python "$pay" "$WL/venv/bin/python" "$HERE/python/payments.py" --listen-port "$pay" \
    --ledger "http://127.0.0.1:$led" --redis "$REDIS_URL" --redis-conns 8 --http-conns 32
  start_service orders python "$ord" "$WL/venv/bin/python" "$HERE/python/orders.py" --listen-port "$ord" \
    --payments "http://127.0.0.1:$pay" --catalog "http://127.0.0.1:$cat" --threads 8
  start_service gateway go "$gw" "$WL/bin/gateway" -listen "127.0.0.1:$gw" -orders "http://127.0.0.1:$ord" \
    -catalog "http://127.0.0.1:$cat" -inventory "127.0.0.1:$inv" -grpc-conns 2 -max-conns-per-host 32
  {
    echo "GATEWAY_URL=http://127.0.0.1:$gw"
    echo "DEEPTRACE_WORKLOAD_TRUTH=$TRUTH"
    echo "REDIS_URL=$REDIS_URL"
    echo "PG_DSN=$PG_DSN"
  } >"$WL/workload.env"
  write_services_json
  UP_DONE=1
  cmd_status
  log "up. truth logs: $TRUTH   services: $WL/services.json   load: workload/run.sh load -concurrency 8 -duration 10s"
}

stop_pid() { # name pid
  local name=$1 pid=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$name (pid $pid) ignored SIGTERM for 10s, killing"
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_down() {
  local i s n pid
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    n=${SERVICES[$i]%%:*}
    if [[ -f $WL/pids/$n.pid ]]; then
      pid=$(cat "$WL/pids/$n.pid")
      stop_pid "$n" "$pid"
      rm -f "$WL/pids/$n.pid" "$WL/pids/$n.meta"
      log "stopped $n ($pid)"
    fi
  done
  if [[ -f $WL/pids/redis.pid ]]; then
    stop_pid redis "$(cat "$WL/pids/redis.pid")"
    rm -f "$WL/pids/redis.pid"
    log "stopped redis"
  fi
  if [[ -f $WL/pids/postgres.pid ]]; then
    local bindir data
    bindir=$(cat "$WL/pg.bindir"); data=$(cat "$WL/pg.dir")
    PG_OS_USER=$(stat -c %U "$data/data")
    pg_run "$bindir/pg_ctl" -D "$data/data" -m fast -w stop >/dev/null 2>&1 ||
      stop_pid postgres "$(cat "$WL/pids/postgres.pid")"
    rm -f "$WL/pids/postgres.pid"
    log "stopped postgres"
  fi
  rm -f "$WL/services.json"
}

cmd_status() {
  local s n pid port bad=0
  [[ -d $WL/pids ]] || { log "not up"; return 1; }
  printf '%-10s %-8s %-8s %-6s %s\n' NAME PID PORT LANG STATE
  for s in "${SERVICES[@]}" redis:c postgres:c; do
    IFS=: read -r n lang _ <<<"$s"
    if [[ -f $WL/pids/$n.pid ]]; then
      pid=$(cat "$WL/pids/$n.pid")
      if [[ -f $WL/pids/$n.meta ]]; then port=$(cut -d: -f3 "$WL/pids/$n.meta"); else port=$(cat "$WL/$n.port" 2>/dev/null || echo -); fi
      if kill -0 "$pid" 2>/dev/null; then st=running; else st=DEAD; bad=1; fi
    else
      pid=-; port=-; st=stopped
      [[ $n == redis || $n == postgres ]] || bad=1
    fi
    printf '%-10s %-8s %-8s %-6s %s\n' "$n" "$pid" "$port" "$lang" "$st"
  done
  return $bad
}

load_env() {
  [[ -f $WL/workload.env ]] || die "not up (no $WL/workload.env)"
  # shellcheck disable=SC1091
  source "$WL/workload.env"
}

cmd_load() {
  load_env
  DEEPTRACE_WORKLOAD_TRUTH="$DEEPTRACE_WORKLOAD_TRUTH" "$WL/bin/loadgen" -target "$GATEWAY_URL" "$@"
}

cmd_check() {
  python3 "$HERE/check_truth.py" "$TRUTH" "$@"
}

cmd_truth_reset() {
  sleep 0.5 # let the services flush what they buffered
  local f
  for f in "$TRUTH"/*.jsonl; do [[ -e $f ]] && : >"$f"; done
  log "truth logs emptied ($TRUTH)"
}

cmd_bench() {
  local secs=${1:-10} c
  load_env
  mkdir -p "$WL/bench"
  for c in 1 8 32 128; do
    cmd_truth_reset
    log "loadgen -concurrency $c -duration ${secs}s"
    cmd_load -concurrency "$c" -duration "${secs}s" -seed "$c" -json "$WL/bench/loadgen-c$c.json" || true
    sleep 0.6 # flush interval
    cmd_check --json "$WL/bench/check-c$c.json" || true
  done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  load) shift; cmd_load "$@" ;;
  check) shift; cmd_check "$@" ;;
  truth-reset) cmd_truth_reset ;;
  bench) shift; cmd_bench "$@" ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

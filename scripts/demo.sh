#!/usr/bin/env bash
# The main job: the whole DeepTrace pipeline on this host with the demo
# workload, ending with traces a person can look at.
#
#   scripts/demo.sh up     engines (already up via ./task demo), agent, scheduler
#                          (assembly, metrics rollup, alert evaluation), two
#                          workers (every queue), API; the workload under load
#                          for DEMO_SECONDS; then prints the dashboard URL, its
#                          token, the newest traces, one trace as a tree and the
#                          gateway's per-minute RED metrics
#   scripts/demo.sh down   stops everything demo.sh started (not the engines)
#
# Environment: DEEPTRACE_STATE (default <repo>/.state), DEMO_SECONDS (20),
# DEMO_CONCURRENCY (8), DEMO_API (127.0.0.1:8090), DEEPTRACE_ES_URL,
# DEEPTRACE_REDIS_ADDR (set by the Taskfile).
#
# The agent needs root to load eBPF; without it the demo stops and says why.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$(realpath -m "${DEEPTRACE_STATE:-$REPO/.state}")"
DEMO="$STATE/demo"
BIN="$REPO/bin/deeptrace"
SECONDS_LOAD="${DEMO_SECONDS:-20}"
CONC="${DEMO_CONCURRENCY:-8}"
API="${DEMO_API:-127.0.0.1:8090}"
PREFIX="${DEMO_PREFIX:-deeptrace}"
export DEEPTRACE_ES_URL="${DEEPTRACE_ES_URL:-http://127.0.0.1:9250}"
export DEEPTRACE_REDIS_ADDR="${DEEPTRACE_REDIS_ADDR:-127.0.0.1:6399}"
export DEEPTRACE_ES_PREFIX="$PREFIX"
export DEEPTRACE_LOG_FORMAT=text
SERVICES="$STATE/workload/services.json"

say() { printf '\033[1mdemo:\033[0m %s\n' "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# start NAME CMD...: runs CMD in the background with its log and pid file.
start() {
  local name="$1"; shift
  stop_one "$name"
  nohup "$@" >"$DEMO/$name.log" 2>&1 &
  echo $! >"$DEMO/$name.pid"
  sleep 0.3
  kill -0 "$(cat "$DEMO/$name.pid")" 2>/dev/null || { tail -20 "$DEMO/$name.log" >&2; die "$name failed to start (log: $DEMO/$name.log)"; }
}

stop_one() {
  local pidf="$DEMO/$1.pid" pid i
  [[ -f "$pidf" ]] || return 0
  pid="$(cat "$pidf")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidf"
}

wait_http() {
  local url="$1" i
  for i in $(seq 1 100); do curl -fsS -o /dev/null "$url" 2>/dev/null && return 0; sleep 0.2; done
  return 1
}

up() {
  mkdir -p "$DEMO"
  [[ -x "$BIN" ]] || die "build first: ./task build"
  # A fresh viewer+operator token for this demo; only its hash is configured.
  local token hash
  token="dt-demo-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  hash="$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
  printf '%s\n' "$token" >"$DEMO/token"
  chmod 600 "$DEMO/token"

  "$BIN" store init >/dev/null
  rm -f "$SERVICES" # a previous run's pids must not name new processes

  # The agent first, so it sees every connection from its first byte.
  if [[ "$(id -u)" == 0 ]] && "$BIN" agent --help >/dev/null 2>&1; then
    # The workload's processes, and its Redis, are traced from their start
    # (by name); the services file then names them and adds the other
    # backends. (Redis added by pid from the services file lost the reply
    # to many connections' first command on its side: docs/protocols.md,
    # "Known weaknesses".)
    start agent "$BIN" agent --services-file "$SERVICES" --comm gateway,inventory,node,python,redis-server --host "$(hostname)" \
      --spool-dir "$DEMO/spool" --ops-listen 127.0.0.1:9464 --user nobody
    sleep 1
    if ! kill -0 "$(cat "$DEMO/agent.pid")" 2>/dev/null || grep -q "unavailable\|operation not permitted" "$DEMO/agent.log"; then
      tail -5 "$DEMO/agent.log" >&2
      die "the agent could not load its eBPF programs (log above)"
    fi
  else
    die "the agent needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load eBPF"
  fi
  # One scheduler schedules assembly, the metrics rollup and the alert rule
  # evaluations; the workers serve all of them (deeptrace metrics is gone).
  # Windows are assembled once the agent reports its spans stored (at most
  # --lateness after they end).
  start scheduler "$BIN" scheduler --window 10s --lateness 60s --margin 5s --shards 4 --schedule "@every 2s" \
    --rollup-shards 4 --rollup-lateness 15s --alert-delay 20s --ops-listen 127.0.0.1:9465
  start worker1 "$BIN" worker --ops-listen 127.0.0.1:9466
  start worker2 "$BIN" worker --ops-listen 127.0.0.1:9467
  start api "$BIN" api --listen "$API" --token "demo:operator:$hash"
  wait_http "http://$API/healthz" || die "the API did not come up (log: $DEMO/api.log)"

  say "starting the workload (Go, Python, Node.js services; Redis; PostgreSQL)"
  "$REPO/workload/run.sh" up >"$DEMO/workload.log" 2>&1 || { tail -20 "$DEMO/workload.log" >&2; die "workload failed (log: $DEMO/workload.log)"; }
  local from
  from="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  sleep 3
  say "driving load for ${SECONDS_LOAD}s at concurrency $CONC"
  local load sent
  load="$("$REPO/workload/run.sh" load -concurrency "$CONC" -duration "${SECONDS_LOAD}s")"
  printf '%s\n' "$load" | tail -8
  sent="$(printf '%s\n' "$load" | sed -n 's/^requests=\([0-9]*\).*/\1/p' | tail -1)"
  sleep 2
  local to
  to="$(date -u -d '+5 seconds' +%Y-%m-%dT%H:%M:%SZ)"
  # The scheduler assembles each 10s window as soon as the agent's progress
  # report says every span up to the window's end and 5s margin is stored
  # (the agent decides parents a few seconds after a call, then batches,
  # and the engine refreshes): usually 10-15s after the window ends.
  say "waiting for the scheduler to assemble the last windows"
  local until i wm
  until="$(date -u -d "$to" +%s)"
  for i in $(seq 1 90); do
    wm="$(curl -fsS http://127.0.0.1:9465/metrics 2>/dev/null | awk '/^deeptrace_scheduler_watermark_seconds /{printf "%d", $2}')"
    [[ -n "$wm" && "$wm" -ge "$until" ]] && break
    sleep 1
  done
  sleep 4 # the workers run the last windows' tasks
  # On-demand reassembly (as after a config change or a late agent): the
  # gateway's traces of the demo's range, as a job with its progress.
  say "re-assembling the gateway's traces of the demo's range (a reassembly job)"
  DEEPTRACE_API_URL="http://$API" DEEPTRACE_TOKEN="$token" "$BIN" reassemble --from "$from" --to "$to" --service gateway --follow --progress lines
  echo
  say "newest traces through the gateway:"
  DEEPTRACE_API_URL="http://$API" DEEPTRACE_TOKEN="$token" "$BIN" traces --lookback 10m --limit 8 --service gateway
  local id
  id="$(DEEPTRACE_API_URL="http://$API" DEEPTRACE_TOKEN="$token" "$BIN" traces --lookback 10m --limit 20 --service gateway --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); ts=d if isinstance(d,list) else d.get("traces",d.get("data",[])); ts=sorted(ts,key=lambda t:-t.get("span_count",0)); print(ts[0]["trace_id"] if ts else "")')"
  if [[ -n "$id" ]]; then
    echo
    say "the largest of them, as a tree:"
    DEEPTRACE_API_URL="http://$API" DEEPTRACE_TOKEN="$token" "$BIN" trace "$id"
  fi
  echo
  # Each minute is rolled up once it is over and its --rollup-lateness has
  # passed; wait until the load's minutes hold every request it made.
  local n
  for i in $(seq 1 90); do
    n="$(DEEPTRACE_API_URL="http://$API" DEEPTRACE_TOKEN="$token" "$BIN" service-metrics gateway --lookback 10m --json 2>/dev/null |
      python3 -c 'import json,sys; m=sys.argv[1][:16]; print(sum(p["count"] for p in json.load(sys.stdin)["points"] if p["t"][:16] >= m))' "$from" 2>/dev/null || true)"
    [[ -n "$n" && -n "$sent" && "$n" -ge "$sent" ]] && break
    sleep 1
  done
  say "the gateway's RED metrics per minute (rolled up by the workers):"
  DEEPTRACE_API_URL="http://$API" DEEPTRACE_TOKEN="$token" "$BIN" service-metrics gateway --lookback 10m || true
  echo
  say "dashboard: http://$API/  (log in with the token in $DEMO/token)"
  say "asynq monitor: http://$API/monitor   Jaeger API: http://$API/api/traces?service=gateway"
  say "everything keeps running; stop it with ./task down"
}

down() {
  for n in api worker2 worker1 scheduler agent; do stop_one "$n"; done
  "$REPO/workload/run.sh" down >/dev/null 2>&1 || true
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: demo.sh up|down" ;;
esac

#!/usr/bin/env bash
# Local engines for DeepTrace demo, tests and CI: one OpenSearch 2.19 node (run on
# the JVM from Maven Central artifacts, see engines/opensearch/) and one Redis
# (Debian's redis-server). Both listen on 127.0.0.1 only; data, logs and pid files
# live under the state folder. See docs/engines.md.
#
#   scripts/engines.sh up     [opensearch|redis]   start (idempotent), print env lines
#   scripts/engines.sh down   [opensearch|redis]   stop by pid (fine if not running)
#   scripts/engines.sh status [opensearch|redis]   what runs, with health (exit 3 if not all up)
#   scripts/engines.sh env                         export lines: eval "$(scripts/engines.sh env)"
#
# Environment:
#   DEEPTRACE_STATE        state folder                (default <repo>/.state)
#   DEEPTRACE_ES_PORT      OpenSearch HTTP port        (default 9250)
#   DEEPTRACE_REDIS_PORT   Redis port                  (default 6399)
#   DEEPTRACE_ES_HEAP      OpenSearch heap (-Xms/-Xmx) (default 1g)
#   DEEPTRACE_ES_JAVA_OPTS extra JVM options for the node
#   DEEPTRACE_ES_TIMEOUT   seconds to wait for health  (default 180)
#   DEEPTRACE_JAVA_HOME    JDK/JRE to run with (11..21; default: Java 17 if present)
#   DEEPTRACE_M2_REPO      Maven repository cache      (default $DEEPTRACE_STATE/m2)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${DEEPTRACE_STATE:-$REPO_ROOT/.state}"
STATE="$(realpath -m "$STATE")"

ES_PORT="${DEEPTRACE_ES_PORT:-9250}"
REDIS_PORT="${DEEPTRACE_REDIS_PORT:-6399}"
ES_HEAP="${DEEPTRACE_ES_HEAP:-1g}"
ES_TIMEOUT="${DEEPTRACE_ES_TIMEOUT:-180}"
M2_REPO="${DEEPTRACE_M2_REPO:-$STATE/m2}"

ENGINE_SRC="$REPO_ROOT/engines/opensearch"
OS_HOME="$STATE/opensearch"            # node home: config/ data/ logs/ tmp/
OS_BUILD="$OS_HOME/build"              # compiled classes + classpath.txt
OS_CLASSPATH_FILE="$OS_BUILD/classpath.txt"
OS_CLASS="$OS_BUILD/classes/io/deeptrace/engine/LocalNode.class"
OS_PID="$OS_HOME/pid"
OS_READY="$OS_HOME/ready"              # written by LocalNode (its pid) once set up
OS_LOG="$OS_HOME/logs/opensearch.log"
OS_MAIN="io.deeptrace.engine.LocalNode"

REDIS_HOME="$STATE/redis"
REDIS_PID="$REDIS_HOME/pid"
REDIS_LOG="$REDIS_HOME/logs/redis.log"

log() { printf 'engines: %s\n' "$*" >&2; }
die() { printf 'engines: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

# pid_alive PIDFILE PATTERN: prints the pid when the file names a live process whose
# command line contains PATTERN (so a recycled pid is never mistaken for ours).
pid_alive() {
  local file="$1" pattern="$2" pid
  [[ -s "$file" ]] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
  printf '%s\n' "$pid"
}

# port_owner PORT: prints a description of what listens on 127.0.0.1/any:PORT, or
# nothing (and status 1) when the port is free.
port_owner() {
  local port="$1" line
  if command -v ss >/dev/null 2>&1; then
    line="$(ss -Htlnp "( sport = :$port )" 2>/dev/null | head -n1 || true)"
    if [[ -n "$line" ]]; then
      local who
      who="$(grep -o 'users:(([^)]*))' <<<"$line" | sed -E 's/users:\(\("([^"]*)",pid=([0-9]+).*/\1 (pid \2)/' || true)"
      printf '%s\n' "${who:-an unknown process}"
      return 0
    fi
    return 1
  fi
  # no ss: try to connect
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    printf 'another process\n'
    return 0
  fi
  return 1
}

# http_get PATH: body of GET http://127.0.0.1:$ES_PORT$PATH (curl, or bash /dev/tcp).
http_get() {
  local path="$1"
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -m 3 "http://127.0.0.1:$ES_PORT$path" 2>/dev/null
  else
    timeout 3 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
      printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$1" >&3
      sed "1,/^\r\{0,1\}$/d" <&3' "$ES_PORT" "$path" 2>/dev/null
  fi
}

es_health() { # prints green/yellow/red, or fails
  local body
  body="$(http_get /_cluster/health)" || return 1
  grep -oE '"status":"[a-z]+"' <<<"$body" | cut -d'"' -f4
}

# os_ready PID: LocalNode PID finished its set-up and the cluster is green/yellow;
# prints the health.
os_ready() {
  local health
  [[ -s "$OS_READY" && "$(tr -dc '0-9' <"$OS_READY")" == "$1" ]] || return 1
  health="$(es_health)" || return 1
  [[ "$health" == green || "$health" == yellow ]] || return 1
  printf '%s\n' "$health"
}

redis_ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
  else
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && printf "PING\r\n" >&3 && head -c5 <&3 | grep -q PONG' "$REDIS_PORT" 2>/dev/null
  fi
}

rss_of() { # resident memory of a pid, human readable
  local kb
  kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)"
  [[ -n "$kb" ]] && printf '%d MiB' $((kb / 1024)) || printf '?'
}

# stop_pid PID NAME GRACE: SIGTERM, wait GRACE seconds, then SIGKILL.
stop_pid() {
  local pid="$1" name="$2" grace="$3" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "$name stopped (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name did not stop within ${grace}s; sending SIGKILL to pid $pid"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die "$name (pid $pid) survived SIGKILL"
}

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

# java_major JAVA: feature version of a java binary (8, 11, 17, 21, ...)
java_major() {
  "$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}' | sed 's/^1\.//'
}

# Picks the Java that runs the node: OpenSearch 2.19 supports Java 11..21; 17 preferred.
find_java() {
  local cand major
  local -a cands=()
  [[ -n "${DEEPTRACE_JAVA_HOME:-}" ]] && cands+=("$DEEPTRACE_JAVA_HOME/bin/java")
  for cand in /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/*17*/bin/java; do
    [[ -x "$cand" ]] && cands+=("$cand")
  done
  [[ -n "${JAVA_HOME:-}" ]] && cands+=("$JAVA_HOME/bin/java")
  command -v java >/dev/null 2>&1 && cands+=("$(command -v java)")
  for cand in /usr/lib/jvm/*/bin/java; do
    [[ -x "$cand" ]] && cands+=("$cand")
  done
  for cand in "${cands[@]}"; do
    [[ -x "$cand" ]] || continue
    major="$(java_major "$cand" || true)"
    if [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 11 && major <= 21)); then
      JAVA="$cand"; JAVA_MAJOR="$major"
      JAVA_HOME_DIR="$(cd "$(dirname "$(readlink -f "$cand")")/.." && pwd)"
      return 0
    fi
  done
  if [[ -z "${_java_installed:-}" ]] && command -v apt-get >/dev/null 2>&1; then
    _java_installed=1
    log "no Java 11..21 found; installing openjdk-17-jdk-headless"
    apt_install "/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)/bin/java" openjdk-17-jdk-headless
    find_java
    return 0
  fi
  die "Java is missing: OpenSearch 2.19 needs a Java 11..21 runtime (17 recommended), none found${DEEPTRACE_JAVA_HOME:+ (DEEPTRACE_JAVA_HOME=$DEEPTRACE_JAVA_HOME)}; install it with: apt-get install -y openjdk-17-jdk-headless"
}

# ---------------------------------------------------------------- opensearch

os_needs_build() {
  [[ -s "$OS_CLASSPATH_FILE" && -f "$OS_CLASS" ]] || return 0
  # sources or pom changed since the last build
  [[ -n "$(find "$ENGINE_SRC/pom.xml" "$ENGINE_SRC/src" -newer "$OS_CLASSPATH_FILE" -print -quit 2>/dev/null)" ]] && return 0
  [[ -n "$(find "$ENGINE_SRC/pom.xml" "$ENGINE_SRC/src" -newer "$OS_CLASS" -print -quit 2>/dev/null)" ]] && return 0
  # every jar of the classpath must still be in the cache
  local jar
  while IFS= read -r jar; do
    [[ -z "$jar" || -f "$jar" ]] || return 0
  done < <(tr ':' '\n' <"$OS_CLASSPATH_FILE")
  return 1
}

os_build() {
  command -v mvn >/dev/null 2>&1 || apt_install mvn maven
  command -v mvn >/dev/null 2>&1 || die "Maven is missing: the first start builds the OpenSearch node with Maven (mvn); install it with: apt-get install -y maven"
  mkdir -p "$OS_BUILD" "$M2_REPO"
  local -a mvn_args=(-B -q -Dstyle.color=never -f "$ENGINE_SRC/pom.xml"
    "-Dmaven.repo.local=$M2_REPO" "-Ddeeptrace.build.dir=$OS_BUILD"
    compile dependency:build-classpath "-Dmdep.outputFile=$OS_CLASSPATH_FILE")
  local t0=$SECONDS
  rm -f "$OS_CLASSPATH_FILE"
  log "building the OpenSearch node with Maven (artifacts cached in $M2_REPO) ..."
  # offline first (everything may be cached already), then online
  if ! JAVA_HOME="$JAVA_HOME_DIR" mvn -o "${mvn_args[@]}" >"$OS_BUILD/mvn.log" 2>&1; then
    if ! JAVA_HOME="$JAVA_HOME_DIR" mvn "${mvn_args[@]}" >"$OS_BUILD/mvn.log" 2>&1; then
      tail -n 40 "$OS_BUILD/mvn.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
      die "Maven build of engines/opensearch failed (full log: $OS_BUILD/mvn.log); the first build downloads about 75 MB from Maven Central into $M2_REPO, later starts need no network"
    fi
  fi
  [[ -s "$OS_CLASSPATH_FILE" && -f "$OS_CLASS" ]] || die "Maven build produced no classpath/class (see $OS_BUILD/mvn.log)"
  touch "$OS_CLASSPATH_FILE" "$OS_CLASS"
  log "build done in $((SECONDS - t0))s"
}

os_up() {
  local pid health
  if pid="$(pid_alive "$OS_PID" "$OS_MAIN")"; then
    if health="$(os_ready "$pid")"; then
      log "opensearch already running (pid $pid, http://127.0.0.1:$ES_PORT, health $health)"
      return 0
    fi
    log "opensearch process $pid exists but is not healthy yet; waiting"
    os_wait "$pid"
    return 0
  fi
  rm -f "$OS_PID" "$OS_READY"

  find_java
  local owner
  if owner="$(port_owner "$ES_PORT")"; then
    die "port $ES_PORT is taken by $owner (set DEEPTRACE_ES_PORT to use another port)"
  fi
  if os_needs_build; then os_build; fi

  mkdir -p "$OS_HOME/logs" "$OS_HOME/data" "$OS_HOME/tmp"
  [[ -f "$OS_LOG" ]] && mv -f "$OS_LOG" "$OS_LOG.1"

  local locale_providers="SPI,COMPAT"
  ((JAVA_MAJOR >= 21)) && locale_providers="SPI,CLDR"
  local -a jvm=(
    "-Xms$ES_HEAP" "-Xmx$ES_HEAP" -Xss1m
    -XX:+UseG1GC -XX:G1ReservePercent=25 -XX:InitiatingHeapOccupancyPercent=30
    -XX:+ExitOnOutOfMemoryError -XX:-OmitStackTraceInFastThrow
    "-XX:ErrorFile=$OS_HOME/logs/hs_err_pid%p.log"
    "-Djava.io.tmpdir=$OS_HOME/tmp" -Dfile.encoding=UTF-8 -Djava.awt.headless=true
    "-Djava.locale.providers=$locale_providers"
    -Djna.nosys=true
    -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true
    -Dio.netty.recycler.maxCapacityPerThread=0 -Dio.netty.allocator.numDirectArenas=0
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true
  )
  # shellcheck disable=SC2206 # word splitting of user options is intended
  [[ -n "${DEEPTRACE_ES_JAVA_OPTS:-}" ]] && jvm+=($DEEPTRACE_ES_JAVA_OPTS)

  local cp
  cp="$OS_BUILD/classes:$(cat "$OS_CLASSPATH_FILE")"
  log "starting opensearch on 127.0.0.1:$ES_PORT (java $JAVA_MAJOR, heap $ES_HEAP, log $OS_LOG)"
  # setsid: own session, so the node outlives the caller's terminal/process group
  (cd "$OS_HOME" && exec setsid nohup "$JAVA" "${jvm[@]}" -cp "$cp" "$OS_MAIN" "$OS_HOME" "$ES_PORT" \
    >>"$OS_LOG" 2>&1 </dev/null 9>&-) &
  pid=$!
  echo "$pid" >"$OS_PID"
  os_wait "$pid"
}

os_wait() {
  local pid="$1" t0=$SECONDS health
  while ((SECONDS - t0 < ES_TIMEOUT)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "opensearch exited during start; last lines of $OS_LOG:"
      tail -n 40 "$OS_LOG" >&2 || true
      rm -f "$OS_PID" "$OS_READY"
      die "opensearch failed to start"
    fi
    if health="$(os_ready "$pid")"; then
      log "opensearch up in $((SECONDS - t0))s (pid $pid, health $health)"
      return 0
    fi
    sleep 0.5
  done
  log "opensearch not ready after ${ES_TIMEOUT}s (health: $(es_health || echo no answer)); last lines of $OS_LOG:"
  tail -n 40 "$OS_LOG" >&2 || true
  stop_pid "$pid" opensearch 20
  rm -f "$OS_PID" "$OS_READY"
  die "opensearch did not become healthy"
}

os_down() {
  local pid
  if pid="$(pid_alive "$OS_PID" "$OS_MAIN")"; then
    stop_pid "$pid" opensearch 30
  else
    log "opensearch not running"
  fi
  rm -f "$OS_PID" "$OS_READY"
}

os_status() {
  local pid health
  if pid="$(pid_alive "$OS_PID" "$OS_MAIN")"; then
    health="$(es_health || echo "no answer")"
    printf 'opensearch: running  pid %s  http://127.0.0.1:%s  health %s  rss %s\n' \
      "$pid" "$ES_PORT" "$health" "$(rss_of "$pid")"
    [[ "$health" == green || "$health" == yellow ]]
  else
    printf 'opensearch: stopped  (port %s)\n' "$ES_PORT"
    return 1
  fi
}

# ---------------------------------------------------------------- redis

# apt_install CMD PKG: installs Debian package PKG when command CMD is missing.
apt_install() {
  local cmd="$1" pkg="$2"
  command -v "$cmd" >/dev/null 2>&1 && return 0
  log "$cmd is missing; installing $pkg with apt-get"
  command -v apt-get >/dev/null 2>&1 || die "$cmd is missing and there is no apt-get to install $pkg"
  mkdir -p "$STATE"
  local -a apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "$pkg")
  if ! as_root "${apt[@]}" >"$STATE/apt.log" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update >>"$STATE/apt.log" 2>&1 || true
    as_root "${apt[@]}" >>"$STATE/apt.log" 2>&1 || { tail -n 20 "$STATE/apt.log" >&2; die "could not install $pkg (log: $STATE/apt.log)"; }
  fi
  hash -r
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after apt-get install $pkg"
}

redis_install() { apt_install redis-server redis-server; }

redis_up() {
  local pid owner i
  if pid="$(pid_alive "$REDIS_PID" redis-server)" && redis_ping; then
    log "redis already running (pid $pid, 127.0.0.1:$REDIS_PORT)"
    return 0
  fi
  if [[ -n "${pid:-}" ]]; then
    log "redis process $pid exists but does not answer; restarting it"
    stop_pid "$pid" redis 10
  fi
  rm -f "$REDIS_PID"
  redis_install
  if owner="$(port_owner "$REDIS_PORT")"; then
    die "port $REDIS_PORT is taken by $owner (set DEEPTRACE_REDIS_PORT to use another port)"
  fi
  mkdir -p "$REDIS_HOME/data" "$REDIS_HOME/logs"
  log "starting redis on 127.0.0.1:$REDIS_PORT (data $REDIS_HOME/data)"
  # no RDB snapshots; an append-only file (fsync every second) keeps queued tasks
  # across a restart the way a production Redis would
  redis-server --daemonize yes --pidfile "$REDIS_PID" \
    --bind 127.0.0.1 --port "$REDIS_PORT" \
    --dir "$REDIS_HOME/data" --logfile "$REDIS_LOG" \
    --save '' --appendonly yes --appendfsync everysec \
    --maxmemory-policy noeviction \
    </dev/null >>"$REDIS_LOG" 2>&1 9>&- \
    || { tail -n 20 "$REDIS_LOG" >&2 || true; die "redis-server failed to start (log: $REDIS_LOG)"; }
  for ((i = 0; i < 100; i++)); do
    if pid="$(pid_alive "$REDIS_PID" redis-server)" && redis_ping; then
      log "redis up (pid $pid)"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$REDIS_LOG" >&2 || true
  if pid="$(pid_alive "$REDIS_PID" redis-server)"; then stop_pid "$pid" redis 10; fi
  rm -f "$REDIS_PID"
  die "redis did not answer PING within 10s"
}

redis_down() {
  local pid
  if pid="$(pid_alive "$REDIS_PID" redis-server)"; then
    stop_pid "$pid" redis 15
  else
    log "redis not running"
  fi
  rm -f "$REDIS_PID"
}

redis_status() {
  local pid
  if pid="$(pid_alive "$REDIS_PID" redis-server)"; then
    local ping=PONG
    redis_ping || ping="no answer"
    printf 'redis:      running  pid %s  127.0.0.1:%s  ping %s  rss %s\n' \
      "$pid" "$REDIS_PORT" "$ping" "$(rss_of "$pid")"
    [[ "$ping" == PONG ]]
  else
    printf 'redis:      stopped  (port %s)\n' "$REDIS_PORT"
    return 1
  fi
}

# ---------------------------------------------------------------- verbs

print_env() {
  printf 'export DEEPTRACE_ES_URL=http://127.0.0.1:%s\n' "$ES_PORT"
  printf 'export DEEPTRACE_REDIS_ADDR=127.0.0.1:%s\n' "$REDIS_PORT"
}

usage() { # usage EXIT-CODE
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit "$1"
}

engines_for() {
  case "${1:-all}" in
    all | "") echo "redis opensearch" ;;
    opensearch | os | es) echo opensearch ;;
    redis) echo redis ;;
    *) die "unknown engine '$1' (opensearch or redis)" ;;
  esac
}

lock() { # serialise concurrent up/down on the same state folder
  mkdir -p "$STATE"
  exec 9>"$STATE/.engines.lock"
  flock -w 600 9 || die "another engines.sh holds $STATE/.engines.lock"
}

main() {
  local verb="${1:-}" which e rc=0
  [[ $# -gt 0 ]] && shift
  case "$verb" in
    up)
      which="$(engines_for "${1:-all}")"
      lock
      for e in $which; do
        case "$e" in opensearch) os_up ;; redis) redis_up ;; esac
      done
      print_env
      ;;
    down)
      which="$(engines_for "${1:-all}")"
      lock
      for e in $which; do
        case "$e" in opensearch) os_down ;; redis) redis_down ;; esac
      done
      ;;
    status)
      which="$(engines_for "${1:-all}")"
      for e in $which; do
        case "$e" in
          opensearch) os_status || rc=3 ;;
          redis) redis_status || rc=3 ;;
        esac
      done
      printf 'state: %s\n' "$STATE"
      return "$rc"
      ;;
    env) print_env ;;
    -h | --help | help) usage 0 ;;
    "") usage 2 ;;
    *) log "unknown verb '$verb'"; usage 2 ;;
  esac
}

main "$@"

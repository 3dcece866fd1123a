# Redis lifecycle for bench/run.sh (sourced after server.sh, whose free_port, proc_start and
# same_proc it uses). The Redis server is started here, as a direct child of the script, and
# only that process is ever signalled: by PID, checked with its start time.
#
# redis_find                 sets REDIS_BIN (from $REDIS_SERVER, else redis-server on PATH, else
#                            /usr/bin/redis-server) and REDIS_VERSION; false if there is none.
# start_redis DIR            starts a fresh redis-server on a free 127.0.0.1 port, no persistence,
#                            waits until it accepts connections; sets REDIS_PID, REDIS_PORT,
#                            REDIS_URL; writes DIR/redis.cmd and DIR/redis.log.
# stop_redis                 SIGTERM, wait (5 s), then SIGKILL.
# redis_cpu_ticks            utime + stime of REDIS_PID (clock ticks), empty if it is gone.
# redis_save NAME / redis_use NAME / stop_named_redis NAME
#                            several at once, as server_save / server_use / stop_named_server
#                            (redis_use of a name with none saved: no current Redis).
# redis_cleanup              stops the current Redis and every saved one (for the EXIT trap).

REDIS_BIN=""
REDIS_VERSION=""
REDIS_PID=""
REDIS_START=""
REDIS_PORT=""
REDIS_URL=""

redis_find() {
  local b
  for b in "${REDIS_SERVER:-}" "$(command -v redis-server 2>/dev/null)" /usr/bin/redis-server; do
    if [[ -n $b && -x $b ]]; then
      REDIS_BIN=$b
      # "Redis server v=7.0.15 sha=..."
      REDIS_VERSION=$("$b" --version 2>/dev/null | sed -n 's/.*v=\([0-9.]*\).*/\1/p')
      return 0
    fi
  done
  return 1
}

start_redis() {
  local dir=$1
  local attempt port pid waited
  REDIS_PORT=""
  REDIS_URL=""
  for attempt in 1 2 3 4 5; do
    port=$(free_port) || { echo "no free port for redis" >&2; return 1; }
    # No persistence (nothing is written to disk, not even on shutdown), loopback only, logs
    # to stdout (redirected), in the foreground so that $! is redis-server itself.
    local args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no
      --daemonize no --dir "$dir")
    "$REDIS_BIN" "${args[@]}" >"$dir/redis.log" 2>&1 &
    pid=$!
    REDIS_PID=$pid
    REDIS_START=$(proc_start "$pid")
    waited=0
    while ! grep -q "Ready to accept connections" "$dir/redis.log" 2>/dev/null; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
      waited=$((waited + 1))
      if ((waited > 200)); then
        echo "redis-server did not become ready within 10 s (see $dir/redis.log)" >&2
        stop_redis
        return 1
      fi
    done
    if kill -0 "$pid" 2>/dev/null; then
      REDIS_PORT=$port
      REDIS_URL="redis://127.0.0.1:$port"
      # For the record (and the report): the command with its quoting.
      echo "$REDIS_BIN --port $port --bind 127.0.0.1 --save \"\" --appendonly no" >"$dir/redis.cmd"
      echo "   started redis-server $REDIS_VERSION pid $pid on 127.0.0.1:$port" >&2
      return 0
    fi
    wait "$pid" 2>/dev/null || true
    REDIS_PID=""
    REDIS_START=""
    if grep -qi "in use" "$dir/redis.log" 2>/dev/null; then
      echo "   redis port $port in use, retrying ($attempt)" >&2
      continue
    fi
    echo "   redis-server exited before accepting connections:" >&2
    tail -n 5 "$dir/redis.log" >&2 || true
    return 1
  done
  return 1
}

stop_redis() {
  local pid=$REDIS_PID
  [[ -n $pid ]] || return 0
  # Still the process we started (bash reaps its children as they exit)?
  if [[ -z $REDIS_START ]] || same_proc "$pid:$REDIS_START"; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if [[ -z $REDIS_START ]] || same_proc "$pid:$REDIS_START"; then
      echo "   redis-server $pid did not stop on SIGTERM; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  REDIS_PID=""
  REDIS_START=""
  REDIS_PORT=""
  REDIS_URL=""
}

# True while the redis-server we started runs.
redis_alive() {
  [[ -n $REDIS_PID && -n $REDIS_START ]] && same_proc "$REDIS_PID:$REDIS_START"
}

redis_cpu_ticks() {
  redis_alive || return 0
  # Fields after "(comm) ": state is field 3, utime 14, stime 15.
  sed 's/.*) //' "/proc/$REDIS_PID/stat" 2>/dev/null | awk '{ print $12 + $13 }'
}

declare -A SAVED_REDIS=() # name -> "PID START PORT URL"

redis_save() {
  SAVED_REDIS[$1]="$REDIS_PID $REDIS_START $REDIS_PORT $REDIS_URL"
}

redis_use() {
  REDIS_PID="" REDIS_START="" REDIS_PORT="" REDIS_URL=""
  [[ -n $1 ]] || return 0 # "": no current Redis
  local entry=${SAVED_REDIS[$1]:-}
  [[ -n $entry ]] || return 0
  read -r REDIS_PID REDIS_START REDIS_PORT REDIS_URL <<<"$entry"
}

stop_named_redis() {
  redis_use "$1"
  stop_redis
  unset "SAVED_REDIS[$1]"
}

redis_cleanup() {
  local n cur=$REDIS_PID
  for n in "${!SAVED_REDIS[@]}"; do
    [[ ${SAVED_REDIS[$n]%% *} == "$cur" ]] && cur=""
  done
  [[ -n $cur ]] && stop_redis
  for n in "${!SAVED_REDIS[@]}"; do
    stop_named_redis "$n"
  done
}

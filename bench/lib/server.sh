# Server lifecycle for bench/run.sh (sourced). Only processes started here are ever signalled,
# by PID: the server itself and the descendants it spawned (its workers).
#
# start_server DIR CMD [TAG]  starts CMD (PORT replaced by a free 127.0.0.1 port, REDIS_URL by
#                             $REDIS_URL of bench/lib/redis.sh), waits for "listening on" on its
#                             stdout; sets SERVER_PID and SERVER_PORT.
# stop_server                 SIGTERM, wait (10 s), then SIGKILL whatever is left of the tree.
# bench_cleanup               stop_server for the EXIT trap.

SERVER_PID=""
SERVER_PORT=""
SERVER_TREE=()

# A port nobody listens on (checked with ss; the bind itself is the final word, see retries).
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    if [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]]; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# The descendants of a pid (children first, recursively), each as "PID:STARTTIME" so that a
# recycled pid is never mistaken for one of ours.
descendants() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do
    echo "$c:$(proc_start "$c")"
    descendants "$c"
  done
}

# Start time (clock ticks after boot) of a pid, empty if it is gone.
proc_start() {
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20
}

# True if "PID:STARTTIME" is still that very process.
same_proc() {
  local pid=${1%%:*} st=${1#*:}
  [[ -n $st && $(proc_start "$pid") == "$st" ]]
}

start_server() {
  local dir=$1 template=$2 tag=${3:-}
  local suffix=${tag:+-$tag}
  local attempt port cmd pid
  for attempt in 1 2 3 4 5; do
    port=$(free_port) || { echo "no free port" >&2; return 1; }
    cmd=${template//PORT/$port}
    if [[ $cmd == *REDIS_URL* ]]; then
      [[ -n ${REDIS_URL:-} ]] || { echo "REDIS_URL in the command but no redis-server started" >&2; return 1; }
      cmd=${cmd//REDIS_URL/$REDIS_URL}
    fi
    # Word splitting of cmd is intended (a plain command line, no shell syntax).
    # shellcheck disable=SC2086
    $cmd >"$dir/server$suffix.out" 2>"$dir/server$suffix.err" &
    pid=$!
    SERVER_PID=$pid
    SERVER_TREE=()
    local waited=0
    while ! grep -q "listening on" "$dir/server$suffix.out" 2>/dev/null; do
      if ! kill -0 "$pid" 2>/dev/null; then
        break
      fi
      sleep 0.1
      waited=$((waited + 1))
      if ((waited > 600)); then
        echo "server did not report 'listening on' within 60 s" >&2
        stop_server
        return 1
      fi
    done
    if kill -0 "$pid" 2>/dev/null; then
      SERVER_PORT=$port
      echo "$template" >"$dir/server.template"
      echo "$cmd" >"$dir/server$suffix.cmd"
      mapfile -t SERVER_TREE < <(descendants "$pid")
      echo "   started pid $pid (+${#SERVER_TREE[@]} children) on 127.0.0.1:$port: $cmd" >&2
      return 0
    fi
    wait "$pid" 2>/dev/null || true
    SERVER_PID=""
    if grep -qi "in use" "$dir/server$suffix.err" 2>/dev/null; then
      echo "   port $port in use, retrying ($attempt)" >&2
      continue
    fi
    echo "   server exited before listening:" >&2
    tail -n 5 "$dir/server$suffix.err" >&2 || true
    return 1
  done
  return 1
}

stop_server() {
  local pid=$SERVER_PID
  [[ -n $pid ]] || return 0
  # The tree as it is now (workers may have been restarted) plus what was seen at start.
  local tree=("${SERVER_TREE[@]}")
  mapfile -t -O "${#tree[@]}" tree < <(descendants "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "   pid $pid did not stop on SIGTERM; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  # Workers are expected to exit with their primary; give them a moment, then force.
  local c
  for i in $(seq 1 30); do
    local alive=0
    for c in "${tree[@]}"; do
      same_proc "$c" && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for c in "${tree[@]}"; do
    if same_proc "$c"; then
      echo "   worker ${c%%:*} outlived its primary; SIGKILL" >&2
      kill -KILL "${c%%:*}" 2>/dev/null || true
    fi
  done
  SERVER_PID=""
  SERVER_TREE=()
}

bench_cleanup() {
  stop_server
}

# Percentage of the machine's CPU busy over one second (all cores), from /proc/stat.
machine_busy_pct() {
  local a b
  read -r -a a < <(head -1 /proc/stat)
  sleep 1
  read -r -a b < <(head -1 /proc/stat)
  local i tot=0 idle
  for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
  idle=$((b[4] - a[4] + b[5] - a[5]))
  ((tot > 0)) && echo $((100 * (tot - idle) / tot)) || echo 0
}

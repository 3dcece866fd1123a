# Server lifecycle for bench/run.sh (sourced). Only processes started here are ever signalled,
# by PID: the server itself and the descendants it spawned (its workers).
#
# start_server DIR CMD [TAG]  starts CMD (PORT replaced by a free 127.0.0.1 port, REDIS_URL by
#                             $REDIS_URL of bench/lib/redis.sh, TLS_CERT / TLS_KEY by $TLS_CERT
#                             / $TLS_KEY of run.sh), waits for "listening on" on its
#                             stdout; sets SERVER_PID and SERVER_PORT.
# stop_server                 SIGTERM, wait (10 s), then SIGKILL whatever is left of the tree.
# server_save NAME            remembers the current server (SERVER_PID, SERVER_PORT, its tree)
#                             under NAME, so that several can run at once (run.sh's connect
#                             phase); server_use NAME makes it current again; stop_named_server
#                             NAME stops it and forgets it.
# bench_cleanup               stops the current server and every saved one (for the EXIT trap).

SERVER_PID=""
SERVER_START=""
SERVER_PORT=""
SERVER_TREE=()
declare -A SAVED_SERVER=() # name -> "PID PORT START" (the primary; START: its start time)
declare -A SAVED_TREE=()   # name -> "PID:START PID:START ..."

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
    if [[ $cmd == *TLS_CERT* || $cmd == *TLS_KEY* ]]; then
      [[ -n ${TLS_CERT:-} && -n ${TLS_KEY:-} ]] || { echo "TLS_CERT/TLS_KEY in the command but no certificate made" >&2; return 1; }
      cmd=${cmd//TLS_CERT/$TLS_CERT}
      cmd=${cmd//TLS_KEY/$TLS_KEY}
    fi
    # Word splitting of cmd is intended (a plain command line, no shell syntax).
    # shellcheck disable=SC2086
    $cmd >"$dir/server$suffix.out" 2>"$dir/server$suffix.err" &
    pid=$!
    SERVER_PID=$pid
    SERVER_START=$(proc_start "$pid")
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
    SERVER_START=""
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
  # Only if the pid is still the process started (bash reaps a child that exited, and its pid
  # may have been reused since).
  if [[ -z $SERVER_START ]] || same_proc "$pid:$SERVER_START"; then
    mapfile -t -O "${#tree[@]}" tree < <(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || true
  else
    echo "   server pid $pid already exited" >&2
    pid=""
  fi
  local i
  if [[ -n $pid ]]; then
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "   pid $pid did not stop on SIGTERM; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$SERVER_PID" 2>/dev/null || true
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
  SERVER_START=""
  SERVER_PORT=""
  SERVER_TREE=()
}

server_save() {
  SAVED_SERVER[$1]="$SERVER_PID $SERVER_PORT $SERVER_START"
  SAVED_TREE[$1]="${SERVER_TREE[*]}"
}

# Makes the server saved as NAME current (false, and no current server, if there is none).
server_use() {
  SERVER_PID="" SERVER_PORT="" SERVER_START=""
  SERVER_TREE=()
  [[ -n $1 ]] || return 1
  local entry=${SAVED_SERVER[$1]:-}
  [[ -n $entry ]] || return 1
  read -r SERVER_PID SERVER_PORT SERVER_START <<<"$entry"
  read -r -a SERVER_TREE <<<"${SAVED_TREE[$1]:-}"
}

stop_named_server() {
  server_use "$1" && stop_server
  unset "SAVED_SERVER[$1]" "SAVED_TREE[$1]"
}

bench_cleanup() {
  # The current server unless it is also a saved one (stopped below).
  local n cur=$SERVER_PID
  for n in "${!SAVED_SERVER[@]}"; do
    [[ ${SAVED_SERVER[$n]%% *} == "$cur" ]] && cur=""
  done
  [[ -n $cur ]] && stop_server
  for n in "${!SAVED_SERVER[@]}"; do
    stop_named_server "$n"
  done
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

#!/usr/bin/env bash
# Side-by-side benchmark, in one run on this machine: sio-cluster (2 workers) over its IPC bus
# and over Redis, one socketioxide process serving the same app, and the Node cluster
# (@socket.io/sticky + cluster-adapter, and + redis-adapter).
# First every variant's server is started (each on its own free 127.0.0.1 port, with a fresh
# redis-server if it uses one) and the connect scenarios run interleaved: R rounds, each
# round one sio-loadgen run (warm-up + one measured batch) against every variant in turn
# (A B C A B C ...), so that all variants see the same machine state over time; per variant
# the rounds are merged (median round). Then, variant after variant: fanout and rooms on its
# server, stop it, hold on a fresh server, stop it and its Redis. Raw JSON goes to
# bench/results/<timestamp>/<variant>/, the Markdown table (for BENCHMARKS.md) to
# bench/results/<timestamp>/table.md and stdout.
#
# Usage: bench/run.sh [--quick]
#                     [--variants cluster,cluster-tls,cluster-redis,single,node,node-redis]
#                     [--no-build] [--out DIR]
# See bench/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib/server.sh
source "$ROOT/bench/lib/server.sh"
# shellcheck source=bench/lib/redis.sh
source "$ROOT/bench/lib/redis.sh"

# ---- variants: name -> server command --------------------------------------------------------
# PORT is replaced by the chosen port; REDIS_URL by the URL of the redis-server this script
# starts for that variant (a variant whose command names REDIS_URL is a "redis variant");
# TLS_CERT / TLS_KEY by a self-signed certificate made for the run (a "TLS variant": the
# loadgen connects with https/wss and checks that certificate).
# Add a variant here (and name it in --variants); the report shows every variant as a column.
declare -A SERVER_CMD=(
  [cluster]="target/release/examples/testapp --listen 127.0.0.1:PORT --workers 2"
  [cluster-tls]="target/release/examples/testapp --listen 127.0.0.1:PORT --workers 2 --tls-cert TLS_CERT --tls-key TLS_KEY"
  [single]="target/release/examples/testapp --listen 127.0.0.1:PORT --standalone"
  [node]="node bench/node/server.mjs --listen 127.0.0.1:PORT --workers 2"
  [cluster-redis]="target/release/examples/testapp --listen 127.0.0.1:PORT --workers 2 --adapter redis --redis-url REDIS_URL"
  [node-redis]="node bench/node/server.mjs --listen 127.0.0.1:PORT --workers 2 --adapter redis --redis-url REDIS_URL"
)
uses_redis() { [[ ${SERVER_CMD[$1]} == *REDIS_URL* ]]; }
uses_tls() { [[ ${SERVER_CMD[$1]} == *TLS_CERT* ]]; }
REDIS_MISSING_MSG="redis-server not found (looked at \$REDIS_SERVER, PATH, /usr/bin/redis-server): \
the redis variants are skipped. Install Redis 7+ with 'apt-get install redis-server' \
(or set REDIS_SERVER=/path/to/redis-server)."
if redis_find; then
  DEFAULT_VARIANTS="cluster,cluster-redis,single,node,node-redis"
else
  DEFAULT_VARIANTS="cluster,single,node"
fi

usage() {
  cat <<EOF
usage: bench/run.sh [--quick] [--variants LIST] [--no-build] [--npm-ci] [--out DIR]
  --quick          small counts and short steps (a smoke run, ~40 s per variant)
  --variants LIST  comma-separated, from: ${!SERVER_CMD[*]} (default: $DEFAULT_VARIANTS;
                   the redis variants run only when redis-server is installed; cluster-tls,
                   TLS next to plain, only when asked: --variants cluster,cluster-tls)
  --no-build       do not run cargo build / npm ci
  --npm-ci         always run 'npm ci' in bench/node (default: only when node_modules is stale)
  --out DIR        result directory (default: bench/results/<timestamp>)
EOF
}

QUICK=0
BUILD=1
FORCE_NPM=0
VARIANTS=$DEFAULT_VARIANTS
OUT=""
INVOCATION="bench/run.sh $*"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --variants) VARIANTS=${2:?--variants needs a list}; shift ;;
    --variants=*) VARIANTS=${1#*=} ;;
    --no-build) BUILD=0 ;;
    --npm-ci) FORCE_NPM=1 ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --out=*) OUT=${1#*=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
IFS=',' read -r -a VLIST <<<"$VARIANTS"
for v in "${VLIST[@]}"; do
  [[ -n ${SERVER_CMD[$v]:-} ]] || { echo "unknown variant: $v (known: ${!SERVER_CMD[*]})" >&2; exit 2; }
done
# Without redis-server: say so and drop only the redis variants.
if [[ -z $REDIS_BIN ]]; then
  kept=()
  skipped=()
  for v in "${VLIST[@]}"; do
    if uses_redis "$v"; then skipped+=("$v"); else kept+=("$v"); fi
  done
  if ((${#skipped[@]})) || [[ $VARIANTS == "$DEFAULT_VARIANTS" ]]; then
    echo "!! $REDIS_MISSING_MSG" >&2
    if ((${#skipped[@]})); then echo "!! skipped: ${skipped[*]}" >&2; fi
  fi
  ((${#kept[@]})) || { echo "no variant left to run" >&2; exit 1; }
  VLIST=("${kept[@]}")
  VARIANTS=$(IFS=','; echo "${VLIST[*]}")
fi

# ---- sizes ----------------------------------------------------------------------------------
# Connect (both transports): CONN_ROUNDS interleaved rounds per variant, each a fresh loadgen
# run of CONN_*_WARM warm-up connects (not counted), CONN_PAUSE s, then CONN_* measured ones;
# client sockets spread over CONN_SRC loopback source addresses. See bench/README.md.
CONN_SRC=8; CONN_PAUSE=1
if [[ $QUICK == 1 ]]; then
  CONN_ROUNDS=2
  CONN_WS=1000;  CONN_WS_CONC=100; CONN_WS_WARM=300
  CONN_PU=300;   CONN_PU_CONC=50;  CONN_PU_WARM=100
  FAN_RECV=1000; FAN_SEND=4; FAN_RATES=100,1000; FAN_STEP=2
  ROOM_CLIENTS=1000; ROOM_GROUP=10; ROOM_RATES=1000,8000; ROOM_STEP=2
  HOLD=1000; HOLD_SETTLE=2
  DRAIN=2
else
  CONN_ROUNDS=5
  CONN_WS=10000; CONN_WS_CONC=100; CONN_WS_WARM=2000
  CONN_PU=2000;  CONN_PU_CONC=50;  CONN_PU_WARM=300
  FAN_RECV=1000; FAN_SEND=4; FAN_RATES=100,200,500,1000,2000,3000,4000; FAN_STEP=5
  ROOM_CLIENTS=1000; ROOM_GROUP=10; ROOM_RATES=500,1000,2000,4000,8000,16000,24000,32000,48000; ROOM_STEP=5
  HOLD=5000; HOLD_SETTLE=5
  DRAIN=3
fi
PAUSE=2 # seconds between scenarios, for the server to drop the previous connections

# ---- build ----------------------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
  echo "== building (release)" >&2
  cargo build --release --examples -p sio-cluster >&2
  cargo build --release -p sio-loadgen >&2
  if [[ ",$VARIANTS," == *",node"* ]]; then
    if [[ $FORCE_NPM == 1 || ! -f bench/node/node_modules/.package-lock.json \
          || bench/node/package-lock.json -nt bench/node/node_modules/.package-lock.json ]]; then
      (cd bench/node && npm ci --no-audit --no-fund) >&2
    fi
  fi
fi
LG=target/release/sio-loadgen
[[ -x $LG ]] || { echo "$LG is missing (run without --no-build)" >&2; exit 1; }
for opt in --redis-pid --source-addrs --warmup --tls-ca; do
  if ! "$LG" connect --help 2>/dev/null | grep -q -- "$opt"; then
    echo "$LG predates connect $opt (run without --no-build)" >&2
    exit 1
  fi
done

OUT=${OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
{
  echo "$INVOCATION"
} >"$OUT/invocation.txt"
{
  echo "started: $(date -u +%FT%TZ)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel: $(uname -r)"
  echo "node: $(node --version 2>/dev/null || echo none)"
  echo "rustc: $(rustc --version 2>/dev/null || echo '?')"
  echo "redis: ${REDIS_VERSION:-none}${REDIS_BIN:+ ($REDIS_BIN)}"
} >"$OUT/machine.txt"
echo "== results in $OUT" >&2
# TLS variants: one self-signed P-256 certificate for localhost / 127.0.0.1, made for this run
# (an end-entity one, CA:FALSE: webpki refuses a CA certificate as a server's certificate).
TLS_CERT=""
TLS_KEY=""
for v in "${VLIST[@]}"; do
  if uses_tls "$v" && [[ -z $TLS_CERT ]]; then
    command -v openssl >/dev/null || { echo "openssl is needed for $v (apt-get install openssl)" >&2; exit 1; }
    mkdir -p "$OUT/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
      -addext "extendedKeyUsage=serverAuth" \
      -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" 2>"$OUT/tls/openssl.log" \
      || { echo "openssl could not make a certificate (see $OUT/tls/openssl.log)" >&2; exit 1; }
    TLS_CERT=$OUT/tls/cert.pem
    TLS_KEY=$OUT/tls/key.pem
    echo "tls: self-signed P-256 (ECDSA) certificate, $(openssl version)" >>"$OUT/machine.txt"
  fi
done
busy=$(machine_busy_pct)
echo "busy before start: $busy % of all cores" >>"$OUT/machine.txt"
if ((busy > 10)); then
  echo "!! the machine is already $busy % busy: other programs will disturb the results" >&2
fi

LG_PID=""
# shellcheck disable=SC2317
stop_all() {
  if [[ -n $LG_PID ]]; then
    kill -TERM "$LG_PID" 2>/dev/null || true
    wait "$LG_PID" 2>/dev/null || true
  fi
  bench_cleanup # the servers first: they are Redis clients
  redis_cleanup
}
trap 'stop_all' EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Runs one loadgen scenario: its JSON line to DIR/NAME.json, its summary to DIR/NAME.log (and
# stderr). A failing scenario is reported and skipped, the run goes on. With a redis-server
# running, the loadgen accounts its CPU apart (--redis-pid: per step / round, in the JSON), and
# its CPU over the whole scenario (setup included) goes to DIR/redis-cpu.txt.
scenario() {
  local dir=$1 name=$2
  shift 2
  local r0=""
  if [[ -n $REDIS_PID ]]; then
    set -- "$@" --redis-pid "$REDIS_PID"
    r0=$(redis_cpu_ticks)
  fi
  echo "-- $(basename "$dir") / $name: $LG $*" >&2
  echo "$LG $*" >>"$OUT/commands.txt"
  # In the background + wait, so that a signal to this script is handled at once (bash runs
  # traps only after a foreground command ends); the EXIT trap stops it.
  "$LG" "$@" >"$dir/$name.json" 2> >(tee "$dir/$name.log" >&2) &
  LG_PID=$!
  if ! wait "$LG_PID"; then
    echo "!! $(basename "$dir") / $name failed (see $dir/$name.log)" >&2
    rm -f "$dir/$name.json"
  fi
  LG_PID=""
  if [[ -n $r0 ]]; then
    local r1
    r1=$(redis_cpu_ticks)
    if [[ -n $r1 ]]; then
      awk -v n="$name" -v d=$((r1 - r0)) -v hz="$CLK_TCK" \
        'BEGIN { printf "%s: %.2f s\n", n, d / hz }' >>"$dir/redis-cpu.txt"
    else
      echo "!! redis-server (pid $REDIS_PID) is gone (see $dir/redis.log)" >&2
    fi
  fi
  sleep "$PAUSE"
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# Makes variant V's server (and Redis, if any) the current one: SERVER_PID, SERVER_PORT,
# REDIS_PID (scenario adds --redis-pid).
use_variant() {
  redis_use "$1"
  server_use "$1" || { echo "!! no server running for $1" >&2; return 1; }
}

# TARGET: the loadgen's --url (and --tls-ca for a TLS variant) for variant V on SERVER_PORT.
set_target() {
  if uses_tls "$1"; then
    TARGET=(--url "https://127.0.0.1:$SERVER_PORT" --tls-ca "$TLS_CERT")
  else
    TARGET=(--url "http://127.0.0.1:$SERVER_PORT")
  fi
}

# ---- 1. every server, started once --------------------------------------------------------
STARTED=()
for v in "${VLIST[@]}"; do
  dir="$OUT/$v"
  mkdir -p "$dir"
  echo "== starting $v" >&2
  # A fresh Redis per redis variant: see bench/README.md ("Redis").
  redis_use "" # none current: start_redis sets it
  if uses_redis "$v"; then
    if ! start_redis "$dir"; then
      echo "!! could not start redis-server for $v (see $dir/redis.log); skipping it" >&2
      continue
    fi
    redis_save "$v"
  fi
  if ! start_server "$dir" "${SERVER_CMD[$v]}"; then
    echo "!! could not start $v (see $dir/server.err); skipping it" >&2
    stop_named_redis "$v"
    continue
  fi
  server_save "$v"
  STARTED+=("$v")
done
((${#STARTED[@]})) || { echo "no server could be started" >&2; exit 1; }
sleep 1

# ---- 2. connect, interleaved across the variants -----------------------------------------
# Round r of every variant, then round r+1 of every variant... Each round is one loadgen run:
# warm-up (not counted), pause, one measured batch; then the variant's rounds are merged into
# <variant>/connect-<transport>.json (median round, latencies over all rounds).
connect_interleaved() {
  local transport=$1 clients=$2 conc=$3 warm=$4
  local name="connect-$transport" r v
  echo "== $name: $CONN_ROUNDS rounds x (${STARTED[*]}), $warm warm-up + $clients measured each" >&2
  for ((r = 1; r <= CONN_ROUNDS; r++)); do
    for v in "${STARTED[@]}"; do
      use_variant "$v" || continue
      set_target "$v"
      scenario "$OUT/$v" "$name.round$r" connect "${TARGET[@]}" \
        --pid-tree "$SERVER_PID" --clients "$clients" --concurrency "$conc" \
        --transport "$transport" --warmup "$warm" --pause-secs "$CONN_PAUSE" \
        --source-addrs "$CONN_SRC"
    done
  done
  for v in "${STARTED[@]}"; do
    local files=()
    for ((r = 1; r <= CONN_ROUNDS; r++)); do
      [[ -s $OUT/$v/$name.round$r.json ]] && files+=("$OUT/$v/$name.round$r.json")
    done
    if ((${#files[@]} == 0)); then
      echo "!! $v / $name: no round succeeded" >&2
      continue
    fi
    echo "$LG connect-merge ${files[*]}" >>"$OUT/commands.txt"
    if ! "$LG" connect-merge "${files[@]}" >"$OUT/$v/$name.json" 2>"$OUT/$v/$name.log"; then
      echo "!! $v / $name: merge failed (see $OUT/$v/$name.log)" >&2
      rm -f "$OUT/$v/$name.json"
    fi
    cat "$OUT/$v/$name.log" >&2
  done
}
connect_interleaved websocket "$CONN_WS" "$CONN_WS_CONC" "$CONN_WS_WARM"
connect_interleaved polling-upgrade "$CONN_PU" "$CONN_PU_CONC" "$CONN_PU_WARM"

# ---- 3. per variant: fanout, rooms on its server; hold on a fresh one -------------------
# (The servers of the variants not yet done stay idle meanwhile, with no connection.)
for v in "${STARTED[@]}"; do
  dir="$OUT/$v"
  echo "== variant $v" >&2
  use_variant "$v" || continue
  set_target "$v"
  pid=$SERVER_PID
  scenario "$dir" fanout fanout "${TARGET[@]}" --pid-tree "$pid" \
    --receivers "$FAN_RECV" --senders "$FAN_SEND" --rates "$FAN_RATES" --step-secs "$FAN_STEP" \
    --drain-secs "$DRAIN"
  scenario "$dir" rooms rooms "${TARGET[@]}" --pid-tree "$pid" \
    --clients "$ROOM_CLIENTS" --group "$ROOM_GROUP" --rates "$ROOM_RATES" --step-secs "$ROOM_STEP" \
    --drain-secs "$DRAIN"
  stop_named_server "$v"
  # Idle memory is measured on a fresh server: after the load scenarios the allocator keeps
  # freed memory, and new connections would reuse it without growing RSS.
  if start_server "$dir" "${SERVER_CMD[$v]}" hold; then
    sleep 1
    set_target "$v"
    scenario "$dir" hold hold "${TARGET[@]}" --pid-tree "$SERVER_PID" \
      --clients "$HOLD" --settle-secs "$HOLD_SETTLE"
    stop_server
  fi
  if [[ -n $REDIS_PID ]]; then
    redis_alive || echo "!! redis-server exited during $v (see $dir/redis.log)" >&2
    stop_named_redis "$v"
  fi
done

"$LG" report --dir "$OUT" --variants "$VARIANTS" >"$OUT/table.md"
echo "== table ($OUT/table.md)" >&2
cat "$OUT/table.md"

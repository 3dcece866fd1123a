#!/usr/bin/env bash
# Fan-out tail latency next to one socketioxide process (issue 13), in one run on this machine:
# for every variant, one sender emitting `to_all` (a ~100-byte payload) to 1,000 and to 10,000
# websocket clients at several rates, then RSS per idle connection at 10,000 connections.
# Rounds are interleaved (round 1 of every variant, then round 2 ...), each round on a fresh
# server, so that all variants see the same machine state over time; memory is measured last, each
# variant on a fresh server. Prints a Markdown table
# (p50 / p99 / max / loss per rate, median over rounds, and the ratio to `single`), the run
# queue delay of the servers' and the load generator's threads per step (time ready to run but
# waiting for a CPU), and keeps every raw JSON under the result directory.
#
# Usage: bench/tail.sh [--quick] [--rounds N] [--variants single,cluster,...] [--no-build]
#                      [--out DIR]
# See bench/README.md ("Fan-out tail").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib/server.sh
source "$ROOT/bench/lib/server.sh"

declare -A SERVER_CMD=(
  [single]="target/release/examples/testapp --listen 127.0.0.1:PORT --standalone"
  [cluster]="target/release/examples/testapp --listen 127.0.0.1:PORT --workers 2"
  # Ablations: what a variant changes tells what the tail costs.
  [cluster-1w]="target/release/examples/testapp --listen 127.0.0.1:PORT --workers 1"
  [cluster-2t]="target/release/examples/testapp --listen 127.0.0.1:PORT --workers 2 --worker-threads 2"
  [cluster-1w2t]="target/release/examples/testapp --listen 127.0.0.1:PORT --workers 1 --worker-threads 2"
)

ROUNDS=3
VARIANTS="single,cluster"
BUILD=1
OUT=""
QUICK=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --variants) VARIANTS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=$2; shift ;;
    -h | --help)
      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
      echo "variants: ${!SERVER_CMD[*]}"
      exit 0
      ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
IFS=, read -r -a VLIST <<<"$VARIANTS"
for v in "${VLIST[@]}"; do
  [[ -n ${SERVER_CMD[$v]:-} ]] || { echo "unknown variant $v (known: ${!SERVER_CMD[*]})" >&2; exit 2; }
done

if [[ $QUICK = 1 ]]; then
  SMALL=200 SMALL_RATES=100,500 BIG=1000 BIG_RATES=20 STEP=2 HOLD=1000 ROUNDS=1
else
  SMALL=1000 SMALL_RATES=250,500,1000,2000 BIG=10000 BIG_RATES=10,20,50 STEP=5 HOLD=10000
fi
OUT=${OUT:-bench/results/tail-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LG=target/release/sio-loadgen
if [[ $BUILD = 1 ]]; then
  cargo build --release --examples -p sio-cluster >&2
  cargo build --release -p sio-loadgen >&2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

trap 'bench_cleanup' EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "rounds: $ROUNDS; steps ${STEP} s; ${SMALL} clients at ${SMALL_RATES} msg/s, ${BIG} at ${BIG_RATES} msg/s; hold ${HOLD}"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

run_lg() { # DIR NAME ARGS...: one loadgen run, JSON to DIR/NAME.json, log to DIR/NAME.log
  local dir=$1 name=$2
  shift 2
  echo "-- $(basename "$dir") / $name" >&2
  echo "$LG $*" >>"$OUT/commands.txt"
  if ! "$LG" "$@" >"$dir/$name.json" 2>"$dir/$name.log"; then
    echo "!! $(basename "$dir") / $name failed (see $dir/$name.log)" >&2
    rm -f "$dir/$name.json"
  fi
  sleep 1
}

for r in $(seq 1 "$ROUNDS"); do
  for v in "${VLIST[@]}"; do
    dir="$OUT/$v"
    mkdir -p "$dir"
    start_server "$dir" "${SERVER_CMD[$v]}" "$v-r$r"
    url=(--url "http://127.0.0.1:$SERVER_PORT" --pid-tree "$SERVER_PID")
    common=(--senders 1 --padding 64 --step-secs "$STEP" --drain-secs 3 --no-stop --by-worker)
    run_lg "$dir" "fanout-$SMALL-r$r" fanout "${url[@]}" --receivers $((SMALL - 1)) \
      --rates "$SMALL_RATES" "${common[@]}"
    run_lg "$dir" "fanout-$BIG-r$r" fanout "${url[@]}" --receivers $((BIG - 1)) \
      --rates "$BIG_RATES" --connect-concurrency 200 "${common[@]}"
    stop_server
  done
done
# Memory on a fresh server: after a fan-out the allocator keeps what 10,000 connections used,
# and a hold measured on that server would read a few KiB per connection.
for v in "${VLIST[@]}"; do
  dir="$OUT/$v"
  start_server "$dir" "${SERVER_CMD[$v]}" "$v-hold"
  run_lg "$dir" "hold-$HOLD" hold --url "http://127.0.0.1:$SERVER_PORT" --pid-tree "$SERVER_PID" \
    --clients "$HOLD" --concurrency 200
  stop_server
done

python3 "$ROOT/bench/lib/tail_table.py" "$OUT" "${VLIST[@]}" | tee "$OUT/table.md"
python3 "$ROOT/bench/lib/tail_plot.py" "$OUT" "$OUT/latency.svg" "${VLIST[@]}"
echo "plot: $OUT/latency.svg" >&2
echo "results in $OUT" >&2

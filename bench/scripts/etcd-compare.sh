#!/bin/bash
# Issue 5's etcd target: Tally's write throughput against a 3-member etcd cluster on
# loopback, same client count (50), same value size (100 B), SET/put only, in one run.
#
# Usage: bench/scripts/etcd-compare.sh            (build first:
#        cargo build --release -p tally-bench; needs etcd + etcdctl, Debian: etcd-server
#        etcd-client)
# Environment (all optional):
#   SECONDS_MEASURED=10 WARMUP=2   measured window and warmup of every run
#   CLIENTS=50 VALUE_SIZE=100      the headline workload (the ratio is computed on it)
#   PIPELINE_RUN=16                an extra Tally run with this pipeline depth (0: none);
#                                  shown for information, not part of the ratio
#   ETCD_PORT_BASE=23790           clients on BASE+1..3, peers on BASE+11..13
#   ETCD_SPREAD=0                  1: spread etcd clients over all members (default: all
#                                  to the leader, etcd's best write path)
#
# etcd runs with its shipped defaults (fsync of its WAL on every commit, batched by its
# raft loop), data dirs in a fresh directory under the system temp dir, the same place
# Tally's embedded benchmark puts its WALs by default. etcd is stopped before Tally runs
# so that the two never share the CPUs, and removed on exit whatever happens.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BENCH="$ROOT/target/release/tally-bench"
SECONDS_MEASURED="${SECONDS_MEASURED:-10}"
WARMUP="${WARMUP:-2}"
CLIENTS="${CLIENTS:-50}"
VALUE_SIZE="${VALUE_SIZE:-100}"
PIPELINE_RUN="${PIPELINE_RUN:-16}"
BASE="${ETCD_PORT_BASE:-23790}"
ETCD_SPREAD="${ETCD_SPREAD:-0}"

for tool in etcd etcdctl jq; do
  command -v "$tool" >/dev/null || { echo "etcd-compare: $tool not found (apt-get install etcd-server etcd-client jq)" >&2; exit 1; }
done
[ -x "$BENCH" ] || { echo "etcd-compare: $BENCH missing; run: cargo build --release -p tally-bench" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/etcd-compare.XXXXXX")"
PIDS=()
stop_etcd() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
cleanup() { stop_etcd; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

CLUSTER=""
ENDPOINTS=""
for i in 1 2 3; do
  CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.1:$((BASE + 10 + i))"
  ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:$((BASE + i))"
done
for i in 1 2 3; do
  client="http://127.0.0.1:$((BASE + i))"
  peer="http://127.0.0.1:$((BASE + 10 + i))"
  etcd --name "m$i" --data-dir "$WORK/m$i" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new \
    --initial-cluster-token etcd-compare >"$WORK/m$i.log" 2>&1 &
  PIDS+=("$!")
done

healthy=0
for _ in $(seq 1 150); do
  if ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" --command-timeout=2s endpoint health >/dev/null 2>&1; then
    healthy=1
    break
  fi
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "etcd-compare: an etcd member exited; its logs:" >&2; tail -n 5 "$WORK"/m*.log >&2; exit 1; }
  done
  sleep 0.2
done
[ "$healthy" = 1 ] || { echo "etcd-compare: etcd not healthy after 30 s; logs:" >&2; tail -n 5 "$WORK"/m*.log >&2; exit 1; }

ETCD_VERSION="$(etcd --version | awk '/etcd Version/{print $3}')"
FS="$(df -T "$WORK" | awk 'NR==2{print $2" on "$1}')"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); temp dir $WORK ($FS)"
echo "etcd $ETCD_VERSION, 3 members on loopback, default settings; load $(cut -d' ' -f1-3 /proc/loadavg)"

spread_flag=()
[ "$ETCD_SPREAD" = 1 ] && spread_flag=(--spread)
ETCD_CMD=("$BENCH" etcd --endpoints "$ENDPOINTS" --clients "$CLIENTS" --value-size "$VALUE_SIZE" \
  --seconds "$SECONDS_MEASURED" --warmup "$WARMUP" "${spread_flag[@]}" --json)
echo "\$ ${ETCD_CMD[*]#"$ROOT/"}"
# CPU time of the three etcd processes over the run (user + system), to tell whether
# etcd was CPU-bound (where the JSON gateway costs) or waiting on its disk.
TCK="$(getconf CLK_TCK)"
etcd_cpu_s() { for pid in "${PIDS[@]}"; do cat "/proc/$pid/stat"; done | awk -v t="$TCK" '{s += $14 + $15} END {print s / t}'; }
CPU0="$(etcd_cpu_s)"; WALL0="$(date +%s.%N)"
ETCD_JSON="$("${ETCD_CMD[@]}")"
CPU1="$(etcd_cpu_s)"; WALL1="$(date +%s.%N)"
ETCD_CPU="$(awk -v a="$CPU0" -v b="$CPU1" -v w0="$WALL0" -v w1="$WALL1" 'BEGIN {printf "%.0f", (b - a) / (w1 - w0) * 100}')"
stop_etcd

TALLY_CMD=("$BENCH" --read-ratio 0 --clients "$CLIENTS" --value-size "$VALUE_SIZE" \
  --seconds "$SECONDS_MEASURED" --warmup "$WARMUP" --json)
echo "\$ ${TALLY_CMD[*]#"$ROOT/"}"
TALLY_JSON="$("${TALLY_CMD[@]}")"

PIPELINED_JSON=""
if [ "$PIPELINE_RUN" != 0 ]; then
  PIPELINED_CMD=("${TALLY_CMD[@]}" --pipeline "$PIPELINE_RUN")
  echo "\$ ${PIPELINED_CMD[*]#"$ROOT/"}"
  PIPELINED_JSON="$("${PIPELINED_CMD[@]}")"
fi

row() { # label json
  local fields
  fields="$(echo "$2" | jq -r '[.ops_per_sec, .p50_us, .p99_us, .p999_us, .max_us, .errors] | @tsv')"
  # shellcheck disable=SC2086
  printf '%-26s %10.0f %8.1f %8.1f %8.1f %9.1f %6d\n' "$1" $fields
}
echo
printf '%-26s %10s %8s %8s %8s %9s %6s\n' "system (clients $CLIENTS, ${VALUE_SIZE} B)" "ops/s" "p50_us" "p99_us" "p999_us" "max_us" "errors"
row "etcd $ETCD_VERSION" "$ETCD_JSON"
row "Tally" "$TALLY_JSON"
[ -n "$PIPELINED_JSON" ] && row "Tally pipeline $PIPELINE_RUN (info)" "$PIPELINED_JSON"
echo "etcd processes used ${ETCD_CPU}% of one CPU (sum of 3 members, warmup included; 200% = both CPUs)"
ETCD_OPS="$(echo "$ETCD_JSON" | jq .ops_per_sec)"
TALLY_OPS="$(echo "$TALLY_JSON" | jq .ops_per_sec)"
jq -rn --argjson t "$TALLY_OPS" --argjson e "$ETCD_OPS" \
  'if $e > 0 then "ratio Tally / etcd at the same clients and value size: \(($t / $e * 10 | round) / 10)x (target: at least 50x) -> \(if $t >= 50 * $e then "met" else "NOT met" end)" else "etcd completed no operation" end'

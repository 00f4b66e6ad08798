#!/bin/bash
# CPU per thread name of a running tally-bench (embedded 3-node cluster) over a window.
# Usage: bench/scripts/thread-cpu.sh BIN SECONDS ARGS...   e.g.
#   bench/scripts/thread-cpu.sh target/release/tally-bench 5 --clients 50 --pipeline 16 --read-ratio 0
# Prints the bench's result line, then CPU seconds per thread-name group (the node
# number stripped: tally-apply-1..3 are one row) during the measured window and the
# total, from /proc/PID/task/*/stat (utime + stime, clock ticks).
set -euo pipefail
BIN=$1; SECS=$2; shift 2
OUT=$(mktemp)
"$BIN" "$@" --seconds "$SECS" --warmup 1 >"$OUT" 2>/dev/null &
PID=$!
snap() { for t in /proc/$PID/task/*; do
  [ -r "$t/stat" ] || continue
  name=$(cat "$t/comm" 2>/dev/null) || continue
  # fields 14, 15 after the ")" of the comm field
  rest=$(sed 's/^.*) //' "$t/stat" 2>/dev/null) || continue
  set -- $rest
  echo "${t##*/} $name $(( ${12} + ${13} ))"
done; }
# Setup (election, prefill) takes a while: wait for all three nodes' threads, then for
# the warmup (1 s), and sample the measured window.
for _ in $(seq 600); do
  n=$(cat /proc/$PID/task/*/comm 2>/dev/null | grep -c '^tally-apply' || true)
  [ "$n" -ge 3 ] && grep -qs '^client-io' /proc/$PID/task/*/comm && break
  sleep 0.1
done
# The run ends warmup (1 s) + SECONDS after the cluster is up: sample 1.5 s in and
# 1 s before the end.
sleep 1.5; A=$(snap); sleep "$(echo "$SECS - 1.5" | bc)"; B=$(snap)
WINDOW=$(echo "$SECS - 1.5" | bc)
wait $PID || true
grep -v '^#' "$OUT" | tail -3
rm -f "$OUT"
HZ=$(getconf CLK_TCK)
join <(echo "$A" | LC_ALL=C sort -k1,1) <(echo "$B" | LC_ALL=C sort -k1,1) | awk -v hz=$HZ -v secs="$WINDOW" '
  { name=$2; gsub(/-[0-9]+(-[0-9]+)?$/, "", name); d=($5-$3)/hz; cpu[name]+=d; total+=d }
  END { for (n in cpu) printf "%-22s %6.2f s  %5.1f %%\n", n, cpu[n], 100*cpu[n]/total; printf "%-22s %6.2f s over %s s\n", "total", total, secs }' | sort -k2 -rn

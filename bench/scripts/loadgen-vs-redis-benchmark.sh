#!/bin/bash
# Usage: bench/scripts/loadgen-vs-redis-benchmark.sh LABEL  (a redis-server already on
# 127.0.0.1:6399; build first: cargo build --release -p tally-bench). Interleaves redis-benchmark and
# tally-bench runs of the same workload; prints redis-server CPU share (CPU time / wall
# time) for each.
B="$(dirname "$0")/../../target/release/tally-bench"
PID=$(redis-cli -p 6399 info server | tr -d '\r' | awk -F: '/^process_id/{print $2}')
TCK=$(getconf CLK_TCK)
cpu() { awk -v t=$TCK '{print ($14+$15)/t}' /proc/$PID/stat; }
echo "=== $1 === $(redis-cli -p 6399 config get appendonly | tr '\n' ' ') $(redis-cli -p 6399 config get appendfsync | tr '\n' ' ') load: $(cut -d' ' -f1-3 /proc/loadavg)"
rb() { # args: test pipeline n
  local w0=$(date +%s.%N); local c0=$(cpu); local out=$(redis-benchmark -p 6399 -t $1 -d 100 -c 50 -P $2 -n $3 -q | tr '\r' '\n' | grep "per second"); local c1=$(cpu); local w1=$(date +%s.%N)
  local rps=$(echo "$out" | awk '{print $2}')
  echo "redis-benchmark -t $1 -d 100 -c 50 -P $2 -n $3 -q : $out | redis-server cpu=$(python3 -c "print(round(($c1-$c0)/($w1-$w0)*100))")%"
}
tb() { # args: pipeline read_ratio
  local w0=$(date +%s.%N); local c0=$(cpu); local out=$($B --target 127.0.0.1:6399 --clients 50 --pipeline $1 --value-size 100 --seconds 5 --read-ratio $2 --json 2>/dev/null); local c1=$(cpu); local w1=$(date +%s.%N)
  python3 -c "
import json; d=json.loads('''$out''')
print('tally-bench --clients 50 --pipeline $1 --read-ratio $2 --seconds 5 : ops/s=%d p50=%.0fus p99=%.0fus p999=%.0fus max=%.0fus errors=%d | redis-server cpu=%d%%' % (d['ops_per_sec'], d['p50_us'], d['p99_us'], d['p999_us'], d['max_us'], d['errors'], round(($c1-$c0)/($w1-$w0)*100)))"
}
rb set 16 500000; tb 16 0.0
rb set 1 100000; tb 1 0.0
rb get 16 500000; tb 16 1.0
rb get 1 100000; tb 1 1.0

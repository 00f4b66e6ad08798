#!/bin/bash
# GET 50 x 16 and 50 x 1 (100-byte values, 100,000 keys: tally-bench's defaults), the
# embedded 3-node cluster before vs after, alternating, with Redis (AOF always, the same
# load generator) in every round. Then SET 50 x 16 per-thread CPU, before vs after.
# Usage: BEFORE=/path/to/old/tally-bench bench/scripts/reads-before-after.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE=${BEFORE:?path of the "before" tally-bench (release)}
AFTER=${AFTER:-target/release/tally-bench}
SECS=${1:-5}
DIR=${DIR:-/tmp}
PORT=6398
REDIS_DIR=$(mktemp -d -p "$DIR" redis-aof-XXXXXX)
redis-server --port $PORT --dir "$REDIS_DIR" --appendonly yes --appendfsync always \
  --save "" --daemonize no --logfile "$REDIS_DIR/log" &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null; wait $REDIS_PID 2>/dev/null; rm -rf "$REDIS_DIR"' EXIT
until redis-cli -p $PORT ping >/dev/null 2>&1; do sleep 0.1; done
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
line() { awk '$1=="50" {printf "ops/s %8d  p50 %7.0f us  p99 %7.0f us\n", $5, $6, $7}'; }
for round in ${ROUNDS:-1 2 3}; do
  for p in 16 1; do
    for which in before after; do
      bin=$BEFORE; [ $which = after ] && bin=$AFTER
      echo "round $round get-p$p $which: $($bin --dir "$DIR" --clients 50 --pipeline $p --read-ratio 1 --seconds "$SECS" --warmup 1 2>/dev/null | line)"
    done
    echo "round $round get-p$p redis:  $($AFTER --target 127.0.0.1:$PORT --clients 50 --pipeline $p --read-ratio 1 --seconds "$SECS" --warmup 1 2>/dev/null | line)"
  done
done
for round in ${ROUNDS:-1 2 3}; do
  for which in before after; do
    bin=$BEFORE; [ $which = after ] && bin=$AFTER
    echo "round $round set-p16 $which:"
    bench/scripts/thread-cpu.sh "$bin" "$SECS" --dir "$DIR" --clients 50 --pipeline 16 --read-ratio 0 | grep -E "^ +50|total|tally-apply|client-io|tally-raft"
  done
done

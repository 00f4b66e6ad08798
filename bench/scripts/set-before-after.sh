#!/bin/bash
# SET 50 x 16 (100-byte values), embedded 3-node cluster, before vs after, alternating.
BEFORE=${BEFORE:?path of the "before" tally-bench (release)}
AFTER=${AFTER:-target/release/tally-bench}
for round in ${ROUNDS:-1 2 3}; do
  for which in before after; do
    bin=$BEFORE; [ $which = after ] && bin=$AFTER
    line=$($bin --clients 50 --pipeline 16 --read-ratio 0 --seconds 5 --warmup 1 2>/dev/null | awk '$1=="50" && $2=="16" {print}')
    echo "round $round $which: $line"
  done
done

#!/usr/bin/env bash
# Runs the WAL measurements recorded in docs/BENCHMARKS.md on one directory.
# Usage: [WITH_RAFT_ENGINE=1] [ROUNDS=N] [BENCH_BINS="label=path ..."] \
#          bench/scripts/wal-measure.sh [DIR] [SECONDS]
# BENCH_BINS alternates several tally-bench builds round by round (an A/B in one run);
# default: this checkout's release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:-/tmp}"
SECONDS_PER_RUN="${2:-5}"
ROUNDS="${ROUNDS:-1}"
if [ -z "${BENCH_BINS:-}" ]; then
  cargo build --release -p tally-bench >/dev/null
  BENCH_BINS="tally=target/release/tally-bench"
fi
echo "# machine: nproc=$(nproc) kernel=$(uname -r) dir=$DIR ($(df -h "$DIR" | awk 'NR==2{print $1}'))"
for round in $(seq 1 "$ROUNDS"); do
  for labelled in $BENCH_BINS; do
    label="${labelled%%=*}"
    BIN="${labelled#*=}"
    run() { echo "\$ [round $round, $label] tally-bench wal $*"; "$BIN" wal --json --dir "$DIR" --seconds "$SECONDS_PER_RUN" "$@"; }
    run --writers 64 --value-size 128
    run --writers 64 --value-size 128 --backend sync
    run --writers 64 --value-size 4096
    run --writers 64 --value-size 128 --inflight 1
    run --writers 64 --value-size 128 --inflight 1 --backend sync
    run --writers 1 --value-size 128 --inflight 1
    run --writers 1 --value-size 128 --inflight 1 --backend sync
  done
done
if command -v fio >/dev/null; then
  FIO_DIR=$(mktemp -d -p "$DIR" fio-XXXXXX)
  echo "\$ fio --name=seq --rw=write --bs=1m --size=1g --fdatasync=1 --directory=$FIO_DIR"
  fio --name=seq --rw=write --bs=1m --size=1g --fdatasync=1 --directory="$FIO_DIR" --output-format=json \
    | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print("fio seq write+fdatasync: %.1f MB/s" % (j["bw_bytes"]/1e6))'
  rm -f "$FIO_DIR"/*
  # The same over a file fio wrote first: the device without the cost of new page-cache
  # pages (on this VM, writing into pages never used before is the slow part).
  echo "\$ fio --name=seq --rw=write --bs=1m --size=1g --fdatasync=1 --overwrite=1 --directory=$FIO_DIR"
  fio --name=seq --rw=write --bs=1m --size=1g --fdatasync=1 --overwrite=1 --directory="$FIO_DIR" --output-format=json \
    | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print("fio seq overwrite+fdatasync: %.1f MB/s" % (j["bw_bytes"]/1e6))'
  rm -f "$FIO_DIR"/*
  echo "\$ fio --name=lat --rw=write --bs=4k --size=8m --fdatasync=1 --directory=$FIO_DIR"
  fio --name=lat --rw=write --bs=4k --size=8m --fdatasync=1 --directory="$FIO_DIR" --output-format=json \
    | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["sync"]["lat_ns"]["percentile"]; print("fio fdatasync latency: p50 %.0f us, p99 %.0f us" % (j["50.000000"]/1e3, j["99.000000"]/1e3))'
  rm -rf "$FIO_DIR"
fi
if [ "${WITH_RAFT_ENGINE:-0}" = 1 ]; then
  # Blocking callers against raft-engine 0.4, interleaved 1 s slices (separate cargo project).
  cargo build --release --manifest-path bench/raft-engine-compare/Cargo.toml >/dev/null
  bench/raft-engine-compare/target/release/raft-engine-compare "$DIR" 64 128 "$SECONDS_PER_RUN" \
    raft-engine,tally-sync,tally-auto "$SECONDS_PER_RUN"
fi

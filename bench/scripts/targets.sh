#!/usr/bin/env bash
# Measures every Tally target of the benchmark issue against its Redis peer in one run,
# with one load generator (tally-bench) for both, and prints one line per target.
#
# Usage: bench/scripts/targets.sh [SECONDS] [DIR]
#   SECONDS  measured seconds per run (default 5; warmup 1 s)
#   DIR      where Redis's AOF and Tally's WALs live (default: the system temp dir)
# Needs redis-server (Debian: apt-get install redis-server). Builds tally-bench first.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-5}"
DIR="${2:-${TMPDIR:-/tmp}}"
BIN=target/release/tally-bench
PORT=6399
cargo build --release -p tally-bench >/dev/null 2>&1
REDIS_DIR=$(mktemp -d -p "$DIR" redis-aof-XXXXXX)
redis-server --port $PORT --dir "$REDIS_DIR" --appendonly yes --appendfsync always \
  --save "" --daemonize no --logfile "$REDIS_DIR/log" &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null; wait $REDIS_PID 2>/dev/null; rm -rf "$REDIS_DIR"' EXIT
until redis-cli -p $PORT ping >/dev/null 2>&1; do sleep 0.1; done

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r), dir $DIR ($(df -h "$DIR" | awk 'NR==2{print $1}')), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# redis $(redis-server --version | awk '{print $3}') appendonly yes appendfsync always; tally: embedded 3-node cluster"
COMMON=(--clients 50 --value-size 100 --seconds "$SECS" --warmup 1 --json)
run() { # label, args...
  local label=$1; shift
  "$BIN" "$@" 2>/dev/null | python3 -c '
import json,sys
label=sys.argv[1]
for line in sys.stdin:
    d=json.loads(line)
    e=d.get("entries_per_fsync")
    print("%-28s ops/s %9.0f  p50 %8.0f us  p99 %8.0f us  p999 %8.0f us  errors %d%s" % (label, d["ops_per_sec"], d["p50_us"], d["p99_us"], d["p999_us"], d["errors"], "" if e is None else "  entries/fsync %.1f" % e))
' "$label"
}
for what in "set-p16:--pipeline 16 --read-ratio 0" "set-p1:--pipeline 1 --read-ratio 0" "get-p16:--pipeline 16 --read-ratio 1" "get-p1:--pipeline 1 --read-ratio 1"; do
  name=${what%%:*}; args=${what#*:}
  # shellcheck disable=SC2086
  run "redis  $name" --target 127.0.0.1:$PORT "${COMMON[@]}" $args
  # shellcheck disable=SC2086
  run "tally  $name" --dir "$DIR" "${COMMON[@]}" $args
done

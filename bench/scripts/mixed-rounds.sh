#!/usr/bin/env bash
# A read/write mix against three tally-server processes, alternated between builds:
# per round and build, a fresh cluster on loopback, `tally-bench --target <leader>`
# (closed loop, CLIENTS x PIPELINE, READ_RATIO GETs, the rest SETs of 100 B over 100000
# keys). Prints one line per run and the medians per build.
#
# Usage: bench/scripts/mixed-rounds.sh ROUNDS BIN [BIN...]
#   BIN      tally-server binaries ("label=path" or a path)
# Environment: BENCH (the load generator, default target/release/tally-bench), CLIENTS
#   (50), PIPELINE (16), READ_RATIO (0.5), SECS (5), PORT_BASE (17600)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="$1"; shift
BENCH="${BENCH:-target/release/tally-bench}"
CLIENTS="${CLIENTS:-50}"; PIPELINE="${PIPELINE:-16}"; READ_RATIO="${READ_RATIO:-0.5}"
SECS="${SECS:-5}"; PORT_BASE="${PORT_BASE:-17600}"
LOG=$(mktemp)
PIDS=()
WORK=""
stop() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  [ -n "$WORK" ] && rm -rf "$WORK"
  WORK=""
}
trap 'stop; rm -f "$LOG"' EXIT
run_one() { # label binary
  local label=$1 bin=$2 leader="" role peers
  WORK=$(mktemp -d)
  for id in 1 2 3; do
    peers=()
    for o in 1 2 3; do [ "$o" = "$id" ] || peers+=(--peer "$o=127.0.0.1:$((PORT_BASE + o))"); done
    "$bin" --id "$id" --dir "$WORK/n$id" --listen-peer "127.0.0.1:$((PORT_BASE + id))" \
      --listen-client "127.0.0.1:$((PORT_BASE + 100 + id))" "${peers[@]}" 2>"$WORK/log$id" &
    PIDS+=($!)
  done
  for _ in $(seq 300); do
    for id in 1 2 3; do
      role=$(redis-cli -p $((PORT_BASE + 100 + id)) INFO raft 2>/dev/null | tr -d '\r' | sed -n 's/^role://p')
      [ "$role" = leader ] && leader=$id
    done
    [ -n "$leader" ] && break
    sleep 0.2
  done
  [ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
  "$BENCH" --target "127.0.0.1:$((PORT_BASE + 100 + leader))" --clients "$CLIENTS" \
    --pipeline "$PIPELINE" --read-ratio "$READ_RATIO" --seconds "$SECS" --warmup 1 --json \
    >"$WORK/out" 2>/dev/null
  python3 - "$label" "$WORK/out" <<'PY' | tee -a "$LOG"
import json, sys
label, path = sys.argv[1], sys.argv[2]
r = json.loads(open(path).read().strip().splitlines()[-1])
print(f"{label} ops/s {r['ops_per_sec']:.0f} p50_us {r['p50_us']:.0f} p99_us {r['p99_us']:.0f} errors {r['errors']}")
PY
  stop
}
for round in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    [ "$label" = "$spec" ] && label=$(basename "$bin")
    run_one "$label" "$bin"
  done
done
python3 - "$LOG" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append((float(f[2]), float(f[6])))
for label, runs in rows.items():
    print(f"median {label}: ops/s {statistics.median(r[0] for r in runs):.0f}, p99 us {statistics.median(r[1] for r in runs):.0f} over {len(runs)} rounds")
PY

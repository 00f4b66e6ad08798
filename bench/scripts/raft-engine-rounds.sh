#!/usr/bin/env bash
# Alternated rounds of bench/raft-engine-compare (raft-engine, tally-wal sync, tally-wal
# with the default backend, one process per build per round), then per-build medians of
# entries/s and of the ratio to the raft-engine run of the same process.
# Usage: bench/scripts/raft-engine-rounds.sh ROUNDS SECONDS SLICES DIR BIN [BIN...]
#   BIN: raft-engine-compare binaries (e.g. a copy built at main and this branch's);
#   SLICES: each engine's SECONDS run as that many slices interleaved with the others'.
set -euo pipefail
ROUNDS="$1"; SECS="$2"; SLICES="$3"; DIR="$4"; shift 4
LOG=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    "$bin" "$DIR" 64 128 "$SECS" raft-engine,tally-sync,tally-auto "$SLICES" | sed "s|^|round=$round bin=$bin |" | tee -a "$LOG"
  done
done
python3 - "$LOG" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"round=(\d+) bin=(\S+) (.+?)\s+(\d+) entries/s\s+ratio\s+([\d.]+)(.*)", line)
    if not m:
        continue
    _, b, name, rate, ratio, rest = m.groups()
    fs = re.search(r"entries/fsync ([\d.]+)", rest)
    rows.setdefault((b, name.strip()), []).append((int(rate), float(ratio), float(fs.group(1)) if fs else None))
print("\nmedians over rounds (entries/s, ratio to raft-engine, entries/fsync):")
for (b, name), values in rows.items():
    rates = [v[0] for v in values]; ratios = [v[1] for v in values]
    fsyncs = [v[2] for v in values if v[2] is not None]
    print(f"{b:<40} {name:<36} {statistics.median(rates):>9.0f}  ratio {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
          + (f"  entries/fsync {statistics.median(fsyncs):.1f}" if fsyncs else ""))
PY
rm -f "$LOG"

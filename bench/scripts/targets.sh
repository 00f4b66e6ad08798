#!/usr/bin/env bash
# Measures the targets of the performance issue (15) in one run: three tally-server
# processes on loopback against one Redis (appendonly yes, appendfsync always), both on
# the same disk, both driven by the same external load generator (redis-benchmark),
# rounds alternated; then the disk itself with fio (sequential write + fdatasync
# bandwidth, fdatasync latency) and per-thread CPU per acknowledged write from /proc.
#
# Usage: bench/scripts/targets.sh [ROUNDS] [DIR]
#   ROUNDS  alternated rounds of every test (default 3; the medians are the figures)
#   DIR     where Redis's AOF, Tally's WALs and fio's file live (default: the temp dir)
# Environment:
#   TESTS   which tests, space-separated, from: set-p16 set-p1 get-p16 get-p1
#           set-1k-p16 set-4k-p16 (default: all)
#   N       requests per SET test at 100 B (default 1000000; pipeline 1 and large values
#           scale it down), GET tests use 2N
#   TALLY_BINS  "label=path ..." tally-server binaries to alternate (A/B of two builds in
#           one run; default "tally=target/release/tally-server", built first)
#   TALLY_ARGS  extra tally-server flags; NO_FIO=1 skips fio; NO_REDIS=1 skips Redis;
#   CALLGRIND=1 adds instructions per write on the leader (callgrind-writes.sh, slow);
#   RB_THREADS=N runs redis-benchmark with --threads N (a load generator on more cores)
# Needs redis-server, redis-benchmark, python3, and fio for the disk figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-3}"
DIR="${2:-${TMPDIR:-/tmp}}"
TESTS="${TESTS:-set-p16 set-p1 get-p16 get-p1 set-1k-p16 set-4k-p16}"
N="${N:-1000000}"
REDIS_PORT=6399
BASE_PEER=17100
BASE_CLIENT=16380
if [ -z "${TALLY_BINS:-}" ]; then
  cargo build --release -p tally-net --bin tally-server >/dev/null 2>&1
  TALLY_BINS="tally=target/release/tally-server"
fi
WORK=$(mktemp -d -p "$DIR" tally-targets-XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# Per-thread CPU (utime + stime, clock ticks) of the given processes, summed by thread
# kind (the name without its node and thread numbers): "kind ticks" lines.
cpu_by_kind() {
  python3 - "$@" <<'EOF'
import os, re, sys
totals = {}
for pid in sys.argv[1:]:
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        switches = 0
        try:
            with open(f"{base}/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        switches += int(line.split()[-1])
        except OSError:
            pass
        kind = re.sub(r"[-_]?\d+", "", name) or name
        ticks_sum, switches_sum = totals.get(kind, (0, 0))
        totals[kind] = (ticks_sum + ticks, switches_sum + switches)
for kind, (ticks, switches) in sorted(totals.items()):
    print(kind, ticks, switches)
EOF
}

# Prints "us/write total, then the share of each thread kind" from two cpu_by_kind dumps.
cpu_report() { # before-file after-file writes
  python3 - "$1" "$2" "$3" "$(getconf CLK_TCK)" <<'EOF'
import sys
def load(path):
    out = {}
    for line in open(path):
        kind, ticks, switches = line.split()
        out[kind] = (int(ticks), int(switches))
    return out
before, after, writes, hz = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
delta = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
switches = sum(after[k][1] - before.get(k, (0, 0))[1] for k in after)
total = max(sum(delta.values()), 1)
us = total * 1e6 / hz / writes
parts = sorted(((v, k) for k, v in delta.items() if v > 0), reverse=True)
print("cpu %.2f us/op  %.2f switches/op (%s)" % (us, switches / writes, ", ".join("%s %d%%" % (k, round(100 * v / total)) for v, k in parts[:8])))
EOF
}

start_tally() { # binary
  local bin=$1 dir=$WORK/tally
  rm -rf "$dir"; mkdir -p "$dir"
  for id in 1 2 3; do
    local peers=()
    for other in 1 2 3; do
      [ "$other" = "$id" ] || peers+=(--peer "$other=127.0.0.1:$((BASE_PEER + other))")
    done
    "$bin" --id "$id" --dir "$dir/node$id" --listen-peer "127.0.0.1:$((BASE_PEER + id))" \
      --listen-client "127.0.0.1:$((BASE_CLIENT + id))" "${peers[@]}" ${TALLY_ARGS:-} \
      2>"$dir/node$id.log" &
    PIDS+=($!)
  done
  local deadline=$((SECONDS + 60))
  while :; do
    for id in 1 2 3; do
      if redis-cli -p $((BASE_CLIENT + id)) INFO raft 2>/dev/null | grep -q '^role:leader'; then
        LEADER_PORT=$((BASE_CLIENT + id))
        return 0
      fi
    done
    [ $SECONDS -lt $deadline ] || { echo "no leader within 60 s" >&2; exit 1; }
    sleep 0.2
  done
}

# Bytes the three members' WALs wrote so far (INFO raft wal_bytes, summed).
wal_bytes_total() {
  local total=0 bytes
  for id in 1 2 3; do
    bytes=$(redis-cli -p $((BASE_CLIENT + id)) INFO raft | tr -d '\r' | sed -n 's/^wal_bytes://p')
    total=$((total + ${bytes:-0}))
  done
  echo "$total"
}

start_redis() {
  local dir=$WORK/redis
  rm -rf "$dir"; mkdir -p "$dir"
  redis-server --port $REDIS_PORT --dir "$dir" --appendonly yes --appendfsync always \
    --save "" --daemonize no --logfile "$dir/log" &
  PIDS+=($!)
  until redis-cli -p $REDIS_PORT ping >/dev/null 2>&1; do sleep 0.1; done
}

# One redis-benchmark run: prints "ops/s p50_ms p99_ms" (its CSV output).
bench_once() { # port test value-bytes pipeline requests
  redis-benchmark ${RB_THREADS:+--threads "$RB_THREADS"} -p "$1" -t "$2" -d "$3" -P "$4" -n "$5" -r 100000 -c 50 --csv 2>/dev/null |
    python3 -c '
import csv, sys
rows = [r for r in csv.reader(sys.stdin) if r and r[0] != "test"]
r = rows[-1]
print(r[1], r[4], r[6])   # rps, p50, p99 (ms)
'
}

test_args() { # name -> "command value-bytes pipeline requests"
  case $1 in
    set-p16) echo "set 100 16 $N" ;;
    set-p1) echo "set 100 1 $((N / 5))" ;;
    get-p16) echo "get 100 16 $((N * 2))" ;;
    get-p1) echo "get 100 1 $((N / 2))" ;;
    set-1k-p16) echo "set 1024 16 $((N / 2))" ;;
    set-4k-p16) echo "set 4096 16 $((N / 5))" ;;
    *) echo "unknown test $1" >&2; exit 2 ;;
  esac
}

RESULTS=$WORK/results
: >"$RESULTS"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r), dir $DIR ($(df -h "$DIR" | awk 'NR==2{print $1}')), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# redis $(redis-server --version | awk '{print $3}') appendonly yes appendfsync always; tally: 3 tally-server processes; redis-benchmark -c 50 -r 100000"
for round in $(seq 1 "$ROUNDS"); do
  for test in $TESTS; do
    read -r cmd bytes pipeline requests <<<"$(test_args "$test")"
    if [ -z "${NO_REDIS:-}" ]; then
      start_redis
      [ "$cmd" = get ] && bench_once $REDIS_PORT set "$bytes" 16 200000 >/dev/null
      read -r rps p50 p99 <<<"$(bench_once $REDIS_PORT "$cmd" "$bytes" "$pipeline" "$requests")"
      printf "round %d %-11s %-8s ops/s %9.0f  p50 %7s ms  p99 %7s ms\n" "$round" "$test" redis "$rps" "$p50" "$p99" | tee -a "$RESULTS"
      stop_all
    fi
    for entry in $TALLY_BINS; do
      label=${entry%%=*}; bin=${entry#*=}
      start_tally "$bin"
      [ "$cmd" = get ] && bench_once "$LEADER_PORT" set "$bytes" 16 200000 >/dev/null
      cpu_by_kind "${PIDS[@]}" >"$WORK/cpu.before"
      wal_before=$(wal_bytes_total)
      read -r rps p50 p99 <<<"$(bench_once "$LEADER_PORT" "$cmd" "$bytes" "$pipeline" "$requests")"
      wal_after=$(wal_bytes_total)
      cpu_by_kind "${PIDS[@]}" >"$WORK/cpu.after"
      cpu=$(cpu_report "$WORK/cpu.before" "$WORK/cpu.after" "$requests")
      # The three WALs' bytes over the run's duration (requests / rate).
      wal=$(python3 -c "import sys; b, r, n = map(float, sys.argv[1:]); print('wal %.1f MB/s' % ((b / 1e6) / (n / r)))" "$((wal_after - wal_before))" "$rps" "$requests")
      printf "round %d %-11s %-8s ops/s %9.0f  p50 %7s ms  p99 %7s ms  %s  %s\n" "$round" "$test" "$label" "$rps" "$p50" "$p99" "$wal" "$cpu" | tee -a "$RESULTS"
      stop_all
    done
  done
done

if [ -z "${NO_FIO:-}" ] && command -v fio >/dev/null; then
  FIO_DIR=$WORK/fio; mkdir -p "$FIO_DIR"
  # Bandwidth: sequential 256 KiB writes, one fdatasync each (what a WAL batch does).
  fio --name=seq --directory="$FIO_DIR" --rw=write --bs=256k --size=512m --fdatasync=1 \
    --runtime=10 --time_based --output-format=json >"$WORK/fio-bw.json" 2>/dev/null
  # Latency: 4 KiB writes, fdatasync after each (a small commit).
  fio --name=lat --directory="$FIO_DIR" --rw=write --bs=4k --size=64m --fdatasync=1 \
    --runtime=10 --time_based --output-format=json >"$WORK/fio-lat.json" 2>/dev/null
  python3 - "$WORK/fio-bw.json" "$WORK/fio-lat.json" <<'EOF' | tee -a "$RESULTS"
import json, sys
bw = json.load(open(sys.argv[1]))["jobs"][0]
lat = json.load(open(sys.argv[2]))["jobs"][0]
mbps = bw["write"]["bw_bytes"] / 1e6
sync = lat["sync"]["lat_ns"]
p = sync.get("percentile", {})
p50 = p.get("50.000000", sync["mean"]) / 1e3
p99 = p.get("99.000000", 0) / 1e3
print("fio seq-write+fdatasync 256k: %.1f MB/s" % mbps)
print("fio fdatasync 4k: p50 %.0f us  p99 %.0f us  mean %.0f us" % (p50, p99, sync["mean"] / 1e3))
print("limit set-p1 (50 clients, two serialized fdatasyncs per commit): %.0f ops/s" % (50 / (2 * p50 / 1e6)))
EOF
fi

if [ -n "${CALLGRIND:-}" ]; then
  # Instructions per write on the leader (stable on a noisy machine); see the script.
  for entry in $TALLY_BINS; do
    label=${entry%%=*}; bin=${entry#*=}
    echo "callgrind $label leader: $(N=50000 bench/scripts/callgrind-writes.sh "$bin" "$WORK/callgrind.$label" 2>/dev/null | grep 'Ir per write')" | tee -a "$RESULTS"
  done
fi

echo "# medians over $ROUNDS rounds"
python3 - "$RESULTS" <<'EOF'
import re, statistics, sys
rows = {}
fio = {}
for line in open(sys.argv[1]):
    m = re.match(r"round \d+ (\S+)\s+(\S+)\s+ops/s\s+(\d+)\s+p50\s+(\S+) ms\s+p99\s+(\S+) ms(?:\s+wal (\S+) MB/s)?(?:\s+cpu (\S+) us/op)?", line)
    if m:
        rows.setdefault((m[1], m[2]), []).append((float(m[3]), float(m[4]), float(m[5]), m[7] and float(m[7]), m[6] and float(m[6])))
    m = re.match(r"fio seq-write.*: (\S+) MB/s", line)
    if m: fio["mbps"] = float(m[1])
    m = re.match(r"limit set-p1.*: (\d+) ops/s", line)
    if m: fio["limit"] = float(m[1])
med = lambda xs: statistics.median(xs)
for (test, who), vals in sorted(rows.items()):
    ops = med([v[0] for v in vals]); line = "%-11s %-8s ops/s %9.0f  p50 %6.2f ms  p99 %6.2f ms" % (test, who, ops, med([v[1] for v in vals]), med([v[2] for v in vals]))
    if vals[0][3] is not None:
        line += "  cpu %.2f us/op" % med([v[3] for v in vals])
    redis = rows.get((test, "redis"))
    if who != "redis" and redis:
        line += "  ratio %.2f" % (ops / med([v[0] for v in redis]))
    if who != "redis" and test == "set-p1" and "limit" in fio:
        line += "  of-disk-limit %.2f" % (ops / fio["limit"])
    if who != "redis" and vals[0][4] is not None:
        wal = med([v[4] for v in vals])
        line += "  3-wal %.1f MB/s" % wal
        if "mbps" in fio:
            line += " (%.2f of fio)" % (wal / fio["mbps"])
    print(line)
EOF

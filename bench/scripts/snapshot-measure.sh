#!/usr/bin/env bash
# The snapshot issue's measurements, in one run, on three tally-server processes driven
# by redis-benchmark (SET, 100-byte values, 50 clients, pipeline 16, 1000 keys):
#   1. RSS and directory size of every node after 1M, 5M and 10M SETs (flat = bounded);
#   2. restart time of a node with 10M writes of history (snapshot + log tail);
#   3. a follower down for 5M writes catching up by InstallSnapshot (time, bytes);
#   4. SET throughput and p99 with snapshots on (defaults) vs off, alternated rounds.
#
# Usage: bench/scripts/snapshot-measure.sh [DIR] [ROUNDS]   (ONLY_P99=1: part 4 only)
# Needs redis-benchmark and redis-cli (Debian: redis-tools). Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:-${TMPDIR:-/tmp}}"
ROUNDS="${2:-2}"
cargo build --release -p tally-net --bin tally-server >/dev/null 2>&1
BIN=target/release/tally-server
ROOT=$(mktemp -d -p "$DIR" tally-snapshot-measure-XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$ROOT"
}
trap cleanup EXIT

peer_port() { echo $((7300 + $1)); }
client_port() { echo $((6500 + $1)); }

start_member() { # id, cluster dir, extra args...
  local id=$1 root=$2; shift 2
  local peers=()
  for other in 1 2 3; do
    [ "$other" = "$id" ] || peers+=(--peer "$other=127.0.0.1:$(peer_port "$other")")
  done
  "$BIN" --id "$id" --dir "$root/n$id" --listen-peer "127.0.0.1:$(peer_port "$id")" \
    --listen-client "127.0.0.1:$(client_port "$id")" "${peers[@]}" "$@" \
    2>>"$root/n$id.log" &
  echo $! >"$root/n$id.pid"
  PIDS+=($!)
}

stop_member() { # id, cluster dir
  local pid
  pid=$(cat "$2/n$1.pid")
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

info() { # id, field
  redis-cli -p "$(client_port "$1")" INFO raft 2>/dev/null | tr -d '\r' | awk -F: -v k="$2" '$1==k{print $2}'
}

leader() {
  for id in 1 2 3; do
    [ "$(info "$id" role)" = leader ] && { echo "$id"; return; }
  done
  return 1
}

wait_leader() {
  for _ in $(seq 1 600); do leader >/dev/null 2>&1 && { leader; return; }; sleep 0.1; done
  echo "no leader" >&2; exit 1
}

rss_mb() { awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/$(cat "$1/n$2.pid")/status"; }
dir_mb() { du -sm "$1/n$2" | awk '{print $1}'; }

sets() { # leader id, count -> "ops/s p50_ms p99_ms"
  redis-benchmark -p "$(client_port "$1")" -t set -d 100 -c 50 -P 16 -r 1000 -n "$2" --csv 2>/dev/null |
    awk -F, 'NR==2{gsub(/"/,""); print $2, $5, $7}'
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r), dir $DIR, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# tally-server defaults: --snapshot-log-entries 250000 --snapshot-log-bytes 268435456 --log-retain-entries 10000"

if [ -z "${ONLY_P99:-}" ]; then
# 1. Growth: RSS and disk after 1M, 5M, 10M SETs over 1000 keys.
C="$ROOT/growth"; mkdir -p "$C"
for id in 1 2 3; do start_member "$id" "$C"; done
L=$(wait_leader)
done_m=0
for target in 1 5 10; do
  while [ "$done_m" -lt "$target" ]; do sets "$L" 1000000 >/dev/null; done_m=$((done_m + 1)); done
  line="after ${target}M SETs:"
  for id in 1 2 3; do
    line+="  n$id rss $(rss_mb "$C" "$id") MB dir $(dir_mb "$C" "$id") MB snapshot_index $(info "$id" snapshot_index) log_entries_in_memory $(info "$id" log_entries_in_memory)"
  done
  echo "$line"
done

# 2. Restart of a follower with 10M writes of history.
F=$(( L % 3 + 1 ))
commit=$(info "$L" commit_index)
stop_member "$F" "$C"
t0=$(date +%s.%N)
start_member "$F" "$C"
until [ "$(info "$F" applied_index 2>/dev/null || echo 0)" -ge "$commit" ] 2>/dev/null; do sleep 0.02; done
t1=$(date +%s.%N)
echo "restart of n$F with 10M writes of history: $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s to serve INFO with applied_index >= $commit; rss $(rss_mb "$C" "$F") MB"

# 3. A follower down for 5M writes catches up by InstallSnapshot.
stop_member "$F" "$C"
for _ in 1 2 3 4 5; do sets "$L" 1000000 >/dev/null; done
commit=$(info "$L" commit_index)
installed_before=0
t0=$(date +%s.%N)
start_member "$F" "$C"
until [ "$(info "$F" applied_index 2>/dev/null || echo 0)" -ge "$commit" ] 2>/dev/null; do sleep 0.02; done
t1=$(date +%s.%N)
echo "n$F down for 5M writes: caught up in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s; snapshots_installed $(( $(info "$F" snapshots_installed) - installed_before )); leader snapshot_bytes $(info "$L" snapshot_bytes); leader log_first_index $(info "$L" log_first_index)"
for id in 1 2 3; do stop_member "$id" "$C"; done
fi

# 4. SET 50 x 16 with snapshots on vs off, alternated.
for round in $(seq 1 "$ROUNDS"); do
  for mode in on off; do
    C="$ROOT/p99-$mode-$round"; mkdir -p "$C"
    extra=()
    [ "$mode" = off ] && extra=(--snapshot-log-entries 0 --snapshot-log-bytes 0)
    for id in 1 2 3; do start_member "$id" "$C" "${extra[@]}"; done
    L=$(wait_leader)
    sets "$L" 200000 >/dev/null
    read -r ops p50 p99 < <(sets "$L" 2000000)
    echo "round $round snapshots $mode: SET 50x16 $ops ops/s p50 $p50 ms p99 $p99 ms; snapshots_taken $(info "$L" snapshots_taken)"
    for id in 1 2 3; do stop_member "$id" "$C"; done
  done
done

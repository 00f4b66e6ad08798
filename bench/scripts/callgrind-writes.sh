#!/usr/bin/env bash
# Instructions per acknowledged write, counted by callgrind (stable on a noisy machine,
# unlike CPU time): three tally-server processes, ONE of them (the leader, or a
# follower with ROLE=follower) under `valgrind --tool=callgrind`; counting is switched
# on once the cluster is up, a fixed number of SETs (redis-benchmark -n N, 50 clients,
# pipeline P, value size D) is sent to the leader, the profiled member catches up, the
# counts are dumped. Prints Ir per write and the top functions (self cost).
# With T=get the same is done for reads: the keyspace (every key redis-benchmark's -r
# can draw) is loaded first, then N GETs are counted (lease reads, served by the
# leader's client I/O thread); it prints Ir per read.
#
# Usage: bench/scripts/callgrind-writes.sh [BINARY] [OUT]
#   BINARY  tally-server (default target/release/tally-server)
#   OUT     callgrind output file (default /tmp/callgrind.tally.out)
# Environment: N (default 100000), P (16), D (100), ROLE (leader|follower, leader),
#   T (set|get, set), PEER_PORT and CLIENT_PORT (bases: node i listens on base+i;
#   17200, 16480)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/tally-server}"
OUT="${2:-/tmp/callgrind.tally.out}"
N="${N:-100000}"; P="${P:-16}"; D="${D:-100}"; ROLE="${ROLE:-leader}"; T="${T:-set}"
case "$T" in set|get) ;; *) echo "T must be set or get" >&2; exit 2 ;; esac
R=100000
WORK=$(mktemp -d -p "${TMPDIR:-/tmp}" tally-callgrind-XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$WORK"' EXIT
PEER="${PEER_PORT:-17200}"; CLIENT="${CLIENT_PORT:-16480}"
for id in 1 2 3; do # another run on the same ports would be measured instead of this one
  if redis-cli -p $((CLIENT + id)) PING >/dev/null 2>&1; then
    echo "port $((CLIENT + id)) is in use (another run?); set CLIENT_PORT and PEER_PORT" >&2; exit 1
  fi
done
start() { # id, wrapper...
  local id=$1; shift
  local peers=()
  for other in 1 2 3; do [ "$other" = "$id" ] || peers+=(--peer "$other=127.0.0.1:$((PEER + other))"); done
  "$@" "$BIN" --id "$id" --dir "$WORK/node$id" --listen-peer "127.0.0.1:$((PEER + id))" \
    --listen-client "127.0.0.1:$((CLIENT + id))" "${peers[@]}" --election-timeout-ms 5000 \
    --heartbeat-ms 200 2>"$WORK/node$id.log" &
  PIDS+=($!)
}
role_of() { redis-cli -p $((CLIENT + $1)) INFO raft 2>/dev/null | tr -d '\r' | sed -n 's/^role://p'; }
field_of() { redis-cli -p $((CLIENT + $1)) INFO raft 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }
start 1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT"
start 2
start 3
leader=""
for _ in $(seq 1500); do
  for id in 1 2 3; do [ "$(role_of $id)" = leader ] && leader=$id; done
  [ -n "$leader" ] && break; sleep 0.2
done
[ -n "$leader" ] || { echo "no leader within 300 s" >&2; exit 1; }
want=1; [ "$ROLE" = follower ] && want=2
if [ "$leader" != "$want" ] && [ "$ROLE" = leader ]; then
  redis-cli -p $((CLIENT + leader)) TALLY TRANSFER 1 >/dev/null
  for _ in $(seq 300); do [ "$(role_of 1)" = leader ] && break; sleep 0.2; done
  leader=1
elif [ "$ROLE" = follower ] && [ "$leader" = 1 ]; then
  redis-cli -p $((CLIENT + 1)) TALLY TRANSFER 2 >/dev/null
  for _ in $(seq 300); do [ "$(role_of 2)" = leader ] && break; sleep 0.2; done
  leader=2
fi
echo "# leader node $leader, profiled node 1 ($ROLE), T=$T N=$N P=$P D=$D"
if [ "$T" = get ]; then
  # Every key -r can draw (redis-benchmark writes key:<12 digits>), so every GET hits.
  python3 -c "
import sys
value = b'x' * int(sys.argv[2])
out = sys.stdout.buffer
for i in range(int(sys.argv[1])):
    key = b'key:%012d' % i
    out.write(b'*3\\r\\n\$3\\r\\nSET\\r\\n\$%d\\r\\n%s\\r\\n\$%d\\r\\n%s\\r\\n' % (len(key), key, len(value), value))
" "$R" "$D" | redis-cli -p $((CLIENT + leader)) --pipe >/dev/null
  target=$(field_of "$leader" commit_index)
  until [ "$(field_of 1 applied_index)" -ge "$target" ] 2>/dev/null; do sleep 0.5; done
fi
# Warm up outside the count (the map reaches its key count, buffers their size).
redis-benchmark -p $((CLIENT + leader)) -t "$T" -d "$D" -P "$P" -n 20000 -r "$R" -c 50 -q >/dev/null
sleep 1
callgrind_control -i on "${PIDS[0]}" >/dev/null
redis-benchmark -p $((CLIENT + leader)) -t "$T" -d "$D" -P "$P" -n "$N" -r "$R" -c 50 -q | tr "\r" "\n" | grep -v "^ *$" | tail -1
target=$(field_of "$leader" commit_index)
until [ "$(field_of 1 applied_index)" -ge "$target" ] 2>/dev/null; do sleep 0.5; done
callgrind_control -i off "${PIDS[0]}" >/dev/null
callgrind_control -d "${PIDS[0]}" >/dev/null
sleep 1
dump=$(ls -t "$OUT".* | head -1)
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk "/PROGRAM TOTALS/ {gsub(\",\",\"\",\$1); print \$1}" || true)
what=write; [ "$T" = get ] && what=read
python3 -c "import sys; print('Ir per %s: %.0f' % (sys.argv[3], int(sys.argv[1]) / int(sys.argv[2])))" "$ir" "$N" "$what"
echo "# $dump"
callgrind_annotate "$dump" 2>/dev/null | sed -n '/file:function/,$p' | head -45 || true

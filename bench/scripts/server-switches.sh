#!/bin/bash
# User and system CPU of three tally-server processes during N SETs from redis-benchmark
# (50 clients, pipeline P, -r 100000) per node and per request; with PERF=1 also the
# system calls (by number: 24 sched_yield, 202 futex, 44/45 sendto/recvfrom, 10 mprotect)
# and context switches per thread kind counted by `perf record -e raw_syscalls:sys_enter
# -e sched:sched_switch` (counts, not times: valid on a busy machine; perf slows the run).
# Usage: [N=600000] [P=16] [PERF=1] bench/scripts/server-switches.sh [path/to/tally-server]
# Ports: peers 17901-17903, clients 16901-16903.
BIN=${1:-target/release/tally-server}; N=${N:-600000}; P=${P:-16}; T=${T:-set}
W=$(mktemp -d); PIDS=()
trap 'kill ${PIDS[@]} 2>/dev/null; wait 2>/dev/null; rm -rf $W' EXIT
for id in 1 2 3; do peers=(); for o in 1 2 3; do [ $o = $id ] || peers+=(--peer "$o=127.0.0.1:$((17900+o))"); done
  $BIN --id $id --dir $W/n$id --listen-peer 127.0.0.1:$((17900+id)) --listen-client 127.0.0.1:$((16900+id)) "${peers[@]}" 2>$W/log$id & PIDS+=($!); done
for _ in $(seq 100); do for id in 1 2 3; do r=$(redis-cli -p $((16900+id)) INFO raft 2>/dev/null | tr -d '\r' | sed -n 's/^role://p'); [ "$r" = leader ] && L=$id; done; [ -n "$L" ] && break; sleep 0.2; done
redis-benchmark -p $((16900+L)) -t set -d 100 -P $P -n 100000 -r 100000 -c 50 -q >/dev/null
st() { for p in ${PIDS[@]}; do set -- $(sed 's/^.*) //' /proc/$p/stat); echo -n "${12} ${13} "; done; }
A=($(st)); t0=$(date +%s.%N)
if [ -n "$PERF" ]; then perf record -q -e raw_syscalls:sys_enter -e sched:sched_switch -o $W/perf.data -p $(IFS=,; echo "${PIDS[*]}") 2>/dev/null & PP=$!; sleep 0.3; fi
redis-benchmark -p $((16900+L)) -t $T -d 100 -P $P -n $N -r 100000 -c 50 -q | tr '\r' '\n' | grep -v '^ *$' | tail -1
B=($(st)); t1=$(date +%s.%N)
if [ -n "$PERF" ]; then kill -INT $PP; wait $PP; perf script -i $W/perf.data -F pid,tid,comm,event,trace 2>/dev/null | cat > $W/raw.txt; cat $W/raw.txt | awk -v L=${PIDS[$((L-1))]} '{split($2,a,"/"); node=(a[1]==L)?"leader":"follower"; comm=$1; sub(/-[0-9]+$/,"",comm); if ($3 ~ /sys_enter/) k=node" "comm" NR"$5; else k=node" "comm" switch"; c[k]++} END {for (k in c) print c[k], k}' | sort -rn | head -40 > $W/perf.txt; cat $W/perf.txt; fi
python3 - "$N" "$t0" "$t1" "${A[@]}" "${B[@]}" <<'PY'
import sys
n=int(sys.argv[1]); t0,t1=float(sys.argv[2]),float(sys.argv[3]); v=list(map(int,sys.argv[4:])); a,b=v[:6],v[6:]
hz=100
for i in range(3):
    u=(b[2*i]-a[2*i])/hz; s=(b[2*i+1]-a[2*i+1])/hz
    print(f"node{i+1}: user {u:.2f}s sys {s:.2f}s  per op: user {u/n*1e6:.2f} us sys {s/n*1e6:.2f} us")
U=sum(b[0::2])-sum(a[0::2]); S=sum(b[1::2])-sum(a[1::2])
print(f"total per op: user {U/hz/n*1e6:.2f} us, sys {S/hz/n*1e6:.2f} us, wall {t1-t0:.1f}s")
PY

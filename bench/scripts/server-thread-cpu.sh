#!/bin/bash
# Per-thread CPU of three tally-server processes during N SETs (or GETs, T=get) from
# redis-benchmark (50 clients, pipeline P, value size D, -r 100000), after a 100,000-SET
# warm-up: user and system microseconds per acknowledged request, summed over the three
# replicas by role (leader / followers) and thread name, from /proc/PID/task/*/stat
# (10 ms ticks: at N=400000 one tick is 0.025 us per request).
# Usage: [N=400000] [P=16] [D=100] [T=set] [PEER_BASE=17500] [CLIENT_BASE=16700] \
#          bench/scripts/server-thread-cpu.sh [path/to/tally-server]
BIN=${1:-target/release/tally-server}; N=${N:-400000}; P=${P:-16}; T=${T:-set}; D=${D:-100}
W=$(mktemp -d); PIDS=()
trap 'kill ${PIDS[@]} 2>/dev/null; wait 2>/dev/null; rm -rf $W' EXIT
for id in 1 2 3; do peers=(); for o in 1 2 3; do [ $o = $id ] || peers+=(--peer "$o=127.0.0.1:$((${PEER_BASE:-17500}+o))"); done
  $BIN --id $id --dir $W/n$id --listen-peer 127.0.0.1:$((${PEER_BASE:-17500}+id)) --listen-client 127.0.0.1:$((${CLIENT_BASE:-16700}+id)) "${peers[@]}" 2>$W/log$id & PIDS+=($!); done
for _ in $(seq 100); do for id in 1 2 3; do r=$(redis-cli -p $((${CLIENT_BASE:-16700}+id)) INFO raft 2>/dev/null | tr -d '\r' | sed -n 's/^role://p'); [ "$r" = leader ] && L=$id; done; [ -n "$L" ] && break; sleep 0.2; done
redis-benchmark -p $((${CLIENT_BASE:-16700}+L)) -t set -d $D -P $P -n 100000 -r 100000 -c 50 -q >/dev/null
snap() { for p in ${PIDS[@]}; do role=f; [ $p = ${PIDS[$((L-1))]} ] && role=L; for t in /proc/$p/task/*; do n=$(cat $t/comm); set -- $(sed 's/^.*) //' $t/stat); echo "$role ${t##*/} ${n%-[0-9]*} ${12} ${13}"; done; done; }
snap > $W/a
redis-benchmark -p $((${CLIENT_BASE:-16700}+L)) -t $T -d $D -P $P -n $N -r 100000 -c 50 -q | tr '\r' '\n' | grep -v '^ *$' | tail -1
snap > $W/b
python3 - $N $W/a $W/b <<'PY'
import sys,collections
n=int(sys.argv[1]); a={}; 
for l in open(sys.argv[2]): r,t,name,u,s=l.split(); a[t]=(int(u),int(s))
agg=collections.defaultdict(lambda:[0,0])
for l in open(sys.argv[3]):
    r,t,name,u,s=l.split(); u0,s0=a.get(t,(0,0)); k=(r,name); agg[k][0]+=int(u)-u0; agg[k][1]+=int(s)-s0
tot=[0,0]
for (r,name),(u,s) in sorted(agg.items(), key=lambda kv:-(kv[1][0]+kv[1][1])):
    if u+s==0: continue
    role='leader' if r=='L' else 'followers'
    print(f"{role:9} {name:16} user {u/100/n*1e6:5.2f} us  sys {s/100/n*1e6:5.2f} us")
    tot[0]+=u; tot[1]+=s
print(f"total user {tot[0]/100/n*1e6:.2f} us sys {tot[1]/100/n*1e6:.2f} us per op")
PY

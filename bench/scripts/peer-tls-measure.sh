#!/usr/bin/env bash
# Peer TLS vs plain TCP between members, same run, alternating: a 3-process
# tally-server cluster on loopback per round, SET then GET with 50 clients x pipeline 16
# from tally-bench --target. Usage: bench/scripts/peer-tls-measure.sh [ROUNDS] [SECONDS]
# (default 2 rounds of 5 s). Needs release builds of tally-server and tally-bench, openssl
# and redis-cli. Output: one line per run; the figures in docs/BENCHMARKS.md come from it.
# BOTH_PORTS=1: the TLS runs also encrypt the client port (--client-tls-*), and both
# modes are driven by `redis-benchmark [--tls] -t set|get -d 100 -c 50 -P 16 -n N -q`
# (tally-bench speaks no TLS); N = 40000 x SECONDS.
set -euo pipefail
rounds=${1:-2}
seconds=${2:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
server=$root/target/release/tally-server
bench=$root/target/release/tally-bench
work=$(mktemp -d /tmp/tally-peer-tls.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A CA and one certificate per node naming node-<id>.tally.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
for id in 1 2 3; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=node-$id.tally" \
    -keyout "$work/node-$id.key" -out "$work/node-$id.csr" 2>/dev/null
  openssl x509 -req -in "$work/node-$id.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -out "$work/node-$id.pem" \
    -extfile <(printf "subjectAltName=DNS:node-%s.tally\nextendedKeyUsage=serverAuth,clientAuth" "$id") \
    2>/dev/null
done
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$work/client-port.key" -out "$work/client-port.csr" 2>/dev/null
openssl x509 -req -in "$work/client-port.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -out "$work/client-port.pem" \
  -extfile <(printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth") \
  2>/dev/null
both=${BOTH_PORTS:-0}
cli_tls=()

start_cluster() { # $1: plain|tls
  pids=()
  rm -rf "$work/data"
  for id in 1 2 3; do
    local peers=() tls=()
    for other in 1 2 3; do
      [ "$other" = "$id" ] || peers+=(--peer "$other=127.0.0.1:$((17100 + other))")
    done
    if [ "$1" = tls ]; then
      tls=(--peer-tls-cert "$work/node-$id.pem" --peer-tls-key "$work/node-$id.key"
           --peer-tls-ca "$work/ca.pem")
      if [ "$both" = 1 ]; then
        tls+=(--client-tls-cert "$work/client-port.pem" --client-tls-key "$work/client-port.key")
      fi
    fi
    "$server" --id "$id" --dir "$work/data/node-$id" --listen-peer "127.0.0.1:$((17100 + id))" \
      --listen-client "127.0.0.1:$((16380 + id))" "${peers[@]}" "${tls[@]}" \
      2> "$work/node-$id-$1.log" &
    pids+=($!)
  done
  cli_tls=()
  if [ "$1" = tls ] && [ "$both" = 1 ]; then cli_tls=(--tls --cacert "$work/ca.pem"); fi
  for _ in $(seq 1 200); do
    for port in 16381 16382 16383; do
      if redis-cli "${cli_tls[@]}" -p "$port" INFO raft 2>/dev/null | grep -q '^role:leader'; then
        leader_port=$port
        return 0
      fi
    done
    sleep 0.1
  done
  echo "no leader" >&2
  return 1
}

stop_cluster() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

for round in $(seq 1 "$rounds"); do
  for mode in plain tls; do
    start_cluster "$mode"
    if [ "$both" = 1 ]; then
      for op in set get; do
        result=$(redis-benchmark "${cli_tls[@]}" -p "$leader_port" -t "$op" -d 100 -c 50 -P 16 \
          -n $((40000 * seconds)) -q 2>/dev/null | tr '\r' '\n' | grep -i "requests per second" | tail -1)
        echo "round $round ports=$mode $op 50x16 (redis-benchmark): $result"
      done
      stop_cluster
      continue
    fi
    for op in SET GET; do
      ratio=0; [ "$op" = GET ] && ratio=1
      line=$("$bench" --target 127.0.0.1:16381 --target 127.0.0.1:16382 --target 127.0.0.1:16383 \
        --read-ratio "$ratio" --clients 50 --pipeline 16 --seconds "$seconds" --json 2>/dev/null | tail -1)
      echo "$line" | R=$round M=$mode O=$op python3 -c 'import json, os, sys
r = json.load(sys.stdin); r = r[0] if isinstance(r, list) else r
print("round %s peer=%s %s 50x16: %.0f ops/s, p50 %.2f ms, p99 %.2f ms" % (os.environ["R"],
      os.environ["M"], os.environ["O"], r["ops_per_sec"], r["p50_us"] / 1000, r["p99_us"] / 1000))' 
    done
    stop_cluster
  done
done

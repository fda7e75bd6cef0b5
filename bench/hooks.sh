#!/usr/bin/env bash
# The application backend in the loop, measured: connects/s and rpc round trips/s with the connect
# and rpc proxy against a local backend (`switchboard bench backend`), beside the same without it;
# and webhook events delivered per second (a queue of events built up while the backend is down,
# then drained). Server pinned to core 0, bench and backend to core 1. Prints a Markdown table.
#
#   bench/hooks.sh            # about 2 minutes
#
# Every load is bounded (counts, durations, `timeout`) and goes to 127.0.0.0/8 only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/target/bench-results/hooks}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet
SB=$ROOT/target/release/switchboard
PORT=18100
BACKEND=127.0.0.1:18101
FLAGS="--join-leave false --client-command-rate 0 --connection-rate-per-ip 0"
URL=ws://127.0.0.1:$PORT/connection/websocket
CONNECTIONS=${CONNECTIONS:-10000}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

server_pid=""
start_server() { # extra flags...
  rm -rf "$OUT/data"
  restart_server "$@"
}
restart_server() { # extra flags... (keeps the data directory)
  # shellcheck disable=SC2086
  taskset -c 0 "$SB" serve --port $PORT $FLAGS --data-dir "$OUT/data" "$@" >"$OUT/server.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid")
  wait_port 127.0.0.1:$PORT
}
stop_server() { kill -INT "$server_pid"; wait "$server_pid" || true; }

backend_pid=""
start_backend() {
  taskset -c 1 "$SB" bench backend --listen $BACKEND -d 10m >"$OUT/backend.log" 2>&1 &
  backend_pid=$!; pids+=("$backend_pid")
  wait_port $BACKEND
}
stop_backend() { kill "$backend_pid"; wait "$backend_pid" 2>/dev/null || true; }

bench() { # name, bench arguments...
  local name=$1; shift
  timeout 300 taskset -c 1 "$SB" bench "$@" --url "$URL" --pid "$server_pid" --json --quiet >"$OUT/$name.json"
}

PROXY="--proxy-connect-endpoint http://$BACKEND/connect --proxy-rpc-endpoint http://$BACKEND/rpc"
start_backend
for mode in plain proxy; do
  if [ $mode = proxy ]; then start_server $PROXY; else start_server; fi
  bench "connect-$mode" connect -c "$CONNECTIONS" -m 200
  stop_server
  if [ $mode = proxy ]; then start_server $PROXY; else start_server; fi
  bench "rpc-$mode" rpc -k 50 -d 10s
  stop_server
done
stop_backend

# Webhooks: the connects and disconnects of a connection storm queue in the outbox while the
# backend is down; the node stops (they stay queued), the backend comes up, and the node starts
# again and drains its outbox from the start (no lane waits out a retry backoff).
start_server --webhook-endpoint "http://$BACKEND/events"
bench webhook-load connect -c "$CONNECTIONS" -m 200
stop_server
start_backend
restart_server --webhook-endpoint "http://$BACKEND/events"
expected=$((2 * CONNECTIONS))
for _ in $(seq 600); do
  got=$(curl -s "http://$BACKEND/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])')
  [ "$got" -ge "$expected" ] && break
  sleep 0.1
done
curl -s "http://$BACKEND/stats" >"$OUT/webhooks.json"
stop_server
stop_backend

python3 - "$OUT" "$CONNECTIONS" <<'PY'
import json, sys, os
out, n = sys.argv[1], sys.argv[2]
load = lambda name: json.load(open(os.path.join(out, name + ".json")))
rows = []
for mode, label in (("plain", "built-in rules"), ("proxy", "backend proxy")):
    c, r = load("connect-" + mode), load("rpc-" + mode)
    rows.append(f"| {label} | {c['connects_per_sec']:,.0f} ({c['connected']:,} of {c['connections']:,}, p99 {c['latency']['p99_us']/1000:.1f} ms) | "
                f"{r['round_trips_per_sec']:,.0f} (p99 {r['latency']['p99_us']/1000:.1f} ms) | {c['server_cpu_percent'] or 0:.0f} % / {r['server_cpu_percent'] or 0:.0f} % |")
w = load("webhooks")
print("| decisions by | connects/s (`connect -c %s -m 200`) | rpc round trips/s (`rpc -k 50 -d 10s`) | server CPU (connect / rpc) |" % n)
print("|---|---|---|---|")
print("\n".join(rows))
print()
print(f"Webhooks: {w['events']:,} events queued while the backend was down were delivered in "
      f"{w['seconds']:.2f} s over {w['webhook_requests']:,} requests: **{w['events_per_sec']:,.0f} events/s**.")
PY

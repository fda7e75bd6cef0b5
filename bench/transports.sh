#!/usr/bin/env bash
# Fan-out deliveries/s and server memory per idle connection for each way a subscriber can
# connect: JSON WebSocket on the client crate's wire layer (the default) and on the high-level
# SDK, Protobuf WebSocket (wire layer and SDK), SSE and http_stream (wire layer). Server pinned to
# core 0, bench to core 1, a fresh server per run, rounds interleaved (each round runs every
# configuration once), the load average noted before each run. Prints a Markdown table.
#
#   bench/transports.sh                 # 2 rounds, about 12 minutes
#   ROUNDS=3 ONLY=fanout bench/transports.sh
#
# Every load is bounded (counts, durations, `timeout`) and goes to 127.0.0.0/8 only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/target/bench-results/transports}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet --bin switchboard
SB=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchboard
PORT=${PORT:-18200}
FLAGS="--join-leave false --client-command-rate 0 --connection-rate-per-ip 0"
URL=ws://127.0.0.1:$PORT/connection/websocket
ROUNDS=${ROUNDS:-2}
ONLY=${ONLY:-"fanout idle"}
FANOUT=${FANOUT:-"fanout -n 1000 -r 3000 -d 10s -p 100"}
IDLE=${IDLE:-"idle -c 19000 -k 100 -d 5s"}
CONFIGS=${CONFIGS:-"websocket,json,wire websocket,json,sdk websocket,protobuf,wire websocket,protobuf,sdk sse,json,wire http_stream,json,wire"}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

server_pid=""
start_server() {
  rm -rf "$OUT/data"
  # shellcheck disable=SC2086
  taskset -c 0 "$SB" serve --port "$PORT" $FLAGS --data-dir "$OUT/data" >"$OUT/server.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid")
  wait_port "127.0.0.1:$PORT"
}
stop_server() { kill -INT "$server_pid"; wait "$server_pid" || true; }

for round in $(seq "$ROUNDS"); do
  for scenario in $ONLY; do
    for config in $CONFIGS; do
      IFS=, read -r transport encoding client <<<"$config"
      case $scenario in fanout) args=$FANOUT ;; idle) args=$IDLE ;; esac
      name="$scenario-$transport-$encoding-$client-$round"
      start_server
      load=$(cut -d' ' -f1 /proc/loadavg)
      echo "$load" >"$OUT/$name.load"
      # shellcheck disable=SC2086
      timeout 300 taskset -c 1 "$SB" bench $args --transport "$transport" --encoding "$encoding" \
        --client "$client" --url "$URL" --pid "$server_pid" --json --quiet >"$OUT/$name.json" \
        || echo "{\"failed\": true}" >"$OUT/$name.json"
      stop_server
      echo "$name done (load $load)" >&2
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$ONLY" "$CONFIGS" <<'PY'
import json, sys, pathlib
out, rounds, only, configs = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
def runs(scenario, config):
    for r in range(1, rounds + 1):
        name = f"{scenario}-{config.replace(',', '-')}-{r}"
        try:
            report = json.loads((out / f"{name}.json").read_text())
        except (OSError, ValueError):
            report = {"failed": True}
        load = (out / f"{name}.load").read_text().strip() if (out / f"{name}.load").exists() else "?"
        yield report, load
if "fanout" in only:
    print("| subscribers (transport, encoding, client) | deliveries/s per run (load) | lost | p50 / p99 latency (ms) | bench CPU |")
    print("|---|---|---|---|---|")
    for config in configs:
        cells, lost, lat, cpu = [], [], [], []
        for r, load in runs("fanout", config):
            if r.get("failed"):
                cells.append(f"failed ({load})"); continue
            cells.append(f"{r['delivered_per_sec']:,.0f} ({load})")
            lost.append(str(r["lost_publications"]))
            l = r["latency"]
            lat.append(f"{l['p50_us'] / 1000:.1f} / {l['p99_us'] / 1000:.1f}")
            cpu.append(f"{r['bench_cpu_percent']:.0f} %")
        print(f"| {config.replace(',', ', ')} | {'; '.join(cells)} | {', '.join(lost)} | {'; '.join(lat)} | {', '.join(cpu)} |")
    print()
if "idle" in only:
    print("| connections (transport, encoding, client) | server B per connection per run (load) | bench B per connection | connected |")
    print("|---|---|---|---|")
    for config in configs:
        cells, bench, conn = [], [], []
        for r, load in runs("idle", config):
            if r.get("failed"):
                cells.append(f"failed ({load})"); continue
            cells.append(f"{r['server_bytes_per_connection']:,} ({load})")
            bench.append(f"{r.get('bench_bytes_per_connection') or 0:,}")
            conn.append(f"{r['connected']:,}")
        print(f"| {config.replace(',', ', ')} | {'; '.join(cells)} | {', '.join(bench)} | {', '.join(conn)} |")
PY

#!/usr/bin/env bash
# Runs every bench scenario against Switchboard (release build) and the FastAPI reference
# (bench/reference), one fresh server per scenario, server pinned to core 0 and bench to core 1,
# then writes the comparison table into BENCHMARKS.md (between the results markers).
#
#   bench/run.sh                 # everything (about 10 minutes)
#   QUICK=1 bench/run.sh         # scaled down (counts ÷10, 3 s runs) to check the harness; tables go to $OUT/BENCHMARKS.quick.md
#   ONLY="rpc connect" bench/run.sh     # some scenarios only
#   SERVERS=switchboard bench/run.sh    # one server only
#
# Every load is bounded (counts, durations, `timeout`) and goes to 127.0.0.0/8 only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/target/bench-results}
SERVERS=${SERVERS:-"switchboard reference"}
SB_PORT=18000
# The bench is a load generator: per-client command rate limits would throttle its publishers and
# rpc clients (--client-command-rate 0), a per-IP connection rate limit would refuse its
# connection ramp from 127.0.0.1 with 429 (--connection-rate-per-ip 0, the default, kept explicit
# so that the runs compare with those measured before it was); join/leave pushes to
# 10,000 subscribers of one channel would be 50 million pushes, another benchmark. History is the
# default: durable SQLite, fsync per commit. Set SB_FLAGS to measure another configuration (for
# example `--history-storage memory` added).
export SB_FLAGS=${SB_FLAGS:-"--join-leave false --client-command-rate 0 --connection-rate-per-ip 0"}
REF_PORT=18001
mkdir -p "$OUT"
# A full run starts from no results, so the tables hold this run's figures only.
if [ -z "${ONLY:-}" ]; then rm -f "$OUT"/*.json; fi
export RUN_STARTED
RUN_STARTED=$(date -u +"%Y-%m-%d %H:%M")

ulimit -n "$(ulimit -Hn)"
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet
SB=$ROOT/target/release/switchboard

# The reference's virtualenv, from the pinned requirements.
VENV=$ROOT/bench/reference/.venv
if [ ! -x "$VENV/bin/uvicorn" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet -r "$ROOT/bench/reference/requirements.txt"
fi

q() { # scale a count down in QUICK mode
  if [ -n "${QUICK:-}" ]; then echo $(( ($1 + 9) / 10 )); else echo "$1"; fi
}
D=${QUICK:+3s}; D=${D:-10s}
DL=${QUICK:+5s}; DL=${DL:-20s}

# name | bench arguments (the server's --url and --pid are added)
SCENARIOS=(
  "idle|idle -c $(q 19000) -k 100 -d $D"
  "fanout-1k-3000|fanout -n $(q 1000) -r 3000 -d $D -p 100"
  "fanout-10k-100|fanout -n $(q 10000) -r 100 -d $D -p 100"
  "fanout-1k-100|fanout -n $(q 1000) -r 100 -d $D -p 100"
  "fanout-api-1k-1000|fanout -n $(q 1000) -r 1000 -d $D -p 100 --via api"
  "rpc-50|rpc -k 50 -d $D"
  "connect-10k|connect -c $(q 10000) -m 200"
  "overload|fanout -n $(q 1000) -r 6000 -d $DL -p 100 --slow $(q 100) --drain 10s"
)

server_pid=""
start_server() { # $1 = switchboard|reference
  for port in $SB_PORT $REF_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port is already in use: stop whatever listens there first" >&2; return 1
    fi
  done
  case $1 in
    switchboard)
      rm -rf "$OUT/data"
      taskset -c 0 "$SB" serve --port $SB_PORT $SB_FLAGS --data-dir "$OUT/data" >"$OUT/$1.log" 2>&1 &
      server_pid=$!
      url=ws://127.0.0.1:$SB_PORT/connection/websocket ;;
    reference)
      (cd "$ROOT/bench/reference" && exec taskset -c 0 "$VENV/bin/uvicorn" server:app \
        --host 127.0.0.1 --port $REF_PORT --log-level warning) >"$OUT/$1.log" 2>&1 &
      server_pid=$!
      url=ws://127.0.0.1:$REF_PORT/connection/websocket ;;
  esac
  local port=${url#ws://127.0.0.1:}; port=${port%%/*}
  for _ in $(seq 100); do
    # Our server must be the one listening (not a leftover on the same port).
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server $1 did not start" >&2; cat "$OUT/$1.log" >&2; return 1
}

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

for entry in "${SCENARIOS[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  for server in $SERVERS; do
    start_server "$server"
    sleep 1
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "== $name on $server (load $load): switchboard bench $args" >&2
    # shellcheck disable=SC2086
    if timeout 300 taskset -c 1 "$SB" bench $args --url "$url" --pid "$server_pid" --json \
        >"$OUT/$name.$server.json.tmp"; then
      python3 - "$OUT/$name.$server.json.tmp" "$name" "$server" "$load" "$args" "$SB_PORT" <<'EOF'
import json, sys
path, name, server, load, args, port = sys.argv[1:]
report = json.load(open(path))
report.update(case=name, server=server, load=load, command=f"switchboard bench {args}")
if server == "switchboard":
    # The server's own count of clients it disconnected as slow (3008).
    import urllib.request
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("switchboard_slow_disconnects_total "):
                report["server_slow_disconnects"] = int(line.split()[1])
    except OSError:
        pass
json.dump(report, open(path[:-4], "w"), indent=1)
EOF
      rm -f "$OUT/$name.$server.json.tmp"
    else
      echo "   bench failed for $name on $server" >&2
      echo "{\"case\":\"$name\",\"server\":\"$server\",\"failed\":true,\"load\":\"$load\",\"command\":\"switchboard bench $args\"}" \
        >"$OUT/$name.$server.json"
    fi
    stop_server
  done
done

if [ -n "${QUICK:-}" ]; then
  # Scaled-down figures check the harness; they never replace the published tables.
  cp "$ROOT/BENCHMARKS.md" "$OUT/BENCHMARKS.quick.md"
  python3 "$ROOT/bench/table.py" "$OUT" "$OUT/BENCHMARKS.quick.md"
  echo "results in $OUT; QUICK tables in $OUT/BENCHMARKS.quick.md" >&2
else
  python3 "$ROOT/bench/table.py" "$OUT" "$ROOT/BENCHMARKS.md"
  echo "results in $OUT; table written to BENCHMARKS.md" >&2
fi

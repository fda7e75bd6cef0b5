#!/usr/bin/env bash
# Bytes on the wire with and without Fossil deltas: two raw WebSocket subscribers of one channel
# in a namespace allowing `fossil`, one asking for deltas, follow 100 revisions of a ~4.6 KiB
# document (60 items, one changed per revision) published through the server API; prints the
# bytes of the publication messages each received. Loopback only; bounded (100 publications).
#
#   bench/delta.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cargo build --release --quiet
printf '[[namespace]]\nname = "docs"\nallowed_delta_types = ["fossil"]\n' > "$WORK/config.toml"
PORT=18120
"$ROOT/target/release/switchboard" serve --config "$WORK/config.toml" --port "$PORT" \
  --data-dir "$WORK/data" > "$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
cat > "$WORK/wire.mjs" <<JS
import WebSocket from '$ROOT/tests/compat/node_modules/ws/index.js';
const port = $PORT;
function client(delta) {
  return new Promise((resolve) => {
    const ws = new WebSocket(\`ws://127.0.0.1:\${port}/connection/websocket\`);
    const state = { ws, bytes: 0, pubs: 0 };
    ws.on('open', () => ws.send(JSON.stringify({ id: 1, connect: {} }) + '\n'
      + JSON.stringify({ id: 2, subscribe: { channel: 'docs:plan', ...(delta ? { delta: 'fossil' } : {}) } })));
    ws.on('message', (data) => {
      for (const line of data.toString().split('\n')) {
        if (!line) continue;
        const m = JSON.parse(line);
        if (m.id === 2) resolve(state);
        if (m.push && m.push.pub) { state.bytes += Buffer.byteLength(line); state.pubs += 1; }
      }
    });
  });
}
const items = Array.from({ length: 60 }, (_, i) => ({ id: i, title: \`item number \${i}\`, done: false, notes: 'nothing yet' }));
const plain = await client(false);
const delta = await client(true);
for (let rev = 1; rev <= 100; rev++) {
  const item = items[rev % items.length]; item.done = !item.done; item.notes = \`changed in revision \${rev}\`;
  await fetch(\`http://127.0.0.1:\${port}/api/publish\`, { method: 'POST', body: JSON.stringify({ channel: 'docs:plan', data: { rev, items } }) });
}
await new Promise((r) => setTimeout(r, 500));
console.log(\`| without delta | \${plain.pubs} | \${plain.bytes} |\`);
console.log(\`| delta: "fossil" | \${delta.pubs} | \${delta.bytes} |\`);
process.exit(0);
JS
echo "| subscriber | publications | bytes received |"
echo "|---|---|---|"
timeout 60 node "$WORK/wire.mjs"

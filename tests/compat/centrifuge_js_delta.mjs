// Fossil delta compression with the official centrifuge-js SDK: a subscription with
// `delta: 'fossil'` in a namespace that allows it follows 100 publications of a slowly changing
// document and must see each one exactly as published; the SDK's own statistics say how many
// came as deltas and how many bytes crossed the wire. Then the connection is dropped, the
// document changes, and the subscription recovers with correct data again (the first
// publication after recovery is whole, the next ones deltas).
//
// Usage: node centrifuge_js_delta.mjs HOST:PORT  (namespace `docs` must allow fossil deltas)
// Prints one line per step and, last, a JSON line `{"bytes_received":…,"bytes_decoded":…,…}`.

import assert from 'node:assert/strict';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const address = process.argv[2];
if (!address) {
  console.error('usage: node centrifuge_js_delta.mjs HOST:PORT');
  process.exit(2);
}
const WAIT_MS = 5000;
const watchdog = setTimeout(() => fail(new Error('the whole test took over 50 s')), 50000);
let currentStep = 'start';

function fail(error) {
  const text = error && error.stack ? error.stack : JSON.stringify(error) ?? String(error);
  console.error(`FAIL in step "${currentStep}": ${text}`);
  process.exit(1);
}
process.on('unhandledRejection', fail);
process.on('uncaughtException', fail);

async function step(name, body) {
  currentStep = name;
  await body();
  console.log(`ok - ${name}`);
}

async function api(method, body) {
  const response = await fetch(`http://${address}/api/${method}`, { method: 'POST', body: JSON.stringify(body) });
  const reply = await response.json();
  assert.equal(response.status, 200);
  assert.ok(!reply.error, JSON.stringify(reply));
  return reply.result;
}

function until(what, check) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + WAIT_MS;
    const poll = () => {
      if (check()) return resolve();
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

// A document of 60 items; each revision changes one of them.
const items = Array.from({ length: 60 }, (_, i) => ({ id: i, title: `item number ${i}`, done: false, notes: 'nothing yet' }));
function revise(rev) {
  const item = items[rev % items.length];
  item.done = !item.done;
  item.notes = `changed in revision ${rev}`;
  return { rev, items };
}

const CHANNEL = 'docs:plan';
const centrifuge = new Centrifuge(`ws://${address}/connection/websocket`, { websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 500 });
const received = [];
let subscribed = [];
const sub = centrifuge.newSubscription(CHANNEL, { delta: 'fossil' });
sub.on('publication', (ctx) => received.push(ctx.data));
sub.on('subscribed', (ctx) => subscribed.push(ctx));

await step('subscribes with delta: fossil', async () => {
  centrifuge.connect();
  sub.subscribe();
  await until('subscribed', () => subscribed.length === 1);
});

const sent = [];
await step('100 revisions of a document arrive exactly as published', async () => {
  for (let rev = 1; rev <= 100; rev++) {
    const doc = revise(rev);
    sent.push(JSON.parse(JSON.stringify(doc)));
    await api('publish', { channel: CHANNEL, data: doc });
  }
  await until('100 publications', () => received.length >= 100);
  assert.equal(received.length, 100);
  for (let i = 0; i < 100; i++) assert.deepEqual(received[i], sent[i], `revision ${i + 1}`);
  const stats = sub.deltaStats();
  assert.equal(stats.numPublications, 100);
  assert.equal(stats.numFullPayloads, 1, JSON.stringify(stats));
  assert.equal(stats.numDeltaPayloads, 99, JSON.stringify(stats));
  console.log(JSON.stringify({ bytes_received: stats.bytesReceived, bytes_decoded: stats.bytesDecoded, ratio: stats.compressionRatio }));
});

await step('after a dropped connection, missed revisions are recovered and deltas go on', async () => {
  centrifuge._transport._transport.terminate(); // the network drops the socket
  await until('a disconnect', () => centrifuge.state !== 'connected');
  // Published while the client is away: recovered on resubscribe.
  for (let rev = 101; rev <= 103; rev++) {
    const doc = revise(rev);
    sent.push(JSON.parse(JSON.stringify(doc)));
    await api('publish', { channel: CHANNEL, data: doc });
  }
  await until('resubscribed', () => subscribed.length === 2);
  assert.equal(subscribed[1].recovered, true);
  for (let rev = 104; rev <= 110; rev++) {
    const doc = revise(rev);
    sent.push(JSON.parse(JSON.stringify(doc)));
    await api('publish', { channel: CHANNEL, data: doc });
  }
  await until('110 publications', () => received.length >= 110);
  for (let i = 0; i < 110; i++) assert.deepEqual(received[i], sent[i], `revision ${i + 1}`);
  assert.ok(sub.deltaStats().numDeltaPayloads > 99, 'deltas after recovery');
});

clearTimeout(watchdog);
centrifuge.disconnect();
process.exit(0);

// Compatibility test of the proxy hooks: the official centrifuge-js SDK (npm `centrifuge`) against
// a Switchboard whose connect, subscribe, publish and rpc decisions are made by an application
// backend over HTTP (started by the Rust test that runs this script).
//
// Usage: node centrifuge_js_proxy.mjs HOST:PORT
//
// The backend knows a client by the `Authorization` header the SDK emulates (its `headers`
// option): `Bearer <user>` names the user, no header is a terminal disconnect 4501. It refuses
// channels starting with `secret` (error 403), publishes `{by: "backend", was: <data>}` in place of
// the client's data, and answers the RPC `price` with `{answer: 42}`. Every wait is bounded; the
// first failed check prints what was expected and exits 1.

import assert from 'node:assert/strict';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const address = process.argv[2];
if (!address || !/^[^/\s]+:\d+$/.test(address)) {
  console.error('usage: node centrifuge_js_proxy.mjs HOST:PORT');
  process.exit(2);
}
const WS_URL = `ws://${address}/connection/websocket`;
const WAIT_MS = 5000;
const TOTAL_MS = 30000;

let currentStep = 'start';
setTimeout(() => fail(new Error(`the whole test took over ${TOTAL_MS} ms`)), TOTAL_MS).unref();

function fail(error) {
  const text = error && error.stack ? error.stack : JSON.stringify(error) ?? String(error);
  console.error(`FAIL in step "${currentStep}": ${text}`);
  process.exit(1);
}
process.on('unhandledRejection', fail);
process.on('uncaughtException', fail);

async function step(name, body) {
  currentStep = name;
  const started = Date.now();
  await body();
  console.log(`ok - ${name} (${Date.now() - started} ms)`);
}

/** Resolves with the first `event` of `emitter`, or fails after WAIT_MS. */
function next(emitter, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} event within ${WAIT_MS} ms`)), WAIT_MS);
    emitter.once(event, (ctx) => {
      clearTimeout(timer);
      resolve(ctx);
    });
  });
}

function client(options = {}) {
  return new Centrifuge(WS_URL, {
    websocket: WebSocket,
    name: 'switchboard-proxy-compat',
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    timeout: WAIT_MS,
    ...options,
  });
}

const ann = client({ headers: { Authorization: 'Bearer ann' }, data: { device: 'test' } });
let annId = '';

await step('the backend names the user from the emulated Authorization header', async () => {
  const connected = next(ann, 'connected');
  ann.connect();
  const ctx = await connected;
  assert.deepEqual(ctx.data, { welcome: 'ann' });
  annId = ctx.client;
});

await step('a client the backend refuses is disconnected for good with its code', async () => {
  const stranger = client();
  const disconnected = next(stranger, 'disconnected');
  stranger.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 4501);
  assert.equal(ctx.reason, 'unauthorized');
  assert.equal(stranger.state, 'disconnected');
});

const news = ann.newSubscription('news');

await step('the backend grants a subscription and its data reaches the SDK', async () => {
  const subscribed = next(news, 'subscribed');
  news.subscribe();
  const ctx = await subscribed;
  assert.deepEqual(ctx.data, { granted: 'news' });
  const presence = await news.presence();
  const me = presence.clients[annId];
  assert.ok(me, `own client in presence: ${JSON.stringify(presence)}`);
  assert.equal(me.user, 'ann');
});

await step('what is published is what the backend says', async () => {
  const publication = next(news, 'publication');
  await news.publish({ text: 'hi' });
  const ctx = await publication;
  assert.deepEqual(ctx.data, { by: 'backend', was: { text: 'hi' } });
  assert.equal(ctx.info.user, 'ann');
});

await step('a subscription the backend refuses ends with its error code', async () => {
  const secret = ann.newSubscription('secret');
  const unsubscribed = next(secret, 'unsubscribed');
  secret.subscribe();
  const ctx = await unsubscribed;
  assert.equal(ctx.code, 403);
});

await step('the backend answers RPCs', async () => {
  const result = await ann.rpc('price', { item: 1 });
  assert.deepEqual(result.data, { answer: 42, user: 'ann' });
});

ann.disconnect();
console.log('all proxy steps passed');
process.exit(0);

// Compatibility test of map subscriptions: drives a running Switchboard with the official
// centrifuge-js SDK (npm `centrifuge` 5.8, its `newMapSubscription`), through its public API only,
// and checks what an application sees: the `sync` of the whole state (read page by page), live
// `update`s from the server API and from clients, removals, key TTL, a refused publish, recovery
// after a dropped connection (missed changes as updates, no new sync), a fresh sync when the
// stream no longer holds what was missed, and map presence (newMapClientsSubscription,
// newMapUsersSubscription).
//
// Usage: node centrifuge_js_maps.mjs HOST:PORT
//   SWITCHBOARD_API_KEY      key for the server API (sent as X-API-Key), if the server has one
//   SWITCHBOARD_CAROL_TOKEN  a connection token of user `carol` (for map presence by user)
//
// The server must have these map namespaces, open to anonymous clients (see tests/compat_js.rs):
// `board` (persistent), `short` (persistent, stream_size 2), `cursors` (durable, key_ttl 1s),
// `readonly` (persistent, no client publish), and `game` (stream) listing its subscribers in
// `clients:` (map_clients) and `users:` (map_users, key_ttl 1s). Every wait is bounded; the first failed check
// prints what was expected and exits 1.

import assert from 'node:assert/strict';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import {
  WAIT_MS, eventually, guard, record, rejectsWithCode, sleep, step, until, within,
} from './sdk_helpers.mjs';

const address = process.argv[2];
if (!address || !/^[^/\s]+:\d+$/.test(address)) {
  console.error('usage: node centrifuge_js_maps.mjs HOST:PORT');
  process.exit(2);
}
const API_KEY = process.env.SWITCHBOARD_API_KEY || '';
const WS_URL = `ws://${address}/connection/websocket`;

/** The whole script must finish in this time. */
const TOTAL_MS = 50000;
const watchdog = guard(TOTAL_MS);

/**
 * A WebSocket class for one client (given to the SDK's `websocket` option) that lets the test
 * cut the network: `drop()` kills the open socket without a close frame, and while `open` is false
 * every new connection attempt fails before its handshake, as if the network were down. It also
 * keeps the frames the SDK sent (`sent`).
 */
function networkControl() {
  const control = { open: true, socket: null, blockedAttempts: 0, sent: [] };
  control.WebSocket = class extends WebSocket {
    constructor(...args) {
      super(...args);
      control.socket = this;
      if (!control.open) {
        control.blockedAttempts += 1;
        this.terminate();
      }
    }

    /** Records every frame the SDK sends, to check pongs and batching on the wire. */
    send(data, ...rest) {
      control.sent.push(String(data));
      return super.send(data, ...rest);
    }
  };
  control.drop = () => control.socket.terminate();
  return control;
}

const CLIENT_EVENTS = ['connecting', 'connected', 'disconnected', 'error'];

/** A client with fast reconnects, its network control and its event log (not yet connected). */
function newClient(options = {}) {
  const network = networkControl();
  const client = new Centrifuge(WS_URL, {
    websocket: network.WebSocket,
    name: 'switchboard-compat',
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    timeout: WAIT_MS,
    ...options,
  });
  const log = record(client, CLIENT_EVENTS);
  return { client, network, log };
}

async function connected(what, { client, log }, count = 1) {
  await until(`${what} to be connected (connected event #${count})`, () => log.connected.length >= count && client.state === 'connected');
  return log.connected[count - 1];
}


/** Calls the server API; returns `result`, failing on any HTTP or API error. */
async function api(method, body, { key = API_KEY } = {}) {
  const response = await apiRaw(method, body, key);
  assert.equal(response.status, 200, `/api/${method} answered HTTP ${response.status}: ${response.text}`);
  const reply = JSON.parse(response.text);
  assert.equal(reply.error, undefined, `/api/${method} failed: ${response.text}`);
  return reply.result;
}

async function apiRaw(method, body, key) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers['X-API-Key'] = key;
  const response = await fetch(`http://${address}/api/${method}`, {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  return { status: response.status, text: await response.text() };
}

// ---------------------------------------------------------------------------------------------

const MAP_EVENTS = ['subscribing', 'subscribed', 'unsubscribed', 'sync', 'update', 'error'];

/** The state an application keeps from `sync` and `update` events, as the docs show it. */
function mirror(sub) {
  const state = new Map();
  const log = record(sub, MAP_EVENTS);
  sub.on('sync', (ctx) => {
    state.clear();
    for (const entry of ctx.entries) state.set(entry.key, entry.data);
  });
  sub.on('update', (ctx) => {
    if (ctx.removed) state.delete(ctx.key);
    else state.set(ctx.key, ctx.data);
  });
  return { state, log };
}

function entries(state) {
  return Object.fromEntries([...state.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
}

const alice = newClient();
alice.client.connect();
await connected('client A', alice);

const board = alice.client.newMapSubscription('board:js', { pageSize: 2 });
const boardMirror = mirror(board);

await step('sync: the whole state, read in pages of 2, reaches the app in one sync event', async () => {
  for (let i = 0; i < 5; i++) await api('map_publish', { channel: 'board:js', key: `k${i}`, data: { n: i } });
  board.subscribe();
  await until('the subscribed event', () => boardMirror.log.subscribed.length === 1);
  await until('the sync event', () => boardMirror.log.sync.length === 1);
  assert.equal(boardMirror.log.sync[0].entries.length, 5, 'sync entries');
  assert.deepEqual(entries(boardMirror.state), { k0: { n: 0 }, k1: { n: 1 }, k2: { n: 2 }, k3: { n: 3 }, k4: { n: 4 } });
  const pages = alice.network.sent.filter((f) => f.includes('"phase":2')).length;
  assert.ok(pages >= 3, `the SDK read the state in pages (state requests sent: ${pages})`);
});

await step('update: server API map_publish and map_remove reach the app as updates', async () => {
  await api('map_publish', { channel: 'board:js', key: 'k1', data: { n: 10 } });
  await until('the update of k1', () => boardMirror.state.get('k1')?.n === 10);
  await api('map_remove', { channel: 'board:js', key: 'k0' });
  await until('the removal of k0', () => !boardMirror.state.has('k0'));
  const removal = boardMirror.log.update.at(-1);
  assert.equal(removal.key, 'k0');
  assert.equal(removal.removed, true, 'update.removed');
});

await step('publish and remove from the SDK: sub.publish / sub.remove and client.mapPublish', async () => {
  await within('sub.publish', board.publish('k9', { n: 9 }));
  await until('the update of k9', () => boardMirror.state.get('k9')?.n === 9);
  const update = boardMirror.log.update.at(-1);
  assert.equal(update.info?.client, alice.log.connected[0].client, 'the publisher in update.info');
  await within('sub.remove', board.remove('k9'));
  await until('the removal of k9', () => !boardMirror.state.has('k9'));
  const bob = newClient();
  bob.client.connect();
  await connected('client B', bob);
  await within('client.mapPublish without a subscription', bob.client.mapPublish('board:js', 'k7', { n: 7 }));
  await until('the update of k7', () => boardMirror.state.get('k7')?.n === 7);
  bob.client.disconnect();
});

await step('a refused map publish rejects with 103', async () => {
  const readonly = alice.client.newMapSubscription('readonly:js');
  const log = mirror(readonly).log;
  readonly.subscribe();
  await until('subscribed to readonly:js', () => log.subscribed.length === 1);
  await rejectsWithCode('publish to readonly:js', readonly.publish('k', { n: 1 }), 103);
  readonly.unsubscribe();
});

await step('recovery after a network drop: missed changes arrive as updates, no new sync', async () => {
  const syncs = boardMirror.log.sync.length;
  const subscribed = boardMirror.log.subscribed.length;
  alice.network.open = false;
  alice.network.drop();
  await until('the subscription to wait for the network', () => board.state === 'subscribing');
  await api('map_publish', { channel: 'board:js', key: 'k2', data: { n: 20 } });
  await api('map_remove', { channel: 'board:js', key: 'k3' });
  await api('map_publish', { channel: 'board:js', key: 'k8', data: { n: 8 } });
  alice.network.open = true;
  await until('subscribed again', () => boardMirror.log.subscribed.length === subscribed + 1);
  const ctx = boardMirror.log.subscribed.at(-1);
  assert.equal(ctx.wasRecovering, true, 'subscribed.wasRecovering');
  assert.equal(ctx.recovered, true, 'subscribed.recovered');
  await until('the missed changes', () => boardMirror.state.get('k8')?.n === 8);
  assert.equal(boardMirror.log.sync.length, syncs, 'no new sync after a recovery');
  assert.deepEqual(entries(boardMirror.state), { k1: { n: 10 }, k2: { n: 20 }, k4: { n: 4 }, k7: { n: 7 }, k8: { n: 8 } });
  const state = await api('map_read_state', { channel: 'board:js', limit: 100 });
  const server = Object.fromEntries(state.entries.map((e) => [e.key, e.data]));
  assert.deepEqual(entries(boardMirror.state), server, 'the mirror equals the server state');
});

await step('too much missed for the stream: the SDK reads the state again (a new sync)', async () => {
  const short = alice.client.newMapSubscription('short:js');
  const shortMirror = mirror(short);
  await api('map_publish', { channel: 'short:js', key: 'a', data: 1 });
  short.subscribe();
  await until('the first sync of short:js', () => shortMirror.log.sync.length === 1);
  alice.network.open = false;
  alice.network.drop();
  await until('the subscription to wait for the network', () => short.state === 'subscribing');
  for (const [key, data] of [['b', 2], ['c', 3], ['d', 4], ['a', 5]]) {
    await api('map_publish', { channel: 'short:js', key, data });
  }
  alice.network.open = true;
  await until('a second sync of short:js', () => shortMirror.log.sync.length === 2);
  assert.deepEqual(entries(shortMirror.state), { a: 5, b: 2, c: 3, d: 4 });
  await api('map_publish', { channel: 'short:js', key: 'e', data: 6 });
  await until('live again after the new sync', () => shortMirror.state.get('e') === 6);
  short.unsubscribe();
});

await step('key TTL: an entry set with a TTL disappears with a removal update', async () => {
  const cursors = alice.client.newMapSubscription('cursors:js');
  const cursorsMirror = mirror(cursors);
  cursors.subscribe();
  await until('subscribed to cursors:js', () => cursorsMirror.log.subscribed.length === 1);
  await within('a cursor', cursors.publish('ann', { x: 1, y: 2 }));
  await until('the cursor in the mirror', () => cursorsMirror.state.has('ann'));
  await until('the cursor to expire', () => !cursorsMirror.state.has('ann'), 5000);
  assert.equal(cursorsMirror.log.update.at(-1).removed, true);
  cursors.unsubscribe();
});

await step('map presence: newMapClientsSubscription and newMapUsersSubscription list subscribers', async () => {
  const clients = alice.client.newMapClientsSubscription('clients:game:js');
  const users = alice.client.newMapUsersSubscription('users:game:js');
  const clientsMirror = mirror(clients);
  const usersMirror = mirror(users);
  clients.subscribe();
  users.subscribe();
  await until('both presence syncs', () => clientsMirror.log.sync.length === 1 && usersMirror.log.sync.length === 1);
  assert.equal(clientsMirror.state.size, 0, 'nobody in game:js yet');
  const carol = newClient({ token: process.env.SWITCHBOARD_CAROL_TOKEN });
  carol.client.connect();
  const ctx = await connected('client C (user carol)', carol);
  const game = carol.client.newSubscription('game:js');
  game.subscribe();
  await until('carol listed by client id', () => clientsMirror.state.has(ctx.client));
  const entry = clientsMirror.log.update.at(-1);
  assert.equal(entry.info?.user, 'carol', 'the client entry carries the client info');
  await until('carol listed by user id', () => usersMirror.state.has('carol'));
  game.unsubscribe();
  await until('carol\'s client entry removed', () => !clientsMirror.state.has(ctx.client));
  await until('carol\'s user entry expired', () => !usersMirror.state.has('carol'), 5000);
  carol.client.disconnect();
  clients.unsubscribe();
  users.unsubscribe();
});

await step('unsubscribe ends the map subscription', async () => {
  board.unsubscribe();
  await until('the unsubscribed event', () => boardMirror.log.unsubscribed.length === 1 && board.state === 'unsubscribed');
  alice.client.disconnect();
});

clearTimeout(watchdog);
console.log('all centrifuge-js map subscription checks passed');
process.exit(0);

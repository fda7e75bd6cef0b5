// Compatibility test: drives a running Switchboard with the official centrifuge-js SDK (npm
// `centrifuge`), through its public API only, and checks what an application would see.
//
// Usage: node centrifuge_js.mjs HOST:PORT
//   SWITCHBOARD_API_KEY       key for the server API (sent as X-API-Key), if the server has one
//   SWITCHBOARD_TOKEN_SECRET  HS256 secret of connection tokens; needed for the steps that act on a
//                             user through the server API (forced reconnect, server unsubscribe)
//
// The server must accept anonymous clients too. Every wait is bounded; the first failed check
// prints what was expected and exits 1. Progress goes to stdout, one line per passed step.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import {
  WAIT_MS, eventually, guard, record, rejectsWithCode, sleep, step, until, within,
} from './sdk_helpers.mjs';

const address = process.argv[2];
if (!address || !/^[^/\s]+:\d+$/.test(address)) {
  console.error('usage: node centrifuge_js.mjs HOST:PORT');
  process.exit(2);
}
const API_KEY = process.env.SWITCHBOARD_API_KEY || '';
const TOKEN_SECRET = process.env.SWITCHBOARD_TOKEN_SECRET || '';
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
const SUBSCRIPTION_EVENTS = ['subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'error'];

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

/** Signs a HS256 JWT. */
function hs256(claims, secret) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  const signature = createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
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

/** Offsets of the publications a subscription received, in order of arrival. */
function offsets(subLog) {
  return subLog.publication.map((p) => p.offset);
}

/** Checks that the offsets a subscription received are exactly `expected` (no loss, no duplicate). */
function assertOffsets(what, subLog, expected) {
  assert.deepEqual(offsets(subLog), expected, `${what}: publication offsets received`);
}

// ---------------------------------------------------------------------------------------------

const alice = newClient();
let aliceId;
let sub;
let subLog;
let epoch;

await step('connect anonymously; the connected event carries a client id', async () => {
  alice.client.connect();
  const ctx = await connected('client A', alice);
  assert.equal(typeof ctx.client, 'string', 'connected ctx.client is a string');
  assert.match(ctx.client, /^[0-9a-f-]{36}$/, 'connected ctx.client is a UUID');
  assert.equal(ctx.transport, 'websocket');
  aliceId = ctx.client;
});

await step('subscribe: subscribed context reports a recoverable, positioned stream', async () => {
  sub = alice.client.newSubscription('chat', { joinLeave: true });
  subLog = record(sub, SUBSCRIPTION_EVENTS);
  sub.subscribe();
  await within('sub.ready()', sub.ready(WAIT_MS));
  const ctx = subLog.subscribed[0];
  assert.equal(ctx.channel, 'chat');
  assert.equal(ctx.recoverable, true, 'subscribed.recoverable');
  assert.equal(ctx.positioned, true, 'subscribed.positioned');
  assert.equal(ctx.wasRecovering, false, 'subscribed.wasRecovering on a first subscribe');
  assert.equal(ctx.recovered, false, 'subscribed.recovered on a first subscribe');
  assert.ok(ctx.streamPosition, 'subscribed.streamPosition is present');
  assert.equal(ctx.streamPosition.offset, 0, 'a new stream starts at offset 0');
  assert.equal(typeof ctx.streamPosition.epoch, 'string');
  assert.ok(ctx.streamPosition.epoch.length > 0, 'the stream has a non-empty epoch');
  epoch = ctx.streamPosition.epoch;
});

await step('server API: a key is required when configured', async () => {
  if (!API_KEY) return;
  const response = await apiRaw('info', {}, '');
  assert.equal(response.status, 401, `/api/info without a key: HTTP ${response.status} ${response.text}`);
});

await step('publication sent through POST /api/publish reaches the subscriber', async () => {
  const result = await api('publish', { channel: 'chat', data: { text: 'from the API' } });
  assert.deepEqual(result, { offset: 1, epoch }, 'publish API result');
  const pub = await until('the API publication', () => subLog.publication[0]);
  assert.equal(pub.channel, 'chat');
  assert.deepEqual(pub.data, { text: 'from the API' });
  assert.equal(pub.offset, 1);
  assert.equal(pub.info, undefined, 'a server API publication has no publisher info');
});

await step('publish from the client and receive it with publisher info', async () => {
  const result = await within('sub.publish()', sub.publish({ text: 'from the client' }));
  assert.deepEqual(result, {});
  const pub = await until('the client publication', () => subLog.publication[1]);
  assert.deepEqual(pub.data, { text: 'from the client' });
  assert.equal(pub.offset, 2);
  assert.ok(pub.info, 'a client publication carries info');
  assert.equal(pub.info.client, aliceId);
  assert.equal(pub.info.user, '');
  assertOffsets('after two publications', subLog, [1, 2]);
});

await step('tags of an API publication reach the subscriber; client send() is accepted', async () => {
  // An async message goes without id and gets no reply; the connection must go on as before.
  await within('client.send()', alice.client.send({ note: 'no reply expected' }));
  const result = await api('publish', { channel: 'chat', data: { text: 'tagged' }, tags: { kind: 'test', n: '3' } });
  assert.equal(result.offset, 3);
  const pub = await until('the tagged publication', () => subLog.publication[2]);
  assert.deepEqual(pub.data, { text: 'tagged' });
  assert.deepEqual(pub.tags, { kind: 'test', n: '3' });
  assert.equal(alice.client.state, 'connected');
});

await step("rpc('echo') returns its data; an unknown method gives error 108 (not available), as Centrifugo without an RPC proxy", async () => {
  const data = { hello: 'world', list: [1, 2, 3], nested: { ok: true } };
  const reply = await within("rpc('echo')", alice.client.rpc('echo', data));
  assert.deepEqual(reply.data, data);
  const number = await within("rpc('echo', 42)", alice.client.rpc('echo', 42));
  assert.equal(number.data, 42);
  await rejectsWithCode("rpc('no-such-method')", alice.client.rpc('no-such-method', {}), 108);
});

await step('batched commands (several in one frame) are all answered', async () => {
  const framesBefore = alice.network.sent.length;
  alice.client.startBatching();
  const replies = [1, 2, 3].map((n) => alice.client.rpc('echo', { n }));
  alice.client.stopBatching();
  const results = await within('three batched rpc replies', Promise.all(replies));
  assert.deepEqual(results.map((r) => r.data), [{ n: 1 }, { n: 2 }, { n: 3 }]);
  const frames = alice.network.sent.slice(framesBefore);
  assert.ok(
    frames.some((f) => f.split('\n').filter((line) => line.includes('"rpc"')).length === 3),
    `the SDK sent the three rpc commands in one frame: ${JSON.stringify(frames)}`,
  );
});

await step('presence() and presenceStats() show the client', async () => {
  const presence = await within('sub.presence()', sub.presence());
  assert.deepEqual(Object.keys(presence.clients), [aliceId], 'presence lists exactly client A');
  assert.equal(presence.clients[aliceId].client, aliceId);
  assert.equal(presence.clients[aliceId].user, '');
  const stats = await within('sub.presenceStats()', sub.presenceStats());
  assert.deepEqual(stats, { numClients: 1, numUsers: 1 });
  const viaClient = await within('client.presenceStats()', alice.client.presenceStats('chat'));
  assert.deepEqual(viaClient, { numClients: 1, numUsers: 1 });
});

await step('history() returns publications with offsets and the epoch', async () => {
  const all = await within('history limit 10', sub.history({ limit: 10 }));
  assert.equal(all.epoch, epoch);
  assert.equal(all.offset, 3);
  assert.deepEqual(all.publications.map((p) => p.offset), [1, 2, 3]);
  assert.deepEqual(all.publications.map((p) => p.data), [{ text: 'from the API' }, { text: 'from the client' }, { text: 'tagged' }]);
  assert.equal(all.publications[0].info, undefined);
  assert.equal(all.publications[1].info.client, aliceId);
  assert.deepEqual(all.publications[2].tags, { kind: 'test', n: '3' });
  const one = await within('history limit 1', sub.history({ limit: 1 }));
  assert.deepEqual(one.publications.map((p) => p.offset), [1]);
  const top = await within('history without limit', sub.history());
  assert.deepEqual(top, { publications: [], epoch, offset: 3 }, 'history without limit is the position only');
  const since = await within('history since 1', sub.history({ limit: 10, since: { offset: 1, epoch } }));
  assert.deepEqual(since.publications.map((p) => p.offset), [2, 3]);
  const newest = await within('history reverse', sub.history({ limit: 2, reverse: true }));
  assert.deepEqual(newest.publications.map((p) => p.offset), [3, 2]);
  await rejectsWithCode('history since another epoch', sub.history({ limit: 10, since: { offset: 1, epoch: 'not-the-epoch' } }), 112);
});

await step('join and leave events from a second client', async () => {
  const bob = newClient();
  bob.client.connect();
  const bobId = (await connected('client B', bob)).client;
  assert.notEqual(bobId, aliceId, 'each connection gets its own client id');
  const bobSub = bob.client.newSubscription('chat', { joinLeave: true });
  const bobSubLog = record(bobSub, SUBSCRIPTION_EVENTS);
  bobSub.subscribe();
  await within('client B subscribed', bobSub.ready(WAIT_MS));
  assert.equal(bobSubLog.subscribed[0].streamPosition.offset, 3, 'B subscribes at the stream top');
  const join = await until("client A's join event for B", () => subLog.join.find((j) => j.info.client === bobId));
  assert.equal(join.channel, 'chat');
  assert.equal(join.info.user, '');
  const stats = await within('presenceStats with two clients', sub.presenceStats());
  assert.deepEqual(stats, { numClients: 2, numUsers: 1 }, 'two anonymous clients are one user');
  const presence = await within('presence with two clients', bobSub.presence());
  assert.deepEqual(Object.keys(presence.clients).sort(), [aliceId, bobId].sort());
  bob.client.disconnect();
  const leave = await until("client A's leave event for B", () => subLog.leave.find((l) => l.info.client === bobId));
  assert.equal(leave.channel, 'chat');
  await eventually('presenceStats back to one client', async () => {
    const seen = await within('presenceStats', sub.presenceStats());
    return { ok: seen.numClients === 1, seen };
  });
  assert.equal(bobSubLog.publication.length, 0, 'B received nothing after subscribing');
});

await step('the connection survives server pings (the SDK answers with pongs)', async () => {
  const before = alice.log.connecting.length + alice.log.disconnected.length;
  const framesBefore = alice.network.sent.length;
  await sleep(3000);
  assert.equal(alice.log.connecting.length + alice.log.disconnected.length, before, 'no reconnect while idle');
  assert.equal(alice.client.state, 'connected');
  const pongs = alice.network.sent.slice(framesBefore).filter((f) => f === '{}').length;
  assert.ok(pongs >= 2, `the SDK answered at least two pings in 3 s (server ping every 1 s), sent ${pongs} pongs`);
});

await step('recovery after a network drop: missed publications arrive after the SDK reconnects', async () => {
  const connects = alice.log.connected.length;
  const subscribes = subLog.subscribed.length;
  alice.network.open = false;
  alice.network.drop();
  await until('client A to notice the drop', () => alice.client.state === 'connecting' && sub.state === 'subscribing');
  const missed = [];
  for (const text of ['missed 1', 'missed 2']) {
    missed.push(await api('publish', { channel: 'chat', data: { text } }));
  }
  assert.deepEqual(missed.map((m) => m.offset), [4, 5]);
  await sleep(150); // let the SDK try (and fail) to reconnect while the network is down
  alice.network.open = true;
  const ctx = await until('the resubscription after reconnecting', () => subLog.subscribed[subscribes]);
  await connected('client A again', alice, connects + 1);
  assert.notEqual(alice.log.connected[connects].client, aliceId, 'a new connection has a new client id');
  assert.equal(ctx.wasRecovering, true, 'subscribed.wasRecovering');
  assert.equal(ctx.recovered, true, 'subscribed.recovered');
  assert.equal(ctx.hasRecoveredPublications, true, 'the missed publications came with the subscribe reply');
  assert.equal(ctx.streamPosition.epoch, epoch);
  await until('the two missed publications', () => subLog.publication.length >= 5);
  assertOffsets('after recovery', subLog, [1, 2, 3, 4, 5]);
  assert.deepEqual(subLog.publication.slice(3).map((p) => p.data.text), ['missed 1', 'missed 2']);
  // Live delivery resumes after recovery, with nothing duplicated.
  await api('publish', { channel: 'chat', data: { text: 'live again' } });
  await until('the live publication after recovery', () => subLog.publication.length >= 6);
  await sleep(100);
  assertOffsets('after recovery and a live publication', subLog, [1, 2, 3, 4, 5, 6]);
  aliceId = alice.log.connected[connects].client;
});

await step('recovery after POST /api/disconnect with a reconnect code (3011)', async () => {
  assert.ok(TOKEN_SECRET, 'SWITCHBOARD_TOKEN_SECRET must be set: the server API disconnects users, so this client needs a token');
  const info = { name: 'Carol' };
  const carol = newClient({ token: hs256({ sub: 'carol', info }, TOKEN_SECRET) });
  carol.client.connect();
  const carolId = (await connected('client C', carol)).client;
  const news = carol.client.newSubscription('news');
  const newsLog = record(news, SUBSCRIPTION_EVENTS);
  news.subscribe();
  await within('client C subscribed', news.ready(WAIT_MS));
  const newsEpoch = newsLog.subscribed[0].streamPosition.epoch;
  const presence = await within('presence of news', news.presence());
  assert.equal(presence.clients[carolId].user, 'carol');
  assert.deepEqual(presence.clients[carolId].connInfo, info, 'token info shows as connInfo');
  await api('publish', { channel: 'news', data: { n: 1 } });
  await until('the first news publication', () => newsLog.publication.length === 1);

  const subscribes = newsLog.subscribed.length;
  const connects = carol.log.connected.length;
  carol.network.open = false;
  await api('disconnect', { user: 'carol', disconnect: { code: 3011, reason: 'force reconnect' } });
  const connecting = await until('client C to start reconnecting', () => carol.log.connecting.find((c) => c.code === 3011));
  assert.equal(connecting.reason, 'force reconnect', 'the close reason reaches the SDK');
  assert.equal(carol.log.disconnected.length, 0, 'code 3011 makes the SDK reconnect, not give up');
  const missed = await api('publish', { channel: 'news', data: { n: 2 } });
  assert.deepEqual(missed, { offset: 2, epoch: newsEpoch });
  await sleep(150);
  carol.network.open = true;
  const ctx = await until('the resubscription of client C', () => newsLog.subscribed[subscribes]);
  await connected('client C again', carol, connects + 1);
  assert.equal(ctx.wasRecovering, true, 'subscribed.wasRecovering');
  assert.equal(ctx.recovered, true, 'subscribed.recovered');
  assert.equal(ctx.hasRecoveredPublications, true);
  await until('the missed news publication', () => newsLog.publication.length >= 2);
  assertOffsets('news after recovery', newsLog, [1, 2]);
  assert.deepEqual(newsLog.publication[1].data, { n: 2 });

  // A server-side subscription made through the API: the SDK reports it at the client level.
  const serverSubscribed = [];
  const serverPublications = [];
  carol.client.on('subscribed', (ctx) => serverSubscribed.push(ctx));
  carol.client.on('publication', (ctx) => serverPublications.push(ctx));
  await api('subscribe', { user: 'carol', channel: 'alerts' });
  const alerts = await until('the server-side subscribed event', () => serverSubscribed.find((c) => c.channel === 'alerts'));
  assert.equal(alerts.recoverable, true, 'server-side subscription is recoverable');
  assert.equal(alerts.streamPosition.offset, 0);
  await api('publish', { channel: 'alerts', data: { alert: 'on server-side subscription' } });
  const alert = await until('a publication on the server-side subscription', () => serverPublications[0]);
  assert.equal(alert.channel, 'alerts');
  assert.deepEqual(alert.data, { alert: 'on server-side subscription' });
  assert.equal(alert.offset, 1);
  assert.equal(newsLog.publication.length, 2, 'the alerts publication did not reach the news subscription');

  await api('unsubscribe', { user: 'carol', channel: 'news' });
  const unsubscribed = await until('the server-side unsubscribe', () => newsLog.unsubscribed[0]);
  assert.equal(unsubscribed.code, 2000, 'server unsubscribe code');
  assert.equal(news.state, 'unsubscribed');

  await api('disconnect', { user: 'carol' });
  const disconnected = await until('client C to be disconnected for good', () => carol.log.disconnected[0]);
  assert.equal(disconnected.code, 3503, 'default API disconnect code');
  assert.equal(carol.client.state, 'disconnected');
  await sleep(200);
  assert.equal(carol.log.connected.length, connects + 1, 'no reconnect after a terminal disconnect code');
});

await step('recovery under load: every offset arrives exactly once, in order, across drops', async () => {
  const loaded = newClient();
  loaded.client.connect();
  await connected('client L', loaded);
  const stream = loaded.client.newSubscription('load');
  const streamLog = record(stream, SUBSCRIPTION_EVENTS);
  stream.subscribe();
  await within('client L subscribed', stream.ready(WAIT_MS));
  // One publisher keeps publishing through the API while the client's connection is cut three
  // times; recovery and live delivery must hand over without a gap or a duplicate.
  let publishing = true;
  let top = 0;
  const publisher = (async () => {
    for (let n = 1; publishing; n++) {
      top = (await api('publish', { channel: 'load', data: { n } })).offset;
    }
  })();
  // Three drops at least, more (up to 30) while the publisher has made few publications: each
  // waits for a durable write, which a busy machine's disk can slow down.
  for (let drop = 1; drop <= 3 || (top <= 20 && drop <= 30); drop++) {
    await sleep(100);
    const subscribes = streamLog.subscribed.length;
    loaded.network.open = false;
    loaded.network.drop();
    await until(`client L to notice drop ${drop}`, () => stream.state === 'subscribing');
    await sleep(30);
    loaded.network.open = true;
    const ctx = await until(`resubscription ${drop}`, () => streamLog.subscribed[subscribes]);
    assert.equal(ctx.recovered, true, `recovered after drop ${drop}`);
  }
  await sleep(100);
  publishing = false;
  await publisher;
  await until(`all ${top} publications`, () => streamLog.publication.length >= top, 10000);
  await sleep(100);
  assert.ok(top > 20, `the publisher made enough publications to overlap the drops (${top})`);
  assertOffsets('the loaded stream', streamLog, Array.from({ length: top }, (_, i) => i + 1));
  assert.deepEqual(streamLog.publication.map((p) => p.data.n), Array.from({ length: top }, (_, i) => i + 1));
  loaded.client.disconnect();
});

await step('since option and getState: recovery from an application-known position', async () => {
  const erin = newClient();
  erin.client.connect();
  await connected('client E', erin);
  // Resume `chat` from offset 3: the SDK subscribes with recover and gets offsets 4..6.
  const resumed = erin.client.newSubscription('chat', { since: { offset: 3, epoch } });
  const resumedLog = record(resumed, SUBSCRIPTION_EVENTS);
  resumed.subscribe();
  const ctx = await until('the resumed subscription', () => resumedLog.subscribed[0]);
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  await until('offsets 4..6 replayed', () => resumedLog.publication.length >= 3);
  assertOffsets('resumed from offset 3', resumedLog, [4, 5, 6]);

  // getState asks the server to reject an unrecoverable position (error 112) instead of
  // answering recovered: false; the SDK then calls getState again and resubscribes.
  const first = await api('publish', { channel: 'state', data: { n: 1 } });
  await api('publish', { channel: 'state', data: { n: 2 } });
  const positions = [{ offset: 1, epoch: 'an-epoch-long-gone' }, { offset: 1, epoch: first.epoch }];
  let getStateCalls = 0;
  const stateful = erin.client.newSubscription('state', {
    getState: async () => positions[Math.min(getStateCalls++, positions.length - 1)],
    minResubscribeDelay: 50,
    maxResubscribeDelay: 200,
  });
  const statefulLog = record(stateful, SUBSCRIPTION_EVENTS);
  stateful.subscribe();
  const recovered = await until('the getState subscription', () => statefulLog.subscribed[0]);
  assert.equal(getStateCalls, 2, 'getState was called again after the unrecoverable position');
  assert.equal(recovered.recovered, true);
  await until('offset 2 replayed after getState', () => statefulLog.publication.length >= 1);
  assertOffsets('state channel from offset 1', statefulLog, [2]);
  erin.client.disconnect();
});

await step('token expiry: 109 then getToken; the SDK refreshes in time; no refresh means 3005', async () => {
  assert.ok(TOKEN_SECRET, 'SWITCHBOARD_TOKEN_SECRET must be set for the token steps');
  const now = () => Math.floor(Date.now() / 1000);
  const issued = [];
  const tokens = [
    () => hs256({ sub: 'dave', exp: now() + 2 }, TOKEN_SECRET), // connection expires in 2 s
    () => hs256({ sub: 'dave', exp: now() + 3600 }, TOKEN_SECRET), // the refresh
  ];
  const dave = newClient({
    token: hs256({ sub: 'dave', exp: now() - 60 }, TOKEN_SECRET),
    getToken: async () => {
      const token = tokens[Math.min(issued.length, tokens.length - 1)]();
      issued.push(token);
      return token;
    },
  });
  // Eve's token expires too, but her app never comes back with a new one: the server must close
  // her connection with 3005 (a reconnect code) once the grace period is over.
  const eve = newClient({
    token: hs256({ sub: 'eve', exp: now() + 2 }, TOKEN_SECRET),
    getToken: () => new Promise(() => {}),
  });
  eve.client.connect();
  dave.client.connect();
  await connected('client D', dave);
  await connected('client Eve', eve);
  assert.equal(issued.length, 1, 'getToken was called once, after the expired token got error 109');
  assert.ok(
    dave.log.error.some((e) => e.type === 'connect' && e.error.code === 109),
    `a connect error 109 was reported: ${JSON.stringify(dave.log.error)}`,
  );
  // The server announced expiry (ttl 2 s); the SDK must refresh with getToken in time, and the
  // server (expired_grace 1 s in the Rust test) must keep the refreshed connection open.
  await until('the SDK to refresh the connection token', () => issued.length >= 2, 5000);
  await until('a refresh command on the wire', () => dave.network.sent.some((f) => f.includes('"refresh"')));
  await sleep(3000);
  assert.equal(dave.client.state, 'connected', 'the refreshed connection is still open');
  assert.equal(dave.log.connected.length, 1, 'no reconnect after the refresh');
  assert.equal(issued.length, 2, 'one refresh was enough');
  dave.client.disconnect();
  const expired = await until('the server to close the unrefreshed connection', () => eve.log.connecting.find((c) => c.code === 3005));
  assert.equal(expired.reason, 'connection expired');
  eve.client.disconnect();
});

await step('private channels: subscription tokens, chanInfo, sub_refresh in time, 2501 without it', async () => {
  assert.ok(TOKEN_SECRET, 'SWITCHBOARD_TOKEN_SECRET must be set for the token steps');
  const now = () => Math.floor(Date.now() / 1000);
  // Without a token a private channel is refused with 103, which ends the subscription.
  const outsider = newClient();
  outsider.client.connect();
  await connected('an anonymous client', outsider);
  const refused = outsider.client.newSubscription('$vault');
  const refusedLog = record(refused, SUBSCRIPTION_EVENTS);
  refused.subscribe();
  const denied = await until('the refused subscription', () => refusedLog.unsubscribed[0]);
  assert.equal(denied.code, 103, 'permission denied');
  outsider.client.disconnect();

  const frank = newClient({ token: hs256({ sub: 'frank' }, TOKEN_SECRET) });
  frank.client.connect();
  const frankId = (await connected('client F', frank)).client;
  const issued = [];
  const vault = frank.client.newSubscription('$vault', {
    getToken: async (ctx) => {
      const lifetime = issued.length === 0 ? 2 : 3600; // the first expires soon, the refresh lasts
      issued.push(ctx.channel);
      return hs256({ sub: 'frank', channel: ctx.channel, exp: now() + lifetime, info: { role: 'keeper' } }, TOKEN_SECRET);
    },
  });
  const vaultLog = record(vault, SUBSCRIPTION_EVENTS);
  // A second private subscription whose token is never renewed: the server ends it with 2501.
  let lapsedTokens = 0;
  const lapsed = frank.client.newSubscription('$lapsed', {
    getToken: (ctx) => {
      lapsedTokens += 1;
      if (lapsedTokens > 1) return new Promise(() => {});
      return Promise.resolve(hs256({ sub: 'frank', channel: ctx.channel, exp: now() + 2 }, TOKEN_SECRET));
    },
  });
  const lapsedLog = record(lapsed, SUBSCRIPTION_EVENTS);
  vault.subscribe();
  lapsed.subscribe();
  await within('the private subscription', vault.ready(WAIT_MS));
  await within('the second private subscription', lapsed.ready(WAIT_MS));
  const presence = await within('presence of the private channel', vault.presence());
  assert.deepEqual(presence.clients[frankId].chanInfo, { role: 'keeper' }, 'subscription token info shows as chanInfo');
  await api('publish', { channel: '$vault', data: { secret: 1 } });
  await until('a publication on the private channel', () => vaultLog.publication.length === 1);
  assert.deepEqual(vaultLog.publication[0].info, undefined);
  await until('the SDK to refresh the subscription token', () => issued.length >= 2, 5000);
  await until('a sub_refresh command on the wire', () => frank.network.sent.some((f) => f.includes('"sub_refresh"')));
  const unsubscribed = await until('the unrefreshed subscription to be ended', () => lapsedLog.subscribing.find((c) => c.code === 2501));
  assert.equal(unsubscribed.reason, 'subscription expired');
  await sleep(1500);
  assert.equal(vault.state, 'subscribed', 'the refreshed subscription goes on');
  assert.equal(vaultLog.subscribed.length, 1, 'the refreshed subscription was never resubscribed');
  assert.equal(vaultLog.unsubscribed.length + vaultLog.subscribing.length, 1, 'only the initial subscribing event');
  frank.client.disconnect();
});

await step('server-side subscriptions from the token channels claim are recovered on reconnect', async () => {
  assert.ok(TOKEN_SECRET, 'SWITCHBOARD_TOKEN_SECRET must be set for the token steps');
  const gina = newClient({ token: hs256({ sub: 'gina', channels: ['inbox-gina'] }, TOKEN_SECRET) });
  const subscribed = [];
  const publications = [];
  gina.client.on('subscribed', (ctx) => subscribed.push(ctx));
  gina.client.on('publication', (ctx) => publications.push(ctx));
  gina.client.connect();
  await connected('client G', gina);
  const inbox = () => subscribed.filter((c) => c.channel === 'inbox-gina');
  const first = await until('the server-side subscription of the token', () => inbox()[0]);
  assert.equal(first.channel, 'inbox-gina');
  assert.equal(first.recoverable, true);
  assert.ok(first.streamPosition.epoch, 'the server-side subscription has an epoch');
  await api('publish', { channel: 'inbox-gina', data: { n: 1 } });
  await until('the first inbox publication', () => publications.length === 1);

  gina.network.open = false;
  await api('disconnect', { user: 'gina', disconnect: { code: 3011, reason: 'force reconnect' } });
  await until('client G to start reconnecting', () => gina.log.connecting.some((c) => c.code === 3011));
  await api('publish', { channel: 'inbox-gina', data: { n: 2 } });
  await sleep(150);
  gina.network.open = true;
  await connected('client G again', gina, 2);
  const again = await until('the recovered server-side subscription', () => inbox()[1]);
  assert.equal(again.wasRecovering, true, 'the SDK asked to recover it in connect');
  assert.equal(again.recovered, true);
  await until('the missed inbox publication', () => publications.length >= 2);
  await sleep(100);
  assert.deepEqual(publications.map((p) => [p.channel, p.offset, p.data.n]), [['inbox-gina', 1, 1], ['inbox-gina', 2, 2]]);
  gina.client.disconnect();
});

await step("a known user's connection is subscribed to its personal channel (subscribe_to_user_personal_channel)", async () => {
  assert.ok(TOKEN_SECRET, 'SWITCHBOARD_TOKEN_SECRET must be set for the token steps');
  const hal = newClient({ token: hs256({ sub: 'hal' }, TOKEN_SECRET) });
  const subscribed = [];
  const publications = [];
  hal.client.on('subscribed', (ctx) => subscribed.push(ctx));
  hal.client.on('publication', (ctx) => publications.push(ctx));
  hal.client.connect();
  await connected('client H', hal);
  const personal = await until('the personal channel subscription', () => subscribed.find((c) => c.channel === 'personal:#hal'));
  assert.ok(personal.streamPosition.epoch, 'the personal channel has an epoch');
  await api('publish', { channel: 'personal:#hal', data: { note: 'for hal' } });
  const note = await until('a publication on the personal channel', () => publications.find((p) => p.channel === 'personal:#hal'));
  assert.deepEqual(note.data, { note: 'for hal' });
  hal.client.disconnect();
});

await step('unsubscribe and disconnect release presence', async () => {
  sub.unsubscribe();
  await until('the unsubscribed event', () => subLog.unsubscribed.length === 1 && sub.state === 'unsubscribed');
  await eventually('presence of chat to be empty', async () => {
    const seen = await api('presence', { channel: 'chat' });
    return { ok: Object.keys(seen.presence).length === 0, seen };
  });
  alice.client.disconnect();
  await until('client A disconnected', () => alice.client.state === 'disconnected');
  assert.equal(alice.log.disconnected.at(-1).code, 0, 'a client-side disconnect has code 0');
});

clearTimeout(watchdog);
console.log('all centrifuge-js compatibility checks passed');
process.exit(0);

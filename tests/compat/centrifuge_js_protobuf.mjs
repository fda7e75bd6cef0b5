// Compatibility test of the Protobuf encoding: drives a running Switchboard with centrifuge-js's
// Protobuf build (npm `centrifuge`, `centrifuge/build/protobuf`) over WebSocket (the
// `centrifuge-protobuf` subprotocol) and over the `http_stream` emulation, beside a client of the
// JSON build, and checks what an application would see.
//
// Usage: node centrifuge_js_protobuf.mjs HOST:PORT
//   SWITCHBOARD_API_KEY  key for the server API (sent as X-API-Key)
//
// The server must accept anonymous clients and allow Fossil deltas in the `docs` namespace. In
// Protobuf, payloads are bytes: JSON text stays JSON (JSON clients see the value, Protobuf clients
// get the text back byte for byte); publication data that is not JSON is a binary publication
// (bytes for Protobuf clients, a base64 string for JSON ones); rpc data may be any bytes too
// (`echo` returns them as they are).

import assert from 'node:assert/strict';

import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge } from 'centrifuge/build/protobuf';

import {
  WAIT_MS, api as apiAt, guard, networkControl, record, rejectsWithCode, sleep, step, until, within,
} from './sdk_helpers.mjs';

const address = process.argv[2];
if (!address || !/^[^/\s]+:\d+$/.test(address)) {
  console.error('usage: node centrifuge_js_protobuf.mjs HOST:PORT');
  process.exit(2);
}
const API_KEY = process.env.SWITCHBOARD_API_KEY || '';
const WS_URL = `ws://${address}/connection/websocket`;
const watchdog = guard(50000);

const api = (method, body) => apiAt(address, API_KEY, method, body);
const encode = (value) => new TextEncoder().encode(JSON.stringify(value));
const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

const CLIENT_EVENTS = ['connecting', 'connected', 'disconnected', 'error'];
const SUBSCRIPTION_EVENTS = ['subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'error'];

/** A client of `build` with fast reconnects, its network control and its event log. */
function newClient(build, endpoint = WS_URL, options = {}) {
  const network = networkControl();
  const client = new build(endpoint, {
    websocket: network.WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    timeout: WAIT_MS,
    ...options,
  });
  const log = record(client, CLIENT_EVENTS);
  return { client, network, log };
}

async function connected(what, { client, log }, count = 1) {
  await until(`${what} to be connected (#${count})`, () => log.connected.length >= count && client.state === 'connected');
  return log.connected[count - 1];
}

async function subscribed(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  const log = record(sub, SUBSCRIPTION_EVENTS);
  sub.subscribe();
  await within(`subscription to ${channel}`, sub.ready(WAIT_MS));
  return { sub, log };
}

// ---------------------------------------------------------------------------------------------

const pb = newClient(Centrifuge);
const json = newClient(JsonCentrifuge);
let pbChat;
let jsonChat;

await step('the Protobuf build connects over the centrifuge-protobuf subprotocol', async () => {
  pb.client.connect();
  const ctx = await connected('the Protobuf client', pb);
  assert.match(ctx.client, /^[0-9a-f-]{36}$/);
  assert.equal(ctx.transport, 'websocket');
  assert.equal(pb.network.socket.protocol, 'centrifuge-protobuf', 'the subprotocol the server chose');
  json.client.connect();
  await connected('the JSON client', json);
  assert.equal(json.network.socket.protocol, '', 'a JSON client gets no subprotocol');
});

await step('subscribe: a recoverable, positioned stream', async () => {
  pbChat = await subscribed(pb.client, 'chat', { joinLeave: true });
  const ctx = pbChat.log.subscribed[0];
  assert.equal(ctx.recoverable, true);
  assert.equal(ctx.positioned, true);
  assert.equal(ctx.streamPosition.offset, 0);
  assert.ok(ctx.streamPosition.epoch.length > 0);
  jsonChat = await subscribed(json.client, 'chat');
});

await step('JSON and Protobuf clients see each other\'s publications', async () => {
  await pb.client.publish('chat', encode({ text: 'from protobuf' }));
  await until('the JSON client to get the Protobuf publication', () => jsonChat.log.publication.length >= 1);
  assert.deepEqual(jsonChat.log.publication[0].data, { text: 'from protobuf' });
  await until('the Protobuf client to get its own publication', () => pbChat.log.publication.length >= 1);
  const own = pbChat.log.publication[0];
  assert.ok(own.data instanceof Uint8Array, 'Protobuf payloads are bytes');
  assert.deepEqual(decode(own.data), { text: 'from protobuf' });
  assert.equal(own.offset, 1);
  assert.equal(own.info.client, pb.log.connected[0].client, 'publisher info');
  await json.client.publish('chat', { text: 'from json' });
  await until('the Protobuf client to get the JSON publication', () => pbChat.log.publication.length >= 2);
  // Byte for byte the JSON text the server holds.
  assert.equal(new TextDecoder().decode(pbChat.log.publication[1].data), '{"text":"from json"}');
  await api('publish', { channel: 'chat', data: { text: 'from the api' }, tags: { kind: 'api' } });
  await until('the API publication', () => pbChat.log.publication.length >= 3);
  assert.deepEqual(decode(pbChat.log.publication[2].data), { text: 'from the api' });
  assert.deepEqual(pbChat.log.publication[2].tags, { kind: 'api' });
});

await step('binary data: byte for byte to Protobuf clients, a base64 string to JSON ones', async () => {
  const bytes = new Uint8Array([0, 255, 1, 2]);
  await pb.client.publish('chat', bytes);
  await until('the binary publication', () => pbChat.log.publication.length >= 4);
  assert.deepEqual([...pbChat.log.publication[3].data], [...bytes]);
  await until('the JSON client to get it', () => jsonChat.log.publication.length >= 4);
  assert.equal(jsonChat.log.publication[3].data, Buffer.from(bytes).toString('base64'));
  // RPC data may be any bytes: `echo` returns them byte for byte.
  const echoed = await within('a binary rpc', pb.client.rpc('echo', new Uint8Array([255, 0])));
  assert.deepEqual([...echoed.data], [255, 0]);
  const reply = await within('a JSON rpc after it', pb.client.rpc('echo', encode({ still: 'here' })));
  assert.deepEqual(decode(reply.data), { still: 'here' });
  assert.equal(pb.client.state, 'connected');
});

await step('rpc, presence, presence stats and history', async () => {
  const reply = await within('rpc echo', pb.client.rpc('echo', encode([1, 2, 3])));
  assert.deepEqual(decode(reply.data), [1, 2, 3]);
  await rejectsWithCode('an unknown rpc method', pb.client.rpc('nope', encode({})), 108);
  const presence = await within('presence', pb.client.presence('chat'));
  assert.ok(presence.clients[pb.log.connected[0].client], 'the Protobuf client is present');
  assert.ok(presence.clients[json.log.connected[0].client], 'the JSON client is present');
  const stats = await within('presence stats', pb.client.presenceStats('chat'));
  assert.equal(stats.numClients, 2);
  const history = await within('history', pb.client.history('chat', { limit: 10 }));
  assert.deepEqual(history.publications.map((p) => p.offset), [1, 2, 3, 4]);
  assert.deepEqual(history.publications.slice(0, 3).map((p) => decode(p.data).text), ['from protobuf', 'from json', 'from the api']);
  assert.deepEqual([...history.publications[3].data], [0, 255, 1, 2]);
  assert.equal(history.epoch, pbChat.log.subscribed[0].streamPosition.epoch);
});

await step('join and leave pushes reach the Protobuf client', async () => {
  const other = newClient(JsonCentrifuge);
  other.client.connect();
  const ctx = await connected('a third client', other);
  await subscribed(other.client, 'chat');
  await until('the join push', () => pbChat.log.join.some((j) => j.info.client === ctx.client));
  other.client.disconnect();
  await until('the leave push', () => pbChat.log.leave.some((l) => l.info.client === ctx.client));
});

await step('the connection survives server pings (empty Protobuf replies, answered with pongs)', async () => {
  const connects = pb.log.connected.length;
  const drops = pb.log.disconnected.length + pb.log.connecting.length;
  // The server pings every second and wants a pong within one.
  await sleep(2500);
  assert.equal(pb.log.connected.length, connects, 'no reconnect while idle');
  assert.equal(pb.log.disconnected.length + pb.log.connecting.length, drops, 'no drop while idle');
  assert.equal(pb.client.state, 'connected');
});

await step('recovery after a network drop: missed publications arrive after the SDK reconnects', async () => {
  const connects = pb.log.connected.length;
  const subscribes = pbChat.log.subscribed.length;
  const before = pbChat.log.publication.length;
  pb.network.open = false;
  pb.network.drop();
  await until('the Protobuf client to notice the drop', () => pb.client.state === 'connecting');
  for (const text of ['missed 1', 'missed 2']) {
    await api('publish', { channel: 'chat', data: { text } });
  }
  // Bytes through the API's b64data, missed too.
  await api('publish', { channel: 'chat', b64data: Buffer.from([9, 0, 9]).toString('base64') });
  await sleep(150);
  pb.network.open = true;
  const ctx = await until('the resubscription', () => pbChat.log.subscribed[subscribes]);
  await connected('the Protobuf client again', pb, connects + 1);
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  await until('the missed publications', () => pbChat.log.publication.length >= before + 3);
  assert.deepEqual(pbChat.log.publication.slice(before, before + 2).map((p) => decode(p.data).text), ['missed 1', 'missed 2']);
  assert.deepEqual([...pbChat.log.publication[before + 2].data], [9, 0, 9], 'recovered bytes');
  assert.deepEqual(pbChat.log.publication.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7]);
});

await step('Fossil deltas in Protobuf: every publication of a changing document is rebuilt', async () => {
  const { log } = await subscribed(pb.client, 'docs:pb', { delta: 'fossil' });
  const text = 'lorem ipsum dolor sit amet '.repeat(40);
  for (let rev = 1; rev <= 20; rev++) {
    await api('publish', { channel: 'docs:pb', data: { text, rev } });
  }
  await until('20 document publications', () => log.publication.length >= 20);
  assert.deepEqual(log.publication.map((p) => decode(p.data).rev), Array.from({ length: 20 }, (_, i) => i + 1));
  assert.ok(log.publication.every((p) => decode(p.data).text === text));
});

await step('http_stream in Protobuf: connect, subscribe, publish, rpc and receive', async () => {
  const stream = newClient(Centrifuge, [{ transport: 'http_stream', endpoint: `http://${address}/connection/http_stream` }], {
    emulationEndpoint: `http://${address}/emulation`,
    fetch: globalThis.fetch,
    readableStream: globalThis.ReadableStream,
  });
  stream.client.connect();
  const ctx = await connected('the http_stream client', stream);
  assert.equal(ctx.transport, 'http_stream');
  const { log } = await subscribed(stream.client, 'chat');
  await stream.client.publish('chat', encode({ text: 'over http_stream' }));
  await until('the JSON client to get the http_stream publication', () =>
    jsonChat.log.publication.some((p) => p.data.text === 'over http_stream'));
  await until('the publication back on the stream', () => log.publication.length >= 1);
  assert.deepEqual(decode(log.publication[0].data), { text: 'over http_stream' });
  await json.client.publish('chat', { text: 'to the stream' });
  await until('the JSON publication on the stream', () => log.publication.length >= 2);
  assert.equal(new TextDecoder().decode(log.publication[1].data), '{"text":"to the stream"}');
  const reply = await within('rpc over http_stream', stream.client.rpc('echo', encode({ n: 7 })));
  assert.deepEqual(decode(reply.data), { n: 7 });
  stream.client.disconnect();
});

await step('the server counts connections per encoding', async () => {
  const response = await fetch(`http://${address}/metrics`, { signal: AbortSignal.timeout(WAIT_MS) });
  const text = await response.text();
  const gauge = (encoding) => Number(text.match(new RegExp(`switchboard_encoding_connections\\{encoding="${encoding}"\\} (\\d+)`))[1]);
  assert.ok(gauge('protobuf') >= 1, text);
  assert.ok(gauge('json') >= 1, text);
});

pb.client.disconnect();
json.client.disconnect();
clearTimeout(watchdog);
console.log('all protobuf steps passed');
process.exit(0);

// Helpers shared by the SDK compatibility scripts: named steps, bounded waits, event logs, a
// WebSocket class whose network the test can cut, and the server API.

import assert from 'node:assert/strict';

import WebSocket from 'ws';

/** Longest wait for any single expected event. */
export const WAIT_MS = 5000;

let currentStep = 'start';

/** Ends the script with the failed step and the error (the SDK rejects with plain objects). */
export function fail(error) {
  const text = error && error.stack ? error.stack : JSON.stringify(error) ?? String(error);
  console.error(`FAIL in step "${currentStep}": ${text}`);
  process.exit(1);
}

/** Fails the script unless it finishes within `totalMs`, and on any unhandled error. */
export function guard(totalMs) {
  process.on('unhandledRejection', fail);
  process.on('uncaughtException', fail);
  return setTimeout(() => fail(new Error(`the whole test took over ${totalMs} ms`)), totalMs);
}

/** Runs one named step; prints one line when it passes. */
export async function step(name, body) {
  currentStep = name;
  const started = Date.now();
  await body();
  console.log(`ok - ${name} (${Date.now() - started} ms)`);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a truthy value, which is returned; fails after `ms`. */
export async function until(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Like `until`, for an async check returning `{ok, seen}`; fails after `ms` with what it saw. */
export async function eventually(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await check();
    if (last.ok) return;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}; last seen: ${JSON.stringify(last.seen)}`);
    }
    await sleep(20);
  }
}

/** Bounds a promise in time. */
export function within(what, promise, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Expects `promise` to reject with a server error of `code`; returns the error. */
export async function rejectsWithCode(what, promise, code) {
  let result;
  try {
    result = await within(what, promise);
  } catch (error) {
    assert.equal(error && error.code, code, `${what}: expected error code ${code}, got ${JSON.stringify(error)}`);
    return error;
  }
  throw new Error(`${what}: expected error code ${code}, got success ${JSON.stringify(result)}`);
}

/** Records every listed event of `emitter` into arrays, so no event is missed between awaits. */
export function record(emitter, events) {
  const log = {};
  for (const event of events) {
    log[event] = [];
    emitter.on(event, (ctx) => log[event].push(ctx));
  }
  return log;
}

/**
 * A WebSocket class for one client (the SDK's `websocket` option) that lets the test cut the
 * network: `drop()` kills the open socket without a close frame, and while `open` is false every
 * new connection attempt fails before its handshake.
 */
export function networkControl() {
  const control = { open: true, socket: null };
  control.WebSocket = class extends WebSocket {
    constructor(...args) {
      super(...args);
      control.socket = this;
      if (!control.open) this.terminate();
    }
  };
  control.drop = () => control.socket.terminate();
  return control;
}

/** Calls the server API at `address` with `key`; returns `result`, failing on any error. */
export async function api(address, key, method, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers['X-API-Key'] = key;
  const response = await fetch(`http://${address}/api/${method}`, {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await response.text();
  assert.equal(response.status, 200, `/api/${method} answered HTTP ${response.status}: ${text}`);
  const reply = JSON.parse(text);
  assert.equal(reply.error, undefined, `/api/${method} failed: ${text}`);
  return reply.result;
}

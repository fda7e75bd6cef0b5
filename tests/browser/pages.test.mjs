// Browser tests of the embedded pages, in Debian's chromium driven by playwright-core.
//
// Run by tests/browser.rs, which starts two servers and passes them here:
//   SWITCHBOARD_URL             anonymous server (no token secret, no API key, loopback)
//   SWITCHBOARD_SECURE_URL      server with a token secret, an API key, an admin password and a
//                               `chat` namespace (so its rooms are channels `chat:<room>`)
//   SWITCHBOARD_API_KEY, SWITCHBOARD_ADMIN_PASSWORD, SWITCHBOARD_TOKEN (a connection token of
//   user SWITCHBOARD_USER on the secure server), SWITCHBOARD_ARTIFACTS (screenshots),
//   SWITCHBOARD_CHROMIUM (default /usr/lib/chromium/chromium).
// Prints one line per step and ends with "N passed, N failed"; exits non-zero on failure, after
// saving a screenshot of every open page into the artifacts directory.
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import path from 'node:path';
import { chromium } from 'playwright-core';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set: run these tests through \`cargo test --test browser\``);
    process.exit(2);
  }
  return value;
}

const OPEN = required('SWITCHBOARD_URL');
const SECURE = required('SWITCHBOARD_SECURE_URL');
const API_KEY = required('SWITCHBOARD_API_KEY');
const ADMIN_PASSWORD = required('SWITCHBOARD_ADMIN_PASSWORD');
const TOKEN = required('SWITCHBOARD_TOKEN');
const USER = required('SWITCHBOARD_USER');
const ARTIFACTS = process.env.SWITCHBOARD_ARTIFACTS || path.resolve('../../test-artifacts');
const CHROMIUM = process.env.SWITCHBOARD_CHROMIUM || '/usr/lib/chromium/chromium';
const WAIT = 15000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const problems = []; // page errors, CSP violations, requests to other origins
const pages = new Map(); // label -> page, for failure screenshots
let passed = 0;
let failed = 0;

// ---------- helpers ----------

async function api(base, method, body, key) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers['X-API-Key'] = key;
  const response = await fetch(`${base}/api/${method}`, { method: 'POST', headers, body: JSON.stringify(body) });
  const reply = await response.json();
  if (response.status !== 200 || reply.error) {
    throw new Error(`/api/${method} answered ${response.status} ${JSON.stringify(reply)}`);
  }
  return reply.result;
}

/** Polls `check` until it returns a truthy value; fails with `what` and the last value seen. */
async function until(what, check, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function newPage(browser, label, base, viewport) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  const origin = new URL(base).host;
  context.on('request', (request) => {
    const url = new URL(request.url());
    if (url.host !== origin && url.protocol !== 'data:') problems.push(`${label}: fetched ${request.url()}`);
  });
  const page = await context.newPage();
  page.on('pageerror', (err) => problems.push(`${label}: page error: ${err.message}`));
  page.on('console', (message) => {
    if (/Content Security Policy|Refused to/i.test(message.text())) problems.push(`${label}: ${message.text()}`);
  });
  page.on('websocket', (ws) => {
    if (new URL(ws.url()).host !== origin) problems.push(`${label}: websocket to ${ws.url()}`);
  });
  pages.set(label, page);
  return page;
}

async function openChat(browser, label, base, { name, room, viewport = DESKTOP, fragment = '' }) {
  const page = await newPage(browser, label, base, viewport);
  await page.goto(`${base}/chat${fragment}`);
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join');
  await page.waitForSelector('#status[data-state="connected"]', { timeout: WAIT });
  await until(`${label} to be in the room`, () => notices(page).then((n) => n.some((t) => t.startsWith('You joined'))));
  return page;
}

const texts = (page, selector) => page.$$eval(selector, (nodes) => nodes.map((n) => n.textContent.trim()));
const messages = (page) => texts(page, '#messages .msg .text');
const notices = (page) => texts(page, '#messages .notice');
const people = (page) => texts(page, '#people-list .name');
const state = (page) => page.getAttribute('#status', 'data-state');

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** Fails if the page is wider than its viewport (a phone would have to scroll sideways). */
async function fitsWidth(page, label) {
  const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  if (scroll > inner) throw new Error(`${label} overflows its ${inner}px viewport: ${scroll}px wide`);
}

async function screenshot(page, name, fullPage = false) {
  await page.screenshot({ path: path.join(ARTIFACTS, name), fullPage });
}

/** Counts the pixels of a canvas drawn in `rgb` (the colour of a chart series or lane). */
function colouredPixels(page, selector, rgb) {
  return page.$eval(
    selector,
    (canvas, [r, g, b]) => {
      const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
      let n = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] > 200 && Math.abs(data[i] - r) < 24 && Math.abs(data[i + 1] - g) < 24 && Math.abs(data[i + 2] - b) < 24) n += 1;
      }
      return n;
    },
    rgb,
  );
}

async function step(name, body) {
  const started = Date.now();
  try {
    await body();
    if (problems.length) throw new Error(`problems in the pages:\n  ${problems.join('\n  ')}`);
    passed += 1;
    console.log(`ok ${passed + failed} - ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    failed += 1;
    console.log(`not ok ${passed + failed} - ${name}\n  ${String(err && err.stack ? err.stack : err).replace(/\n/g, '\n  ')}`);
    for (const [label, page] of pages) {
      if (!page.isClosed()) await screenshot(page, `failure-${label}.png`).catch(() => {});
    }
    throw err;
  }
}

/** Runs a shell command as a person pasting it would (with `env` added); returns its stdout. */
async function shell(command, env = {}) {
  const { stdout } = await promisify(execFile)('sh', ['-c', command], { env: { ...process.env, ...env }, timeout: WAIT });
  return stdout;
}

/** Checks the front page of `base`: what it says, its links, and that its snippets work. */
async function checkFrontPage(browser, label, base, { mode, key }) {
  const page = await newPage(browser, label, base, PHONE);
  await page.goto(`${base}/`);
  await page.waitForSelector('body[data-ready="true"]', { timeout: WAIT });
  const info = await api(base, 'info', {}, key);
  const version = await page.textContent('#version');
  if (!version.includes(info.nodes[0].version)) throw new Error(`version reads ${JSON.stringify(version)}, /api/info ${info.nodes[0].version}`);
  if ((await page.textContent('#node-name')) !== info.nodes[0].name) throw new Error('the node name differs from /api/info');
  if ((await page.getAttribute('#mode', 'data-mode')) !== mode) throw new Error(`mode is not ${mode}`);
  await fitsWidth(page, `the front page of ${label} on a phone`);
  const html = await page.content();
  for (const secret of [API_KEY, ADMIN_PASSWORD, 'browser-test-token-secret']) {
    if (html.includes(secret)) throw new Error('the front page shows a secret');
  }
  // Every link answers.
  for (const id of ['link-chat', 'link-dashboard', 'link-health', 'link-metrics']) {
    const href = await page.getAttribute(`#${id}`, 'href');
    const response = await page.request.get(new URL(href, base).href);
    if (response.status() !== 200) throw new Error(`${href} answered ${response.status()}`);
  }
  // The curl command, pasted into a shell, publishes (with the key from the environment it names).
  const channel = 'news';
  const curl = await page.textContent('#curl-snippet');
  const answer = JSON.parse(await shell(curl, { SWITCHBOARD_API_KEY: key || '' }));
  if (!answer.result || !answer.result.offset) throw new Error(`the curl snippet answered ${JSON.stringify(answer)}`);
  const history = await api(base, 'history', { channel, limit: 1, reverse: true }, key);
  if (JSON.stringify(history.publications[0].data) !== '{"text":"hello"}') throw new Error('the curl publication is not in history');
  // Following the link to the chat opens it.
  await page.click('#link-chat');
  await page.waitForSelector('#join', { timeout: WAIT });
  await screenshot(page, `front-chat-${label}.png`);
  await page.goBack();
  await page.waitForSelector('body[data-ready="true"]', { timeout: WAIT });
  await screenshot(page, `front-${label}-phone.png`, true);
  await page.setViewportSize(DESKTOP);
  await screenshot(page, `front-${label}-desktop.png`, true);
  return page;
}

/**
 * Opens an `EventSource` on `base`'s `/connection/uni_sse` from a page of that origin (so the
 * page's Content-Security-Policy, `connect-src 'self'`, applies), with `connect` as the
 * `cf_connect` parameter. The pushes it receives collect in the page's `window.uniPushes`.
 */
async function openEventSource(page, base, connect) {
  await page.goto(`${base}/chat`);
  await page.evaluate((request) => {
    window.uniPushes = [];
    const url = new URL('/connection/uni_sse', window.location.origin);
    url.searchParams.set('cf_connect', JSON.stringify(request));
    window.uniSource = new EventSource(url);
    window.uniSource.onmessage = (event) => window.uniPushes.push(JSON.parse(event.data));
  }, connect);
  await until('the connect push', async () => (await page.evaluate(() => window.uniPushes)).some((p) => p.connect));
}

/** The data of the publications `page`'s EventSource received on `channel`, in order. */
const uniPublications = (page, channel) =>
  page.evaluate((ch) => window.uniPushes.filter((p) => p.pub && p.channel === ch).map((p) => p.pub.data), channel);

/**
 * The chat over an HTTP fallback transport (`http_stream` or `sse`, with `/emulation` for what the
 * page sends), next to a page on WebSocket: messages both ways, then a recovery after the server
 * drops the connection while the page is offline.
 */
async function checkEmulatedChat(browser, transport) {
  const room = `fallback-${transport}`;
  const channel = `chat:${room}`;
  const label = `chat-${transport}`;
  const sockets = [];
  const page = await newPage(browser, label, SECURE, DESKTOP);
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(`${SECURE}/chat#token=${TOKEN}&transport=${transport}`);
  await page.fill('#name', `Faye-${transport}`);
  await page.fill('#room', room);
  await page.click('#join');
  await page.waitForSelector('#status[data-state="connected"]', { timeout: WAIT });
  await until(`${label} to be in the room`, () => notices(page).then((n) => n.some((t) => t.startsWith('You joined'))));
  const peer = await openChat(browser, `peer-${transport}`, SECURE, { name: `Wes-${transport}`, room, fragment: `#token=${TOKEN}` });
  await say(page, `hello over ${transport}`);
  await until('the WebSocket page to get it', async () => (await messages(peer)).includes(`hello over ${transport}`));
  await say(peer, `hi back to ${transport}`);
  await until(`the ${transport} page to get the answer`, async () => (await messages(page)).includes(`hi back to ${transport}`));
  await until('both to be listed online', async () => (await people(page)).length >= 2);

  // The server drops the connection while the page is offline: the publication below can only
  // come back through recovery.
  await page.context().setOffline(true);
  await api(SECURE, 'disconnect', { user: USER, disconnect: { code: 3011, reason: 'test reconnect' } }, API_KEY);
  await until(`the ${transport} page to show it is reconnecting`, async () => (await state(page)) === 'connecting');
  await api(SECURE, 'publish', { channel, data: { text: `missed over ${transport}`, name: 'ops-bot' } }, API_KEY);
  await until('the WebSocket page to get it live', async () => (await messages(peer)).includes(`missed over ${transport}`));
  await page.context().setOffline(false);
  await until(`the ${transport} page to reconnect`, async () => (await state(page)) === 'connected', 20000);
  await until('the missed message to be recovered', async () => (await messages(page)).includes(`missed over ${transport}`));
  await until('the recovery notice', async () => (await notices(page)).includes('Back online — 1 missed message recovered'));
  if (sockets.length) throw new Error(`the ${transport} page opened WebSockets: ${sockets.join(', ')}`);
  await screenshot(page, `chat-${transport}.png`);
  await page.context().close();
  await peer.context().close();
  pages.delete(label);
  pages.delete(`peer-${transport}`);
}

// ---------- the tests ----------

async function main(browser) {
  let ada;
  let bob;
  let cy;

  await step('the front page says what the server is, and its links and curl snippet work', async () => {
    await checkFrontPage(browser, 'front', OPEN, { mode: 'development' });
    await checkFrontPage(browser, 'front-secure', SECURE, { mode: 'production', key: API_KEY });
    const curl = await pages.get('front-secure').textContent('#curl-snippet');
    if (!curl.includes('X-API-Key: $SWITCHBOARD_API_KEY')) throw new Error(`no key placeholder in ${curl}`);
  });

  await step('the JS snippet of the front page, run in a page, receives a publication', async () => {
    const snippet = await pages.get('front').textContent('#js-snippet');
    // The snippet imports the npm package; a page has the same SDK as window.Centrifuge (the
    // bundle /chat loads). Inline scripts are refused by the pages' policy, so this context
    // alone bypasses it.
    const context = await browser.newContext({ bypassCSP: true });
    const page = await context.newPage();
    const seen = [];
    page.on('console', (message) => {
      Promise.all(message.args().map((arg) => arg.jsonValue()))
        .then((values) => seen.push(JSON.stringify(values)))
        .catch(() => {}); // the page closed meanwhile
    });
    await page.goto(`${OPEN}/chat`);
    await page.waitForFunction(() => typeof window.Centrifuge === 'function', null, { timeout: WAIT });
    const script = snippet.replace("import { Centrifuge } from 'centrifuge';", 'const { Centrifuge } = window;');
    if (script === snippet) throw new Error(`unexpected snippet:\n${snippet}`);
    await page.addScriptTag({ content: `{\n${script}\n}` });
    await until('the snippet to receive a publication', async () => {
      await api(OPEN, 'publish', { channel: 'news', data: { text: 'to the snippet' } });
      return seen.some((line) => line.includes('news:') && line.includes('to the snippet'));
    });
    await context.close();
  });

  await step('three pages join the same room and each lists all three as online', async () => {
    ada = await openChat(browser, 'ada', OPEN, { name: 'Ada', room: 'lobby' });
    bob = await openChat(browser, 'bob', OPEN, { name: 'Bob', room: 'lobby', viewport: PHONE });
    cy = await openChat(browser, 'cy', OPEN, { name: 'Cy', room: 'lobby' });
    for (const [label, page] of [['ada', ada], ['bob', bob], ['cy', cy]]) {
      await until(`${label}'s presence list to show Ada, Bob and Cy`, async () => {
        const names = (await people(page)).sort();
        return names.join(',') === 'Ada,Bob,Cy' && names;
      });
    }
    // On the phone, the list lives in a drawer opened from the top bar.
    await bob.click('#people-toggle');
    await until('the drawer to open on the phone', async () => (await bob.getAttribute('#people', 'class')).includes('open'));
    if (!(await bob.isVisible('#people-list .name >> text=Cy'))) throw new Error('the drawer does not show Cy');
    await bob.click('#messages', { position: { x: 30, y: 200 }, timeout: WAIT }); // beside the drawer
    await until('the drawer to close', async () => !(await bob.getAttribute('#people', 'class')).includes('open'));
    await until('Ada to see that Bob and Cy joined', async () => {
      const n = await notices(ada);
      return n.includes('Bob joined') && n.includes('Cy joined') && n;
    });
  });

  await step('a message typed in one page appears in the other two, with its sender', async () => {
    await say(ada, 'Hello from Ada');
    for (const [label, page] of [['bob', bob], ['cy', cy]]) {
      await until(`${label} to receive Ada's message`, async () => (await messages(page)).includes('Hello from Ada'));
    }
    const authors = await texts(cy, '#messages .msg .who');
    if (!authors.includes('Ada')) throw new Error(`Cy sees authors ${JSON.stringify(authors)}`);
    if (await ada.inputValue('#text')) throw new Error('the composer was not cleared after sending');
    await say(bob, 'Hi Ada! Bob here, on a phone-sized screen.');
    await until('Ada to receive Bob\'s message', async () => (await messages(ada)).some((t) => t.startsWith('Hi Ada!')));
  });

  await step('a publication from the server API appears in the open chat', async () => {
    await api(OPEN, 'publish', { channel: 'lobby', data: { text: 'Published through /api/publish' } });
    for (const [label, page] of [['ada', ada], ['bob', bob], ['cy', cy]]) {
      await until(`${label} to show the API publication`, async () => (await messages(page)).includes('Published through /api/publish'));
    }
  });

  await step('closing a page shows a leave notice to the others and updates presence', async () => {
    await cy.context().close();
    pages.delete('cy');
    for (const [label, page] of [['ada', ada], ['bob', bob]]) {
      await until(`${label} to see "Cy left"`, async () => (await notices(page)).includes('Cy left'));
      await until(`${label}'s presence list to drop Cy`, async () => (await people(page)).sort().join(',') === 'Ada,Bob');
    }
    await fitsWidth(bob, 'the chat on a phone');
    await screenshot(ada, 'chat-desktop.png');
    await screenshot(bob, 'chat-phone.png');
  });

  await step('a newcomer sees the last messages of the room (history)', async () => {
    const eve = await openChat(browser, 'eve', OPEN, { name: 'Eve', room: 'lobby', viewport: PHONE });
    await until('Eve to see earlier messages', async () => {
      const shown = await messages(eve);
      return shown.includes('Hello from Ada') && shown.includes('Published through /api/publish') && shown;
    });
    const history = await texts(eve, '#messages .divider');
    if (!history.includes('Earlier messages')) throw new Error(`no "Earlier messages" divider: ${JSON.stringify(history)}`);
    await eve.context().close();
    pages.delete('eve');
  });

  await step('a newcomer learns the names of members whose announcements left history', async () => {
    await api(OPEN, 'history_remove', { channel: 'lobby' });
    const finn = await openChat(browser, 'finn', OPEN, { name: 'Finn', room: 'lobby' });
    await until('Finn\'s presence list to name Ada and Bob', async () => {
      const names = (await people(finn)).sort();
      return names.join(',') === 'Ada,Bob,Finn' && names;
    });
    await finn.context().close();
    pages.delete('finn');
  });

  let dora;
  await step('after a forced reconnect, a message published meanwhile is recovered', async () => {
    dora = await openChat(browser, 'dora', SECURE, { name: 'Dora', room: 'ops', fragment: `#token=${TOKEN}` });
    await say(dora, 'Dora checking in');
    await until('Dora\'s own message', async () => (await messages(dora)).includes('Dora checking in'));
    // Keep the page offline while the server drops it, so the publication below is surely
    // missed live and can only come back through recovery.
    await dora.context().setOffline(true);
    await api(SECURE, 'disconnect', { user: USER, disconnect: { code: 3011, reason: 'test reconnect' } }, API_KEY);
    await until('Dora\'s page to show it is reconnecting', async () => (await state(dora)) === 'connecting');
    const status = await dora.textContent('#status');
    if (!/Reconnecting/.test(status)) throw new Error(`status reads ${JSON.stringify(status)} while reconnecting`);
    await api(SECURE, 'publish', { channel: 'chat:ops', data: { text: 'Sent while Dora was away', name: 'ops-bot' } }, API_KEY);
    await new Promise((resolve) => setTimeout(resolve, 300));
    if ((await messages(dora)).includes('Sent while Dora was away')) throw new Error('the page got the message while offline');
    await dora.context().setOffline(false);
    await until('Dora\'s page to reconnect', async () => (await state(dora)) === 'connected', 20000);
    await until('the missed message to be recovered', async () => (await messages(dora)).includes('Sent while Dora was away'));
    await until('the recovery notice', async () => (await notices(dora)).includes('Back online — 1 missed message recovered'));
    await screenshot(dora, 'chat-recovered.png');
  });

  for (const transport of ['http_stream', 'sse']) {
    await step(`without WebSocket, the chat works over ${transport} and recovers after the server drops it`, async () => {
      await checkEmulatedChat(browser, transport);
    });
  }

  await step('the dashboard asks for the admin password and refuses a wrong one', async () => {
    const dash = await newPage(browser, 'dashboard', SECURE, DESKTOP);
    await dash.goto(`${SECURE}/dashboard`);
    await dash.waitForSelector('#login-screen:not([hidden])', { timeout: WAIT });
    if (await dash.isVisible('#board')) throw new Error('the board is visible before signing in');
    await dash.fill('#key', 'not-the-password');
    await dash.click('#login');
    await until('the wrong-password message', async () => /Wrong/.test(await dash.textContent('#login-error')));
    await dash.fill('#key', ADMIN_PASSWORD);
    await dash.click('#login');
    await dash.waitForSelector('#board:not([hidden])', { timeout: WAIT });
  });

  await step('the dashboard shows live figures, charts and the timeline while the chat runs', async () => {
    const dash = pages.get('dashboard');
    let n = 0;
    // Traffic on every lane while the dashboard is checked: API publications (history writes,
    // fan-out) and Dora's own messages (client commands).
    const publisher = setInterval(() => {
      n += 1;
      api(SECURE, 'publish', { channel: 'chat:ops', data: { text: `tick ${n}`, name: 'ops-bot' } }, API_KEY).catch(() => {});
    }, 150);
    let talking = Promise.resolve();
    const talker = setInterval(() => {
      talking = talking.then(() => say(dora, `Dora at ${new Date().toISOString()}`)).catch(() => {});
    }, 1000);
    try {
      await until('a non-zero connection count', async () => Number(await dash.textContent('#v-connections')) >= 1);
      await until('the connections counted by transport', async () => /websocket \d+/.test(await dash.textContent('#v-transports')));
      await until('non-zero message rates', async () => {
        const inRate = parseFloat(await dash.textContent('#v-in-rate'));
        const outRate = parseFloat(await dash.textContent('#v-out-rate'));
        return inRate > 0 && outRate > 0 && [inRate, outRate];
      });
      await until('the channel list to show "chat:ops"', async () => (await texts(dash, '#channel-rows .name')).includes('chat:ops'));
      await until('both charts to draw their series', async () => {
        const drawn = await dash.$$eval('canvas.chart', (list) => list.map((c) => Number(c.dataset.points || 0)));
        return drawn.every((p) => p >= 4) && drawn;
      });
      // The series' own colours are on the canvases: the lines were really drawn. (Series with
      // equal rates hide one another, so any series of a chart counts.)
      const seriesPixels = async (selector, colours) => {
        let total = 0;
        for (const colour of colours) total += await colouredPixels(dash, selector, colour);
        return total;
      };
      await until('chart lines on the canvases', async () => {
        const inLines = await seriesPixels('#chart-in', [[79, 70, 229], [14, 165, 233], [22, 163, 74]]);
        const outLines = await seriesPixels('#chart-out', [[13, 148, 136], [168, 85, 247]]);
        return inLines > 20 && outLines > 20 && [inLines, outLines];
      });
      await until('spans on every busy lane of the timeline', async () => {
        const spans = Number(await dash.getAttribute('#timeline', 'data-spans'));
        const commands = await colouredPixels(dash, '#timeline', [79, 70, 229]);
        const fanOut = await colouredPixels(dash, '#timeline', [13, 148, 136]);
        const history = await colouredPixels(dash, '#timeline', [217, 119, 6]);
        return spans > 0 && commands > 0 && fanOut > 0 && history > 0 && { spans, commands, fanOut, history };
      });
      await new Promise((resolve) => setTimeout(resolve, 2500)); // a few seconds of charts
      await screenshot(dash, 'dashboard-desktop.png', true);
      await dash.setViewportSize(PHONE);
      await new Promise((resolve) => setTimeout(resolve, 800));
      await fitsWidth(dash, 'the dashboard on a phone');
      await screenshot(dash, 'dashboard-phone.png', true);
    } finally {
      clearInterval(publisher);
      clearInterval(talker);
      await talking;
    }
  });

  await step('EventSource receives publications on uni_sse, anonymously and with a token', async () => {
    const open = await newPage(browser, 'event-source', OPEN, DESKTOP);
    await openEventSource(open, OPEN, { subs: { 'sse-news': {} } });
    const secure = await newPage(browser, 'event-source-token', SECURE, DESKTOP);
    await openEventSource(secure, SECURE, { token: TOKEN, subs: { 'chat:sse': {} } });
    const connect = (await secure.evaluate(() => window.uniPushes)).find((p) => p.connect).connect;
    if (!connect.subs || !connect.subs['chat:sse']) throw new Error(`no chat:sse in ${JSON.stringify(connect)}`);
    // The subscriptions take effect just after the connect push: publish until one arrives, then
    // the rest must follow in order.
    await until('a first publication on sse-news', async () => {
      await api(OPEN, 'publish', { channel: 'sse-news', data: { n: 0 } });
      return (await uniPublications(open, 'sse-news')).length > 0;
    });
    await until('a first publication on chat:sse', async () => {
      await api(SECURE, 'publish', { channel: 'chat:sse', data: { n: 0 } }, API_KEY);
      return (await uniPublications(secure, 'chat:sse')).length > 0;
    });
    for (let n = 1; n <= 3; n += 1) {
      await api(OPEN, 'publish', { channel: 'sse-news', data: { n } });
      await api(SECURE, 'publish', { channel: 'chat:sse', data: { n } }, API_KEY);
    }
    for (const [page, channel] of [[open, 'sse-news'], [secure, 'chat:sse']]) {
      await until(`publications 1 to 3 in order on ${channel}`, async () => {
        const numbers = (await uniPublications(page, channel)).map((d) => d.n).filter((n) => n > 0);
        return numbers.join(',') === '1,2,3' && numbers;
      });
      await page.evaluate(() => window.uniSource.close());
      await page.context().close();
    }
    pages.delete('event-source');
    pages.delete('event-source-token');
  });

  await step('on a loopback server without secrets the dashboard is open', async () => {
    const dash = await newPage(browser, 'open-dashboard', OPEN, DESKTOP);
    await dash.goto(`${OPEN}/dashboard`);
    await dash.waitForSelector('#board:not([hidden])', { timeout: WAIT });
    await until('Ada and Bob counted as connections', async () => Number(await dash.textContent('#v-connections')) >= 2);
    // Every page connects from this machine: one address holding them all.
    await until('the client address listed', async () => {
      const rows = await dash.$$eval('#address-rows tr', (trs) => trs.map((tr) => [tr.querySelector('.name').textContent, Number(tr.querySelector('.count').textContent)]));
      return rows.length === 1 && rows[0][0] === '127.0.0.1' && rows[0][1] >= 2 && rows;
    });
    await screenshot(dash, 'dashboard-addresses.png', true);
    if (await dash.isVisible('#login-screen')) throw new Error('a login form on an open dashboard');
  });
}

await mkdir(ARTIFACTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
let code = 0;
try {
  await main(browser);
} catch (_) {
  code = 1;
} finally {
  await browser.close().catch(() => {});
}
console.log(`${passed} passed, ${failed} failed`);
console.log(`screenshots in ${ARTIFACTS}`);
process.exit(code);

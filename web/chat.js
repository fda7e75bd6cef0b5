// Switchboard chat: a room on one channel, driven by the official centrifuge SDK
// (window.Centrifuge, from /assets/centrifuge.js).
//
// - Messages are client-side publications: {type: "msg", name, text, from, ts}. Publications
//   from the server API may hold anything; they are shown as coming from "server".
// - Presence lists client ids; anonymous clients have no name on the server, so each client
//   announces its name ({type: "hello"}) when it joins, and answers {type: "who", clients} that
//   lists its client id with {type: "here"}. These control publications are never shown.
// - The SDK reconnects by itself and, since the server marks subscriptions recoverable, asks for
//   what it missed; recovered publications arrive as ordinary publication events.
// Everything received is untrusted: it is only ever put in the page as text.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const tab = Math.random().toString(36).slice(2, 10);
  const HISTORY_SHOWN = 50;
  const MAX_LOG_NODES = 600;
  const NAME_KEY = 'switchboard.chat.name';

  let config = { anonymous: true, websocket: '/connection/websocket', namespace: '' };
  let centrifuge = null;
  let sub = null;
  let me = { name: '', room: '', client: '' };
  let wasConnected = false;
  let recovering = null;
  const present = new Map(); // client id -> ClientInfo
  const names = new Map(); // client id -> announced name
  const seen = new Set(); // offsets of publications already handled

  // ---------- small helpers ----------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fragment() {
    return new URLSearchParams(location.hash.slice(1));
  }

  function token() {
    return fragment().get('token') || '';
  }

  /** The `sub` claim of a JWT, read without verifying (the server does that). */
  function tokenSubject(jwt) {
    try {
      let part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      part += '='.repeat((4 - (part.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return typeof claims.sub === 'string' ? claims.sub : '';
    } catch (_) {
      return '';
    }
  }

  function hue(text) {
    let h = 0;
    for (const ch of text) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return `hsl(${h % 360} 58% 45%)`;
  }

  function avatar(name) {
    const node = el('span', 'avatar', (name.trim()[0] || '?').toUpperCase());
    node.style.setProperty('--hue-color', hue(name));
    node.setAttribute('aria-hidden', 'true');
    return node;
  }

  function clock(ts) {
    const date = typeof ts === 'number' && ts > 0 ? new Date(ts) : new Date();
    return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function displayName(client) {
    if (client === me.client) return me.name;
    if (names.has(client)) return names.get(client);
    const info = present.get(client);
    if (info && info.user) return info.user;
    return 'guest-' + client.slice(0, 4);
  }

  function cleanName(value) {
    return typeof value === 'string' ? value.trim().slice(0, 32) : '';
  }

  // ---------- connection state ----------

  function setStatus(state, detail) {
    const status = $('status');
    status.dataset.state = state;
    const labels = {
      connected: 'Connected',
      connecting: wasConnected ? 'Reconnecting…' : 'Connecting…',
      disconnected: 'Offline',
    };
    status.textContent = labels[state];
    status.title = detail || '';
  }

  // ---------- the message log ----------

  /** Consecutive messages of one author form a group: one name and avatar for all. */
  function chain(previous, node) {
    if (previous && node.dataset.author && previous.dataset.author === node.dataset.author) {
      node.classList.add('cont');
    }
  }

  function append(node) {
    const log = $('messages');
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 120;
    chain(log.lastElementChild, node);
    log.append(node);
    while (log.childElementCount > MAX_LOG_NODES) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  /** A name that follows what we learn about `client` later (a hello arriving after a join). */
  function nameRef(client) {
    const node = el('b', 'nm', displayName(client));
    node.dataset.client = client;
    return node;
  }

  function notice(kind, ...parts) {
    const node = el('div', 'notice ' + kind);
    for (const part of parts) node.append(part);
    append(node);
    return node;
  }

  function isMessage(data) {
    return !(data && typeof data === 'object' && typeof data.type === 'string' && data.type !== 'msg');
  }

  function messageNode(pub, fromHistory) {
    const data = pub.data;
    let text;
    let name = '';
    if (data && typeof data === 'object' && typeof data.text === 'string') {
      text = data.text;
      name = cleanName(data.name);
    } else {
      text = typeof data === 'string' ? data : JSON.stringify(data);
    }
    const server = !pub.info;
    if (!name) name = server ? 'server' : displayName(pub.info.client);
    const mine = !!data && data.from === tab;
    const node = el('div', 'msg' + (mine ? ' mine' : '') + (server ? ' server' : '') + (fromHistory ? ' history' : ''));
    if (pub.offset) node.dataset.offset = String(pub.offset);
    node.dataset.author = `${server ? 'server' : 'client'}:${mine}:${name}`;
    const bubble = el('div', 'bubble');
    const meta = el('div', 'meta');
    const who = el('span', 'who', name);
    who.style.setProperty('--hue-color', hue(name));
    meta.append(who, el('span', 'time', clock(data && data.ts)));
    bubble.append(meta, el('div', 'text', text));
    node.append(avatar(name), bubble);
    return node;
  }

  // ---------- names and presence ----------

  function learn(info, data) {
    if (!info || !data || typeof data !== 'object') return;
    const name = cleanName(data.name);
    if (name && names.get(info.client) !== name) {
      names.set(info.client, name);
      refreshNames();
    }
  }

  function refreshNames() {
    for (const node of document.querySelectorAll('[data-client]')) {
      node.textContent = displayName(node.dataset.client);
    }
    renderPeople();
  }

  function renderPeople() {
    const list = $('people-list');
    const people = [...present.values()]
      .map((info) => ({ client: info.client, name: displayName(info.client) }))
      .sort((a, b) => (b.client === me.client) - (a.client === me.client) || a.name.localeCompare(b.name));
    list.replaceChildren(
      ...people.map((p) => {
        const li = el('li', p.client === me.client ? 'me' : '');
        li.append(avatar(p.name), el('span', 'name', p.name));
        if (p.client === me.client) li.append(el('span', 'you', 'you'));
        return li;
      }),
    );
    $('people-count').textContent = String(people.length);
    $('people-toggle-count').textContent = String(people.length);
  }

  async function loadPresence() {
    try {
      const result = await sub.presence();
      present.clear();
      for (const [client, info] of Object.entries(result.clients || {})) present.set(client, info);
      renderPeople();
    } catch (err) {
      console.warn('presence failed', err);
    }
  }

  function publishControl(type, extra) {
    if (!sub) return;
    sub.publish({ type, name: me.name, from: tab, ...extra }).catch((err) => console.warn(type, err));
  }

  /** Asks the members whose names we could not learn (from history) to say them again. */
  function askUnknownNames() {
    const unknown = [...present.keys()].filter((c) => c !== me.client && !names.has(c) && !present.get(c).user);
    if (unknown.length) publishControl('who', { clients: unknown.slice(0, 50) });
  }

  // ---------- publications ----------

  function onPublication(ctx) {
    if (ctx.offset) {
      if (seen.has(ctx.offset)) return;
      seen.add(ctx.offset);
    }
    const data = ctx.data;
    learn(ctx.info, data);
    if (!isMessage(data)) {
      const asked = Array.isArray(data.clients) && data.clients.includes(me.client);
      if (data.type === 'who' && asked) {
        setTimeout(() => publishControl('here'), 50 + Math.random() * 400);
      }
      return;
    }
    append(messageNode(ctx, false));
    if (recovering) recovering.count += 1;
  }

  /** Shows the last messages of the room: at the top on entry, at the end after a lost gap. */
  async function loadHistory(position, atTop) {
    let result;
    try {
      result = await sub.history({ limit: 100, reverse: true });
    } catch (err) {
      notice('warn', 'History is not available here.');
      return;
    }
    const pubs = result.publications.slice().reverse();
    for (const pub of pubs) learn(pub.info, pub.data);
    const shown = pubs
      .filter((p) => isMessage(p.data) && !seen.has(p.offset) && (!position || p.offset <= position.offset))
      .slice(-HISTORY_SHOWN);
    for (const pub of pubs) seen.add(pub.offset);
    if (shown.length === 0) return;
    const block = document.createDocumentFragment();
    block.append(el('div', 'divider', atTop ? 'Earlier messages' : 'Latest messages'));
    for (const pub of shown) {
      const node = messageNode(pub, true);
      chain(block.lastElementChild, node);
      block.append(node);
    }
    const log = $('messages');
    if (atTop) {
      log.prepend(block);
    } else {
      log.append(block);
    }
    log.scrollTop = log.scrollHeight;
  }

  async function onSubscribed(ctx) {
    if (ctx.wasRecovering && ctx.recovered) {
      // Recovered publications are delivered right after this event: count them, then say so.
      recovering = { count: 0 };
      setTimeout(() => {
        const n = recovering ? recovering.count : 0;
        recovering = null;
        notice('ok', n === 0 ? 'Back online — nothing was missed' : `Back online — ${n} missed message${n === 1 ? '' : 's'} recovered`);
      }, 0);
    } else if (ctx.wasRecovering) {
      notice('warn', 'Back online — some messages could not be recovered');
      await loadHistory(ctx.streamPosition, false);
    } else {
      notice('ok', 'You joined ', el('b', '', '#' + me.room));
      await loadHistory(ctx.streamPosition, true);
    }
    await loadPresence();
    publishControl('hello');
    askUnknownNames();
  }

  // ---------- joining and leaving ----------

  function websocketUrl() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + config.websocket;
  }

  // WebSocket first, then the HTTP fallbacks (HTTP-streaming, then SSE) for networks that block
  // WebSockets; `#transport=http_stream` (or `sse`, `websocket`) in the address keeps only one.
  function transports() {
    const all = [];
    if (config.websocket) all.push({ transport: 'websocket', endpoint: websocketUrl() });
    if (config.http_stream) all.push({ transport: 'http_stream', endpoint: location.origin + config.http_stream });
    if (config.sse) all.push({ transport: 'sse', endpoint: location.origin + config.sse });
    const only = fragment().get('transport');
    const chosen = all.filter((t) => !only || t.transport === only);
    return chosen.length ? chosen : all;
  }

  function join(name, room) {
    me = { name, room, client: '' };
    wasConnected = false;
    present.clear();
    names.clear();
    seen.clear();
    $('messages').replaceChildren();
    renderPeople();

    const chosen = transports();
    if (!chosen.length) {
      notice('warn', 'This server serves none of the transports the chat uses (websocket, http_stream, sse).');
      return;
    }
    const options = { name: 'switchboard-chat', minReconnectDelay: 250, maxReconnectDelay: 5000 };
    if (config.emulation) options.emulationEndpoint = location.origin + config.emulation;
    if (token()) options.token = token();
    centrifuge = new window.Centrifuge(chosen, options);
    centrifuge.on('connecting', (ctx) => {
      if (wasConnected && $('status').dataset.state === 'connected') {
        notice('warn', 'Connection lost — reconnecting…');
      }
      setStatus('connecting', `${ctx.reason} (${ctx.code})`);
    });
    centrifuge.on('connected', (ctx) => {
      me.client = ctx.client;
      wasConnected = true;
      setStatus('connected', `client ${ctx.client}`);
    });
    centrifuge.on('disconnected', (ctx) => {
      setStatus('disconnected', `${ctx.reason} (${ctx.code})`);
      if (ctx.code === 109 || ctx.code === 3500 || ctx.code === 3501) {
        notice('warn', 'The server refused this token: open the chat with a fresh #token=… link.');
      }
    });

    // A room is a channel, in the server's chat namespace when it has one.
    const channel = config.namespace ? `${config.namespace}:${room}` : room;
    sub = centrifuge.newSubscription(channel, { joinLeave: true });
    sub.on('subscribed', (ctx) => {
      onSubscribed(ctx).catch((err) => console.warn('subscribed', err));
    });
    sub.on('publication', onPublication);
    sub.on('join', (ctx) => {
      present.set(ctx.info.client, ctx.info);
      renderPeople();
      if (ctx.info.client !== me.client) notice('join', nameRef(ctx.info.client), ' joined');
    });
    sub.on('leave', (ctx) => {
      present.delete(ctx.info.client);
      renderPeople();
      if (ctx.info.client !== me.client) notice('leave', nameRef(ctx.info.client), ' left');
    });
    sub.on('error', (ctx) => console.warn('subscription error', ctx));
    sub.on('unsubscribed', (ctx) => {
      if (centrifuge && ctx.code !== 0) notice('warn', `Left the room: ${ctx.reason} (${ctx.code})`);
    });
    sub.subscribe();
    centrifuge.connect();

    $('join-screen').hidden = true;
    $('room-screen').hidden = false;
    $('leave').hidden = false;
    $('people-toggle').hidden = false;
    const title = $('room-title');
    title.replaceChildren(el('b', '', '#' + room), el('span', 'who-am-i', ` · ${name}`));
    document.title = `#${room} · Switchboard chat`;
    $('text').focus();
  }

  function leave() {
    const client = centrifuge;
    centrifuge = null;
    if (sub) sub.unsubscribe();
    sub = null;
    if (client) client.disconnect();
    present.clear();
    $('room-screen').hidden = true;
    $('join-screen').hidden = false;
    $('leave').hidden = true;
    $('people-toggle').hidden = true;
    $('room-title').replaceChildren();
    document.title = 'Switchboard chat';
    wasConnected = false;
    setStatus('disconnected', '');
  }

  async function send(event) {
    event.preventDefault();
    const input = $('text');
    const text = input.value.trim();
    if (!text || !sub) return;
    const button = $('send');
    button.disabled = true;
    try {
      await sub.publish({ type: 'msg', name: me.name, text, from: tab, ts: Date.now() });
      input.value = '';
    } catch (err) {
      notice('warn', `Not sent: ${(err && (err.message || err.code)) || 'error'}`);
    } finally {
      button.disabled = false;
      input.focus();
    }
  }

  // ---------- start ----------

  async function start() {
    // Join is enabled once the form is handled here: a submit before that would reload the page
    // and lose what was typed.
    let joinable = true;
    try {
      const response = await fetch('/chat/config', { cache: 'no-store' });
      if (response.ok) config = Object.assign(config, await response.json());
    } catch (_) {
      // Keep the defaults: the connection attempt will tell what is wrong.
    }
    const jwt = token();
    const note = $('mode-note');
    if (jwt) {
      const subject = tokenSubject(jwt);
      note.textContent = subject ? `Signed in as “${subject}” with the token from the link.` : 'Using the token from the link.';
    } else if (config.anonymous) {
      note.textContent = 'Anonymous mode: this server lets anyone join without signing in.';
    } else {
      note.textContent = '';
      note.append(
        'This server requires a connection token: open this page as ',
        el('code', '', '/chat#token=<JWT>'),
        '. An operator can make one with ',
        el('code', '', 'switchboard token --user NAME'),
        '.',
      );
      joinable = false;
    }
    // What the person typed while the configuration loaded stays.
    const stored = localStorage.getItem(NAME_KEY) || '';
    $('name').value ||= stored || tokenSubject(jwt);
    $('room').value ||= fragment().get('room') || 'lobby';
    $('join-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const name = cleanName($('name').value);
      const room = $('room').value.trim();
      if (!name) {
        $('join-error').textContent = 'Pick a name first.';
        return;
      }
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(room)) {
        $('join-error').textContent = "A room name uses letters, digits, '_', '-' and '.'.";
        return;
      }
      $('join-error').textContent = '';
      try {
        localStorage.setItem(NAME_KEY, name);
      } catch (_) {
        // Private mode: the name is just not remembered.
      }
      const f = fragment();
      f.set('room', room);
      history.replaceState(null, '', '#' + f.toString());
      join(name, room);
    });
    $('composer').addEventListener('submit', send);
    $('leave').addEventListener('click', leave);
    $('people-toggle').addEventListener('click', () => $('people').classList.toggle('open'));
    $('messages').addEventListener('click', () => $('people').classList.remove('open'));
    if (typeof window.Centrifuge !== 'function') {
      $('join-error').textContent = 'The client SDK did not load.';
      joinable = false;
    }
    $('join').disabled = !joinable;
  }

  start();
})();

// Switchboard dashboard: reads the node's snapshots from /dashboard/events (Server-Sent Events,
// read through fetch so that 401/403 answers can be told apart from network errors) and draws
// them: figures, per-second charts and the timeline of recent work, on <canvas>, by hand.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = 'switchboard.dashboard.key';
  const CHART_SECONDS = 60;
  const WINDOWS = [10, 30, 3]; // timeline windows, in seconds, cycled by the button
  const KEEP_SPANS_MICROS = 32e6;
  const MAX_ROWS = 3; // sub-rows per lane for overlapping spans (like the seed's "Slot 1/2")
  const LANE_COLORS = ['#4f46e5', '#0d9488', '#d97706', '#db2777'];
  const SERIES = {
    in: [
      { key: 'commands', label: 'client commands', color: '#4f46e5' },
      { key: 'api', label: 'API calls', color: '#0ea5e9' },
      { key: 'publications', label: 'publications', color: '#16a34a' },
    ],
    out: [
      { key: 'sent', label: 'messages queued', color: '#0d9488' },
      { key: 'frames', label: 'frames written', color: '#a855f7' },
    ],
  };

  let key = sessionStorage.getItem(KEY_STORAGE) || '';
  let abort = null;
  let retryDelay = 500;
  let retryTimer = null;
  let recent = []; // the last second of snapshots, to compute rates over
  let snapshots = 0;
  let lanes = ['client commands', 'publication fan-out', 'history writes', 'background tasks'];
  const spans = [[], [], [], []]; // per lane: {name, detail, start, dur, count}
  const points = {}; // series key -> [[seconds, value]]
  let serverNow = 0; // µs, timeline clock
  let receivedAt = 0; // performance.now() when serverNow arrived
  let windowSeconds = WINDOWS[0];
  let pausedAt = null;
  let hits = []; // rectangles drawn on the timeline, for the tooltip
  let pointer = null;

  // ---------- formatting ----------

  function fmt(n) {
    if (!Number.isFinite(n)) return '0';
    const abs = Math.abs(n);
    if (abs >= 1e6) return (n / 1e6).toFixed(abs >= 1e7 ? 0 : 1) + 'M';
    if (abs >= 1e4) return (n / 1e3).toFixed(0) + 'k';
    if (abs >= 1e3) return (n / 1e3).toFixed(1) + 'k';
    if (abs > 0 && abs < 10 && !Number.isInteger(n)) return n.toFixed(1);
    return String(Math.round(n));
  }

  function fmtDuration(micros) {
    if (micros < 1000) return `${micros} µs`;
    if (micros < 1e6) return `${(micros / 1000).toFixed(micros < 1e4 ? 2 : 1)} ms`;
    return `${(micros / 1e6).toFixed(2)} s`;
  }

  function fmtUptime(seconds) {
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // ---------- screens and state ----------

  function setStatus(state, text) {
    const status = $('status');
    status.dataset.state = state;
    status.textContent = text;
  }

  function show(screen) {
    for (const id of ['login-screen', 'disabled-screen', 'board']) $(id).hidden = id !== screen;
  }

  function showLogin(message) {
    show('login-screen');
    setStatus('disconnected', 'Signed out');
    $('logout').hidden = true;
    $('login-error').textContent = message || '';
    $('key').focus();
  }

  // ---------- the event stream ----------

  function scheduleRetry() {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 5000);
  }

  async function connect() {
    clearTimeout(retryTimer);
    if (abort) abort.abort();
    const controller = new AbortController();
    abort = controller;
    setStatus('connecting', snapshots ? 'Reconnecting…' : 'Connecting…');
    const url = '/dashboard/events' + (key ? '?key=' + encodeURIComponent(key) : '');
    let response;
    try {
      response = await fetch(url, { signal: controller.signal, cache: 'no-store', headers: { Accept: 'text/event-stream' } });
    } catch (err) {
      if (!controller.signal.aborted) scheduleRetry();
      return;
    }
    if (response.status === 401) {
      const hadKey = !!key;
      key = '';
      sessionStorage.removeItem(KEY_STORAGE);
      showLogin(hadKey ? 'Wrong password or API key.' : '');
      return;
    }
    if (response.status === 403) {
      let message = 'The dashboard is disabled on this server.';
      try {
        message = (await response.json()).error.message;
      } catch (_) {
        // Keep the generic message.
      }
      $('disabled-reason').textContent = message;
      show('disabled-screen');
      setStatus('disconnected', 'Disabled');
      return;
    }
    if (!response.ok || !response.body) {
      setStatus('disconnected', response.status === 503 ? 'Too many dashboards' : `Error ${response.status}`);
      scheduleRetry();
      return;
    }
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $('logout').hidden = !key;
    show('board');
    retryDelay = 500;
    try {
      await readEvents(response.body, controller);
    } catch (_) {
      // The stream broke: reconnect below.
    }
    if (!controller.signal.aborted) {
      setStatus('connecting', 'Reconnecting…');
      scheduleRetry();
    }
  }

  async function readEvents(body, controller) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done || controller.signal.aborted) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
        let event = 'message';
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event = text;
          else if (field === 'data') data.push(text);
        }
        if (event === 'snapshot' && data.length) onSnapshot(JSON.parse(data.join('\n')));
      }
    }
  }

  // ---------- snapshots ----------

  function pushPoint(series, t, value) {
    const list = points[series] || (points[series] = []);
    if (list.length && list[list.length - 1][0] > t) list.length = 0; // a restarted server
    list.push([t, value]);
    while (list.length && list[0][0] < t - CHART_SECONDS - 1) list.shift();
  }

  function onSnapshot(s) {
    snapshots += 1;
    document.body.dataset.snapshots = String(snapshots);
    setStatus('connected', 'Live');
    lanes = s.lanes || lanes;
    $('node-title').replaceChildren(
      Object.assign(document.createElement('b'), { textContent: s.node }),
      ` · v${s.version} · up ${fmtUptime(s.uptime)}`,
    );
    const c = s.counters;
    $('v-connections').textContent = fmt(s.connections);
    $('v-users').textContent = `${fmt(s.users)} user${s.users === 1 ? '' : 's'}`;
    $('v-transports').textContent = (s.transports || []).map(([name, open]) => `${name} ${fmt(open)}`).join(' · ');
    $('v-encodings').textContent = (s.encodings || []).map(([name, open]) => `${name} ${fmt(open)}`).join(' · ');
    $('v-cluster').textContent = s.cluster
      ? `cluster: ${fmt(s.cluster.nodes)} node${s.cluster.nodes === 1 ? '' : 's'}, ${fmt(s.cluster.connections)} connections, ${fmt(s.cluster.subscriptions)} subscriptions`
      : '';
    $('v-channels').textContent = fmt(s.channels);
    $('v-subscriptions').textContent = `${fmt(s.subscriptions)} subscription${s.subscriptions === 1 ? '' : 's'}`;
    $('v-in-total').textContent = `${fmt(c.commands + c.api_requests)} total`;
    $('v-out-total').textContent = `${fmt(c.messages_sent)} total`;
    $('v-drops').textContent = fmt(c.queue_drops);
    $('v-slow').textContent = fmt(c.slow_disconnects);
    $('v-accepted').textContent = `${fmt(c.connections_accepted)} connections accepted`;
    $('t-drops').classList.toggle('alert', c.queue_drops > 0);
    $('t-slow').classList.toggle('alert', c.slow_disconnects > 0);

    const t = s.now / 1e6;
    // Rates over about a second (two snapshots) rather than one half-second step: steadier.
    recent = recent.filter((r) => r.now < s.now && r.now >= s.now - 1.1e6);
    const previous = recent[0];
    recent.push(s);
    if (previous) {
      const dt = (s.now - previous.now) / 1e6;
      const p = previous.counters;
      const rate = (field) => Math.max(0, (c[field] - p[field]) / dt);
      const rates = {
        commands: rate('commands'),
        api: rate('api_requests'),
        publications: rate('publications'),
        sent: rate('messages_sent'),
        frames: rate('frames_written'),
      };
      for (const [name, value] of Object.entries(rates)) pushPoint(name, t, value);
      $('v-in-rate').textContent = fmt(rates.commands + rates.api);
      $('v-out-rate').textContent = fmt(rates.sent);
      $('v-drops-rate').textContent = `${fmt(rate('queue_drops'))} / s`;
    }

    renderTable('channel-rows', 'channels-empty', s.top_channels, s.channels, 'No channel has subscribers.');
    renderTable('address-rows', 'addresses-empty', s.client_addresses || [], s.addresses || 0, 'No client is connected.');

    if (s.now < serverNow) for (const list of spans) list.length = 0; // a restarted server
    for (const [lane, name, detail, start, dur, count] of s.spans) {
      if (spans[lane]) spans[lane].push({ name, detail, start, dur, count });
    }
    for (const list of spans) {
      list.sort((a, b) => a.start - b.start);
      const oldest = s.now - KEEP_SPANS_MICROS;
      let drop = 0;
      while (drop < list.length && list[drop].start + list[drop].dur < oldest) drop += 1;
      if (drop) list.splice(0, drop);
    }
    serverNow = s.now;
    receivedAt = performance.now();
    drawCharts();
  }

  /** Fills a table of `[name, count]` rows (the top of `total`), with a bar per count. */
  function renderTable(rowsId, emptyId, top, total, emptyText) {
    const rows = $(rowsId);
    const max = Math.max(1, ...top.map(([, n]) => n));
    rows.replaceChildren(
      ...top.map(([name, count]) => {
        const tr = document.createElement('tr');
        const nameCell = Object.assign(document.createElement('td'), { className: 'name', textContent: name, title: name });
        const barCell = Object.assign(document.createElement('td'), { className: 'bar' });
        const bar = document.createElement('i');
        bar.style.width = `${(100 * count) / max}%`;
        barCell.append(bar);
        const countCell = Object.assign(document.createElement('td'), { className: 'count', textContent: fmt(count) });
        tr.append(nameCell, barCell, countCell);
        return tr;
      }),
    );
    const empty = $(emptyId);
    empty.hidden = top.length > 0 && total <= top.length;
    if (top.length > 0 && total > top.length) empty.textContent = `…and ${fmt(total - top.length)} more`;
    else empty.textContent = emptyText;
  }

  // ---------- drawing ----------

  /** Sizes `canvas` for the screen's pixel density; returns its 2D context in CSS pixels. */
  function prepare(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth));
    const height = Math.max(1, Math.round(canvas.clientHeight));
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return { ctx, width, height };
  }

  function niceMax(value) {
    if (value <= 1) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * magnitude) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function drawChart(canvas, series) {
    const { ctx, width, height } = prepare(canvas);
    const left = 38;
    const right = 8;
    const top = 8;
    const bottom = 18;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const now = serverNow / 1e6;
    const t0 = now - CHART_SECONDS;
    let max = 0;
    for (const s of series) for (const [t, v] of points[s.key] || []) if (t >= t0) max = Math.max(max, v);
    max = niceMax(max);
    const muted = cssVar('--muted');
    const line = cssVar('--line');
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    for (const fraction of [0, 0.5, 1]) {
      const y = top + plotH - fraction * plotH;
      ctx.strokeStyle = line;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(width - right, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillStyle = muted;
      ctx.fillText(fmt(max * fraction), left - 6, y);
    }
    ctx.textBaseline = 'alphabetic';
    ctx.textAlign = 'left';
    ctx.fillText(`−${CHART_SECONDS}s`, left, height - 4);
    ctx.textAlign = 'right';
    ctx.fillText('now', width - right, height - 4);
    const x = (t) => left + ((t - t0) / CHART_SECONDS) * plotW;
    const y = (v) => top + plotH - (v / max) * plotH;
    let drawn = 0;
    for (const s of series) {
      const list = (points[s.key] || []).filter(([t]) => t >= t0 - 1);
      if (list.length < 2) continue;
      drawn += list.length;
      ctx.beginPath();
      list.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.strokeStyle = s.color;
      ctx.stroke();
      ctx.lineTo(x(list[list.length - 1][0]), top + plotH);
      ctx.lineTo(x(list[0][0]), top + plotH);
      ctx.closePath();
      ctx.globalAlpha = 0.1;
      ctx.fillStyle = s.color;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    canvas.dataset.points = String(drawn);
    canvas.dataset.max = String(max);
  }

  function drawCharts() {
    if ($('board').hidden) return;
    drawChart($('chart-in'), SERIES.in);
    drawChart($('chart-out'), SERIES.out);
  }

  function timelineNow() {
    if (pausedAt !== null) return pausedAt;
    // Between snapshots the clock runs on locally, so the picture scrolls smoothly; but never
    // more than a second past the last snapshot (a stalled stream must look stalled).
    return serverNow + Math.min(1e6, (performance.now() - receivedAt) * 1000);
  }

  function drawTimeline() {
    const canvas = $('timeline');
    const { ctx, width, height } = prepare(canvas);
    const now = timelineNow();
    const win = windowSeconds * 1e6;
    const muted = cssVar('--muted');
    const line = cssVar('--line');
    const mono = cssVar('--mono') || 'monospace';
    const t0 = now - win;
    const narrow = width < 560;
    ctx.font = `600 12px ${mono}`;
    const labelWidth = Math.max(...lanes.map((name) => ctx.measureText(name + ':').width));
    const gutter = narrow ? 0 : Math.ceil(labelWidth) + 18;
    const axis = 24;
    const laneTitle = narrow ? 16 : 0;
    const laneH = (height - axis) / lanes.length;
    const plotW = width - gutter - 6;
    const x = (t) => gutter + ((t - t0) / win) * plotW;
    hits = [];
    let visible = 0;

    lanes.forEach((laneName, lane) => {
      const top = lane * laneH;
      // Lane name, as in the seed's drawings ("fetch(url1): ████").
      ctx.fillStyle = muted;
      ctx.font = `600 12px ${mono}`;
      ctx.textBaseline = 'middle';
      if (narrow) {
        ctx.textAlign = 'left';
        ctx.fillText(laneName, 2, top + 9);
      } else {
        ctx.textAlign = 'right';
        ctx.fillText(laneName + ':', gutter - 10, top + laneH / 2);
      }
      // The lane's track: a double rule, like the seed's "══════".
      ctx.strokeStyle = line;
      ctx.lineWidth = 1;
      for (const dy of [-2, 1]) {
        ctx.beginPath();
        ctx.moveTo(gutter, Math.round(top + laneH - 4 + dy) + 0.5);
        ctx.lineTo(width - 6, Math.round(top + laneH - 4 + dy) + 0.5);
        ctx.stroke();
      }
      // Overlapping spans go to sub-rows, first free one first.
      const inView = spans[lane].filter((s) => s.start + s.dur >= t0 && s.start <= now);
      visible += inView.length;
      const rowEnds = [];
      const placed = inView.map((s) => {
        const x0 = x(s.start);
        const w = Math.max(3, (s.dur / win) * plotW);
        let row = rowEnds.findIndex((end) => end <= x0);
        if (row < 0 && rowEnds.length < MAX_ROWS) row = rowEnds.length;
        if (row < 0) row = rowEnds.indexOf(Math.min(...rowEnds));
        rowEnds[row] = Math.max(rowEnds[row] || 0, x0 + w + 1);
        return { s, x0, w, row };
      });
      const rows = Math.max(1, rowEnds.length);
      const bandTop = top + laneTitle + 4;
      const bandH = laneH - laneTitle - 12;
      const rowH = Math.min(22, bandH / rows);
      const color = LANE_COLORS[lane % LANE_COLORS.length];
      ctx.font = `11px ${mono}`;
      ctx.textAlign = 'left';
      for (const { s, x0, w, row } of placed) {
        const y0 = bandTop + (bandH - rowH * rows) / 2 + row * rowH;
        const left = Math.max(gutter, x0);
        const right = Math.min(width - 6, x0 + w);
        if (right <= left) continue;
        ctx.fillStyle = color;
        ctx.fillRect(left, y0 + 1, right - left, rowH - 2);
        if (right - left > 44 && rowH >= 12) {
          ctx.save();
          ctx.beginPath();
          ctx.rect(left, y0, right - left - 3, rowH);
          ctx.clip();
          ctx.fillStyle = '#fff';
          ctx.fillText(s.detail ? `${s.name} ${s.detail}` : s.name, left + 4, y0 + rowH / 2);
          ctx.restore();
        }
        hits.push({ x: left, y: y0, w: right - left, h: rowH, lane, s });
      }
    });

    // Time axis: "|____|____|", labelled every few ticks.
    const [step, major] = windowSeconds > 10 ? [5, 10] : windowSeconds > 3 ? [1, 2] : [0.5, 1];
    const axisY = height - axis + 6;
    ctx.strokeStyle = muted;
    ctx.fillStyle = muted;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(gutter, axisY + 0.5);
    ctx.lineTo(width - 6, axisY + 0.5);
    ctx.stroke();
    ctx.font = `11px ${mono}`;
    ctx.textBaseline = 'top';
    for (let back = 0; back <= windowSeconds + 1e-9; back += step) {
      const tx = x(now - back * 1e6);
      ctx.beginPath();
      ctx.moveTo(Math.round(tx) + 0.5, axisY - 4);
      ctx.lineTo(Math.round(tx) + 0.5, axisY + 1);
      ctx.stroke();
      if (Math.abs(back / major - Math.round(back / major)) < 1e-6) {
        ctx.textAlign = back === 0 ? 'right' : back >= windowSeconds ? 'left' : 'center';
        ctx.fillText(back === 0 ? 'now' : `−${back}s`, tx, axisY + 4);
      }
    }
    canvas.dataset.spans = String(visible);
    $('timeline-note').textContent =
      `${visible} span${visible === 1 ? '' : 's'} in the last ${windowSeconds} s` +
      (pausedAt !== null ? ' · paused' : '') +
      ' · sampled: at most 200 spans per second per lane · hover a block for details';
    drawTooltip();
  }

  function drawTooltip() {
    const tooltip = $('tooltip');
    if (!pointer) {
      tooltip.hidden = true;
      return;
    }
    const hit = hits.find((h) => pointer.x >= h.x - 1 && pointer.x <= h.x + h.w + 1 && pointer.y >= h.y && pointer.y <= h.y + h.h);
    if (!hit) {
      tooltip.hidden = true;
      return;
    }
    const s = hit.s;
    const ago = (timelineNow() - s.start) / 1e6;
    tooltip.textContent =
      `${lanes[hit.lane]}\n${s.name}${s.detail ? ' · ' + s.detail : ''}\n` +
      `${fmtDuration(s.dur)}${s.count ? ` · ${s.count} queued` : ''} · ${ago.toFixed(1)} s ago`;
    tooltip.hidden = false;
    const rect = tooltip.getBoundingClientRect();
    tooltip.style.left = `${Math.min(pointer.clientX + 12, window.innerWidth - rect.width - 8)}px`;
    tooltip.style.top = `${pointer.clientY + 14}px`;
  }

  let lastFrame = 0;
  function frame(time) {
    requestAnimationFrame(frame);
    // About 30 frames a second is plenty for a picture that moves a few pixels a frame.
    if (time - lastFrame < 33 || $('board').hidden || document.hidden || !snapshots) return;
    lastFrame = time;
    drawTimeline();
  }

  // ---------- controls ----------

  function legend(container, items) {
    container.replaceChildren(
      ...items.map(({ label, color }) => {
        const span = document.createElement('span');
        const chip = document.createElement('i');
        chip.style.setProperty('--c', color);
        span.append(chip, label);
        return span;
      }),
    );
  }

  function start() {
    legend($('legend-in'), SERIES.in);
    legend($('legend-out'), SERIES.out);
    legend(
      $('legend-lanes'),
      lanes.map((label, i) => ({ label, color: LANE_COLORS[i] })),
    );
    $('login-form').addEventListener('submit', (event) => {
      event.preventDefault();
      key = $('key').value;
      $('login-error').textContent = '';
      connect();
    });
    $('logout').addEventListener('click', () => {
      if (abort) abort.abort();
      key = '';
      sessionStorage.removeItem(KEY_STORAGE);
      $('key').value = '';
      showLogin('');
    });
    $('window').addEventListener('click', () => {
      windowSeconds = WINDOWS[(WINDOWS.indexOf(windowSeconds) + 1) % WINDOWS.length];
      $('window').textContent = `${windowSeconds} s`;
    });
    $('pause').addEventListener('click', () => {
      pausedAt = pausedAt === null ? timelineNow() : null;
      $('pause').setAttribute('aria-pressed', String(pausedAt !== null));
      $('pause').textContent = pausedAt === null ? 'Pause' : 'Resume';
    });
    const canvas = $('timeline');
    canvas.addEventListener('pointermove', (event) => {
      const rect = canvas.getBoundingClientRect();
      pointer = { x: event.clientX - rect.left, y: event.clientY - rect.top, clientX: event.clientX, clientY: event.clientY };
    });
    canvas.addEventListener('pointerleave', () => {
      pointer = null;
      $('tooltip').hidden = true;
    });
    window.addEventListener('resize', drawCharts);
    requestAnimationFrame(frame);
    if (key) {
      connect();
    } else {
      // Ask first whether a password is needed, rather than provoking a 401.
      fetch('/dashboard/access', { cache: 'no-store' })
        .then((response) => response.json())
        .then(({ access }) => (access === 'key' ? showLogin('') : connect()))
        .catch(() => connect());
    }
  }

  start();
})();

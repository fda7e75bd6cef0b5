// The front page: fills in what /front/config says about this node (version, mode, storage) and
// writes copy-paste examples for its own address. Nothing secret is ever shown: the API key is a
// placeholder the reader replaces.
'use strict';

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function websocketUrl(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}

function curlPublish(info) {
  const lines = [`curl -s -X POST ${location.origin}${info.api_prefix}/publish \\`];
  if (info.api_key_required) lines.push('  -H "X-API-Key: $SWITCHBOARD_API_KEY" \\');
  lines.push(`  -d '{"channel":"news","data":{"text":"hello"}}'`);
  return lines.join('\n');
}

function jsSnippet(info) {
  const options = info.anonymous ? '' : ", {\n  token: '<connection token: switchboard token --user 42>',\n}";
  return [
    "import { Centrifuge } from 'centrifuge';",
    '',
    `const client = new Centrifuge('${websocketUrl(info.websocket)}'${options});`,
    "const sub = client.newSubscription('news');",
    "sub.on('publication', (ctx) => console.log('news:', ctx.data));",
    'sub.subscribe();',
    'client.connect();',
  ].join('\n');
}

async function main() {
  const response = await fetch('/front/config', { cache: 'no-store' });
  if (!response.ok) throw new Error(`/front/config answered ${response.status}`);
  const info = await response.json();
  text('version', `v${info.version} (${info.commit})`);
  const mode = document.getElementById('mode');
  mode.textContent = info.mode;
  mode.dataset.mode = info.mode;
  text('node-name', info.node);
  text('mode-text', info.mode === 'development'
    ? 'development: permissions not configured are granted'
    : 'production: permissions are closed unless the configuration grants them');
  text('clients-text', info.anonymous
    ? 'connect anonymously (no token needed)'
    : 'need a connection token (JWT), or the application backend decides');
  text('storage', info.storage);
  const redis = {
    cluster: 'a Redis Cluster (channels spread over its masters)',
    sentinel: `Redis through Sentinel (master ${info.redis_sentinel_master})`,
    shards: `Redis (${info.redis_shards} shard${info.redis_shards > 1 ? 's' : ''})`,
  };
  text('redis', redis[info.redis] || 'nothing: one node on its own');
  text('ws-url', websocketUrl(info.websocket));
  if (info.api_separate) {
    text('api-url', `POST /api/<method> on the API listener`);
    const note = document.getElementById('api-note');
    note.textContent = 'The server API, /health and /metrics are served on their own listener, not here.';
    note.hidden = false;
  } else {
    text('api-url', `POST ${location.origin}${info.api_prefix}/<method>`);
  }
  text('api-auth', info.api_key_required ? '(needs the API key in X-API-Key)' : '(open: no key configured)');
  text('curl-snippet', curlPublish(info));
  text('js-snippet', jsSnippet(info));
  document.body.dataset.ready = 'true';
}

main().catch((err) => {
  text('node-name', `cannot read this node's settings: ${err.message}`);
});

//! `switchboard genconfig`: an annotated production configuration with fresh random secrets.

/// An annotated configuration file with fresh random secrets (`switchboard genconfig`).
pub fn generate() -> String {
    let secret = |len: usize| {
        use rand::distr::{Alphanumeric, SampleString};
        Alphanumeric.sample_string(&mut rand::rng(), len)
    };
    format!(
        r#"# Switchboard configuration. Flags and SWITCHBOARD_* environment variables override it.

# Where clients connect: ws://<address>:<port>/connection/websocket
address = "0.0.0.0"
port = 8000

# Backends call the server API (POST /api/<method>) with this key in the X-API-Key header.
api_key = "{api_key}"
# The web dashboard (/dashboard) asks for this password (or the API key).
admin_password = "{admin_password}"
# Serve the API on its own port (e.g. bound to a private interface) instead of the main one.
# api_port = 8001
# api_address = "10.0.0.5"

# Connection and subscription tokens (JWT). HS256 with this secret; add RS256/ES256 public keys or
# a JWKS URL if your backend signs with those.
token_hmac_secret = "{token_secret}"
# token_rsa_public_key = "/etc/switchboard/rsa.pub.pem"
# token_ecdsa_public_key = "/etc/switchboard/ec.pub.pem"
# token_jwks_url = "https://auth.example.com/.well-known/jwks.json"

# TLS without a proxy in front.
# tls_cert = "/etc/switchboard/cert.pem"
# tls_key = "/etc/switchboard/key.pem"

# Browsers may connect only from these origins (* wildcards). Empty: the server's own host.
allowed_origins = []

# Client transports served: WebSocket, its HTTP fallbacks (with /emulation) and the
# unidirectional ones. Remove those your clients do not use; their endpoints then answer 404.
transports = ["websocket", "http_stream", "sse", "uni_websocket", "uni_sse", "uni_http_stream"]

# Durable history (SQLite) and its retention per channel.
data_dir = "switchboard-data"
history_durability = "full"    # "normal" skips fsync: faster, survives process crashes only
history_size = 1000
history_ttl = 86400
# A server API publish repeating an idempotency_key within this window publishes nothing.
idempotency_window = "5m"

# Limits.
max_message_size = 65536
client_queue_max_bytes = 1048576   # a client that falls this far behind is disconnected (3008)
client_channel_limit = 128
user_connection_limit = 0          # 0: no limit
client_command_rate = 1000         # commands per second per connection (then error 111, 3013)
client_command_burst = 2000
connection_rate_per_ip = 0         # new connections per second per client address (0: no limit;
                                   # any limit refuses honest clients reconnecting together from
                                   # one address, such as a NAT: see README)

# Behind nginx or a load balancer: the peers (CIDRs) whose X-Forwarded-For / X-Real-IP /
# Forwarded header names the client's address (for per-IP limits, logs, proxy hooks). From other
# peers these headers are ignored.
# trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]

# Or let the application backend decide over HTTP, as Centrifugo's proxy asks it (see README):
# clients without a token connect as the connect endpoint says.
# proxy_connect_endpoint = "http://127.0.0.1:3000/centrifugo/connect"
# proxy_subscribe_endpoint = "http://127.0.0.1:3000/centrifugo/subscribe"
# proxy_timeout = "1s"
# proxy_http_headers = ["Cookie", "Authorization"]
# proxy_binary_encoding = true        # every payload as base64 `b64data` (Centrifugo's binary_encoding)

# Tell the backend what happened (connect, disconnect, subscribe, ...) after the fact, durably,
# signed with this secret (header X-Switchboard-Signature: sha256=<hex HMAC-SHA256 of the body>).
# webhook_endpoint = "http://127.0.0.1:3000/switchboard/events"
webhook_secret = "{webhook_secret}"
# webhook_events = ["connect", "disconnect", "channel_occupied", "channel_vacated"]

# Channels outside any namespace. With a token secret set, every permission is closed unless
# granted here or in a namespace (subscription tokens always work).
[channel]
allow_subscribe_for_client = true
allow_publish_for_subscriber = false
allow_presence_for_subscriber = true
allow_history_for_subscriber = true

# Channels named "chat:<room>".
[[namespace]]
name = "chat"
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
join_leave = true
history_size = 200
history_ttl = 3600
# "chat:<room>#<user>,<user>" channels open to the users listed after '#' without a token.
# User-limited channels are off unless a namespace (or [channel]) turns them on.
# allow_user_limited_channels = true
# Send every publication here to the webhook endpoint too.
# webhook_publication = true
# Let subscribers ask for Fossil deltas (delta: 'fossil' in centrifuge-js): a slowly changing
# payload then costs a few bytes per publication.
# allowed_delta_types = ["fossil"]

# Channels named "private:<name>" need a subscription token (no allow_subscribe_* granted).
[[namespace]]
name = "private"

# Map channels (Centrifugo's map subscriptions, centrifuge-js newMapSubscription): "cursors:<room>"
# holds a key/value state on the server; subscribers get it, then every change.
# [[namespace]]
# name = "cursors"
# subscription_type = "map"          # "stream" (default) or "map"
# allow_subscribe_for_client = true
# [namespace.map]
# mode = "durable"                   # "ephemeral" | "durable" | "persistent"
# key_ttl = "60s"                    # required for ephemeral and durable, none in persistent
# stream_size = 100                  # changes kept for catch-up after a reconnect
# stream_ttl = "1m"
# allow_publish_for_subscriber = true   # also: allow_publish_for_client, _for_anonymous
# allow_remove_for_subscriber = true    # also: allow_remove_for_client, _for_anonymous
# client_key = ""                    # "client_id" / "user_id": the key of a client's writes
# remove_client_on_unsubscribe = false
# default_page_size = 100
# min_page_size = 100                # a client's smaller page size is raised to it
# max_page_size = 1000
# max_keys = 10000                   # a new key beyond it is refused (106)
# max_value_size = 65536
# Map presence: subscribers of "chat:<room>" listed by client id in "who:chat:<room>". Add to the
# chat namespace above: map_clients_presence_channel_prefix = "who:" (or, with a namespace of
# subscription_type "map_users", map_users_presence_channel_prefix, to list them by user id).
# [[namespace]]
# name = "who"
# subscription_type = "map_clients"
# allow_subscribe_for_client = true
# [namespace.map]
# mode = "durable"
# key_ttl = "60s"
"#,
        api_key = secret(32),
        admin_password = secret(24),
        token_secret = secret(48),
        webhook_secret = secret(32),
    )
}

//! Server configuration: defaults, overlaid by a TOML file, then `SWITCHBOARD_*` environment
//! variables, then command-line flags (the CLI in `main.rs` reads the last two and sets the
//! fields; nothing here knows the command line).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod duration;
mod generate;
mod map;
mod show;
mod trusted_proxies;
mod validate;
mod webhook;

use duration::deserialize_duration;
pub use duration::parse_duration;
pub use generate::generate;
pub use map::{ClientKey, MapMode, MapNamespace, PRESENCE_KEY_TTL};
pub use show::effective_settings;
use trusted_proxies::deserialize_cidrs;
pub use trusted_proxies::parse_cidr;

/// Every client transport a node can serve, by Centrifugo's names: the bidirectional ones (the
/// SDKs') first, then the unidirectional ones (a browser's `EventSource`, `curl -N`).
pub const TRANSPORTS: [&str; 6] = [
    "websocket",
    "http_stream",
    "sse",
    "uni_websocket",
    "uni_sse",
    "uni_http_stream",
];

/// Everything a node needs to run. Durations are whole seconds in files and flags (except
/// `proxy_timeout` and `idempotency_window`, which take units: `500ms`, `1s`, `5m`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub address: IpAddr,
    /// Port to listen on.
    pub port: u16,
    /// Key that server API calls must present; `None` leaves the API open (loopback or insecure only).
    pub api_key: Option<String>,
    /// Password of the `/dashboard` (the API key is accepted too); with neither, the dashboard is
    /// open on a loopback address and disabled on a public one.
    pub admin_password: Option<String>,
    /// HMAC secret for HS256 connection tokens.
    pub token_hmac_secret: Option<String>,
    /// Accept clients without a token, and the API without a key, even on a public address.
    pub insecure: bool,
    /// Seconds between server pings.
    pub ping_interval: u64,
    /// Seconds a client has to answer a ping.
    pub pong_timeout: u64,
    /// Seconds a new socket has to send `connect`; also what an HTTP/1 connection has to send each
    /// request's head (and may stay idle between requests).
    pub stale_timeout: u64,
    /// Largest client message (one WebSocket message), in bytes.
    pub max_message_size: usize,
    /// Bytes that may wait in one client's outbound queue before it is disconnected as slow.
    pub client_queue_max_bytes: usize,
    /// Seconds one write to a client may take before it is disconnected.
    pub write_timeout: u64,
    /// Seconds the server waits for its tasks when shutting down.
    pub shutdown_timeout: u64,
    /// Send join/leave pushes to a channel's subscribers.
    pub join_leave: bool,
    /// Subscribe every connection of a known user, server-side, to the user's personal channel
    /// (`<personal_channel_namespace>:#<user>`) at connect, as Centrifugo's
    /// `subscribe_to_user_personal_channel` does: the backend reaches all of a user's
    /// connections with one publication.
    pub subscribe_to_user_personal_channel: bool,
    /// Namespace of personal channels (empty: channels outside any namespace, `#<user>`).
    pub personal_channel_namespace: String,
    /// With personal channels: one connection per user — a new connection closes the user's
    /// others with 3504 (Centrifugo's `single_connection`; needs presence in the personal
    /// channel's namespace).
    pub personal_single_connection: bool,
    /// Track presence (who is subscribed) per channel.
    pub presence: bool,
    /// Where durable state (the SQLite history) lives.
    pub data_dir: PathBuf,
    /// Where channel history is kept.
    pub history_storage: HistoryStorage,
    /// Whether each history commit is `fsync`ed (`full`) or not (`normal`).
    pub history_durability: Durability,
    /// Publications kept per channel (0 turns history off).
    pub history_size: usize,
    /// Seconds a publication is kept in history.
    pub history_ttl: u64,
    /// Most publications sent to a client recovering its position.
    pub recovery_max_publications: usize,
    /// Seconds an expired connection has to `refresh` its token before it is disconnected.
    pub expired_grace: u64,
    /// Name of this node in `/api/info`; defaults to the host name.
    pub name: Option<String>,
    /// Options of channels outside any namespace.
    pub channel: Namespace,
    /// Channel namespaces: channels named `<namespace>:<rest>` take that namespace's options.
    pub namespace: Vec<Namespace>,
    /// Public key (PEM file) of RS256/384/512 tokens.
    pub token_rsa_public_key: Option<PathBuf>,
    /// Public key (PEM file) of ES256/384 tokens.
    pub token_ecdsa_public_key: Option<PathBuf>,
    /// URL of a JSON Web Key Set to verify tokens with (fetched and refreshed in the background).
    pub token_jwks_url: Option<String>,
    /// Required `aud` claim of tokens, if set.
    pub token_audience: Option<String>,
    /// Required `iss` claim of tokens, if set.
    pub token_issuer: Option<String>,
    /// Most connections one user may hold (0: no limit): on this node, or across every node
    /// sharing Redis (per node while Redis is unreachable).
    pub user_connection_limit: usize,
    /// Most channels one client may subscribe to.
    pub client_channel_limit: usize,
    /// Longest channel name, in bytes.
    pub channel_max_length: usize,
    /// Commands per second one connection may send (0: no limit); more get error 111, and a
    /// connection that keeps flooding is disconnected (3013).
    pub client_command_rate: u32,
    /// Commands a connection may send at once above its rate.
    pub client_command_burst: u32,
    /// New WebSocket connections per second accepted from one IP address (0, the default: no
    /// limit; see README for why).
    pub connection_rate_per_ip: u32,

    // --- Behind a reverse proxy -------------------------------------------------------------
    /// Peers (CIDRs; a bare address is one host) whose `X-Forwarded-For`, `X-Real-IP` or
    /// `Forwarded` header names the client's address: a load balancer or nginx in front of the
    /// node. From any other peer these headers are ignored, so clients cannot choose the address
    /// that per-IP limits and logs see. Empty (the default): the peer is the client.
    #[serde(deserialize_with = "deserialize_cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    // ------------------------------------------------------------------------------------------
    /// Redis URLs (one per shard): several nodes share broker, history and presence through them.
    pub redis: Vec<String>,
    /// Instead of `redis`: seed nodes of a Redis Cluster (`host:port`, or URLs with a password,
    /// `rediss://` for TLS); channels spread over its masters by slot.
    pub redis_cluster: Vec<String>,
    /// Instead of `redis`: the Sentinels (`host:port`, or `redis://[[user]:password@]host:port`
    /// carrying the Sentinels' own credentials, `rediss://` for TLS) that name the master.
    pub redis_sentinel: Vec<String>,
    /// The name the Sentinels monitor the master under (needed with `redis_sentinel`).
    pub redis_sentinel_master: Option<String>,
    /// User of the master (and replicas) found through Sentinel, if not `default`.
    pub redis_master_username: Option<String>,
    /// Password of the master found through Sentinel (may differ from the Sentinels').
    pub redis_master_password: Option<String>,
    /// Connect to the master found through Sentinel over TLS.
    pub redis_master_tls: bool,
    /// PEM file of the certificate authorities that TLS connections to Redis trust (the servers
    /// of `rediss://` URLs, Sentinels and masters, Cluster nodes) instead of the system's roots:
    /// for a Redis whose certificate a private CA signed.
    pub redis_tls_ca: Option<PathBuf>,
    /// Replicas that must hold a publication before it is acknowledged (Redis `WAIT`; 0, the
    /// default: none). Redis replicates asynchronously: without it, a failover may lose
    /// publications already acknowledged.
    pub redis_wait_replicas: u32,
    /// How long a publication waits for `redis_wait_replicas` before it is answered "not
    /// available" (error 108). In files: `"500ms"`, `"1s"` or seconds.
    #[serde(
        deserialize_with = "deserialize_duration",
        serialize_with = "show::serialize_duration"
    )]
    pub redis_wait_timeout: Duration,
    /// Prefix of Redis keys and topics.
    pub redis_prefix: String,
    /// Seconds a presence entry lives in Redis without a refresh by its node.
    pub presence_ttl: u64,
    /// How long a server API publish's `idempotency_key` is remembered per channel: a publish
    /// repeating it within this window publishes nothing and answers the first result. In
    /// files: `"5m"`, `"30s"` or seconds.
    #[serde(
        deserialize_with = "deserialize_duration",
        serialize_with = "show::serialize_duration"
    )]
    pub idempotency_window: Duration,
    /// Serve the server API (and health, metrics) on this port instead of the main one.
    pub api_port: Option<u16>,
    /// Address of the separate API listener [default: `address`].
    pub api_address: Option<IpAddr>,
    /// TLS certificate chain (PEM) for the main listener.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the main listener.
    pub tls_key: Option<PathBuf>,
    /// `Origin` patterns browsers may connect from (`*` wildcards). Empty: any origin in
    /// development mode, otherwise only the server's own host.
    pub allowed_origins: Vec<String>,
    /// Client transports served, by Centrifugo's names (see [`TRANSPORTS`]); the others' endpoints
    /// answer 404. `http_stream` and `sse` bring `/emulation` with them.
    pub transports: Vec<String>,
    /// Most WebSocket connections served at once; further ones are refused with HTTP 503.
    /// `None`: as many as the open-file limit allows, minus headroom (see [`crate::fd_limit`]).
    pub max_connections: Option<usize>,
    /// The application backend's URL deciding connects of clients without a token (Centrifugo's
    /// connect proxy). With it, clients with a token are still decided by the token.
    pub proxy_connect_endpoint: Option<String>,
    /// The backend's URL renewing connections it let in when they expire (refresh proxy).
    pub proxy_refresh_endpoint: Option<String>,
    /// The backend's URL deciding subscriptions (those without a subscription token, outside
    /// user-limited channels).
    pub proxy_subscribe_endpoint: Option<String>,
    /// The backend's URL deciding client publishes (and what is published).
    pub proxy_publish_endpoint: Option<String>,
    /// The backend's URL deciding `sub_refresh` of subscriptions.
    pub proxy_sub_refresh_endpoint: Option<String>,
    /// The backend's URL answering client RPCs.
    pub proxy_rpc_endpoint: Option<String>,
    /// Longest one backend decision may take, waiting for a free slot included; then the
    /// command fails with the temporary error 100. In files: `"500ms"`, `"1s"` or seconds.
    #[serde(
        deserialize_with = "deserialize_duration",
        serialize_with = "show::serialize_duration"
    )]
    pub proxy_timeout: Duration,
    /// Backend requests in flight per endpoint; further decisions wait (within the timeout).
    pub proxy_concurrency: usize,
    /// Headers of the client's connection request forwarded to the backend with every proxy
    /// request (`Cookie`, `Authorization`, …), by name, case-insensitively.
    pub proxy_http_headers: Vec<String>,
    /// Headers the client's SDK emulates in its connect command (`headers`, for browsers that
    /// cannot set WebSocket headers) forwarded to the backend, by name, case-insensitively. The
    /// client chooses their values: list only what the backend verifies (a signed token), never
    /// what it trusts. A real header of the same name wins.
    pub proxy_emulated_headers: Vec<String>,
    /// Send every payload of proxy requests (`data`) in base64 as `b64data`, whatever it holds,
    /// as Centrifugo's `binary_encoding` does (requests then say `"encoding": "binary"`). Off,
    /// only payloads that are not JSON (a Protobuf client's bytes) travel that way.
    pub proxy_binary_encoding: bool,
    /// Headers added to every proxy request (those forwarded from the client win).
    pub proxy_static_headers: BTreeMap<String, String>,
    /// RPC endpoints by method prefix (`"billing:" = "http://…"`): the longest prefix of the
    /// method wins over `proxy_rpc_endpoint`.
    pub proxy_rpc_endpoints: BTreeMap<String, String>,
    /// The application backend's URL receiving webhooks: lifecycle events, batched, after the
    /// fact, durably queued in the data directory (see [`crate::hooks::webhook`]).
    pub webhook_endpoint: Option<String>,
    /// Secret signing every webhook body: `X-Switchboard-Signature: sha256=<hex HMAC-SHA256 of
    /// the raw body>`.
    pub webhook_secret: Option<String>,
    /// Which events are sent: any of `connect`, `disconnect`, `subscribe`, `unsubscribe`,
    /// `channel_occupied`, `channel_vacated`, `publication` (the last only for namespaces with
    /// `webhook_publication`). Default: all.
    pub webhook_events: Vec<String>,
    /// Longest one webhook request may take before it is retried. In files: `"5s"` or seconds.
    #[serde(
        deserialize_with = "deserialize_duration",
        serialize_with = "show::serialize_duration"
    )]
    pub webhook_timeout: Duration,
    /// Webhook requests in flight at most; events are spread over this many ordered lanes (each
    /// connection's events stay in order on one lane).
    pub webhook_concurrency: usize,
    /// Most events in one webhook request.
    pub webhook_batch_size: usize,
    /// How long a lane waits to fill a batch that is not full (0: send at once).
    #[serde(
        deserialize_with = "deserialize_duration",
        serialize_with = "show::serialize_duration"
    )]
    pub webhook_batch_delay: Duration,
}

/// Options of the channels in one namespace (or, as `[channel]`, of channels outside any
/// namespace). What is left out takes the server-wide value; permissions left out are granted in
/// development mode (no token verification configured, or `insecure`) and refused otherwise.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespace {
    /// The prefix before `:` in channel names (empty for `[channel]`).
    pub name: String,
    pub presence: Option<bool>,
    /// Join/leave notices are published; subscribers receive them when they subscribe with
    /// `join_leave: true`.
    pub join_leave: Option<bool>,
    /// Join/leave notices go to every subscriber, asked or not.
    pub force_push_join_leave: Option<bool>,
    /// Publications kept per channel; 0 turns history off for the namespace.
    pub history_size: Option<usize>,
    /// Seconds publications are kept.
    pub history_ttl: Option<u64>,
    /// Subscriptions are recoverable (positioned) even when the client does not ask; default on.
    pub force_recovery: Option<bool>,
    /// Any connected user may subscribe without a subscription token.
    pub allow_subscribe_for_client: Option<bool>,
    /// Anonymous users (empty `sub`) may subscribe without a subscription token too.
    pub allow_subscribe_for_anonymous: Option<bool>,
    /// Any connected user may publish.
    pub allow_publish_for_client: Option<bool>,
    /// Subscribers of a channel may publish to it.
    pub allow_publish_for_subscriber: Option<bool>,
    /// Anonymous users may publish (with one of the two above).
    pub allow_publish_for_anonymous: Option<bool>,
    /// Any connected user may read presence.
    pub allow_presence_for_client: Option<bool>,
    /// Subscribers may read the channel's presence.
    pub allow_presence_for_subscriber: Option<bool>,
    /// Any connected user may read history.
    pub allow_history_for_client: Option<bool>,
    /// Subscribers may read the channel's history.
    pub allow_history_for_subscriber: Option<bool>,
    /// Whether the application backend decides subscriptions here (when a subscribe endpoint
    /// applies); `false`: the built-in rules do. Default: true.
    pub proxy_subscribe: Option<bool>,
    /// This namespace's own subscribe endpoint, instead of `proxy_subscribe_endpoint`.
    pub proxy_subscribe_endpoint: Option<String>,
    /// As `proxy_subscribe`, for publishes.
    pub proxy_publish: Option<bool>,
    /// This namespace's own publish endpoint.
    pub proxy_publish_endpoint: Option<String>,
    /// As `proxy_subscribe`, for `sub_refresh`.
    pub proxy_sub_refresh: Option<bool>,
    /// This namespace's own sub_refresh endpoint.
    pub proxy_sub_refresh_endpoint: Option<String>,
    /// Channels whose name ends in `#user1,user2` are open to the users listed, without a
    /// subscription token; off (the default, as in Centrifugo), such a channel is refused (103)
    /// unless a token grants it.
    pub allow_user_limited_channels: Option<bool>,
    /// Every publication here is sent to the webhook endpoint as a `publication` event.
    pub webhook_publication: Option<bool>,
    /// `"stream"` (default: publications, history, recovery) or `"map"` (a key/value state per
    /// channel, options in `map`), as Centrifugo names them.
    pub subscription_type: Option<String>,
    /// The options of a `"map"`, `"map_clients"` or `"map_users"` namespace.
    pub map: Option<MapNamespace>,
    /// A subscriber of channel `<ch>` here is listed, by client id with its client info, in map
    /// channel `<prefix><ch>` (whose namespace is a `"map_clients"` one) while it stays.
    pub map_clients_presence_channel_prefix: Option<String>,
    /// A subscriber of channel `<ch>` here is listed, by user id, in map channel
    /// `<prefix><ch>` (a `"map_users"` namespace) until the key TTL after its user's last
    /// connection left.
    pub map_users_presence_channel_prefix: Option<String>,
    /// Delta encodings subscribers may ask for (Centrifugo's option; only `"fossil"` exists):
    /// publications then come as Fossil deltas against the previous one.
    pub allowed_delta_types: Option<Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: IpAddr::from([127, 0, 0, 1]),
            port: 8000,
            api_key: None,
            admin_password: None,
            token_hmac_secret: None,
            insecure: false,
            ping_interval: 25,
            pong_timeout: 10,
            stale_timeout: 10,
            max_message_size: 64 * 1024,
            client_queue_max_bytes: 1024 * 1024,
            write_timeout: 10,
            shutdown_timeout: 5,
            join_leave: true,
            subscribe_to_user_personal_channel: false,
            personal_channel_namespace: String::new(),
            personal_single_connection: false,
            presence: true,
            data_dir: PathBuf::from("switchboard-data"),
            history_storage: HistoryStorage::Sqlite,
            history_durability: Durability::Full,
            history_size: 1000,
            history_ttl: 24 * 3600,
            recovery_max_publications: 300,
            expired_grace: 25,
            name: None,
            channel: Namespace::default(),
            namespace: Vec::new(),
            token_rsa_public_key: None,
            token_ecdsa_public_key: None,
            token_jwks_url: None,
            token_audience: None,
            token_issuer: None,
            user_connection_limit: 0,
            client_channel_limit: 128,
            channel_max_length: 255,
            client_command_rate: 1000,
            client_command_burst: 2000,
            connection_rate_per_ip: 0,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            transports: TRANSPORTS.iter().map(|t| t.to_string()).collect(),
            redis: Vec::new(),
            redis_cluster: Vec::new(),
            redis_sentinel: Vec::new(),
            redis_sentinel_master: None,
            redis_master_username: None,
            redis_master_password: None,
            redis_master_tls: false,
            redis_tls_ca: None,
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_secs(1),
            redis_prefix: "switchboard".into(),
            presence_ttl: 60,
            idempotency_window: Duration::from_secs(5 * 60),
            api_port: None,
            api_address: None,
            tls_cert: None,
            tls_key: None,
            max_connections: None,
            proxy_connect_endpoint: None,
            proxy_refresh_endpoint: None,
            proxy_subscribe_endpoint: None,
            proxy_publish_endpoint: None,
            proxy_sub_refresh_endpoint: None,
            proxy_rpc_endpoint: None,
            proxy_timeout: Duration::from_secs(1),
            proxy_concurrency: 64,
            proxy_http_headers: Vec::new(),
            proxy_emulated_headers: Vec::new(),
            proxy_binary_encoding: false,
            proxy_static_headers: BTreeMap::new(),
            proxy_rpc_endpoints: BTreeMap::new(),
            webhook_endpoint: None,
            webhook_secret: None,
            webhook_events: WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect(),
            webhook_timeout: Duration::from_secs(5),
            webhook_concurrency: 16,
            webhook_batch_size: 100,
            webhook_batch_delay: Duration::from_millis(20),
        }
    }
}

/// Every webhook event type, as `webhook_events` names them.
pub const WEBHOOK_EVENTS: [&str; 7] = [
    "connect",
    "disconnect",
    "subscribe",
    "unsubscribe",
    "channel_occupied",
    "channel_vacated",
    "publication",
];

impl Namespace {
    /// This namespace's own proxy endpoints, with the decision each is for.
    pub fn proxy_endpoints(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("subscribe", self.proxy_subscribe_endpoint.as_deref()),
            ("publish", self.proxy_publish_endpoint.as_deref()),
            ("sub_refresh", self.proxy_sub_refresh_endpoint.as_deref()),
        ]
    }
}

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `fsync` on every commit (batch): an acknowledged publication survives power loss.
    Full,
    /// No `fsync` on commit: survives a crash of the process, not of the machine; faster.
    Normal,
}

/// Where channel history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStorage {
    /// An SQLite file in `data_dir`: survives restarts.
    Sqlite,
    /// Process memory: lost on restart (tests, ephemeral deployments).
    Memory,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Each proxy endpoint setting with the decision it is for.
    pub fn proxy_endpoints(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("connect", self.proxy_connect_endpoint.as_deref()),
            ("refresh", self.proxy_refresh_endpoint.as_deref()),
            ("subscribe", self.proxy_subscribe_endpoint.as_deref()),
            ("publish", self.proxy_publish_endpoint.as_deref()),
            ("sub_refresh", self.proxy_sub_refresh_endpoint.as_deref()),
            ("rpc", self.proxy_rpc_endpoint.as_deref()),
        ]
    }

    /// Whether nodes share Redis (plain URLs, Sentinel or Cluster).
    pub fn uses_redis(&self) -> bool {
        !self.redis.is_empty() || !self.redis_sentinel.is_empty() || !self.redis_cluster.is_empty()
    }

    /// The certificate authorities of `redis_tls_ca` (PEM), read from its file; `None` when
    /// unset (TLS to Redis then trusts the system's roots).
    pub fn redis_tls_roots(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.redis_tls_ca else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::Invalid(format!("redis_tls_ca {}: {e}", path.display())))?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(ConfigError::Invalid(format!(
                "redis_tls_ca {}: no PEM certificate in it",
                path.display()
            )));
        }
        Ok(Some(pem))
    }

    /// Whether the application backend decides anything (see [`crate::hooks::proxy`]).
    pub fn uses_proxy(&self) -> bool {
        self.proxy_endpoints().iter().any(|(_, e)| e.is_some())
            || !self.proxy_rpc_endpoints.is_empty()
            || std::iter::once(&self.channel)
                .chain(&self.namespace)
                .any(|ns| ns.proxy_endpoints().iter().any(|(_, e)| e.is_some()))
    }

    /// Whether any way of verifying tokens is configured.
    pub fn verifies_tokens(&self) -> bool {
        self.token_hmac_secret.is_some()
            || self.token_rsa_public_key.is_some()
            || self.token_ecdsa_public_key.is_some()
            || self.token_jwks_url.is_some()
    }

    /// Whether the node serves the client transport named `name` (one of [`TRANSPORTS`]).
    pub fn serves(&self, name: &str) -> bool {
        self.transports.iter().any(|t| t == name)
    }

    /// Clients may connect without a token, by the built-in rules: `insecure`, or no way to
    /// verify tokens (validation allowed that only on loopback) and no backend deciding connects
    /// (with one, clients without a token are the backend's to decide).
    pub fn anonymous_allowed(&self) -> bool {
        self.insecure || (!self.verifies_tokens() && self.proxy_connect_endpoint.is_none())
    }

    /// Development mode: permissions not configured are granted.
    pub fn development(&self) -> bool {
        self.anonymous_allowed()
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval)
    }

    pub fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.pong_timeout)
    }

    pub fn stale_timeout(&self) -> Duration {
        Duration::from_secs(self.stale_timeout)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }
}

#[cfg(test)]
mod tests;

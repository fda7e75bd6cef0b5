//! The embedded web pages: the front page `/` (what this server is, how to reach it), `/chat`, a
//! chat room built on the official `centrifuge` browser SDK, and `/dashboard`, this node's live
//! view pushed over Server-Sent Events.
//!
//! Every asset (pages, scripts, the vendored SDK bundle from `web/vendor/`) is compiled into the
//! binary: a page never fetches anything from elsewhere, and pages forbid it themselves through
//! their Content-Security-Policy.
//!
//! The dashboard shows operational data, so it is guarded: with an API key or an admin password
//! configured, its event stream wants one of them (`?key=`, compared in constant time); with
//! neither, it is open on a loopback address and disabled on a public one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, HistoryStorage};
use crate::metrics::Metrics;
use crate::node::{Node, COMMIT, VERSION};
use crate::timeline::{Lane, Timeline};

/// Dashboards that may stream at once (each costs one snapshot every [`SNAPSHOT_INTERVAL`]).
const MAX_DASHBOARD_STREAMS: usize = 16;
/// How often a dashboard receives a snapshot.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(500);
/// Channels (the busiest ones) and client addresses listed in a snapshot.
const TOP_CHANNELS: usize = 12;
/// Spans older than this are not sent to a dashboard that just connected.
const TIMELINE_BACKLOG_MICROS: u64 = 12_000_000;
/// Time a wrong dashboard key waits for its answer, to slow down guessing.
const WRONG_KEY_DELAY: Duration = Duration::from_millis(300);

/// A file compiled into the binary.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// Strong validator derived from the content at compile time.
    etag: u64,
}

macro_rules! asset {
    ($path:literal, $type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path));
        Asset {
            body: BODY,
            content_type: $type,
            etag: fnv1a(BODY),
        }
    }};
}

static FRONT_PAGE: Asset = asset!("index.html", "text/html; charset=utf-8");
static CHAT_PAGE: Asset = asset!("chat.html", "text/html; charset=utf-8");
static DASHBOARD_PAGE: Asset = asset!("dashboard.html", "text/html; charset=utf-8");
static DISABLED_PAGE: Asset = asset!("disabled.html", "text/html; charset=utf-8");

/// `/assets/<name>`.
static ASSETS: &[(&str, Asset)] = &[
    ("style.css", asset!("style.css", "text/css; charset=utf-8")),
    (
        "index.js",
        asset!("index.js", "text/javascript; charset=utf-8"),
    ),
    (
        "chat.js",
        asset!("chat.js", "text/javascript; charset=utf-8"),
    ),
    (
        "dashboard.js",
        asset!("dashboard.js", "text/javascript; charset=utf-8"),
    ),
    (
        "centrifuge.js",
        asset!("vendor/centrifuge.js", "text/javascript; charset=utf-8"),
    ),
    ("icon.svg", asset!("icon.svg", "image/svg+xml")),
];

/// Pages may load only what this server serves, and connect only back to it.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// FNV-1a, evaluated at compile time for the assets' ETags.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The routes of the web pages, merged into the server's router.
pub fn routes() -> Router<Node> {
    let streams = Arc::new(Semaphore::new(MAX_DASHBOARD_STREAMS));
    Router::new()
        .route("/", get(front))
        .route("/front/config", get(front_config))
        .route("/chat", get(chat))
        .route("/chat/config", get(chat_config))
        .route("/dashboard", get(dashboard))
        .route("/dashboard/access", get(dashboard_access))
        .route(
            "/dashboard/events",
            get(move |node, query| dashboard_events(node, query, streams.clone())),
        )
        .route("/assets/{name}", get(asset))
}

/// Serves `asset`, or `304 Not Modified` when the client holds this version.
fn serve(asset: &'static Asset, request: &HeaderMap, page: bool) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let cached = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    // Assets keep their names across versions: revalidate (cheaply, by ETag) on every use.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if page {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// `GET /`: the front page.
async fn front(request: HeaderMap) -> Response {
    serve(&FRONT_PAGE, &request, true)
}

/// `GET /front/config`: what the front page tells a visitor about this node. Only what anyone
/// who can connect learns anyway: never a secret, a Redis URL (it may hold a password) or a path.
async fn front_config(State(node): State<Node>) -> Response {
    let config = node.config();
    let storage = if config.history_size == 0 {
        "off"
    } else if config.uses_redis() {
        "Redis streams, shared by every node"
    } else {
        match config.history_storage {
            HistoryStorage::Sqlite => "SQLite file, durable across restarts",
            HistoryStorage::Memory => "memory, lost on restart",
        }
    };
    axum::Json(json!({
        "version": VERSION,
        "commit": COMMIT,
        "node": node.info().name,
        "mode": if config.development() { "development" } else { "production" },
        "anonymous": config.anonymous_allowed(),
        "storage": storage,
        "redis_shards": config.redis.len(),
        // How the nodes share Redis: "none", "shards" (`redis_shards` plain servers), "sentinel"
        // (the master `redis_sentinel_master` names) or "cluster".
        "redis": if !config.redis_cluster.is_empty() {
            "cluster"
        } else if !config.redis_sentinel.is_empty() {
            "sentinel"
        } else if !config.redis.is_empty() {
            "shards"
        } else {
            "none"
        },
        "redis_sentinel_master": config.redis_sentinel_master.as_deref().unwrap_or(""),
        "websocket": "/connection/websocket",
        "api_prefix": "/api",
        "api_separate": config.api_port.is_some(),
        "api_key_required": config.api_key.is_some(),
    }))
    .into_response()
}

/// `GET /chat`.
async fn chat(request: HeaderMap) -> Response {
    serve(&CHAT_PAGE, &request, true)
}

/// The namespace whose channels are chat rooms, when the configuration defines it (as
/// `switchboard genconfig` does, granting subscribers publish, presence and history there).
const CHAT_NAMESPACE: &str = "chat";

/// `GET /chat/config`: what the chat page needs to know to connect: whether it may connect
/// without a token, and the namespace its rooms live in (rooms are `chat:<room>` when the `chat`
/// namespace is configured, plain `<room>` otherwise).
async fn chat_config(State(node): State<Node>) -> Response {
    let config = node.config();
    let namespace = config
        .namespace
        .iter()
        .any(|n| n.name == CHAT_NAMESPACE)
        .then_some(CHAT_NAMESPACE);
    let endpoint = |transport: &str, path: &'static str| config.serves(transport).then_some(path);
    let emulated = config.serves("http_stream") || config.serves("sse");
    axum::Json(json!({
        "anonymous": config.anonymous_allowed(),
        "websocket": endpoint("websocket", "/connection/websocket"),
        "http_stream": endpoint("http_stream", "/connection/http_stream"),
        "sse": endpoint("sse", "/connection/sse"),
        "emulation": emulated.then_some("/emulation"),
        "namespace": namespace.unwrap_or(""),
        "version": VERSION,
    }))
    .into_response()
}

/// `GET /assets/{name}`.
async fn asset(
    axum::extract::Path(name): axum::extract::Path<String>,
    request: HeaderMap,
) -> Response {
    match ASSETS.iter().find(|(n, _)| *n == name) {
        Some((_, asset)) => serve(asset, &request, false),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Who may watch the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DashboardAccess {
    /// No secret configured, loopback address: anyone who can reach it is local.
    Open,
    /// The API key or the admin password is required.
    Key,
    /// No secret configured on a public address: nobody.
    Disabled,
}

impl DashboardAccess {
    /// The access rule `config` implies.
    pub fn of(config: &Config) -> DashboardAccess {
        if config.api_key.is_some() || config.admin_password.is_some() {
            DashboardAccess::Key
        } else if config.address.is_loopback() {
            DashboardAccess::Open
        } else {
            DashboardAccess::Disabled
        }
    }
}

/// Whether `given` is the API key or the admin password. Both comparisons always run, in time
/// that depends only on the lengths.
fn key_matches(config: &Config, given: &str) -> bool {
    let matches = |secret: &Option<String>| {
        secret
            .as_deref()
            .is_some_and(|s| crate::http::constant_time_eq(given.as_bytes(), s.as_bytes()))
    };
    let api_key = matches(&config.api_key);
    let password = matches(&config.admin_password);
    api_key | password
}

const DISABLED_MESSAGE: &str = "the dashboard is disabled on a public address without a secret: \
     start the server with --admin-password (or --api-key) to enable it";

/// `GET /dashboard`: the page (which asks for the key itself when one is needed).
async fn dashboard(State(node): State<Node>, request: HeaderMap) -> Response {
    if DashboardAccess::of(node.config()) == DashboardAccess::Disabled {
        let mut response = serve(&DISABLED_PAGE, &request, true);
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    serve(&DASHBOARD_PAGE, &request, true)
}

/// `GET /dashboard/access`: `{"access": "open" | "key" | "disabled"}`, so the page knows whether
/// to ask for the password before it opens the stream.
async fn dashboard_access(State(node): State<Node>) -> Response {
    axum::Json(json!({ "access": DashboardAccess::of(node.config()) })).into_response()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    crate::http::json_error(status, status.as_u16().into(), message)
}

/// `GET /dashboard/events?key=…`: a snapshot of the node every [`SNAPSHOT_INTERVAL`], as SSE
/// `snapshot` events, until the client leaves or the server shuts down.
async fn dashboard_events(
    State(node): State<Node>,
    Query(query): Query<HashMap<String, String>>,
    streams: Arc<Semaphore>,
) -> Response {
    match DashboardAccess::of(node.config()) {
        DashboardAccess::Disabled => {
            return json_error(StatusCode::FORBIDDEN, DISABLED_MESSAGE);
        }
        DashboardAccess::Key => {
            let given = query.get("key").map_or("", String::as_str);
            if !key_matches(node.config(), given) {
                tokio::time::sleep(WRONG_KEY_DELAY).await;
                return json_error(StatusCode::UNAUTHORIZED, "wrong or missing dashboard key");
            }
        }
        DashboardAccess::Open => {}
    }
    let Ok(permit) = streams.try_acquire_owned() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboards are open on this node",
        );
    };
    let mut interval = tokio::time::interval(SNAPSHOT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watch = Watch {
        cursor: 0,
        backlog: true,
        node,
        interval,
        cluster: None,
        cluster_read: None,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        tokio::select! {
            _ = watch.node.shutdown_token().cancelled() => return None,
            _ = watch.interval.tick() => {}
        }
        watch.refresh_cluster().await;
        let event = Event::default().event("snapshot").data(watch.snapshot());
        Some((Ok::<_, std::convert::Infallible>(event), watch))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One dashboard's stream state.
struct Watch {
    node: Node,
    interval: tokio::time::Interval,
    /// Timeline position already sent.
    cursor: u64,
    /// The first snapshot also sends the recent past of the timeline.
    backlog: bool,
    /// With several nodes (on Redis): the whole cluster, from the nodes' announcements, and
    /// when it was last read.
    cluster: Option<ClusterFigures>,
    cluster_read: Option<tokio::time::Instant>,
    _permit: OwnedSemaphorePermit,
}

/// The cluster's figures a dashboard shows beside this node's: live nodes and their connections
/// and subscriptions in all (users and channels are not summed: one user or channel may be on
/// several nodes).
#[derive(Debug, Clone, Serialize)]
struct ClusterFigures {
    nodes: usize,
    connections: u64,
    subscriptions: u64,
}

/// How often a dashboard reads the nodes' announcements (which are themselves a few seconds
/// apart).
const CLUSTER_READ_INTERVAL: Duration = Duration::from_secs(2);

impl Watch {
    /// Reads the cluster's figures again if they are older than [`CLUSTER_READ_INTERVAL`]; only
    /// when the node shares a Redis with others.
    async fn refresh_cluster(&mut self) {
        let config = self.node.config();
        if config.redis.is_empty()
            && config.redis_sentinel.is_empty()
            && config.redis_cluster.is_empty()
        {
            return;
        }
        if self
            .cluster_read
            .is_some_and(|at| at.elapsed() < CLUSTER_READ_INTERVAL)
        {
            return;
        }
        self.cluster_read = Some(tokio::time::Instant::now());
        let nodes = self.node.nodes().await;
        self.cluster = Some(ClusterFigures {
            nodes: nodes.len(),
            connections: nodes.iter().map(|n| n.num_clients).sum(),
            subscriptions: nodes.iter().map(|n| n.num_subs).sum(),
        });
    }
}

/// What a dashboard receives, twice a second. Counters are totals; the page derives rates.
#[derive(Serialize)]
struct Snapshot {
    node: String,
    version: &'static str,
    uptime: u64,
    /// Now, on the timeline's clock (microseconds).
    now: u64,
    connections: u64,
    users: u64,
    channels: u64,
    subscriptions: u64,
    /// Open connections of each transport that has any.
    transports: Vec<(&'static str, u64)>,
    /// Open connections of each encoding that has any.
    encodings: Vec<(&'static str, u64)>,
    /// With several nodes: the whole cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterFigures>,
    counters: Counters,
    /// The busiest channels: name and local subscribers.
    top_channels: Vec<(String, usize)>,
    /// The client addresses with the most connections (as `trusted_proxies` resolve them), and
    /// how many addresses are connected in all.
    client_addresses: Vec<(String, u32)>,
    addresses: usize,
    lanes: [&'static str; 4],
    /// New spans: `[lane, name, detail, start µs, duration µs, count]`.
    spans: Vec<(u8, &'static str, String, u64, u64, u64)>,
}

#[derive(Serialize)]
struct Counters {
    commands: u64,
    api_requests: u64,
    publications: u64,
    messages_sent: u64,
    frames_written: u64,
    queue_drops: u64,
    slow_disconnects: u64,
    connections_accepted: u64,
}

impl Watch {
    fn snapshot(&mut self) -> String {
        let _span = self
            .node
            .timeline()
            .span(Lane::Background, "dashboard snapshot", "");
        let node = &self.node;
        let info = node.info();
        let timeline: &Timeline = node.timeline();
        let now = timeline.now_micros();
        let after = if self.backlog { 0 } else { self.cursor };
        let (spans, cursor) = timeline.since(after);
        let oldest = if self.backlog {
            now.saturating_sub(TIMELINE_BACKLOG_MICROS)
        } else {
            0
        };
        self.cursor = cursor;
        self.backlog = false;
        let spans = spans
            .into_iter()
            .filter(|s| s.start + s.duration >= oldest)
            .map(|s| (s.lane, s.name, s.detail, s.start, s.duration, s.count))
            .collect();
        let mut channels: Vec<(String, usize)> = node
            .hub()
            .channels()
            .into_iter()
            .map(|(name, count)| (name.to_string(), count))
            .collect();
        if channels.len() > TOP_CHANNELS {
            channels.select_nth_unstable_by(TOP_CHANNELS, |a, b| b.1.cmp(&a.1));
            channels.truncate(TOP_CHANNELS);
        }
        channels.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let (client_addresses, addresses) = node.client_addresses().top(TOP_CHANNELS);
        let metrics: &Metrics = node.metrics();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let snapshot = Snapshot {
            node: info.name,
            version: VERSION,
            uptime: info.uptime,
            now,
            connections: info.num_clients,
            users: info.num_users,
            channels: info.num_channels,
            subscriptions: info.num_subs,
            transports: metrics
                .transports
                .by_name()
                .into_iter()
                .filter(|(_, open)| *open > 0)
                .collect(),
            encodings: metrics
                .encodings
                .by_name()
                .into_iter()
                .filter(|(_, open)| *open > 0)
                .collect(),
            cluster: self.cluster.clone(),
            counters: Counters {
                commands: get(&metrics.commands_received),
                api_requests: get(&metrics.api_requests),
                publications: get(&metrics.publications),
                messages_sent: get(&metrics.messages_sent),
                frames_written: get(&metrics.frames_written),
                queue_drops: get(&metrics.queue_drops),
                slow_disconnects: get(&metrics.slow_disconnects),
                connections_accepted: get(&metrics.connections_accepted),
            },
            top_channels: channels,
            client_addresses,
            addresses,
            lanes: Lane::ALL.map(Lane::name),
            spans,
        };
        serde_json::to_string(&snapshot).unwrap_or_else(|_| "{}".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_access_follows_the_configured_secrets_and_address() {
        let public: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        let mut config = Config::default();
        assert_eq!(DashboardAccess::of(&config), DashboardAccess::Open);
        config.address = public;
        assert_eq!(DashboardAccess::of(&config), DashboardAccess::Disabled);
        config.admin_password = Some("pw".into());
        assert_eq!(DashboardAccess::of(&config), DashboardAccess::Key);
        config.admin_password = None;
        config.api_key = Some("k".into());
        assert_eq!(DashboardAccess::of(&config), DashboardAccess::Key);
    }

    #[test]
    fn either_secret_opens_the_dashboard() {
        let config = Config {
            api_key: Some("api".into()),
            admin_password: Some("admin".into()),
            ..Config::default()
        };
        assert!(key_matches(&config, "api"));
        assert!(key_matches(&config, "admin"));
        assert!(!key_matches(&config, "adm"));
        assert!(!key_matches(&config, ""));
        let none = Config::default();
        assert!(!key_matches(&none, ""));
    }

    #[test]
    fn every_asset_is_embedded_with_a_distinct_etag() {
        let mut tags: Vec<u64> = ASSETS.iter().map(|(_, a)| a.etag).collect();
        tags.extend([
            FRONT_PAGE.etag,
            CHAT_PAGE.etag,
            DASHBOARD_PAGE.etag,
            DISABLED_PAGE.etag,
        ]);
        let count = tags.len();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), count);
        assert!(ASSETS.iter().all(|(_, a)| !a.body.is_empty()));
    }
}

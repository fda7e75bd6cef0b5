//! Assembles a node and its HTTP/WebSocket routes, and runs them until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HistoryStorage};
use crate::engine::broker::Broker;
use crate::engine::history::History;
use crate::engine::memory::{LocalBroker, MemoryHistory, MemoryPresence};
use crate::engine::presence::Presence;
use crate::engine::redis::{RedisEngine, RedisSettings};
use crate::engine::sqlite::SqliteHistory;
use crate::fd_limit::{raise_fd_limit, FdLimit};
use crate::http::api::json_error;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol::{error_code, Disconnect};

/// Largest server API request body.
const API_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Builds a node with the storages the configuration asks for: Redis when URLs are given,
/// otherwise in-process fan-out with SQLite (or memory) history.
pub async fn build_node(config: Config, shutdown: CancellationToken) -> anyhow::Result<Node> {
    // TLS (served and fetched) uses the ring provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The tasks of the storages built here run on this tracker, so shutdown can wait for them.
    let tracker = tokio_util::task::TaskTracker::new();
    let (broker, presence): (Arc<dyn Broker>, Arc<dyn Presence>) = if config.redis.is_empty() {
        let history: Arc<dyn History> = match config.history_storage {
            HistoryStorage::Sqlite => Arc::new(SqliteHistory::open(
                &config.data_dir,
                config.history_durability,
            )?),
            HistoryStorage::Memory => Arc::new(MemoryHistory::default()),
        };
        (
            Arc::new(LocalBroker::new(history)),
            Arc::new(MemoryPresence::default()),
        )
    } else {
        let engine = RedisEngine::connect(
            RedisSettings {
                urls: config.redis.clone(),
                prefix: config.redis_prefix.clone(),
                presence_ttl: std::time::Duration::from_secs(config.presence_ttl.max(1)),
            },
            shutdown.clone(),
            tracker.clone(),
        )
        .await?;
        (engine.clone(), engine)
    };
    let verifier = crate::auth::TokenVerifier::from_config(&config)?;
    Ok(Node::new(config, broker, presence, verifier, shutdown))
}

/// Bounds the WebSocket connections served at once. Every connection holds a file descriptor, so
/// without a bound the process would run out of them and fail to accept *anyone* (API calls and
/// health checks included); with it, a client over the limit gets a clear, immediate refusal it
/// can act on (reconnect later or elsewhere), and the connections already open are unaffected.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    /// A limit of `max` connections.
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The configured limit, or by default what the open-file limit leaves room for.
    pub fn for_config(config: &Config, fds: FdLimit) -> Self {
        let capacity = usize::try_from(fds.connection_capacity()).unwrap_or(usize::MAX);
        Self::new(config.max_connections.unwrap_or(capacity))
    }

    /// The most connections served at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one connection, held for its whole life; `None` at the limit.
    fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// Every route of the server, sharing `limit` (so the caller can observe it): the WebSocket
/// endpoint, the web pages (beside the WebSocket they connect to), and the server API unless it
/// is served on its own listener.
pub fn app(node: Node, limit: ConnectionLimit) -> Router {
    let router = Router::new()
        .route("/connection/websocket", get(websocket))
        .layer(axum::Extension(limit));
    let router = router.merge(crate::http::web::routes());
    let router = if node.config().api_port.is_some() {
        router
    } else {
        router.merge(api_routes())
    };
    router.with_state(node)
}

/// The server API, health and metrics.
pub fn api_routes() -> Router<Node> {
    Router::new()
        .route("/api/{method}", post(crate::http::api::call))
        .route("/health", get(crate::http::api::health))
        .route("/metrics", get(crate::http::api::metrics))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
}

/// The answer to a WebSocket handshake over the connection limit: 503 before the upgrade, with
/// Centrifugo's disconnect code 3504 in a JSON body. Clients treat a failed handshake as a
/// transport failure and retry with backoff, which is what a full node wants.
fn connection_limit_response() -> Response {
    let limit = Disconnect::CONNECTION_LIMIT;
    let refusal = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        limit.code.into(),
        &limit.reason,
    );
    ([(header::RETRY_AFTER, "5")], refusal).into_response()
}

/// `GET /connection/websocket`: checks the connection limit, origin and connection rate,
/// upgrades, and hands the socket to the transport.
async fn websocket(
    State(node): State<Node>,
    axum::Extension(connections): axum::Extension<ConnectionLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(node.config(), &headers) {
        return json_error(
            StatusCode::FORBIDDEN,
            error_code::PERMISSION_DENIED,
            "origin not allowed",
        );
    }
    if !node.connection_limiter().admit(peer.ip()) {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            error_code::TOO_MANY_REQUESTS,
            "too many new connections from this address",
        );
    }
    let Some(slot) = connections.try_acquire() else {
        Metrics::inc(&node.metrics().connections_refused);
        tracing::debug!(max = connections.max(), "connection refused: limit reached");
        return connection_limit_response();
    };
    let limit = node.config().max_message_size;
    // The library's own limit sits above ours so an oversized message still gets a proper close
    // (1009) from the transport rather than a dropped connection.
    let hard_limit = limit.saturating_mul(2).max(limit + 64 * 1024);
    upgrade
        // Client frames are small commands; the buffer is zero-filled up to this size on every
        // read, so it is resident memory for every idle connection. Larger frames grow it.
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            // The slot is released when the connection ends (or if the upgrade never completes,
            // when this closure is dropped). `map` rather than an `async` block awaiting `serve`:
            // such a block would store the future twice (as captured value and as awaited one).
            let serve =
                crate::transport::websocket::serve(node.clone(), socket).map(move |()| drop(slot));
            node.tracker().track_future(serve)
        })
}

/// Browsers send `Origin`; other clients usually do not, and are not subject to this check.
/// Configured patterns decide; with none, development mode allows any origin and production
/// only the server's own host.
fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if !config.allowed_origins.is_empty() {
        return config.allowed_origins.iter().any(|pattern| {
            crate::http::api::glob_match(
                &pattern.to_ascii_lowercase(),
                &origin.to_ascii_lowercase(),
            )
        });
    }
    if config.development() {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
}

/// Where the server listens.
pub struct Listeners {
    /// Clients (and the API, unless it has its own listener).
    pub main: TcpListener,
    /// The server API, health and metrics, when served apart.
    pub api: Option<TcpListener>,
}

/// Runs the server on `listener` until `shutdown` is cancelled. A separate API listener, if the
/// configuration asks for one, is bound here.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = match config.api_port {
        Some(port) => {
            let address = config.api_address.unwrap_or(config.address);
            Some(TcpListener::bind((address, port)).await.map_err(|e| {
                anyhow::anyhow!("cannot listen for the API on {address}:{port}: {e}")
            })?)
        }
        None => None,
    };
    run_with(
        config,
        Listeners {
            main: listener,
            api,
        },
        shutdown,
    )
    .await
}

/// Runs the server on `listeners` until `shutdown` is cancelled, then closes every client with
/// the shutdown code and waits (a bounded time) for connection tasks to finish.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    if !config.verifies_tokens() {
        tracing::warn!("no token key configured: clients connect anonymously (development mode)");
    }
    if config.api_key.is_none() {
        tracing::warn!("no API key configured: the server API is open to anyone who can reach it");
    }
    let shutdown_timeout = config.shutdown_timeout();
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| anyhow::anyhow!("cannot load TLS certificate or key: {e}"))?,
        ),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
    };
    let fds = raise_fd_limit();
    let connections = ConnectionLimit::for_config(&config, fds);
    tracing::info!(
        fd_soft_limit = fds.soft,
        fd_hard_limit = fds.hard,
        max_connections = connections.max(),
        "connection capacity"
    );
    if connections.max() as u64 > fds.connection_capacity() {
        tracing::warn!(
            max_connections = connections.max(),
            fd_soft_limit = fds.soft,
            "max_connections is above what the open-file limit allows: accepts may fail before \
             the limit is reached; raise the hard limit (ulimit -Hn, LimitNOFILE=)"
        );
    }
    let node = build_node(config, shutdown.clone()).await?;
    tokio::spawn(node.clone().announce_forever());
    let mut servers = tokio::task::JoinSet::new();
    if let Some(api) = listeners.api {
        tracing::info!(address = %api.local_addr()?, "server API listening");
        let router = api_routes().with_state(node.clone());
        servers.spawn(serve_plain(api, router, shutdown.clone()));
    }
    let main_addr = listeners.main.local_addr()?;
    let router = app(node.clone(), connections);
    match tls {
        Some(tls) => {
            tracing::info!(address = %main_addr, "switchboard listening (TLS)");
            let handle = axum_server::Handle::new();
            let stop = handle.clone();
            let token = shutdown.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                stop.graceful_shutdown(Some(shutdown_timeout));
            });
            let listener = listeners.main.into_std()?;
            let server = axum_server::from_tcp_rustls(listener, tls)?
                .handle(handle)
                .serve(router.into_make_service_with_connect_info::<SocketAddr>());
            servers.spawn(async move { server.await.map_err(anyhow::Error::from) });
        }
        None => {
            tracing::info!(address = %main_addr, "switchboard listening");
            servers.spawn(serve_plain(listeners.main, router, shutdown.clone()));
        }
    }
    shutdown.cancelled().await;
    node.tracker().close();
    if tokio::time::timeout(shutdown_timeout, node.tracker().wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timed out with connection tasks still running");
    }
    let finished = tokio::time::timeout(shutdown_timeout, async {
        while let Some(result) = servers.join_next().await {
            result??;
        }
        anyhow::Ok(())
    })
    .await;
    match finished {
        Ok(result) => result?,
        Err(_) => tracing::warn!("shutdown timed out with HTTP requests still running"),
    }
    tracing::info!("switchboard stopped");
    Ok(())
}

/// Serves `router` on a plain TCP listener until shutdown.
async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn origins() {
        let mut production = Config {
            token_hmac_secret: Some("s".into()),
            ..Config::default()
        };
        assert!(origin_allowed(
            &production,
            &headers("http://a.example:8000", "a.example:8000")
        ));
        assert!(!origin_allowed(
            &production,
            &headers("https://evil.example", "a.example:8000")
        ));
        assert!(origin_allowed(&production, &HeaderMap::new()));
        production.allowed_origins = vec!["https://*.example.com".into()];
        assert!(origin_allowed(
            &production,
            &headers("https://app.example.com", "x")
        ));
        assert!(!origin_allowed(
            &production,
            &headers("https://example.org", "x")
        ));
        let development = Config::default();
        assert!(origin_allowed(
            &development,
            &headers("http://anything", "x")
        ));
    }
}

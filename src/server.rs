//! Assembles a node and its HTTP/WebSocket routes, and runs them until shutdown.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::broker::LocalBroker;
use crate::config::Config;
use crate::history::MemoryHistory;
use crate::limits::{raise_fd_limit, FdLimit};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::presence::MemoryPresence;

/// Largest server API request body.
const API_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Builds a node with the storages the configuration asks for.
pub fn build_node(config: Config, shutdown: CancellationToken) -> anyhow::Result<Node> {
    let history = Arc::new(MemoryHistory::default());
    let broker = Arc::new(LocalBroker::new(history));
    let presence = Arc::new(MemoryPresence::default());
    Ok(Node::new(config, broker, presence, shutdown))
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

    /// Connections being served now.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A slot for one connection, held for its whole life; `None` at the limit.
    fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// Every route of the server, with the connection limit the configuration asks for.
pub fn app(node: Node) -> Router {
    let limit = ConnectionLimit::for_config(node.config(), raise_fd_limit());
    app_with_limit(node, limit)
}

/// Every route of the server, sharing `limit` (so the caller can observe it).
pub fn app_with_limit(node: Node, limit: ConnectionLimit) -> Router {
    Router::new()
        .route("/connection/websocket", get(websocket))
        .route("/api/{method}", post(crate::api::call))
        .route("/health", get(crate::api::health))
        .route("/metrics", get(crate::api::metrics))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(axum::Extension(limit))
        .with_state(node)
}

/// The answer to a WebSocket handshake over the connection limit: 503 before the upgrade, with
/// Centrifugo's disconnect code 3504 in a JSON body. Clients treat a failed handshake as a
/// transport failure and retry with backoff, which is what a full node wants.
fn connection_limit_response() -> Response {
    let body = serde_json::json!({"error": {"code": 3504, "message": "connection limit"}});
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        axum::Json(body),
    )
        .into_response()
}

/// `GET /connection/websocket`: upgrades (within the connection limit) and hands the socket to
/// the transport.
async fn websocket(
    State(node): State<Node>,
    axum::Extension(connections): axum::Extension<ConnectionLimit>,
    upgrade: WebSocketUpgrade,
) -> Response {
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
            let serve = crate::transport::serve(node.clone(), socket).map(move |()| drop(slot));
            node.tracker().track_future(serve)
        })
}

/// Runs the server on `listener` until `shutdown` is cancelled, then closes every client with the
/// shutdown code and waits (a bounded time) for connection tasks to finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    if config.token_hmac_secret.is_none() {
        tracing::warn!(
            "no token secret configured: clients connect anonymously (development mode)"
        );
    }
    if config.api_key.is_none() {
        tracing::warn!("no API key configured: the server API is open to anyone who can reach it");
    }
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
    let shutdown_timeout = config.shutdown_timeout();
    let node = build_node(config, shutdown.clone())?;
    tracing::info!(address = %listener.local_addr()?, "switchboard listening");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app_with_limit(node.clone(), connections))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let serve_result = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    node.tracker().close();
    if tokio::time::timeout(shutdown_timeout, node.tracker().wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timed out with connection tasks still running");
    }
    match tokio::time::timeout(shutdown_timeout, serve_result).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => return Err(join.into()),
        Err(_) => tracing::warn!("shutdown timed out with HTTP requests still running"),
    }
    tracing::info!("switchboard stopped");
    Ok(())
}

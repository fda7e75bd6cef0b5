//! Assembles a node and its HTTP/WebSocket routes, and runs them until shutdown.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::LocalBroker;
use crate::config::{Config, HistoryStorage};
use crate::history::{History, MemoryHistory, SqliteHistory};
use crate::node::Node;
use crate::presence::MemoryPresence;

/// Largest server API request body.
const API_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Builds a node with the storages the configuration asks for.
pub fn build_node(config: Config, shutdown: CancellationToken) -> anyhow::Result<Node> {
    let history: Arc<dyn History> = match config.history_storage {
        HistoryStorage::Sqlite => Arc::new(SqliteHistory::open(
            &config.data_dir,
            config.history_durability,
        )?),
        HistoryStorage::Memory => Arc::new(MemoryHistory::default()),
    };
    let broker = Arc::new(LocalBroker::new(history));
    let presence = Arc::new(MemoryPresence::default());
    let verifier = crate::auth::TokenVerifier::from_config(&config)?;
    Ok(Node::new(config, broker, presence, verifier, shutdown))
}

/// Every route of the server.
pub fn app(node: Node) -> Router {
    Router::new()
        .route("/connection/websocket", get(websocket))
        .route("/api/{method}", post(crate::api::call))
        .route("/health", get(crate::api::health))
        .route("/metrics", get(crate::api::metrics))
        .merge(crate::web::routes())
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .with_state(node)
}

/// `GET /connection/websocket`: upgrades and hands the socket to the transport.
async fn websocket(State(node): State<Node>, upgrade: WebSocketUpgrade) -> Response {
    let limit = node.config().max_message_size;
    // The library's own limit sits above ours so an oversized message still gets a proper close
    // (1009) from the transport rather than a dropped connection.
    let hard_limit = limit.saturating_mul(2).max(limit + 64 * 1024);
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            let tracked = node
                .tracker()
                .track_future(crate::transport::serve(node.clone(), socket));
            tracked
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
    if !config.verifies_tokens() {
        tracing::warn!(
            "no token secret configured: clients connect anonymously (development mode)"
        );
    }
    if config.api_key.is_none() {
        tracing::warn!("no API key configured: the server API is open to anyone who can reach it");
    }
    let shutdown_timeout = config.shutdown_timeout();
    let node = build_node(config, shutdown.clone())?;
    tracing::info!(address = %listener.local_addr()?, "switchboard listening");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app(node.clone()))
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

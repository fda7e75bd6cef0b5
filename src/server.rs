//! Assembles a node and its HTTP/WebSocket routes, and runs them until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::routing::{get, post};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::auth::KeyError;
use crate::config::{Config, ConfigError, HistoryStorage};
use crate::engine::broker::{Broker, BrokerError};
use crate::engine::history::{History, HistoryError};
use crate::engine::memory::{LocalBroker, MemoryHistory, MemoryPresence};
use crate::engine::presence::Presence;
use crate::engine::redis::{RedisEngine, RedisSettings, SentinelSettings};
use crate::engine::sqlite::SqliteHistory;
use crate::fd_limit::raise_fd_limit;
use crate::hooks::proxy::{Proxy, ProxyError};
use crate::hooks::webhook::{WebhookError, Webhooks};
use crate::metrics::Metrics;
use crate::node::{Node, NodeHooks};
use crate::timeline::Timeline;
use crate::transport::linger::{LingeringAcceptor, LingeringTcp};
use crate::transport::ConnectionLimit;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open history: {0}")]
    History(#[from] HistoryError),
    #[error("cannot start the Redis engine: {0}")]
    Broker(#[from] BrokerError),
    #[error("cannot load token keys: {0}")]
    Keys(#[from] KeyError),
    #[error("cannot set up the backend proxy: {0}")]
    Proxy(#[from] ProxyError),
    #[error("cannot start webhooks: {0}")]
    Webhooks(#[from] WebhookError),
    #[error("cannot listen for the API on {address}: {source}")]
    ApiListener {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load TLS certificate or key: {0}")]
    Tls(std::io::Error),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Builds a node with the storages the configuration asks for (Redis when URLs are given,
/// otherwise in-process fan-out with SQLite or memory history), deciding about clients by the
/// built-in rules or, for what proxy endpoints are configured, by the application backend.
pub async fn build_node(config: Config, shutdown: CancellationToken) -> Result<Built, ServerError> {
    // Every background task of the node (engines, key refresh, connections) is tracked here and
    // waited for, within a bound, at shutdown.
    let tracker = TaskTracker::new();
    // TLS (served and fetched) uses the ring provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (broker, presence): (Arc<dyn Broker>, Arc<dyn Presence>) = if !config.uses_redis() {
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
                sentinel: config
                    .redis_sentinel_master
                    .clone()
                    .filter(|_| !config.redis_sentinel.is_empty())
                    .map(|master_name| SentinelSettings {
                        sentinels: config.redis_sentinel.clone(),
                        master_name,
                        master_username: config.redis_master_username.clone(),
                        master_password: config.redis_master_password.clone(),
                        master_tls: config.redis_master_tls,
                    }),
                cluster: config.redis_cluster.clone(),
                wait_replicas: config.redis_wait_replicas,
                wait_timeout: config.redis_wait_timeout,
                tls_ca: config.redis_tls_roots()?,
                ..RedisSettings::new(
                    config.redis.clone(),
                    config.redis_prefix.clone(),
                    std::time::Duration::from_secs(config.presence_ttl.max(1)),
                )
            },
            shutdown.clone(),
            tracker.clone(),
        )
        .await?;
        (engine.clone(), engine)
    };
    let verifier = crate::auth::TokenVerifier::from_config(&config, &tracker, &shutdown)?;
    // With any backend endpoint configured, the backend decides what it has endpoints for.
    let metrics = Arc::new(Metrics::default());
    let timeline = Arc::new(Timeline::default());
    let mut hooks = NodeHooks {
        metrics: Some(metrics.clone()),
        timeline: Some(timeline.clone()),
        ..NodeHooks::default()
    };
    if config.uses_proxy() {
        let proxy = Proxy::new(&config, verifier.clone(), metrics.clone())?;
        hooks.decisions = Some(Arc::new(proxy));
    }
    let webhooks = Webhooks::start(&config, metrics, timeline).await?;
    if let Some(webhooks) = &webhooks {
        hooks.sinks.push(webhooks.clone());
    }
    let node = Node::with_hooks(config, broker, presence, verifier, shutdown, tracker, hooks);
    Ok(Built { node, webhooks })
}

/// A node, and what must be finished after it at shutdown.
pub struct Built {
    pub node: Node,
    /// Delivers what the node's last connections did (see [`Webhooks::finish`]).
    pub webhooks: Option<Arc<Webhooks>>,
}

/// Every route of the server, sharing `limit` (so the caller can observe it): the WebSocket
/// endpoint, the web pages (beside the WebSocket they connect to), and the server API unless it
/// is served on its own listener.
pub fn app(node: Node, limit: ConnectionLimit) -> Router {
    use crate::transport::{emulation, uni, uni_websocket, websocket};
    let config = node.config();
    let routes: [(&str, &str, axum::routing::MethodRouter<Node>); 6] = [
        (
            "websocket",
            "/connection/websocket",
            get(websocket::endpoint),
        ),
        (
            "http_stream",
            "/connection/http_stream",
            post(emulation::http_stream_endpoint),
        ),
        ("sse", "/connection/sse", get(emulation::sse_endpoint)),
        (
            "uni_websocket",
            "/connection/uni_websocket",
            get(uni_websocket::endpoint),
        ),
        (
            "uni_sse",
            "/connection/uni_sse",
            get(uni::sse_endpoint).post(uni::sse_endpoint),
        ),
        (
            "uni_http_stream",
            "/connection/uni_http_stream",
            post(uni::http_stream_endpoint),
        ),
    ];
    let mut router = Router::new();
    for (transport, path, handler) in routes {
        if config.serves(transport) {
            router = router.route(path, handler);
        }
    }
    if config.serves("http_stream") || config.serves("sse") {
        router = router.route("/emulation", post(emulation::emulation_endpoint));
    }
    let router = router.layer(axum::Extension(limit));
    let router = router.merge(crate::http::web::routes());
    let router = if node.config().api_port.is_some() {
        router
    } else {
        router.merge(crate::http::api_routes())
    };
    router.with_state(node)
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
) -> Result<(), ServerError> {
    let api = match config.api_port {
        Some(port) => {
            let address = config.api_address.unwrap_or(config.address);
            let address = SocketAddr::new(address, port);
            Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| ServerError::ApiListener { address, source })?,
            )
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
) -> Result<(), ServerError> {
    config.validate()?;
    if !config.verifies_tokens() && config.proxy_connect_endpoint.is_none() {
        tracing::warn!("no token key configured: clients connect anonymously (development mode)");
    }
    if config.uses_proxy() {
        let hooks: Vec<&str> = config
            .proxy_endpoints()
            .iter()
            .filter(|(_, url)| url.is_some())
            .map(|(hook, _)| *hook)
            .collect();
        tracing::info!(?hooks, "the application backend decides through its proxy");
    }
    if config.api_key.is_none() {
        tracing::warn!("no API key configured: the server API is open to anyone who can reach it");
    }
    let shutdown_timeout = config.shutdown_timeout();
    // A new connection has as long to send a request's head as a new WebSocket has to connect.
    let header_timeout = config.stale_timeout();
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(ServerError::Tls)?,
        ),
        (None, None) => None,
        // `Config::validate` refuses one without the other.
        _ => None,
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
    let Built { node, webhooks } = build_node(config, shutdown.clone()).await?;
    node.tracker().spawn(node.clone().announce_forever());
    node.tracker().spawn(node.clone().expire_maps_forever());
    let mut servers = tokio::task::JoinSet::new();
    let api_addr = match &listeners.api {
        Some(api) => Some(api.local_addr()?),
        None => None,
    };
    announce_urls(listeners.main.local_addr()?, api_addr, tls.is_some());
    if let Some(api) = listeners.api {
        tracing::info!(address = %api.local_addr()?, "server API listening");
        let router = crate::http::api_routes().with_state(node.clone());
        servers.spawn(serve_plain(api, router, header_timeout, shutdown.clone()));
    }
    let main_addr = listeners.main.local_addr()?;
    let router = app(node.clone(), connections);
    match tls {
        Some(tls) => {
            tracing::info!(address = %main_addr, "switchboard listening (TLS)");
            let handle = axum_server::Handle::new();
            let stop = handle.clone();
            let token = shutdown.clone();
            node.tracker().spawn(async move {
                token.cancelled().await;
                stop.graceful_shutdown(Some(shutdown_timeout));
            });
            let listener = listeners.main.into_std()?;
            // A client that completes the handshake and sends nothing is closed after the same
            // bound as a plain one (the HTTP version is guessed from the first bytes).
            let mut server = axum_server::from_tcp_rustls(listener, tls)?
                .map(|rustls| rustls.acceptor(LingeringAcceptor))
                .handle(handle)
                .first_request_timeout(header_timeout);
            server
                .http_builder()
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let server = server.serve(router.into_make_service_with_connect_info::<SocketAddr>());
            servers.spawn(async move { server.await.map_err(ServerError::from) });
        }
        None => {
            tracing::info!(address = %main_addr, "switchboard listening");
            servers.spawn(serve_plain(
                listeners.main,
                router,
                header_timeout,
                shutdown.clone(),
            ));
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
    if let Some(webhooks) = webhooks {
        webhooks.finish(shutdown_timeout).await;
    }
    let finished = tokio::time::timeout(shutdown_timeout, async {
        while let Some(result) = servers.join_next().await {
            result??;
        }
        Ok::<(), ServerError>(())
    })
    .await;
    match finished {
        Ok(result) => result?,
        Err(_) => tracing::warn!("shutdown timed out with HTTP requests still running"),
    }
    tracing::info!("switchboard stopped");
    Ok(())
}

/// Logs the URLs a person opens, one line each: the front page, the chat, the dashboard, the
/// WebSocket endpoint and the server API. A wildcard address (`0.0.0.0`, `::`) is shown as the
/// loopback address, which reaches it from this machine.
fn announce_urls(main: SocketAddr, api: Option<SocketAddr>, tls: bool) {
    let reachable = |address: SocketAddr| {
        let ip = match address.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => std::net::IpAddr::from([127, 0, 0, 1]),
            ip if ip.is_unspecified() => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, address.port())
    };
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let main = reachable(main);
    tracing::info!(url = %format!("{http}://{main}/"), "front page");
    tracing::info!(url = %format!("{http}://{main}/chat"), "chat");
    tracing::info!(url = %format!("{http}://{main}/dashboard"), "dashboard");
    tracing::info!(url = %format!("{ws}://{main}/connection/websocket"), "WebSocket endpoint");
    // The separate API listener is plain HTTP (TLS applies to the main one).
    let api = match api {
        Some(api) => format!("http://{}", reachable(api)),
        None => format!("{http}://{main}"),
    };
    tracing::info!(url = %format!("{api}/api/<method>"), "server API (POST)");
    tracing::info!(url = %format!("{api}/health"), "health");
    tracing::info!(url = %format!("{api}/metrics"), "metrics");
}

/// Serves `router` on a plain TCP listener until shutdown, over HTTP/1.1.
///
/// Every connection has `header_timeout` to send each request's head, and no longer to stay idle
/// between requests: a socket that sends half a request line, or nothing, is closed instead of
/// holding a file descriptor for ever. A WebSocket is past its request once upgraded, so the
/// bound no longer applies to it. At shutdown the listener closes and open requests finish.
async fn serve_plain(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    // HTTP/1 alone: guessing the version first (as a server speaking HTTP/2 too must) would wait
    // for a silent socket's first bytes without a bound.
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be released.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        // A streaming response may take the socket (`transport::handoff`); its chunked framing
        // needs HTTP/1.1, and a response to HEAD has no body at all.
        let (tcp, detachable) = LingeringTcp::detachable(tcp);
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                if request.version() == axum::http::Version::HTTP_11
                    && request.method() != axum::http::Method::HEAD
                {
                    request.extensions_mut().insert(detachable.clone());
                }
                request.map(Body::new)
            });
        let connection = http1
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // Boxed: the task cell stays small (it lives through the WebSocket handshake of every
            // connection), and hyper's connection state is freed in one piece when it ends.
            let mut connection = Box::pin(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    // Finish the request in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Accept errors about one connection (the next accept may well succeed).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

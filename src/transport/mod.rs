//! Transports: how a client's bytes reach its [`Session`](crate::session::Session) and back.
//! A transport knows framing, not commands; what every transport shares (admission of a new
//! connection, the connection limit) lives here.

pub mod client_addr;
pub mod connection;
pub mod emulation;
pub mod handoff;
pub mod linger;
pub mod uni;
pub mod uni_websocket;
pub mod websocket;

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::fd_limit::FdLimit;
use crate::hooks::decisions::ClientHeaders;
use crate::http::{glob_match, json_error};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol::{error_code, Disconnect};

pub use crate::hooks::decisions::Transport;

/// Each transport's count of open connections, in `/metrics`.
impl Transport {
    fn gauge(self, node: &Node) -> &std::sync::atomic::AtomicU64 {
        let open = &node.metrics().transports;
        match self {
            Transport::WebSocket => &open.websocket,
            Transport::HttpStream => &open.http_stream,
            Transport::Sse => &open.sse,
            Transport::UniWebSocket => &open.uni_websocket,
            Transport::UniSse => &open.uni_sse,
            Transport::UniHttpStream => &open.uni_http_stream,
        }
    }

    /// Counts a connection of this transport as open.
    pub fn opened(self, node: &Node) {
        Metrics::inc(self.gauge(node));
    }

    /// Counts a connection of this transport as ended.
    pub fn closed(self, node: &Node) {
        self.gauge(node)
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bounds the client connections (of every transport) served at once. Every connection holds a
/// file descriptor, so without a bound the process would run out of them and fail to accept
/// *anyone* (API calls and health checks included); with it, a client over the limit gets a
/// clear, immediate refusal it can act on (reconnect later or elsewhere), and the connections
/// already open are unaffected.
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

/// Why a new client connection was refused before its transport started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A browser page from an origin the configuration does not allow (403).
    Origin,
    /// Too many new connections from one address (429).
    Rate,
    /// The node holds as many connections as it may (503, code 3504).
    Full,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Origin => json_error(
                StatusCode::FORBIDDEN,
                error_code::PERMISSION_DENIED,
                "origin not allowed",
            ),
            Refused::Rate => json_error(
                StatusCode::TOO_MANY_REQUESTS,
                error_code::TOO_MANY_REQUESTS,
                "too many new connections from this address",
            ),
            Refused::Full => connection_limit_response(),
        }
    }
}

/// A client connection let in: its place under the connection limit and its address counted (both
/// held for the connection's whole life), and the headers the application backend is told of.
pub struct Admitted {
    pub slot: OwnedSemaphorePermit,
    pub address: crate::node::addresses::AddressGuard,
    pub headers: ClientHeaders,
}

/// Admits a connection request from `peer`, whatever its transport: finds the client's address
/// (behind trusted proxies), checks it with [`admit`], counts it, and takes the headers to
/// forward.
pub fn admit_request(
    node: &Node,
    connections: &ConnectionLimit,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
) -> Result<Admitted, Refused> {
    let client = client_addr::client_ip(peer.ip(), headers, &node.config().trusted_proxies);
    let slot = admit(node, connections, client, headers)?;
    Ok(Admitted {
        slot,
        address: node.client_addresses().open(client),
        // Taken now: the request's headers are gone once the connection is upgraded.
        headers: forwarded_headers(node.config(), headers, peer.ip(), client),
    })
}

/// Admits a new client connection, whatever its transport: the origin (browsers), the rate of
/// new connections from the client's address (`client`, as [`client_addr::client_ip`] found
/// it), and a slot under the connection limit, held for the connection's whole life.
pub fn admit(
    node: &Node,
    connections: &ConnectionLimit,
    client: IpAddr,
    headers: &HeaderMap,
) -> Result<OwnedSemaphorePermit, Refused> {
    if !origin_allowed(node.config(), headers) {
        tracing::debug!(client_addr = %client, "connection refused: origin not allowed");
        return Err(Refused::Origin);
    }
    if !node.connection_limiter().admit(client) {
        Metrics::inc(&node.metrics().connections_rate_limited);
        tracing::debug!(
            client_addr = %client,
            "connection refused: too many new connections from this address"
        );
        return Err(Refused::Rate);
    }
    connections.try_acquire().ok_or_else(|| {
        Metrics::inc(&node.metrics().connections_refused);
        tracing::debug!(max = connections.max(), "connection refused: limit reached");
        Refused::Full
    })
}

/// The headers of a connection request that the application backend is told of: those named in
/// `proxy_http_headers` (case-insensitively), when a backend proxy is configured. Most
/// deployments forward none, and their connections keep nothing.
///
/// The headers naming the client's address are the server's word, not the client's: `X-Real-IP`
/// is the client's address as [`client_addr::client_ip`] found it; `X-Forwarded-For` and
/// `Forwarded` are extended with the peer, as a proxy does, when the peer is a trusted proxy, and
/// otherwise name the peer alone (what a client wrote there itself is dropped).
pub fn forwarded_headers(
    config: &Config,
    headers: &HeaderMap,
    peer: IpAddr,
    client: IpAddr,
) -> ClientHeaders {
    if config.proxy_http_headers.is_empty() || !config.uses_proxy() {
        return ClientHeaders::default();
    }
    let trusted = client_addr::is_trusted(peer, &config.trusted_proxies);
    let joined = |name: &str| -> Option<String> {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (trusted && !values.is_empty()).then(|| values.join(", "))
    };
    let mut pairs = Vec::new();
    for name in &config.proxy_http_headers {
        let address_header = match name.to_ascii_lowercase().as_str() {
            "x-real-ip" => Some(client.to_string()),
            "x-forwarded-for" => Some(match joined("x-forwarded-for") {
                Some(chain) => format!("{chain}, {peer}"),
                None => peer.to_string(),
            }),
            "forwarded" => {
                let hop = match peer {
                    IpAddr::V4(v4) => format!("for={v4}"),
                    IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
                };
                Some(match joined("forwarded") {
                    Some(chain) => format!("{chain}, {hop}"),
                    None => hop,
                })
            }
            _ => None,
        };
        if let Some(value) = address_header {
            pairs.push((name.clone(), value));
            continue;
        }
        for value in headers.get_all(name.as_str()) {
            if let Ok(value) = value.to_str() {
                pairs.push((name.clone(), value.to_string()));
            }
        }
    }
    ClientHeaders::new(pairs)
}

/// The answer to a connection request (a WebSocket handshake, a unidirectional stream) over the
/// connection limit: 503 before the upgrade or the stream, with
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

/// Browsers send `Origin`; other clients usually do not, and are not subject to this check.
/// Configured patterns decide; with none, development mode allows any origin and production
/// only the server's own host.
fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if !config.allowed_origins.is_empty() {
        return config.allowed_origins.iter().any(|pattern| {
            glob_match(&pattern.to_ascii_lowercase(), &origin.to_ascii_lowercase())
        });
    }
    if config.development() {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
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

    #[test]
    fn only_listed_headers_are_forwarded_and_only_to_a_backend() {
        let mut request = headers("http://a", "a");
        request.insert(header::COOKIE, "s=1".parse().unwrap());
        let mut config = Config {
            proxy_http_headers: vec!["cookie".into(), "Authorization".into()],
            ..Config::default()
        };
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            forwarded_headers(&config, &request, peer, peer)
                .iter()
                .count(),
            0
        );
        config.proxy_rpc_endpoint = Some("http://127.0.0.1:1/rpc".into());
        let kept = forwarded_headers(&config, &request, peer, peer);
        assert_eq!(kept.iter().collect::<Vec<_>>(), [("cookie", "s=1")]);
    }

    #[test]
    fn address_headers_are_the_servers_word() {
        let mut request = HeaderMap::new();
        request.insert("x-forwarded-for", "203.0.113.6".parse().unwrap());
        request.insert("x-real-ip", "203.0.113.6".parse().unwrap());
        request.insert("forwarded", "for=203.0.113.6".parse().unwrap());
        let mut config = Config {
            proxy_http_headers: vec![
                "X-Forwarded-For".into(),
                "X-Real-IP".into(),
                "Forwarded".into(),
            ],
            proxy_rpc_endpoint: Some("http://127.0.0.1:1/rpc".into()),
            ..Config::default()
        };
        let peer: IpAddr = "127.0.0.5".parse().unwrap();
        // An untrusted peer: what it wrote is dropped, the headers name the peer.
        let kept = forwarded_headers(&config, &request, peer, peer);
        assert_eq!(
            kept.iter().collect::<Vec<_>>(),
            [
                ("X-Forwarded-For", "127.0.0.5"),
                ("X-Real-IP", "127.0.0.5"),
                ("Forwarded", "for=127.0.0.5")
            ]
        );
        // A trusted proxy: its chain, extended with itself; the client as found.
        config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        let client: IpAddr = "203.0.113.6".parse().unwrap();
        let kept = forwarded_headers(&config, &request, peer, client);
        assert_eq!(
            kept.iter().collect::<Vec<_>>(),
            [
                ("X-Forwarded-For", "203.0.113.6, 127.0.0.5"),
                ("X-Real-IP", "203.0.113.6"),
                ("Forwarded", "for=203.0.113.6, for=127.0.0.5")
            ]
        );
    }
}

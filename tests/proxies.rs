//! Clients behind a proxy, over real sockets: whose address the per-address connection limit
//! counts (the peer, or the client a trusted proxy names), what the application backend is told
//! of it, and that the default limit admits a reconnect storm from one address.
//!
//! Clients differ by source address: every 127.x.y.z is this machine's loopback.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Sends a WebSocket upgrade request from `source` with `headers`; returns the status and the
/// socket (kept open by the caller, so upgraded connections stay connected).
async fn upgrade(server: SocketAddr, source: &str, headers: &[(&str, &str)]) -> (u16, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    let source: IpAddr = source.parse().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {server}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // The status line is all that is needed; reading byte by byte never reads past the head.
    while !head.ends_with(b"\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n == 1, "connection closed before a status line");
        head.push(byte[0]);
        assert!(head.len() < 1024, "status line too long");
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, stream)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_reconnect_storm_from_one_address_is_admitted() {
    let server = TestServer::start().await;
    let addr = server.addr;
    // 1,000 clients of one address (a NAT, a load generator, a proxy not configured as trusted)
    // reconnecting at once, as after a node restart: every one is let in.
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        storm.spawn(async move { upgrade(addr, "127.0.0.1", &[]).await });
    }
    let mut open = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(result) = storm.join_next().await {
        let (status, stream) = result.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        open.push(stream);
    }
    assert_eq!(statuses, [(101, 1000)].into(), "statuses and their counts");
    assert_eq!(
        metric(
            &server.metrics().await,
            "switchboard_connections_rate_limited_total"
        ),
        0
    );
    drop(open);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_counts_the_address_a_trusted_proxy_names_and_only_then() {
    let server = TestServer::with(|c| {
        c.connection_rate_per_ip = 1; // a burst of 2 per address
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let addr = server.addr;
    let mut open = Vec::new();
    let mut statuses = |results: Vec<(u16, TcpStream)>| -> Vec<u16> {
        results
            .into_iter()
            .map(|(status, stream)| {
                open.push(stream);
                status
            })
            .collect()
    };

    // Through the trusted proxy (127.0.0.1), each client named by one of the three headers.
    let mut results = Vec::new();
    for _ in 0..3 {
        results.push(upgrade(addr, "127.0.0.1", &[("X-Forwarded-For", "203.0.113.1")]).await);
    }
    assert_eq!(
        statuses(results),
        [101, 101, 429],
        "one client, named in X-Forwarded-For"
    );
    let mut results = Vec::new();
    for hops in ["198.51.100.9, 203.0.113.2", "203.0.113.1, 203.0.113.2"] {
        // What a client wrote itself (the left part) is not what counts: the proxy's hop is.
        results.push(upgrade(addr, "127.0.0.1", &[("X-Forwarded-For", hops)]).await);
    }
    results.push(upgrade(addr, "127.0.0.1", &[("X-Real-IP", "203.0.113.3")]).await);
    results.push(
        upgrade(
            addr,
            "127.0.0.1",
            &[("Forwarded", "for=203.0.113.4;proto=http")],
        )
        .await,
    );
    results.push(
        upgrade(
            addr,
            "127.0.0.1",
            &[("Forwarded", "for=\"[2001:db8::5]:4711\"")],
        )
        .await,
    );
    assert_eq!(
        statuses(results),
        [101, 101, 101, 101, 101],
        "other clients have their own budget"
    );

    // From a peer that is no trusted proxy the headers count for nothing: its own address does.
    let mut results = Vec::new();
    for n in 1..=3 {
        let spoofed = format!("192.0.2.{n}");
        results.push(
            upgrade(
                addr,
                "127.0.0.2",
                &[("X-Forwarded-For", &spoofed), ("X-Real-IP", &spoofed)],
            )
            .await,
        );
    }
    assert_eq!(
        statuses(results),
        [101, 101, 429],
        "an untrusted peer cannot pick its address"
    );
    // ... and another source address has its own budget.
    let (status, stream) = upgrade(addr, "127.0.0.3", &[]).await;
    assert_eq!(status, 101);
    open.push(stream);
    assert_eq!(
        metric(
            &server.metrics().await,
            "switchboard_connections_rate_limited_total"
        ),
        2
    );
    drop(open);
    server.stop().await;
}

/// A connect backend that records the address headers it is sent and lets everyone in.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/connect",
        post(move |headers: HeaderMap, Json(_): Json<Value>| {
            let record = record.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string()
                };
                record
                    .lock()
                    .unwrap()
                    .push((header("x-real-ip"), header("x-forwarded-for")));
                Json(json!({"result": {"user": "someone"}}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// Opens a WebSocket from `source` with `headers` and completes `connect`.
async fn connect_from(server: SocketAddr, source: &str, headers: &[(&str, &str)]) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let stream = socket.connect(server).await.unwrap();
    let mut request = format!("ws://{server}/connection/websocket")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let mut client = Client::from_stream(request, stream).await;
    let reply = client.connect(json!({})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_is_told_the_clients_address_never_a_spoofed_one() {
    let (backend, seen) = recording_backend().await;
    let server = TestServer::with(|c| {
        c.proxy_connect_endpoint = Some(format!("http://{backend}/connect"));
        c.proxy_http_headers = vec!["X-Real-IP".into(), "X-Forwarded-For".into()];
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let through_proxy = connect_from(
        server.addr,
        "127.0.0.1",
        &[("X-Forwarded-For", "203.0.113.7")],
    )
    .await;
    let spoofing = connect_from(
        server.addr,
        "127.0.0.4",
        &[
            ("X-Forwarded-For", "203.0.113.66"),
            ("X-Real-IP", "203.0.113.66"),
        ],
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (
                "203.0.113.7".to_string(),
                "203.0.113.7, 127.0.0.1".to_string()
            ),
            ("127.0.0.4".to_string(), "127.0.0.4".to_string()),
        ]
    );
    drop((through_proxy, spoofing));
    server.stop().await;
}

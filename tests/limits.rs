//! The connection limit and the open-file limit, over real sockets.

mod common;

use common::*;
use serde_json::json;
use switchboard::fd_limit::{raise_fd_limit, FdLimit, FD_HEADROOM};
use switchboard::transport::ConnectionLimit;
use switchboard::Config;
use tokio_tungstenite::tungstenite;

/// Opens a WebSocket expecting a refusal; returns the HTTP status and the JSON body.
async fn refused(url: &str) -> (u16, serde_json::Value) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("the handshake over the limit succeeded"),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            (status, serde_json::from_slice(&body).expect("a JSON body"))
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn over_the_limit_handshakes_get_503_and_open_connections_are_unharmed() {
    let server = TestServer::with(|c| c.max_connections = Some(3)).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = server.client().await;
        c.subscribe("limited").await;
        clients.push(c);
    }
    // Two refusals in a row: a refusal does not take a slot.
    for _ in 0..2 {
        let (status, body) = refused(&server.ws_url()).await;
        assert_eq!(status, 503);
        assert_eq!(
            body,
            json!({"error": {"code": 3504, "message": "connection limit"}})
        );
    }
    // The connections already open still work, both ways.
    let (status, _) = server
        .api("publish", json!({"channel": "limited", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 200);
    for c in &mut clients {
        assert_eq!(c.next_publication().await["pub"]["data"], json!({"n": 1}));
        let reply = c
            .call("rpc", json!({"method": "echo", "data": {"x": 1}}))
            .await;
        assert_eq!(reply["rpc"]["data"], json!({"x": 1}));
    }
    // The API is not subject to the WebSocket limit, and counts the refusals.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("switchboard_connections_refused_total 2"),
        "{metrics}"
    );
    // A slot frees when a connection ends, whichever way it ends.
    clients.pop().unwrap().drop_tcp();
    let url = server.ws_url();
    assert!(
        eventually(|| {
            let url = url.clone();
            async move { tokio_tungstenite::connect_async(&url).await.is_ok() }
        })
        .await,
        "a new connection is accepted once one closed"
    );
    server.stop().await;
}

#[test]
fn default_limit_follows_the_fd_limit() {
    let fds = FdLimit {
        soft: 20_000,
        hard: 20_000,
    };
    assert_eq!(
        ConnectionLimit::for_config(&Config::default(), fds).max(),
        (20_000 - FD_HEADROOM) as usize
    );
    let set = Config {
        max_connections: Some(10),
        ..Config::default()
    };
    assert_eq!(ConnectionLimit::for_config(&set, fds).max(), 10);
    let zero = Config {
        max_connections: Some(0),
        ..Config::default()
    };
    assert!(zero.validate().is_err());
}

#[tokio::test]
async fn server_start_raises_the_soft_fd_limit_to_the_hard_limit() {
    let server = TestServer::start().await;
    // The server has started (a client can connect), so its start-up has run.
    let _client = server.client().await;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_max != libc::RLIM_INFINITY {
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
    // Raising again changes nothing.
    assert_eq!(raise_fd_limit().soft, limit.rlim_cur);
    server.stop().await;
}

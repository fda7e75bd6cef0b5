//! The embedded web pages over real sockets: assets, the chat's config, and who may watch the
//! dashboard's event stream. (`tests/browser.rs` checks the pages themselves in chromium.)

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A GET request's raw response head (status line and headers) and body.
async fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Opens the dashboard's event stream; returns the status and, on 200, the first event's data
/// (otherwise the body).
async fn dashboard_events(addr: SocketAddr, query: &str) -> (u16, String) {
    let request = format!(
        "GET /dashboard/events{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("dashboard answered in time")
            .unwrap();
        seen.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        if status != 200 {
            // Error answers are small JSON bodies with a length.
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return (status, body.to_string());
            }
            continue;
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        if let Some(data) = body
            .lines()
            .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        {
            if body.contains("\n\n") || body.contains("\r\n\r\n") {
                return (status, data.to_string());
            }
        }
        if n == 0 {
            panic!("stream ended before an event: {text}");
        }
    }
}

#[tokio::test]
async fn pages_and_assets_are_served_from_the_binary() {
    let server = TestServer::start().await;
    let (status, head, body) = get(server.addr, "/chat", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(body.contains("/assets/centrifuge.js") && body.contains("/assets/chat.js"));
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no external URL in the page"
    );

    let (status, head, body) = get(server.addr, "/assets/centrifuge.js", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    let vendored = include_str!("../web/vendor/centrifuge.js");
    assert_eq!(body.len(), vendored.len(), "the vendored SDK bundle, whole");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an etag")
        .to_string();
    let (status, _, body) = get(
        server.addr,
        "/assets/centrifuge.js",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!((status, body.as_str()), (304, ""));

    for asset in ["style.css", "chat.js", "dashboard.js", "icon.svg"] {
        let (status, _, _) = get(server.addr, &format!("/assets/{asset}"), "").await;
        assert_eq!(status, 200, "{asset}");
    }
    assert_eq!(get(server.addr, "/assets/nope.js", "").await.0, 404);
    let (status, _, body) = get(server.addr, "/dashboard", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("/assets/dashboard.js"));
    server.stop().await;
}

#[tokio::test]
async fn front_page_describes_the_node_without_secrets() {
    let open = TestServer::start().await;
    let (status, head, body) = get(open.addr, "/", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'"));
    assert!(body.contains("/assets/index.js") && body.contains("href=\"/chat\""));
    assert_eq!(get(open.addr, "/assets/index.js", "").await.0, 200);
    let (status, _, body) = get(open.addr, "/front/config", "").await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["mode"], "development");
    assert_eq!(info["anonymous"], true);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["redis_shards"], 0);
    assert_eq!(info["redis"], "none");
    assert_eq!(info["api_key_required"], false);
    assert_eq!(info["websocket"], "/connection/websocket");
    open.stop().await;

    let secure = TestServer::with(|c| {
        c.token_hmac_secret = Some("front-secret".into());
        c.api_key = Some("front-api-key".into());
        c.admin_password = Some("front-password".into());
    })
    .await;
    let (status, _, body) = get(secure.addr, "/front/config", "").await;
    assert_eq!(status, 200);
    for secret in ["front-secret", "front-api-key", "front-password"] {
        assert!(!body.contains(secret), "{body}");
    }
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["mode"], "production");
    assert_eq!(info["anonymous"], false);
    assert_eq!(info["api_key_required"], true);
    secure.stop().await;
}

#[tokio::test]
async fn chat_config_tells_whether_a_token_is_needed() {
    let open = TestServer::start().await;
    let (status, _, body) = get(open.addr, "/chat/config", "").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["anonymous"], true);
    assert_eq!(config["websocket"], "/connection/websocket");
    assert_eq!(config["namespace"], "");
    let secured = TestServer::with(|c| {
        c.token_hmac_secret = Some("s".into());
        c.namespace = vec![switchboard::config::Namespace {
            name: "chat".into(),
            ..Default::default()
        }];
    })
    .await;
    let (_, _, body) = get(secured.addr, "/chat/config", "").await;
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["anonymous"], false);
    assert_eq!(config["namespace"], "chat");
    open.stop().await;
    secured.stop().await;
}

#[tokio::test]
async fn transports_left_out_answer_404_and_the_chat_page_is_told() {
    let server = TestServer::with(|c| c.transports = vec!["sse".into(), "uni_sse".into()]).await;
    let (_, _, body) = get(server.addr, "/chat/config", "").await;
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["websocket"], Value::Null);
    assert_eq!(config["http_stream"], Value::Null);
    assert_eq!(config["sse"], "/connection/sse");
    assert_eq!(config["emulation"], "/emulation");
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (path, headers) in [
        ("/connection/websocket", upgrade),
        ("/connection/uni_websocket", upgrade),
    ] {
        let (status, _, _) = get(server.addr, path, headers).await;
        assert_eq!(status, 404, "{path}");
    }
    for path in ["/connection/http_stream", "/connection/uni_http_stream"] {
        let (status, _) = http_raw(
            server.addr,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\
                 Connection: close\r\n\r\n{{}}"
            ),
        )
        .await;
        assert_eq!(status, 404, "{path}");
    }
    // The served ones still answer: uni_sse streams the connect push.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /connection/uni_sse?cf_connect=%7B%7D HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"connect\"") {
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("the connect push in time")
            .unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    server.stop().await;

    let unknown = switchboard::Config {
        transports: vec!["websocket".into(), "webtransport".into()],
        ..Default::default()
    };
    let error = unknown.validate().unwrap_err().to_string();
    assert!(
        error.contains("unknown transport \"webtransport\""),
        "{error}"
    );
}

#[tokio::test]
async fn dashboard_is_open_on_loopback_without_secrets_and_streams_snapshots() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("room").await;
    // Each lane of the timeline admits two spans per 10 ms: leave the publish a bucket of its own.
    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    client
        .call(
            "publish",
            json!({"channel": "room", "data": {"text": "hi"}}),
        )
        .await;
    let (_, _, body) = get(server.addr, "/dashboard/access", "").await;
    assert_eq!(body, r#"{"access":"open"}"#);
    let (status, data) = dashboard_events(server.addr, "").await;
    assert_eq!(status, 200);
    let snapshot: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(snapshot["connections"], 1);
    assert_eq!(snapshot["channels"], 1);
    assert_eq!(snapshot["top_channels"], json!([["room", 1]]));
    assert!(snapshot["counters"]["commands"].as_u64().unwrap() >= 3);
    assert!(snapshot["counters"]["publications"].as_u64().unwrap() >= 1);
    assert_eq!(snapshot["lanes"][0], "client commands");
    // The recent past of the timeline: the commands, the publication's history append and its
    // fan-out, as [lane, name, detail, start, duration, count].
    let spans = snapshot["spans"].as_array().unwrap();
    let has = |lane: u64, name: &str| {
        spans
            .iter()
            .any(|s| s[0].as_u64() == Some(lane) && s[1] == name)
    };
    assert!(
        has(0, "connect") && has(0, "subscribe") && has(0, "publish"),
        "{spans:?}"
    );
    assert!(has(1, "publication") && has(2, "append"), "{spans:?}");
    let fan_out = spans.iter().find(|s| s[1] == "publication").unwrap();
    assert_eq!(
        (fan_out[2].as_str(), fan_out[5].as_u64()),
        (Some("room"), Some(1))
    );
    server.stop().await;
}

#[tokio::test]
async fn dashboard_wants_the_admin_password_or_the_api_key_when_configured() {
    let server = TestServer::with(|c| {
        c.api_key = Some("the-api-key".into());
        c.admin_password = Some("the-password".into());
    })
    .await;
    let (status, body) = dashboard_events(server.addr, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = dashboard_events(server.addr, "?key=the-passwor").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        dashboard_events(server.addr, "?key=the-password").await.0,
        200
    );
    assert_eq!(
        dashboard_events(server.addr, "?key=the-api-key").await.0,
        200
    );
    // The page itself is served: it asks for the password.
    assert_eq!(get(server.addr, "/dashboard", "").await.0, 200);
    let (_, _, body) = get(server.addr, "/dashboard/access", "").await;
    assert_eq!(body, r#"{"access":"key"}"#);
    server.stop().await;
}

#[tokio::test]
async fn dashboard_is_disabled_on_a_public_address_without_secrets() {
    // The listener is on loopback, but the configured address is what the rule looks at.
    let server = TestServer::with(|c| {
        c.address = "0.0.0.0".parse().unwrap();
        c.insecure = true;
    })
    .await;
    let (status, body) = dashboard_events(server.addr, "").await;
    assert_eq!(status, 403);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--admin-password"),
        "{body}"
    );
    let (status, head, body) = get(server.addr, "/dashboard", "").await;
    assert_eq!(status, 403);
    assert!(head.contains("content-type: text/html"));
    assert!(body.contains("Dashboard disabled"));
    let (_, _, body) = get(server.addr, "/dashboard/access", "").await;
    assert_eq!(body, r#"{"access":"disabled"}"#);
    server.stop().await;
}

/// With nodes on one Redis, the dashboard shows the whole cluster beside its own node: live nodes
/// and their connections in all (from the nodes' announcements).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_counts_the_whole_cluster() {
    let redis = redis_server::RedisServer::start().await;
    let prefix = redis_server::unique_prefix();
    let node = |c: &mut switchboard::Config| {
        c.redis = vec![redis.url()];
        c.redis_prefix = prefix.clone();
    };
    let a = TestServer::with(node).await;
    let b = TestServer::with(node).await;
    let _on_a = [a.client().await, a.client().await];
    let _on_b = b.client().await;
    // Announcements are a few seconds apart: bounded retries.
    let mut last = Value::Null;
    let mut counted = false;
    for _ in 0..40 {
        let (status, data) = dashboard_events(a.addr, "").await;
        assert_eq!(status, 200, "{data}");
        last = serde_json::from_str(&data).unwrap();
        counted = last["connections"] == 2
            && last["cluster"]["nodes"] == 2
            && last["cluster"]["connections"] == 3;
        if counted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        counted,
        "the cluster figures never showed both nodes: {}",
        last["cluster"]
    );
    // On its own, a node shows no cluster figures.
    let alone = TestServer::start().await;
    let (_, data) = dashboard_events(alone.addr, "").await;
    let snapshot: Value = serde_json::from_str(&data).unwrap();
    assert!(snapshot.get("cluster").is_none(), "{snapshot}");
}

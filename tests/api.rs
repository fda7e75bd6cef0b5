//! The HTTP server API over real sockets.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let server = TestServer::with(|c| c.api_key = Some("k3y".into())).await;
    let body = json!({"channel": "c", "data": 1}).to_string();
    let (status, reply) = api_call(server.addr, "publish", &body, None).await;
    assert_eq!(status, 401);
    assert_eq!(reply["error"]["code"], 101);
    let (status, _) = api_call(server.addr, "publish", &body, Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, reply) = api_call(server.addr, "publish", &body, Some("k3y")).await;
    assert_eq!(status, 200);
    assert_eq!(reply["result"]["offset"], 1);
    // The other two places a key may come from.
    let request = "POST /api/info HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey k3y\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    assert_eq!(http_raw(server.addr, request).await.0, 200);
    let request = "POST /api/info?api_key=k3y HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(http_raw(server.addr, request).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn publish_and_broadcast_reach_subscribers_with_positions() {
    let server = TestServer::start().await;
    let mut a = server.sdk_subscriber("alpha").await;
    let mut b = server.sdk_subscriber("beta").await;
    let (status, reply) = server
        .api(
            "publish",
            json!({"channel": "alpha", "data": {"text": "hello"}}),
        )
        .await;
    assert_eq!(status, 200);
    let epoch = reply["result"]["epoch"].as_str().unwrap().to_string();
    assert_eq!(reply["result"]["offset"], 1);
    let p = a.next_publication().await;
    assert_eq!(p.data, json!({"text": "hello"}));
    assert!(p.info.is_none(), "API publications carry no client info");
    let (_, reply) = server
        .api(
            "broadcast",
            json!({"channels": ["alpha", "beta", ""], "data": {"n": 2}}),
        )
        .await;
    let responses = reply["result"]["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0]["result"], json!({"offset": 2, "epoch": epoch}));
    assert_eq!(responses[1]["result"]["offset"], 1);
    assert_eq!(responses[2]["error"]["code"], 107);
    assert_eq!(a.next_publication().await.offset, 2);
    assert_eq!(b.next_publication().await.data, json!({"n": 2}));
    // Pretty-printed JSON from a backend is compacted: a raw newline would split a frame.
    let (_, _) = api_call(
        server.addr,
        "publish",
        "{\"channel\": \"beta\",\n \"data\": {\n  \"multi\": \"line\"\n }\n}",
        None,
    )
    .await;
    assert_eq!(b.next_publication().await.data, json!({"multi": "line"}));
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let server = TestServer::start().await;
    let (status, reply) = api_call(server.addr, "publish", "{not json", None).await;
    assert_eq!(status, 400);
    assert_eq!(reply["error"]["code"], 107);
    let (status, reply) = api_call(server.addr, "publish", "{\"channel\":\"x\"}", None).await;
    assert_eq!(status, 400, "missing data: {reply}");
    let (status, reply) = server.api("teleport", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"]["code"], 104);
    let (status, reply) = server.api("disconnect", json!({"user": ""})).await;
    assert_eq!(status, 200);
    assert_eq!(reply["error"]["code"], 107);
    let (status, reply) = server
        .api(
            "disconnect",
            json!({"user": "u", "disconnect": {"code": 1, "reason": "x"}}),
        )
        .await;
    assert_eq!((status, reply["error"]["code"].as_u64()), (200, Some(107)));
    server.stop().await;
}

#[tokio::test]
async fn channels_info_and_presence() {
    let server = TestServer::with(|c| {
        c.namespace = vec![switchboard::config::Namespace {
            name: "chat".into(),
            ..Default::default()
        }]
    })
    .await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("chat:one").await;
    b.subscribe("chat:one").await;
    b.subscribe("news").await;
    let (_, reply) = server.api("channels", json!({})).await;
    assert_eq!(
        reply["result"]["channels"],
        json!({"chat:one": {"num_clients": 2}, "news": {"num_clients": 1}})
    );
    let (_, reply) = server.api("channels", json!({"pattern": "chat:*"})).await;
    assert_eq!(
        reply["result"]["channels"],
        json!({"chat:one": {"num_clients": 2}})
    );
    let (_, reply) = server.api("info", json!({})).await;
    let node = &reply["result"]["nodes"][0];
    assert_eq!(node["num_clients"], 2);
    assert_eq!(node["num_channels"], 2);
    assert_eq!(node["num_subs"], 3);
    let (_, reply) = server.api("presence", json!({"channel": "chat:one"})).await;
    let presence = reply["result"]["presence"].as_object().unwrap();
    assert!(presence.contains_key(&a.client_id) && presence.contains_key(&b.client_id));
    let (_, reply) = server
        .api("presence_stats", json!({"channel": "news"}))
        .await;
    assert_eq!(reply["result"], json!({"num_clients": 1, "num_users": 1}));
    server.stop().await;
}

#[tokio::test]
async fn server_side_subscribe_and_unsubscribe() {
    let server = TestServer::with(|c| c.token_hmac_secret = Some("s".into())).await;
    let token = switchboard::auth::make_hmac_token("s", "bob", 0).unwrap();
    let mut bob = Client::open(&server.ws_url()).await;
    bob.connect(json!({"token": token})).await;
    let (_, reply) = server
        .api(
            "subscribe",
            json!({"user": "bob", "channel": "inbox", "data": {"welcome": true}}),
        )
        .await;
    assert_eq!(reply, json!({"result": {}}));
    let push = bob.next_push().await;
    assert_eq!(push["channel"], "inbox");
    assert_eq!(push["subscribe"]["data"], json!({"welcome": true}));
    assert_eq!(push["subscribe"]["recoverable"], true);
    server
        .api("publish", json!({"channel": "inbox", "data": "mail"}))
        .await;
    assert_eq!(bob.next_publication().await["pub"]["data"], "mail");
    server
        .api("unsubscribe", json!({"user": "bob", "channel": "inbox"}))
        .await;
    loop {
        let push = bob.next_push().await;
        if let Some(u) = push.get("unsubscribe") {
            assert_eq!(*u, json!({"code": 2000, "reason": "server unsubscribe"}));
            break;
        }
    }
    server
        .api("publish", json!({"channel": "inbox", "data": "late"}))
        .await;
    assert!(bob.silent_for(Duration::from_millis(200)).await);
    server.stop().await;
}

#[tokio::test]
async fn disconnect_spares_the_whitelist_and_takes_custom_codes() {
    let server = TestServer::with(|c| c.token_hmac_secret = Some("s".into())).await;
    let token = switchboard::auth::make_hmac_token("s", "eve", 0).unwrap();
    let mut one = Client::open(&server.ws_url()).await;
    one.connect(json!({"token": token})).await;
    let mut two = Client::open(&server.ws_url()).await;
    two.connect(json!({"token": token})).await;
    let (_, reply) = server
        .api(
            "disconnect",
            json!({"user": "eve", "whitelist": [two.client_id], "disconnect": {"code": 4001, "reason": "moved"}}),
        )
        .await;
    assert_eq!(reply, json!({"result": {}}));
    assert_eq!(one.closed().await, (4001, "moved".into()));
    let r = two.call("rpc", json!({"method": "echo", "data": 1})).await;
    assert_eq!(r["rpc"]["data"], 1);
    server.stop().await;
}

#[tokio::test]
async fn history_and_batch() {
    let server = TestServer::start().await;
    for n in 1..=5 {
        server
            .api("publish", json!({"channel": "h", "data": {"n": n}}))
            .await;
    }
    let (_, reply) = server
        .api(
            "history",
            json!({"channel": "h", "limit": 2, "reverse": true}),
        )
        .await;
    let pubs = reply["result"]["publications"].as_array().unwrap();
    let offsets: Vec<u64> = pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![5, 4]);
    assert_eq!(reply["result"]["offset"], 5);
    let epoch = reply["result"]["epoch"].clone();
    let (_, reply) = server
        .api(
            "history",
            json!({"channel": "h", "limit": -1, "since": {"offset": 3, "epoch": epoch}}),
        )
        .await;
    assert_eq!(reply["result"]["publications"].as_array().unwrap().len(), 2);
    let (_, reply) = server
        .api(
            "history",
            json!({"channel": "h", "limit": 1, "since": {"offset": 3, "epoch": "gone"}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 112);
    let (_, reply) = server
        .api(
            "batch",
            json!({"commands": [
                {"history_remove": {"channel": "h"}},
                {"history": {"channel": "h", "limit": -1}},
                {"nope": {}},
            ]}),
        )
        .await;
    let replies = reply["replies"].as_array().unwrap();
    assert_eq!(replies[0], json!({"history_remove": {}}));
    assert_eq!(replies[1]["history"]["publications"], json!([]));
    assert_eq!(
        replies[1]["history"]["offset"], 5,
        "position outlives removal"
    );
    assert_eq!(replies[2]["error"]["code"], 104);
    server.stop().await;
}

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.subscribe("m").await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (status, body) = http_raw(server.addr, &get("/health")).await;
    assert_eq!((status, body.trim()), (200, "{}"));
    let (status, body) = http_raw(server.addr, &get("/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("switchboard_connections 1"), "{body}");
    assert!(body.contains("switchboard_subscriptions 1"), "{body}");
    assert!(body.contains("# TYPE switchboard_messages_sent_total counter"));
    server.stop().await;
}

/// `{"a":{"a":…1…}}`, `depth` objects deep: deeper than a `serde_json::Value` may be (128).
fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

#[tokio::test]
async fn deeply_nested_data_is_published_and_read_back() {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: HistoryPage,
    }
    #[derive(serde::Deserialize)]
    struct HistoryPage {
        publications: Vec<Stored>,
    }
    #[derive(serde::Deserialize)]
    struct Stored {
        data: Box<serde_json::value::RawValue>,
    }
    let server = TestServer::start().await;
    let data = nested(200);
    let body = format!("{{\"channel\": \"deep\", \"data\": {data}}}");
    let (status, reply) = api_call(server.addr, "publish", &body, None).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"]["offset"], 1);
    // The answer is read as raw JSON: a `Value` could not hold it either.
    let request = "{\"channel\": \"deep\", \"limit\": -1}";
    let request = format!(
        "POST /api/history HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{request}",
        request.len()
    );
    let (status, body) = http_raw(server.addr, &request).await;
    assert_eq!(status, 200, "{body}");
    let answer: Answer = serde_json::from_str(&body).expect("a history answer");
    assert_eq!(answer.result.publications.len(), 1);
    assert_eq!(answer.result.publications[0].data.get(), data);
    // The same through a batch.
    let batch = "{\"commands\": [{\"history\": {\"channel\": \"deep\", \"limit\": -1}}]}";
    let (status, reply) = api_call(server.addr, "batch", batch, None).await;
    assert_eq!(status, 200);
    assert!(reply.as_str().is_some_and(|r| r.contains(&data)), "{reply}");
    server.stop().await;
}

/// Writes `head` (and no more) to a new connection and reads one response within two seconds:
/// status and body (the body as far as its `Content-Length` says).
async fn answer_before_body(addr: std::net::SocketAddr, head: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let read = async {
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length || n == 0 {
                    return text;
                }
            } else if n == 0 {
                return text;
            }
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .expect("an answer before the body is sent");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_key_and_declared_length_are_checked_before_the_body_is_read() {
    let server = TestServer::with(|c| c.api_key = Some("k3y".into())).await;
    // Declares 4 MB and sends one byte: no key, so 401 at once, without waiting for the rest.
    let head = "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n{";
    let (status, reply) = answer_before_body(server.addr, head).await;
    assert_eq!(status, 401);
    assert_eq!(reply["error"]["code"], 101, "{reply}");
    // With the key, a declared 100 MiB is refused from the header, before any of it arrives.
    let head = "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: k3y\r\nContent-Length: 104857600\r\n\r\n";
    let (status, reply) = answer_before_body(server.addr, head).await;
    assert_eq!(status, 413);
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    // A good request still works.
    let body = json!({"channel": "c", "data": 1}).to_string();
    let (status, _) = api_call(server.addr, "publish", &body, Some("k3y")).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn channel_patterns_are_bounded() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.subscribe("chat-one").await;
    // The battery's pattern: 4 MB, under the body limit.
    let long = format!("*{}b", "a".repeat(4_000_000));
    let started = std::time::Instant::now();
    let (status, reply) = server.api("channels", json!({ "pattern": long })).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], 107);
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1024")),
        "{reply}"
    );
    assert!(started.elapsed() < WAIT);
    let (status, _) = server
        .api("channels", json!({ "pattern": "*".repeat(1025) }))
        .await;
    assert_eq!(status, 400);
    // At the bound, and a normal pattern: answered.
    let (status, reply) = server
        .api("channels", json!({ "pattern": "*".repeat(1024) }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        reply["result"]["channels"],
        json!({"chat-one": {"num_clients": 1}})
    );
    let (_, reply) = server.api("channels", json!({"pattern": "chat-?ne"})).await;
    assert_eq!(
        reply["result"]["channels"],
        json!({"chat-one": {"num_clients": 1}})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_batch_holds_at_most_a_thousand_commands() {
    let server = TestServer::start().await;
    let batch = |n: usize| {
        let command = json!({"presence_stats": {"channel": "b"}});
        json!({ "commands": vec![command; n] })
    };
    let (status, reply) = server.api("batch", batch(1001)).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], 107);
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1000")),
        "{reply}"
    );
    let (status, reply) = server.api("batch", batch(1000)).await;
    assert_eq!(status, 200);
    let replies = reply["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 1000);
    assert_eq!(
        replies[999],
        json!({"presence_stats": {"num_clients": 0, "num_users": 0}})
    );
    server.stop().await;
}

#[tokio::test]
async fn idle_and_slow_http_connections_are_closed() {
    let server = TestServer::with(|c| c.stale_timeout = 1).await;
    // Reads until the server closes the socket (end of stream or reset), within a bound.
    async fn closed_by_server(mut stream: TcpStream) {
        let mut buffer = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = stream.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server closed the connection in time");
    }
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /health HT").await.unwrap();
    let silent = TcpStream::connect(server.addr).await.unwrap();
    // A WebSocket, once upgraded, is not bound by the request-head timeout.
    let mut client = server.client().await;
    closed_by_server(half).await;
    closed_by_server(silent).await;
    let reply = client
        .call("rpc", json!({"method": "echo", "data": 7}))
        .await;
    assert_eq!(reply["rpc"]["data"], 7);
    // Requests still get answers.
    let (status, _) = server.api("info", json!({})).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_broadcast_to_many_channels_answers_every_channel() {
    let server = TestServer::start().await;
    let mut last = server.sdk_subscriber("many-499").await;
    let channels: Vec<String> = (0..500).map(|i| format!("many-{i}")).collect();
    let (status, reply) = server
        .api("broadcast", json!({"channels": channels, "data": {"n": 1}}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let responses = reply["result"]["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 500);
    // One answer per channel (each its first publication), at most 64 published at once.
    assert!(
        responses.iter().all(|r| r["result"]["offset"] == 1),
        "{reply}"
    );
    assert_eq!(last.next_publication().await.data["n"], 1);
    server.stop().await;
}

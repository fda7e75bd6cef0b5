//! The unidirectional transports over real sockets: `uni_websocket`, `uni_sse` and
//! `uni_http_stream` each connect (anonymously in development mode, and with a token naming
//! channels), get the connect push, the publications made through the server API in order and
//! pings, and recover what they missed when they reconnect with their position. Bad input gets a
//! 400 (or, on WebSocket, close code 3501); `curl -N` reads the HTTP stream.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::http_stream::{urlencode, HttpStream};
use common::{TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "uni-transports-test-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    WebSocket,
    Sse,
    HttpStream,
}

const KINDS: [Kind; 3] = [Kind::WebSocket, Kind::Sse, Kind::HttpStream];

/// A unidirectional client: the pushes it received, in order.
enum UniClient {
    Ws(tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>),
    /// The body of an HTTP response, chunked; SSE or JSON lines.
    Http(HttpStream),
}

/// What the client read next.
#[derive(Debug)]
enum Read {
    Push(Value),
    /// The server ended the connection (close frame code on WebSocket).
    Ended(Option<u16>),
}

impl UniClient {
    async fn open(addr: SocketAddr, kind: Kind, request: &Value) -> UniClient {
        match kind {
            Kind::WebSocket => {
                let url = format!("ws://{addr}/connection/uni_websocket");
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                ws.send(Message::text(request.to_string())).await.unwrap();
                UniClient::Ws(ws)
            }
            Kind::Sse => {
                let query = urlencode(&request.to_string());
                let head = format!(
                    "GET /connection/uni_sse?cf_connect={query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
                );
                Self::http(addr, head, true).await
            }
            Kind::HttpStream => {
                let body = request.to_string();
                let head = format!(
                    "POST /connection/uni_http_stream HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                Self::http(addr, head, false).await
            }
        }
    }

    async fn http(addr: SocketAddr, request: String, sse: bool) -> UniClient {
        UniClient::Http(HttpStream::open(addr, &request, sse).await)
    }

    /// The next push or the end, within the test's wait.
    async fn read(&mut self) -> Read {
        tokio::time::timeout(WAIT, self.read_unbounded())
            .await
            .expect("the server sent something in time")
    }

    async fn read_unbounded(&mut self) -> Read {
        match self {
            UniClient::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return Read::Push(serde_json::from_str(&text).unwrap())
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Read::Ended(frame.map(|f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Read::Ended(None),
                }
            },
            UniClient::Http(stream) => match stream.next().await {
                Some(push) => Read::Push(push),
                None => Read::Ended(None),
            },
        }
    }

    /// The next push, which must come.
    async fn push(&mut self) -> Value {
        match self.read().await {
            Read::Push(push) => push,
            Read::Ended(code) => panic!("the connection ended ({code:?}) instead of a push"),
        }
    }

    /// The next publication on any channel, skipping pings and other pushes.
    async fn publication(&mut self) -> Value {
        loop {
            let push = self.push().await;
            if push.get("pub").is_some() {
                return push;
            }
        }
    }
}

fn token(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn publish(server: &TestServer, channel: &str, data: Value) -> Value {
    let (status, reply) = server
        .api("publish", json!({ "channel": channel, "data": data }))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.get("error").is_none(), "{reply}");
    reply["result"].clone()
}

/// Waits until `channel` has `n` subscribers (a connection's subscriptions take effect just
/// after its connect push).
async fn subscribers(server: &TestServer, channel: &str, n: u64) {
    let ok = common::eventually(|| async {
        let (_, reply) = server.api("channels", json!({})).await;
        // A channel without subscribers is not listed.
        reply["result"]["channels"][channel]["num_clients"]
            .as_u64()
            .unwrap_or(0)
            == n
    })
    .await;
    assert!(ok, "{channel} never had {n} subscribers");
}

#[tokio::test]
async fn anonymous_clients_get_the_connect_push_publications_in_order_and_pings() {
    let server = TestServer::with(|c| c.ping_interval = 1).await;
    for kind in KINDS {
        let channel = format!("news-{kind:?}");
        let mut subs = serde_json::Map::new();
        subs.insert(channel.clone(), json!({}));
        let mut client = UniClient::open(server.addr, kind, &json!({ "subs": subs })).await;
        let connect = client.push().await;
        let result = &connect["connect"];
        assert!(result["client"].is_string(), "{kind:?}: {connect}");
        assert!(result["subs"][&channel].is_object(), "{kind:?}: {connect}");
        assert_eq!(result["ping"], 1, "{kind:?}: {connect}");
        assert!(
            result.get("pong").is_none(),
            "no pong on {kind:?}: {connect}"
        );
        subscribers(&server, &channel, 1).await;
        for n in 1..=3 {
            publish(&server, &channel, json!({ "n": n })).await;
        }
        for n in 1..=3 {
            let push = client.publication().await;
            assert_eq!(push["channel"], channel.as_str(), "{kind:?}: {push}");
            assert_eq!(push["pub"]["data"]["n"], n, "{kind:?}: {push}");
        }
        // Pings are empty pushes, and need no answer: the connection stays open after several.
        for _ in 0..2 {
            loop {
                if client.push().await == json!({}) {
                    break;
                }
            }
        }
        publish(&server, &channel, json!({ "n": 4 })).await;
        assert_eq!(client.publication().await["pub"]["data"]["n"], 4);
    }
}

#[tokio::test]
async fn token_channels_are_subscribed_and_missed_publications_recovered_on_reconnect() {
    let server = TestServer::with(|c| c.token_hmac_secret = Some(SECRET.into())).await;
    for kind in KINDS {
        let channel = format!("feed-{kind:?}");
        let request = json!({ "token": token(json!({ "sub": "ann", "channels": [channel] })) });
        let mut client = UniClient::open(server.addr, kind, &request).await;
        let connect = client.push().await;
        let sub = connect["connect"]["subs"][&channel].clone();
        assert!(sub.is_object(), "{kind:?}: {connect}");
        let epoch = sub["epoch"].as_str().expect("an epoch").to_string();
        subscribers(&server, &channel, 1).await;
        let mut offset = 0;
        for n in 1..=2 {
            publish(&server, &channel, json!({ "n": n })).await;
        }
        for n in 1..=2 {
            let push = client.publication().await;
            assert_eq!(push["pub"]["data"]["n"], n, "{kind:?}: {push}");
            offset = push["pub"]["offset"].as_u64().expect("an offset");
        }
        drop(client);
        subscribers(&server, &channel, 0).await;
        for n in 3..=4 {
            publish(&server, &channel, json!({ "n": n })).await;
        }
        let mut subs = serde_json::Map::new();
        subs.insert(
            channel.clone(),
            json!({ "recover": true, "offset": offset, "epoch": epoch }),
        );
        let request = json!({ "token": request["token"], "subs": subs });
        let mut client = UniClient::open(server.addr, kind, &request).await;
        let connect = client.push().await;
        let sub = &connect["connect"]["subs"][&channel];
        assert_eq!(sub["recovered"], true, "{kind:?}: {connect}");
        let missed: Vec<&Value> = sub["publications"]
            .as_array()
            .expect("recovered publications")
            .iter()
            .map(|p| &p["data"]["n"])
            .collect();
        assert_eq!(missed, [&json!(3), &json!(4)], "{kind:?}: {connect}");
        subscribers(&server, &channel, 1).await;
        publish(&server, &channel, json!({ "n": 5 })).await;
        assert_eq!(client.publication().await["pub"]["data"]["n"], 5);
    }
}

#[tokio::test]
async fn an_invalid_token_gets_a_disconnect_push_and_the_end() {
    let server = TestServer::with(|c| c.token_hmac_secret = Some(SECRET.into())).await;
    for kind in KINDS {
        let mut client =
            UniClient::open(server.addr, kind, &json!({ "token": "not-a-token" })).await;
        let push = client.push().await;
        assert_eq!(push["disconnect"]["code"], 3500, "{kind:?}: {push}");
        match client.read().await {
            Read::Ended(code) if kind == Kind::WebSocket => assert_eq!(code, Some(3500)),
            Read::Ended(_) => {}
            Read::Push(other) => panic!("{kind:?}: a push after the disconnect: {other}"),
        }
    }
}

#[tokio::test]
async fn shutdown_sends_the_disconnect_push() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for kind in KINDS {
        let mut client = UniClient::open(server.addr, kind, &json!({})).await;
        assert!(client.push().await.get("connect").is_some());
        clients.push(client);
    }
    server.shutdown.cancel();
    for mut client in clients {
        let push = loop {
            let push = client.push().await;
            if push != json!({}) {
                break push;
            }
        };
        assert_eq!(push["disconnect"]["code"], 3001, "{push}");
    }
}

#[tokio::test]
async fn malformed_connect_requests_are_refused() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let bad = urlencode("{not json");
    let sse = format!(
        "GET /connection/uni_sse?cf_connect={bad} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = common::http_raw(addr, &sse).await;
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"]["code"].is_number(), "{body}");
    for path in ["uni_http_stream", "uni_sse"] {
        let post = format!(
            "POST /connection/{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nConnection: close\r\n\r\n[1,2"
        );
        let (status, body) = common::http_raw(addr, &post).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"error\""), "{path}: {body}");
    }
    let url = format!("ws://{addr}/connection/uni_websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    let mut client = UniClient::Ws(ws);
    assert_eq!(client.push().await["disconnect"]["code"], 3501);
    assert!(matches!(client.read().await, Read::Ended(Some(3501))));
    // The server is unharmed.
    let mut client = UniClient::open(addr, Kind::HttpStream, &json!({})).await;
    assert!(client.push().await.get("connect").is_some());
}

#[tokio::test]
async fn metrics_count_open_connections_by_transport() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for kind in KINDS {
        let mut client = UniClient::open(server.addr, kind, &json!({})).await;
        client.push().await;
        clients.push(client);
    }
    let bidirectional = server.client().await;
    let metrics = server.metrics().await;
    for name in ["websocket", "uni_websocket", "uni_sse", "uni_http_stream"] {
        let line = format!("switchboard_transport_connections{{transport=\"{name}\"}} 1");
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
    drop(clients);
    drop(bidirectional);
    let gone = common::eventually(|| async {
        server
            .metrics()
            .await
            .contains("switchboard_transport_connections{transport=\"uni_sse\"} 0")
    })
    .await;
    assert!(gone, "the uni_sse connection is still counted");
}

/// `curl -N` on `uni_http_stream` (the connect request POSTed) and on `uni_sse` (in the URL's
/// `cf_connect`): the pushes it prints, one JSON object per line (`data: ` lines on SSE).
async fn curl_reads_publications(sse: bool) {
    let server = TestServer::start().await;
    let channel = if sse { "curl-sse" } else { "curl-stream" };
    let request = json!({ "subs": { channel: {} } }).to_string();
    let mut curl = tokio::process::Command::new("curl");
    curl.args(["-sS", "-N"]);
    if sse {
        curl.arg(format!(
            "http://{}/connection/uni_sse?cf_connect={}",
            server.addr,
            urlencode(&request)
        ));
    } else {
        curl.args(["-X", "POST", "-d", &request])
            .arg(format!("http://{}/connection/uni_http_stream", server.addr));
    }
    let mut child = curl
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs (test.sh installs it)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("curl printed a line in time")
            .unwrap()
            .expect("curl is still reading");
        let json = if sse {
            match line.strip_prefix("data: ") {
                Some(json) => json.to_string(),
                None => continue,
            }
        } else {
            line
        };
        break serde_json::from_str::<Value>(&json).unwrap();
    };
    assert!(next().await.get("connect").is_some());
    subscribers(&server, channel, 1).await;
    for n in 1..=2 {
        publish(&server, channel, json!({ "n": n })).await;
    }
    for n in 1..=2 {
        let push = loop {
            let push = next().await;
            if push.get("pub").is_some() {
                break push;
            }
        };
        assert_eq!(push["pub"]["data"]["n"], n, "{push}");
    }
    child.kill().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

#[tokio::test]
async fn curl_reads_publications_from_the_http_stream() {
    curl_reads_publications(false).await;
}

#[tokio::test]
async fn curl_reads_publications_from_sse() {
    curl_reads_publications(true).await;
}

#[tokio::test]
async fn the_connect_request_may_come_in_the_url_on_websocket_and_as_a_body_on_sse() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let request = json!({ "subs": { "alt": {} } });
    let url = format!(
        "ws://{addr}/connection/uni_websocket?cf_connect={}",
        urlencode(&request.to_string())
    );
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut by_url = UniClient::Ws(ws);
    let body = request.to_string();
    let head = format!(
        "POST /connection/uni_sse HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut by_post = UniClient::http(addr, head, true).await;
    for client in [&mut by_url, &mut by_post] {
        let connect = client.push().await;
        assert!(connect["connect"]["subs"]["alt"].is_object(), "{connect}");
    }
    subscribers(&server, "alt", 2).await;
    publish(&server, "alt", json!("both")).await;
    for client in [&mut by_url, &mut by_post] {
        assert_eq!(client.publication().await["pub"]["data"], "both");
    }
}

#[tokio::test]
async fn the_connection_limit_refuses_unidirectional_clients_too() {
    let server = TestServer::with(|c| c.max_connections = Some(1)).await;
    let mut first = UniClient::open(server.addr, Kind::HttpStream, &json!({})).await;
    assert!(first.push().await.get("connect").is_some());
    let addr = server.addr;
    let post = format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    let (status, body) = common::http_raw(addr, &post).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("3504"), "{body}");
    let sse =
        format!("GET /connection/uni_sse HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    assert_eq!(common::http_raw(addr, &sse).await.0, 503);
}

#[tokio::test]
async fn a_unidirectional_client_that_stops_reading_is_disconnected_as_slow() {
    let server = TestServer::with(|c| {
        c.client_queue_max_bytes = 256 * 1024;
        c.max_message_size = 256 * 1024;
        c.client_command_rate = 0;
        c.history_size = 0;
    })
    .await;
    // A reader with a tiny receive buffer that takes the connect push, then stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let body = r#"{"subs":{"feed":{}}}"#;
    let head = format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let n = tokio::time::timeout(WAIT, stream.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains(" 200 "));
    subscribers(&server, "feed", 1).await;
    // 8 MB of publications, more than socket buffers hold.
    let mut publisher = server.client().await;
    let payload = "p".repeat(8000);
    for batch in 0..100u32 {
        let frame: Vec<String> = (1..=10)
            .map(|i| {
                let n = batch * 10 + i;
                json!({"id": n, "publish": {"channel": "feed", "data": {"n": n, "pad": payload}}})
                    .to_string()
            })
            .collect();
        publisher.send_raw(&frame.join("\n")).await;
        publisher.reply_to(batch * 10 + 10).await;
    }
    subscribers(&server, "feed", 0).await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("switchboard_slow_disconnects_total 1"),
        "{metrics}"
    );
    drop(stream);
}

//! The bidirectional HTTP fallbacks over real sockets: a session opened with
//! `POST /connection/http_stream` or `GET /connection/sse` gets its replies and pushes on the
//! stream and its commands through `POST /emulation` — here, or through another node over Redis.
//! The same session as WebSocket: pings and pongs, recovery, the disconnect the server decides
//! (a `disconnect` push, then the end of the stream); bad requests get clear statuses and harm
//! nobody. (centrifuge-js over both transports, in chromium: `tests/browser.rs`.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::redis_server::{unique_prefix, RedisServer};
use common::{api_call, eventually, Client, TestServer};
use serde_json::{json, Value};

const SECRET: &str = "emulation-test-secret";

use switchboard_client::raw::EmulationKind as Kind;

const KINDS: [Kind; 2] = [Kind::HttpStream, Kind::Sse];

/// A client over an emulation transport: the client crate's wire-level session, failing the
/// test on any error.
struct Emulated(switchboard_client::raw::Emulated);

impl Emulated {
    /// Opens the stream with a `connect` (with `connect` as its body) and reads the connect reply.
    async fn open(addr: SocketAddr, kind: Kind, connect: Value) -> (Emulated, Value) {
        let (mut session, connected) = switchboard_client::raw::Emulated::open(addr, kind, connect)
            .await
            .expect("a session and its connect reply");
        session.stream.set_wait(common::WAIT);
        (Emulated(session), connected)
    }

    /// Posts `commands` for this session to `/emulation` on `addr`; returns the status.
    async fn post(&self, addr: SocketAddr, commands: &str) -> u16 {
        self.0.post_to(addr, commands).await.expect("an answer")
    }

    /// Sends one command through `addr` and waits for its reply on the stream, keeping order.
    async fn call_via(&mut self, addr: SocketAddr, key: &str, body: Value) -> Value {
        self.0.call_via(addr, key, body).await.expect("the reply")
    }

    /// The next message that is not a ping.
    async fn next_push(&mut self) -> Option<Value> {
        self.0.next_push().await.expect("a message in time")
    }

    /// The next message on the stream, pings included; `None` when it ended.
    async fn next_message(&mut self) -> Option<Value> {
        self.0.stream.next().await.expect("a message in time")
    }
}

/// A POST without an API key; status and body.
async fn api_free_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    switchboard_client::raw::http_post(addr, path, body, common::WAIT)
        .await
        .expect("an HTTP answer")
}

fn token(user: &str) -> String {
    switchboard::auth::make_hmac_token(SECRET, user, 3600).unwrap()
}

async fn server() -> TestServer {
    TestServer::with(|c| {
        c.token_hmac_secret = Some(SECRET.into());
        c.insecure = true;
        common::open_channels(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_through_emulation_requests_and_answers_come_on_the_stream() {
    let server = server().await;
    for kind in KINDS {
        let channel = format!("news-{kind:?}");
        let (mut client, connected) = Emulated::open(server.addr, kind, json!({})).await;
        assert!(!connected["client"].as_str().unwrap().is_empty());
        let r = client
            .call_via(server.addr, "subscribe", json!({"channel": channel}))
            .await;
        assert!(r.get("error").is_none(), "{kind:?}: {r}");
        let published = server
            .api(
                "publish",
                json!({"channel": channel, "data": {"kind": format!("{kind:?}")}}),
            )
            .await;
        assert_eq!(published.0, 200);
        let push = client.next_push().await.unwrap();
        assert_eq!(push["push"]["pub"]["data"]["kind"], format!("{kind:?}"));
        let r = client
            .call_via(
                server.addr,
                "publish",
                json!({"channel": channel, "data": "from me"}),
            )
            .await;
        assert!(r.get("error").is_none(), "{r}");
        let push = client.next_push().await.unwrap();
        assert_eq!(push["push"]["pub"]["data"], "from me");
        let r = client
            .call_via(
                server.addr,
                "rpc",
                json!({"method": "echo", "data": {"n": 1}}),
            )
            .await;
        assert_eq!(r["rpc"]["data"]["n"], 1, "{r}");
        let r = client
            .call_via(server.addr, "presence", json!({"channel": channel}))
            .await;
        assert_eq!(
            r["presence"]["presence"].as_object().unwrap().len(),
            1,
            "{r}"
        );
        let r = client
            .call_via(
                server.addr,
                "history",
                json!({"channel": channel, "limit": 10}),
            )
            .await;
        assert_eq!(
            r["history"]["publications"].as_array().unwrap().len(),
            2,
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_through_emulation_and_keep_the_session() {
    let server = TestServer::with(|c| {
        c.ping_interval = 1;
        c.pong_timeout = 1;
    })
    .await;
    for kind in KINDS {
        let (mut client, connected) = Emulated::open(server.addr, kind, json!({})).await;
        assert_eq!(connected["pong"], true);
        // Three pings in a row, each answered: had a pong not reached the session, it would have
        // been closed (3012) before the next ping.
        for _ in 0..3 {
            let message = client.next_message().await.expect("a ping");
            assert_eq!(message, json!({}), "{kind:?}");
            assert_eq!(client.post(server.addr, "{}").await, 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_recovers_what_the_old_one_missed() {
    let server = server().await;
    for kind in KINDS {
        let channel = format!("ledger-{kind:?}");
        let (mut client, _) = Emulated::open(server.addr, kind, json!({})).await;
        let r = client
            .call_via(
                server.addr,
                "subscribe",
                json!({"channel": channel, "recover": true}),
            )
            .await;
        let epoch = r["subscribe"]["epoch"].clone();
        let offset = r["subscribe"]["offset"].as_u64().unwrap_or(0);
        drop(client); // the network drops the stream
        for n in 0..3 {
            server
                .api("publish", json!({"channel": channel, "data": n}))
                .await;
        }
        let (mut client, _) = Emulated::open(server.addr, kind, json!({})).await;
        let r = client
            .call_via(
                server.addr,
                "subscribe",
                json!({"channel": channel, "recover": true, "epoch": epoch, "offset": offset}),
            )
            .await;
        assert_eq!(r["subscribe"]["recovered"], true, "{r}");
        let data: Vec<Value> = r["subscribe"]["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["data"].clone())
            .collect();
        assert_eq!(data, [json!(0), json!(1), json!(2)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_a_stream_with_a_disconnect_push() {
    let server = server().await;
    for kind in KINDS {
        let (mut client, connected) =
            Emulated::open(server.addr, kind, json!({"token": token("erin")})).await;
        assert!(!connected["client"].as_str().unwrap().is_empty());
        let (status, _) = server
            .api(
                "disconnect",
                json!({"user": "erin", "disconnect": {"code": 3011, "reason": "move along"}}),
            )
            .await;
        assert_eq!(status, 200);
        let push = client.next_push().await.expect("the disconnect push");
        assert_eq!(push["push"]["disconnect"]["code"], 3011, "{push}");
        assert_eq!(push["push"]["disconnect"]["reason"], "move along");
        assert_eq!(client.next_message().await, None, "the stream ends");
        // Commands for the ended session: it is gone from a running node.
        assert!(
            eventually(|| async { client.post(server.addr, "{}").await == 204 }).await,
            "an ended session's commands get 204"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_emulation_requests_are_refused_and_harm_nobody() {
    let server = TestServer::with(|c| c.max_message_size = 4096).await;
    let (mut honest, _) = Emulated::open(server.addr, Kind::HttpStream, json!({})).await;
    honest
        .call_via(server.addr, "subscribe", json!({"channel": "calm"}))
        .await;

    let (status, body) = api_free_post(server.addr, "/emulation", "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let big = json!({"session": "s", "node": "n", "data": "x".repeat(8192)}).to_string();
    let (status, body) = api_free_post(server.addr, "/emulation", &big).await;
    assert_eq!(status, 413, "{body}");
    let unknown_node = json!({"session": "s", "node": "no-such-node", "data": "{}"}).to_string();
    let (status, body) = api_free_post(server.addr, "/emulation", &unknown_node).await;
    assert_eq!(status, 404, "{body}");
    let unknown_session =
        json!({"session": "no-such-session", "node": honest.0.node, "data": "{}"}).to_string();
    assert_eq!(
        api_free_post(server.addr, "/emulation", &unknown_session)
            .await
            .0,
        204
    );
    // First commands over the limit, or not UTF-8.
    let first = "x".repeat(8192);
    let request = format!(
        "POST /connection/http_stream HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        server.addr,
        first.len()
    );
    assert_eq!(common::http_raw(server.addr, &request).await.0, 413);
    // Commands that are not JSON close that session (3501), as on WebSocket.
    let (mut rude, _) = Emulated::open(server.addr, Kind::Sse, json!({})).await;
    assert_eq!(rude.post(server.addr, "not json").await, 200);
    let push = rude.next_push().await.expect("the disconnect push");
    assert_eq!(push["push"]["disconnect"]["code"], 3501, "{push}");
    assert_eq!(rude.next_message().await, None);

    // The honest client is still served.
    server
        .api("publish", json!({"channel": "calm", "data": "still here"}))
        .await;
    let push = honest.next_push().await.unwrap();
    assert_eq!(push["push"]["pub"]["data"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_to_another_node_reaches_the_session_through_redis() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let node = |c: &mut switchboard::Config| {
        c.redis = vec![redis.url()];
        c.redis_prefix = prefix.clone();
        c.token_hmac_secret = Some(SECRET.into());
        c.insecure = true;
    };
    let holder = TestServer::with(node).await;
    let other = TestServer::with(node).await;
    let (mut client, _) = Emulated::open(holder.addr, Kind::HttpStream, json!({})).await;
    // Forwarding is ready once the holder hears the other node's control messages (its Redis
    // subscription to them is made as it starts): a server-side subscribe sent through the other
    // node reaches a probe client of the holder.
    let mut probe = Client::open(&holder.ws_url()).await;
    probe.connect(json!({"token": token("probe")})).await;
    let mut ready = false;
    for attempt in 0..40 {
        let channel = format!("probe-{attempt}");
        other
            .api("subscribe", json!({"user": "probe", "channel": channel}))
            .await;
        let heard = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                if let common::Event::Message(m) = probe.next_event().await {
                    if m["push"].get("subscribe").is_some() {
                        return;
                    }
                }
            }
        })
        .await;
        if heard.is_ok() {
            ready = true;
            break;
        }
    }
    assert!(
        ready,
        "the holder never heard the other node's control messages"
    );
    let holder_uid = client.0.node.clone();
    assert!(
        eventually(|| async {
            let (_, info) = api_call(other.addr, "info", "{}", None).await;
            info["result"]["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().any(|n| n["uid"] == holder_uid.as_str()))
        })
        .await,
        "the holder never appeared in the other node's /api/info"
    );
    // Every command goes to the node that does not hold the session.
    let r = client
        .call_via(other.addr, "subscribe", json!({"channel": "relay"}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let r = client
        .call_via(
            other.addr,
            "publish",
            json!({"channel": "relay", "data": "via the other node"}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let push = client.next_push().await.unwrap();
    assert_eq!(push["push"]["pub"]["data"], "via the other node");
    // A node id nobody has is refused by either node.
    let unknown = json!({"session": client.0.session, "node": "gone", "data": "{}"}).to_string();
    assert_eq!(
        api_free_post(other.addr, "/emulation", &unknown).await.0,
        404
    );
}

/// A client that closes its stream ends its session (its socket is read for the end even though
/// nothing else comes on it): its presence goes, the transport's gauge drops, and `/emulation`
/// answers 204 for its session id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_its_stream_ends_its_session() {
    let server = server().await;
    for (kind, name) in [(Kind::HttpStream, "http_stream"), (Kind::Sse, "sse")] {
        let channel = format!("leaving-{name}");
        let (mut client, _) = Emulated::open(server.addr, kind, json!({})).await;
        let r = client
            .call_via(server.addr, "subscribe", json!({"channel": channel}))
            .await;
        assert!(r.get("error").is_none(), "{kind:?}: {r}");
        let gauge = format!("switchboard_transport_connections{{transport=\"{name}\"}}");
        assert!(server.metrics().await.contains(&format!("{gauge} 1")));
        let commands = json!({"session": client.0.session, "node": client.0.node, "data": "{}"});
        drop(client);
        let addr = server.addr;
        let presence_empty = eventually(|| async {
            let (status, r) = server.api("presence", json!({"channel": channel})).await;
            status == 200
                && r["result"]["presence"]
                    .as_object()
                    .is_some_and(|p| p.is_empty())
        })
        .await;
        assert!(
            presence_empty,
            "{kind:?}: the closed session is still present"
        );
        assert!(server.metrics().await.contains(&format!("{gauge} 0")));
        let (status, _) = api_free_post(addr, "/emulation", &commands.to_string()).await;
        assert_eq!(status, 204, "{kind:?}");
    }
}

/// Reads from `stream` until `done` holds for what was read (or the stream ends), within
/// [`common::WAIT`].
async fn read_until(stream: &mut tokio::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        while !done(&String::from_utf8_lossy(&read)) {
            match stream.read(&mut buffer).await.expect("the socket reads") {
                0 => break,
                n => read.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(common::WAIT, reading)
        .await
        .expect("the server answered in time");
    String::from_utf8(read).expect("UTF-8")
}

/// Opens `GET /connection/sse` with a `connect` command over a raw socket, as HTTP/`version`.
async fn raw_sse(addr: SocketAddr, version: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let connect = switchboard_client::raw::urlencode(r#"{"id":1,"connect":{}}"#);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /connection/sse?cf_connect={connect} HTTP/{version}\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// An HTTP/1.1 stream, written by the session on the socket itself: a complete head (the
/// caching headers, a date, chunked framing) and chunks whose sizes are right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_1_stream_is_chunked_with_its_whole_head() {
    let server = server().await;
    let mut stream = raw_sse(server.addr, "1.1").await;
    let text = read_until(&mut stream, |t| {
        t.split_once("\r\n\r\n")
            .is_some_and(|(_, body)| body.contains("\n\n\r\n"))
    })
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream; charset=utf-8",
        "cache-control: private, no-cache, no-store, must-revalidate, max-age=0",
        "pragma: no-cache",
        "x-accel-buffering: no",
        "transfer-encoding: chunked",
    ] {
        assert!(
            head.contains(&format!("\r\n{line}")),
            "no `{line}` in {head}"
        );
    }
    assert!(head.contains("\r\ndate: "), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
    let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
    let chunk = &rest[..size];
    assert_eq!(
        &rest[size..size + 2],
        "\r\n",
        "the chunk ends where its size says"
    );
    let event = chunk.strip_prefix("data: ").expect("an SSE event");
    let reply: Value = serde_json::from_str(event.trim_end()).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["connect"]["client"].is_string(), "{reply}");
}

/// An HTTP/1.0 client cannot take chunked framing: its stream goes through hyper, ended by the
/// connection's close, and carries the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_stream_goes_through_hyper_and_works() {
    let server = server().await;
    let mut stream = raw_sse(server.addr, "1.0").await;
    let text = read_until(&mut stream, |t| t.contains("\n\n") && t.contains("data: ")).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    let event = body.strip_prefix("data: ").expect("an SSE event, unframed");
    let reply: Value = serde_json::from_str(event.split("\n\n").next().unwrap()).unwrap();
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    let gauge = "switchboard_transport_connections{transport=\"sse\"}";
    assert!(server.metrics().await.contains(&format!("{gauge} 1")));
    drop(stream);
    let gone =
        eventually(|| async { server.metrics().await.contains(&format!("{gauge} 0")) }).await;
    assert!(gone, "the HTTP/1.0 stream's session outlived its client");
}

/// A `HEAD` request gets the stream's head and nothing else: the next request on the same
/// connection is answered right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_gets_the_head_alone() {
    use tokio::io::AsyncWriteExt;
    let server = server().await;
    let addr = server.addr;
    let connect = switchboard_client::raw::urlencode(r#"{"id":1,"connect":{}}"#);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("HEAD /connection/sse?cf_connect={connect} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let text = read_until(&mut stream, |t| t.contains("\r\n\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "nothing after the head: {text:?}"
    );
    let next = format!("GET /no-such-page HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(next.as_bytes()).await.unwrap();
    let text = read_until(&mut stream, |t| t.contains("\r\n\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text:?}");
}

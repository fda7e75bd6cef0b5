//! Test harness: a real server on a free loopback port, a protocol client over a real WebSocket
//! (and the Rust SDK, for tests whose clients are actors), and a minimal HTTP client for the
//! server API.
#![allow(dead_code)]

pub mod follower;
pub mod http_stream;
pub mod redis_server;
pub mod script;
pub mod webhook_receiver;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process on 127.0.0.1:<free port>.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The server's own data directory, removed when the server is dropped.
    pub data_dir: std::path::PathBuf,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), switchboard::server::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with(|_| {}).await
    }

    /// Starts a server with the default config changed by `adjust`.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            data_dir: temp_dir(),
            ..Config::default()
        };
        adjust(&mut config);
        let data_dir = config.data_dir.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(switchboard::run(config, listener, shutdown.clone()));
        TestServer {
            addr,
            data_dir,
            shutdown,
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// A client that has completed `connect` anonymously.
    pub async fn client(&self) -> Client {
        let mut c = Client::open(&self.ws_url()).await;
        c.connect(json!({})).await;
        c
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        http_raw(self.addr, &request).await.1
    }

    /// Calls the server API without a key.
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        api_call(self.addr, method, &body.to_string(), None).await
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

impl TestServer {
    /// Stops the server and waits for it, leaving its data directory for a restart.
    pub async fn stop_keeping_data(mut self) -> std::path::PathBuf {
        let data_dir = std::mem::take(&mut self.data_dir);
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops in time")
                .unwrap()
                .unwrap();
        }
        data_dir
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

impl TestServer {
    /// A client of the Rust SDK (`switchboard-client`), connected.
    pub async fn sdk(&self) -> switchboard_client::Client {
        sdk_client(&self.ws_url()).await
    }
}

/// A client of the Rust SDK connected to `url`, for tests where clients are actors and the wire
/// is not the subject (wire-level tests use [`Client`], which writes frames by hand).
pub async fn sdk_client(url: &str) -> switchboard_client::Client {
    let client = switchboard_client::Client::builder(url)
        .timeout(WAIT)
        .build();
    client.connect();
    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("connected in time")
        .expect("connected");
    client
}

/// Subscribes `client` to `channel` with the SDK and waits until subscribed.
pub async fn sdk_subscribe(
    client: &switchboard_client::Client,
    channel: &str,
) -> switchboard_client::Subscription {
    let subscription = client
        .new_subscription(channel, switchboard_client::SubscriptionOptions::new())
        .expect("a new subscription");
    subscription.subscribe();
    tokio::time::timeout(WAIT, subscription.ready())
        .await
        .expect("subscribed in time")
        .expect("subscribed");
    subscription
}

/// A client of the Rust SDK subscribed to `channel`, and its events, for tests that watch what
/// a subscriber receives.
pub struct SdkSubscriber {
    pub client: switchboard_client::Client,
    pub subscription: switchboard_client::Subscription,
    pub events: switchboard_client::Events<switchboard_client::SubscriptionEvent>,
}

impl TestServer {
    /// A Rust SDK client of this server, subscribed to `channel`.
    pub async fn sdk_subscriber(&self, channel: &str) -> SdkSubscriber {
        let client = self.sdk().await;
        let subscription = client
            .new_subscription(channel, switchboard_client::SubscriptionOptions::new())
            .expect("a new subscription");
        let events = subscription.events();
        subscription.subscribe();
        tokio::time::timeout(WAIT, subscription.ready())
            .await
            .expect("subscribed in time")
            .expect("subscribed");
        SdkSubscriber {
            client,
            subscription,
            events,
        }
    }
}

impl SdkSubscriber {
    /// The next publication received, within the wait.
    pub async fn next_publication(&mut self) -> switchboard_client::Publication {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.events.next().await {
                    Some(switchboard_client::SubscriptionEvent::Publication(p)) => return p,
                    Some(_) => continue,
                    None => panic!("the subscription ended"),
                }
            }
        })
        .await
        .expect("a publication in time")
    }
}

/// Grants every client permission on channels outside namespaces (closed by default once tokens
/// are verified).
pub fn open_channels(config: &mut Config) {
    let c = &mut config.channel;
    for flag in [
        &mut c.allow_subscribe_for_client,
        &mut c.allow_subscribe_for_anonymous,
        &mut c.allow_publish_for_client,
        &mut c.allow_publish_for_anonymous,
        &mut c.allow_presence_for_client,
        &mut c.allow_history_for_client,
    ] {
        *flag = Some(true);
    }
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// POSTs `body` to `/api/<method>` with an optional `X-API-Key`; returns status and JSON body.
pub async fn api_call(
    addr: SocketAddr,
    method: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, Value) {
    let key_header = key.map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
    let request = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{key_header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = http_raw(addr, &request).await;
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    (status, value)
}

/// Sends a raw HTTP/1.1 request (with `Connection: close`) and returns status and body.
pub async fn http_raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// What a read from the server produced.
#[derive(Debug)]
pub enum Event {
    Message(Value),
    /// A close frame: code and reason.
    Closed(u16, String),
    /// The socket ended without a close frame.
    Dropped,
}

/// A protocol client over a real WebSocket.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: VecDeque<Value>,
    next_id: u32,
    pub client_id: String,
}

impl Client {
    pub async fn open(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
        }
    }

    /// Opens a client whose upgrade request carries `headers` (name, value).
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap();
            request.headers_mut().append(name, value.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Client {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
        }
    }

    /// A client over a WebSocket opened elsewhere.
    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
        }
    }

    /// Opens a client over `stream`, already connected (from a chosen source address, say),
    /// with `request`'s URL and headers.
    pub async fn from_stream(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
        stream: TcpStream,
    ) -> Client {
        let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        Client {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
        }
    }

    /// Opens a client whose socket has a tiny receive buffer, so that not reading fills the
    /// server's side quickly (a slow client).
    pub async fn open_small_buffer(addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let url = format!("ws://{addr}/connection/websocket");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        Client {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
        }
    }

    /// Sends a raw text frame.
    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends one command with the next id; returns the id.
    pub async fn send(&mut self, key: &str, body: Value) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id });
        command[key] = body;
        self.send_raw(&command.to_string()).await;
        id
    }

    /// Sends a command and waits for its reply, keeping pushes that arrive meanwhile.
    pub async fn call(&mut self, key: &str, body: Value) -> Value {
        let id = self.send(key, body).await;
        self.reply_to(id).await
    }

    /// Waits for the reply with `id`.
    pub async fn reply_to(&mut self, id: u32) -> Value {
        match self.try_reply_to(id).await {
            Ok(reply) => reply,
            Err(other) => panic!("expected reply {id}, got {other:?}"),
        }
    }

    /// Sends a command and waits for its reply, or for the end of the connection (a client
    /// that expects its connection to be cut).
    pub async fn try_call(&mut self, key: &str, body: Value) -> Result<Value, Event> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id });
        command[key] = body;
        if self
            .ws
            .send(Message::text(command.to_string()))
            .await
            .is_err()
        {
            return Err(Event::Dropped);
        }
        self.try_reply_to(id).await
    }

    /// Waits for the reply with `id`, or for the end of the connection.
    pub async fn try_reply_to(&mut self, id: u32) -> Result<Value, Event> {
        loop {
            if let Some(i) = self.pending.iter().position(|m| m["id"] == id) {
                return Ok(self.pending.remove(i).unwrap());
            }
            // Read from the socket (not the pending list) until the reply shows up.
            let ended = tokio::time::timeout(WAIT, self.read_frame())
                .await
                .expect("server answered in time");
            if let Some(other) = ended {
                return Err(other);
            }
        }
    }

    /// Answers a server ping (an empty message); false if the connection is gone.
    pub async fn pong(&mut self) -> bool {
        self.ws.send(Message::text("{}")).await.is_ok()
    }

    /// `connect` with `body`; stores the client id.
    pub async fn connect(&mut self, body: Value) -> Value {
        let reply = self.call("connect", body).await;
        if let Some(client) = reply["connect"]["client"].as_str() {
            self.client_id = client.to_string();
        }
        reply
    }

    /// Subscribes asking for join/leave pushes.
    pub async fn subscribe_join_leave(&mut self, channel: &str) -> Value {
        let reply = self
            .call(
                "subscribe",
                json!({ "channel": channel, "join_leave": true }),
            )
            .await;
        assert!(reply.get("error").is_none(), "subscribe failed: {reply}");
        reply
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self.call("subscribe", json!({ "channel": channel })).await;
        assert!(reply.get("error").is_none(), "subscribe failed: {reply}");
        reply
    }

    /// The next message, whether reply or push (ignoring server pings).
    pub async fn next_message(&mut self) -> Value {
        loop {
            match self.next_event().await {
                Event::Message(m) if m == json!({}) => continue,
                Event::Message(m) => return m,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next push (`push` object), skipping pings.
    pub async fn next_push(&mut self) -> Value {
        let m = self.next_message().await;
        assert!(m.get("push").is_some(), "expected a push, got {m}");
        m["push"].clone()
    }

    /// The next publication pushed on any channel.
    pub async fn next_publication(&mut self) -> Value {
        loop {
            let push = self.next_push().await;
            if push.get("pub").is_some() {
                return push;
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason (or panics).
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_event().await {
                Event::Message(_) => continue,
                Event::Closed(code, reason) => return (code, reason),
                Event::Dropped => panic!("socket dropped without a close frame"),
            }
        }
    }

    /// Reads until the connection ends: `Some(code)` for a close frame, `None` for a drop.
    pub async fn closed_or_dropped_code(&mut self) -> Option<u16> {
        loop {
            match self.next_event().await {
                Event::Message(_) => continue,
                Event::Closed(code, _) => return Some(code),
                Event::Dropped => return None,
            }
        }
    }

    /// Whether no message arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        tokio::time::timeout(wait, self.read_frame()).await.is_err()
    }

    /// The next event, pending messages first, with a time limit.
    pub async fn next_event(&mut self) -> Event {
        if let Some(m) = self.pending.pop_front() {
            return Event::Message(m);
        }
        let ended = tokio::time::timeout(WAIT, self.read_frame())
            .await
            .expect("server answered in time");
        match ended {
            Some(event) => event,
            None => Event::Message(self.pending.pop_front().expect("a frame holds a message")),
        }
    }

    /// Reads one frame into `pending`; returns the end of the connection instead, if it ends.
    async fn read_frame(&mut self) -> Option<Event> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    for line in text.split('\n').filter(|l| !l.is_empty()) {
                        self.pending.push_back(serde_json::from_str(line).unwrap());
                    }
                    return None;
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(match frame {
                        Some(f) => Event::Closed(u16::from(f.code), f.reason.to_string()),
                        None => Event::Closed(u16::from(CloseCode::Status), String::new()),
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Event::Dropped),
            }
        }
    }

    /// Closes the socket abruptly (no close frame).
    pub fn drop_tcp(self) {
        drop(self.ws);
    }
}

/// Polls `check` until it returns true or the wait runs out.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves no server
/// running behind it.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Kills the process now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

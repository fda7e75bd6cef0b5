//! Test harness: a real server on a free loopback port, a protocol client over a real WebSocket
//! (and the Rust SDK, for tests whose clients are actors), and a minimal HTTP client for the
//! server API.
#![allow(dead_code)]

pub mod follower;
pub mod http_stream;
pub mod redis_server;
pub mod script;
pub mod webhook_receiver;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard::Config;
use switchboard_client::raw::{ProtobufWireClient, WireClient, WireError};
use switchboard_proto as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
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
    switchboard_client::raw::http_exchange(addr, request, WAIT)
        .await
        .expect("an HTTP response in time")
}

/// The client crate's Protobuf wire-level client ([`ProtobufWireClient`]) with the tests'
/// manners: every read waits at most [`WAIT`], and a failure (timeout, unexpected end, a frame
/// that is not Protobuf, the subprotocol refused) fails the test with the client's error.
pub struct PbClient(pub ProtobufWireClient);

impl PbClient {
    /// Opens a WebSocket on the `centrifuge-protobuf` subprotocol (which the server must choose).
    pub async fn open(server: &TestServer) -> PbClient {
        let mut client = ProtobufWireClient::open(&server.ws_url())
            .await
            .expect("WebSocket opened on the Protobuf subprotocol");
        client.set_wait(WAIT);
        PbClient(client)
    }

    /// Opens and connects (command id 1).
    pub async fn connected(server: &TestServer) -> PbClient {
        let mut client = Self::open(server).await;
        let connect = pb::Command {
            id: 1,
            connect: Some(pb::ConnectRequest::default()),
            ..Default::default()
        };
        let reply = client.0.call(connect).await.expect("the connect reply");
        assert!(reply.connect.is_some(), "connected: {reply:?}");
        client
    }

    /// Sends `commands` in one binary frame.
    pub async fn send(&mut self, commands: &[pb::Command]) {
        self.0.send(commands).await.expect("frame sent");
    }

    /// Sends `bytes` as one binary frame, as is.
    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.0.send_frame(bytes).await.expect("frame sent");
    }

    /// Sends `text` as one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.0.send_text(text).await.expect("frame sent");
    }

    /// The next reply, push or ping.
    pub async fn next(&mut self) -> pb::Reply {
        self.0.next().await.expect("a message from the server")
    }

    /// Reads until the server closes; the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        self.0.closed().await.expect("a close frame")
    }
}

/// What a read from the server produced (the client crate's wire-level event).
pub use switchboard_client::raw::WireEvent as Event;

/// The client crate's wire-level client ([`WireClient`]) with the tests' manners: every call
/// waits at most [`WAIT`] and a failure (timeout, unexpected end, bad JSON) fails the test with
/// the client's error.
pub struct Client(pub WireClient);

impl std::ops::Deref for Client {
    type Target = WireClient;
    fn deref(&self) -> &WireClient {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut WireClient {
        &mut self.0
    }
}

impl Client {
    fn wrap(client: Result<WireClient, WireError>) -> Client {
        let mut client = client.expect("WebSocket opened");
        client.set_wait(WAIT);
        Client(client)
    }

    pub async fn open(url: &str) -> Client {
        Self::wrap(WireClient::open(url).await)
    }

    /// Opens a client whose upgrade request carries `headers` (name, value).
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Client {
        Self::wrap(WireClient::open_with_headers(url, headers).await)
    }

    /// A client over a WebSocket opened elsewhere.
    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Self::wrap(Ok(WireClient::from_ws(ws)))
    }

    /// Opens a client over `stream`, already connected (from a chosen source address, say),
    /// with `request`'s URL and headers.
    pub async fn from_stream(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
        stream: TcpStream,
    ) -> Client {
        Self::wrap(WireClient::from_stream(request, stream).await)
    }

    /// Opens a client whose socket has a tiny receive buffer (a slow client).
    pub async fn open_small_buffer(addr: SocketAddr) -> Client {
        Self::wrap(WireClient::open_small_buffer(addr).await)
    }

    /// Sends a raw text frame.
    pub async fn send_raw(&mut self, text: &str) {
        self.0.send_raw(text).await.expect("frame sent");
    }

    /// Sends one command with the next id; returns the id.
    pub async fn send(&mut self, key: &str, body: Value) -> u32 {
        self.0.send(key, body).await.expect("command sent")
    }

    /// Sends a command and waits for its reply, keeping pushes that arrive meanwhile.
    pub async fn call(&mut self, key: &str, body: Value) -> Value {
        self.0.call(key, body).await.expect("a reply")
    }

    /// Waits for the reply with `id`.
    pub async fn reply_to(&mut self, id: u32) -> Value {
        self.0.reply_to(id).await.expect("the reply")
    }

    /// Sends a command and waits for its reply, or for the end of the connection (a client
    /// that expects its connection to be cut).
    pub async fn try_call(&mut self, key: &str, body: Value) -> Result<Value, Event> {
        match self.0.send(key, body).await {
            Ok(id) => self.try_reply_to(id).await,
            Err(_) => Err(Event::Dropped),
        }
    }

    /// Waits for the reply with `id`, or for the end of the connection.
    pub async fn try_reply_to(&mut self, id: u32) -> Result<Value, Event> {
        match self.0.reply_to(id).await {
            Ok(reply) => Ok(reply),
            Err(WireError::Unexpected { got, .. }) => Err(got),
            Err(e) => panic!("waiting for reply {id}: {e}"),
        }
    }

    /// Answers a server ping (an empty message); false if the connection is gone.
    pub async fn pong(&mut self) -> bool {
        self.0.pong().await.is_ok()
    }

    /// `connect` with `body`; stores the client id.
    pub async fn connect(&mut self, body: Value) -> Value {
        self.0.connect(body).await.expect("the connect reply")
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
        self.0.next_message().await.expect("a message")
    }

    /// The next push (`push` object), skipping pings.
    pub async fn next_push(&mut self) -> Value {
        self.0.next_push().await.expect("a push")
    }

    /// The next publication pushed on any channel.
    pub async fn next_publication(&mut self) -> Value {
        self.0.next_publication().await.expect("a publication")
    }

    /// Reads until the server closes; returns the close code and reason (or panics).
    pub async fn closed(&mut self) -> (u16, String) {
        self.0.closed().await.expect("a close frame")
    }

    /// Reads until the connection ends: `Some(code)` for a close frame, `None` for a drop.
    pub async fn closed_or_dropped_code(&mut self) -> Option<u16> {
        match self.0.closed_or_dropped().await.expect("the end in time") {
            Event::Closed(code, _) => Some(code),
            _ => None,
        }
    }

    /// Whether no message arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        self.0.silent_for(wait).await.expect("a readable socket")
    }

    /// The next event, pending messages first, with a time limit.
    pub async fn next_event(&mut self) -> Event {
        self.0.next_event().await.expect("server answered in time")
    }

    /// Closes the socket abruptly (no close frame).
    pub fn drop_tcp(self) {
        self.0.drop_tcp();
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

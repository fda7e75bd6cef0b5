//! The handles the application holds: [`Client`], built by [`ClientBuilder`], and
//! [`Subscription`]. Both are cheap to clone and `Send`; they talk to one background task per
//! client (the [`crate::driver`]), which owns the socket.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::codec::{Codec, JsonCodec};
use crate::driver::{Call, Control, Driver};
use crate::events::{
    event_channel, ClientEvent, EventSender, Events, State, Subscribed, SubscriptionEvent,
    SubscriptionState,
};
use crate::protocol::{
    ClientInfo, HistoryRequest, HistoryResult, Payload, PresenceStats, Reply, Request,
    StreamPosition,
};
use crate::Error;

/// What a token callback returns: a future of the token, or why it could not get one. An empty
/// token means "not allowed": the client (or subscription) stops, as centrifuge-js does.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

pub(crate) type ConnectionTokenFn = Arc<dyn Fn() -> TokenFuture + Send + Sync>;
pub(crate) type SubscriptionTokenFn = Arc<dyn Fn(String) -> TokenFuture + Send + Sync>;

/// How a client connects and behaves; built by [`ClientBuilder`].
pub(crate) struct Config {
    pub url: String,
    pub token: Option<String>,
    pub get_token: Option<ConnectionTokenFn>,
    pub data: Option<Value>,
    pub name: String,
    pub version: String,
    pub headers: HashMap<String, String>,
    pub min_reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    pub timeout: Duration,
    pub max_server_ping_delay: Duration,
    pub event_capacity: usize,
    pub max_frame_bytes: usize,
    pub codec: Arc<dyn Codec>,
    /// Certificates trusted for `wss://` besides the system's roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// TLS settings, made at the first `wss://` connect (reading the system's roots).
    pub tls: tokio::sync::OnceCell<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// Builds a [`Client`]: the URL, then optional settings.
///
/// ```no_run
/// # async fn demo() -> Result<(), switchboard_client::Error> {
/// let client = switchboard_client::Client::builder("ws://127.0.0.1:8000/connection/websocket")
///     .name("my-app")
///     .token_getter(|| async { Ok::<_, String>("a fresh JWT".to_string()) })
///     .build();
/// client.connect();
/// client.ready().await?;
/// # Ok(()) }
/// ```
pub struct ClientBuilder {
    config: Config,
}

impl ClientBuilder {
    /// A connection token (JWT). Without a [`ClientBuilder::token_getter`] it is used as is on
    /// every connect.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// An async callback returning a new connection token: called when there is none, before
    /// the connection's token expires (the client then sends `refresh`), and when the server
    /// answers `connect` with 109 (token expired). An `Err` is retried with backoff; an empty
    /// token disconnects the client (code [`crate::codes::UNAUTHORIZED`]).
    pub fn token_getter<F, Fut, E>(mut self, get: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.config.get_token = Some(Arc::new(move || {
            let fut = get();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }));
        self
    }

    /// Connect data, for the application backend's connect proxy.
    pub fn data(mut self, data: Value) -> Self {
        self.config.data = Some(data);
        self
    }

    /// The client's name, sent in `connect` (default `switchboard-rust`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The client's version, sent in `connect`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.config.version = version.into();
        self
    }

    /// An emulated header, sent in `connect` (`headers`); the server forwards the names listed
    /// in its `proxy_emulated_headers` to the backend.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.headers.insert(name.into(), value.into());
        self
    }

    /// The reconnect backoff's bounds (default 500 ms and 20 s, as centrifuge-js).
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.config.min_reconnect_delay = min;
        self.config.max_reconnect_delay = max.max(min);
        self
    }

    /// How long a command waits for its reply, and a connect for its answer (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// How late a server ping may be before the client reconnects (default 10 s after the
    /// server's announced interval).
    pub fn max_server_ping_delay(mut self, delay: Duration) -> Self {
        self.config.max_server_ping_delay = delay;
        self
    }

    /// Events kept for a receiver that is behind, per event stream (default 1024); beyond that
    /// the receiver gets a `Lagged` event.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity.max(1);
        self
    }

    /// Largest WebSocket message the client batches commands into (default 60,000 bytes, under
    /// the server's default 64 KiB limit); one larger command still goes alone.
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.config.max_frame_bytes = bytes.max(1);
        self
    }

    /// Trusts the certificates in `pem` (PEM text) for `wss://` URLs, besides the system's root
    /// certificates: a private CA, or a self-signed development certificate.
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        let before = self.config.extra_roots.len();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Config(format!("a PEM certificate: {e}")))?;
            self.config.extra_roots.push(cert);
        }
        if self.config.extra_roots.len() == before {
            return Err(Error::Config("no certificate in the PEM text".into()));
        }
        Ok(self)
    }

    /// The encoding (JSON by default).
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.config.codec = Arc::new(codec);
        self
    }

    /// Builds the client and starts its background task (so it must be called inside a tokio
    /// runtime). The client does not connect until [`Client::connect`].
    pub fn build(self) -> Client {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (calls_tx, calls_rx) = mpsc::channel(1024);
        let events = event_channel(self.config.event_capacity);
        let state = Arc::new(
            watch::channel(ClientStatus::Disconnected {
                code: crate::codes::DISCONNECT_CALLED,
                reason: "not connected yet".into(),
            })
            .0,
        );
        let config = Arc::new(self.config);
        let driver = Driver::new(
            config.clone(),
            control_rx,
            calls_rx,
            state.clone(),
            events.clone(),
        );
        tokio::spawn(driver.run());
        Client {
            shared: Arc::new(Shared {
                config,
                state,
                events,
                control: control_tx,
                calls: calls_tx,
                subscriptions: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// The connection's state with its reason, as the driver publishes it.
#[derive(Debug, Clone)]
pub(crate) enum ClientStatus {
    Disconnected { code: u32, reason: String },
    Connecting,
    Connected { client: String },
}

pub(crate) struct Shared {
    config: Arc<Config>,
    state: Arc<watch::Sender<ClientStatus>>,
    events: EventSender<ClientEvent>,
    control: mpsc::UnboundedSender<Control>,
    calls: mpsc::Sender<Call>,
    subscriptions: Mutex<HashMap<String, Arc<SubscriptionShared>>>,
}

/// A connection to a Switchboard (or Centrifugo) server that reconnects by itself.
///
/// Cheap to clone: clones share the connection. The background task ends, closing the socket,
/// when the last clone and the last [`Subscription`] are dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.shared.config.url)
            .field("state", &self.state())
            .finish()
    }
}

/// Options of a [`Subscription`].
#[derive(Clone, Default)]
pub struct SubscriptionOptions {
    pub(crate) token: Option<String>,
    pub(crate) get_token: Option<SubscriptionTokenFn>,
    pub(crate) data: Option<Value>,
    pub(crate) join_leave: bool,
    pub(crate) since: Option<StreamPosition>,
}

impl fmt::Debug for SubscriptionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionOptions")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("get_token", &self.get_token.is_some())
            .field("data", &self.data)
            .field("join_leave", &self.join_leave)
            .field("since", &self.since)
            .finish()
    }
}

impl SubscriptionOptions {
    /// Default options: no token, no data, no join/leave pushes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A subscription token (for channels that need one).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// An async callback returning a new subscription token for the channel it is given: called
    /// when there is none, before the subscription expires (`sub_refresh`), and on error 109.
    /// An empty token unsubscribes (code [`crate::codes::SUBSCRIPTION_UNAUTHORIZED`]).
    pub fn token_getter<F, Fut, E>(mut self, get: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.get_token = Some(Arc::new(move |channel| {
            let fut = get(channel);
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }));
        self
    }

    /// Subscribe data, for the backend's subscribe proxy.
    pub fn data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Ask for join and leave pushes.
    pub fn join_leave(mut self, on: bool) -> Self {
        self.join_leave = on;
        self
    }

    /// Start from a position saved earlier (the offset of the last publication the application
    /// handled, and the stream's epoch): the first subscribe recovers what came after it, as a
    /// resubscribe after a reconnect does.
    pub fn since(mut self, position: StreamPosition) -> Self {
        self.since = Some(position);
        self
    }
}

/// Options of [`Client::history`].
#[derive(Debug, Clone, Default)]
pub struct HistoryOptions {
    /// How many publications at most (0: the stream position only; -1: all the server gives).
    pub limit: i32,
    /// Only publications after this position.
    pub since: Option<StreamPosition>,
    /// Newest first.
    pub reverse: bool,
}

/// The result of a client publish.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishResult {}

impl Client {
    /// A builder for a client of the WebSocket endpoint at `url`
    /// (`ws://host:port/connection/websocket`, or `wss://` for TLS).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            config: Config {
                url: url.into(),
                token: None,
                get_token: None,
                data: None,
                name: "switchboard-rust".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                headers: HashMap::new(),
                min_reconnect_delay: Duration::from_millis(500),
                max_reconnect_delay: Duration::from_secs(20),
                timeout: Duration::from_secs(5),
                max_server_ping_delay: Duration::from_secs(10),
                event_capacity: 1024,
                max_frame_bytes: 60_000,
                codec: Arc::new(JsonCodec),
                extra_roots: Vec::new(),
                tls: tokio::sync::OnceCell::new(),
            },
        }
    }

    /// A client of `url` with the default settings.
    pub fn new(url: impl Into<String>) -> Client {
        Client::builder(url).build()
    }

    /// Starts connecting (and reconnecting, until [`Client::disconnect`] or a terminal code).
    /// Returns at once; [`Client::ready`] waits for the connection.
    pub fn connect(&self) {
        self.shared.state.send_if_modified(|state| {
            if matches!(state, ClientStatus::Disconnected { .. }) {
                *state = ClientStatus::Connecting;
                true
            } else {
                false
            }
        });
        let _ = self.shared.control.send(Control::Connect);
    }

    /// Disconnects and stays disconnected; subscriptions are kept and resubscribe on the next
    /// [`Client::connect`]. Commands waiting for a reply fail.
    pub fn disconnect(&self) {
        let _ = self.shared.control.send(Control::Disconnect);
    }

    /// The connection's state now.
    pub fn state(&self) -> State {
        match &*self.shared.state.borrow() {
            ClientStatus::Disconnected { .. } => State::Disconnected,
            ClientStatus::Connecting => State::Connecting,
            ClientStatus::Connected { .. } => State::Connected,
        }
    }

    /// The current connection's id, when connected.
    pub fn client_id(&self) -> Option<String> {
        match &*self.shared.state.borrow() {
            ClientStatus::Connected { client } => Some(client.clone()),
            _ => None,
        }
    }

    /// Waits until connected; fails if the client is (or becomes) disconnected. Cancellation-safe.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut state = self.shared.state.subscribe();
        let outcome = state
            .wait_for(|s| !matches!(s, ClientStatus::Connecting))
            .await
            .map_err(|_| Error::ConnectionClosed)?;
        match &*outcome {
            ClientStatus::Connected { .. } => Ok(()),
            ClientStatus::Disconnected { code, reason } => Err(Error::Disconnected {
                code: *code,
                reason: reason.clone(),
            }),
            ClientStatus::Connecting => Err(Error::ConnectionClosed),
        }
    }

    /// [`Client::ready`] bounded by the client's timeout.
    pub async fn ready_within(&self, wait: Duration) -> Result<(), Error> {
        tokio::time::timeout(wait, self.ready())
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// A new receiver of the client's events (each receiver sees events sent after it exists).
    pub fn events(&self) -> Events<ClientEvent> {
        Events::new(self.shared.events.subscribe())
    }

    /// Creates a subscription to `channel` (unsubscribed: call [`Subscription::subscribe`]).
    /// Fails if this client already has one for that channel.
    pub fn new_subscription(
        &self,
        channel: impl Into<String>,
        options: SubscriptionOptions,
    ) -> Result<Subscription, Error> {
        let channel = channel.into();
        let mut subscriptions = self
            .shared
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if subscriptions.contains_key(&channel) {
            return Err(Error::DuplicateSubscription(channel));
        }
        let events = event_channel(self.shared.config.event_capacity);
        let shared = Arc::new(SubscriptionShared {
            channel: channel.clone(),
            options,
            state: watch::channel(SubscriptionStatus::Unsubscribed {
                code: crate::codes::UNSUBSCRIBE_CALLED,
                reason: "not subscribed yet".into(),
            })
            .0,
            events,
        });
        subscriptions.insert(channel, shared.clone());
        let _ = self.shared.control.send(Control::Add(shared.clone()));
        Ok(Subscription {
            client: self.clone(),
            shared,
        })
    }

    /// This client's subscription to `channel`, if it has one.
    pub fn subscription(&self, channel: &str) -> Option<Subscription> {
        let subscriptions = self
            .shared
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        subscriptions.get(channel).map(|shared| Subscription {
            client: self.clone(),
            shared: shared.clone(),
        })
    }

    /// Unsubscribes and forgets the subscription, so the channel can be subscribed anew.
    pub fn remove_subscription(&self, subscription: &Subscription) {
        let channel = &subscription.shared.channel;
        self.shared
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(channel);
        let _ = self.shared.control.send(Control::Remove(channel.clone()));
    }

    /// Sends `request` and waits for its reply (queued while connecting), within the timeout.
    async fn call(&self, request: Request) -> Result<Reply, Error> {
        if request.is_binary() && !self.shared.config.codec.carries_bytes() {
            return Err(Error::BinaryNeedsProtobuf);
        }
        if let ClientStatus::Disconnected { code, reason } = &*self.shared.state.borrow() {
            return Err(Error::Disconnected {
                code: *code,
                reason: reason.clone(),
            });
        }
        let (tx, rx) = oneshot::channel();
        let call = Call { request, reply: tx };
        let wait = async {
            self.shared
                .calls
                .send(call)
                .await
                .map_err(|_| Error::ConnectionClosed)?;
            rx.await.map_err(|_| Error::ConnectionClosed)?
        };
        tokio::time::timeout(self.shared.config.timeout, wait)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Publishes `data` to `channel` (the server decides whether this client may).
    pub async fn publish(&self, channel: &str, data: Value) -> Result<PublishResult, Error> {
        self.publish_payload(channel, Payload::Json(data)).await
    }

    /// Publishes raw bytes to `channel`, sent exactly as given: Protobuf subscribers, history
    /// and recovery return the same bytes ([`crate::Publication::bytes`]). Bytes that are one JSON
    /// value reach JSON subscribers as that value; other bytes make a binary publication, which
    /// JSON subscribers get as base64 with [`crate::Publication::binary`] set.
    ///
    /// Needs the Protobuf encoding ([`crate::codec::ProtobufCodec`]); over JSON it fails with
    /// [`Error::BinaryNeedsProtobuf`] and sends nothing.
    pub async fn publish_binary(
        &self,
        channel: &str,
        data: impl Into<Bytes>,
    ) -> Result<PublishResult, Error> {
        self.publish_payload(channel, Payload::Binary(data.into()))
            .await
    }

    async fn publish_payload(&self, channel: &str, data: Payload) -> Result<PublishResult, Error> {
        let reply = self
            .call(Request::Publish {
                channel: channel.into(),
                data,
            })
            .await?;
        reply
            .publish
            .map(|_| PublishResult {})
            .ok_or_else(|| missing("publish"))
    }

    /// Calls `method` on the server (or its backend, through the RPC proxy) and returns its
    /// answer.
    pub async fn rpc(&self, method: &str, data: Value) -> Result<Value, Error> {
        let reply = self
            .call(Request::Rpc {
                method: method.into(),
                data: Payload::Json(data),
            })
            .await?;
        reply.rpc.map(|r| r.data).ok_or_else(|| missing("rpc"))
    }

    /// Calls `method` with raw bytes as its arguments and returns the answer's exact bytes —
    /// for a backend (RPC proxy) that speaks bytes, or JSON text that must go as written.
    /// Switchboard's own rules and its proxy take JSON: bytes that are not one JSON value are
    /// refused there with error 107.
    ///
    /// Needs the Protobuf encoding ([`crate::codec::ProtobufCodec`]); over JSON it fails with
    /// [`Error::BinaryNeedsProtobuf`] and sends nothing.
    pub async fn rpc_binary(&self, method: &str, data: impl Into<Bytes>) -> Result<Bytes, Error> {
        let reply = self
            .call(Request::Rpc {
                method: method.into(),
                data: Payload::Binary(data.into()),
            })
            .await?;
        reply
            .rpc
            .and_then(|r| r.bytes)
            .ok_or_else(|| missing("rpc"))
    }

    /// Sends an asynchronous message to the server (no reply; the server's backend gets it).
    /// Returns once the message is queued for the connection.
    pub async fn send(&self, data: Value) -> Result<(), Error> {
        self.call(Request::Send { data }).await.map(|_| ())
    }

    /// Who is subscribed to `channel`: client id → who.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, Error> {
        let reply = self
            .call(Request::Presence {
                channel: channel.into(),
            })
            .await?;
        reply
            .presence
            .map(|p| p.presence)
            .ok_or_else(|| missing("presence"))
    }

    /// How many clients and users are subscribed to `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, Error> {
        let reply = self
            .call(Request::PresenceStats {
                channel: channel.into(),
            })
            .await?;
        reply
            .presence_stats
            .ok_or_else(|| missing("presence_stats"))
    }

    /// The history of `channel`: publications (`limit`, `since`, `reverse`) and the stream's
    /// position.
    pub async fn history(
        &self,
        channel: &str,
        options: HistoryOptions,
    ) -> Result<HistoryResult, Error> {
        let reply = self
            .call(Request::History(HistoryRequest {
                channel: channel.into(),
                limit: options.limit,
                since: options.since,
                reverse: options.reverse,
            }))
            .await?;
        reply.history.ok_or_else(|| missing("history"))
    }
}

fn missing(what: &str) -> Error {
    Error::Protocol(format!("the reply to {what} carries no {what} result"))
}

/// A subscription's state with its reason, as the driver publishes it.
#[derive(Debug, Clone)]
pub(crate) enum SubscriptionStatus {
    Unsubscribed { code: u32, reason: String },
    Subscribing,
    Subscribed(Subscribed),
}

/// What a [`Subscription`] handle and the driver share.
pub(crate) struct SubscriptionShared {
    pub channel: String,
    pub options: SubscriptionOptions,
    pub state: watch::Sender<SubscriptionStatus>,
    pub events: EventSender<SubscriptionEvent>,
}

/// A client's subscription to one channel, with its own state machine: it resubscribes after a
/// reconnect, recovering what it missed when the channel keeps history.
///
/// Create receivers with [`Subscription::events`] *before* [`Subscription::subscribe`] to see
/// everything.
#[derive(Clone)]
pub struct Subscription {
    client: Client,
    shared: Arc<SubscriptionShared>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.shared.channel)
            .field("state", &self.state())
            .finish()
    }
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Starts subscribing (now if connected, else once connected).
    pub fn subscribe(&self) {
        self.shared.state.send_if_modified(|state| {
            if matches!(state, SubscriptionStatus::Unsubscribed { .. }) {
                *state = SubscriptionStatus::Subscribing;
                true
            } else {
                false
            }
        });
        let _ = self
            .client
            .shared
            .control
            .send(Control::Subscribe(self.shared.channel.clone()));
    }

    /// Unsubscribes, and stays unsubscribed until [`Subscription::subscribe`].
    pub fn unsubscribe(&self) {
        let _ = self
            .client
            .shared
            .control
            .send(Control::Unsubscribe(self.shared.channel.clone()));
    }

    /// The subscription's state now.
    pub fn state(&self) -> SubscriptionState {
        match &*self.shared.state.borrow() {
            SubscriptionStatus::Unsubscribed { .. } => SubscriptionState::Unsubscribed,
            SubscriptionStatus::Subscribing => SubscriptionState::Subscribing,
            SubscriptionStatus::Subscribed(_) => SubscriptionState::Subscribed,
        }
    }

    /// Waits until subscribed and returns how (recovered or not); fails if the subscription is
    /// (or becomes) unsubscribed. Cancellation-safe.
    pub async fn ready(&self) -> Result<Subscribed, Error> {
        let mut state = self.shared.state.subscribe();
        let outcome = state
            .wait_for(|s| !matches!(s, SubscriptionStatus::Subscribing))
            .await
            .map_err(|_| Error::ConnectionClosed)?;
        match &*outcome {
            SubscriptionStatus::Subscribed(subscribed) => Ok(subscribed.clone()),
            SubscriptionStatus::Unsubscribed { code, reason } => Err(Error::Unsubscribed {
                code: *code,
                reason: reason.clone(),
            }),
            SubscriptionStatus::Subscribing => Err(Error::ConnectionClosed),
        }
    }

    /// [`Subscription::ready`] bounded by `wait`.
    pub async fn ready_within(&self, wait: Duration) -> Result<Subscribed, Error> {
        tokio::time::timeout(wait, self.ready())
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// A new receiver of this subscription's events.
    pub fn events(&self) -> Events<SubscriptionEvent> {
        Events::new(self.shared.events.subscribe())
    }

    /// Publishes `data` to the channel.
    pub async fn publish(&self, data: Value) -> Result<PublishResult, Error> {
        self.client.publish(&self.shared.channel, data).await
    }

    /// Publishes raw bytes to the channel (see [`Client::publish_binary`]: Protobuf only).
    pub async fn publish_binary(&self, data: impl Into<Bytes>) -> Result<PublishResult, Error> {
        self.client.publish_binary(&self.shared.channel, data).await
    }

    /// Who is subscribed to the channel.
    pub async fn presence(&self) -> Result<HashMap<String, ClientInfo>, Error> {
        self.client.presence(&self.shared.channel).await
    }

    /// How many clients and users are subscribed to the channel.
    pub async fn presence_stats(&self) -> Result<PresenceStats, Error> {
        self.client.presence_stats(&self.shared.channel).await
    }

    /// The channel's history.
    pub async fn history(&self, options: HistoryOptions) -> Result<HistoryResult, Error> {
        self.client.history(&self.shared.channel, options).await
    }
}

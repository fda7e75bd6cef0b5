//! The background task of one client: it owns the socket, every command waiting for its reply
//! and every subscription's state, and is the only place that decides what happens next.
//!
//! One loop waits on the handles' requests, the socket, the results of work it spawned (token
//! callbacks, opening a connection) and its timers, handles what arrived, and writes everything
//! produced in that turn as one batch: commands issued in the same tick share WebSocket
//! messages. Nothing slow runs in the loop itself: a token callback or a connection attempt runs
//! in its own task and reports back, so pings are answered and replies dispatched meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{ClientStatus, Config, SubscriptionShared, SubscriptionStatus};
use crate::codec::Outgoing;
use crate::codes::{
    self, backoff, close_outcome, disconnect_reconnects, error_retries, CloseOutcome,
};
use crate::events::{ClientEvent, EventSender, Subscribed, SubscriptionEvent};
use crate::protocol::{
    Command, ConnectRequest, ConnectResult, Publication, Push, Reply, Request, StreamPosition,
    SubscribeRecovery, SubscribeRequest, SubscribeResult,
};
use crate::Error;

/// A byte stream a WebSocket runs over: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// A request from a handle that changes state (no reply).
pub(crate) enum Control {
    Connect,
    Disconnect,
    Add(Arc<SubscriptionShared>),
    Subscribe(String),
    Unsubscribe(String),
    Remove(String),
}

/// A command from a handle and where its reply goes.
pub(crate) struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Reply, Error>>,
}

/// What a spawned task reports back. `generation` names the connection attempt it belongs to;
/// reports from an older one are dropped.
enum Internal {
    Dialed {
        generation: u64,
        result: Box<Result<Dialed, DialError>>,
    },
    RefreshToken {
        generation: u64,
        result: Result<String, String>,
    },
    SubscribeToken {
        generation: u64,
        channel: String,
        refresh: bool,
        result: Result<String, String>,
    },
}

/// An open, connected socket and what `connect` answered.
struct Dialed {
    ws: Ws,
    result: ConnectResult,
    token: Option<String>,
    /// Messages that came in the same frames as the connect reply.
    leftovers: Vec<Reply>,
}

enum DialError {
    Token(String),
    Unauthorized,
    Transport(String),
    Closed(CloseOutcome),
    Server(Error),
}

/// What a reply is for.
enum Pending {
    Caller(oneshot::Sender<Result<Reply, Error>>),
    Subscribe(String),
    SubRefresh(String),
    Refresh,
    Ignore,
}

struct Connection {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    pong: bool,
    /// When the connection is considered dead without a message from the server.
    ping_deadline: Option<Instant>,
    ping_window: Option<Duration>,
}

/// The driver's view of one subscription.
struct SubscriptionEntry {
    shared: Arc<SubscriptionShared>,
    /// What the application wants and the protocol reached: `Unsubscribed`, `Subscribing` or
    /// `Subscribed` (the `SubscriptionStatus` kinds).
    state: SubState,
    position: Option<StreamPosition>,
    recoverable: bool,
    token: Option<String>,
    /// A subscribe command (or its token) is on its way.
    in_flight: bool,
    attempts: u32,
    resubscribe_at: Option<Instant>,
    refresh_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    Unsubscribed,
    Subscribing,
    Subscribed,
}

impl SubscriptionEntry {
    fn emit(&self, event: SubscriptionEvent) {
        let _ = self.shared.events.send(Arc::new(event));
    }

    fn set_subscribing(&mut self, code: u32, reason: &str) {
        self.shared
            .state
            .send_replace(SubscriptionStatus::Subscribing);
        if self.state != SubState::Subscribing {
            self.state = SubState::Subscribing;
            self.emit(SubscriptionEvent::Subscribing {
                code,
                reason: reason.into(),
            });
        }
    }

    fn set_unsubscribed(&mut self, code: u32, reason: &str) {
        self.resubscribe_at = None;
        self.refresh_at = None;
        self.shared
            .state
            .send_replace(SubscriptionStatus::Unsubscribed {
                code,
                reason: reason.into(),
            });
        if self.state != SubState::Unsubscribed {
            self.state = SubState::Unsubscribed;
            self.emit(SubscriptionEvent::Unsubscribed {
                code,
                reason: reason.into(),
            });
        }
    }
}

/// A server-side subscription's position, kept to recover it at the next connect.
#[derive(Default)]
struct ServerSubscription {
    recoverable: bool,
    position: StreamPosition,
}

pub(crate) struct Driver {
    config: Arc<Config>,
    control: mpsc::UnboundedReceiver<Control>,
    calls: mpsc::Receiver<Call>,
    calls_open: bool,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    state: Arc<watch::Sender<ClientStatus>>,
    events: EventSender<ClientEvent>,

    /// The application wants a connection.
    wanted: bool,
    connection: Option<Connection>,
    dialing: Option<JoinHandle<()>>,
    generation: u64,
    reconnect_at: Option<Instant>,
    attempts: u32,
    token: Option<String>,
    /// The token was refused as expired (109): get a new one before the next connect.
    token_expired: bool,
    refresh_at: Option<Instant>,

    next_id: u32,
    pending: HashMap<u32, Pending>,
    /// Calls made while connecting, sent once connected.
    queued: Vec<Call>,
    outbox: Vec<Outgoing>,
    subscriptions: HashMap<String, SubscriptionEntry>,
    server_subscriptions: HashMap<String, ServerSubscription>,
}

/// How many calls one turn takes from the queue before writing, so one busy publisher cannot
/// starve the socket.
const CALLS_PER_TURN: usize = 256;

impl Driver {
    pub(crate) fn new(
        config: Arc<Config>,
        control: mpsc::UnboundedReceiver<Control>,
        calls: mpsc::Receiver<Call>,
        state: Arc<watch::Sender<ClientStatus>>,
        events: EventSender<ClientEvent>,
    ) -> Driver {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        Driver {
            token: config.token.clone(),
            config,
            control,
            calls,
            calls_open: true,
            internal_tx,
            internal_rx,
            state,
            events,
            wanted: false,
            connection: None,
            dialing: None,
            generation: 0,
            reconnect_at: None,
            attempts: 0,
            token_expired: false,
            refresh_at: None,
            next_id: 1,
            pending: HashMap::new(),
            queued: Vec::new(),
            outbox: Vec::new(),
            subscriptions: HashMap::new(),
            server_subscriptions: HashMap::new(),
        }
    }

    /// Runs until every handle is gone.
    pub(crate) async fn run(mut self) {
        loop {
            if !self.outbox.is_empty() {
                self.flush().await;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                control = self.control.recv() => match control {
                    Some(control) => self.on_control(control).await,
                    None => break,
                },
                call = self.calls.recv(), if self.calls_open => match call {
                    Some(call) => {
                        self.on_call(call);
                        for _ in 1..CALLS_PER_TURN {
                            match self.calls.try_recv() {
                                Ok(call) => self.on_call(call),
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.calls_open = false,
                },
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal),
                message = next_message(&mut self.connection) => self.on_message(message),
                () = sleep_until(deadline) => self.on_deadline(),
            }
        }
        self.close_socket().await;
        if let Some(dialing) = self.dialing.take() {
            dialing.abort();
        }
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(Arc::new(event));
    }

    fn connected(&self) -> bool {
        self.connection.is_some()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline = self.reconnect_at;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
        };
        consider(self.refresh_at);
        consider(self.connection.as_ref().and_then(|c| c.ping_deadline));
        for entry in self.subscriptions.values() {
            consider(entry.resubscribe_at);
            consider(entry.refresh_at);
        }
        deadline
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    fn command(&mut self, request: Request, pending: Pending) {
        let id = self.next_id();
        self.pending.insert(id, pending);
        self.outbox.push(Outgoing::Command(Command { id, request }));
    }

    /// Writes the outbox as few WebSocket messages as the frame bound allows.
    async fn flush(&mut self) {
        let batch = std::mem::take(&mut self.outbox);
        if self.connection.is_none() {
            return;
        }
        let codec = self.config.codec.clone();
        let mut frames = Vec::new();
        let mut frame = Vec::new();
        for item in &batch {
            let before = frame.len();
            if let Err(e) = codec.encode(item, &mut frame) {
                self.emit(ClientEvent::Error(e));
                frame.truncate(before);
                continue;
            }
            if before > 0 && frame.len() > self.config.max_frame_bytes {
                // This item does not fit: send what came before it, and start a new frame.
                let mut next = Vec::new();
                if let Err(e) = codec.encode(item, &mut next) {
                    self.emit(ClientEvent::Error(e));
                }
                frame.truncate(before);
                frames.push(std::mem::replace(&mut frame, next));
            }
        }
        if !frame.is_empty() {
            frames.push(frame);
        }
        for frame in frames {
            let message = match codec.finish(frame) {
                Ok(message) => message,
                Err(e) => {
                    self.emit(ClientEvent::Error(e));
                    continue;
                }
            };
            let Some(connection) = self.connection.as_mut() else {
                return;
            };
            if let Err(e) = connection.sink.send(message).await {
                tracing::debug!(error = %e, "write failed");
                self.connection_lost(transport_closed());
                return;
            }
        }
    }

    async fn close_socket(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            let close = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                connection.sink.send(Message::Close(Some(close))),
            )
            .await;
        }
    }

    // ----- handles ------------------------------------------------------------------------

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Connect => {
                if self.wanted {
                    return;
                }
                self.wanted = true;
                self.attempts = 0;
                self.state.send_replace(ClientStatus::Connecting);
                self.emit(ClientEvent::Connecting {
                    code: codes::CONNECT_CALLED,
                    reason: "connect called".into(),
                });
                self.dial();
            }
            Control::Disconnect => {
                if !self.wanted && self.connection.is_none() {
                    return; // Already disconnected: nothing to tell anyone.
                }
                if let Some(dialing) = self.dialing.take() {
                    dialing.abort();
                }
                self.outbox.clear();
                self.close_socket().await;
                self.after_connection(codes::DISCONNECT_CALLED, "disconnect called");
                self.go_disconnected(codes::DISCONNECT_CALLED, "disconnect called");
            }
            Control::Add(shared) => {
                let channel = shared.channel.clone();
                self.subscriptions.insert(
                    channel,
                    SubscriptionEntry {
                        token: shared.options.token.clone(),
                        position: shared.options.since.clone(),
                        recoverable: shared.options.since.is_some(),
                        shared,
                        state: SubState::Unsubscribed,
                        in_flight: false,
                        attempts: 0,
                        resubscribe_at: None,
                        refresh_at: None,
                    },
                );
            }
            Control::Subscribe(channel) => {
                let Some(entry) = self.subscriptions.get_mut(&channel) else {
                    return;
                };
                if entry.state != SubState::Unsubscribed {
                    return;
                }
                entry.attempts = 0;
                entry.set_subscribing(codes::SUBSCRIBE_CALLED, "subscribe called");
                if self.connected() {
                    self.send_subscribe(&channel);
                }
            }
            Control::Unsubscribe(channel) => self.unsubscribe(&channel, true),
            Control::Remove(channel) => {
                self.unsubscribe(&channel, true);
                self.subscriptions.remove(&channel);
            }
        }
    }

    /// Unsubscribes on the application's behalf (or because a refresh failed for good).
    fn unsubscribe(&mut self, channel: &str, called: bool) {
        let Some(entry) = self.subscriptions.get_mut(channel) else {
            return;
        };
        let was_subscribed = entry.state == SubState::Subscribed;
        if called {
            entry.set_unsubscribed(codes::UNSUBSCRIBE_CALLED, "unsubscribe called");
        }
        // A subscribe still in flight is undone when its reply comes.
        if was_subscribed && self.connected() {
            self.command(
                Request::Unsubscribe {
                    channel: channel.into(),
                },
                Pending::Ignore,
            );
        }
    }

    fn on_call(&mut self, call: Call) {
        if self.connected() {
            self.send_call(call);
        } else if self.wanted {
            // Callers that gave up (timed out, cancelled) leave nothing behind.
            self.queued.retain(|queued| !queued.reply.is_closed());
            self.queued.push(call);
        } else {
            let _ = call.reply.send(Err(self.disconnected_error()));
        }
    }

    fn send_call(&mut self, call: Call) {
        if let Request::Send { .. } = call.request {
            // No reply comes for `send`: it is done once written.
            self.outbox.push(Outgoing::Command(Command {
                id: 0,
                request: call.request,
            }));
            let _ = call.reply.send(Ok(Reply::default()));
        } else {
            self.command(call.request, Pending::Caller(call.reply));
        }
    }

    fn disconnected_error(&self) -> Error {
        match &*self.state.borrow() {
            ClientStatus::Disconnected { code, reason } => Error::Disconnected {
                code: *code,
                reason: reason.clone(),
            },
            _ => Error::ConnectionClosed,
        }
    }

    // ----- connecting ---------------------------------------------------------------------

    /// Starts a connection attempt in its own task.
    fn dial(&mut self) {
        self.reconnect_at = None;
        self.generation += 1;
        let generation = self.generation;
        let config = self.config.clone();
        let need_token =
            self.config.get_token.is_some() && (self.token.is_none() || self.token_expired);
        let token = self.token.clone();
        let subs = self
            .server_subscriptions
            .iter()
            .filter(|(_, s)| s.recoverable)
            .map(|(channel, s)| {
                (
                    channel.clone(),
                    SubscribeRecovery {
                        recover: true,
                        offset: s.position.offset,
                        epoch: s.position.epoch.clone(),
                    },
                )
            })
            .collect();
        let request = ConnectRequest {
            token: None,
            data: config.data.clone(),
            name: config.name.clone(),
            version: config.version.clone(),
            headers: config.headers.clone(),
            subs,
        };
        let internal = self.internal_tx.clone();
        self.dialing = Some(tokio::spawn(async move {
            let result = dial(&config, token, need_token, request).await;
            let _ = internal.send(Internal::Dialed {
                generation,
                result: Box::new(result),
            });
        }));
    }

    fn schedule_reconnect(&mut self) {
        let delay = backoff(
            self.attempts,
            self.config.min_reconnect_delay,
            self.config.max_reconnect_delay,
            rand::random::<f64>(),
        );
        self.attempts = self.attempts.saturating_add(1);
        self.reconnect_at = Some(Instant::now() + delay);
        tracing::debug!(
            ?delay,
            attempt = self.attempts,
            "reconnecting after a delay"
        );
    }

    fn on_dialed(&mut self, result: Result<Dialed, DialError>) {
        self.dialing = None;
        if !self.wanted {
            return;
        }
        let dialed = match result {
            Ok(dialed) => dialed,
            Err(DialError::Unauthorized) => {
                self.go_disconnected(codes::UNAUTHORIZED, "unauthorized");
                return;
            }
            Err(DialError::Token(e)) => {
                self.emit(ClientEvent::Error(Error::Token(e)));
                self.schedule_reconnect();
                return;
            }
            Err(DialError::Transport(e)) => {
                self.emit(ClientEvent::Error(Error::Transport(e)));
                self.schedule_reconnect();
                return;
            }
            Err(DialError::Closed(outcome)) => {
                if outcome.reconnect {
                    self.emit(ClientEvent::Connecting {
                        code: outcome.code,
                        reason: outcome.reason,
                    });
                    self.schedule_reconnect();
                } else {
                    self.go_disconnected(outcome.code, &outcome.reason);
                }
                return;
            }
            Err(DialError::Server(error)) => {
                let Error::Server {
                    code,
                    ref message,
                    temporary,
                } = error
                else {
                    return;
                };
                let message = message.clone();
                self.emit(ClientEvent::Error(error));
                if code == codes::ERROR_TOKEN_EXPIRED {
                    self.token_expired = true;
                }
                if error_retries(code, temporary) {
                    self.schedule_reconnect();
                } else {
                    self.go_disconnected(code, &message);
                }
                return;
            }
        };
        let Dialed {
            ws,
            result,
            token,
            leftovers,
        } = dialed;
        let (sink, stream) = ws.split();
        let ping_window = (result.ping > 0).then(|| {
            Duration::from_secs(u64::from(result.ping)) + self.config.max_server_ping_delay
        });
        self.connection = Some(Connection {
            sink,
            stream,
            pong: result.pong,
            ping_deadline: ping_window.map(|w| Instant::now() + w),
            ping_window,
        });
        self.token = token;
        self.token_expired = false;
        self.attempts = 0;
        self.next_id = 2;
        self.refresh_at = result.expires.then(|| refresh_time(result.ttl));
        self.state.send_replace(ClientStatus::Connected {
            client: result.client.clone(),
        });
        self.emit(ClientEvent::Connected {
            client: result.client.clone(),
            data: result.data.clone(),
        });
        for (channel, subscribed) in result.subs {
            self.on_server_subscribed(channel, subscribed);
        }
        let channels: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, e)| e.state == SubState::Subscribing)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in channels {
            self.send_subscribe(&channel);
        }
        for call in std::mem::take(&mut self.queued) {
            self.send_call(call);
        }
        for reply in leftovers {
            self.on_reply(reply);
        }
    }

    /// The connection is gone (closed by either side, or never completed): commands waiting for
    /// replies fail and subscriptions wait to resubscribe.
    fn after_connection(&mut self, code: u32, reason: &str) {
        self.connection = None;
        self.refresh_at = None;
        for (_, pending) in self.pending.drain() {
            if let Pending::Caller(reply) = pending {
                let _ = reply.send(Err(Error::ConnectionClosed));
            }
        }
        let invalidated = code == codes::DISCONNECT_STATE_INVALIDATED;
        if invalidated {
            self.token = None;
            self.server_subscriptions.clear();
        }
        for entry in self.subscriptions.values_mut() {
            entry.in_flight = false;
            entry.resubscribe_at = None;
            entry.refresh_at = None;
            if invalidated {
                entry.position = None;
                entry.token = None;
            }
            if entry.state == SubState::Subscribed {
                entry.set_subscribing(codes::SUBSCRIBING_TRANSPORT_CLOSED, reason);
            }
        }
    }

    /// The connection closed: reconnect or stop, as `outcome` says (see [`codes`]).
    fn connection_lost(&mut self, outcome: CloseOutcome) {
        let CloseOutcome {
            code,
            reason,
            reconnect,
        } = outcome;
        let reason = reason.as_str();
        self.after_connection(code, reason);
        if !self.wanted {
            return;
        }
        if reconnect {
            self.state.send_replace(ClientStatus::Connecting);
            self.emit(ClientEvent::Connecting {
                code,
                reason: reason.into(),
            });
            self.schedule_reconnect();
        } else {
            self.go_disconnected(code, reason);
        }
    }

    fn go_disconnected(&mut self, code: u32, reason: &str) {
        self.wanted = false;
        self.reconnect_at = None;
        self.refresh_at = None;
        self.connection = None;
        self.state.send_replace(ClientStatus::Disconnected {
            code,
            reason: reason.into(),
        });
        for call in std::mem::take(&mut self.queued) {
            let _ = call.reply.send(Err(Error::Disconnected {
                code,
                reason: reason.into(),
            }));
        }
        self.emit(ClientEvent::Disconnected {
            code,
            reason: reason.into(),
        });
    }

    // ----- timers and spawned work ---------------------------------------------------------

    fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.reconnect_at.is_some_and(|at| at <= now) {
            self.reconnect_at = None;
            if self.wanted && !self.connected() && self.dialing.is_none() {
                self.dial();
            }
        }
        if let Some(connection) = &self.connection {
            if connection.ping_deadline.is_some_and(|at| at <= now) {
                tracing::debug!("no ping from the server in time");
                self.connection = None;
                self.connection_lost(CloseOutcome {
                    code: codes::NO_PING,
                    reason: "no ping".into(),
                    reconnect: true,
                });
                return;
            }
        }
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh_at = None;
            self.fetch_refresh_token();
        }
        let due: Vec<(String, bool)> = self
            .subscriptions
            .iter()
            .filter_map(|(channel, e)| {
                if e.resubscribe_at.is_some_and(|at| at <= now) {
                    Some((channel.clone(), false))
                } else if e.refresh_at.is_some_and(|at| at <= now) {
                    Some((channel.clone(), true))
                } else {
                    None
                }
            })
            .collect();
        for (channel, refresh) in due {
            let Some(entry) = self.subscriptions.get_mut(&channel) else {
                continue;
            };
            if refresh {
                entry.refresh_at = None;
                self.fetch_subscription_token(&channel, true);
            } else {
                entry.resubscribe_at = None;
                if self.connected() {
                    self.send_subscribe(&channel);
                }
            }
        }
    }

    fn fetch_refresh_token(&mut self) {
        let Some(get_token) = self.config.get_token.clone() else {
            return;
        };
        let generation = self.generation;
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = get_token().await;
            let _ = internal.send(Internal::RefreshToken { generation, result });
        });
    }

    fn fetch_subscription_token(&mut self, channel: &str, refresh: bool) {
        let Some(entry) = self.subscriptions.get(channel) else {
            return;
        };
        let Some(get_token) = entry.shared.options.get_token.clone() else {
            return;
        };
        let generation = self.generation;
        let internal = self.internal_tx.clone();
        let channel = channel.to_string();
        tokio::spawn(async move {
            let result = get_token(channel.clone()).await;
            let _ = internal.send(Internal::SubscribeToken {
                generation,
                channel,
                refresh,
                result,
            });
        });
    }

    fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Dialed { generation, result } => {
                if generation == self.generation {
                    self.on_dialed(*result);
                }
            }
            Internal::RefreshToken { generation, result } => {
                if generation != self.generation || !self.connected() {
                    return;
                }
                match result {
                    Ok(token) if token.is_empty() => {
                        self.connection = None;
                        self.after_connection(codes::UNAUTHORIZED, "unauthorized");
                        self.go_disconnected(codes::UNAUTHORIZED, "unauthorized");
                    }
                    Ok(token) => {
                        self.token = Some(token.clone());
                        self.command(Request::Refresh { token }, Pending::Refresh);
                    }
                    Err(e) => {
                        self.emit(ClientEvent::Error(Error::Token(e)));
                        self.refresh_at = Some(retry_later(5));
                    }
                }
            }
            Internal::SubscribeToken {
                generation,
                channel,
                refresh,
                result,
            } => {
                if generation != self.generation || !self.connected() {
                    return;
                }
                let Some(entry) = self.subscriptions.get_mut(&channel) else {
                    return;
                };
                let wanted = if refresh {
                    entry.state == SubState::Subscribed
                } else {
                    entry.state == SubState::Subscribing
                };
                if !wanted {
                    entry.in_flight = false;
                    return;
                }
                match result {
                    Ok(token) if token.is_empty() => {
                        entry.in_flight = false;
                        entry.set_unsubscribed(codes::SUBSCRIPTION_UNAUTHORIZED, "unauthorized");
                        if refresh {
                            self.command(Request::Unsubscribe { channel }, Pending::Ignore);
                        }
                    }
                    Ok(token) => {
                        entry.token = Some(token.clone());
                        if refresh {
                            self.command(
                                Request::SubRefresh {
                                    channel: channel.clone(),
                                    token,
                                },
                                Pending::SubRefresh(channel),
                            );
                        } else {
                            entry.in_flight = false;
                            self.send_subscribe(&channel);
                        }
                    }
                    Err(e) => {
                        entry.emit(SubscriptionEvent::Error(Error::Token(e)));
                        if refresh {
                            entry.refresh_at = Some(retry_later(10));
                        } else {
                            entry.in_flight = false;
                            self.schedule_resubscribe(&channel);
                        }
                    }
                }
            }
        }
    }

    // ----- subscriptions -------------------------------------------------------------------

    fn send_subscribe(&mut self, channel: &str) {
        let Some(entry) = self.subscriptions.get_mut(channel) else {
            return;
        };
        if entry.in_flight || entry.state != SubState::Subscribing {
            return;
        }
        entry.in_flight = true;
        if entry.token.is_none() && entry.shared.options.get_token.is_some() {
            self.fetch_subscription_token(channel, false);
            return;
        }
        let recover = entry.recoverable && entry.position.is_some();
        let position = entry.position.clone().unwrap_or_default();
        let request = SubscribeRequest {
            channel: channel.into(),
            token: entry.token.clone(),
            data: entry.shared.options.data.clone(),
            recover,
            offset: if recover { position.offset } else { 0 },
            epoch: if recover {
                position.epoch
            } else {
                String::new()
            },
            join_leave: entry.shared.options.join_leave,
        };
        self.command(
            Request::Subscribe(request),
            Pending::Subscribe(channel.into()),
        );
    }

    fn schedule_resubscribe(&mut self, channel: &str) {
        let (min, max) = (
            self.config.min_reconnect_delay,
            self.config.max_reconnect_delay,
        );
        if let Some(entry) = self.subscriptions.get_mut(channel) {
            let delay = backoff(entry.attempts, min, max, rand::random::<f64>());
            entry.attempts = entry.attempts.saturating_add(1);
            entry.resubscribe_at = Some(Instant::now() + delay);
        }
    }

    fn on_subscribe_reply(&mut self, channel: String, reply: Reply) {
        let Some(entry) = self.subscriptions.get_mut(&channel) else {
            // Removed while subscribing: undo the subscription if it happened.
            if reply.error.is_none() {
                self.command(Request::Unsubscribe { channel }, Pending::Ignore);
            }
            return;
        };
        entry.in_flight = false;
        if let Some(error) = reply.error {
            let error_code = error.code;
            let temporary = error.temporary;
            let message = error.message.clone();
            entry.emit(SubscriptionEvent::Error(server_error(error)));
            if entry.state != SubState::Subscribing {
                return;
            }
            if error_code == codes::ERROR_TOKEN_EXPIRED {
                entry.token = None;
            }
            if error_retries(error_code, temporary) {
                self.schedule_resubscribe(&channel);
            } else {
                entry.set_unsubscribed(error_code, &message);
            }
            return;
        }
        let Some(result) = reply.subscribe else {
            entry.emit(SubscriptionEvent::Error(Error::Protocol(
                "a subscribe reply without a result".into(),
            )));
            self.schedule_resubscribe(&channel);
            return;
        };
        if entry.state != SubState::Subscribing {
            // Unsubscribed meanwhile.
            self.command(Request::Unsubscribe { channel }, Pending::Ignore);
            return;
        }
        entry.attempts = 0;
        entry.state = SubState::Subscribed;
        entry.recoverable = result.recoverable;
        let subscribed = subscribed_from(&result);
        if result.recoverable || result.positioned {
            entry.position = subscribed.stream_position.clone();
        }
        entry.refresh_at = (result.expires && entry.shared.options.get_token.is_some())
            .then(|| refresh_time(result.ttl));
        entry
            .shared
            .state
            .send_replace(SubscriptionStatus::Subscribed(subscribed.clone()));
        entry.emit(SubscriptionEvent::Subscribed(subscribed));
        for publication in result.publications {
            if let Some(position) = entry.position.as_mut() {
                if publication.offset > 0 {
                    position.offset = publication.offset;
                }
            }
            entry.emit(SubscriptionEvent::Publication(publication));
        }
    }

    fn on_sub_refresh_reply(&mut self, channel: String, reply: Reply) {
        let Some(entry) = self.subscriptions.get_mut(&channel) else {
            return;
        };
        if entry.state != SubState::Subscribed {
            return;
        }
        if let Some(error) = reply.error {
            let (code, temporary, message) = (error.code, error.temporary, error.message.clone());
            entry.emit(SubscriptionEvent::Error(server_error(error)));
            if temporary || code < 100 {
                entry.refresh_at = Some(retry_later(10));
            } else {
                entry.set_unsubscribed(code, &message);
                self.command(Request::Unsubscribe { channel }, Pending::Ignore);
            }
            return;
        }
        if let Some(result) = reply.sub_refresh {
            entry.refresh_at = result.expires.then(|| refresh_time(result.ttl));
        }
    }

    fn on_refresh_reply(&mut self, reply: Reply) {
        if let Some(error) = reply.error {
            let (code, temporary, message) = (error.code, error.temporary, error.message.clone());
            self.emit(ClientEvent::Error(server_error(error)));
            if temporary || code < 100 {
                self.refresh_at = Some(retry_later(5));
            } else {
                // Centrifugo's clients give up the connection when a refresh is refused.
                self.connection = None;
                self.after_connection(code, &message);
                self.go_disconnected(code, &message);
            }
            return;
        }
        if let Some(result) = reply.refresh {
            self.refresh_at = result.expires.then(|| refresh_time(result.ttl));
        }
    }

    fn on_server_subscribed(&mut self, channel: String, result: SubscribeResult) {
        let subscribed = subscribed_from(&result);
        let entry = self
            .server_subscriptions
            .entry(channel.clone())
            .or_default();
        entry.recoverable = result.recoverable;
        if let Some(position) = &subscribed.stream_position {
            entry.position = position.clone();
        }
        self.emit(ClientEvent::ServerSubscribed {
            channel: channel.clone(),
            subscribed,
        });
        for publication in result.publications {
            self.on_server_publication(channel.clone(), publication);
        }
    }

    fn on_server_publication(&mut self, channel: String, publication: Publication) {
        if let Some(entry) = self.server_subscriptions.get_mut(&channel) {
            if publication.offset > 0 {
                entry.position.offset = publication.offset;
            }
        }
        self.emit(ClientEvent::ServerPublication {
            channel,
            publication,
        });
    }

    // ----- reading ------------------------------------------------------------------------

    fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) {
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "read failed");
                let outcome = match e {
                    tokio_tungstenite::tungstenite::Error::Capacity(_) => {
                        close_outcome(Some(1009), "")
                    }
                    _ => transport_closed(),
                };
                self.connection_lost(outcome);
                return;
            }
            None => {
                self.connection_lost(transport_closed());
                return;
            }
        };
        if let Message::Close(frame) = &message {
            self.connection_lost(close_of(frame.as_ref()));
            return;
        }
        if let Some(connection) = self.connection.as_mut() {
            connection.ping_deadline = connection.ping_window.map(|w| Instant::now() + w);
        }
        match self.config.codec.decode(&message) {
            Ok(replies) => {
                for reply in replies {
                    self.on_reply(reply);
                }
            }
            Err(e) => {
                self.emit(ClientEvent::Error(e));
                self.connection_lost(CloseOutcome {
                    code: codes::BAD_PROTOCOL,
                    reason: "bad protocol".into(),
                    reconnect: true,
                });
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        if reply.id > 0 {
            match self.pending.remove(&reply.id) {
                Some(Pending::Caller(tx)) => {
                    let result = match reply.error {
                        Some(error) => Err(server_error(error)),
                        None => Ok(reply),
                    };
                    let _ = tx.send(result);
                }
                Some(Pending::Subscribe(channel)) => self.on_subscribe_reply(channel, reply),
                Some(Pending::SubRefresh(channel)) => self.on_sub_refresh_reply(channel, reply),
                Some(Pending::Refresh) => self.on_refresh_reply(reply),
                Some(Pending::Ignore) | None => {}
            }
            return;
        }
        if let Some(push) = reply.push {
            self.on_push(push);
        } else if reply.is_ping() {
            if let Some(connection) = &self.connection {
                if connection.pong {
                    self.outbox.push(Outgoing::Pong);
                }
            }
        }
    }

    fn on_push(&mut self, push: Push) {
        let Push {
            channel,
            publication,
            join,
            leave,
            unsubscribe,
            subscribe,
            message,
            disconnect,
        } = push;
        if let Some(disconnect) = disconnect {
            self.connection = None;
            // A disconnect push (emulated transports) is judged by its code alone.
            self.connection_lost(CloseOutcome {
                reconnect: disconnect_reconnects(disconnect.code),
                code: disconnect.code,
                reason: disconnect.reason,
            });
            return;
        }
        if let Some(message) = message {
            self.emit(ClientEvent::Message(message.data));
            return;
        }
        if let Some(entry) = self.subscriptions.get_mut(&channel) {
            if let Some(publication) = publication {
                if entry.state != SubState::Subscribed {
                    return;
                }
                if let Some(position) = entry.position.as_mut() {
                    if publication.offset > 0 {
                        position.offset = publication.offset;
                    }
                }
                entry.emit(SubscriptionEvent::Publication(publication));
            } else if let Some(join) = join {
                entry.emit(SubscriptionEvent::Join(join.info));
            } else if let Some(leave) = leave {
                entry.emit(SubscriptionEvent::Leave(leave.info));
            } else if let Some(unsubscribe) = unsubscribe {
                if entry.state == SubState::Unsubscribed {
                    return;
                }
                if codes::unsubscribe_resubscribes(unsubscribe.code) {
                    if unsubscribe.code == codes::UNSUBSCRIBE_STATE_INVALIDATED {
                        entry.position = None;
                    }
                    entry.in_flight = false;
                    entry.refresh_at = None;
                    entry.set_subscribing(unsubscribe.code, &unsubscribe.reason);
                    self.send_subscribe(&channel);
                } else {
                    entry.set_unsubscribed(unsubscribe.code, &unsubscribe.reason);
                }
            }
            return;
        }
        // Not a client subscription: a server-side one.
        if let Some(subscribed) = subscribe {
            self.on_server_subscribed(channel, subscribed);
        } else if let Some(publication) = publication {
            self.on_server_publication(channel, publication);
        } else if let Some(join) = join {
            self.emit(ClientEvent::ServerJoin {
                channel,
                info: join.info,
            });
        } else if let Some(leave) = leave {
            self.emit(ClientEvent::ServerLeave {
                channel,
                info: leave.info,
            });
        } else if unsubscribe.is_some() {
            self.server_subscriptions.remove(&channel);
            self.emit(ClientEvent::ServerUnsubscribed { channel });
        }
    }
}

/// Opens a WebSocket and completes `connect`, within the client's timeout.
async fn dial(
    config: &Config,
    mut token: Option<String>,
    need_token: bool,
    mut request: ConnectRequest,
) -> Result<Dialed, DialError> {
    if need_token {
        if let Some(get_token) = &config.get_token {
            let fresh = get_token().await.map_err(DialError::Token)?;
            if fresh.is_empty() {
                return Err(DialError::Unauthorized);
            }
            token = Some(fresh);
        }
    }
    request.token = token.clone();
    let handshake = async {
        let mut http = config
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| DialError::Transport(e.to_string()))?;
        if let Some(protocol) = config.codec.subprotocol() {
            http.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
        }
        let stream = open_stream(config, http.uri())
            .await
            .map_err(DialError::Transport)?;
        // A 16 KiB read buffer rather than tungstenite's 128 KiB, reserved per connection: it
        // grows for a larger frame, and an application may hold many clients.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .max_message_size(Some(64 << 20));
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(http, stream, Some(ws_config))
                .await
                .map_err(|e| DialError::Transport(e.to_string()))?;
        let mut frame = Vec::new();
        let connect = Outgoing::Command(Command {
            id: 1,
            request: Request::Connect(request),
        });
        config
            .codec
            .encode(&connect, &mut frame)
            .map_err(|e| DialError::Transport(e.to_string()))?;
        let message = config
            .codec
            .finish(frame)
            .map_err(|e| DialError::Transport(e.to_string()))?;
        ws.send(message)
            .await
            .map_err(|e| DialError::Transport(e.to_string()))?;
        loop {
            let message = match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return Err(DialError::Closed(close_of(frame.as_ref())));
                }
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(DialError::Transport(e.to_string())),
                None => return Err(DialError::Transport("connection ended".into())),
            };
            let replies = config
                .codec
                .decode(&message)
                .map_err(|e| DialError::Transport(e.to_string()))?;
            let mut replies = replies.into_iter();
            let mut leftovers = Vec::new();
            while let Some(reply) = replies.next() {
                if reply.id != 1 {
                    leftovers.push(reply);
                    continue;
                }
                if let Some(error) = reply.error {
                    return Err(DialError::Server(server_error(error)));
                }
                let Some(result) = reply.connect else {
                    return Err(DialError::Transport(
                        "a connect reply without a result".into(),
                    ));
                };
                leftovers.extend(replies);
                return Ok((ws, result, leftovers));
            }
        }
    };
    let (ws, result, leftovers) = tokio::time::timeout(config.timeout, handshake)
        .await
        .map_err(|_| DialError::Transport("connect timed out".into()))??;
    Ok(Dialed {
        ws,
        result,
        token,
        leftovers,
    })
}

/// Opens the TCP connection to the URL's host, with TLS for `wss://`.
async fn open_stream(
    config: &Config,
    uri: &tokio_tungstenite::tungstenite::http::Uri,
) -> Result<Box<dyn Io>, String> {
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => return Err(format!("the URL's scheme must be ws or wss, not {other:?}")),
    };
    let host = uri
        .host()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let name =
        ServerName::try_from(host.clone()).map_err(|e| format!("server name {host}: {e}"))?;
    let tls = config
        .tls
        .get_or_try_init(|| {
            // Reading the system's certificates is file I/O: off the runtime's workers.
            let extra = config.extra_roots.clone();
            async move {
                tokio::task::spawn_blocking(move || tls_config(extra))
                    .await
                    .map_err(|e| e.to_string())?
            }
        })
        .await?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    Ok(Box::new(stream))
}

/// TLS settings: the system's root certificates and the application's own, the ring provider.
fn tls_config(
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for cert in extra_roots {
        roots
            .add(cert)
            .map_err(|e| format!("a root certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// What a close frame (or its absence) means.
fn close_of(frame: Option<&CloseFrame>) -> CloseOutcome {
    match frame {
        Some(frame) => close_outcome(Some(u16::from(frame.code)), &frame.reason),
        None => close_outcome(None, ""),
    }
}

/// The socket ended or failed without a close frame.
fn transport_closed() -> CloseOutcome {
    close_outcome(None, "")
}

fn server_error(error: crate::protocol::ErrorBody) -> Error {
    Error::Server {
        code: error.code,
        message: error.message,
        temporary: error.temporary,
    }
}

fn subscribed_from(result: &SubscribeResult) -> Subscribed {
    Subscribed {
        recoverable: result.recoverable,
        positioned: result.positioned,
        stream_position: (result.recoverable || result.positioned).then(|| StreamPosition {
            offset: result.offset,
            epoch: result.epoch.clone(),
        }),
        was_recovering: result.was_recovering,
        recovered: result.recovered,
        data: result.data.clone(),
    }
}

/// When to refresh something that expires in `ttl` seconds: early enough to beat the server's
/// deadline, which counts whole seconds (a tenth of the time left, from 1 s to 10 s early, and at
/// most half of it).
fn refresh_time(ttl: u32) -> Instant {
    let ttl = Duration::from_secs(u64::from(ttl));
    let early = (ttl / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
        .min(ttl / 2);
    Instant::now() + ttl - early
}

/// A retry time `base`–`2·base` seconds from now (as centrifuge-js retries refreshes).
fn retry_later(base: u64) -> Instant {
    let jitter = rand::random::<f64>() * base as f64;
    Instant::now() + Duration::from_secs_f64(base as f64 + jitter)
}

async fn next_message(
    connection: &mut Option<Connection>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match connection {
        Some(connection) => connection.stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

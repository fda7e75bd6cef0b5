//! One client: its authentication, its subscriptions, and the handling of its commands.
//!
//! A [`Session`] is owned by its connection task (see `transport`), which feeds it client frames
//! and control requests and writes what it queues. Replies and pushes share the client's bounded
//! queue, so they reach the client in the order they were produced.
//!
//! This file holds the session's state, the dispatch of commands to their family and the reply
//! path; each family lives beside it: [`connect`](self::connect) (connect, refresh),
//! [`subscribe`](self::subscribe) (subscribe, recovery, unsubscribe), [`publish`](self::publish)
//! (the publish pipeline), [`query`](self::query) (presence, history), [`rpc`](self::rpc),
//! [`control`](self::control) (what the node asks of the session, expiries) and
//! [`limiter`](self::limiter) (the command rate limit).
//!
//! Cleanup lives in `Drop`: however the connection ends (close frame, reset, timeout, slow client,
//! shutdown, API disconnect, even a panic), dropping the session releases every subscription and
//! presence entry. There is no other exit path to forget.

mod connect;
mod control;
mod limiter;
mod map;
mod publish;
mod query;
mod rpc;
mod subscribe;
#[cfg(test)]
mod testing;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::time::Instant;

use crate::auth::unix_now;
use crate::hooks::decisions::{Client, ClientHeaders, Link, Transport};
use crate::hooks::events::Event;
use crate::hooks::Refusal;
use crate::hub::{ConnId, ControlSender};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol::{
    ClientInfo, Command, Disconnect, Empty, Encoding, Error, Payload, Reply, ReplyResult, Request,
};
use crate::queue::ClientQueue;
use crate::timeline::Lane;
use crate::vecmap::VecMap;

use limiter::RateLimiter;
use publish::Pipeline;

/// A subscription held by a session.
#[derive(Debug, Clone)]
struct Subscription {
    info: ClientInfo,
    presence: bool,
    join_leave: bool,
    /// When the subscription token expires (unix seconds), if it does.
    expires_at: Option<u64>,
    /// The server renews the subscription itself when it expires.
    refreshed_by_server: bool,
    /// A map channel removing the key named by the client id when the client leaves.
    remove_map_key: bool,
    /// The subscriber is listed in map presence channels (see [`Node::map_presence_join`]).
    map_presence: bool,
}

/// One connected (or connecting) client.
pub struct Session {
    node: Node,
    conn: ConnId,
    queue: Arc<ClientQueue>,
    control: ControlSender,
    identity: Option<Identity>,
    /// A [`VecMap`]: a client usually holds one or a few subscriptions, and this map is paid
    /// for by every connection.
    subscriptions: VecMap<String, Subscription>,
    /// When the last ping was sent, while its pong is awaited.
    ping_sent: Option<Instant>,
    /// When the connection's token expires (unix seconds), if it does.
    expires_at: Option<u64>,
    /// The server renews the connection itself when it expires (see
    /// [`ConnectDecision::refreshed_by_server`](crate::hooks::decisions::ConnectDecision)).
    refreshed_by_server: bool,
    /// A client of a unidirectional transport: it hears of its state in pushes.
    unidirectional: bool,
    /// The transport the client came over (its encoding is its queue's).
    transport: Transport,
    /// The headers of the request that opened the connection, as far as they are forwarded to
    /// the application backend.
    headers: ClientHeaders,
    limiter: RateLimiter,
    /// Publishes in flight, oldest first, with the ids of the commands they answer. Created on
    /// first use (most connections never publish) and boxed to keep idle sessions small. Only
    /// reached through `&mut self` (`Mutex::get_mut`, never locked): the mutex only makes the
    /// session `Sync`, which its `&self` methods held across awaits need.
    pipeline: Option<Box<Mutex<Pipeline>>>,
    /// Why the connection ends, once known (see [`Session::closing`]). Boxed: only a closing
    /// session needs it, and every idle one pays for its inline size.
    closing: Option<Box<Disconnect>>,
}

/// Who the client is, once connected.
#[derive(Debug, Clone)]
struct Identity {
    client: Arc<str>,
    user: Arc<str>,
    conn_info: Option<Payload>,
    /// Server-only data the connect decision attached.
    meta: Option<Payload>,
    headers: ClientHeaders,
}

impl Identity {
    /// The client as a decision sees it, connected by `link` (the session's: kept out of the
    /// identity, which every connection holds and every command clones, so it stays small).
    fn as_client(&self, link: Link) -> Client<'_> {
        Client {
            client: &self.client,
            link,
            user: &self.user,
            conn_info: self.conn_info.as_ref(),
            meta: self.meta.as_ref(),
            headers: &self.headers,
        }
    }
}

/// What one frame asks of the connection.
pub type Outcome = Result<(), Disconnect>;

/// What a command handler answers: a result to reply with, nothing (it replied itself, or the
/// command has no reply), or a refusal (an error reply, or a disconnect).
type Answer = Result<Option<ReplyResult>, Refusal>;

impl Session {
    /// A session of a client connected over `transport`, writing to `queue` (whose encoding is
    /// the client's); `control` is the sender of the channel the connection task reads control
    /// requests from.
    pub fn new(
        node: Node,
        queue: Arc<ClientQueue>,
        control: ControlSender,
        transport: Transport,
    ) -> Session {
        Metrics::inc(&node.metrics().connections_accepted);
        node.metrics().encodings.opened(queue.encoding());
        let limiter = RateLimiter::new(
            node.config().client_command_rate,
            node.config().client_command_burst,
        );
        Session {
            conn: node.next_conn_id(),
            node,
            queue,
            control,
            identity: None,
            subscriptions: VecMap::new(),
            ping_sent: None,
            expires_at: None,
            refreshed_by_server: false,
            unidirectional: false,
            transport,
            headers: ClientHeaders::default(),
            limiter,
            pipeline: None,
            closing: None,
        }
    }

    /// Records why the connection ends, for the `Disconnected` event the session's `Drop`
    /// emits; the latest call wins, so the transport, which knows what it finally sent, calls it
    /// last. Never called: the client or the network ended it (3000 "connection closed").
    pub fn closing(&mut self, reason: &Disconnect) {
        self.closing = Some(Box::new(reason.clone()));
    }

    /// Keeps the headers of the request that opened the connection (those the configuration
    /// forwards) for the decisions about this client.
    pub fn forward_headers(&mut self, headers: ClientHeaders) {
        self.headers = headers;
    }

    /// Whether `connect` succeeded.
    pub fn is_connected(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether the client is on a unidirectional transport.
    pub fn is_unidirectional(&self) -> bool {
        self.unidirectional
    }

    /// The connection's number on this node.
    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// The connection's id, once connected.
    pub fn client_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| &*i.client)
    }

    /// Notes that a server ping was just queued; a pong is now expected.
    pub fn ping_sent(&mut self, at: Instant) {
        if self.ping_sent.is_none() {
            self.ping_sent = Some(at);
        }
    }

    /// Notes a frame from the client. While a pong is awaited, a client whose frames keep
    /// arriving is alive even if its pong is late: under backpressure (its publishes waiting for
    /// durable writes) the pong sits behind its earlier frames, unread. The pong stays due, from
    /// now. A client that sends but does not read is caught by its queue bound instead.
    pub fn frame_received(&mut self) {
        if self.ping_sent.is_some() {
            self.ping_sent = Some(Instant::now());
        }
    }

    /// When the outstanding ping was sent (or, since then, the client's last frame arrived), if a
    /// pong is awaited.
    pub fn awaiting_pong_since(&self) -> Option<Instant> {
        self.ping_sent
    }

    /// How the client is connected: its transport and its encoding.
    fn link(&self) -> Link {
        Link {
            transport: self.transport,
            encoding: self.encoding(),
        }
    }

    /// How this client's messages are encoded (its queue's encoding).
    pub fn encoding(&self) -> Encoding {
        self.queue.encoding()
    }

    /// Handles every command of one client frame, in order. A disconnect it returns is also
    /// recorded as the reason the connection ends.
    pub async fn handle_frame(&mut self, frame: &[u8]) -> Outcome {
        let outcome = self.handle_commands(frame).await;
        if let Err(reason) = &outcome {
            self.closing(reason);
        }
        outcome
    }

    async fn handle_commands(&mut self, frame: &[u8]) -> Outcome {
        match self.encoding() {
            Encoding::Json => {
                let text = std::str::from_utf8(frame).map_err(|_| Disconnect::INVALID_UTF8)?;
                self.handle_decoded(crate::protocol::decode_frame(text))
                    .await
            }
            Encoding::Protobuf => {
                // One copy of the frame, which the decoded payloads then share.
                let frame = Bytes::copy_from_slice(frame);
                self.handle_decoded(crate::protocol::protobuf::decode_frame(frame))
                    .await
            }
        }
    }

    /// Handles decoded commands in order; one that could not be decoded ends the connection with
    /// 3501 and the decoder's reason.
    async fn handle_decoded<E: std::fmt::Display>(
        &mut self,
        commands: impl Iterator<Item = Result<Command, E>>,
    ) -> Outcome {
        for command in commands {
            Metrics::inc(&self.node.metrics().commands_received);
            let command = command.map_err(|e| {
                tracing::debug!(error = %e, "bad command");
                Disconnect::bad_request(&e)
            })?;
            self.handle_command(command).await?;
            if self.queue.is_closed() {
                break;
            }
        }
        Ok(())
    }

    async fn handle_command(&mut self, command: Command) -> Outcome {
        let id = command.id;
        let request = command.request();
        // Replies go out in command order: anything that is answered, other than another publish,
        // waits for the publishes in flight (which also lets a `history` read see them).
        if !matches!(
            request,
            Request::Publish(_) | Request::Pong | Request::Send(_)
        ) {
            self.finish_publishes().await;
        }
        if !matches!(request, Request::Pong | Request::Connect(_)) && !self.admit(id).await? {
            return Ok(());
        }
        let _span = self.node.timeline().span(
            Lane::Command,
            request.name(),
            request.channel().unwrap_or(""),
        );
        // Decoded but not servable as sent (a Protobuf payload that is not JSON): error 107.
        if let Request::Invalid(message) = request {
            let error = Error {
                message: message.to_string(),
                ..Error::new(crate::protocol::error_code::BAD_REQUEST)
            };
            return self.answer(id, Err(Refusal::Error(error)));
        }
        // Only `connect` runs before the client is connected, and only then.
        let Some(who) = self.identity.clone() else {
            let answer = match request {
                Request::Connect(req) => self.connect(id, req).await,
                _ => Err(Disconnect::BAD_REQUEST.into()),
            };
            return self.answer(id, answer);
        };
        let answer = match request {
            Request::Connect(_) | Request::Unknown | Request::Invalid(_) => {
                Err(Disconnect::BAD_REQUEST.into())
            }
            Request::Pong => self.pong(),
            Request::Send(_) => Ok(None),
            Request::Ping => Ok(Some(ReplyResult::Ping(Empty {}))),
            Request::Subscribe(req) => self.client_subscribe(id, &who, req).await,
            Request::Unsubscribe(req) => self.client_unsubscribe(&req.channel).await,
            Request::Publish(req) => self.publish(id, &who, req).await,
            Request::Presence(req) => self.presence(&req.channel).await,
            Request::PresenceStats(req) => self.presence_stats(&req.channel).await,
            Request::History(req) => self.history(req).await,
            Request::Rpc(req) => self.rpc(&who, req).await,
            Request::Refresh(req) => self.refresh(&who, req).await,
            Request::SubRefresh(req) => self.sub_refresh(&who, req).await,
        };
        self.answer(id, answer)
    }

    /// Replies to command `id` as its handler answered; a disconnect goes back to the transport.
    fn answer(&self, id: u32, answer: Answer) -> Outcome {
        match answer {
            Ok(Some(result)) => self.reply(id, Ok(result)),
            Ok(None) => {}
            Err(Refusal::Error(error)) => self.reply(id, Err(error)),
            Err(Refusal::Disconnect(reason)) => return Err(reason),
        }
        Ok(())
    }

    /// The client's answer to our ping; one it was not asked for is a protocol error.
    fn pong(&mut self) -> Answer {
        match self.ping_sent.take() {
            Some(_) => Ok(None),
            None => Err(Disconnect::BAD_REQUEST.into()),
        }
    }

    fn reply(&self, id: u32, result: Result<ReplyResult, Error>) {
        let reply = match result {
            Ok(result) => Reply::ok(id, result),
            Err(error) => Reply::error(id, error),
        };
        let encoding = self.encoding();
        let mut encoded = reply.encode_as(encoding);
        let max = self.max_answer_bytes();
        if encoded.len() > max {
            // Queued, it would close the client as slow; refused, the client asks for less.
            encoded = Reply::error(id, Error::too_large("answer", max)).encode_as(encoding);
        }
        self.send(encoded);
    }

    /// The largest answer this client gets: half its queue bound, so an answer fits beside what
    /// is already queued. A history page or a recovery is read against it (no page that could
    /// not be sent is built), and any bigger answer is error 106 instead.
    pub(crate) fn max_answer_bytes(&self) -> usize {
        self.node.config().client_queue_max_bytes / 2
    }

    /// Queues one encoded message to this client. Only the connection's task calls this, and it
    /// looks at the queue before it waits again (see `transport`), so the push does not wake it.
    fn send(&self, message: Vec<u8>) {
        let metrics = self.node.metrics();
        match self.queue.push_from_consumer(Bytes::from(message)) {
            Ok(()) => Metrics::inc(&metrics.messages_sent),
            Err(crate::queue::PushError::Overflow) => {
                Metrics::inc(&metrics.queue_drops);
                Metrics::inc(&metrics.slow_disconnects);
            }
            Err(crate::queue::PushError::Closed) => Metrics::inc(&metrics.queue_drops),
        }
    }
}

impl Drop for Session {
    /// The one cleanup path: the hub forgets the connection and its subscriptions at once (event
    /// sinks hear of each subscription ended, then of the disconnect); presence and leave
    /// notices, which may need I/O, finish in a tracked task.
    fn drop(&mut self) {
        self.queue.close(CONNECTION_CLOSED);
        self.node.metrics().encodings.closed(self.queue.encoding());
        let subscriptions = std::mem::take(&mut self.subscriptions);
        self.node.hub().remove_connection(self.conn);
        let mut vacated = Vec::new();
        for (channel, subscription) in subscriptions.iter() {
            subscribe::emit_unsubscribed(&self.node, channel, subscription);
            if self.node.leave_channel_in_hub(channel, self.conn) {
                vacated.push(channel.clone());
            }
        }
        if let Some(who) = &self.identity {
            let closed = CONNECTION_CLOSED;
            let reason = self.closing.as_deref().unwrap_or(&closed);
            self.node.emit(Event::Disconnected {
                client: &who.client,
                user: &who.user,
                code: u32::from(reason.code),
                reason: &reason.reason,
            });
        }
        // A connection counted against its user's limit across nodes is uncounted.
        let counted = self
            .identity
            .as_ref()
            .filter(|who| self.node.config().user_connection_limit > 0 && !who.user.is_empty())
            .map(|who| (who.user.clone(), who.client.clone()));
        if subscriptions.is_empty() && counted.is_none() {
            return;
        }
        let node = self.node.clone();
        let cleanup = async move {
            let _span = node
                .timeline()
                .span(Lane::Background, "session cleanup", "");
            if let Some((user, client)) = counted {
                if let Err(e) = node
                    .presence_storage()
                    .release_user_connection(&user, &client)
                    .await
                {
                    tracing::debug!(error = %e, "user connection not uncounted (it expires)");
                }
            }
            for (channel, subscription) in subscriptions {
                subscribe::release_shared(&node, &channel, &subscription).await;
            }
            for channel in vacated {
                node.stop_receiving(&channel).await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                drop(runtime.spawn(self.node.tracker().track_future(cleanup)));
            }
            Err(_) => tracing::warn!("session dropped outside the runtime; presence not released"),
        }
    }
}

/// How a connection ends when neither side named a reason: the client or the network closed it.
const CONNECTION_CLOSED: Disconnect = Disconnect::new(3000, "connection closed");

/// Seconds left until `expires_at` (unix seconds), as the protocol's `ttl` carries them.
fn ttl_from(expires_at: u64) -> u32 {
    expires_at.saturating_sub(unix_now()).min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::testing::{node_with, TestClient};
    use crate::hooks::events::{Event, EventSink};
    use crate::node::NodeHooks;
    use crate::protocol::Disconnect;

    /// Keeps each event as one line: its name and what it is about.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl EventSink for Recorder {
        fn emit(&self, event: &Event<'_>) {
            let about = match event {
                Event::Connected { user, .. } => format!("user={user}"),
                Event::Disconnected { code, reason, .. } => format!("{code} {reason}"),
                Event::Subscribed { channel, .. }
                | Event::Unsubscribed { channel, .. }
                | Event::ChannelOccupied { channel }
                | Event::ChannelVacated { channel } => channel.to_string(),
                Event::Published { channel, .. } => channel.to_string(),
            };
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {about}", event.name()));
        }
    }

    fn recorded() -> (crate::node::Node, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let hooks = NodeHooks {
            sinks: vec![recorder.clone()],
            ..Default::default()
        };
        (node_with(|_| {}, hooks), recorder)
    }

    fn take(recorder: &Recorder) -> Vec<String> {
        std::mem::take(&mut *recorder.0.lock().unwrap())
    }

    #[tokio::test]
    async fn lifecycle_events_follow_connect_subscribe_unsubscribe_and_drop() {
        let (node, recorder) = recorded();
        let mut client = TestClient::connected(&node).await;
        for (id, key, channel) in [(2, "subscribe", "news"), (3, "unsubscribe", "news")] {
            client
                .call(id, key, json!({ "channel": channel }))
                .await
                .unwrap();
        }
        client
            .call(4, "subscribe", json!({"channel": "room"}))
            .await
            .unwrap();
        assert_eq!(
            take(&recorder),
            [
                "connected user=",
                "channel_occupied news",
                "subscribed news",
                "unsubscribed news",
                "channel_vacated news",
                "channel_occupied room",
                "subscribed room",
            ]
        );
        client.session.closing(&Disconnect::SHUTDOWN);
        drop(client);
        assert_eq!(
            take(&recorder),
            [
                "unsubscribed room",
                "channel_vacated room",
                "disconnected 3001 shutdown",
            ]
        );
        let metrics = node.metrics();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(count(&metrics.connects), 1);
        assert_eq!(count(&metrics.subscribes), 2);
        assert_eq!(count(&metrics.unsubscribes), 2);
        assert_eq!(count(&metrics.disconnects), 1);
    }

    #[tokio::test]
    async fn a_client_that_just_leaves_is_disconnected_with_3000() {
        let (node, recorder) = recorded();
        let client = TestClient::connected(&node).await;
        drop(client);
        assert_eq!(
            take(&recorder),
            ["connected user=", "disconnected 3000 connection closed"]
        );
    }

    #[tokio::test]
    async fn a_disconnect_the_session_decides_is_the_one_reported() {
        let (node, recorder) = recorded();
        let mut client = TestClient::connected(&node).await;
        let outcome = client.send(&[json!({"id": 2, "connect": {}})]).await;
        assert_eq!(outcome.unwrap_err(), Disconnect::BAD_REQUEST);
        drop(client);
        assert_eq!(
            take(&recorder).last().unwrap(),
            "disconnected 3501 bad request"
        );
    }

    #[tokio::test]
    async fn a_client_that_never_connected_leaves_no_event() {
        let (node, recorder) = recorded();
        drop(TestClient::new(&node));
        assert!(take(&recorder).is_empty());
    }

    #[tokio::test]
    async fn a_second_local_subscriber_does_not_occupy_the_channel_again() {
        let (node, recorder) = recorded();
        let mut ann = TestClient::connected(&node).await;
        let mut bob = TestClient::connected(&node).await;
        for client in [&mut ann, &mut bob] {
            client
                .call(2, "subscribe", json!({"channel": "news"}))
                .await
                .unwrap();
        }
        drop(ann);
        let events = take(&recorder);
        let about_channel: Vec<_> = events
            .iter()
            .filter(|e| e.starts_with("channel_"))
            .collect();
        assert_eq!(about_channel, ["channel_occupied news"]);
        drop(bob);
        assert!(take(&recorder).contains(&"channel_vacated news".to_string()));
    }
}

//! Pub/sub on Redis: one supervisor task per shard owns the shard's pub/sub connection. It
//! subscribes the topics of channels with local subscribers on request, dispatches what arrives
//! to the node, and after a lost connection reconnects with backoff, resubscribes everything, and
//! flags channels whose stream moved meanwhile, so a gap is never silent. Under Sentinel, a new
//! master is handled the same way: the supervisor reconnects to it and checks for gaps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncCommands, PushInfo, PushKind};
use tokio::sync::broadcast;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keys::{channels_answers_key, cluster_name, key, shard_index, TAG_LEN};
use super::link::Link;
use super::{call, CALL_TIMEOUT};
use crate::engine::broker::{BrokerEventHandler, NodeControl};
use crate::engine::history::new_epoch;
use crate::protocol::{ClientInfo, Publication, StreamPosition};

/// Most (un)subscribe requests queued for one shard's supervisor. A request is one Redis round
/// trip (tens of microseconds on a LAN), so a full queue is well under a second of work: enough
/// to absorb a burst of first subscribers (a node restarting, its clients resubscribing), small
/// enough that callers feel backpressure instead of the queue growing without bound. While the
/// connection is down the supervisor discards requests (it resubscribes from the channel map on
/// reconnect), so a caller never waits on an outage.
pub(super) const TOPIC_QUEUE: usize = 1024;

/// The cluster connection's topic confirmations: those this node asked for (each `SSUBSCRIBE`
/// is confirmed once, even of a topic already subscribed), and those it did not: the cluster
/// client resubscribing after a lost connection or a failover.
#[derive(Default)]
struct Confirmations {
    /// Confirmations still due for this node's own `SSUBSCRIBE`s, per topic.
    expected: HashMap<String, usize>,
    /// Topics confirmed at least once.
    confirmed: HashSet<String>,
    /// Confirmations still due for this node's own `SUNSUBSCRIBE`s, per topic.
    leaving: HashMap<String, usize>,
    /// Subscribers waiting for a topic's confirmation.
    waiting: HashMap<String, Vec<oneshot::Sender<()>>>,
}

impl Confirmations {
    fn expect(&mut self, topic: &str) {
        *self.expected.entry(topic.to_string()).or_default() += 1;
    }

    /// [`Confirmations::expect`], and tells `live` when the confirmation comes.
    fn expect_live(&mut self, topic: &str, live: oneshot::Sender<()>) {
        self.expect(topic);
        self.waiting
            .entry(topic.to_string())
            .or_default()
            .push(live);
    }

    fn forget(&mut self, topic: &str) {
        self.confirmed.remove(topic);
    }

    fn expect_unsubscribe(&mut self, topic: &str) {
        *self.leaving.entry(topic.to_string()).or_default() += 1;
    }

    /// Whether an `SUnsubscribe` push confirms this node's own `SUNSUBSCRIBE` (rather than the
    /// server dropping the topic).
    fn unsubscribed(&mut self, push: &PushInfo) -> bool {
        let Some(redis::Value::BulkString(topic)) = push.data.first() else {
            return false;
        };
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        match self.leaving.get_mut(topic) {
            Some(due) => {
                *due -= 1;
                if *due == 0 {
                    self.leaving.remove(topic);
                }
                true
            }
            None => false,
        }
    }

    /// Records a confirmation of `topic`; whether it is a resubscription nobody asked for.
    fn resubscribed(&mut self, topic: String) -> bool {
        if let Some(due) = self.expected.get_mut(&topic) {
            *due -= 1;
            if *due == 0 {
                self.expected.remove(&topic);
            }
            for live in self.waiting.remove(&topic).into_iter().flatten() {
                let _ = live.send(());
            }
            self.confirmed.insert(topic);
            return false;
        }
        !self.confirmed.insert(topic)
    }
}

/// Most messages of the cluster connection waiting to be dispatched; past it the oldest are
/// dropped, and every channel is checked for a gap.
const PUSH_QUEUE: usize = 16 * 1024;

/// An (un)subscribe on the cluster connection within the call bound; whether it succeeded.
async fn within(subscribe: impl std::future::Future<Output = redis::RedisResult<()>>) -> bool {
    matches!(
        tokio::time::timeout(CALL_TIMEOUT, subscribe).await,
        Ok(Ok(()))
    )
}

/// How long the answers to a channel-listing request stay in Redis if their asker is gone.
const ANSWERS_TTL_SECS: i64 = 10;

/// Channels with local subscribers, with the last position delivered (to spot gaps).
pub(super) type ListenedChannels = Arc<Mutex<HashMap<String, Option<StreamPosition>>>>;

/// Replaces a stream's epoch if it is still the one given (other nodes may have replaced it).
/// KEYS: meta. ARGV: expected epoch, new epoch.
const RENEW_EPOCH_SCRIPT: &str = r#"
if redis.call('hget', KEYS[1], 'e') == ARGV[1] then
  redis.call('hset', KEYS[1], 'e', ARGV[2])
end
return 1
"#;

/// A change to the topics a shard's pub/sub connection listens to.
pub(super) enum TopicRequest {
    /// Listen to a topic; `live` is told once Redis confirmed it, so the subscriber's position is
    /// read only when what is published after it will be heard. Dropped unanswered when the
    /// connection is down (the next one subscribes from the channel map and checks for gaps).
    Subscribe {
        topic: String,
        live: oneshot::Sender<()>,
    },
    Unsubscribe(String),
}

/// A pub/sub connection's outage: whether it was logged, and the wait before the next attempt.
struct Outage {
    down: bool,
    backoff: Duration,
}

impl Default for Outage {
    fn default() -> Self {
        Outage {
            down: false,
            backoff: Duration::from_millis(100),
        }
    }
}

/// Owns one shard's pub/sub connection: subscribes topics on request, dispatches messages, and
/// after a lost connection reconnects, resubscribes, and flags channels that may have a gap.
pub(super) struct PubSubSupervisor {
    pub(super) shard: usize,
    /// The shard's commands link; it also says where the shard's server is now.
    pub(super) commands: Link,
    pub(super) prefix: String,
    /// `<prefix>.pub.`, which every channel's topic starts with (built once, not per message).
    pub(super) pub_topic_prefix: String,
    pub(super) control_topic: Option<String>,
    pub(super) handler: Arc<OnceLock<Arc<dyn BrokerEventHandler>>>,
    pub(super) channels: ListenedChannels,
    pub(super) shard_count: usize,
    pub(super) shutdown: CancellationToken,
    /// Where the answers to channel-listing requests run.
    pub(super) tracker: TaskTracker,
}

impl PubSubSupervisor {
    /// Serves the shard until shutdown (or until the engine, which holds the request sender, is
    /// dropped).
    pub(super) async fn run(self, mut requests: mpsc::Receiver<TopicRequest>) {
        let mut outage = Outage::default();
        let mut master = self.commands.master_changes();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            master.mark_unchanged();
            let connecting = async { self.commands.client().await?.get_async_pubsub().await };
            let Some(pubsub) = self.connect(connecting, &mut outage, &mut requests).await else {
                continue;
            };
            let (mut sink, mut stream) = pubsub.split();
            // Everything this shard should listen to right now.
            let mut topics: Vec<String> = self.control_topic.iter().cloned().collect();
            let local: Vec<String> = self
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .filter(|c| shard_index(c, self.shard_count) == self.shard)
                .cloned()
                .collect();
            topics.extend(local.iter().map(|c| key(&self.prefix, "pub", c)));
            let mut ok = true;
            for topic in &topics {
                if sink.subscribe(topic).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if !ok {
                self.retry_later(&mut outage, "subscribe failed", &mut requests)
                    .await;
                continue;
            }
            self.restored(&mut outage, &local).await;
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    request = requests.recv() => match request {
                        None => return,
                        Some(TopicRequest::Subscribe { topic, live }) => {
                            if sink.subscribe(&topic).await.is_err() { break; }
                            let _ = live.send(());
                        }
                        Some(TopicRequest::Unsubscribe(topic)) => {
                            if sink.unsubscribe(&topic).await.is_err() { break; }
                        }
                    },
                    message = stream.next() => match message {
                        None => break,
                        Some(message) => {
                            self.dispatch(message.get_channel_name(), message.get_payload_bytes())
                        }
                    },
                    // A failover: what this connection hears is the old master's.
                    changed = master.changed() => if changed.is_ok() { break },
                }
            }
            self.down(&mut outage, "connection lost");
        }
    }

    /// On Redis Cluster: one RESP3 cluster connection, whose pushes carry every message. A
    /// channel's topic is sharded (`SSUBSCRIBE`, served by the master of the channel's slot).
    /// A lost node connection or a failed (un)subscribe starts a new connection (and client, so
    /// the old one's late messages are not delivered twice), which subscribes everything where
    /// the slot map says (retrying with backoff while a slot has no master) and checks every
    /// channel for a gap. A topic confirmed again without being asked (the cluster client
    /// resubscribing by itself) is checked too.
    pub(super) async fn run_cluster(self, mut requests: mpsc::Receiver<TopicRequest>) {
        if !self.commands.is_cluster() {
            return;
        }
        let mut outage = Outage::default();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let (pushes, mut received) = broadcast::channel::<PushInfo>(PUSH_QUEUE);
            let Some(builder) = self.commands.cluster_builder() else {
                return;
            };
            let client = match builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes)
                .build()
            {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(error = %e, "Redis Cluster pub/sub settings refused");
                    return;
                }
            };
            let connecting = client.get_async_connection();
            let Some(mut conn) = self.connect(connecting, &mut outage, &mut requests).await else {
                continue;
            };
            let local: Vec<String> = self
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            let mut ok = match &self.control_topic {
                Some(control) => within(conn.subscribe(control)).await,
                None => true,
            };
            let mut confirmations = Confirmations::default();
            for channel in &local {
                if !ok {
                    break;
                }
                let topic = self.key("pub", channel);
                confirmations.expect(&topic);
                ok = within(conn.ssubscribe(topic)).await;
            }
            if !ok {
                self.retry_later(&mut outage, "subscribe failed", &mut requests)
                    .await;
                continue;
            }
            self.restored(&mut outage, &local).await;
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    request = requests.recv() => match request {
                        None => return,
                        Some(TopicRequest::Subscribe { topic, live }) => {
                            confirmations.expect_live(&topic, live);
                            if !within(conn.ssubscribe(&topic)).await { break; }
                        }
                        Some(TopicRequest::Unsubscribe(topic)) => {
                            confirmations.forget(&topic);
                            confirmations.expect_unsubscribe(&topic);
                            if !within(conn.sunsubscribe(&topic)).await { break; }
                        }
                    },
                    push = received.recv() => match push {
                        // A node's connection dropped: its slots' topics may be on a new master
                        // once the cluster fails over; a new connection subscribes everything
                        // where the slot map says and checks every channel for a gap.
                        Ok(push) if push.kind == PushKind::Disconnection => break,
                        // The server dropped a topic this node still wants (its slot moved to
                        // another master): the same.
                        Ok(push) if push.kind == PushKind::SUnsubscribe => {
                            if !confirmations.unsubscribed(&push) && self.still_wanted(&push) {
                                break;
                            }
                        }
                        Ok(push) => self.on_push(push, &mut confirmations).await,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "Redis Cluster messages overflowed; subscribers will recover");
                            let local: Vec<String> = self
                                .channels
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .keys()
                                .cloned()
                                .collect();
                            self.flag_gaps(&local).await;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            self.down(&mut outage, "a subscription failed");
        }
    }

    /// One push of the cluster connection: a message to deliver, or a confirmation of a topic.
    async fn on_push(&self, push: PushInfo, confirmations: &mut Confirmations) {
        let text = |value: &redis::Value| match value {
            redis::Value::BulkString(bytes) => Some(bytes.clone()),
            redis::Value::SimpleString(text) => Some(text.clone().into_bytes()),
            _ => None,
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let [topic, payload, ..] = push.data.as_slice() {
                    if let (Some(topic), Some(payload)) = (text(topic), text(payload)) {
                        if let Ok(topic) = std::str::from_utf8(&topic) {
                            self.dispatch(topic, &payload);
                        }
                    }
                }
            }
            PushKind::SSubscribe => {
                let Some(topic) = push.data.first().and_then(text) else {
                    return;
                };
                let Ok(topic) = String::from_utf8(topic) else {
                    return;
                };
                if confirmations.resubscribed(topic.clone()) {
                    // Resubscribed by the client (a lost connection, or the slot's new master).
                    if let Some(channel) = self.channel_of(&topic) {
                        let channel = channel.to_string();
                        tracing::info!(channel, "resubscribed after a cluster change");
                        self.flag_gaps(&[channel]).await;
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether the topic a push names belongs to a channel this node still has subscribers of.
    fn still_wanted(&self, push: &PushInfo) -> bool {
        let Some(redis::Value::BulkString(topic)) = push.data.first() else {
            return false;
        };
        let Some(channel) = std::str::from_utf8(topic)
            .ok()
            .and_then(|t| self.channel_of(t))
        else {
            return false;
        };
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(channel)
    }

    /// The channel whose topic is `topic`.
    fn channel_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let channel = topic.strip_prefix(&self.pub_topic_prefix)?;
        if self.commands.is_cluster() {
            channel.get(TAG_LEN..)
        } else {
            Some(channel)
        }
    }

    /// Logs a lost connection once per outage.
    fn down(&self, outage: &mut Outage, reason: &str) {
        if !outage.down {
            outage.down = true;
            tracing::warn!(
                shard = self.shard,
                reason,
                "Redis pub/sub unavailable; reconnecting"
            );
        }
    }

    /// [`Self::down`], then sleeps the outage's backoff (then doubles it, up to 5 s). Requests
    /// arriving meanwhile are dropped: the channel map already says what to listen to, and the
    /// next connection subscribes from it, so callers never wait for the outage to end.
    async fn retry_later(
        &self,
        outage: &mut Outage,
        reason: &str,
        requests: &mut mpsc::Receiver<TopicRequest>,
    ) {
        self.down(outage, reason);
        let sleep = tokio::time::sleep(outage.backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = &mut sleep => break,
                request = requests.recv() => if request.is_none() { break },
            }
        }
        outage.backoff = (outage.backoff * 2).min(Duration::from_secs(5));
    }

    /// Awaits `connecting` for at most [`CALL_TIMEOUT`]; on failure, [`Self::retry_later`] and
    /// `None` (the caller tries again).
    async fn connect<T>(
        &self,
        connecting: impl std::future::Future<Output = redis::RedisResult<T>>,
        outage: &mut Outage,
        requests: &mut mpsc::Receiver<TopicRequest>,
    ) -> Option<T> {
        let reason = match tokio::time::timeout(CALL_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => return Some(connection),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        self.retry_later(outage, &reason, requests).await;
        None
    }

    /// A connection that subscribed everything: the backoff starts over and, if it follows an
    /// outage, the channels this node listens to (`local`) are checked for a gap.
    async fn restored(&self, outage: &mut Outage, local: &[String]) {
        outage.backoff = Outage::default().backoff;
        if outage.down {
            outage.down = false;
            tracing::info!(shard = self.shard, "Redis pub/sub connection restored");
            self.flag_gaps(local).await;
        }
    }

    /// After an outage: channels whose stream moved past what this node delivered have a gap;
    /// their local subscribers are told to resubscribe and recover.
    async fn flag_gaps(&self, channels: &[String]) {
        let Some(handler) = self.handler.get() else {
            return;
        };
        for channel in channels {
            let known = self
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(channel)
                .cloned()
                .flatten();
            let meta: Result<HashMap<String, String>, _> = call({
                let mut conn = self.commands.clone();
                let meta_key = self.key("meta", channel);
                async move { conn.hgetall(meta_key).await }
            })
            .await;
            let current = meta.ok().map(|m| StreamPosition {
                offset: m.get("s").and_then(|s| s.parse().ok()).unwrap_or(0),
                epoch: m.get("e").cloned().unwrap_or_default(),
            });
            let moved = match (&known, &current) {
                // The stream went back: a new master lacks publications the old one sent out.
                // Its offsets would be given again to other publications, so the stream gets a
                // new epoch, and its subscribers are told they cannot recover.
                (Some(known), Some(current))
                    if known.epoch == current.epoch && current.offset < known.offset =>
                {
                    tracing::warn!(
                        channel,
                        delivered = known.offset,
                        stored = current.offset,
                        "stream went back after a failover; starting a new epoch"
                    );
                    let mut conn = self.commands.clone();
                    let script = redis::Script::new(RENEW_EPOCH_SCRIPT);
                    let mut renew = script.prepare_invoke();
                    renew
                        .key(self.key("meta", channel))
                        .arg(&current.epoch)
                        .arg(new_epoch());
                    if let Err(e) = call(renew.invoke_async::<()>(&mut conn)).await {
                        tracing::warn!(channel, error = %e, "could not start a new epoch");
                    }
                    // The next publication starts the new epoch's record of what was delivered.
                    if let Some(entry) = self
                        .channels
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(channel.as_str())
                    {
                        *entry = None;
                    }
                    true
                }
                (Some(known), Some(current)) => known != current,
                // Nothing delivered before: a publication may still have been missed if the
                // stream exists at all.
                (None, Some(current)) => current.offset > 0,
                (_, None) => true,
            };
            if moved {
                tracing::info!(
                    channel,
                    "stream moved during the outage; subscribers will recover"
                );
                handler.handle_insufficient_state(channel);
            }
        }
    }

    /// Writes this node's channels beside the other nodes' answers to `request`.
    fn answer_channels(&self, handler: &Arc<dyn BrokerEventHandler>, request: String) {
        let channels: Vec<(Arc<str>, usize)> = handler.local_channels();
        let mut conn = self.commands.clone();
        let key = channels_answers_key(&self.prefix, &request);
        self.tracker.spawn(async move {
            let Ok(json) = serde_json::to_string(&channels) else {
                return;
            };
            let mut pipe = redis::pipe();
            pipe.hset(&key, uuid::Uuid::new_v4().simple().to_string(), json)
                .ignore()
                .expire(&key, ANSWERS_TTL_SECS)
                .ignore();
            if let Err(e) = call(pipe.query_async::<()>(&mut conn)).await {
                tracing::debug!(error = %e, "channels answer not written");
            }
        });
    }

    /// The key (or topic) of `kind` for `channel`, behind its hash tag on Redis Cluster.
    fn key(&self, kind: &str, channel: &str) -> String {
        if self.commands.is_cluster() {
            key(&self.prefix, kind, &cluster_name(channel))
        } else {
            key(&self.prefix, kind, channel)
        }
    }

    /// Delivers what arrived on `topic` to the node.
    fn dispatch(&self, topic: &str, payload: &[u8]) {
        let Some(handler) = self.handler.get() else {
            return;
        };
        if Some(topic) == self.control_topic.as_deref() {
            match serde_json::from_slice::<NodeControl>(payload) {
                Ok(NodeControl::Channels { request }) => self.answer_channels(handler, request),
                Ok(control) => handler.handle_control(control),
                Err(e) => tracing::warn!(error = %e, "bad control message"),
            }
            return;
        }
        let Some(channel) = self.channel_of(topic) else {
            return;
        };
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let (kind, body) = text.split_at(1.min(text.len()));
        match kind {
            "p" => {
                let mut parts = body.splitn(3, ':');
                let (Some(offset), Some(epoch), Some(json)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                let offset: u64 = offset.parse().unwrap_or(0);
                let Ok(mut publication) = serde_json::from_str::<Publication>(json) else {
                    tracing::warn!(channel, "bad publication message");
                    return;
                };
                publication.offset = offset;
                if offset > 0 {
                    let gap = {
                        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
                        let entry = channels.get_mut(channel);
                        // A skipped offset, or a new epoch (the stream was lost), is a gap.
                        let gap = entry
                            .as_ref()
                            .and_then(|e| e.as_ref())
                            .is_some_and(|last| last.epoch != epoch || offset > last.offset + 1);
                        if let Some(entry) = entry {
                            *entry = Some(StreamPosition {
                                offset,
                                epoch: epoch.to_string(),
                            });
                        }
                        gap
                    };
                    if gap {
                        // The subscribers are told to recover, and their recovery brings this
                        // publication (it is stored) after the missed ones. Delivered now, it
                        // could reach a subscriber before the unsubscribe push (which travels
                        // through its session), and the subscriber would then recover from past
                        // it and never get the missed ones.
                        handler.handle_insufficient_state(channel);
                        return;
                    }
                }
                handler.handle_publication(channel, Arc::new(publication));
            }
            "j" | "l" => {
                let Ok(info) = serde_json::from_str::<ClientInfo>(body) else {
                    return;
                };
                if kind == "j" {
                    handler.handle_join(channel, &info);
                } else {
                    handler.handle_leave(channel, &info);
                }
            }
            _ => {}
        }
    }
}

//! Pub/sub on Redis: one supervisor task per shard owns the shard's pub/sub connection. It
//! subscribes the topics of channels with local subscribers on request, dispatches what arrives
//! to the node, and after a lost connection reconnects with backoff, resubscribes everything, and
//! flags channels whose stream moved meanwhile, so a gap is never silent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::keys::{key, shard_index};
use super::{call, CALL_TIMEOUT};
use crate::engine::broker::{BrokerEventHandler, NodeControl};
use crate::protocol::{ClientInfo, Publication, StreamPosition};

/// Most (un)subscribe requests queued for one shard's supervisor. A request is one Redis round
/// trip (tens of microseconds on a LAN), so a full queue is well under a second of work: enough
/// to absorb a burst of first subscribers (a node restarting, its clients resubscribing), small
/// enough that callers feel backpressure instead of the queue growing without bound. While the
/// connection is down the supervisor discards requests (it resubscribes from the channel map on
/// reconnect), so a caller never waits on an outage.
pub(super) const TOPIC_QUEUE: usize = 1024;

/// Channels with local subscribers, with the last position delivered (to spot gaps).
pub(super) type ListenedChannels = Arc<Mutex<HashMap<String, Option<StreamPosition>>>>;

/// A change to the topics a shard's pub/sub connection listens to.
pub(super) enum TopicRequest {
    Subscribe(String),
    Unsubscribe(String),
}

/// Owns one shard's pub/sub connection: subscribes topics on request, dispatches messages, and
/// after a lost connection reconnects, resubscribes, and flags channels that may have a gap.
pub(super) struct PubSubSupervisor {
    pub(super) shard: usize,
    pub(super) client: redis::Client,
    pub(super) commands: ConnectionManager,
    pub(super) prefix: String,
    /// `<prefix>.pub.`, which every channel's topic starts with (built once, not per message).
    pub(super) pub_topic_prefix: String,
    pub(super) control_topic: Option<String>,
    pub(super) handler: Arc<OnceLock<Arc<dyn BrokerEventHandler>>>,
    pub(super) channels: ListenedChannels,
    pub(super) shard_count: usize,
    pub(super) shutdown: CancellationToken,
}

impl PubSubSupervisor {
    /// Serves the shard until shutdown (or until the engine, which holds the request sender, is
    /// dropped).
    pub(super) async fn run(self, mut requests: mpsc::Receiver<TopicRequest>) {
        let mut backoff = Duration::from_millis(100);
        let mut was_down = false;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let pubsub = tokio::time::timeout(CALL_TIMEOUT, self.client.get_async_pubsub()).await;
            let pubsub = match pubsub {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => {
                    self.down(&mut was_down, &e.to_string());
                    self.wait(&mut backoff, &mut requests).await;
                    continue;
                }
                Err(_) => {
                    self.down(&mut was_down, "connect timed out");
                    self.wait(&mut backoff, &mut requests).await;
                    continue;
                }
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
                self.down(&mut was_down, "subscribe failed");
                self.wait(&mut backoff, &mut requests).await;
                continue;
            }
            backoff = Duration::from_millis(100);
            if was_down {
                was_down = false;
                tracing::info!(shard = self.shard, "Redis pub/sub connection restored");
                self.flag_gaps(&local).await;
            }
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    request = requests.recv() => match request {
                        None => return,
                        Some(TopicRequest::Subscribe(topic)) => {
                            if sink.subscribe(&topic).await.is_err() { break; }
                        }
                        Some(TopicRequest::Unsubscribe(topic)) => {
                            if sink.unsubscribe(&topic).await.is_err() { break; }
                        }
                    },
                    message = stream.next() => match message {
                        None => break,
                        Some(message) => self.dispatch(message),
                    },
                }
            }
            self.down(&mut was_down, "connection lost");
        }
    }

    /// Logs a lost connection once per outage.
    fn down(&self, was_down: &mut bool, reason: &str) {
        if !*was_down {
            *was_down = true;
            tracing::warn!(
                shard = self.shard,
                reason,
                "Redis pub/sub unavailable; reconnecting"
            );
        }
    }

    /// Sleeps `backoff` (then doubles it, up to 5 s). Requests arriving meanwhile are dropped:
    /// the channel map already says what to listen to, and the next connection subscribes from
    /// it, so callers never wait for the outage to end.
    async fn wait(&self, backoff: &mut Duration, requests: &mut mpsc::Receiver<TopicRequest>) {
        let sleep = tokio::time::sleep(*backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = &mut sleep => break,
                request = requests.recv() => if request.is_none() { break },
            }
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
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
                let meta_key = key(&self.prefix, "meta", channel);
                async move { conn.hgetall(meta_key).await }
            })
            .await;
            let current = meta.ok().map(|m| StreamPosition {
                offset: m.get("s").and_then(|s| s.parse().ok()).unwrap_or(0),
                epoch: m.get("e").cloned().unwrap_or_default(),
            });
            let moved = match (&known, &current) {
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

    fn dispatch(&self, message: redis::Msg) {
        let Some(handler) = self.handler.get() else {
            return;
        };
        let topic = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if Some(topic) == self.control_topic.as_deref() {
            match serde_json::from_slice::<NodeControl>(payload) {
                Ok(control) => handler.handle_control(control),
                Err(e) => tracing::warn!(error = %e, "bad control message"),
            }
            return;
        }
        let Some(channel) = topic.strip_prefix(&self.pub_topic_prefix) else {
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
                        handler.handle_insufficient_state(channel);
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

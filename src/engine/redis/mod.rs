//! Several nodes, one system: the broker, history and presence on Redis.
//!
//! - **Publications** go through one Lua script that, atomically per channel, takes the next
//!   offset, appends to the channel's Redis Stream (bounded by `MAXLEN`, expiring after the
//!   history TTL) and `PUBLISH`es to the channel's pub/sub topic. Redis runs scripts one at a time,
//!   so offset order, history order and delivery order are the same on every node.
//! - **Publishing is pipelined** (`publisher.rs`): a publication joins its shard's queue, and one
//!   task sends everything queued in one round trip. Its order is fixed when it is queued, so a
//!   client keeps many publishes in flight, as on one node; the server API and clients share the
//!   queue, so one node and many run the same path.
//! - **Idempotency keys**: a publish with a key runs the publish script with one more key, the
//!   key's hash beside the channel's: a key seen within its window publishes nothing and answers
//!   the first position, a new one is remembered (`PEXPIRE`d after the window) by the same
//!   script run, so concurrent retries on any nodes publish once. A publish without a key costs
//!   what it did (one check in the script; a plain `PUBLISH` stays a plain `PUBLISH`).
//! - **Epoch** lives in a per-channel meta hash beside the top offset; a wiped Redis loses it, a new
//!   one is made, and clients recovering with the old epoch are told they cannot.
//! - **Pub/sub**: a node subscribes to a channel's topic only while it has local subscribers, and
//!   always to the control topic (user disconnects and server-side subscriptions). One supervisor
//!   task per shard owns the pub/sub connection; when it drops, the node logs once, reconnects
//!   with backoff, resubscribes everything, and tells local subscribers of channels whose stream
//!   moved meanwhile to recover (unsubscribe push 2500), so a gap is never silent.
//! - **Presence**: a hash of members plus a sorted set of expiry times per channel; each node
//!   refreshes the entries of its own clients, so a dead node's members vanish after the TTL.
//!   The per-user connection limit counts each user's connections across nodes the same way.
//! - **Nodes** announce themselves in a hash every few seconds for `/api/info`.
//! - **Sharding**: several Redis URLs spread channels over shards by a stable hash of the name.
//! - **Sentinel** (`link.rs`): instead of a URL, the master a set of Sentinels names; a failover
//!   is an outage (error 108 while no master answers) after which the node follows the new
//!   master, resubscribes, and checks every listened channel for a gap. A stream that went
//!   *back* (the new master missed writes the old one acknowledged, Redis replicating
//!   asynchronously) gets a new epoch, so its subscribers are told they cannot recover rather
//!   than handed reused offsets.
//! - **Replica wait**: with `wait_replicas` set, a publication is acknowledged only once that
//!   many replicas hold it (`WAIT` after each batch; on Redis Cluster, at the end of each
//!   channel's pipeline, so on the connection to the master that ran its writes), so a
//!   failover to one of them keeps it.
//!
//! Commands use a multiplexed, auto-reconnecting connection per shard, and every call is bounded by
//! a timeout, so an unreachable Redis answers "not available" instead of hanging. Every queue is
//! bounded, and every task runs on the tracker given to [`RedisEngine::connect`].
//!
//! Files: this one holds the engine and its [`Broker`] side; `keys.rs` names keys and holds the Lua
//! scripts, `publisher.rs` the pipelined publishing, `pubsub.rs` the pub/sub supervisor, and
//! `presence.rs` the [`Presence`](crate::engine::presence::Presence) side, `map.rs` map channels
//! (their state beside the stream, changed by one script with the append and the `PUBLISH`; on
//! Redis Cluster, keys with a TTL are listed per channel, see there).

mod keys;
mod link;
mod map;
mod presence;
mod publisher;
mod pubsub;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{FutureExt, Shared};
use redis::{AsyncCommands, Script};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::broker::{
    Broker, BrokerError, BrokerEventHandler, NodeControl, NodeRecord, Publishing,
};
use crate::engine::history::{
    new_epoch, HistoryError, HistoryFilter, HistoryPage, PageBudget, Retention,
};
use crate::engine::idempotency::{IdempotencyKey, Idempotent};
use crate::engine::map::{MapUpdate, StatePage};
use crate::protocol::{ClientInfo, Publication, StreamPosition};
pub use keys::shard_index;
use keys::{
    channels_answers_key, cluster_name, cluster_publish_script, control_topic, key, live_publish,
    nodes_key, publish_call, publish_once_call, ScriptRef, HISTORY_SCRIPT, PRESENCE_SCRIPT,
    PUBLISH_SCRIPT,
};
use link::Link;
pub use link::{client, SentinelSettings};
use publisher::{PublishAnswer, PublishRequest, Publisher, Reply, PUBLISH_QUEUE};
use pubsub::{ListenedChannels, PubSubSupervisor, TopicRequest, TOPIC_QUEUE};

/// Longest a single Redis call may take before the caller gets "not available".
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest `/api/channels` waits for the other nodes' answers.
const CHANNELS_WAIT: Duration = Duration::from_secs(1);
/// Node announcements older than this are dropped from `/api/info`.
const NODE_TTL_SECS: u64 = 15;

/// Settings of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// One URL per shard (`redis://` or `rediss://`).
    pub urls: Vec<String>,
    /// Prefix of every key and topic, so several deployments (or tests) can share a server.
    pub prefix: String,
    /// How long a presence entry lives without a refresh.
    pub presence_ttl: Duration,
    /// Instead of `urls`: one Redis whose master Sentinel names, followed through failovers.
    pub sentinel: Option<SentinelSettings>,
    /// Instead of `urls`: the seed nodes (`host:port` or URLs) of a Redis Cluster.
    pub cluster: Vec<String>,
    /// Replicas that must hold a publication before it is acknowledged (0: none, the default).
    pub wait_replicas: u32,
    /// How long a publication waits for them before it is answered "not available".
    pub wait_timeout: Duration,
    /// Certificate authorities (PEM) that TLS connections to Redis trust instead of the
    /// system's roots: the servers of `rediss://` URLs, Sentinels and masters, Cluster nodes.
    pub tls_ca: Option<Vec<u8>>,
}

impl RedisSettings {
    /// Settings for the Redis servers at `urls` (one per shard), without a replica wait.
    pub fn new(urls: Vec<String>, prefix: String, presence_ttl: Duration) -> RedisSettings {
        RedisSettings {
            urls,
            prefix,
            presence_ttl,
            sentinel: None,
            cluster: Vec::new(),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            tls_ca: None,
        }
    }
}

/// One Redis server of the shard set.
struct Shard {
    commands: Link,
    /// Requests to (un)subscribe topics, served by the shard's pub/sub supervisor.
    topics: mpsc::Sender<TopicRequest>,
    /// Publications in their channel's order, sent by the shard's publisher task.
    publishes: mpsc::Sender<PublishRequest>,
}

/// Redis's confirmation of a channel's subscription, awaited by every local subscriber that
/// joins before it comes.
type Confirmed = Shared<oneshot::Receiver<()>>;

/// The shared state of the broker and presence on Redis.
pub struct RedisEngine {
    settings: RedisSettings,
    shards: Vec<Shard>,
    publish: Script,
    /// On Redis Cluster, the publish script's body (sent with each call, see `publisher.rs`).
    cluster_script: Option<String>,
    history: Script,
    presence_script: Script,
    map_scripts: map::MapScripts,
    handler: Arc<OnceLock<Arc<dyn BrokerEventHandler>>>,
    /// Channels with local subscribers (topics this node listens to), with the last position
    /// delivered, to spot gaps after an outage.
    channels: ListenedChannels,
    /// Channels whose subscription Redis has not confirmed yet: their later local subscribers
    /// wait for the same confirmation as the first.
    confirming: Mutex<HashMap<String, Confirmed>>,
    /// This node's presence entries, re-announced periodically.
    local_presence: Mutex<HashMap<(String, String), ClientInfo>>,
    /// This node's connections counted against the per-user limit, (user, client), re-announced
    /// with presence.
    local_users: Mutex<std::collections::HashSet<(String, String)>>,
    admit_script: Script,
    shutdown: CancellationToken,
}

impl RedisEngine {
    /// Connects to every shard and starts, on `tracker`, the publishers and pub/sub supervisors
    /// (one of each per shard) and the presence refresher; they end on `shutdown`.
    pub async fn connect(
        settings: RedisSettings,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Arc<RedisEngine>, BrokerError> {
        let targets = [
            !settings.urls.is_empty(),
            settings.sentinel.is_some(),
            !settings.cluster.is_empty(),
        ];
        match targets.iter().filter(|t| **t).count() {
            0 => return Err(BrokerError::Unavailable("no Redis URL".into())),
            1 => {}
            _ => {
                return Err(BrokerError::Unavailable(
                    "Redis URLs, Sentinel and Cluster are exclusive".into(),
                ))
            }
        }
        let cluster = !settings.cluster.is_empty();
        if cluster && settings.prefix.contains(['{', '}']) {
            return Err(BrokerError::Unavailable(
                "on Redis Cluster the key prefix may not hold braces".into(),
            ));
        }
        if settings.wait_replicas > 0 && settings.wait_timeout >= CALL_TIMEOUT {
            return Err(BrokerError::Unavailable(format!(
                "the replica wait must be shorter than {CALL_TIMEOUT:?}"
            )));
        }
        let mut links = Vec::new();
        let tls_ca = settings.tls_ca.as_deref();
        match &settings.sentinel {
            Some(sentinel) => {
                let link = Link::sentinel(sentinel, tls_ca).await?;
                tracker.spawn(link.clone().watch_master(shutdown.clone()));
                links.push(link);
            }
            None if cluster => links.push(Link::cluster(&settings.cluster, tls_ca).await?),
            None => {
                for url in &settings.urls {
                    links.push(Link::fixed(url, tls_ca).await?);
                }
            }
        }
        let shard_count = links.len();
        let wait =
            (settings.wait_replicas > 0).then_some((settings.wait_replicas, settings.wait_timeout));
        let handler: Arc<OnceLock<Arc<dyn BrokerEventHandler>>> = Arc::new(OnceLock::new());
        let channels = ListenedChannels::default();
        let mut shards = Vec::new();
        for (index, commands) in links.into_iter().enumerate() {
            let (topics, requests) = mpsc::channel(TOPIC_QUEUE);
            let supervisor = PubSubSupervisor {
                shard: index,
                commands: commands.clone(),
                prefix: settings.prefix.clone(),
                pub_topic_prefix: key(&settings.prefix, "pub", ""),
                control_topic: (index == 0).then(|| control_topic(&settings.prefix)),
                handler: handler.clone(),
                channels: channels.clone(),
                shard_count,
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
            };
            if cluster {
                tracker.spawn(supervisor.run_cluster(requests));
            } else {
                tracker.spawn(supervisor.run(requests));
            }
            let (publishes, queue) = mpsc::channel(PUBLISH_QUEUE);
            let publisher = Publisher {
                commands: commands.clone(),
                wait,
                shutdown: shutdown.clone(),
            };
            tracker.spawn(publisher.run(queue));
            shards.push(Shard {
                commands,
                topics,
                publishes,
            });
        }
        let engine = Arc::new(RedisEngine {
            settings,
            shards,
            publish: Script::new(PUBLISH_SCRIPT),
            cluster_script: cluster.then(cluster_publish_script),
            history: Script::new(HISTORY_SCRIPT),
            presence_script: Script::new(PRESENCE_SCRIPT),
            map_scripts: map::MapScripts::new(cluster),
            handler,
            channels,
            confirming: Mutex::new(HashMap::new()),
            local_presence: Mutex::new(HashMap::new()),
            local_users: Mutex::new(Default::default()),
            admit_script: Script::new(presence::ADMIT_SCRIPT),
            shutdown,
        });
        tracker.spawn(presence::refresh_presence(Arc::downgrade(&engine)));
        tracing::info!(
            shards = engine.shards.len(),
            "using Redis for broker, history and presence"
        );
        Ok(engine)
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[shard_index(channel, self.shards.len())]
    }

    fn key(&self, kind: &str, channel: &str) -> String {
        key(&self.settings.prefix, kind, &self.name(channel))
    }

    /// How `channel` (or a user) is named in keys and topics: as is, or behind its hash tag on
    /// Redis Cluster.
    fn name<'a>(&self, channel: &'a str) -> std::borrow::Cow<'a, str> {
        if self.cluster_script.is_some() {
            std::borrow::Cow::Owned(cluster_name(channel))
        } else {
            std::borrow::Cow::Borrowed(channel)
        }
    }

    /// A `PUBLISH` (`SPUBLISH` on Redis Cluster) of `message` to `channel`'s topic.
    fn publish_topic(&self, channel: &str, message: String) -> redis::Cmd {
        let mut command = redis::cmd(if self.cluster_script.is_some() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        command.arg(self.key("pub", channel)).arg(message);
        command
    }

    /// The queue entry that stores (with a retention) and publishes `publication`: a call of the
    /// publish script, or a plain `PUBLISH` for a channel without history; with an idempotency
    /// key, the scripts that publish once per key.
    fn publish_request(
        &self,
        channel: &str,
        publication: &Publication,
        history: Option<Retention>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<(PublishRequest, PublishAnswer), BrokerError> {
        self.handler()?;
        let json = serde_json::to_string(publication)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let prefix = &self.settings.prefix;
        let script = match &self.cluster_script {
            Some(body) => ScriptRef::Body(body),
            None => ScriptRef::Sha(self.publish.get_hash()),
        };
        let name = self.name(channel);
        let sharded = self.cluster_script.is_some();
        let (request, answer) = match (history, idempotency) {
            (Some(retention), None) => PublishRequest::new(
                publish_call(script, prefix, &name, &json, retention),
                Reply::Stored,
            ),
            (None, None) => {
                PublishRequest::new(live_publish(prefix, &name, &json, sharded), Reply::Live)
            }
            (retention, Some(key)) => PublishRequest::new(
                publish_once_call(script, prefix, &name, &json, retention, key),
                Reply::Once,
            ),
        };
        // On Redis Cluster a batch is sent as one pipeline per channel (one slot each).
        Ok((
            request.in_group(sharded.then(|| channel.to_string())),
            answer,
        ))
    }

    /// Queues `request` on `channel`'s shard, waiting for room until its deadline.
    async fn enqueue(&self, channel: &str, request: PublishRequest) -> Result<(), BrokerError> {
        let deadline = request.deadline();
        let queue = &self.shard(channel).publishes;
        match tokio::time::timeout_at(deadline, queue.send(request)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::Unavailable("shutting down".into())),
            Err(_) => Err(BrokerError::Unavailable(
                "Redis publish queue stayed full".into(),
            )),
        }
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerEventHandler>, BrokerError> {
        self.handler
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker has no handler".into()))
    }
}

/// Runs a Redis call with the engine's time bound, mapping failures to "unavailable".
async fn call<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(BrokerError::Unavailable(e.to_string())),
        Err(_) => Err(BrokerError::Unavailable("Redis call timed out".into())),
    }
}

impl RedisEngine {
    /// Asks `channel`'s shard supervisor to change its topics, waiting (boundedly) for room.
    async fn request_topic(&self, channel: &str, request: TopicRequest) -> Result<(), BrokerError> {
        let queue = &self.shard(channel).topics;
        match tokio::time::timeout(CALL_TIMEOUT, queue.send(request)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::Unavailable("shutting down".into())),
            Err(_) => Err(BrokerError::Unavailable(
                "Redis pub/sub supervisor is behind".into(),
            )),
        }
    }
}

fn now_secs() -> u64 {
    crate::auth::unix_now()
}

#[async_trait]
impl Broker for RedisEngine {
    fn set_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        let (request, answer) = self.publish_request(channel, &publication, history, None)?;
        // Waiting for room in a full queue counts against the same deadline as the publish.
        self.enqueue(channel, request).await?;
        answer.outcome().await
    }

    /// Queues the publication without waiting: its order is fixed once queued. A full queue
    /// hands it back, so that the caller awaits `publish` (which waits for room) after its
    /// earlier publishes are answered; the order holds either way.
    fn submit_publish(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
    ) -> Result<Publishing, Box<Publication>> {
        let (request, answer) = match self.publish_request(channel, &publication, history, None) {
            Ok(queued) => queued,
            Err(e) => return Ok(Box::pin(std::future::ready(Err(e)))),
        };
        match self.shard(channel).publishes.try_send(request) {
            Ok(()) => Ok(Box::pin(answer.outcome())),
            Err(TrySendError::Full(_)) => Err(Box::new(publication)),
            Err(TrySendError::Closed(_)) => Ok(Box::pin(std::future::ready(Err(
                BrokerError::Unavailable("shutting down".into()),
            )))),
        }
    }

    async fn publish_idempotent(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
        key: IdempotencyKey,
    ) -> Result<Idempotent, BrokerError> {
        let (request, answer) = self.publish_request(channel, &publication, history, Some(&key))?;
        self.enqueue(channel, request).await?;
        answer.once().await
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let json =
            serde_json::to_string(info).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut conn = self.shard(channel).commands.clone();
        call(
            self.publish_topic(channel, format!("j{json}"))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let json =
            serde_json::to_string(info).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut conn = self.shard(channel).commands.clone();
        call(
            self.publish_topic(channel, format!("l{json}"))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn publish_control(&self, control: NodeControl) -> Result<(), BrokerError> {
        let json =
            serde_json::to_string(&control).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut conn = self.shards[0].commands.clone();
        call(conn.publish::<_, _, ()>(control_topic(&self.settings.prefix), json)).await
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        let after = filter.since.as_ref().map_or(0, |s| s.offset);
        let limit: i64 = filter.limit.map_or(-1, |l| l.min(i64::MAX as usize) as i64);
        let mut conn = self.shard(channel).commands.clone();
        let mut invocation = self.history.prepare_invoke();
        invocation
            .key(self.key("stream", channel))
            .key(self.key("meta", channel))
            .arg(after)
            .arg(limit)
            .arg(if filter.reverse { 1 } else { 0 })
            .arg(new_epoch());
        type Entries = Vec<(String, Vec<(String, String)>)>;
        let (top, epoch, entries): (u64, String, Entries) =
            call(invocation.invoke_async(&mut conn)).await?;
        let position = StreamPosition { offset: top, epoch };
        // A channel this node just started listening to learns its position here (subscribers
        // read it on subscribe), so a gap right after is noticed too.
        if let Some(known @ None) = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(channel)
        {
            *known = Some(position.clone());
        }
        if let Some(since) = &filter.since {
            if !since.epoch.is_empty() && since.epoch != position.epoch {
                return Err(HistoryError::UnrecoverablePosition.into());
            }
        }
        let mut publications = Vec::with_capacity(entries.len());
        // The page is measured as it is decoded (Redis has already sent it whole: it holds at
        // most the channel's `history_size` entries).
        let mut budget = PageBudget::new(&filter);
        for (id, fields) in entries {
            let offset: u64 = id
                .split('-')
                .next()
                .and_then(|o| o.parse().ok())
                .unwrap_or(0);
            let Some((_, json)) = fields.into_iter().find(|(k, _)| k == "d") else {
                continue;
            };
            budget.take(json.len())?;
            let mut publication: Publication = serde_json::from_str(&json).map_err(|e| {
                BrokerError::History(HistoryError::Storage(format!("corrupt stream entry: {e}")))
            })?;
            publication.offset = offset;
            publications.push(Arc::new(publication));
        }
        Ok(HistoryPage {
            publications,
            position,
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let mut conn = self.shard(channel).commands.clone();
        call(conn.del::<_, ()>(self.key("stream", channel))).await
    }

    async fn map_update(
        &self,
        channel: &str,
        publication: Publication,
        update: MapUpdate,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        self.update_map(channel, publication, update).await
    }

    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<StatePage, BrokerError> {
        self.read_map_state(channel, after, inclusive, limit).await
    }

    async fn map_expire(&self) -> Result<usize, BrokerError> {
        self.expire_maps().await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.to_string(), None);
        let (live, confirmed) = oneshot::channel();
        let confirmed = confirmed.shared();
        self.confirming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.to_string(), confirmed.clone());
        let topic = self.key("pub", channel);
        let requested = self
            .request_topic(channel, TopicRequest::Subscribe { topic, live })
            .await;
        if requested.is_ok() {
            // Unanswered (the connection is down, or slow): go on; the subscription is in the
            // channel map, and the next connection subscribes it and checks for a gap.
            let _ = tokio::time::timeout(CALL_TIMEOUT, confirmed.clone()).await;
        }
        let mut confirming = self.confirming.lock().unwrap_or_else(|e| e.into_inner());
        // Only this subscription's entry: the channel may have been left and joined again.
        if confirming
            .get(channel)
            .is_some_and(|entry| entry.ptr_eq(&confirmed))
        {
            confirming.remove(channel);
        }
        requested
    }

    async fn listening(&self, channel: &str) {
        let pending = self
            .confirming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .cloned();
        if let Some(confirmed) = pending {
            let _ = tokio::time::timeout(CALL_TIMEOUT, confirmed).await;
        }
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(channel);
        self.request_topic(channel, TopicRequest::Unsubscribe(self.key("pub", channel)))
            .await
    }

    async fn announce(&self, record: NodeRecord) -> Result<(), BrokerError> {
        let json =
            serde_json::to_string(&record).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut conn = self.shards[0].commands.clone();
        call(conn.hset::<_, _, _, ()>(nodes_key(&self.settings.prefix), &record.info.uid, json))
            .await
    }

    /// Asks every node (this one too) over the control topic; each writes its channels into one
    /// hash, read once every live node has answered or after [`CHANNELS_WAIT`].
    async fn channels_everywhere(&self) -> Result<Option<Vec<(String, u64)>>, BrokerError> {
        let expected = self.nodes().await?.len().max(1);
        let request = uuid::Uuid::new_v4().simple().to_string();
        let answers = channels_answers_key(&self.settings.prefix, &request);
        self.publish_control(NodeControl::Channels {
            request: request.clone(),
        })
        .await?;
        let mut conn = self.shards[0].commands.clone();
        let deadline = tokio::time::Instant::now() + CHANNELS_WAIT;
        loop {
            let answered: usize = call(conn.hlen(&answers)).await?;
            if answered >= expected {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    answered,
                    expected,
                    "not every node listed its channels in time; counting those that did"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all: HashMap<String, String> = call(conn.hgetall(&answers)).await?;
        let _ = call(conn.del::<_, ()>(&answers)).await;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for json in all.values() {
            let Ok(channels) = serde_json::from_str::<Vec<(String, u64)>>(json) else {
                continue;
            };
            for (channel, subscribers) in channels {
                *counts.entry(channel).or_default() += subscribers;
            }
        }
        Ok(Some(counts.into_iter().collect()))
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, BrokerError> {
        let key = nodes_key(&self.settings.prefix);
        let mut conn = self.shards[0].commands.clone();
        let all: HashMap<String, String> = call(conn.hgetall(&key)).await?;
        let now = now_secs();
        let mut live = Vec::new();
        for (uid, json) in all {
            match serde_json::from_str::<NodeRecord>(&json) {
                Ok(record) if record.seen + NODE_TTL_SECS >= now => live.push(record),
                _ => {
                    let _ = call(conn.hdel::<_, _, ()>(&key, uid)).await;
                }
            }
        }
        Ok(live)
    }
}

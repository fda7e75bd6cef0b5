//! Several nodes, one system: the broker, history and presence on Redis.
//!
//! - **Publications** go through one Lua script that, atomically per channel, takes the next
//!   offset, appends to the channel's Redis Stream (bounded by `MAXLEN`, expiring after the
//!   history TTL) and `PUBLISH`es to the channel's pub/sub topic. Redis runs scripts one at a time,
//!   so offset order, history order and delivery order are the same on every node.
//! - **Epoch** lives in a per-channel meta hash beside the top offset; a wiped Redis loses it, a new
//!   one is made, and clients recovering with the old epoch are told they cannot.
//! - **Pub/sub**: a node subscribes to a channel's topic only while it has local subscribers, and
//!   always to the control topic (user disconnects and server-side subscriptions). One supervisor
//!   task per shard owns the pub/sub connection; when it drops, the node logs once, reconnects
//!   with backoff, resubscribes everything, and tells local subscribers of channels whose stream
//!   moved meanwhile to recover (unsubscribe push 2500), so a gap is never silent.
//! - **Presence**: a hash of members plus a sorted set of expiry times per channel; each node
//!   refreshes the entries of its own clients, so a dead node's members vanish after the TTL.
//! - **Nodes** announce themselves in a hash every few seconds for `/api/info`.
//! - **Sharding**: several Redis URLs spread channels over shards by a stable hash of the name.
//!
//! Commands use a multiplexed, auto-reconnecting connection per shard: concurrent publications are
//! pipelined on it, and every call is bounded by a timeout, so an unreachable Redis answers "not
//! available" instead of hanging.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::broker::{Broker, BrokerError, BrokerEventHandler, NodeControl, NodeRecord};
use crate::engine::history::{new_epoch, HistoryError, HistoryFilter, HistoryPage, Retention};
use crate::engine::presence::{Presence, PresenceError, PresenceStats};
use crate::protocol::{ClientInfo, Publication, StreamPosition};

/// Longest a single Redis call may take before the caller gets "not available".
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stream metadata (epoch, top offset) outlives the last publication.
const META_TTL_SECS: u64 = 30 * 24 * 3600;
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
}

/// Appends to a channel's stream and publishes, atomically.
/// KEYS: stream, meta. ARGV: publication JSON, max length, stream TTL (s), topic, fresh epoch,
/// meta TTL (s). Returns {offset, epoch}.
const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('expire', KEYS[2], ARGV[6])
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-1', 'd', ARGV[1])
redis.call('expire', KEYS[1], ARGV[3])
redis.call('publish', ARGV[4], 'p' .. offset .. ':' .. epoch .. ':' .. ARGV[1])
return {offset, epoch}
"#;

/// Reads a stream page with its position.
/// KEYS: stream, meta. ARGV: after offset, limit (-1: all), reverse (0/1), fresh epoch.
const HISTORY_SCRIPT: &str = r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('hset', KEYS[2], 's', 0)
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local limit = tonumber(ARGV[2])
local entries = {}
if limit ~= 0 then
  local from = (tonumber(ARGV[1]) + 1) .. '-0'
  if ARGV[3] == '1' then
    if limit > 0 then
      entries = redis.call('xrevrange', KEYS[1], '+', from, 'COUNT', limit)
    else
      entries = redis.call('xrevrange', KEYS[1], '+', from)
    end
  else
    if limit > 0 then
      entries = redis.call('xrange', KEYS[1], from, '+', 'COUNT', limit)
    else
      entries = redis.call('xrange', KEYS[1], from, '+')
    end
  end
end
return {top, epoch, entries}
"#;

/// Removes expired presence entries of a channel, then returns its members.
/// KEYS: hash, zset. ARGV: now (s).
const PRESENCE_SCRIPT: &str = r#"
local expired = redis.call('zrangebyscore', KEYS[2], '0', ARGV[1])
if #expired > 0 then
  redis.call('hdel', KEYS[1], unpack(expired))
  redis.call('zremrangebyscore', KEYS[2], '0', ARGV[1])
end
return redis.call('hvals', KEYS[1])
"#;

/// One Redis server of the shard set.
struct Shard {
    commands: ConnectionManager,
    /// Requests to (un)subscribe topics, served by the shard's pub/sub supervisor.
    topics: mpsc::UnboundedSender<TopicRequest>,
}

enum TopicRequest {
    Subscribe(String),
    Unsubscribe(String),
}

/// The shared state of the broker and presence on Redis.
pub struct RedisEngine {
    settings: RedisSettings,
    shards: Vec<Shard>,
    publish: Script,
    history: Script,
    presence_script: Script,
    handler: Arc<OnceLock<Arc<dyn BrokerEventHandler>>>,
    /// Channels with local subscribers (topics this node listens to), with the last position
    /// delivered, to spot gaps after an outage.
    channels: Arc<Mutex<HashMap<String, Option<StreamPosition>>>>,
    /// This node's presence entries, re-announced periodically.
    local_presence: Mutex<HashMap<(String, String), ClientInfo>>,
    shutdown: CancellationToken,
}

impl RedisEngine {
    /// Connects to every shard and starts the pub/sub supervisors and presence refresher.
    pub async fn connect(
        settings: RedisSettings,
        shutdown: CancellationToken,
    ) -> Result<Arc<RedisEngine>, BrokerError> {
        if settings.urls.is_empty() {
            return Err(BrokerError::Unavailable("no Redis URL".into()));
        }
        let handler: Arc<OnceLock<Arc<dyn BrokerEventHandler>>> = Arc::new(OnceLock::new());
        let channels: Arc<Mutex<HashMap<String, Option<StreamPosition>>>> = Arc::default();
        let mut shards = Vec::new();
        for (index, url) in settings.urls.iter().enumerate() {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| BrokerError::Unavailable(format!("bad Redis URL {url}: {e}")))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            let commands = tokio::time::timeout(
                CALL_TIMEOUT * 2,
                client.get_connection_manager_with_config(config),
            )
            .await
            .map_err(|_| BrokerError::Unavailable(format!("Redis {url} did not answer")))?
            .map_err(|e| BrokerError::Unavailable(format!("Redis {url}: {e}")))?;
            let (topics, requests) = mpsc::unbounded_channel();
            let supervisor = PubSubSupervisor {
                shard: index,
                client,
                commands: commands.clone(),
                prefix: settings.prefix.clone(),
                pub_topic_prefix: key(&settings.prefix, "pub", ""),
                control_topic: (index == 0).then(|| control_topic(&settings.prefix)),
                handler: handler.clone(),
                channels: channels.clone(),
                shard_count: settings.urls.len(),
                shutdown: shutdown.clone(),
            };
            tokio::spawn(supervisor.run(requests));
            shards.push(Shard { commands, topics });
        }
        let engine = Arc::new(RedisEngine {
            settings,
            shards,
            publish: Script::new(PUBLISH_SCRIPT),
            history: Script::new(HISTORY_SCRIPT),
            presence_script: Script::new(PRESENCE_SCRIPT),
            handler,
            channels,
            local_presence: Mutex::new(HashMap::new()),
            shutdown,
        });
        tokio::spawn(refresh_presence(Arc::downgrade(&engine)));
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
        key(&self.settings.prefix, kind, channel)
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerEventHandler>, BrokerError> {
        self.handler
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker has no handler".into()))
    }
}

/// The shard of `channel`: a stable FNV-1a hash, the same on every node.
pub fn shard_index(channel: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in channel.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    (hash % shards.max(1) as u64) as usize
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
        self.handler()?;
        let json = serde_json::to_string(&publication)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let shard = self.shard(channel);
        let topic = self.key("pub", channel);
        let mut conn = shard.commands.clone();
        match history {
            Some(retention) => {
                let mut invocation = self.publish.prepare_invoke();
                invocation
                    .key(self.key("stream", channel))
                    .key(self.key("meta", channel))
                    .arg(json)
                    .arg(retention.size)
                    .arg(retention.ttl.as_secs().max(1))
                    .arg(topic)
                    .arg(new_epoch())
                    .arg(META_TTL_SECS);
                let (offset, epoch): (u64, String) =
                    call(invocation.invoke_async(&mut conn)).await?;
                Ok(Some(StreamPosition { offset, epoch }))
            }
            None => {
                let message = format!("p0::{json}");
                call(conn.publish::<_, _, ()>(topic, message)).await?;
                Ok(None)
            }
        }
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let json =
            serde_json::to_string(info).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut conn = self.shard(channel).commands.clone();
        call(conn.publish::<_, _, ()>(self.key("pub", channel), format!("j{json}"))).await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let json =
            serde_json::to_string(info).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut conn = self.shard(channel).commands.clone();
        call(conn.publish::<_, _, ()>(self.key("pub", channel), format!("l{json}"))).await
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
        for (id, fields) in entries {
            let offset: u64 = id
                .split('-')
                .next()
                .and_then(|o| o.parse().ok())
                .unwrap_or(0);
            let Some((_, json)) = fields.into_iter().find(|(k, _)| k == "d") else {
                continue;
            };
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

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.to_string(), None);
        let _ = self
            .shard(channel)
            .topics
            .send(TopicRequest::Subscribe(self.key("pub", channel)));
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(channel);
        let _ = self
            .shard(channel)
            .topics
            .send(TopicRequest::Unsubscribe(self.key("pub", channel)));
        Ok(())
    }

    async fn announce(&self, record: NodeRecord) -> Result<(), BrokerError> {
        let json =
            serde_json::to_string(&record).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let mut conn = self.shards[0].commands.clone();
        call(conn.hset::<_, _, _, ()>(nodes_key(&self.settings.prefix), &record.info.uid, json))
            .await
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

#[async_trait]
impl Presence for RedisEngine {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), PresenceError> {
        self.local_presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((channel.to_string(), info.client.clone()), info.clone());
        self.write_presence(channel, &info).await
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError> {
        self.local_presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(channel.to_string(), client_id.to_string()));
        let mut conn = self.shard(channel).commands.clone();
        let mut pipe = redis::pipe();
        pipe.hdel(self.key("presence", channel), client_id)
            .ignore()
            .zrem(self.key("presence.expire", channel), client_id)
            .ignore();
        call(pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|e| PresenceError(e.to_string()))
    }

    async fn get(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError> {
        let mut conn = self.shard(channel).commands.clone();
        let mut invocation = self.presence_script.prepare_invoke();
        invocation
            .key(self.key("presence", channel))
            .key(self.key("presence.expire", channel))
            .arg(now_secs());
        let members: Vec<String> = call(invocation.invoke_async(&mut conn))
            .await
            .map_err(|e| PresenceError(e.to_string()))?;
        Ok(members
            .iter()
            .filter_map(|m| serde_json::from_str::<ClientInfo>(m).ok())
            .map(|info| (info.client.clone(), info))
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError> {
        let members = self.get(channel).await?;
        let users: HashSet<&str> = members.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: members.len() as u64,
            num_users: users.len() as u64,
        })
    }
}

impl RedisEngine {
    async fn write_presence(&self, channel: &str, info: &ClientInfo) -> Result<(), PresenceError> {
        let json = serde_json::to_string(info).map_err(|e| PresenceError(e.to_string()))?;
        let ttl = self.settings.presence_ttl.as_secs().max(1);
        let hash = self.key("presence", channel);
        let zset = self.key("presence.expire", channel);
        let mut conn = self.shard(channel).commands.clone();
        let mut pipe = redis::pipe();
        pipe.hset(&hash, &info.client, json)
            .ignore()
            .zadd(&zset, &info.client, now_secs() + ttl)
            .ignore()
            .expire(&hash, (ttl * 2) as i64)
            .ignore()
            .expire(&zset, (ttl * 2) as i64)
            .ignore();
        call(pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|e| PresenceError(e.to_string()))
    }
}

/// Re-announces this node's presence entries before they expire.
async fn refresh_presence(engine: std::sync::Weak<RedisEngine>) {
    loop {
        let Some(strong) = engine.upgrade() else {
            return;
        };
        let period = strong.settings.presence_ttl / 3;
        let shutdown = strong.shutdown.clone();
        drop(strong);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period.max(Duration::from_millis(200))) => {}
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let entries: Vec<((String, String), ClientInfo)> = engine
            .local_presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((channel, _), info) in entries {
            if let Err(e) = engine.write_presence(&channel, &info).await {
                tracing::debug!(error = %e.0, "presence refresh failed");
                break;
            }
        }
    }
}

/// The Redis key (or pub/sub topic) of `kind` for `channel`: `<prefix>.<kind>.<channel>`. Every
/// key and topic of a channel is named here.
fn key(prefix: &str, kind: &str, channel: &str) -> String {
    format!("{prefix}.{kind}.{channel}")
}

/// The topic of node-wide control messages.
fn control_topic(prefix: &str) -> String {
    format!("{prefix}.control")
}

/// The hash of node announcements.
fn nodes_key(prefix: &str) -> String {
    format!("{prefix}.nodes")
}

/// Owns one shard's pub/sub connection: subscribes topics on request, dispatches messages, and
/// after a lost connection reconnects, resubscribes, and flags channels that may have a gap.
struct PubSubSupervisor {
    shard: usize,
    client: redis::Client,
    commands: ConnectionManager,
    prefix: String,
    /// `<prefix>.pub.`, which every channel's topic starts with (built once, not per message).
    pub_topic_prefix: String,
    control_topic: Option<String>,
    handler: Arc<OnceLock<Arc<dyn BrokerEventHandler>>>,
    channels: Arc<Mutex<HashMap<String, Option<StreamPosition>>>>,
    shard_count: usize,
    shutdown: CancellationToken,
}

impl PubSubSupervisor {
    async fn run(self, mut requests: mpsc::UnboundedReceiver<TopicRequest>) {
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
                    self.wait(&mut backoff).await;
                    continue;
                }
                Err(_) => {
                    self.down(&mut was_down, "connect timed out");
                    self.wait(&mut backoff).await;
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
                self.wait(&mut backoff).await;
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

    async fn wait(&self, backoff: &mut Duration) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(*backoff) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_index("chat", 1), 0);
        let a = shard_index("chat:1", 4);
        assert_eq!(a, shard_index("chat:1", 4));
        let used: HashSet<usize> = (0..100).map(|i| shard_index(&format!("c{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }
}

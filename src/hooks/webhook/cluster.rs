//! Webhooks with several nodes on Redis: channels occupied and vacated across the whole cluster,
//! and the connections of a node that died reported by the nodes that live on.
//!
//! Each node keeps in Redis (on the first shard) what it holds — its connections, their
//! subscriptions, the channels it occupies — and a lease it renews every third of
//! `presence_ttl`. A channel's set of occupying nodes decides, atomically in a Lua script,
//! whether a node's first subscriber occupies it for the cluster (the set was empty) and whether
//! its last vacates it (the set is empty again). Every node sweeps for nodes whose lease ran out:
//! the first to claim one queues its connections' `unsubscribe` and `disconnect` (code
//! [`NODE_LOST`]) events and vacates its channels, then forgets it. A node restarted from its
//! data directory is a new node; the old one is swept like any other.
//!
//! Tracking is best effort while Redis is unreachable (logged): an occupancy that cannot be
//! decided is reported as this node sees it, never dropped.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::outbox::{Outbox, NODE_LOST};
use super::{now_ms, Kind, Record};

/// What a node tells Redis about itself, in order.
pub(super) enum Track {
    Connect {
        client: String,
        user: String,
        time_ms: u64,
    },
    Disconnect {
        client: String,
    },
    Subscribe {
        client: String,
        channel: String,
    },
    Unsubscribe {
        client: String,
        channel: String,
    },
    /// The node's first subscriber of `channel` arrived (`true`) or its last left.
    Occupancy {
        channel: String,
        occupied: bool,
        time_ms: u64,
    },
    /// Answers once everything before is written.
    Flush(oneshot::Sender<()>),
}

/// Adds (ARGV[3] = 1) or removes this node (ARGV[1]) from a channel's (ARGV[2]) occupying nodes
/// (KEYS[1]) and the node's own channel set (KEYS[2]); returns 1 when that occupied or vacated
/// the channel for the whole cluster.
const OCCUPANCY_SCRIPT: &str = r#"
if ARGV[3] == '1' then
  redis.call('sadd', KEYS[2], ARGV[2])
  if redis.call('sadd', KEYS[1], ARGV[1]) == 1 and redis.call('scard', KEYS[1]) == 1 then
    return 1
  end
else
  redis.call('srem', KEYS[2], ARGV[2])
  if redis.call('srem', KEYS[1], ARGV[1]) == 1 and redis.call('scard', KEYS[1]) == 0 then
    return 1
  end
end
return 0
"#;

/// Most tracking commands sent in one round trip.
const BATCH: usize = 512;

/// The Redis side of one node's webhooks.
pub(super) struct Cluster {
    redis: ConnectionManager,
    prefix: String,
    /// This run of the node (a restart is a new node).
    uid: String,
    lease: Duration,
    outbox: Arc<Outbox>,
}

impl Cluster {
    /// Connects to the Redis at `url` (over TLS, trusting `tls_ca` if given).
    pub async fn connect(
        url: &str,
        tls_ca: Option<&[u8]>,
        prefix: &str,
        lease: Duration,
        outbox: Arc<Outbox>,
    ) -> Result<Cluster, redis::RedisError> {
        let client = crate::engine::redis::client(url, tls_ca)?;
        let redis = tokio::time::timeout(Duration::from_secs(6), client.get_connection_manager())
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::Io, "Redis did not answer in time"))
            })??;
        Ok(Cluster {
            redis,
            prefix: format!("{prefix}.webhook"),
            uid: uuid::Uuid::new_v4().simple().to_string(),
            lease: lease.max(Duration::from_secs(1)),
            outbox,
        })
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}.{kind}.{name}", self.prefix)
    }

    /// Writes tracking commands as they come, batched, until `stop`.
    pub async fn track(
        self: Arc<Self>,
        mut tracks: mpsc::UnboundedReceiver<Track>,
        stop: CancellationToken,
    ) {
        let mut batch = Vec::new();
        loop {
            let received = tokio::select! {
                received = tracks.recv_many(&mut batch, BATCH) => received,
                _ = stop.cancelled() => return,
            };
            if received == 0 {
                return;
            }
            self.write(&mut batch).await;
        }
    }

    async fn write(&self, batch: &mut Vec<Track>) {
        let conns = self.key("conns", &self.uid);
        let subs = self.key("subs", &self.uid);
        let channels = self.key("channels", &self.uid);
        let mut pipe = redis::pipe();
        // Which replies are occupancy decisions, and of what.
        let mut decisions = Vec::new();
        let mut flushes = Vec::new();
        let mut commands = 0;
        for track in batch.drain(..) {
            commands += 1;
            match track {
                Track::Connect {
                    client,
                    user,
                    time_ms,
                } => {
                    pipe.hset(&conns, client, format!("{time_ms}\n{user}"));
                }
                Track::Disconnect { client } => {
                    pipe.hdel(&conns, client);
                }
                Track::Subscribe { client, channel } => {
                    pipe.sadd(&subs, format!("{client}\n{channel}"));
                }
                Track::Unsubscribe { client, channel } => {
                    pipe.srem(&subs, format!("{client}\n{channel}"));
                }
                Track::Occupancy {
                    channel,
                    occupied,
                    time_ms,
                } => {
                    pipe.cmd("EVAL")
                        .arg(OCCUPANCY_SCRIPT)
                        .arg(2)
                        .arg(self.key("occupied", &channel))
                        .arg(&channels)
                        .arg(&self.uid)
                        .arg(&channel)
                        .arg(if occupied { "1" } else { "0" });
                    decisions.push((channel, occupied, time_ms));
                    continue;
                }
                Track::Flush(done) => {
                    commands -= 1;
                    flushes.push(done);
                    continue;
                }
            }
            pipe.ignore();
        }
        let mut redis = self.redis.clone();
        let answers: Result<Vec<i64>, _> = if commands == 0 {
            Ok(Vec::new())
        } else {
            pipe.query_async(&mut redis).await
        };
        let transitions = match answers {
            Ok(answers) => answers,
            Err(e) => {
                tracing::warn!(error = %e, "webhook tracking in Redis failed; occupancy as this node sees it");
                vec![1; decisions.len()]
            }
        };
        for ((channel, occupied, time_ms), transition) in decisions.into_iter().zip(transitions) {
            if transition == 1 {
                let kind = if occupied {
                    Kind::ChannelOccupied
                } else {
                    Kind::ChannelVacated
                };
                self.outbox.record(Record {
                    channel: Some(channel),
                    time_ms,
                    ..Record::new(kind)
                });
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Renews this node's lease and sweeps for dead nodes, until `stop`.
    pub async fn lease_and_sweep(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.renew().await {
                tracing::warn!(error = %e, "webhook lease renewal in Redis failed");
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "sweeping dead nodes in Redis failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.lease / 3) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn renew(&self) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::pipe()
            .set_ex(self.key("lease", &self.uid), 1, self.lease.as_secs())
            .ignore()
            .sadd(self.key("nodes", "all"), &self.uid)
            .ignore()
            .query_async::<()>(&mut redis)
            .await
    }

    /// Reports the connections and channels of every node whose lease ran out, once each.
    async fn sweep(&self) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("nodes", "all"))
            .query_async(&mut redis)
            .await?;
        for node in nodes.into_iter().filter(|n| *n != self.uid) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(self.key("lease", &node))
                .query_async(&mut redis)
                .await?;
            if alive {
                continue;
            }
            // One node reports it; a claim outlives a sweeper that dies halfway, then another
            // sweeps again (at least once).
            let claimed: bool = redis::cmd("SET")
                .arg(self.key("claim", &node))
                .arg(&self.uid)
                .arg("NX")
                .arg("EX")
                .arg(60)
                .query_async::<Option<String>>(&mut redis)
                .await?
                .is_some();
            if claimed {
                self.report_lost(&node).await?;
            }
        }
        Ok(())
    }

    /// Queues the events of dead node `node`'s connections and channels, then forgets it.
    async fn report_lost(&self, node: &str) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        let conns: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key("conns", node))
            .query_async(&mut redis)
            .await?;
        let subs: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("subs", node))
            .query_async(&mut redis)
            .await?;
        let channels: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("channels", node))
            .query_async(&mut redis)
            .await?;
        let now = now_ms();
        for (client, value) in &conns {
            let (connected, user) = value.split_once('\n').unwrap_or(("0", ""));
            for channel in subs.iter().filter_map(|s| {
                let (c, channel) = s.split_once('\n')?;
                (c == client).then_some(channel)
            }) {
                self.outbox.record(Record {
                    client: Some(client.clone()),
                    user: Some(user.into()),
                    channel: Some(channel.into()),
                    time_ms: now,
                    ..Record::new(Kind::Unsubscribe)
                });
            }
            self.outbox.record(Record {
                client: Some(client.clone()),
                user: Some(user.into()),
                code: NODE_LOST,
                reason: "node lost".into(),
                duration_ms: Some(now.saturating_sub(connected.parse().unwrap_or(now))),
                time_ms: now,
                ..Record::new(Kind::Disconnect)
            });
        }
        for channel in &channels {
            let vacated: i64 = redis::cmd("EVAL")
                .arg(OCCUPANCY_SCRIPT)
                .arg(2)
                .arg(self.key("occupied", channel))
                .arg(self.key("channels", node))
                .arg(node)
                .arg(channel)
                .arg("0")
                .query_async(&mut redis)
                .await?;
            if vacated == 1 {
                self.outbox.record(Record {
                    channel: Some(channel.clone()),
                    time_ms: now,
                    ..Record::new(Kind::ChannelVacated)
                });
            }
        }
        tracing::warn!(
            node,
            connections = conns.len(),
            "a node's lease ran out: its connections' disconnect events are queued with code \
             {NODE_LOST}"
        );
        redis::pipe()
            .del(self.key("conns", node))
            .ignore()
            .del(self.key("subs", node))
            .ignore()
            .del(self.key("channels", node))
            .ignore()
            .srem(self.key("nodes", "all"), node)
            .ignore()
            .query_async::<()>(&mut redis)
            .await
    }

    /// At shutdown, once every connection is gone: forgets this node (nothing of it is lost).
    pub async fn leave(&self) {
        let mut redis = self.redis.clone();
        let result = redis::pipe()
            .del(self.key("conns", &self.uid))
            .ignore()
            .del(self.key("subs", &self.uid))
            .ignore()
            .del(self.key("channels", &self.uid))
            .ignore()
            .del(self.key("lease", &self.uid))
            .ignore()
            .srem(self.key("nodes", "all"), &self.uid)
            .ignore()
            .query_async::<()>(&mut redis)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not remove this node's webhook tracking from Redis");
        }
    }
}

/// Takes (or renews) lane KEYS[1] for node ARGV[1] for ARGV[2] ms; 1 when this node holds it.
const OWN_LANE_SCRIPT: &str = r#"
local owner = redis.call('get', KEYS[1])
if owner == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Gives lane KEYS[1] up if node ARGV[1] holds it.
const RELEASE_LANE_SCRIPT: &str = r#"
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
end
return 0
"#;

/// The shared queue: with several nodes, events go from each node's outbox to one Redis stream
/// per lane, and the node holding a lane delivers it. A node that dies with events queued in
/// Redis loses none: another takes its lanes once their hold runs out.
impl Cluster {
    fn lane_key(&self, lane: u32) -> String {
        self.key("queue", &lane.to_string())
    }

    /// Appends events (JSON objects) to lane `lane`'s stream, in order, in one round trip.
    pub async fn enqueue<'a>(
        &self,
        lane: u32,
        events: impl Iterator<Item = &'a str>,
    ) -> redis::RedisResult<()> {
        let key = self.lane_key(lane);
        let mut pipe = redis::pipe();
        for event in events {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("e")
                .arg(event)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// Takes or renews lane `lane` for this node; true when this node holds it.
    pub async fn own_lane(&self, lane: u32) -> redis::RedisResult<bool> {
        let held: i64 = redis::cmd("EVAL")
            .arg(OWN_LANE_SCRIPT)
            .arg(1)
            .arg(self.key("lane", &lane.to_string()))
            .arg(&self.uid)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(held == 1)
    }

    /// Gives lane `lane` up, so another node takes it at once.
    pub async fn release_lane(&self, lane: u32) {
        let released: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(RELEASE_LANE_SCRIPT)
            .arg(1)
            .arg(self.key("lane", &lane.to_string()))
            .arg(&self.uid)
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(e) = released {
            tracing::debug!(lane, error = %e, "releasing a webhook lane failed");
        }
    }

    /// The oldest events of lane `lane`: (stream id, JSON object), at most `limit`.
    pub async fn read_lane(
        &self,
        lane: u32,
        limit: usize,
    ) -> redis::RedisResult<Vec<(String, String)>> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.lane_key(lane))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|entry| {
                let body: String = entry.get("e")?;
                Some((entry.id, body))
            })
            .collect())
    }

    /// Removes delivered events from lane `lane`.
    pub async fn remove(&self, lane: u32, ids: &[String]) -> redis::RedisResult<()> {
        redis::cmd("XDEL")
            .arg(self.lane_key(lane))
            .arg(ids)
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    /// How long a lane is held without renewal.
    pub fn lease(&self) -> Duration {
        self.lease
    }
}

//! Presence on Redis: a hash of members plus a sorted set of expiry times per channel. Each node
//! refreshes the entries of its own clients, so a dead node's members vanish after the TTL.
//!
//! The per-user connection limit counts across nodes the same way: a hash of a user's
//! connections plus a sorted set of their expiry times, admitted by one script (expire, count,
//! add) and refreshed by the node that holds the connection.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::time::Duration;

use async_trait::async_trait;

use super::{call, now_secs, RedisEngine};
use crate::engine::presence::{Presence, PresenceError, PresenceStats};
use crate::protocol::ClientInfo;

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

    async fn admit_user_connection(
        &self,
        user: &str,
        client: &str,
        limit: usize,
    ) -> Result<bool, PresenceError> {
        let ttl = self.settings.presence_ttl.as_secs().max(1);
        let now = now_secs();
        let mut conn = self.shard(user).commands.clone();
        let mut invocation = self.admit_script.prepare_invoke();
        invocation
            .key(self.key("user", user))
            .key(self.key("user.expire", user))
            .arg(now)
            .arg(client)
            .arg(now + ttl)
            .arg(limit)
            .arg(ttl * 2);
        let admitted: u8 = call(invocation.invoke_async(&mut conn))
            .await
            .map_err(|e| PresenceError(e.to_string()))?;
        if admitted == 1 {
            self.local_users
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((user.to_string(), client.to_string()));
        }
        Ok(admitted == 1)
    }

    async fn release_user_connection(&self, user: &str, client: &str) -> Result<(), PresenceError> {
        self.local_users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(user.to_string(), client.to_string()));
        let mut conn = self.shard(user).commands.clone();
        let mut pipe = redis::pipe();
        pipe.hdel(self.key("user", user), client)
            .ignore()
            .zrem(self.key("user.expire", user), client)
            .ignore();
        call(pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|e| PresenceError(e.to_string()))
    }
}

/// Admits a user's connection if the user has fewer than a limit, expiring entries first.
/// KEYS: hash, zset. ARGV: now (s), client, expiry (s), limit, key TTL (s). Returns 1 or 0.
pub(super) const ADMIT_SCRIPT: &str = r#"
local expired = redis.call('zrangebyscore', KEYS[2], '0', ARGV[1])
if #expired > 0 then
  redis.call('hdel', KEYS[1], unpack(expired))
  redis.call('zremrangebyscore', KEYS[2], '0', ARGV[1])
end
if redis.call('hexists', KEYS[1], ARGV[2]) == 0
    and redis.call('hlen', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('hset', KEYS[1], ARGV[2], '1')
redis.call('zadd', KEYS[2], ARGV[3], ARGV[2])
redis.call('expire', KEYS[1], ARGV[5])
redis.call('expire', KEYS[2], ARGV[5])
return 1
"#;

impl RedisEngine {
    /// `entries` in round trips: chunks of [`REFRESH_CHUNK`]; on Redis Cluster, where one
    /// pipeline goes to one slot's master, one per channel (or user) named by `name_of`.
    fn refresh_batches<T>(&self, mut entries: Vec<T>, name_of: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
        let mut batches: Vec<Vec<T>> = Vec::new();
        if self.cluster_script.is_some() {
            entries.sort_by(|a, b| name_of(a).cmp(name_of(b)));
            for entry in entries {
                match batches.last_mut() {
                    Some(batch) if batch.first().map(&name_of) == Some(name_of(&entry)) => {
                        batch.push(entry)
                    }
                    _ => batches.push(vec![entry]),
                }
            }
        } else {
            while !entries.is_empty() {
                let rest = entries.split_off(entries.len().min(REFRESH_CHUNK));
                batches.push(std::mem::replace(&mut entries, rest));
            }
        }
        batches
    }

    /// Writes (or renews) one member of `channel`, with its expiry `presence_ttl` from now.
    async fn write_presence(&self, channel: &str, info: &ClientInfo) -> Result<(), PresenceError> {
        let mut conn = self.shard(channel).commands.clone();
        let mut pipe = redis::pipe();
        self.presence_commands(&mut pipe, channel, info)?;
        call(pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|e| PresenceError(e.to_string()))
    }

    /// Adds to `pipe` the commands writing one member of `channel` with its expiry.
    fn presence_commands(
        &self,
        pipe: &mut redis::Pipeline,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<(), PresenceError> {
        let json = serde_json::to_string(info).map_err(|e| PresenceError(e.to_string()))?;
        let ttl = self.settings.presence_ttl.as_secs().max(1);
        let hash = self.key("presence", channel);
        let zset = self.key("presence.expire", channel);
        pipe.hset(&hash, &info.client, json)
            .ignore()
            .zadd(&zset, &info.client, now_secs() + ttl)
            .ignore()
            .expire(&hash, (ttl * 2) as i64)
            .ignore()
            .expire(&zset, (ttl * 2) as i64)
            .ignore();
        Ok(())
    }
}

/// Presence entries renewed in one round trip.
const REFRESH_CHUNK: usize = 500;

/// Re-announces this node's presence entries before they expire. Holds the engine weakly, so it
/// ends when the engine is dropped as well as on shutdown.
pub(super) async fn refresh_presence(engine: Weak<RedisEngine>) {
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
        let users: Vec<(String, String)> = engine
            .local_users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        refresh_users(&engine, users).await;
        // One round trip per shard and chunk of entries, not one per entry.
        let mut by_shard: HashMap<usize, Vec<(String, ClientInfo)>> = HashMap::new();
        for ((channel, _), info) in entries {
            let shard = super::shard_index(&channel, engine.shards.len());
            by_shard.entry(shard).or_default().push((channel, info));
        }
        'shards: for (shard, entries) in by_shard {
            let mut conn = engine.shards[shard].commands.clone();
            for chunk in engine.refresh_batches(entries, |(channel, _)| channel.as_str()) {
                let mut pipe = redis::pipe();
                for (channel, info) in &chunk {
                    if engine.presence_commands(&mut pipe, channel, info).is_err() {
                        continue;
                    }
                }
                if let Err(e) = call(pipe.query_async::<()>(&mut conn)).await {
                    tracing::debug!(error = %e, "presence refresh failed");
                    continue 'shards;
                }
            }
        }
    }
}

/// Renews this node's entries of the per-user connection count: one round trip per shard and
/// chunk.
async fn refresh_users(engine: &RedisEngine, users: Vec<(String, String)>) {
    let ttl = engine.settings.presence_ttl.as_secs().max(1);
    let mut by_shard: HashMap<usize, Vec<(String, String)>> = HashMap::new();
    for (user, client) in users {
        let shard = super::shard_index(&user, engine.shards.len());
        by_shard.entry(shard).or_default().push((user, client));
    }
    for (shard, entries) in by_shard {
        let mut conn = engine.shards[shard].commands.clone();
        for chunk in engine.refresh_batches(entries, |(user, _)| user.as_str()) {
            let mut pipe = redis::pipe();
            for (user, client) in &chunk {
                let (hash, zset) = (engine.key("user", user), engine.key("user.expire", user));
                pipe.hset(&hash, client, "1")
                    .ignore()
                    .zadd(&zset, client, now_secs() + ttl)
                    .ignore()
                    .expire(&hash, (ttl * 2) as i64)
                    .ignore()
                    .expire(&zset, (ttl * 2) as i64)
                    .ignore();
            }
            if let Err(e) = call(pipe.query_async::<()>(&mut conn)).await {
                tracing::debug!(error = %e, "user connection refresh failed");
                break;
            }
        }
    }
}

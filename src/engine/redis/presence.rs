//! Presence on Redis: a hash of members plus a sorted set of expiry times per channel. Each node
//! refreshes the entries of its own clients, so a dead node's members vanish after the TTL.

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
}

impl RedisEngine {
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
        // One round trip per shard and chunk of entries, not one per entry.
        let mut by_shard: HashMap<usize, Vec<(String, ClientInfo)>> = HashMap::new();
        for ((channel, _), info) in entries {
            let shard = super::shard_index(&channel, engine.shards.len());
            by_shard.entry(shard).or_default().push((channel, info));
        }
        'shards: for (shard, entries) in by_shard {
            let mut conn = engine.shards[shard].commands.clone();
            for chunk in entries.chunks(REFRESH_CHUNK) {
                let mut pipe = redis::pipe();
                for (channel, info) in chunk {
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

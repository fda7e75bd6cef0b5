//! Map channels on Redis (see [`crate::engine::map`]). Per channel, beside its stream and meta
//! hash: a hash of entries (`key` → `<offset>:<expires ms or 0>:<publication JSON>`) and a sorted
//! set of its keys (all scored 0, so `ZRANGEBYLEX` pages them in key order). One sorted set per
//! shard, `map_expiring`, holds `<channel>\n<key>` scored by expiry time for keys with a TTL.
//!
//! One Lua script changes the entry, appends to the stream and `PUBLISH`es, so the state, the
//! stream and delivery agree on every node; another reads a state page with the stream position
//! in one step. Expiry runs the update script in its "only if expired" form, so any number of
//! nodes may sweep at once and a key expires once.
//!
//! On Redis Cluster a script may only touch keys of one slot, so a shard-wide expiry set cannot
//! be changed with the entry. There the expiry set is per channel (`mapexp`, under the channel's
//! hash tag, changed by the same script run), and one more sorted set, `map_expiring_channels`,
//! lists the channels that have keys with a TTL, scored by when the channel next needs a sweep.
//! After a script run that gave a key a TTL, the node lowers the channel's score to the key's
//! expiry (`ZADD LT`, a second command: the script itself stays one atomic step). The sweep
//! takes the channels that are due, expires their due keys, then removes the channel from the
//! list and adds it back (`ZADD LT`) at its next expiry if it still has keys with a TTL. An
//! update that raced the sweep either ran before the sweep's re-read (seen there) or adds the
//! channel after the removal (its `ZADD` follows its script), so no channel with a TTL'd key
//! falls off the list.

use std::sync::Arc;

use redis::{AsyncCommands, Script};

use super::link::Link;
use super::{call, RedisEngine};
use crate::engine::broker::BrokerError;
use crate::engine::history::{new_epoch, HistoryError};
use crate::engine::map::{removal, MapUpdate, StatePage, EXPIRY_BATCH};
use crate::protocol::{Publication, StreamPosition};

/// How long stream metadata (epoch, top offset) outlives the last change.
const META_TTL_SECS: u64 = 30 * 24 * 3600;

/// Changes a map entry, appends the change to the stream and publishes it, atomically.
/// KEYS: stream, meta, entries, keys, expiring. ARGV: publication JSON, key, removed (0/1),
/// stream max length (0: the one last recorded in meta), stream TTL (s), topic, fresh epoch,
/// meta TTL (s), key TTL (ms, 0: none), max keys, now (ms), expiring member, only if expired
/// (0/1), keep-alive (0/1: a present key only gets its TTL again). Returns {offset, epoch}, or {-1, ''} when nothing changed, {-2, ''} when the map is
/// full.
const UPDATE_SCRIPT: &str = r#"
local exists = redis.call('hexists', KEYS[3], ARGV[2]) == 1
if ARGV[13] == '1' then
  local at = redis.call('zscore', KEYS[5], ARGV[12])
  if (not exists) or (not at) or tonumber(at) > tonumber(ARGV[11]) then
    if not exists then redis.call('zrem', KEYS[5], ARGV[12]) end
    return {-1, ''}
  end
end
if ARGV[14] == '1' and exists then
  local value = redis.call('hget', KEYS[3], ARGV[2])
  local offset, rest = string.match(value, '^(%d+):%d+:(.*)$')
  local expires = 0
  if ARGV[9] ~= '0' then
    expires = tonumber(ARGV[11]) + tonumber(ARGV[9])
    redis.call('zadd', KEYS[5], expires, ARGV[12])
  end
  redis.call('hset', KEYS[3], ARGV[2], offset .. ':' .. expires .. ':' .. rest)
  return {-1, ''}
end
if ARGV[3] == '1' then
  if not exists then return {-1, ''} end
  redis.call('hdel', KEYS[3], ARGV[2])
  redis.call('zrem', KEYS[4], ARGV[2])
  redis.call('zrem', KEYS[5], ARGV[12])
elseif (not exists) and redis.call('hlen', KEYS[3]) >= tonumber(ARGV[10]) then
  return {-2, ''}
end
local size = ARGV[4]
local ttl = ARGV[5]
if size == '0' then
  size = redis.call('hget', KEYS[2], 'ms') or '100'
  ttl = redis.call('hget', KEYS[2], 'mt') or '60'
else
  redis.call('hset', KEYS[2], 'ms', size, 'mt', ttl)
end
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[7]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('expire', KEYS[2], ARGV[8])
redis.call('xadd', KEYS[1], 'MAXLEN', size, offset .. '-1', 'd', ARGV[1])
redis.call('expire', KEYS[1], ttl)
if ARGV[3] ~= '1' then
  local expires = 0
  if ARGV[9] ~= '0' then
    expires = tonumber(ARGV[11]) + tonumber(ARGV[9])
    redis.call('zadd', KEYS[5], expires, ARGV[12])
  else
    redis.call('zrem', KEYS[5], ARGV[12])
  end
  redis.call('hset', KEYS[3], ARGV[2], offset .. ':' .. expires .. ':' .. ARGV[1])
  redis.call('zadd', KEYS[4], 0, ARGV[2])
end
redis.call('publish', ARGV[6], 'p' .. offset .. ':' .. epoch .. ':' .. ARGV[1])
return {offset, epoch}
"#;

/// Reads a page of entries after a key, with the stream position and the number of keys.
/// KEYS: meta, entries, keys. ARGV: after key ('' for the first page), limit, fresh epoch,
/// inclusive (0/1: from the key itself).
const STATE_SCRIPT: &str = r#"
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('hset', KEYS[1], 'e', epoch)
  redis.call('hset', KEYS[1], 's', 0)
end
local top = tonumber(redis.call('hget', KEYS[1], 's') or '0')
local min = '-'
if ARGV[1] ~= '' then
  if ARGV[4] == '1' then min = '[' .. ARGV[1] else min = '(' .. ARGV[1] end
end
local keys = redis.call('zrangebylex', KEYS[3], min, '+', 'LIMIT', 0, tonumber(ARGV[2]) + 1)
local values = {}
if #keys > 0 then values = redis.call('hmget', KEYS[2], unpack(keys)) end
return {top, epoch, redis.call('zcard', KEYS[3]), keys, values}
"#;

/// The scripts of map channels.
pub(super) struct MapScripts {
    update: Script,
    state: Script,
}

impl MapScripts {
    /// The scripts; on Redis Cluster (`sharded`), the update publishes with `SPUBLISH`.
    pub(super) fn new(sharded: bool) -> MapScripts {
        let update = if sharded {
            Script::new(&UPDATE_SCRIPT.replace("'publish'", "'spublish'"))
        } else {
            Script::new(UPDATE_SCRIPT)
        };
        MapScripts {
            update,
            state: Script::new(STATE_SCRIPT),
        }
    }
}

/// The shard-wide sorted set of keys with a TTL (not on Redis Cluster).
fn expiring_key(prefix: &str) -> String {
    format!("{prefix}.map_expiring")
}

/// On Redis Cluster, the channels with keys with a TTL, scored by their next expiry.
fn expiring_channels_key(prefix: &str) -> String {
    format!("{prefix}.map_expiring_channels")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisEngine {
    /// Runs the update script for `publication` in `channel`; `update` `None`: an expiry.
    async fn run_update(
        &self,
        channel: &str,
        publication: &Publication,
        update: Option<MapUpdate>,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        let json = serde_json::to_string(publication)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let key_ttl = update
            .and_then(|u| u.key_ttl)
            .map_or(0, |t| t.as_millis() as u64);
        let now = now_ms();
        let mut invocation = self.map_scripts.update.prepare_invoke();
        invocation
            .key(self.key("stream", channel))
            .key(self.key("meta", channel))
            .key(self.key("map", channel))
            .key(self.key("mapkeys", channel))
            .key(self.expiring_set(channel))
            .arg(json)
            .arg(&publication.key)
            .arg(if publication.removed { 1 } else { 0 })
            .arg(update.map_or(0, |u| u.stream.size))
            .arg(update.map_or(0, |u| u.stream.ttl.as_secs().max(1)))
            .arg(self.key("pub", channel))
            .arg(new_epoch())
            .arg(META_TTL_SECS)
            .arg(key_ttl)
            .arg(update.map_or(usize::MAX, |u| u.max_keys))
            .arg(now)
            .arg(format!("{channel}\n{}", publication.key))
            .arg(if update.is_none() { 1 } else { 0 })
            .arg(if update.is_some_and(|u| u.keep_alive) {
                1
            } else {
                0
            });
        let mut conn = self.shard(channel).commands.clone();
        let (offset, epoch): (i64, String) = call(invocation.invoke_async(&mut conn)).await?;
        if self.cluster_script.is_some() && key_ttl > 0 && offset != -2 {
            // After the script, so a sweep racing it cannot drop the channel (module doc).
            self.sweep_channel_at(channel, now + key_ttl).await?;
        }
        match offset {
            -2 => Err(HistoryError::TooManyKeys.into()),
            o if o < 0 => Ok(None),
            o => Ok(Some(StreamPosition {
                offset: o as u64,
                epoch,
            })),
        }
    }

    /// The sorted set of `channel`'s keys with a TTL: the shard's, or on Redis Cluster the
    /// channel's own (a script reaches only the keys of its channel's slot).
    fn expiring_set(&self, channel: &str) -> String {
        if self.cluster_script.is_some() {
            self.key("mapexp", channel)
        } else {
            expiring_key(&self.settings.prefix)
        }
    }

    /// On Redis Cluster: lists `channel` among those with keys to expire, to be swept at
    /// `at_ms` at the latest (an earlier time already listed stays).
    async fn sweep_channel_at(&self, channel: &str, at_ms: u64) -> Result<(), BrokerError> {
        let mut conn = self.shards[0].commands.clone();
        call(
            redis::cmd("ZADD")
                .arg(expiring_channels_key(&self.settings.prefix))
                .arg("LT")
                .arg(at_ms)
                .arg(channel)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// See [`Broker::map_update`](crate::engine::broker::Broker::map_update).
    pub(super) async fn update_map(
        &self,
        channel: &str,
        publication: Publication,
        update: MapUpdate,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        self.handler()?;
        self.run_update(channel, &publication, Some(update)).await
    }

    /// See [`Broker::map_state`](crate::engine::broker::Broker::map_state).
    pub(super) async fn read_map_state(
        &self,
        channel: &str,
        after: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<StatePage, BrokerError> {
        let mut invocation = self.map_scripts.state.prepare_invoke();
        invocation
            .key(self.key("meta", channel))
            .key(self.key("map", channel))
            .key(self.key("mapkeys", channel))
            .arg(after)
            .arg(limit)
            .arg(new_epoch())
            .arg(if inclusive { 1 } else { 0 });
        let mut conn = self.shard(channel).commands.clone();
        type State = (u64, String, u64, Vec<String>, Vec<Option<String>>);
        let (top, epoch, num_keys, keys, values): State =
            call(invocation.invoke_async(&mut conn)).await?;
        let now = now_ms();
        let more = keys.len() > limit;
        let mut entries = Vec::new();
        for (key, value) in keys.into_iter().zip(values).take(limit) {
            let Some(value) = value else { continue };
            let mut parts = value.splitn(3, ':');
            let (Some(offset), Some(expires), Some(json)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let expires: u64 = expires.parse().unwrap_or(0);
            if expires != 0 && expires <= now {
                continue;
            }
            let mut publication: Publication = serde_json::from_str(json).map_err(|e| {
                BrokerError::History(HistoryError::Storage(format!("corrupt map entry: {e}")))
            })?;
            publication.offset = offset.parse().unwrap_or(0);
            publication.key = key;
            entries.push(Arc::new(publication));
        }
        let cursor = match (more, entries.last()) {
            (true, Some(last)) => last.key.clone(),
            _ => String::new(),
        };
        Ok(StatePage {
            entries,
            cursor,
            position: StreamPosition { offset: top, epoch },
            num_keys,
        })
    }

    /// See [`Broker::map_expire`](crate::engine::broker::Broker::map_expire): every shard's
    /// expired keys, each removed by the update script in its "only if expired" form.
    pub(super) async fn expire_maps(&self) -> Result<usize, BrokerError> {
        if self.cluster_script.is_some() {
            return self.expire_cluster_maps().await;
        }
        let prefix = &self.settings.prefix;
        let mut removed = 0;
        for shard in &self.shards {
            removed += self
                .expire_set(shard.commands.clone(), &expiring_key(prefix), now_ms())
                .await?;
        }
        Ok(removed)
    }

    /// Expires the keys of the expiry set `set` due at `now` (one batch); how many went.
    async fn expire_set(&self, mut conn: Link, set: &str, now: u64) -> Result<usize, BrokerError> {
        let mut removed = 0;
        for member in due(&mut conn, set, now).await? {
            let Some((channel, key)) = member.split_once('\n') else {
                continue;
            };
            if self
                .run_update(channel, &removal(key), None)
                .await?
                .is_some()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// On Redis Cluster: the due channels of `map_expiring_channels`, each swept, then listed
    /// again at its next expiry if it has one (see the module doc).
    async fn expire_cluster_maps(&self) -> Result<usize, BrokerError> {
        let list = expiring_channels_key(&self.settings.prefix);
        let mut conn = self.shards[0].commands.clone();
        let now = now_ms();
        let mut removed = 0;
        for channel in due(&mut conn, &list, now).await? {
            let set = self.expiring_set(&channel);
            removed += self.expire_set(conn.clone(), &set, now).await?;
            call(conn.zrem::<_, _, ()>(&list, &channel)).await?;
            let next: Vec<(String, u64)> = call(
                redis::cmd("ZRANGE")
                    .arg(&set)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut conn),
            )
            .await?;
            if let Some((_, at)) = next.first() {
                self.sweep_channel_at(&channel, *at).await?;
            }
        }
        Ok(removed)
    }
}

/// The first members (a batch) of the sorted set `set` scored `now` or before.
async fn due(conn: &mut Link, set: &str, now: u64) -> Result<Vec<String>, BrokerError> {
    call(
        redis::cmd("ZRANGEBYSCORE")
            .arg(set)
            .arg(0)
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(EXPIRY_BATCH)
            .query_async(conn),
    )
    .await
}

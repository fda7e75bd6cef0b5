//! What the Redis engine writes, and where: key and topic names, the shard of a channel, and the
//! Lua scripts that keep a channel's offsets, history and delivery in one order.

use crate::engine::history::{new_epoch, Retention};
use crate::engine::idempotency::IdempotencyKey;

/// How long stream metadata (epoch, top offset) outlives the last publication.
const META_TTL_SECS: u64 = 30 * 24 * 3600;

/// The Redis key (or pub/sub topic) of `kind` for `channel`: `<prefix>.<kind>.<channel>`. Every
/// key and topic of a channel is named here.
pub(super) fn key(prefix: &str, kind: &str, channel: &str) -> String {
    format!("{prefix}.{kind}.{channel}")
}

/// The hash remembering the first answer of a publish with idempotency key `idempotency` in
/// `channel` (`o`: offset, `e`: epoch; both empty without history). The channel's length
/// keeps any channel and key apart, whatever dots they hold.
pub(super) fn idempotency_key(prefix: &str, channel: &str, idempotency: &str) -> String {
    format!("{prefix}.idem.{}.{channel}.{idempotency}", channel.len())
}

/// The topic of node-wide control messages.
pub(super) fn control_topic(prefix: &str) -> String {
    format!("{prefix}.control")
}

/// The hash collecting the nodes' answers to channel-listing request `request`.
pub(super) fn channels_answers_key(prefix: &str, request: &str) -> String {
    format!("{prefix}.channels.{request}")
}

/// The hash of node announcements.
pub(super) fn nodes_key(prefix: &str) -> String {
    format!("{prefix}.nodes")
}

/// The shard of `channel`: a stable FNV-1a hash, the same on every node.
pub fn shard_index(channel: &str, shards: usize) -> usize {
    (fnv(channel) % shards.max(1) as u64) as usize
}

fn fnv(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

/// Length of the hash tag [`cluster_name`] puts before a name: `{` 16 hex digits `}`.
pub(super) const TAG_LEN: usize = 18;

/// How a channel (or user) is named in keys and topics on Redis Cluster: behind a hash tag of
/// its own hash, so that all its keys and its topic share one slot (a Lua script may only touch
/// keys of one slot) whatever braces the name holds.
pub(super) fn cluster_name(name: &str) -> String {
    format!("{{{:016x}}}{name}", fnv(name))
}

/// Appends to a channel's stream and publishes, atomically.
/// KEYS: stream, meta[, idempotency]. ARGV: publication JSON, max length, stream TTL (s), topic,
/// fresh epoch, meta TTL (s)[, idempotency window (ms)]. Returns {offset, epoch}.
///
/// With an idempotency key it returns {offset, epoch, repeated (0/1)}: a key seen within its
/// window publishes nothing and returns the first answer; a new one is remembered. A max length
/// of 0 then publishes without storing (offset 0, empty epoch). One script serves every stored
/// or idempotent publish, so a batch finds it loaded for all its calls or for none (see
/// `publisher.rs`).
pub(super) const PUBLISH_SCRIPT: &str = r#"
if KEYS[3] then
  local first = redis.call('hmget', KEYS[3], 'o', 'e')
  if first[1] then
    return {tonumber(first[1]), first[2], 1}
  end
  if ARGV[2] == '0' then
    redis.call('publish', ARGV[4], 'p0::' .. ARGV[1])
    redis.call('hset', KEYS[3], 'o', 0, 'e', '')
    redis.call('pexpire', KEYS[3], ARGV[7])
    return {0, '', 0}
  end
end
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
if KEYS[3] then
  redis.call('hset', KEYS[3], 'o', offset, 'e', epoch)
  redis.call('pexpire', KEYS[3], ARGV[7])
  return {offset, epoch, 0}
end
return {offset, epoch}
"#;

/// How a publish script is called: by its hash (`EVALSHA`, loaded once: one Redis), or with its
/// body (`EVAL`: on Redis Cluster, where every master would need it loaded and a batch is not one
/// transaction, see `publisher.rs`).
#[derive(Clone, Copy)]
pub(super) enum ScriptRef<'a> {
    Sha(&'a str),
    Body(&'a str),
}

/// The publish script for Redis Cluster: the same, publishing to the channel's shard
/// (`SPUBLISH`), so a publication travels only to the shard that owns its channel.
pub(super) fn cluster_publish_script() -> String {
    PUBLISH_SCRIPT.replace("'publish'", "'spublish'")
}

/// A call of [`PUBLISH_SCRIPT`] storing and publishing `json` in `channel`.
pub(super) fn publish_call(
    script: ScriptRef,
    prefix: &str,
    channel: &str,
    json: &str,
    retention: Retention,
) -> redis::Cmd {
    let mut command = script_call(script, prefix, channel, None);
    command
        .arg(json)
        .arg(retention.size)
        .arg(retention.ttl.as_secs().max(1))
        .arg(key(prefix, "pub", channel))
        .arg(new_epoch())
        .arg(META_TTL_SECS);
    command
}

/// A call of [`PUBLISH_SCRIPT`] publishing `json` in `channel` once per `idempotency` key within
/// its window: stored with a `retention`, only published without one.
pub(super) fn publish_once_call(
    script: ScriptRef,
    prefix: &str,
    channel: &str,
    json: &str,
    retention: Option<Retention>,
    idempotency: &IdempotencyKey,
) -> redis::Cmd {
    let mut command = script_call(script, prefix, channel, Some(idempotency));
    command
        .arg(json)
        .arg(retention.map_or(0, |r| r.size))
        .arg(retention.map_or(1, |r| r.ttl.as_secs().max(1)))
        .arg(key(prefix, "pub", channel))
        .arg(new_epoch())
        .arg(META_TTL_SECS)
        .arg(window_ms(idempotency));
    command
}

/// `EVALSHA` of the publish script with `channel`'s keys (and its idempotency key's).
fn script_call(
    script: ScriptRef,
    prefix: &str,
    channel: &str,
    idempotency: Option<&IdempotencyKey>,
) -> redis::Cmd {
    let mut command = match script {
        ScriptRef::Sha(hash) => {
            let mut command = redis::cmd("EVALSHA");
            command.arg(hash);
            command
        }
        ScriptRef::Body(body) => {
            let mut command = redis::cmd("EVAL");
            command.arg(body);
            command
        }
    };
    command
        .arg(if idempotency.is_some() { 3 } else { 2 })
        .arg(key(prefix, "stream", channel))
        .arg(key(prefix, "meta", channel));
    if let Some(idempotency) = idempotency {
        command.arg(idempotency_key(prefix, channel, &idempotency.key));
    }
    command
}

/// A key's window in whole milliseconds, at least one (`PEXPIRE` refuses zero).
fn window_ms(idempotency: &IdempotencyKey) -> u64 {
    (idempotency.window.as_millis() as u64).max(1)
}

/// A `PUBLISH` of `json` to `channel`'s subscribers without storing it (no offset); `SPUBLISH`
/// on Redis Cluster.
pub(super) fn live_publish(prefix: &str, channel: &str, json: &str, sharded: bool) -> redis::Cmd {
    let mut command = redis::cmd(if sharded { "SPUBLISH" } else { "PUBLISH" });
    command
        .arg(key(prefix, "pub", channel))
        .arg(format!("p0::{json}"));
    command
}

/// Reads a stream page with its position.
/// KEYS: stream, meta. ARGV: after offset, limit (-1: all), reverse (0/1), fresh epoch.
pub(super) const HISTORY_SCRIPT: &str = r#"
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
pub(super) const PRESENCE_SCRIPT: &str = r#"
local expired = redis.call('zrangebyscore', KEYS[2], '0', ARGV[1])
if #expired > 0 then
  redis.call('hdel', KEYS[1], unpack(expired))
  redis.call('zremrangebyscore', KEYS[2], '0', ARGV[1])
end
return redis.call('hvals', KEYS[1])
"#;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_index("chat", 1), 0);
        let a = shard_index("chat:1", 4);
        assert_eq!(a, shard_index("chat:1", 4));
        let used: HashSet<usize> = (0..100).map(|i| shard_index(&format!("c{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }

    #[test]
    fn names_carry_prefix_kind_and_channel() {
        assert_eq!(key("sb", "stream", "chat:1"), "sb.stream.chat:1");
        assert_eq!(control_topic("sb"), "sb.control");
        assert_eq!(nodes_key("sb"), "sb.nodes");
        assert_eq!(idempotency_key("sb", "a.b", "c"), "sb.idem.3.a.b.c");
        assert_ne!(
            idempotency_key("sb", "a", "b.c"),
            idempotency_key("sb", "a.b", "c")
        );
    }
}

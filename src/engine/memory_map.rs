//! Map channels in memory (see [`crate::engine::map`]): each map's state is an ordered map of
//! keys beside its stream, changed under the same locks as the stream, so a change and its
//! append are one step.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use super::history::{HistoryError, OnStored, Retention};
use super::map::{removal, Deliver, MapUpdate, StatePage, EXPIRY_BATCH};
use super::memory::{append_locked, MemoryStream};
use crate::protocol::{Publication, StreamPosition};

/// One map channel's entries, by key.
#[derive(Default)]
pub(super) struct MemoryMap {
    entries: BTreeMap<String, Entry>,
}

struct Entry {
    publication: Arc<Publication>,
    /// When the key's TTL runs out, if it has one.
    expires: Option<Instant>,
    /// The stream retention its expiry's removal is appended with.
    stream: Retention,
}

/// Applies one map update (see [`crate::engine::History::map_update`]).
pub(super) fn update(
    streams: &mut HashMap<String, MemoryStream>,
    maps: &mut HashMap<String, MemoryMap>,
    channel: &str,
    publication: Publication,
    update: MapUpdate,
    on_stored: OnStored,
) -> Result<Option<StreamPosition>, HistoryError> {
    let map = maps.entry(channel.to_string()).or_default();
    let key = publication.key.clone();
    if publication.removed {
        if map.entries.remove(&key).is_none() {
            if map.entries.is_empty() {
                maps.remove(channel);
            }
            return Ok(None);
        }
        if map.entries.is_empty() {
            maps.remove(channel);
        }
        let (position, _) = append_locked(streams, channel, publication, update.stream, on_stored);
        return Ok(Some(position));
    }
    if update.keep_alive {
        if let Some(entry) = map.entries.get_mut(&key) {
            entry.expires = update.key_ttl.map(|ttl| Instant::now() + ttl);
            return Ok(None);
        }
    }
    if !map.entries.contains_key(&key) && map.entries.len() >= update.max_keys {
        return Err(HistoryError::TooManyKeys);
    }
    let (position, stored) = append_locked(streams, channel, publication, update.stream, on_stored);
    map.entries.insert(
        key,
        Entry {
            publication: stored,
            expires: update.key_ttl.map(|ttl| Instant::now() + ttl),
            stream: update.stream,
        },
    );
    Ok(Some(position))
}

/// A page of `channel`'s state after key `after`.
pub(super) fn state(
    streams: &mut HashMap<String, MemoryStream>,
    maps: &HashMap<String, MemoryMap>,
    channel: &str,
    (after, inclusive): (&str, bool),
    limit: usize,
) -> StatePage {
    let position = MemoryStream::of(streams, channel).position();
    let Some(map) = maps.get(channel) else {
        return StatePage {
            position,
            ..Default::default()
        };
    };
    let now = Instant::now();
    let start = match (after.is_empty(), inclusive) {
        (true, _) => Bound::Unbounded,
        (false, true) => Bound::Included(after.to_string()),
        (false, false) => Bound::Excluded(after.to_string()),
    };
    let mut entries = Vec::new();
    let mut more = false;
    // Keys past their TTL but not swept yet are left out, as the other storages do.
    for (_, entry) in map
        .entries
        .range((start, Bound::Unbounded))
        .filter(|(_, e)| e.expires.is_none_or(|at| at > now))
    {
        if entries.len() == limit {
            more = true;
            break;
        }
        entries.push(entry.publication.clone());
    }
    let cursor = match (more, entries.last()) {
        (true, Some(last)) => last.key.clone(),
        _ => String::new(),
    };
    StatePage {
        entries,
        cursor,
        position,
        num_keys: map.entries.len() as u64,
    }
}

/// Removes keys whose TTL ran out, appending and delivering their removals.
pub(super) fn expire(
    streams: &mut HashMap<String, MemoryStream>,
    maps: &mut HashMap<String, MemoryMap>,
    deliver: Deliver,
) -> usize {
    let now = Instant::now();
    let mut expired = Vec::new();
    'maps: for (channel, map) in maps.iter() {
        for (key, entry) in &map.entries {
            if entry.expires.is_some_and(|at| at <= now) {
                expired.push((channel.clone(), key.clone(), entry.stream));
                if expired.len() == EXPIRY_BATCH {
                    break 'maps;
                }
            }
        }
    }
    for (channel, key, stream) in &expired {
        if let Some(map) = maps.get_mut(channel) {
            map.entries.remove(key);
            if map.entries.is_empty() {
                maps.remove(channel);
            }
        }
        let deliver = deliver.clone();
        let name = channel.clone();
        append_locked(
            streams,
            channel,
            removal(key),
            *stream,
            Box::new(move |p| deliver(&name, p)),
        );
    }
    expired.len()
}

//! Map channels: a server-held key/value collection per channel, kept beside the channel's stream.
//!
//! A map channel's stream is its ordinary history stream (offsets, epoch, retention), whose
//! publications carry a `key` (and `removed` for a removal). Its *state* is the latest value of
//! every key still present. Each storage (memory, SQLite, Redis) changes the state and appends
//! the change to the stream in **one atomic step**, which is what lets a subscriber read the state
//! page by page and then catch up from the stream position it noted before its first page: every
//! change after that position is in the stream, and every change before it is in the state.
//!
//! Contract of a map update (see [`MapUpdate`]): setting a key stores its value (with an
//! expiry, when the namespace gives keys a TTL) and appends the publication; removing a key
//! that is present deletes it and appends a removal; removing an absent key changes nothing and
//! appends nothing; a keep-alive of a present key only restarts its TTL (see
//! [`MapUpdate::keep_alive`]). A new key beyond the map's `max_keys` is refused
//! ([`HistoryError::TooManyKeys`](super::history::HistoryError::TooManyKeys)) and nothing
//! changes. Delivery to subscribers follows the stream's order, as for any publication.
//!
//! Keys whose TTL ran out are removed by [`expire`](crate::engine::broker::Broker::map_expire):
//! each is deleted and its removal appended and delivered like any other, so subscribers and the
//! stream see the expiry.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::history::Retention;
use crate::protocol::{Publication, StreamPosition};

/// How a map channel stores one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapUpdate {
    /// The retention of the channel's stream of changes.
    pub stream: Retention,
    /// How long a key lives after it was last set; `None`: until removed.
    pub key_ttl: Option<Duration>,
    /// Most keys the map holds; a new key beyond it is refused.
    pub max_keys: usize,
    /// A keep-alive: when the key is present, only its TTL starts again (nothing is appended or
    /// delivered, and the update answers `None`); when absent, it is set as usual. Map presence
    /// entries are kept alive this way while their client stays.
    pub keep_alive: bool,
}

/// A page of a map's state, in key order, with the stream position it is consistent with.
#[derive(Debug, Clone, Default)]
pub struct StatePage {
    /// Entries (publications with `key`, and `offset` of their last change), ordered by key.
    pub entries: Vec<Arc<Publication>>,
    /// The last key of this page when more follow; empty on the last page.
    pub cursor: String,
    /// The stream's position when the page was read: every change up to it is in the state.
    pub position: StreamPosition,
    /// How many keys the map holds.
    pub num_keys: u64,
}

/// Where an expired key's removal goes once stored: to this node's subscribers of the channel.
pub type Deliver = Arc<dyn Fn(&str, Arc<Publication>) + Send + Sync>;

/// Most expired keys removed in one sweep, so a sweep never holds a storage for long.
pub const EXPIRY_BATCH: usize = 1000;

/// The removal publication of `key`.
pub fn removal(key: &str) -> Publication {
    Publication {
        data: Arc::from(
            serde_json::value::RawValue::from_string("null".into()).expect("null is JSON"),
        ),
        info: None,
        offset: 0,
        tags: Default::default(),
        key: key.to_string(),
        removed: true,
        binary: false,
    }
}

/// The contract above, checked on the embedded storages (Redis: `tests/maps.rs`).
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::engine::history::{History, HistoryError, HistoryFilter};
    use crate::engine::memory::MemoryHistory;
    use crate::engine::sqlite::SqliteHistory;

    fn update(key_ttl: Option<Duration>, max_keys: usize) -> MapUpdate {
        MapUpdate {
            stream: Retention {
                size: 100,
                ttl: Duration::from_secs(60),
            },
            key_ttl,
            max_keys,
            keep_alive: false,
        }
    }

    fn set(key: &str, value: &str) -> Publication {
        Publication {
            data: Arc::from(serde_json::value::RawValue::from_string(value.into()).unwrap()),
            info: None,
            offset: 0,
            tags: Default::default(),
            key: key.into(),
            removed: false,
            binary: false,
        }
    }

    async fn top(h: &dyn History) -> u64 {
        h.read("m", HistoryFilter::default())
            .await
            .unwrap()
            .position
            .offset
    }

    async fn keys(h: &dyn History) -> Vec<String> {
        let page = h.map_state("m", "", false, 100).await.unwrap();
        page.entries.iter().map(|e| e.key.clone()).collect()
    }

    async fn contract(h: &dyn History) {
        let stored = Arc::new(Mutex::new(Vec::new()));
        let on_stored = || {
            let stored = stored.clone();
            Box::new(move |p: Arc<Publication>| stored.lock().unwrap().push(p))
                as crate::engine::history::OnStored
        };
        let plain = update(None, 2);
        // Set: state and stream change together, delivered once stored.
        let first = h.map_update("m", set("b", "1"), plain, on_stored()).await;
        assert_eq!(first.unwrap().unwrap().offset, 1);
        h.map_update("m", set("a", "2"), plain, on_stored())
            .await
            .unwrap();
        assert_eq!(keys(h).await, ["a", "b"]);
        let page = h.map_state("m", "", false, 1).await.unwrap();
        assert_eq!((page.cursor.as_str(), page.num_keys), ("a", 2));
        assert_eq!(page.position.offset, 2);
        let from_b = h.map_state("m", "b", true, 1).await.unwrap();
        assert_eq!(from_b.entries[0].key, "b");
        // A new key beyond max_keys is refused, an existing one still changes.
        let refused = h.map_update("m", set("c", "3"), plain, on_stored()).await;
        assert!(matches!(refused, Err(HistoryError::TooManyKeys)));
        h.map_update("m", set("a", "20"), plain, on_stored())
            .await
            .unwrap();
        assert_eq!(top(h).await, 3);
        // Removing an absent key changes nothing; a present one is a removal in the stream.
        let absent = h.map_update("m", removal("zz"), plain, on_stored()).await;
        assert_eq!(absent.unwrap(), None);
        assert_eq!(top(h).await, 3);
        h.map_update("m", removal("b"), plain, on_stored())
            .await
            .unwrap();
        assert_eq!(keys(h).await, ["a"]);
        let stream = h.read("m", HistoryFilter::default()).await.unwrap();
        let last = stream.publications.last().unwrap();
        assert_eq!(
            (last.key.as_str(), last.removed, last.offset),
            ("b", true, 4)
        );
        let delivered: Vec<_> = stored.lock().unwrap().iter().map(|p| p.offset).collect();
        assert_eq!(delivered, [1, 2, 3, 4]);
        // A keep-alive of a present key publishes nothing; of an absent one it sets it.
        let alive = MapUpdate {
            keep_alive: true,
            ..update(Some(Duration::from_secs(60)), 10)
        };
        let kept = h.map_update("m", set("a", "20"), alive, on_stored()).await;
        assert_eq!(kept.unwrap(), None);
        let new = h.map_update("m", set("k", "1"), alive, on_stored()).await;
        assert_eq!(new.unwrap().unwrap().offset, 5);
        // TTL: an expired key leaves the state as a removal, delivered through `expire`.
        let short = update(Some(Duration::from_millis(1)), 10);
        h.map_update("m", set("t", "1"), short, on_stored())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !keys(h).await.contains(&"t".to_string()),
            "expired keys are not read"
        );
        let expired = Arc::new(Mutex::new(Vec::new()));
        let sink = expired.clone();
        let deliver: Deliver = Arc::new(move |channel, p| {
            sink.lock()
                .unwrap()
                .push((channel.to_string(), p.key.clone(), p.removed))
        });
        assert_eq!(h.map_expire(deliver.clone()).await.unwrap(), 1);
        assert_eq!(
            *expired.lock().unwrap(),
            [("m".to_string(), "t".to_string(), true)]
        );
        assert_eq!(
            h.map_expire(deliver).await.unwrap(),
            0,
            "a key expires once"
        );
        assert_eq!(top(h).await, 7);
    }

    #[tokio::test]
    async fn memory_keeps_the_map_contract() {
        contract(&MemoryHistory::default()).await;
    }

    #[tokio::test]
    async fn sqlite_keeps_the_map_contract() {
        let dir = std::env::temp_dir().join(format!("switchboard-map-{}", uuid::Uuid::new_v4()));
        let h = SqliteHistory::open(&dir, crate::config::Durability::Normal).unwrap();
        contract(&h).await;
        h.close();
        let _ = std::fs::remove_dir_all(dir);
    }
}

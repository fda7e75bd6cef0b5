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
    }
}

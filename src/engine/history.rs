//! Channel history: each channel's bounded stream of publications, with offsets and an epoch.
//!
//! The [`History`] trait is the contract every storage (in-memory, SQLite) keeps; the broker drives
//! it. Offsets in a stream are consecutive from 1 and never reused within an epoch; an epoch names
//! one life of the stream and changes whenever the stream's continuity is lost.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::engine::idempotency::{IdempotencyKey, Idempotent};
use crate::engine::map::{Deliver, MapUpdate, StatePage};
use crate::protocol::{error_code, Error, Publication, StreamPosition};

/// How much of a channel's stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most publications kept.
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
}

/// What part of a stream to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Publications after this position (whose epoch must be the current one, if not empty).
    pub since: Option<StreamPosition>,
    /// Most publications returned; `None` means all that are kept, `Some(0)` only the position.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
    /// Most bytes of publication data, info and tags the page may hold (see [`PageBudget`]); a
    /// page that would hold more fails with [`HistoryError::TooLarge`] instead, so an answer that
    /// could not be delivered is never built. `None`: no bound beyond `limit`.
    pub max_bytes: Option<usize>,
}

impl HistoryFilter {
    /// The filter of a client or server API `history` request: a negative `limit` means all that
    /// are kept. Reading backwards from offset 0 names nothing: error 107.
    pub fn from_request(
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Result<HistoryFilter, Error> {
        if reverse && since.as_ref().is_some_and(|s| s.offset == 0) {
            return Err(Error::new(error_code::BAD_REQUEST));
        }
        let limit = match limit {
            l if l < 0 => None,
            l => Some(l as usize),
        };
        Ok(HistoryFilter {
            since,
            limit,
            reverse,
            max_bytes: None,
        })
    }
}

/// Publications read from a stream, and the stream's current top.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub publications: Vec<Arc<Publication>>,
    pub position: StreamPosition,
}

/// Why history failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// `since` names another epoch: the stream the client knew is gone.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The storage failed; the publication was not stored.
    #[error("history storage failed: {0}")]
    Storage(String),
    /// The storage has more writes waiting than it takes; this one was refused, not stored.
    #[error("history storage busy")]
    Busy,
    /// A map update would add a key beyond the map's `max_keys`; nothing changed.
    #[error("too many keys in the map")]
    TooManyKeys,
    /// The page would hold more than the filter's `max_bytes`.
    #[error("history page over {0} bytes")]
    TooLarge(usize),
}

/// Counts a page's bytes as it is read, against [`HistoryFilter::max_bytes`]: storages stop
/// reading at the publication that goes over.
#[derive(Debug, Clone, Copy)]
pub struct PageBudget {
    max: Option<usize>,
    used: usize,
}

impl PageBudget {
    /// The budget of one read with `filter`.
    pub fn new(filter: &HistoryFilter) -> PageBudget {
        PageBudget {
            max: filter.max_bytes,
            used: 0,
        }
    }

    /// Counts `bytes` more; fails once the page would hold more than the budget.
    pub fn take(&mut self, bytes: usize) -> Result<(), HistoryError> {
        self.used = self.used.saturating_add(bytes);
        match self.max {
            Some(max) if self.used > max => Err(HistoryError::TooLarge(max)),
            _ => Ok(()),
        }
    }
}

/// The bytes a publication brings to a page: its data, info and tags as JSON (near enough to
/// what its encoding takes; the storages measure their stored form the same way).
pub fn publication_size(publication: &Publication) -> usize {
    let info = publication.info.as_ref().map_or(0, |i| {
        i.user.len()
            + i.client.len()
            + i.conn_info.as_ref().map_or(0, |c| c.get().len())
            + i.chan_info.as_ref().map_or(0, |c| c.get().len())
    });
    let tags: usize = publication
        .tags
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    publication.data.get().len() + info + tags
}

/// Called with each appended publication, in offset order per channel, once it is stored.
pub type OnStored = Box<dyn FnOnce(Arc<Publication>) + Send>;

/// An append under way: resolves with the publication's position once it is stored.
pub type Appending = BoxFuture<'static, Result<StreamPosition, HistoryError>>;

/// An idempotent append under way (see [`History::append_once`]).
pub type AppendingOnce = BoxFuture<'static, Result<Idempotent, HistoryError>>;

/// A map update under way (see [`History::map_update`]): the change's position, or `None` when
/// nothing changed (the removal of an absent key).
pub type Updating = BoxFuture<'static, Result<Option<StreamPosition>, HistoryError>>;

/// Storage of channel streams.
///
/// Contract: `append` gives the publication the next offset of the channel's stream; `on_stored`
/// runs once the publication is stored (durably, for a durable storage), and for one channel those
/// calls happen in offset order and never concurrently, so whoever delivers from them delivers in
/// order. The publication's place in the stream is fixed when `append` returns, before its future
/// is polled: successive calls from one task append in call order, which lets a caller keep several
/// appends in flight. The future resolves after `on_stored` ran. A failed append stores nothing and
/// calls nothing.
///
/// The storage also remembers idempotency keys (see [`append_once`](History::append_once)),
/// as durably as it keeps streams, so that a publish with a key happens once per channel
/// within the key's window.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Appends `publication` to `channel`'s stream, trimming the stream to `retention`.
    fn append(
        &self,
        channel: &str,
        publication: Publication,
        retention: Retention,
        on_stored: OnStored,
    ) -> Appending;

    /// [`append`](History::append), once per `key` and `channel` within the key's window:
    /// checking the key, appending and remembering the key are one atomic step. A key already
    /// remembered for the channel appends nothing, calls nothing and resolves to
    /// [`Idempotent::Repeated`] with what the first call resolved to. Otherwise the publication
    /// is appended (when `retention` is given; without one it is not stored, only the key) and
    /// `on_stored` runs as for `append` — with offset 0 when not stored — before the future
    /// resolves to [`Idempotent::Published`]. A failed call remembers nothing.
    fn append_once(
        &self,
        channel: &str,
        publication: Publication,
        retention: Option<Retention>,
        key: IdempotencyKey,
        on_stored: OnStored,
    ) -> AppendingOnce;

    /// Reads publications per `filter`, oldest first unless `filter.reverse`. A stream that does not
    /// exist yet is created (a fresh epoch, top 0): every position a reader gets names an epoch.
    async fn read(&self, channel: &str, filter: HistoryFilter)
        -> Result<HistoryPage, HistoryError>;

    /// Removes a channel's publications; its position (epoch and top offset) is kept.
    async fn remove(&self, channel: &str) -> Result<(), HistoryError>;

    /// Changes `channel`'s map state by `publication` (which sets or removes
    /// `publication.key`) and appends it to the stream, in one atomic step; `on_stored` then
    /// runs as for [`append`](History::append). The contract is [`crate::engine::map`]'s. The
    /// place in the stream is fixed when this returns, as for `append`.
    fn map_update(
        &self,
        channel: &str,
        publication: Publication,
        update: MapUpdate,
        on_stored: OnStored,
    ) -> Updating;

    /// Reads up to `limit` entries of `channel`'s map whose keys come after `after` (from
    /// `after` itself when `inclusive`; all from the first with an empty `after`), with the
    /// stream position they are consistent with (the stream is created if new, as for `read`).
    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<StatePage, HistoryError>;

    /// Removes up to [`EXPIRY_BATCH`](crate::engine::map::EXPIRY_BATCH) keys whose TTL ran out,
    /// each appended to its stream as a removal and handed to `deliver` in stream order.
    /// Returns how many were removed.
    async fn map_expire(&self, deliver: Deliver) -> Result<usize, HistoryError>;
}

/// A fresh random epoch name.
pub fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Applies `filter` to a stream's kept publications (oldest first).
pub fn select<'a>(
    kept: impl DoubleEndedIterator<Item = &'a Arc<Publication>>,
    position: &StreamPosition,
    filter: &HistoryFilter,
) -> Result<Vec<Arc<Publication>>, HistoryError> {
    let after = match &filter.since {
        Some(since) => {
            if !since.epoch.is_empty() && since.epoch != position.epoch {
                return Err(HistoryError::UnrecoverablePosition);
            }
            since.offset
        }
        None => 0,
    };
    let limit = filter.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let kept = kept.filter(|p| p.offset > after);
    let mut budget = PageBudget::new(filter);
    let counted = |p: &Arc<Publication>| budget.take(publication_size(p)).map(|()| p.clone());
    if filter.reverse {
        kept.rev().take(limit).map(counted).collect()
    } else {
        kept.take(limit).map(counted).collect()
    }
}

//! The writer thread: takes every waiting request, commits them in one transaction, then runs the
//! stored callbacks in offset order.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{map, now_ms, WriteRequest};
use crate::engine::history::{new_epoch, HistoryError, OnStored, Retention};
use crate::engine::idempotency::{IdempotencyKey, Idempotent};
use crate::engine::map::Deliver;
use crate::protocol::{Publication, StreamPosition};

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 4096;
/// How often the writer removes expired publications.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// Most expired rows removed per pass, so a large expiry never stalls appends for long.
const EXPIRY_CHUNK: usize = 5000;
/// How long a stream's epoch and top outlive its last publication (or its creation).
const META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Stream tops the writer keeps in memory before starting over from the database.
const MAX_CACHED_STREAMS: usize = 100_000;

/// The writer thread's state: the write connection and each stream's top, cached.
pub(super) struct Writer {
    conn: Connection,
    streams: HashMap<String, (String, u64)>,
}

/// What a committed request must do next.
enum Done {
    Appended {
        on_stored: OnStored,
        publication: Arc<Publication>,
        position: StreamPosition,
        reply: oneshot::Sender<Result<StreamPosition, HistoryError>>,
    },
    /// An idempotent append: delivered (`delivery`) unless its key was a repeat.
    Once {
        delivery: Option<(OnStored, Arc<Publication>)>,
        outcome: Idempotent,
        reply: oneshot::Sender<Result<Idempotent, HistoryError>>,
    },
    /// A removal or a stream creation: nothing to report but success.
    Acked(oneshot::Sender<Result<(), HistoryError>>),
    /// A map update: delivered (`delivery`) when it changed something.
    MapUpdated {
        delivery: Option<(OnStored, Arc<Publication>)>,
        outcome: map::Outcome,
        reply: oneshot::Sender<map::Outcome>,
    },
    /// Expired map keys: their removals, delivered in order.
    Expired {
        removals: Vec<(String, Arc<Publication>)>,
        deliver: Deliver,
        reply: oneshot::Sender<Result<usize, HistoryError>>,
    },
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Self {
        Writer {
            conn,
            streams: HashMap::new(),
        }
    }

    pub(super) fn run(mut self, requests: mpsc::Receiver<WriteRequest>) {
        let mut last_expiry = std::time::Instant::now();
        loop {
            match requests.recv_timeout(EXPIRY_INTERVAL) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match requests.try_recv() {
                            Ok(request) => batch.push(request),
                            Err(_) => break,
                        }
                    }
                    self.commit(batch);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Expiry runs between batches, busy or idle.
            if last_expiry.elapsed() >= EXPIRY_INTERVAL {
                self.expire();
                last_expiry = std::time::Instant::now();
            }
        }
        tracing::debug!("history writer stopped");
    }

    /// Writes a batch in one transaction; on success runs the callbacks in order, then replies.
    fn commit(&mut self, batch: Vec<WriteRequest>) {
        let result = self.write(batch);
        match result {
            Ok(done) => {
                for item in done {
                    match item {
                        Done::Appended {
                            on_stored,
                            publication,
                            position,
                            reply,
                        } => {
                            on_stored(publication);
                            let _ = reply.send(Ok(position));
                        }
                        Done::Once {
                            delivery,
                            outcome,
                            reply,
                        } => {
                            if let Some((on_stored, publication)) = delivery {
                                on_stored(publication);
                            }
                            let _ = reply.send(Ok(outcome));
                        }
                        Done::Acked(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        Done::MapUpdated {
                            delivery,
                            outcome,
                            reply,
                        } => {
                            if let Some((on_stored, publication)) = delivery {
                                on_stored(publication);
                            }
                            let _ = reply.send(outcome);
                        }
                        Done::Expired {
                            removals,
                            deliver,
                            reply,
                        } => {
                            let count = removals.len();
                            for (channel, publication) in removals {
                                deliver(&channel, publication);
                            }
                            let _ = reply.send(Ok(count));
                        }
                    }
                }
            }
            Err((error, replies)) => {
                tracing::error!(%error, "history commit failed");
                // Nothing of the batch was stored: forget the offsets it took (the next append
                // reloads the stored top). A failed commit is rare; the whole cache goes.
                self.streams.clear();
                for reply in replies {
                    match reply {
                        Done::Appended { reply, .. } => {
                            let _ = reply.send(Err(HistoryError::Storage(error.clone())));
                        }
                        Done::Once { reply, .. } => {
                            let _ = reply.send(Err(HistoryError::Storage(error.clone())));
                        }
                        Done::Acked(reply) => {
                            let _ = reply.send(Err(HistoryError::Storage(error.clone())));
                        }
                        Done::MapUpdated { reply, .. } => {
                            let _ = reply.send(Err(HistoryError::Storage(error.clone())));
                        }
                        Done::Expired { reply, .. } => {
                            let _ = reply.send(Err(HistoryError::Storage(error.clone())));
                        }
                    }
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn write(&mut self, batch: Vec<WriteRequest>) -> Result<Vec<Done>, (String, Vec<Done>)> {
        let mut done = Vec::with_capacity(batch.len());
        let tx = match self.conn.unchecked_transaction() {
            Ok(tx) => tx,
            Err(e) => {
                // Fail every request of the batch.
                let failed = batch.into_iter().map(pending_reply).collect();
                return Err((e.to_string(), failed));
            }
        };
        let mut error = None;
        let mut tops = HashMap::new();
        let mut requests = batch.into_iter();
        for request in requests.by_ref() {
            match apply(&tx, &mut self.streams, &mut tops, request) {
                Ok(item) => done.push(item),
                Err((e, item)) => {
                    error = Some(e);
                    done.push(item);
                    break;
                }
            }
        }
        if error.is_none() {
            if let Err(e) = write_tops(&tx, &tops) {
                error = Some(e.to_string());
            }
        }
        if let Some(e) = error {
            drop(tx);
            done.extend(requests.map(pending_reply));
            return Err((e, done));
        }
        if let Err(e) = tx.commit() {
            return Err((e.to_string(), done));
        }
        Ok(done)
    }

    /// Removes expired publications, a chunk at a time.
    fn expire(&mut self) {
        let result = self.conn.execute(
            "DELETE FROM publications WHERE (channel, offset) IN
               (SELECT channel, offset FROM publications WHERE expires_at <= ?1 LIMIT ?2)",
            params![now_ms(), EXPIRY_CHUNK as i64],
        );
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired history removed"),
            Err(e) => tracing::warn!(error = %e, "history expiry failed"),
        }
        // Stream metadata (epoch, top) outlives its publications by META_TTL, then goes too:
        // a stream made by a mere read of a random channel name does not stay forever.
        let result = self.conn.execute(
            "DELETE FROM streams WHERE channel IN
               (SELECT channel FROM streams s WHERE touched_at <= ?1
                  AND NOT EXISTS (SELECT 1 FROM publications p WHERE p.channel = s.channel)
                  AND NOT EXISTS (SELECT 1 FROM map_state m WHERE m.channel = s.channel)
                LIMIT ?2)",
            params![now_ms() - META_TTL.as_millis() as i64, EXPIRY_CHUNK as i64],
        );
        match result {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(removed = n, "expired stream metadata removed");
                self.streams.clear();
            }
            Err(e) => tracing::warn!(error = %e, "stream metadata expiry failed"),
        }
        // Idempotency keys past their window.
        let result = self.conn.execute(
            "DELETE FROM idempotency_keys WHERE (channel, key) IN
               (SELECT channel, key FROM idempotency_keys WHERE expires_at <= ?1 LIMIT ?2)",
            params![now_ms(), EXPIRY_CHUNK as i64],
        );
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired idempotency keys removed"),
            Err(e) => tracing::warn!(error = %e, "idempotency key expiry failed"),
        }
        // The cache of stream tops is only a cache: keep it bounded.
        if self.streams.len() > MAX_CACHED_STREAMS {
            self.streams.clear();
        }
    }
}

/// The reply slot of a request that was not applied.
fn pending_reply(request: WriteRequest) -> Done {
    match request {
        WriteRequest::Append {
            on_stored,
            publication,
            reply,
            ..
        } => Done::Appended {
            on_stored,
            publication: Arc::new(publication),
            position: StreamPosition::default(),
            reply,
        },
        WriteRequest::AppendOnce { reply, .. } => Done::Once {
            delivery: None,
            outcome: Idempotent::Published(None),
            reply,
        },
        WriteRequest::Remove { reply, .. } | WriteRequest::Create { reply, .. } => {
            Done::Acked(reply)
        }
        WriteRequest::MapUpdate { reply, .. } => Done::MapUpdated {
            delivery: None,
            outcome: Ok(None),
            reply,
        },
        WriteRequest::MapExpire { deliver, reply } => Done::Expired {
            removals: Vec::new(),
            deliver,
            reply,
        },
    }
}

/// Applies one request inside the batch's transaction.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    streams: &mut HashMap<String, (String, u64)>,
    tops: &mut HashMap<String, (u64, usize)>,
    request: WriteRequest,
) -> Result<Done, (String, Done)> {
    match request {
        WriteRequest::Append {
            channel,
            mut publication,
            retention,
            on_stored,
            reply,
        } => {
            let result = insert(tx, streams, tops, &channel, &mut publication, retention);
            match result {
                Ok(position) => Ok(Done::Appended {
                    on_stored,
                    publication: Arc::new(publication),
                    position,
                    reply,
                }),
                Err(e) => Err((
                    e.to_string(),
                    Done::Appended {
                        on_stored,
                        publication: Arc::new(publication),
                        position: StreamPosition::default(),
                        reply,
                    },
                )),
            }
        }
        WriteRequest::AppendOnce {
            channel,
            mut publication,
            retention,
            key,
            on_stored,
            reply,
        } => {
            let result = (|| -> rusqlite::Result<Idempotent> {
                if let Some(first) = remembered(tx, &channel, &key.key)? {
                    return Ok(Idempotent::Repeated(first));
                }
                let position = match retention {
                    Some(retention) => Some(insert(
                        tx,
                        streams,
                        tops,
                        &channel,
                        &mut publication,
                        retention,
                    )?),
                    None => None,
                };
                remember(tx, &channel, &key, position.as_ref())?;
                Ok(Idempotent::Published(position))
            })();
            match result {
                Ok(outcome) => Ok(Done::Once {
                    delivery: matches!(outcome, Idempotent::Published(_))
                        .then(|| (on_stored, Arc::new(publication))),
                    outcome,
                    reply,
                }),
                Err(e) => Err((
                    e.to_string(),
                    Done::Once {
                        delivery: None,
                        outcome: Idempotent::Published(None),
                        reply,
                    },
                )),
            }
        }
        WriteRequest::Remove { channel, reply } => {
            match tx.execute("DELETE FROM publications WHERE channel = ?1", [&channel]) {
                Ok(_) => Ok(Done::Acked(reply)),
                Err(e) => Err((e.to_string(), Done::Acked(reply))),
            }
        }
        WriteRequest::Create { channel, reply } => match stream_top(tx, streams, &channel) {
            Ok(_) => Ok(Done::Acked(reply)),
            Err(e) => Err((e.to_string(), Done::Acked(reply))),
        },
        WriteRequest::MapUpdate {
            channel,
            mut publication,
            update,
            on_stored,
            reply,
        } => match map::update(tx, streams, tops, &channel, &mut publication, update) {
            Ok(outcome) => Ok(Done::MapUpdated {
                delivery: matches!(outcome, Ok(Some(_)))
                    .then(|| (on_stored, Arc::new(publication))),
                outcome,
                reply,
            }),
            Err(e) => Err((
                e.to_string(),
                Done::MapUpdated {
                    delivery: None,
                    outcome: Ok(None),
                    reply,
                },
            )),
        },
        WriteRequest::MapExpire { deliver, reply } => match map::expire(tx, streams, tops) {
            Ok(removals) => Ok(Done::Expired {
                removals,
                deliver,
                reply,
            }),
            Err(e) => Err((
                e.to_string(),
                Done::Expired {
                    removals: Vec::new(),
                    deliver,
                    reply,
                },
            )),
        },
    }
}

/// Inserts `publication` as the next of `channel`'s stream, giving it its offset.
pub(super) fn insert(
    tx: &rusqlite::Transaction<'_>,
    streams: &mut HashMap<String, (String, u64)>,
    tops: &mut HashMap<String, (u64, usize)>,
    channel: &str,
    publication: &mut Publication,
    retention: Retention,
) -> rusqlite::Result<StreamPosition> {
    let (epoch, top) = stream_top(tx, streams, channel)?;
    let offset = top + 1;
    publication.offset = offset;
    let info = publication
        .info
        .as_ref()
        .map(|i| serde_json::to_string(i).unwrap_or_default());
    let tags = (!publication.tags.is_empty())
        .then(|| serde_json::to_string(&publication.tags).unwrap_or_default());
    let expires_at = now_ms().saturating_add(retention.ttl.as_millis() as i64);
    tx.prepare_cached(
        "INSERT INTO publications (channel, offset, expires_at, data, info, tags, key, removed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        channel,
        offset as i64,
        expires_at,
        stored_data(publication),
        info,
        tags,
        (!publication.key.is_empty()).then_some(publication.key.as_str()),
        publication.removed,
    ])?;
    // The stream's top and its trim are written once per channel per batch.
    tops.insert(channel.to_string(), (offset, retention.size));
    streams.insert(channel.to_string(), (epoch.clone(), offset));
    Ok(StreamPosition { offset, epoch })
}

/// The `data` column of a publication: its JSON text, or for a binary payload (a JSON string of
/// base64) `#` and the base64, so a read knows it from a JSON string payload.
fn stored_data(publication: &crate::protocol::Publication) -> std::borrow::Cow<'_, str> {
    let text = publication.data.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(base64) if publication.binary => {
            std::borrow::Cow::Owned(format!("{}{base64}", super::read::BINARY_MARK))
        }
        _ => std::borrow::Cow::Borrowed(text),
    }
}

/// The position the first publish with `key` in `channel` answered, while the key's window
/// lasts. Keys written earlier in the same transaction are seen too.
fn remembered(
    tx: &rusqlite::Transaction<'_>,
    channel: &str,
    key: &str,
) -> rusqlite::Result<Option<Option<StreamPosition>>> {
    tx.prepare_cached(
        "SELECT offset, epoch FROM idempotency_keys
         WHERE channel = ?1 AND key = ?2 AND expires_at > ?3",
    )?
    .query_row(params![channel, key, now_ms()], |row| {
        let offset: Option<i64> = row.get(0)?;
        let epoch: Option<String> = row.get(1)?;
        Ok(offset.zip(epoch).map(|(offset, epoch)| StreamPosition {
            offset: offset as u64,
            epoch,
        }))
    })
    .optional()
}

/// Records that the publish with `key` in `channel` answered `position` (replacing an expired
/// record of the same key).
fn remember(
    tx: &rusqlite::Transaction<'_>,
    channel: &str,
    key: &IdempotencyKey,
    position: Option<&StreamPosition>,
) -> rusqlite::Result<()> {
    let expires_at = now_ms().saturating_add(key.window.as_millis() as i64);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys (channel, key, expires_at, offset, epoch)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        channel,
        key.key,
        expires_at,
        position.map(|p| p.offset as i64),
        position.map(|p| p.epoch.as_str())
    ])?;
    Ok(())
}

/// Records each appended-to stream's new top and trims it to its retention size.
fn write_tops(
    tx: &rusqlite::Transaction<'_>,
    tops: &HashMap<String, (u64, usize)>,
) -> rusqlite::Result<()> {
    let now = now_ms();
    for (channel, (top, size)) in tops {
        tx.prepare_cached("UPDATE streams SET top = ?2, touched_at = ?3 WHERE channel = ?1")?
            .execute(params![channel, *top as i64, now])?;
        if *top > *size as u64 {
            tx.prepare_cached("DELETE FROM publications WHERE channel = ?1 AND offset <= ?2")?
                .execute(params![channel, (*top - *size as u64) as i64])?;
        }
    }
    Ok(())
}

/// The epoch and top offset of `channel`'s stream, creating the stream if it is new.
fn stream_top(
    tx: &rusqlite::Transaction<'_>,
    streams: &mut HashMap<String, (String, u64)>,
    channel: &str,
) -> rusqlite::Result<(String, u64)> {
    if let Some((epoch, top)) = streams.get(channel) {
        return Ok((epoch.clone(), *top));
    }
    let stored = tx
        .query_row(
            "SELECT epoch, top FROM streams WHERE channel = ?1",
            [channel],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)),
        )
        .optional()?;
    let (epoch, top) = match stored {
        Some(found) => found,
        None => {
            let epoch = new_epoch();
            tx.execute(
                "INSERT INTO streams (channel, epoch, top, touched_at) VALUES (?1, ?2, 0, ?3)",
                params![channel, epoch, now_ms()],
            )?;
            (epoch, 0)
        }
    };
    streams.insert(channel.to_string(), (epoch.clone(), top));
    Ok((epoch, top))
}

//! Durable channel history in an embedded SQLite file (WAL mode).
//!
//! SQLite calls block, so none runs on the async workers: appends and removals go to one dedicated
//! writer thread through a channel, and reads run on tokio's blocking pool with their own
//! connections (WAL lets them read while the writer writes).
//!
//! The writer takes every request waiting in its channel and commits them in one transaction, so
//! one `fsync` acknowledges a whole batch: throughput grows with load while each publication is
//! still acknowledged only once it is durable. After the commit it runs the `on_stored` callbacks
//! in the order offsets were assigned, which is what lets the broker deliver in order without a
//! lock around the disk write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::history::{
    new_epoch, Appending, History, HistoryError, HistoryFilter, HistoryPage, OnStored, Retention,
};
use crate::config::Durability;
use crate::protocol::{ClientInfo, Publication, StreamPosition};

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
/// Requests waiting for the writer at most (about a third of a second of its work at full
/// speed); beyond that a write is refused as busy rather than queued without bound.
const WRITE_QUEUE: usize = 16_384;
/// Read connections kept open for reuse.
const READ_POOL: usize = 8;

/// History stored in `<data_dir>/history.sqlite3`.
pub struct SqliteHistory {
    path: PathBuf,
    writes: Mutex<Option<mpsc::SyncSender<WriteRequest>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
}

enum WriteRequest {
    Append {
        channel: String,
        publication: Publication,
        retention: Retention,
        on_stored: OnStored,
        reply: oneshot::Sender<Result<StreamPosition, HistoryError>>,
    },
    Remove {
        channel: String,
        reply: oneshot::Sender<Result<(), HistoryError>>,
    },
    /// Creates the channel's stream (a fresh epoch, top 0) unless it exists.
    Create {
        channel: String,
        reply: oneshot::Sender<Result<(), HistoryError>>,
    },
}

impl SqliteHistory {
    /// Opens (creating if needed) the history in `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<SqliteHistory, HistoryError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            HistoryError::Storage(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join("history.sqlite3");
        let conn = open_connection(&path).map_err(storage)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS streams (
                 channel TEXT PRIMARY KEY,
                 epoch TEXT NOT NULL,
                 top INTEGER NOT NULL,
                 touched_at INTEGER NOT NULL DEFAULT 0
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS publications (
                 channel TEXT NOT NULL,
                 offset INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL,
                 data TEXT NOT NULL,
                 info TEXT,
                 tags TEXT,
                 PRIMARY KEY (channel, offset)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS publications_expiry ON publications (expires_at);",
        )
        .map_err(storage)?;
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(storage)?;
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE);
        let writer = thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || Writer::new(conn).run(rx))
            .map_err(|e| HistoryError::Storage(format!("cannot start writer: {e}")))?;
        tracing::info!(path = %path.display(), ?durability, "history in SQLite");
        Ok(SqliteHistory {
            path,
            writes: Mutex::new(Some(tx)),
            readers: Arc::new(Mutex::new(Vec::new())),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Sends the writer a request it answers, and waits for the answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, HistoryError>>) -> WriteRequest,
    ) -> Result<T, HistoryError> {
        let (reply, answer) = oneshot::channel();
        self.send(request(reply))?;
        answer.await.map_err(writer_stopped)?
    }

    fn send(&self, request: WriteRequest) -> Result<(), HistoryError> {
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = writes.as_ref() else {
            return Err(HistoryError::Storage("history writer stopped".into()));
        };
        // Never blocks the runtime: a full queue is an overload the caller hears about at once.
        tx.try_send(request).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => HistoryError::Busy,
            mpsc::TrySendError::Disconnected(_) => {
                HistoryError::Storage("history writer stopped".into())
            }
        })
    }

    /// Reads `channel`'s stream on a pooled read connection; `None` if the stream does not exist.
    async fn read_stream(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<Option<HistoryPage>, HistoryError> {
        let path = self.path.clone();
        let readers = self.readers.clone();
        let channel = channel.to_string();
        tokio::task::spawn_blocking(move || {
            let conn = readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .map_or_else(|| open_connection(&path), Ok)
                .map_err(storage)?;
            let result = read(&conn, &channel, &filter);
            let mut pool = readers.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < READ_POOL {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| HistoryError::Storage(format!("history read task failed: {e}")))?
    }

    /// Stops the writer after it commits what it was given; later appends fail.
    pub fn close(&self) {
        self.writes.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

impl Drop for SqliteHistory {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl History for SqliteHistory {
    fn append(
        &self,
        channel: &str,
        publication: Publication,
        retention: Retention,
        on_stored: OnStored,
    ) -> Appending {
        let (reply, result) = oneshot::channel();
        // Queued to the writer now: the order of calls is the order of the stream.
        let sent = self.send(WriteRequest::Append {
            channel: channel.to_string(),
            publication,
            retention,
            on_stored,
            reply,
        });
        Box::pin(async move {
            sent?;
            result.await.map_err(writer_stopped)?
        })
    }

    async fn read(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, HistoryError> {
        if let Some(page) = self.read_stream(channel, filter.clone()).await? {
            return Ok(page);
        }
        // A stream has an epoch from its first read, not only from its first publication: the
        // position a subscriber saves must name the epoch it belongs to. Only the writer creates
        // rows; the stream is then read again, as an append may have raced the creation.
        self.ask(|reply| WriteRequest::Create {
            channel: channel.to_string(),
            reply,
        })
        .await?;
        self.read_stream(channel, filter)
            .await?
            .ok_or_else(|| HistoryError::Storage("stream missing after its creation".into()))
    }

    async fn remove(&self, channel: &str) -> Result<(), HistoryError> {
        self.ask(|reply| WriteRequest::Remove {
            channel: channel.to_string(),
            reply,
        })
        .await
    }
}

/// The writer dropped a request's reply: it has stopped.
fn writer_stopped(_: oneshot::error::RecvError) -> HistoryError {
    HistoryError::Storage("history writer stopped".into())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn storage(e: rusqlite::Error) -> HistoryError {
    HistoryError::Storage(e.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads a page of `channel`'s stream on a read connection; `None` if the stream does not exist.
fn read(
    conn: &Connection,
    channel: &str,
    filter: &HistoryFilter,
) -> Result<Option<HistoryPage>, HistoryError> {
    // One read transaction, so the position and the rows agree.
    let tx = conn.unchecked_transaction().map_err(storage)?;
    let Some(position) = tx
        .query_row(
            "SELECT epoch, top FROM streams WHERE channel = ?1",
            [channel],
            |row| {
                Ok(StreamPosition {
                    epoch: row.get(0)?,
                    offset: row.get::<_, i64>(1)? as u64,
                })
            },
        )
        .optional()
        .map_err(storage)?
    else {
        return Ok(None);
    };
    let after = match &filter.since {
        Some(since) => {
            if !since.epoch.is_empty() && since.epoch != position.epoch {
                return Err(HistoryError::UnrecoverablePosition);
            }
            since.offset
        }
        None => 0,
    };
    let limit = filter.limit.map_or(-1, |l| l.min(i64::MAX as usize) as i64);
    if limit == 0 {
        return Ok(Some(HistoryPage {
            publications: Vec::new(),
            position,
        }));
    }
    let sql = if filter.reverse {
        "SELECT offset, data, info, tags FROM publications
         WHERE channel = ?1 AND offset > ?2 AND expires_at > ?3 ORDER BY offset DESC LIMIT ?4"
    } else {
        "SELECT offset, data, info, tags FROM publications
         WHERE channel = ?1 AND offset > ?2 AND expires_at > ?3 ORDER BY offset ASC LIMIT ?4"
    };
    let mut statement = tx.prepare_cached(sql).map_err(storage)?;
    let rows = statement
        .query_map(params![channel, after as i64, now_ms(), limit], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(storage)?;
    let mut publications = Vec::new();
    for row in rows {
        let (offset, data, info, tags) = row.map_err(storage)?;
        publications.push(Arc::new(decode_row(offset, data, info, tags)?));
    }
    Ok(Some(HistoryPage {
        publications,
        position,
    }))
}

fn decode_row(
    offset: i64,
    data: String,
    info: Option<String>,
    tags: Option<String>,
) -> Result<Publication, HistoryError> {
    let corrupt = |e: serde_json::Error| HistoryError::Storage(format!("corrupt row: {e}"));
    Ok(Publication {
        data: Arc::from(RawValue::from_string(data).map_err(corrupt)?),
        info: info
            .map(|i| serde_json::from_str::<ClientInfo>(&i))
            .transpose()
            .map_err(corrupt)?,
        offset: offset as u64,
        tags: tags
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(corrupt)?
            .unwrap_or_default(),
    })
}

/// The writer thread's state: the write connection and each stream's top, cached.
struct Writer {
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
    /// A removal or a stream creation: nothing to report but success.
    Acked(oneshot::Sender<Result<(), HistoryError>>),
}

impl Writer {
    fn new(conn: Connection) -> Self {
        Writer {
            conn,
            streams: HashMap::new(),
        }
    }

    fn run(mut self, requests: mpsc::Receiver<WriteRequest>) {
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
                        Done::Acked(reply) => {
                            let _ = reply.send(Ok(()));
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
                        Done::Acked(reply) => {
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
        WriteRequest::Remove { reply, .. } | WriteRequest::Create { reply, .. } => {
            Done::Acked(reply)
        }
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
            let result = (|| -> rusqlite::Result<StreamPosition> {
                let (epoch, top) = stream_top(tx, streams, &channel)?;
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
                    "INSERT INTO publications (channel, offset, expires_at, data, info, tags)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    channel,
                    offset as i64,
                    expires_at,
                    publication.data.get(),
                    info,
                    tags
                ])?;
                // The stream's top and its trim are written once per channel per batch.
                tops.insert(channel.clone(), (offset, retention.size));
                streams.insert(channel.clone(), (epoch.clone(), offset));
                Ok(StreamPosition { offset, epoch })
            })();
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
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::null_payload;

    fn publication(n: u64) -> Publication {
        Publication {
            data: Arc::from(RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap()),
            info: None,
            offset: 0,
            tags: HashMap::new(),
        }
    }

    const RETENTION: Retention = Retention {
        size: 100,
        ttl: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn survives_reopen_with_offsets_and_epoch() {
        let dir = tempdir();
        let epoch;
        {
            let h = SqliteHistory::open(&dir, Durability::Full).unwrap();
            for n in 1..=3 {
                let p = h
                    .append("c", publication(n), RETENTION, Box::new(|_| {}))
                    .await
                    .unwrap();
                assert_eq!(p.offset, n);
            }
            epoch = h
                .read("c", HistoryFilter::default())
                .await
                .unwrap()
                .position
                .epoch;
        }
        let h = SqliteHistory::open(&dir, Durability::Full).unwrap();
        let page = h.read("c", HistoryFilter::default()).await.unwrap();
        assert_eq!(page.position.epoch, epoch);
        assert_eq!(page.position.offset, 3);
        let data: Vec<&str> = page.publications.iter().map(|p| p.data.get()).collect();
        assert_eq!(data, vec!["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
        let next = h
            .append("c", publication(4), RETENTION, Box::new(|_| {}))
            .await
            .unwrap();
        assert_eq!((next.offset, next.epoch), (4, epoch));
        let _ = null_payload();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn size_retention_and_removal_keep_the_position() {
        let dir = tempdir();
        let h = SqliteHistory::open(&dir, Durability::Normal).unwrap();
        let small = Retention {
            size: 2,
            ttl: Duration::from_secs(60),
        };
        for n in 1..=5 {
            h.append("c", publication(n), small, Box::new(|_| {}))
                .await
                .unwrap();
        }
        let page = h.read("c", HistoryFilter::default()).await.unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![4, 5]);
        h.remove("c").await.unwrap();
        let page = h.read("c", HistoryFilter::default()).await.unwrap();
        assert!(page.publications.is_empty());
        assert_eq!(page.position.offset, 5);
        drop(h);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn callbacks_run_in_offset_order_before_the_ack() {
        let dir = tempdir();
        let h = Arc::new(SqliteHistory::open(&dir, Durability::Normal).unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..200 {
            let h = h.clone();
            let seen = seen.clone();
            tasks.push(tokio::spawn(async move {
                let s = seen.clone();
                let pos = h
                    .append(
                        "c",
                        publication(n),
                        RETENTION,
                        Box::new(move |p| s.lock().unwrap().push(p.offset)),
                    )
                    .await
                    .unwrap();
                assert!(seen.lock().unwrap().contains(&pos.offset));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, (1..=200).collect::<Vec<u64>>());
        drop(h);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_stream_has_its_epoch_from_the_first_read() {
        let dir = tempdir();
        let h = SqliteHistory::open(&dir, Durability::Normal).unwrap();
        let first = h.read("new", HistoryFilter::default()).await.unwrap();
        assert!(first.publications.is_empty());
        assert_eq!(first.position.offset, 0);
        assert!(
            !first.position.epoch.is_empty(),
            "a read stream has an epoch"
        );
        let again = h.read("new", HistoryFilter::default()).await.unwrap();
        assert_eq!(
            again.position, first.position,
            "the epoch is kept, not redrawn"
        );
        let appended = h
            .append("new", publication(1), RETENTION, Box::new(|_| {}))
            .await
            .unwrap();
        assert_eq!(
            appended,
            StreamPosition {
                offset: 1,
                epoch: first.position.epoch.clone()
            }
        );
        // A position in another epoch of a stream that did not exist is still unrecoverable.
        let since_elsewhere = HistoryFilter {
            since: Some(StreamPosition {
                offset: 1,
                epoch: "elsewhere".into(),
            }),
            ..Default::default()
        };
        assert!(matches!(
            h.read("other", since_elsewhere).await,
            Err(HistoryError::UnrecoverablePosition)
        ));
        drop(h);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchboard-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

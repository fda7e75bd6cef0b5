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
//!
//! Idempotency keys live in a table of the same file: the writer checks and records a key in the
//! transaction that appends its publication, so a key is remembered exactly when its publication
//! is stored, across restarts too; it deletes expired keys with expired publications.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::history::{
    Appending, AppendingOnce, History, HistoryError, HistoryFilter, HistoryPage, OnStored,
    Retention, Updating,
};
use super::idempotency::{IdempotencyKey, Idempotent};
use super::map::{Deliver, MapUpdate, StatePage};
use crate::config::Durability;
use crate::protocol::{Publication, StreamPosition};

mod map;
mod read;
mod writer;

use read::read;
use writer::Writer;

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

pub(super) enum WriteRequest {
    Append {
        channel: String,
        publication: Publication,
        retention: Retention,
        on_stored: OnStored,
        reply: oneshot::Sender<Result<StreamPosition, HistoryError>>,
    },
    /// An append (or, without a retention, only a delivery) once per idempotency key.
    AppendOnce {
        channel: String,
        publication: Publication,
        retention: Option<Retention>,
        key: IdempotencyKey,
        on_stored: OnStored,
        reply: oneshot::Sender<Result<Idempotent, HistoryError>>,
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
    /// Changes a map's state and appends the change, in one transaction.
    MapUpdate {
        channel: String,
        publication: Publication,
        update: MapUpdate,
        on_stored: OnStored,
        reply: oneshot::Sender<map::Outcome>,
    },
    /// Removes a batch of expired map keys, appending and delivering their removals.
    MapExpire {
        deliver: Deliver,
        reply: oneshot::Sender<Result<usize, HistoryError>>,
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
             CREATE INDEX IF NOT EXISTS publications_expiry ON publications (expires_at);
             CREATE TABLE IF NOT EXISTS idempotency_keys (
                 channel TEXT NOT NULL,
                 key TEXT NOT NULL,
                 expires_at INTEGER NOT NULL,
                 offset INTEGER,
                 epoch TEXT,
                 PRIMARY KEY (channel, key)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS idempotency_keys_expiry
                 ON idempotency_keys (expires_at);",
        )
        .map_err(storage)?;
        map::create_schema(&conn).map_err(storage)?;
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
        let channel = channel.to_string();
        self.on_reader(move |conn| read(conn, &channel, &filter))
            .await
    }

    /// Reads a page of `channel`'s map state; `None` if its stream does not exist.
    async fn read_state(
        &self,
        channel: &str,
        after: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<Option<StatePage>, HistoryError> {
        let channel = channel.to_string();
        let after = after.to_string();
        self.on_reader(move |conn| map::read_state(conn, &channel, (&after, inclusive), limit))
            .await
    }

    /// Runs `reading` on a pooled read connection, on the blocking pool.
    async fn on_reader<T: Send + 'static>(
        &self,
        reading: impl FnOnce(&Connection) -> Result<T, HistoryError> + Send + 'static,
    ) -> Result<T, HistoryError> {
        let path = self.path.clone();
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .map_or_else(|| open_connection(&path), Ok)
                .map_err(storage)?;
            let result = reading(&conn);
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

    fn append_once(
        &self,
        channel: &str,
        publication: Publication,
        retention: Option<Retention>,
        key: IdempotencyKey,
        on_stored: OnStored,
    ) -> AppendingOnce {
        let (reply, result) = oneshot::channel();
        // Queued now, like `append`: the key's check happens in stream order.
        let sent = self.send(WriteRequest::AppendOnce {
            channel: channel.to_string(),
            publication,
            retention,
            key,
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

    fn map_update(
        &self,
        channel: &str,
        publication: Publication,
        update: MapUpdate,
        on_stored: OnStored,
    ) -> Updating {
        let (reply, result) = oneshot::channel();
        // Queued now, like `append`: the order of calls is the order of the stream.
        let sent = self.send(WriteRequest::MapUpdate {
            channel: channel.to_string(),
            publication,
            update,
            on_stored,
            reply,
        });
        Box::pin(async move {
            sent?;
            result.await.map_err(writer_stopped)?
        })
    }

    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<StatePage, HistoryError> {
        if let Some(page) = self.read_state(channel, after, inclusive, limit).await? {
            return Ok(page);
        }
        // As for `read`: the position a reader gets names an epoch.
        self.ask(|reply| WriteRequest::Create {
            channel: channel.to_string(),
            reply,
        })
        .await?;
        self.read_state(channel, after, inclusive, limit)
            .await?
            .ok_or_else(|| HistoryError::Storage("stream missing after its creation".into()))
    }

    async fn map_expire(&self, deliver: Deliver) -> Result<usize, HistoryError> {
        self.ask(|reply| WriteRequest::MapExpire { deliver, reply })
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

pub(super) fn storage(e: rusqlite::Error) -> HistoryError {
    HistoryError::Storage(e.to_string())
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::null_payload;
    use serde_json::value::RawValue;

    fn publication(n: u64) -> Publication {
        Publication::new(Arc::from(
            RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        ))
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
    async fn binary_payloads_and_json_strings_stay_apart() {
        let dir = tempdir();
        let h = SqliteHistory::open(&dir, Durability::Normal).unwrap();
        let binary = Publication {
            binary: true,
            ..Publication::new(crate::protocol::binary_payload(&[0, 255, 7]))
        };
        // The same JSON text, published as a JSON string: not binary.
        let string = Publication::new(binary.data.clone());
        for p in [binary, string] {
            h.append("c", p, RETENTION, Box::new(|_| {})).await.unwrap();
        }
        let page = h.read("c", HistoryFilter::default()).await.unwrap();
        let read: Vec<(bool, Vec<u8>)> = page
            .publications
            .iter()
            .map(|p| (p.binary, p.data_bytes().to_vec()))
            .collect();
        assert_eq!(read[0], (true, vec![0, 255, 7]));
        assert_eq!(read[1], (false, br#""AP8H""#.to_vec()));
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

    #[tokio::test]
    async fn idempotency_keys_survive_reopen_and_repeat_within_one_batch() {
        let dir = tempdir();
        let key = |k: &str| IdempotencyKey {
            key: k.into(),
            window: Duration::from_secs(60),
        };
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let counting = || -> OnStored {
            let delivered = delivered.clone();
            Box::new(move |p| delivered.lock().unwrap().push(p.offset))
        };
        let first;
        {
            let h = SqliteHistory::open(&dir, Durability::Normal).unwrap();
            // Both queued before either is answered: the writer may well take them in one
            // transaction, where the second must see the first's uncommitted key.
            let a = h.append_once("c", publication(1), Some(RETENTION), key("k"), counting());
            let b = h.append_once("c", publication(2), Some(RETENTION), key("k"), counting());
            let (a, b) = (a.await.unwrap(), b.await.unwrap());
            let Idempotent::Published(Some(position)) = a else {
                panic!("first publish: {a:?}");
            };
            assert_eq!(b, Idempotent::Repeated(Some(position.clone())));
            first = position;
            let live = h.append_once("d", publication(3), None, key("k"), counting());
            assert_eq!(live.await.unwrap(), Idempotent::Published(None));
        }
        let h = SqliteHistory::open(&dir, Durability::Normal).unwrap();
        let again = h.append_once("c", publication(4), Some(RETENTION), key("k"), counting());
        assert_eq!(again.await.unwrap(), Idempotent::Repeated(Some(first)));
        let live = h.append_once("d", publication(5), Some(RETENTION), key("k"), counting());
        assert_eq!(live.await.unwrap(), Idempotent::Repeated(None));
        assert_eq!(*delivered.lock().unwrap(), vec![1, 0]);
        let page = h.read("c", HistoryFilter::default()).await.unwrap();
        assert_eq!(page.publications.len(), 1);
        // A short window ends: the key publishes again.
        let brief = IdempotencyKey {
            key: "brief".into(),
            window: Duration::from_millis(50),
        };
        let once = || {
            h.append_once(
                "c",
                publication(6),
                Some(RETENTION),
                brief.clone(),
                counting(),
            )
        };
        assert!(matches!(once().await.unwrap(), Idempotent::Published(_)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(once().await.unwrap(), Idempotent::Published(_)));
        drop(h);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchboard-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

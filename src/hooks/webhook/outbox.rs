//! The webhook outbox: events waiting for delivery, and the connections, subscriptions and
//! occupied channels this node holds, in `<data_dir>/webhooks.sqlite3`.
//!
//! One dedicated thread owns the database (SQLite calls block; none runs on the async workers).
//! Event sinks hand it [`Record`]s through an unbounded channel, which never blocks them; it
//! commits everything waiting in one transaction, then wakes the lanes that got events. Lanes
//! ask it for their oldest events and acknowledge them once delivered, which deletes them.
//!
//! What the node holds is kept beside the events so that nobody vanishes silently: a node killed
//! with connections open leaves them in the tables, and the next start from the same data
//! directory queues their `unsubscribe` and `disconnect` (code [`NODE_LOST`]) events and the
//! `channel_vacated` of the channels they occupied.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use super::{Kind, Record, WebhookError};
use crate::metrics::Metrics;
use crate::protocol::{binary_base64, Payload};

/// The disconnect code of connections whose node was lost (killed, or gone without closing
/// them): their events are queued when the node's data is next opened.
pub const NODE_LOST: u32 = 3099;

/// Commands the outbox thread takes, handled in the order sent.
pub(super) enum Command {
    Record(Record),
    /// The oldest events of `lane`, at most `limit`.
    Fetch {
        lane: u32,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Stored>, String>>,
    },
    /// The events of `lane` up to `upto` are delivered (or given up): delete them.
    Ack {
        lane: u32,
        upto: i64,
    },
    /// Answers once everything sent before is committed.
    Flush(oneshot::Sender<()>),
}

/// One queued event: its row id (the order of the outbox) and its JSON object.
pub(super) struct Stored {
    pub id: i64,
    pub body: String,
}

/// A handle on the outbox thread.
pub(super) struct Outbox {
    sender: mpsc::Sender<Command>,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `data_dir`, queues the events of connections a
    /// previous run left behind, and starts the thread; `track`: this node's connections are
    /// tracked here. `lanes` wakers, one per lane. Returns the handle and how many connections
    /// were found left behind.
    pub fn open(
        data_dir: &Path,
        track: bool,
        lanes: Arc<[Notify]>,
        sends: impl Fn(Kind) -> bool + Send + 'static,
        metrics: Arc<Metrics>,
    ) -> Result<(Outbox, usize), WebhookError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| WebhookError::Storage(format!("{}: {e}", data_dir.display())))?;
        let mut conn = Connection::open(data_dir.join("webhooks.sqlite3"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS events (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 key_hash INTEGER NOT NULL,
                 lane INTEGER NOT NULL,
                 body TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS events_by_lane ON events (lane, id);
             CREATE TABLE IF NOT EXISTS connections (
                 client TEXT PRIMARY KEY,
                 user TEXT NOT NULL,
                 connected_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS subscriptions (
                 client TEXT NOT NULL,
                 channel TEXT NOT NULL,
                 PRIMARY KEY (client, channel));
             CREATE TABLE IF NOT EXISTS channels (channel TEXT PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        let lane_count = u32::try_from(lanes.len()).unwrap_or(u32::MAX).max(1);
        let mut state = State {
            lanes: lane_count,
            sends: Box::new(sends),
            woken: vec![false; lanes.len()],
            queued: 0,
            track,
        };
        let tx = conn.transaction()?;
        spread_over_lanes(&tx, lane_count)?;
        let lost = state.recover(&tx)?;
        tx.commit()?;
        let pending: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
        metrics
            .webhooks
            .pending
            .store(pending.max(0) as u64, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel();
        thread::Builder::new()
            .name("webhook-outbox".into())
            .spawn(move || run(conn, receiver, state, lanes, metrics))
            .map_err(|e| WebhookError::Storage(format!("cannot start the outbox thread: {e}")))?;
        Ok((Outbox { sender }, lost))
    }

    /// Queues a record; never blocks.
    pub fn record(&self, record: Record) {
        // The thread lives as long as any sender: a send fails only if it died, logged there.
        let _ = self.sender.send(Command::Record(record));
    }

    pub async fn fetch(&self, lane: u32, limit: usize) -> Result<Vec<Stored>, String> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Command::Fetch { lane, limit, reply })
            .map_err(|_| "the outbox thread stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the outbox thread stopped".to_string())?
    }

    pub fn ack(&self, lane: u32, upto: i64) {
        let _ = self.sender.send(Command::Ack { lane, upto });
    }

    /// Waits until every record queued before is committed.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.sender.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// What the thread keeps besides its connection.
struct State {
    lanes: u32,
    /// Whether an event type is sent (the others are only tracked).
    sends: Box<dyn Fn(Kind) -> bool + Send>,
    /// Lanes given new events in the transaction being written.
    woken: Vec<bool>,
    /// Events queued in the transaction being written.
    queued: u64,
    /// This node's connections, subscriptions and channels are tracked here (one node); with
    /// Redis they are tracked there instead (see `cluster`).
    track: bool,
}

/// The JSON of one event, as the backend receives it.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    time_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Payload>,
    /// Bytes that are not JSON, in base64 (as Centrifugo's proxy sends them), in place of `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<&'a str>,
}

impl Body<'_> {
    fn new(kind: Kind, time_ms: u64) -> Body<'static> {
        Body {
            kind: kind.name(),
            id: uuid::Uuid::new_v4().to_string(),
            time_ms,
            user: None,
            client: None,
            channel: None,
            code: None,
            reason: None,
            duration_ms: None,
            offset: None,
            data: None,
            b64data: None,
        }
    }
}

impl State {
    /// Applies one record to the tracking tables (when tracking here) and queues its event if
    /// that type is sent.
    fn apply(&mut self, tx: &Transaction<'_>, record: &Record) -> rusqlite::Result<()> {
        let client = record.client.as_deref();
        let channel = record.channel.as_deref();
        let mut body = Body::new(record.kind, record.time_ms);
        body.user = record.user.as_deref();
        body.client = client;
        body.channel = channel;
        let connected_ms = if self.track { track(tx, record)? } else { None };
        match record.kind {
            Kind::Disconnect => {
                body.code = Some(record.code);
                body.reason = Some(&record.reason);
                body.duration_ms = record
                    .duration_ms
                    .or(connected_ms.map(|at| record.time_ms.saturating_sub(at)));
            }
            Kind::Publication => {
                body.offset = Some(record.offset);
                match &record.data {
                    Some(data) if record.binary => body.b64data = Some(binary_base64(data)),
                    data => body.data = data.as_ref(),
                }
            }
            _ => {}
        }
        if (self.sends)(record.kind) {
            self.queue(tx, client.or(channel).unwrap_or(""), &body)?;
        }
        Ok(())
    }

    /// Appends one event to the lane of `key` (its connection, or its channel).
    fn queue(&mut self, tx: &Transaction<'_>, key: &str, body: &Body<'_>) -> rusqlite::Result<()> {
        let hash = key_hash(key);
        let lane = hash % self.lanes;
        let json = serde_json::to_string(body).unwrap_or_default();
        tx.execute(
            "INSERT INTO events (key_hash, lane, body) VALUES (?1, ?2, ?3)",
            params![hash, lane, json],
        )?;
        self.woken[lane as usize] = true;
        self.queued += 1;
        Ok(())
    }

    /// Queues the events of the connections and channels a previous run left behind, and
    /// forgets them. Returns how many connections there were.
    fn recover(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<usize> {
        let now = super::now_ms();
        let connections: Vec<(String, String, u64)> = tx
            .prepare("SELECT client, user, connected_ms FROM connections ORDER BY rowid")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (client, user, connected_ms) in &connections {
            let channels: Vec<String> = tx
                .prepare("SELECT channel FROM subscriptions WHERE client = ?1 ORDER BY rowid")?
                .query_map([client], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for channel in &channels {
                if (self.sends)(Kind::Unsubscribe) {
                    let mut body = Body::new(Kind::Unsubscribe, now);
                    body.user = Some(user);
                    body.client = Some(client);
                    body.channel = Some(channel);
                    self.queue(tx, client, &body)?;
                }
            }
            if (self.sends)(Kind::Disconnect) {
                let mut body = Body::new(Kind::Disconnect, now);
                body.user = Some(user);
                body.client = Some(client);
                body.code = Some(NODE_LOST);
                body.reason = Some("node lost");
                body.duration_ms = Some(now.saturating_sub(*connected_ms));
                self.queue(tx, client, &body)?;
            }
        }
        let channels: Vec<String> = tx
            .prepare("SELECT channel FROM channels ORDER BY rowid")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if (self.sends)(Kind::ChannelVacated) {
            for channel in &channels {
                let mut body = Body::new(Kind::ChannelVacated, now);
                body.channel = Some(channel);
                self.queue(tx, channel, &body)?;
            }
        }
        tx.execute_batch(
            "DELETE FROM connections; DELETE FROM subscriptions; DELETE FROM channels;",
        )?;
        Ok(connections.len())
    }
}

/// Records what `record` changes of the node's connections, subscriptions and channels; for a
/// disconnect, returns when the connection was made.
fn track(tx: &Transaction<'_>, record: &Record) -> rusqlite::Result<Option<u64>> {
    let client = record.client.as_deref();
    let channel = record.channel.as_deref();
    match record.kind {
        Kind::Connect => {
            tx.execute(
                "INSERT OR REPLACE INTO connections (client, user, connected_ms)
                 VALUES (?1, ?2, ?3)",
                params![client, record.user.as_deref().unwrap_or(""), record.time_ms],
            )?;
        }
        Kind::Disconnect => {
            let connected = tx
                .query_row(
                    "DELETE FROM connections WHERE client = ?1 RETURNING connected_ms",
                    [client],
                    |r| r.get(0),
                )
                .optional()?;
            tx.execute("DELETE FROM subscriptions WHERE client = ?1", [client])?;
            return Ok(connected);
        }
        Kind::Subscribe => {
            tx.execute(
                "INSERT OR IGNORE INTO subscriptions (client, channel) VALUES (?1, ?2)",
                params![client, channel],
            )?;
        }
        Kind::Unsubscribe => {
            tx.execute(
                "DELETE FROM subscriptions WHERE client = ?1 AND channel = ?2",
                params![client, channel],
            )?;
        }
        Kind::ChannelOccupied => {
            tx.execute(
                "INSERT OR IGNORE INTO channels (channel) VALUES (?1)",
                [channel],
            )?;
        }
        Kind::ChannelVacated => {
            tx.execute("DELETE FROM channels WHERE channel = ?1", [channel])?;
        }
        Kind::Publication => {}
    }
    Ok(None)
}

/// Re-spreads queued events when the number of lanes changed since they were queued (each key
/// still lands on one lane, so its events keep their order).
fn spread_over_lanes(tx: &Transaction<'_>, lanes: u32) -> rusqlite::Result<()> {
    let before: Option<u32> = tx
        .query_row("SELECT value FROM settings WHERE name = 'lanes'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if before != Some(lanes) {
        tx.execute("UPDATE events SET lane = key_hash % ?1", [lanes])?;
        tx.execute(
            "INSERT OR REPLACE INTO settings (name, value) VALUES ('lanes', ?1)",
            [lanes],
        )?;
    }
    Ok(())
}

/// A stable hash of a lane key (FNV-1a, 32 bits): the same on every run and every build.
fn key_hash(key: &str) -> u32 {
    key.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Most commands taken into one transaction.
const BATCH: usize = 4096;

/// The outbox thread: takes every command waiting, writes records in one transaction, answers
/// fetches and acknowledgements after committing what came before them.
fn run(
    mut conn: Connection,
    receiver: mpsc::Receiver<Command>,
    mut state: State,
    lanes: Arc<[Notify]>,
    metrics: Arc<Metrics>,
) {
    let pending = &metrics.webhooks.pending;
    while let Ok(first) = receiver.recv() {
        let mut commands = vec![first];
        commands.extend(receiver.try_iter().take(BATCH));
        let mut records = Vec::new();
        for command in commands {
            match command {
                Command::Record(record) => records.push(record),
                other => {
                    write(&mut conn, &mut state, &mut records, pending);
                    serve(&conn, other, pending);
                }
            }
        }
        write(&mut conn, &mut state, &mut records, pending);
        for (lane, woken) in state.woken.iter_mut().enumerate() {
            if std::mem::take(woken) {
                lanes[lane].notify_one();
            }
        }
    }
}

/// Commits `records` (emptying it).
fn write(conn: &mut Connection, state: &mut State, records: &mut Vec<Record>, pending: &AtomicU64) {
    if records.is_empty() {
        return;
    }
    state.queued = 0;
    let result = (|| {
        let tx = conn.transaction()?;
        for record in records.iter() {
            state.apply(&tx, record)?;
        }
        tx.commit()
    })();
    match result {
        Ok(()) => {
            pending.fetch_add(state.queued, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                records = records.len(),
                "webhook outbox write failed: these events are lost"
            );
        }
    }
    records.clear();
}

/// Answers a fetch, an acknowledgement or a flush.
fn serve(conn: &Connection, command: Command, pending: &AtomicU64) {
    match command {
        Command::Fetch { lane, limit, reply } => {
            let rows = (|| {
                conn.prepare_cached(
                    "SELECT id, body FROM events WHERE lane = ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map(params![lane, limit as i64], |r| {
                    Ok(Stored {
                        id: r.get(0)?,
                        body: r.get(1)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })();
            let _ = reply.send(rows.map_err(|e| e.to_string()));
        }
        Command::Ack { lane, upto } => {
            match conn.execute(
                "DELETE FROM events WHERE lane = ?1 AND id <= ?2",
                params![lane, upto],
            ) {
                Ok(deleted) => {
                    let _ = pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(deleted as u64))
                    });
                }
                Err(e) => tracing::error!(error = %e, lane, "webhook outbox delete failed"),
            }
        }
        Command::Flush(done) => {
            let _ = done.send(());
        }
        // Records are written, never served.
        Command::Record(_) => {}
    }
}

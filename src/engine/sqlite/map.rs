//! Map channels in SQLite (see [`crate::engine::map`]): the state is a table beside the
//! streams. The writer thread changes a key and appends the change to the stream in the same
//! transaction; readers read a state page and the stream's position in one read transaction.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::read::{decode_row, stream_position};
use super::writer::insert;
use super::{now_ms, storage};
use crate::engine::history::{HistoryError, Retention};
use crate::engine::map::{removal, MapUpdate, StatePage, EXPIRY_BATCH};
use crate::protocol::{Publication, StreamPosition};

/// Creates the state table, and the stream columns maps need in a file made before them.
pub(super) fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS map_state (
             channel TEXT NOT NULL,
             key TEXT NOT NULL,
             offset INTEGER NOT NULL,
             data TEXT NOT NULL,
             info TEXT,
             tags TEXT,
             expires_at INTEGER,
             stream_size INTEGER NOT NULL,
             stream_ttl_ms INTEGER NOT NULL,
             PRIMARY KEY (channel, key)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS map_state_expiry ON map_state (expires_at)
             WHERE expires_at IS NOT NULL;",
    )?;
    let mut columns = Vec::new();
    let mut statement = conn.prepare("PRAGMA table_info(publications)")?;
    for name in statement.query_map([], |row| row.get::<_, String>(1))? {
        columns.push(name?);
    }
    if !columns.iter().any(|c| c == "key") {
        conn.execute_batch(
            "ALTER TABLE publications ADD COLUMN key TEXT;
             ALTER TABLE publications ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    Ok(())
}

/// What a map update did: its position, `None` if nothing changed, or a refusal.
pub(super) type Outcome = Result<Option<StreamPosition>, HistoryError>;

/// Applies one map update in the writer's transaction. A refusal (too many keys) is an
/// outcome, not a failure of the batch.
pub(super) fn update(
    tx: &Transaction<'_>,
    streams: &mut HashMap<String, (String, u64)>,
    tops: &mut HashMap<String, (u64, usize)>,
    channel: &str,
    publication: &mut Publication,
    update: MapUpdate,
) -> rusqlite::Result<Outcome> {
    let exists = tx
        .prepare_cached("SELECT 1 FROM map_state WHERE channel = ?1 AND key = ?2")?
        .query_row(params![channel, publication.key], |_| Ok(()))
        .optional()?
        .is_some();
    if publication.removed {
        if !exists {
            return Ok(Ok(None));
        }
        tx.prepare_cached("DELETE FROM map_state WHERE channel = ?1 AND key = ?2")?
            .execute(params![channel, publication.key])?;
        let position = insert(tx, streams, tops, channel, publication, update.stream)?;
        return Ok(Ok(Some(position)));
    }
    if exists && update.keep_alive {
        let expires_at = update
            .key_ttl
            .map(|ttl| now_ms().saturating_add(ttl.as_millis() as i64));
        tx.prepare_cached("UPDATE map_state SET expires_at = ?3 WHERE channel = ?1 AND key = ?2")?
            .execute(params![channel, publication.key, expires_at])?;
        return Ok(Ok(None));
    }
    if !exists {
        let count: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM map_state WHERE channel = ?1")?
            .query_row([channel], |row| row.get(0))?;
        if count as usize >= update.max_keys {
            return Ok(Err(HistoryError::TooManyKeys));
        }
    }
    let position = insert(tx, streams, tops, channel, publication, update.stream)?;
    let info = publication
        .info
        .as_ref()
        .map(|i| serde_json::to_string(i).unwrap_or_default());
    let tags = (!publication.tags.is_empty())
        .then(|| serde_json::to_string(&publication.tags).unwrap_or_default());
    let expires_at = update
        .key_ttl
        .map(|ttl| now_ms().saturating_add(ttl.as_millis() as i64));
    tx.prepare_cached(
        "INSERT OR REPLACE INTO map_state
           (channel, key, offset, data, info, tags, expires_at, stream_size, stream_ttl_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        channel,
        publication.key,
        position.offset as i64,
        publication.data.get(),
        info,
        tags,
        expires_at,
        update.stream.size as i64,
        update.stream.ttl.as_millis() as i64,
    ])?;
    Ok(Ok(Some(position)))
}

/// Removes a batch of expired keys in the writer's transaction, appending their removals;
/// returns them (channel, stored removal) in stream order.
pub(super) fn expire(
    tx: &Transaction<'_>,
    streams: &mut HashMap<String, (String, u64)>,
    tops: &mut HashMap<String, (u64, usize)>,
) -> rusqlite::Result<Vec<(String, Arc<Publication>)>> {
    let expired: Vec<(String, String, i64, i64)> = tx
        .prepare_cached(
            "SELECT channel, key, stream_size, stream_ttl_ms FROM map_state
             WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2",
        )?
        .query_map(params![now_ms(), EXPIRY_BATCH as i64], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut removed = Vec::with_capacity(expired.len());
    for (channel, key, size, ttl_ms) in expired {
        tx.prepare_cached("DELETE FROM map_state WHERE channel = ?1 AND key = ?2")?
            .execute(params![channel, key])?;
        let retention = Retention {
            size: size.max(1) as usize,
            ttl: std::time::Duration::from_millis(ttl_ms.max(1) as u64),
        };
        let mut publication = removal(&key);
        insert(tx, streams, tops, &channel, &mut publication, retention)?;
        removed.push((channel, Arc::new(publication)));
    }
    Ok(removed)
}

/// Reads a state page on a read connection; `None` if the channel's stream does not exist yet.
pub(super) fn read_state(
    conn: &Connection,
    channel: &str,
    (after, inclusive): (&str, bool),
    limit: usize,
) -> Result<Option<StatePage>, HistoryError> {
    // One read transaction, so the position and the entries agree.
    let tx = conn.unchecked_transaction().map_err(storage)?;
    let Some(position) = stream_position(&tx, channel)? else {
        return Ok(None);
    };
    let num_keys: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM map_state WHERE channel = ?1",
            [channel],
            |row| row.get(0),
        )
        .map_err(storage)?;
    let sql = if inclusive {
        "SELECT key, offset, data, info, tags FROM map_state
         WHERE channel = ?1 AND key >= ?2 AND (expires_at IS NULL OR expires_at > ?3)
         ORDER BY key LIMIT ?4"
    } else {
        "SELECT key, offset, data, info, tags FROM map_state
         WHERE channel = ?1 AND key > ?2 AND (expires_at IS NULL OR expires_at > ?3)
         ORDER BY key LIMIT ?4"
    };
    let mut statement = tx.prepare_cached(sql).map_err(storage)?;
    let rows = statement
        .query_map(
            params![channel, after, now_ms(), (limit as i64).saturating_add(1)],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .map_err(storage)?;
    let mut entries = Vec::new();
    let mut more = false;
    for row in rows {
        let (key, offset, data, info, tags) = row.map_err(storage)?;
        if entries.len() == limit {
            more = true;
            break;
        }
        let mut publication = decode_row(offset, data, info, tags, None, false)?;
        publication.key = key;
        entries.push(Arc::new(publication));
    }
    let cursor = match (more, entries.last()) {
        (true, Some(last)) => last.key.clone(),
        _ => String::new(),
    };
    Ok(Some(StatePage {
        entries,
        cursor,
        position,
        num_keys: num_keys as u64,
    }))
}

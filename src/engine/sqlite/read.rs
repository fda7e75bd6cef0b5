//! Reading a stream page on a read connection (run on the blocking pool).

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;

use super::{now_ms, storage};
use crate::engine::history::{HistoryError, HistoryFilter, HistoryPage, PageBudget};
use crate::protocol::{ClientInfo, Publication, StreamPosition};

/// Reads a page of `channel`'s stream on a read connection; `None` if the stream does not exist.
pub(super) fn read(
    conn: &Connection,
    channel: &str,
    filter: &HistoryFilter,
) -> Result<Option<HistoryPage>, HistoryError> {
    // One read transaction, so the position and the rows agree.
    let tx = conn.unchecked_transaction().map_err(storage)?;
    let Some(position) = stream_position(&tx, channel)? else {
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
        "SELECT offset, data, info, tags, key, removed FROM publications
         WHERE channel = ?1 AND offset > ?2 AND expires_at > ?3 ORDER BY offset DESC LIMIT ?4"
    } else {
        "SELECT offset, data, info, tags, key, removed FROM publications
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
                row.get::<_, Option<String>>(4)?,
                row.get::<_, bool>(5)?,
            ))
        })
        .map_err(storage)?;
    let mut publications = Vec::new();
    let mut budget = PageBudget::new(filter);
    for row in rows {
        let (offset, data, info, tags, key, removed) = row.map_err(storage)?;
        budget.take(
            data.len()
                + info.as_ref().map_or(0, String::len)
                + tags.as_ref().map_or(0, String::len),
        )?;
        publications.push(Arc::new(decode_row(
            offset, data, info, tags, key, removed,
        )?));
    }
    Ok(Some(HistoryPage {
        publications,
        position,
    }))
}

/// A publication from its stored columns (`key` and `removed` for map channels).
/// The position (epoch and top offset) of `channel`'s stream; `None` if it does not exist.
pub(super) fn stream_position(
    conn: &Connection,
    channel: &str,
) -> Result<Option<StreamPosition>, HistoryError> {
    conn.query_row(
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
    .map_err(storage)
}

pub(super) fn decode_row(
    offset: i64,
    data: String,
    info: Option<String>,
    tags: Option<String>,
    key: Option<String>,
    removed: bool,
) -> Result<Publication, HistoryError> {
    let corrupt = |e: serde_json::Error| HistoryError::Storage(format!("corrupt row: {e}"));
    // A binary payload is stored as `#` and its base64 (see `writer::stored_data`): no JSON
    // value starts with `#`.
    let (data, binary) = match data.strip_prefix(BINARY_MARK) {
        Some(base64) => (format!("\"{base64}\""), true),
        None => (data, false),
    };
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
        key: key.unwrap_or_default(),
        removed,
        binary,
    })
}

/// What starts the stored `data` of a binary payload.
pub(super) const BINARY_MARK: char = '#';

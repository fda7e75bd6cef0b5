//! The server API of map channels: `map_publish`, `map_remove`, `map_read_state`,
//! `map_read_stream`, `map_stats`, `map_clear` (Centrifugo's names and answers). A channel that
//! is not a map channel is error 107, as in Centrifugo.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::api::{raw, RawResult, MAX_ANSWER_BYTES};
use crate::engine::history::HistoryFilter;
use crate::node::{check_channel, Node};
use crate::protocol::{payload_from_raw, Publication, StreamPosition};

/// One parsed map method.
pub enum MapCall {
    Publish(MapPublishRequest),
    Remove(MapKeyRequest),
    ReadState(MapReadStateRequest),
    ReadStream(MapReadStreamRequest),
    Stats(MapChannelRequest),
    Clear(MapChannelRequest),
}

impl MapCall {
    /// The API method's name.
    pub fn method(&self) -> &'static str {
        match self {
            MapCall::Publish(_) => "map_publish",
            MapCall::Remove(_) => "map_remove",
            MapCall::ReadState(_) => "map_read_state",
            MapCall::ReadStream(_) => "map_read_stream",
            MapCall::Stats(_) => "map_stats",
            MapCall::Clear(_) => "map_clear",
        }
    }
}

/// The body of `map_publish`.
#[derive(Deserialize)]
pub struct MapPublishRequest {
    channel: String,
    key: String,
    data: Box<RawValue>,
    #[serde(default)]
    tags: HashMap<String, String>,
}

/// The body of `map_remove`.
#[derive(Deserialize)]
pub struct MapKeyRequest {
    channel: String,
    key: String,
}

/// The body of `map_read_state`: a page after `cursor` (or the one entry `key`).
#[derive(Deserialize)]
pub struct MapReadStateRequest {
    channel: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    limit: i32,
    #[serde(default)]
    key: String,
}

/// The body of `map_read_stream`.
#[derive(Deserialize)]
pub struct MapReadStreamRequest {
    channel: String,
    #[serde(default)]
    limit: i32,
    #[serde(default)]
    since_offset: u64,
    #[serde(default)]
    since_epoch: String,
    #[serde(default)]
    reverse: bool,
}

/// The body of `map_stats` and `map_clear`.
#[derive(Deserialize)]
pub struct MapChannelRequest {
    channel: String,
}

/// An entry as the map API shows it.
#[derive(Serialize)]
struct Entry<'a> {
    key: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    tags: &'a HashMap<String, String>,
    offset: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    removed: bool,
}

fn entries(publications: &[std::sync::Arc<Publication>]) -> Vec<Entry<'_>> {
    publications
        .iter()
        .map(|p| Entry {
            key: &p.key,
            data: &p.data,
            tags: &p.tags,
            offset: p.offset,
            removed: p.removed,
        })
        .collect()
}

/// Runs one map method.
pub(super) async fn dispatch(node: &Node, call: MapCall) -> RawResult {
    match call {
        MapCall::Publish(req) => {
            check_channel(&req.channel)?;
            let position = node
                .map_publish(
                    &req.channel,
                    &req.key,
                    payload_from_raw(&req.data),
                    None,
                    req.tags,
                )
                .await?;
            raw(&position)
        }
        MapCall::Remove(req) => {
            check_channel(&req.channel)?;
            match node.map_remove(&req.channel, &req.key, None).await? {
                Some(position) => raw(&position),
                // Nothing to remove: nothing was published.
                None => raw(&json!({"suppressed": true, "suppress_reason": "key_not_found"})),
            }
        }
        MapCall::ReadState(req) => {
            check_channel(&req.channel)?;
            let options = node.map_options(&req.channel)?;
            let limit = options.page_size(req.limit);
            let page = if req.key.is_empty() {
                node.map_state(&req.channel, &req.cursor, limit, MAX_ANSWER_BYTES / 2)
                    .await?
            } else {
                node.map_get(&req.channel, &req.key).await?
            };
            let publications = page.entries;
            raw(&json!({
                "entries": entries(&publications),
                "offset": page.position.offset,
                "epoch": page.position.epoch,
                "cursor": page.cursor,
            }))
        }
        MapCall::ReadStream(req) => {
            check_channel(&req.channel)?;
            let options = node.map_options(&req.channel)?;
            let since =
                (req.since_offset > 0 || !req.since_epoch.is_empty()).then(|| StreamPosition {
                    offset: req.since_offset,
                    epoch: req.since_epoch.clone(),
                });
            // A negative limit reads all that is kept, bounded by the page size.
            let limit = match req.limit {
                0 => 0,
                l => options.page_size(l),
            };
            let filter = HistoryFilter {
                max_bytes: Some(MAX_ANSWER_BYTES / 2),
                ..HistoryFilter::from_request(limit as i32, since, req.reverse)?
            };
            let page = node.history(&req.channel, filter).await?;
            raw(&json!({
                "entries": entries(&page.publications),
                "offset": page.position.offset,
                "epoch": page.position.epoch,
            }))
        }
        MapCall::Stats(req) => {
            check_channel(&req.channel)?;
            let page = node.map_state(&req.channel, "", 0, usize::MAX).await?;
            raw(&json!({ "num_keys": page.num_keys }))
        }
        MapCall::Clear(req) => {
            check_channel(&req.channel)?;
            node.map_clear(&req.channel).await?;
            raw(&json!({}))
        }
    }
}

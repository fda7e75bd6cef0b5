//! The server API's `publish` and `broadcast`: one publication to one channel, or the same to
//! several. Both take Centrifugo's optional `idempotency_key`, which acts per channel: a publish
//! repeating a key used for its channel within the configured window publishes nothing and
//! answers the first result (for `broadcast`, channel by channel).

use std::collections::HashMap;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::api::{raw, ApiError, Keyed, RawResult};
use crate::engine::idempotency::MAX_KEY_LENGTH;
use crate::node::{check_channel, Node};
use crate::protocol::{
    error_code, payload_from_bytes, payload_from_raw, Error, Payload, Publication,
};

/// The body of `publish`.
#[derive(Deserialize)]
pub struct PublishRequest {
    channel: String,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The body of `broadcast`: one publication to several channels.
#[derive(Deserialize)]
pub struct BroadcastRequest {
    channels: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// A field that is there, `null` included (a JSON payload), as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// A publication's payload, from JSON (`data`) or bytes in base64 (`b64data`, as Centrifugo's
/// API takes binary payloads, winning when both are given), and whether it is binary:
/// `b64data` bytes that are one JSON value are JSON, any others a binary payload (see
/// [`Publication::binary`]).
fn publish_payload(
    data: Option<&RawValue>,
    b64data: Option<&str>,
) -> Result<(Payload, bool), Error> {
    use base64::Engine as _;
    let bad_request = |message: &str| Error {
        message: message.into(),
        ..Error::new(error_code::BAD_REQUEST)
    };
    if let Some(b64) = b64data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad_request("b64data is not base64"))?;
        return Ok(payload_from_bytes(&bytes));
    }
    match data {
        Some(data) => Ok((payload_from_raw(data), false)),
        None => Err(bad_request("data or b64data is required")),
    }
}

/// A request that publishes: a payload and maybe an idempotency key.
pub(super) trait PublishBody {
    fn idempotency_key(&self) -> Option<&str>;
    /// Whether `data` or `b64data` is there.
    fn has_payload(&self) -> bool;
}

impl PublishBody for PublishRequest {
    fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    fn has_payload(&self) -> bool {
        self.data.is_some() || self.b64data.is_some()
    }
}

impl PublishBody for BroadcastRequest {
    fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    fn has_payload(&self) -> bool {
        self.data.is_some() || self.b64data.is_some()
    }
}

/// Refuses a body without a payload and an idempotency key longer than [`MAX_KEY_LENGTH`]
/// bytes (each a 400): every key is stored for the whole window. (A key that is not a string
/// fails to parse: a 400 too.)
pub(super) fn checked<R: PublishBody>(req: R) -> Result<R, ApiError> {
    if !req.has_payload() {
        return Err(ApiError::BadRequest("data or b64data is required".into()));
    }
    if req
        .idempotency_key()
        .is_some_and(|k| k.len() > MAX_KEY_LENGTH)
    {
        return Err(ApiError::BadRequest(format!(
            "idempotency_key is longer than {MAX_KEY_LENGTH} bytes"
        )));
    }
    Ok(req)
}

#[derive(Serialize, Default)]
struct PublishResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
}

async fn publish_one(
    node: &Node,
    channel: &str,
    (data, binary): (Payload, bool),
    tags: HashMap<String, String>,
    skip_history: bool,
    idempotency_key: Option<&str>,
) -> Result<PublishResult, Error> {
    check_channel(channel)?;
    let publication = Publication {
        tags,
        binary,
        ..Publication::new(data)
    };
    let position = node
        .publish(channel, publication, skip_history, idempotency_key)
        .await?;
    Ok(
        position.map_or_else(PublishResult::default, |p| PublishResult {
            offset: Some(p.offset),
            epoch: Some(p.epoch),
        }),
    )
}

pub(super) async fn publish(node: &Node, req: PublishRequest) -> RawResult {
    let payload = publish_payload(req.data.as_deref(), req.b64data.as_deref())?;
    let result = publish_one(
        node,
        &req.channel,
        payload,
        req.tags,
        req.skip_history,
        req.idempotency_key.as_deref(),
    )
    .await?;
    raw(&result)
}

/// Publications of one `broadcast` in flight at once.
const BROADCAST_CONCURRENCY: usize = 64;

pub(super) async fn broadcast(node: &Node, req: BroadcastRequest) -> RawResult {
    if req.channels.is_empty() {
        return Err(Error::new(error_code::BAD_REQUEST));
    }
    let payload = publish_payload(req.data.as_deref(), req.b64data.as_deref())?;
    let publishes: Vec<_> = req
        .channels
        .iter()
        .map(|channel| {
            publish_one(
                node,
                channel,
                payload.clone(),
                req.tags.clone(),
                req.skip_history,
                req.idempotency_key.as_deref(),
            )
        })
        .collect();
    // In order, at most BROADCAST_CONCURRENCY at once: a broadcast to many channels neither
    // floods the engine nor holds every publication in memory at once.
    let responses: Vec<Value> = futures_util::stream::iter(publishes)
        .buffered(BROADCAST_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| match r {
            Ok(result) => json!({ "result": result }),
            Err(error) => json!({ "error": error }),
        })
        .collect();
    raw(&Keyed("responses", responses))
}

//! The HTTP server API (`POST /api/<method>`, Centrifugo's server API), plus `/health` and
//! `/metrics`.
//!
//! Answers follow Centrifugo: `200 {"result": …}` on success, `200 {"error": {code, message}}` when
//! the method itself fails, `400` with a JSON error for a body that is not the method's JSON, `401`
//! without a valid key (checked before the body is read), `413` for a body over the limit, `404`
//! for an unknown method. Bounds: a body of 4 MiB, a `batch` of [`MAX_BATCH_COMMANDS`] commands,
//! a `channels` pattern of [`MAX_GLOB_LENGTH`] bytes, an `idempotency_key` of
//! [`MAX_KEY_LENGTH`](crate::engine::idempotency::MAX_KEY_LENGTH) bytes (each past its bound is
//! refused with a JSON error). `publish` and `broadcast` live in `publish.rs`, the map methods
//! in `map.rs`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::map::{self, MapCall};
use super::publish::{broadcast, checked, publish};
pub use super::publish::{BroadcastRequest, PublishRequest};
use super::{constant_time_eq, glob_match, json_error, API_BODY_LIMIT, MAX_GLOB_LENGTH};
use crate::engine::broker::NodeControl;
use crate::engine::history::HistoryFilter;
use crate::metrics::Metrics;
use crate::node::{check_channel, Node};
use crate::protocol::{
    error_code, payload_from_raw, ClientInfo, Disconnect, Error, Publication, StreamPosition,
};

/// Failure of an API call before its method runs.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("method not found")]
    MethodNotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request body is larger than {} bytes", API_BODY_LIMIT)]
    TooLarge,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, error_code::UNAUTHORIZED),
            ApiError::MethodNotFound => (StatusCode::NOT_FOUND, error_code::METHOD_NOT_FOUND),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, error_code::BAD_REQUEST),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, error_code::LIMIT_EXCEEDED),
        };
        json_error(status, code, &self.to_string())
    }
}

/// `POST /api/{method}`.
///
/// The key is checked and the declared length compared with the limit before a byte of the body
/// is read: a caller without the key cannot make the server wait for, or hold, its upload.
pub async fn call(
    State(node): State<Node>,
    Path(method): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    Metrics::inc(&node.metrics().api_requests);
    authorize(&node, request.headers(), &query)?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > API_BODY_LIMIT as u64) {
        return Err(ApiError::TooLarge);
    }
    // Reads at most the limit (`DefaultBodyLimit` of the routes), for a body without a length.
    let body = Bytes::from_request(request, &node)
        .await
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
            _ => ApiError::BadRequest(rejection.body_text()),
        })?;
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let reply = if method == "batch" {
        batch(&node, parse_batch(body)?).await
    } else {
        match dispatch(&node, parse_call(&method, body)?).await {
            Ok(result) => raw(&Keyed("result", result)),
            Err(error) => raw(&Keyed("error", error)),
        }
    };
    Ok(match reply {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(error) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            error.code,
            &error.message,
        ),
    })
}

/// `batch`: runs the commands in order; each gets a reply, `{method: result}` or `{"error": …}`.
async fn batch(node: &Node, req: BatchRequest) -> RawResult {
    let mut replies = Vec::with_capacity(req.commands.len());
    for command in req.commands() {
        let Some((method, params)) = command else {
            replies.push(raw(&Keyed("error", Error::new(error_code::BAD_REQUEST)))?);
            continue;
        };
        let reply = match parse_call(method, params.as_bytes()) {
            Ok(call) => match dispatch(node, call).await {
                Ok(result) => raw(&Keyed(method, result)),
                Err(error) => raw(&Keyed("error", error)),
            },
            Err(ApiError::MethodNotFound) => {
                raw(&Keyed("error", Error::new(error_code::METHOD_NOT_FOUND)))
            }
            Err(e) => raw(&Keyed(
                "error",
                Error {
                    code: error_code::BAD_REQUEST,
                    message: e.to_string(),
                    temporary: false,
                },
            )),
        };
        replies.push(reply?);
    }
    raw(&Keyed("replies", replies))
}

/// A method's result, serialized as soon as it is known. Publication data and client info are
/// raw JSON of any depth, which a `serde_json::Value` (limited to 128 levels) could not hold:
/// answers never go through `Value`.
pub(super) type RawResult = Result<Box<RawValue>, Error>;

/// Serializes `value` to raw JSON; a failure (a bug, not a client's doing) is an internal error.
pub(super) fn raw<T: Serialize + ?Sized>(value: &T) -> RawResult {
    let raw = serde_json::value::to_raw_value(value).map_err(|e| {
        tracing::error!(error = %e, "cannot serialize an API answer");
        Error::new(error_code::INTERNAL)
    })?;
    if raw.get().len() > MAX_ANSWER_BYTES {
        return Err(Error::too_large("answer", MAX_ANSWER_BYTES));
    }
    Ok(raw)
}

/// The largest result one server API command answers with; a history page is read against it
/// (no bigger page is built), and a bigger result is error 106 (limit exceeded) instead.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// A JSON object with one entry: `{key: value}`.
pub(super) struct Keyed<'a, V>(pub(super) &'a str, pub(super) V);

impl<V: Serialize> Serialize for Keyed<'_, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &self.1)?;
        map.end()
    }
}

/// One API method call, its body parsed: what [`parse_call`] makes of a request and the handler
/// runs. The fields stay private: only this module reads them.
pub enum ApiCall {
    Publish(PublishRequest),
    Broadcast(BroadcastRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(UnsubscribeRequest),
    Disconnect(DisconnectRequest),
    Refresh(super::refresh::RefreshRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    HistoryRemove(ChannelRequest),
    Channels(ChannelsRequest),
    Info,
    Map(MapCall),
}

/// Parses the body of `method` (any method but `batch`, see [`parse_batch`]) without running it:
/// a 404 for an unknown method, a 400 for a body that is not the method's JSON (or past one of
/// its bounds). It never panics, whatever the bytes; the property tests and the `api_body` fuzz
/// target call it as the handler does.
pub fn parse_call(method: &str, body: &[u8]) -> Result<ApiCall, ApiError> {
    Ok(match method {
        "publish" => ApiCall::Publish(checked(parse(body)?)?),
        "broadcast" => ApiCall::Broadcast(checked(parse(body)?)?),
        "subscribe" => ApiCall::Subscribe(parse(body)?),
        "unsubscribe" => ApiCall::Unsubscribe(parse(body)?),
        "disconnect" => ApiCall::Disconnect(parse(body)?),
        "refresh" => ApiCall::Refresh(parse(body)?),
        "presence" => ApiCall::Presence(parse(body)?),
        "presence_stats" => ApiCall::PresenceStats(parse(body)?),
        "history" => ApiCall::History(parse(body)?),
        "history_remove" => ApiCall::HistoryRemove(parse(body)?),
        "channels" => ApiCall::Channels(checked_pattern(parse(body)?)?),
        "map_publish" => ApiCall::Map(MapCall::Publish(parse(body)?)),
        "map_remove" => ApiCall::Map(MapCall::Remove(parse(body)?)),
        "map_read_state" => ApiCall::Map(MapCall::ReadState(parse(body)?)),
        "map_read_stream" => ApiCall::Map(MapCall::ReadStream(parse(body)?)),
        "map_stats" => ApiCall::Map(MapCall::Stats(parse(body)?)),
        "map_clear" => ApiCall::Map(MapCall::Clear(parse(body)?)),
        "info" => {
            let _: Empty = parse(body)?;
            ApiCall::Info
        }
        _ => return Err(ApiError::MethodNotFound),
    })
}

/// Parses a `batch` body: at most [`MAX_BATCH_COMMANDS`] commands of `{method: params}`. Each
/// command's params are parsed only when it runs (with [`parse_call`]), so that one bad command
/// fails alone.
pub fn parse_batch(body: &[u8]) -> Result<BatchRequest, ApiError> {
    parse(body)
}

/// Runs one parsed API method; the error is the method's own (an `{"error": …}` answer).
async fn dispatch(node: &Node, call: ApiCall) -> RawResult {
    match call {
        ApiCall::Publish(req) => publish(node, req).await,
        ApiCall::Broadcast(req) => broadcast(node, req).await,
        ApiCall::Subscribe(req) => subscribe(node, req).await,
        ApiCall::Unsubscribe(req) => unsubscribe(node, req).await,
        ApiCall::Disconnect(req) => disconnect(node, req).await,
        ApiCall::Refresh(req) => super::refresh::refresh(node, req).await,
        ApiCall::Presence(req) => presence(node, req).await,
        ApiCall::PresenceStats(req) => presence_stats(node, req).await,
        ApiCall::History(req) => history(node, req).await,
        ApiCall::HistoryRemove(req) => history_remove(node, req).await,
        ApiCall::Channels(req) => channels(node, req).await,
        ApiCall::Info => raw(&Keyed("nodes", node.nodes().await)),
        ApiCall::Map(call) => map::dispatch(node, call).await,
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Checks the API key: `X-API-Key`, else `Authorization: apikey <key>`, else `?api_key=`.
fn authorize(
    node: &Node,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(), ApiError> {
    let Some(expected) = node.config().api_key.as_deref() else {
        // No key configured: config validation allowed this only on loopback or when insecure.
        return Ok(());
    };
    let from_header = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let from_authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
        .map(|(_, key)| key.trim());
    let given = from_header
        .or(from_authorization)
        .or(query.get("api_key").map(String::as_str));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Most commands one `batch` may hold: every command and its reply stay in memory until the batch
/// ends. More is a 400 naming the bound.
pub const MAX_BATCH_COMMANDS: usize = 1000;

/// One command of a batch: `{method: params}`.
type BatchCommand = HashMap<String, Box<RawValue>>;

/// The body of `batch`: commands run in order.
#[derive(Deserialize)]
pub struct BatchRequest {
    #[serde(deserialize_with = "at_most_max_batch_commands")]
    commands: Vec<BatchCommand>,
    #[serde(default)]
    #[allow(dead_code)]
    parallel: bool,
}

impl BatchRequest {
    /// Each command's method and raw params, in order; `None` for a command that names no method.
    pub fn commands(&self) -> impl Iterator<Item = Option<(&str, &str)>> + '_ {
        self.commands.iter().map(|command| {
            command
                .iter()
                .next()
                .map(|(method, params)| (method.as_str(), params.get()))
        })
    }
}

/// Reads a batch's command list, stopping at the first command past [`MAX_BATCH_COMMANDS`].
fn at_most_max_batch_commands<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<BatchCommand>, D::Error> {
    struct Bounded;
    impl<'de> Visitor<'de> for Bounded {
        type Value = Vec<BatchCommand>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_BATCH_COMMANDS} commands")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut commands = Vec::new();
            while let Some(command) = seq.next_element()? {
                if commands.len() == MAX_BATCH_COMMANDS {
                    return Err(serde::de::Error::custom(format!(
                        "a batch holds at most {MAX_BATCH_COMMANDS} commands"
                    )));
                }
                commands.push(command);
            }
            Ok(commands)
        }
    }
    deserializer.deserialize_seq(Bounded)
}

/// The body of `subscribe`: a server-side subscription of a user's connections.
#[derive(Deserialize)]
pub struct SubscribeRequest {
    user: String,
    channel: String,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

async fn subscribe(node: &Node, req: SubscribeRequest) -> RawResult {
    check_channel(&req.channel)?;
    let compact = |raw: Option<Box<RawValue>>| raw.map(|r| payload_from_raw(&r));
    node.control(NodeControl::Subscribe {
        user: req.user,
        channel: req.channel,
        client: req.client.filter(|c| !c.is_empty()),
        chan_info: compact(req.info),
        data: compact(req.data),
    })
    .await?;
    raw(&json!({}))
}

/// The body of `unsubscribe`.
#[derive(Deserialize)]
pub struct UnsubscribeRequest {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

async fn unsubscribe(node: &Node, req: UnsubscribeRequest) -> RawResult {
    check_channel(&req.channel)?;
    node.control(NodeControl::Unsubscribe {
        user: req.user,
        channel: req.channel,
        client: req.client.filter(|c| !c.is_empty()),
    })
    .await?;
    raw(&json!({}))
}

/// The body of `disconnect`.
#[derive(Deserialize)]
pub struct DisconnectRequest {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<CustomDisconnect>,
}

#[derive(Deserialize)]
struct CustomDisconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

async fn disconnect(node: &Node, req: DisconnectRequest) -> RawResult {
    if req.user.is_empty() {
        return Err(Error::new(error_code::BAD_REQUEST));
    }
    let reason = match req.disconnect {
        None => Disconnect::FORCE_DISCONNECT,
        // Close codes must be 3000–4999, and a close reason fits in 123 bytes.
        Some(d) if (3000..5000).contains(&d.code) && d.reason.len() <= 123 => {
            Disconnect::custom(d.code, d.reason)
        }
        Some(_) => return Err(Error::new(error_code::BAD_REQUEST)),
    };
    node.control(NodeControl::Disconnect {
        user: req.user,
        client: req.client.filter(|c| !c.is_empty()),
        whitelist: req.whitelist,
        reason,
    })
    .await?;
    raw(&json!({}))
}

/// The body of the methods that name one channel (`presence`, `presence_stats`,
/// `history_remove`).
#[derive(Deserialize)]
pub struct ChannelRequest {
    channel: String,
}

async fn presence(node: &Node, req: ChannelRequest) -> RawResult {
    check_channel(&req.channel)?;
    let presence: HashMap<String, ClientInfo> = node.presence(&req.channel).await?;
    raw(&Keyed("presence", presence))
}

async fn presence_stats(node: &Node, req: ChannelRequest) -> RawResult {
    check_channel(&req.channel)?;
    let stats = node.presence_stats(&req.channel).await?;
    raw(&json!({"num_clients": stats.num_clients, "num_users": stats.num_users}))
}

/// The body of `history`.
#[derive(Deserialize)]
pub struct HistoryRequest {
    channel: String,
    #[serde(default)]
    limit: i32,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Serialize)]
struct HistoryResult<'a> {
    publications: Vec<&'a Publication>,
    offset: u64,
    epoch: &'a str,
}

async fn history(node: &Node, req: HistoryRequest) -> RawResult {
    check_channel(&req.channel)?;
    let filter = HistoryFilter {
        max_bytes: Some(MAX_ANSWER_BYTES),
        ..HistoryFilter::from_request(req.limit, req.since, req.reverse)?
    };
    let page = node.history(&req.channel, filter).await?;
    raw(&HistoryResult {
        publications: page.publications.iter().map(|p| &**p).collect(),
        offset: page.position.offset,
        epoch: &page.position.epoch,
    })
}

async fn history_remove(node: &Node, req: ChannelRequest) -> RawResult {
    check_channel(&req.channel)?;
    node.remove_history(&req.channel).await?;
    raw(&json!({}))
}

/// The body of `channels`: an optional glob pattern.
#[derive(Deserialize)]
pub struct ChannelsRequest {
    #[serde(default)]
    pattern: String,
}

/// Refuses a pattern longer than [`MAX_GLOB_LENGTH`] (a 400): matching costs its length times
/// each channel name's.
fn checked_pattern(req: ChannelsRequest) -> Result<ChannelsRequest, ApiError> {
    if req.pattern.len() > MAX_GLOB_LENGTH {
        return Err(ApiError::BadRequest(format!(
            "pattern is longer than {MAX_GLOB_LENGTH} bytes"
        )));
    }
    Ok(req)
}

/// Channels with subscribers on any node (across nodes on Redis), with their subscriber counts.
async fn channels(node: &Node, req: ChannelsRequest) -> RawResult {
    let channels: Vec<(String, u64)> = match node.broker().channels_everywhere().await {
        Ok(Some(everywhere)) => everywhere,
        Ok(None) => node
            .hub()
            .channels()
            .into_iter()
            .map(|(name, count)| (name.to_string(), count as u64))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list channels across nodes");
            return Err(Error::new(error_code::NOT_AVAILABLE));
        }
    };
    let filter = move || {
        channels
            .into_iter()
            .filter(|(name, _)| req.pattern.is_empty() || glob_match(&req.pattern, name))
            .map(|(name, count)| (name, json!({ "num_clients": count })))
            .collect::<serde_json::Map<String, Value>>()
    };
    // Matching every channel against a pattern is CPU work in proportion to the hub's size: off
    // the runtime's workers.
    let channels = tokio::task::spawn_blocking(filter).await.map_err(|e| {
        tracing::error!(error = %e, "channel filter failed");
        Error::new(error_code::INTERNAL)
    })?;
    raw(&Keyed("channels", channels))
}

/// `GET /health`.
pub async fn health() -> impl IntoResponse {
    axum::Json(json!({}))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(node): State<Node>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.render_metrics(),
    )
}

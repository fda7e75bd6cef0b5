//! The Centrifugo v2 client protocol's messages, as the client sends and reads them.
//!
//! Pure types, no I/O: a [`crate::codec::Codec`] turns them into frames and back. Every field
//! the server may leave out (Centrifugo omits zero values) has a default, and every `null` is read
//! as "absent", so no well-formed server message fails to decode for a missing field.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// One command: a positive `id` (absent for `send`, which gets no reply) and one request.
#[derive(Debug, Clone, Serialize)]
pub struct Command {
    /// 0 for commands without a reply (`send`); written out only when positive.
    #[serde(skip_serializing_if = "is_zero")]
    pub id: u32,
    /// The request, written under its method's key (`{"id":3,"publish":{…}}`).
    #[serde(flatten)]
    pub request: Request,
}

fn is_zero(id: &u32) -> bool {
    *id == 0
}

/// The request of a [`Command`], one per method of the protocol.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// `connect`: the first command on every connection.
    Connect(ConnectRequest),
    /// `subscribe` to a channel.
    Subscribe(SubscribeRequest),
    /// `unsubscribe` from a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `publish` to a channel.
    Publish {
        /// The channel.
        channel: String,
        /// The payload: JSON, or bytes (Protobuf only).
        data: Payload,
    },
    /// `presence` of a channel.
    Presence {
        /// The channel.
        channel: String,
    },
    /// `presence_stats` of a channel.
    PresenceStats {
        /// The channel.
        channel: String,
    },
    /// `history` of a channel.
    History(HistoryRequest),
    /// `rpc`: a call the server (or its backend) answers.
    Rpc {
        /// The method's name.
        method: String,
        /// The arguments: JSON, or bytes (Protobuf only).
        data: Payload,
    },
    /// `refresh`: a new connection token.
    Refresh {
        /// The token.
        token: String,
    },
    /// `sub_refresh`: a new subscription token.
    SubRefresh {
        /// The channel.
        channel: String,
        /// The token.
        token: String,
    },
    /// `send`: an asynchronous message to the server, without a reply.
    Send {
        /// The payload, raw JSON.
        data: Value,
    },
}

/// A payload the client sends: a JSON value, or raw bytes, which only an encoding that carries
/// bytes (Protobuf) can send.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON value: its JSON text over Protobuf, the value itself over JSON.
    Json(Value),
    /// Raw bytes, sent as they are (Protobuf only).
    Binary(Bytes),
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload::Json(value)
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Json(value) => value.serialize(serializer),
            // The client refuses such a command before it is queued (Error::BinaryNeedsProtobuf);
            // this is the codec's own guard.
            Payload::Binary(_) => Err(serde::ser::Error::custom(
                "binary payloads need the Protobuf encoding",
            )),
        }
    }
}

impl Request {
    /// Whether the request carries raw bytes, which only a codec that carries bytes can send.
    pub fn is_binary(&self) -> bool {
        matches!(
            self,
            Request::Publish {
                data: Payload::Binary(_),
                ..
            } | Request::Rpc {
                data: Payload::Binary(_),
                ..
            }
        )
    }

    /// The method's name, as it appears on the wire.
    pub fn method(&self) -> &'static str {
        match self {
            Request::Connect(_) => "connect",
            Request::Subscribe(_) => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Publish { .. } => "publish",
            Request::Presence { .. } => "presence",
            Request::PresenceStats { .. } => "presence_stats",
            Request::History(_) => "history",
            Request::Rpc { .. } => "rpc",
            Request::Refresh { .. } => "refresh",
            Request::SubRefresh { .. } => "sub_refresh",
            Request::Send { .. } => "send",
        }
    }
}

/// The body of `connect`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectRequest {
    /// The connection token (JWT), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Connect data for the application backend's connect proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The client's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The client's version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Emulated headers, forwarded to the backend's proxy when the server lists them.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub headers: HashMap<String, String>,
    /// Server-side subscriptions to recover: channel → position.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeRecovery>,
}

/// A server-side subscription's position, sent in `connect` to recover it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribeRecovery {
    /// Always true: this is why the entry is sent.
    pub recover: bool,
    /// The last offset seen.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// The body of `subscribe`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubscribeRequest {
    /// The channel.
    pub channel: String,
    /// A subscription token, for channels that need one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Subscribe data for the backend's subscribe proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Recover from `offset`/`epoch`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recover: bool,
    /// The last offset seen (with `recover`).
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// The stream's epoch (with `recover`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Ask for join and leave pushes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub join_leave: bool,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The body of `history`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryRequest {
    /// The channel.
    pub channel: String,
    /// How many publications at most: 0 asks for the stream position only.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub limit: i32,
    /// Publications after this position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    /// Newest first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reverse: bool,
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

/// A position in a channel's stream: the offset of a publication and the stream's epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of a publication (publications are numbered from 1).
    #[serde(default)]
    pub offset: u64,
    /// Names one life of the stream: offsets restart when it changes.
    #[serde(default, deserialize_with = "null_default")]
    pub epoch: String,
}

/// One message from the server: a reply to a command (`id` > 0), a push, or a ping (empty).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Reply {
    /// The command's id; 0 for pushes and pings.
    #[serde(default)]
    pub id: u32,
    /// The command failed.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// A push (no id).
    #[serde(default)]
    pub push: Option<Push>,
    /// Result of `connect`.
    #[serde(default)]
    pub connect: Option<ConnectResult>,
    /// Result of `subscribe`.
    #[serde(default)]
    pub subscribe: Option<SubscribeResult>,
    /// Result of `unsubscribe`.
    #[serde(default)]
    pub unsubscribe: Option<Value>,
    /// Result of `publish`.
    #[serde(default)]
    pub publish: Option<Value>,
    /// Result of `presence`.
    #[serde(default)]
    pub presence: Option<PresenceResult>,
    /// Result of `presence_stats`.
    #[serde(default)]
    pub presence_stats: Option<PresenceStats>,
    /// Result of `history`.
    #[serde(default)]
    pub history: Option<HistoryResult>,
    /// Result of `rpc`.
    #[serde(default)]
    pub rpc: Option<RpcResult>,
    /// Result of `refresh`.
    #[serde(default)]
    pub refresh: Option<RefreshResult>,
    /// Result of `sub_refresh`.
    #[serde(default)]
    pub sub_refresh: Option<RefreshResult>,
}

impl Reply {
    /// A server ping: no id, no push, no result, no error.
    pub fn is_ping(&self) -> bool {
        self.id == 0 && self.push.is_none() && self.error.is_none()
    }
}

/// An error reply's body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    /// Centrifugo's error code (109 token expired, 103 permission denied, …).
    #[serde(default)]
    pub code: u32,
    /// What went wrong.
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
    /// Whether retrying may succeed.
    #[serde(default)]
    pub temporary: bool,
}

/// Who a client is, as presence, join/leave and publications tell it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ClientInfo {
    /// The user id ("" for anonymous).
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    /// The connection's id.
    #[serde(default, deserialize_with = "null_default")]
    pub client: String,
    /// Connection info (from the connection token or the connect proxy).
    #[serde(default)]
    pub conn_info: Option<Value>,
    /// Channel info (from the subscription token or the subscribe proxy).
    #[serde(default)]
    pub chan_info: Option<Value>,
}

/// A message published to a channel.
///
/// Its payload is `data`, a JSON value, unless it is a *binary publication* (`binary`): bytes
/// that are not one JSON value, published by a Protobuf client or through the server API's
/// `b64data`. Then `data` is their standard base64, as every JSON reader sees them, and `bytes`
/// the bytes themselves.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "JsonPublication")]
pub struct Publication {
    /// The payload as JSON: the value, or a binary publication's bytes in standard base64.
    pub data: Value,
    /// A binary publication: `data` is the base64 of its bytes.
    pub binary: bool,
    /// The payload's exact bytes, when they are known: every publication over Protobuf (a JSON
    /// payload's text as it came, or a binary publication's bytes), and a binary publication
    /// over JSON (its base64 decoded). `None` for a JSON payload over JSON: read `data`.
    pub bytes: Option<Bytes>,
    /// The publishing client, when a client published it.
    pub info: Option<ClientInfo>,
    /// Its offset in the channel's stream (0 without history).
    pub offset: u64,
    /// Tags set by the publisher.
    pub tags: HashMap<String, String>,
}

/// A publication as the JSON encoding writes it (`"binary": true` beside a base64 `data`).
#[derive(Deserialize)]
struct JsonPublication {
    #[serde(default)]
    data: Value,
    #[serde(default)]
    binary: bool,
    #[serde(default)]
    info: Option<ClientInfo>,
    #[serde(default)]
    offset: u64,
    #[serde(default, deserialize_with = "null_default")]
    tags: HashMap<String, String>,
}

impl From<JsonPublication> for Publication {
    fn from(p: JsonPublication) -> Self {
        // Base64 that does not decode leaves `bytes` empty rather than failing the whole frame.
        let bytes = p
            .binary
            .then(|| p.data.as_str())
            .flatten()
            .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .map(Bytes::from);
        Publication {
            data: p.data,
            binary: p.binary,
            bytes,
            info: p.info,
            offset: p.offset,
            tags: p.tags,
        }
    }
}

/// The result of `connect`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectResult {
    /// The connection's id.
    #[serde(default, deserialize_with = "null_default")]
    pub client: String,
    /// The server's version.
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    /// The connection expires and must be refreshed.
    #[serde(default)]
    pub expires: bool,
    /// Seconds until it expires.
    #[serde(default)]
    pub ttl: u32,
    /// Data the connect proxy returned.
    #[serde(default)]
    pub data: Option<Value>,
    /// Server-side subscriptions.
    #[serde(default, deserialize_with = "null_default")]
    pub subs: HashMap<String, SubscribeResult>,
    /// Seconds between server pings (0: none).
    #[serde(default)]
    pub ping: u32,
    /// The server expects pongs.
    #[serde(default)]
    pub pong: bool,
}

/// The result of `subscribe` (and the body of a server-side `subscribe` push).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubscribeResult {
    /// The subscription expires and must be refreshed.
    #[serde(default)]
    pub expires: bool,
    /// Seconds until it expires.
    #[serde(default)]
    pub ttl: u32,
    /// The channel keeps a stream the client can recover from.
    #[serde(default)]
    pub recoverable: bool,
    /// The stream's epoch.
    #[serde(default, deserialize_with = "null_default")]
    pub epoch: String,
    /// Publications missed, when recovering.
    #[serde(default, deserialize_with = "null_default")]
    pub publications: Vec<Publication>,
    /// Every missed publication came back.
    #[serde(default)]
    pub recovered: bool,
    /// The stream's top offset.
    #[serde(default)]
    pub offset: u64,
    /// The server tracks the client's position.
    #[serde(default)]
    pub positioned: bool,
    /// Data the subscribe proxy returned.
    #[serde(default)]
    pub data: Option<Value>,
    /// The client asked to recover.
    #[serde(default)]
    pub was_recovering: bool,
}

/// The result of `presence`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PresenceResult {
    /// Client id → who.
    #[serde(default, deserialize_with = "null_default")]
    pub presence: HashMap<String, ClientInfo>,
}

/// The result of `presence_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PresenceStats {
    /// Connections subscribed.
    #[serde(default)]
    pub num_clients: u32,
    /// Distinct users among them.
    #[serde(default)]
    pub num_users: u32,
}

/// The result of `history`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HistoryResult {
    /// The publications asked for.
    #[serde(default, deserialize_with = "null_default")]
    pub publications: Vec<Publication>,
    /// The stream's epoch.
    #[serde(default, deserialize_with = "null_default")]
    pub epoch: String,
    /// The stream's top offset.
    #[serde(default)]
    pub offset: u64,
}

/// The result of `rpc`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RpcResult {
    /// The answer, raw JSON.
    #[serde(default)]
    pub data: Value,
    /// The answer's exact bytes, over an encoding that carries bytes (Protobuf); `None` over
    /// JSON.
    #[serde(skip)]
    pub bytes: Option<Bytes>,
}

/// The result of `refresh` and `sub_refresh`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RefreshResult {
    /// It still expires.
    #[serde(default)]
    pub expires: bool,
    /// Seconds until it does.
    #[serde(default)]
    pub ttl: u32,
}

/// A push: something the server sends on its own.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Push {
    /// The channel it concerns ("" for `message` and `disconnect`).
    #[serde(default, deserialize_with = "null_default")]
    pub channel: String,
    /// A publication.
    #[serde(default, rename = "pub")]
    pub publication: Option<Publication>,
    /// A client joined.
    #[serde(default)]
    pub join: Option<JoinLeave>,
    /// A client left.
    #[serde(default)]
    pub leave: Option<JoinLeave>,
    /// The server unsubscribed the client.
    #[serde(default)]
    pub unsubscribe: Option<CodeReason>,
    /// The server subscribed the client (server-side subscription).
    #[serde(default)]
    pub subscribe: Option<SubscribeResult>,
    /// An asynchronous message to this client.
    #[serde(default)]
    pub message: Option<MessagePush>,
    /// The server disconnects the client (emulated transports; WebSocket uses a close frame).
    #[serde(default)]
    pub disconnect: Option<CodeReason>,
}

/// The body of a `join` or `leave` push.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinLeave {
    /// Who joined or left.
    #[serde(default)]
    pub info: ClientInfo,
}

/// A code and its reason (`unsubscribe` and `disconnect` pushes).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CodeReason {
    /// The code.
    #[serde(default)]
    pub code: u32,
    /// Why.
    #[serde(default, deserialize_with = "null_default")]
    pub reason: String,
}

/// The body of a `message` push.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessagePush {
    /// The payload, raw JSON.
    #[serde(default)]
    pub data: Value,
}

/// Reads `null` as the type's default (Go's encoder writes empty lists and maps as `null`).
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

//! The Centrifugo v2 client protocol, JSON encoding: types, decoding and encoding.
//!
//! This module does no I/O and knows nothing else of Switchboard, so it can be unit-tested and
//! fuzzed alone. A frame carries one or more JSON objects separated by `\n`; each client object is a
//! [`Command`], each server object a [`Reply`] (a reply has an `id`, a push has none, a ping is `{}`).
//!
//! Payloads (`data`, `info`, …) are raw JSON values embedded as they are, never base64 or strings;
//! they are kept as [`RawValue`]s so the server never re-parses what it only forwards.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A raw JSON payload shared between every message that carries it.
pub type Payload = Arc<RawValue>;

/// Error codes carried in `Reply.error` and in the server API's `error`.
pub mod error_code {
    /// Server fault; the client may retry.
    pub const INTERNAL: u32 = 100;
    pub const UNAUTHORIZED: u32 = 101;
    pub const UNKNOWN_CHANNEL: u32 = 102;
    pub const PERMISSION_DENIED: u32 = 103;
    pub const METHOD_NOT_FOUND: u32 = 104;
    pub const ALREADY_SUBSCRIBED: u32 = 105;
    pub const LIMIT_EXCEEDED: u32 = 106;
    pub const BAD_REQUEST: u32 = 107;
    pub const NOT_AVAILABLE: u32 = 108;
    pub const TOKEN_EXPIRED: u32 = 109;
    pub const EXPIRED: u32 = 110;
    pub const TOO_MANY_REQUESTS: u32 = 111;
    pub const UNRECOVERABLE_POSITION: u32 = 112;
}

/// An error reply: `{code, message, temporary}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: u32,
    pub message: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub temporary: bool,
}

impl Error {
    /// An error with the message Centrifugo uses for that code.
    pub fn new(code: u32) -> Self {
        use error_code::*;
        let (message, temporary) = match code {
            INTERNAL => ("internal server error", true),
            UNAUTHORIZED => ("unauthorized", false),
            UNKNOWN_CHANNEL => ("unknown channel", false),
            PERMISSION_DENIED => ("permission denied", false),
            METHOD_NOT_FOUND => ("method not found", false),
            ALREADY_SUBSCRIBED => ("already subscribed", false),
            LIMIT_EXCEEDED => ("limit exceeded", false),
            BAD_REQUEST => ("bad request", false),
            NOT_AVAILABLE => ("not available", false),
            TOKEN_EXPIRED => ("token expired", false),
            EXPIRED => ("expired", false),
            TOO_MANY_REQUESTS => ("too many requests", true),
            UNRECOVERABLE_POSITION => ("unrecoverable position", false),
            _ => ("error", false),
        };
        Error {
            code,
            message: message.to_string(),
            temporary,
        }
    }
}

/// Why the server closes a connection: a Centrifugo disconnect code and a short plain-text reason.
///
/// On WebSocket this becomes the close frame's code and reason. Codes 3000–3499 tell clients to
/// reconnect, 3500–3999 are terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub code: u16,
    pub reason: std::borrow::Cow<'static, str>,
}

impl Disconnect {
    /// The server is going away; reconnect (elsewhere).
    pub const SHUTDOWN: Disconnect = Disconnect::new(3001, "shutdown");
    pub const INTERNAL: Disconnect = Disconnect::new(3004, "internal server error");
    pub const EXPIRED: Disconnect = Disconnect::new(3005, "connection expired");
    pub const SUBSCRIPTION_EXPIRED: Disconnect = Disconnect::new(3006, "subscription expired");
    /// The client did not read fast enough: its outbound queue overflowed.
    pub const SLOW: Disconnect = Disconnect::new(3008, "slow");
    pub const WRITE_ERROR: Disconnect = Disconnect::new(3009, "write error");
    pub const INSUFFICIENT_STATE: Disconnect = Disconnect::new(3010, "insufficient state");
    pub const FORCE_RECONNECT: Disconnect = Disconnect::new(3011, "force reconnect");
    pub const NO_PONG: Disconnect = Disconnect::new(3012, "no pong");
    pub const TOO_MANY_REQUESTS: Disconnect = Disconnect::new(3013, "too many requests");
    pub const INVALID_TOKEN: Disconnect = Disconnect::new(3500, "invalid token");
    pub const BAD_REQUEST: Disconnect = Disconnect::new(3501, "bad request");
    /// No `connect` command arrived in time after the socket opened.
    pub const STALE: Disconnect = Disconnect::new(3502, "stale");
    pub const FORCE_DISCONNECT: Disconnect = Disconnect::new(3503, "force disconnect");
    pub const CONNECTION_LIMIT: Disconnect = Disconnect::new(3504, "connection limit");
    pub const CHANNEL_LIMIT: Disconnect = Disconnect::new(3505, "channel limit");
    pub const PERMISSION_DENIED: Disconnect = Disconnect::new(3507, "permission denied");
    pub const TOO_MANY_ERRORS: Disconnect = Disconnect::new(3509, "too many errors");
    /// A message larger than the configured limit (WebSocket's own code, terminal for clients).
    pub const MESSAGE_TOO_BIG: Disconnect = Disconnect::new(1009, "message too big");

    pub const fn new(code: u16, reason: &'static str) -> Self {
        Disconnect {
            code,
            reason: std::borrow::Cow::Borrowed(reason),
        }
    }

    /// A disconnect with a reason chosen at run time (the server API's custom disconnects).
    pub fn custom(code: u16, reason: String) -> Self {
        Disconnect {
            code,
            reason: std::borrow::Cow::Owned(reason),
        }
    }
}

/// Codes of the `unsubscribe` push, as Centrifugo names them. Below 2500 the client stays
/// unsubscribed; from 2500 it resubscribes (and recovers what it missed).
pub mod unsubscribe_code {
    /// The server API unsubscribed the client.
    pub const SERVER: u32 = 2000;
    /// Publications may have been lost on their way to this node: resubscribe and recover.
    pub const INSUFFICIENT_STATE: u32 = 2500;
    /// The subscription token expired: resubscribe with a fresh one.
    pub const EXPIRED: u32 = 2501;
    /// The client's state of the channel is no longer valid: clear it and resubscribe.
    pub const STATE_INVALIDATED: u32 = 2502;
}

/// What a client may send: an `id` and one request.
///
/// Centrifugo's `Command` is not a oneof, so every request key is optional here; [`Command::request`]
/// picks one in the server's dispatch order.
#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    connect: Option<ConnectRequest>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<ChannelRequest>,
    publish: Option<PublishRequest>,
    presence: Option<ChannelRequest>,
    presence_stats: Option<ChannelRequest>,
    history: Option<HistoryRequest>,
    ping: Option<serde::de::IgnoredAny>,
    send: Option<SendRequest>,
    rpc: Option<RpcRequest>,
    refresh: Option<RefreshRequest>,
    sub_refresh: Option<SubRefreshRequest>,
}

/// One decoded client request.
#[derive(Debug)]
pub enum Request {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Ping,
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// A command without id (other than `send`), usually empty: the answer to a server ping.
    Pong,
    /// A command with an id but no request the server knows.
    Unknown,
}

impl Request {
    /// The request's method name, as a label (the timeline names commands with it).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Connect(_) => "connect",
            Request::Subscribe(_) => "subscribe",
            Request::Unsubscribe(_) => "unsubscribe",
            Request::Publish(_) => "publish",
            Request::Presence(_) => "presence",
            Request::PresenceStats(_) => "presence_stats",
            Request::History(_) => "history",
            Request::Ping => "ping",
            Request::Send(_) => "send",
            Request::Rpc(_) => "rpc",
            Request::Refresh(_) => "refresh",
            Request::SubRefresh(_) => "sub_refresh",
            Request::Pong => "pong",
            Request::Unknown => "unknown",
        }
    }

    /// The channel the request is about, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Request::Subscribe(r) => Some(&r.channel),
            Request::Unsubscribe(r) | Request::Presence(r) | Request::PresenceStats(r) => {
                Some(&r.channel)
            }
            Request::Publish(r) => Some(&r.channel),
            Request::History(r) => Some(&r.channel),
            Request::SubRefresh(r) => Some(&r.channel),
            _ => None,
        }
    }
}

impl Command {
    /// The request this command carries. `send` is the only request that comes without an id; any
    /// other id-less command is a pong, whatever its body (as Centrifuge reads it).
    pub fn request(self) -> Request {
        if let Some(send) = self.send {
            return Request::Send(send);
        }
        if self.id == 0 {
            return Request::Pong;
        }
        if let Some(r) = self.connect {
            Request::Connect(r)
        } else if self.ping.is_some() {
            Request::Ping
        } else if let Some(r) = self.subscribe {
            Request::Subscribe(r)
        } else if let Some(r) = self.unsubscribe {
            Request::Unsubscribe(r)
        } else if let Some(r) = self.publish {
            Request::Publish(r)
        } else if let Some(r) = self.presence {
            Request::Presence(r)
        } else if let Some(r) = self.presence_stats {
            Request::PresenceStats(r)
        } else if let Some(r) = self.history {
            Request::History(r)
        } else if let Some(r) = self.rpc {
            Request::Rpc(r)
        } else if let Some(r) = self.refresh {
            Request::Refresh(r)
        } else if let Some(r) = self.sub_refresh {
            Request::SubRefresh(r)
        } else {
            Request::Unknown
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub token: String,
    pub data: Option<Payload>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    /// Channels to recover server-side subscriptions of: channel → position.
    #[serde(default)]
    pub subs: HashMap<String, SubscribeRequest>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
    pub data: Option<Payload>,
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub positioned: bool,
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default)]
    pub join_leave: bool,
    /// Client feature flags (channel compaction, reject-unrecovered); see [`flag`].
    #[serde(default)]
    pub flag: u64,
}

/// Bits of `SubscribeRequest.flag`.
pub mod flag {
    /// The client wants error 112 instead of `recovered: false`.
    pub const REJECT_UNRECOVERED: u64 = 2;
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    pub data: Option<Payload>,
}

#[derive(Debug, Default, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub limit: i32,
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

/// An asynchronous message to the server. Nothing here handles its `data` (no backend to forward
/// it to), so it is not copied out of the frame: unknown fields, `data` included, are skipped.
#[derive(Debug, Deserialize)]
pub struct SendRequest {}

#[derive(Debug, Deserialize)]
pub struct RpcRequest {
    #[serde(default)]
    pub method: String,
    pub data: Option<Payload>,
}

#[derive(Debug, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Deserialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

/// A place in a channel's stream: the offset of a publication within an epoch.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

/// Who a client is, as other clients see it in presence, join/leave and publications.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    pub user: String,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<Payload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chan_info: Option<Payload>,
}

/// A message in a channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    pub data: Payload,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub tags: HashMap<String, String>,
}

/// A server → client message. With an `id` it answers a command; without, it holds a push.
#[derive(Debug, Serialize)]
pub struct Reply {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub result: Option<ReplyResult>,
}

impl Reply {
    pub fn ok(id: u32, result: ReplyResult) -> Self {
        Reply {
            id,
            error: None,
            result: Some(result),
        }
    }

    pub fn error(id: u32, error: Error) -> Self {
        Reply {
            id,
            error: Some(error),
            result: None,
        }
    }

    pub fn push(push: Push) -> Self {
        Reply::ok(0, ReplyResult::Push(push))
    }

    /// The reply as one JSON line (no trailing newline).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_vec(self).expect("reply serializes")
    }
}

/// The result key of a reply (or `push`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyResult {
    Push(Push),
    Connect(ConnectResult),
    Subscribe(SubscribeResult),
    Unsubscribe(Empty),
    Publish(Empty),
    Presence(PresenceResult),
    PresenceStats(PresenceStatsResult),
    History(HistoryResult),
    Ping(Empty),
    Rpc(RpcResult),
    Refresh(RefreshResult),
    SubRefresh(SubRefreshResult),
}

/// An empty result object, `{}`.
#[derive(Debug, Default, Serialize)]
pub struct Empty {}

#[derive(Debug, Default, Serialize)]
pub struct ConnectResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeResult>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub time: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SubscribeResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Arc<Publication>>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceResult {
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u64,
    pub num_users: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct HistoryResult {
    pub publications: Vec<Arc<Publication>>,
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Serialize)]
pub struct RpcResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
}

#[derive(Debug, Default, Serialize)]
pub struct RefreshResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct SubRefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// An asynchronous server → client message.
#[derive(Debug, Serialize)]
pub struct Push {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[serde(flatten)]
    pub body: PushBody,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushBody {
    #[serde(rename = "pub")]
    Publication(Arc<Publication>),
    Join {
        info: ClientInfo,
    },
    Leave {
        info: ClientInfo,
    },
    Unsubscribe {
        code: u32,
        reason: String,
    },
    Subscribe(SubscribeResult),
    Message {
        data: Payload,
    },
}

impl PushBody {
    /// The push's kind, as a label (the timeline names fan-outs with it).
    pub fn kind(&self) -> &'static str {
        match self {
            PushBody::Publication(_) => "publication",
            PushBody::Join { .. } => "join",
            PushBody::Leave { .. } => "leave",
            PushBody::Unsubscribe { .. } => "unsubscribe",
            PushBody::Subscribe(_) => "subscribe",
            PushBody::Message { .. } => "message",
        }
    }
}

/// Why a line of a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid command JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Splits a client frame into commands. Blank lines (a trailing `\n`, for instance) are skipped.
pub fn decode_frame(frame: &str) -> impl Iterator<Item = Result<Command, DecodeError>> + '_ {
    frame
        .split('\n')
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str::<Command>(line).map_err(DecodeError::from))
}

/// The server ping: an empty reply.
pub const PING: &[u8] = b"{}";

/// Makes a payload from a JSON value received outside a client frame (the HTTP API), removing raw
/// newlines so the payload can never split a `\n`-delimited frame. Newlines can only appear as
/// whitespace in valid JSON (inside strings they must be escaped), so removing them keeps the value.
pub fn payload_from_raw(raw: &RawValue) -> Payload {
    let text = raw.get();
    if text.contains('\n') || text.contains('\r') {
        let compact: String = text.chars().filter(|c| *c != '\n' && *c != '\r').collect();
        Arc::from(RawValue::from_string(compact).expect("valid JSON stays valid without newlines"))
    } else {
        Arc::from(raw.to_owned())
    }
}

/// The JSON `null` payload, for requests that carry no data.
pub fn null_payload() -> Payload {
    Arc::from(RawValue::from_string("null".to_string()).expect("null is JSON"))
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Request {
        decode_frame(line).next().unwrap().unwrap().request()
    }

    #[test]
    fn decodes_batched_commands_in_order() {
        let frame = "{\"id\":1,\"connect\":{}}\n{\"subscribe\":{\"channel\":\"a\"},\"id\":2}\n";
        let cmds: Vec<_> = decode_frame(frame).map(|c| c.unwrap()).collect();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[1].id, 2);
        assert!(
            matches!(cmds.into_iter().nth(1).unwrap().request(), Request::Subscribe(s) if s.channel == "a")
        );
    }

    #[test]
    fn empty_command_is_pong_and_send_is_send() {
        assert!(matches!(one("{}"), Request::Pong));
        assert!(matches!(one("{\"send\":{\"data\":1}}"), Request::Send(_)));
        assert!(matches!(one("{\"id\":3}"), Request::Unknown));
        assert!(matches!(one("{\"id\":3,\"ping\":{}}"), Request::Ping));
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        assert!(decode_frame("{\"id\":").next().unwrap().is_err());
        assert!(decode_frame("[1,2]").next().unwrap().is_err());
        assert!(decode_frame("{\"id\":-1}").next().unwrap().is_err());
    }

    #[test]
    fn raw_data_is_kept_verbatim() {
        match one("{\"id\":1,\"publish\":{\"channel\":\"c\",\"data\":{\"a\": [1, 2]}}}") {
            Request::Publish(p) => assert_eq!(p.data.unwrap().get(), "{\"a\": [1, 2]}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replies_omit_empty_fields() {
        let r = Reply::ok(5, ReplyResult::Unsubscribe(Empty {}));
        assert_eq!(r.encode(), b"{\"id\":5,\"unsubscribe\":{}}");
        let e = Reply::error(3, Error::new(error_code::PERMISSION_DENIED));
        assert_eq!(
            String::from_utf8(e.encode()).unwrap(),
            "{\"id\":3,\"error\":{\"code\":103,\"message\":\"permission denied\"}}"
        );
        let publication = Publication {
            data: Arc::from(RawValue::from_string("{\"t\":1}".into()).unwrap()),
            info: None,
            offset: 8,
            tags: HashMap::new(),
        };
        let p = Reply::push(Push {
            channel: "chat".into(),
            body: PushBody::Publication(Arc::new(publication)),
        });
        assert_eq!(
            String::from_utf8(p.encode()).unwrap(),
            "{\"push\":{\"channel\":\"chat\",\"pub\":{\"data\":{\"t\":1},\"offset\":8}}}"
        );
    }

    #[test]
    fn api_payload_loses_raw_newlines_only() {
        let raw = RawValue::from_string("{\n  \"a\": \"x\\ny\"\n}".into()).unwrap();
        assert_eq!(payload_from_raw(&raw).get(), "{  \"a\": \"x\\ny\"}");
    }
}

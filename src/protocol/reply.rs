//! What the server sends: replies, their results, and pushes.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{is_false, is_zero, is_zero_i32, is_zero_u32, Error, Payload};

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
    /// The key of a map channel's entry this publication sets or removes (empty elsewhere).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// This publication removes `key` from its map channel.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removed: bool,
    /// `data` stands for bytes that are not JSON (published by a Protobuf client, or through
    /// the API's `b64data`), held as a JSON string of their standard base64 (see
    /// [`binary_payload`](super::binary_payload)). Protobuf clients get the bytes themselves;
    /// JSON clients and the API get the string, with `"binary": true` beside it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub binary: bool,
}

impl Publication {
    /// A publication of `data` (JSON), to be given its offset by the broker.
    pub fn new(data: Payload) -> Self {
        Publication {
            data,
            info: None,
            offset: 0,
            tags: HashMap::new(),
            key: String::new(),
            removed: false,
            binary: false,
        }
    }

    /// The payload's bytes as a Protobuf client gets them: the bytes of a binary payload, the
    /// JSON text of any other.
    pub fn data_bytes(&self) -> bytes::Bytes {
        super::payload_bytes(&self.data, self.binary)
    }
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

    /// The reply in `encoding`: one JSON line (no trailing newline), or one length-delimited
    /// Protobuf message.
    pub fn encode_as(&self, encoding: super::Encoding) -> Vec<u8> {
        match encoding {
            super::Encoding::Json => self.encode(),
            super::Encoding::Protobuf => self.encode_protobuf(),
        }
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
    /// Over HTTP emulation: the session the client names in its `/emulation` requests (with
    /// `node`, the node holding it).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
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
    /// Map subscriptions: the subscription type echoed (1 map).
    #[serde(rename = "type", skip_serializing_if = "is_zero_i32")]
    pub kind: i32,
    /// Map subscriptions: the phase this reply belongs to (0 live, 1 stream, 2 state).
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub phase: i32,
    /// Map subscriptions: where the next state page starts (empty: last page).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cursor: String,
    /// Map subscriptions: a page of the map's entries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<Arc<Publication>>,
    /// The subscription gets Fossil deltas: every publication's `data` is a JSON string, the
    /// full payload or (with `delta: true`) a delta against the previous one.
    #[serde(skip_serializing_if = "is_false")]
    pub delta: bool,
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
    /// `data` stands for bytes that are not JSON (a [`binary_payload`](super::binary_payload)),
    /// which a Protobuf client gets as they are; never sent to a JSON client.
    #[serde(skip)]
    pub binary: bool,
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
    /// The connect result, pushed to a client of a unidirectional transport (which sends no
    /// command to reply to).
    Connect(ConnectResult),
    /// Why the server closes a unidirectional connection, pushed just before it does.
    Disconnect {
        code: u32,
        reason: String,
    },
    /// A unidirectional connection's new expiry, after a server API `refresh`.
    Refresh {
        #[serde(skip_serializing_if = "is_false")]
        expires: bool,
        #[serde(skip_serializing_if = "is_zero_u32")]
        ttl: u32,
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
            PushBody::Connect(_) => "connect",
            PushBody::Disconnect { .. } => "disconnect",
            PushBody::Refresh { .. } => "refresh",
        }
    }
}

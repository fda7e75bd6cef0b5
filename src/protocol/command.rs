//! What clients send: a [`Command`] and the [`Request`] it holds.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Payload, StreamPosition};

/// What a client may send: an `id` and one request.
///
/// Centrifugo's `Command` is not a oneof, so every request key is optional here; [`Command::request`]
/// picks one in the server's dispatch order.
#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    pub(super) connect: Option<ConnectRequest>,
    pub(super) subscribe: Option<SubscribeRequest>,
    pub(super) unsubscribe: Option<ChannelRequest>,
    pub(super) publish: Option<PublishRequest>,
    pub(super) presence: Option<ChannelRequest>,
    pub(super) presence_stats: Option<ChannelRequest>,
    pub(super) history: Option<HistoryRequest>,
    pub(super) ping: Option<serde::de::IgnoredAny>,
    pub(super) send: Option<SendRequest>,
    pub(super) rpc: Option<RpcRequest>,
    pub(super) refresh: Option<RefreshRequest>,
    pub(super) sub_refresh: Option<SubRefreshRequest>,
    /// Why the request cannot be served though the command decoded (a Protobuf payload that is
    /// not JSON): the command gets error 107 with this message.
    #[serde(skip)]
    pub(super) invalid: Option<&'static str>,
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
    /// A request the server cannot serve as sent: answered with error 107 and this message.
    Invalid(&'static str),
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
            Request::Invalid(_) => "invalid",
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
        if let Some(reason) = self.invalid {
            return Request::Invalid(reason);
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
    /// `data` holds bytes that are not JSON, from a Protobuf client (a
    /// [`binary_payload`](super::binary_payload)).
    #[serde(skip)]
    pub binary: bool,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    /// Channels to recover server-side subscriptions of: channel → position.
    #[serde(default)]
    pub subs: HashMap<String, SubscribeRequest>,
    /// Headers the SDK emulates (browsers cannot set WebSocket headers): name → value.
    pub headers: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
    pub data: Option<Payload>,
    /// `data` holds bytes that are not JSON, from a Protobuf client (a
    /// [`binary_payload`](super::binary_payload)).
    #[serde(skip)]
    pub binary: bool,
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
    /// Subscription type: 0 stream, 1 map (2 map_clients, 3 map_users: not served).
    #[serde(default, rename = "type")]
    pub kind: i32,
    /// Map subscriptions: the phase asked for (0 live, 1 stream, 2 state).
    #[serde(default)]
    pub phase: i32,
    /// Map subscriptions: where the state page starts (empty: the first page).
    #[serde(default)]
    pub cursor: String,
    /// Map subscriptions: entries per page (0: the namespace's default).
    #[serde(default)]
    pub limit: i32,
    /// The delta encoding asked for (`"fossil"`), empty for none.
    #[serde(default)]
    pub delta: String,
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
    /// 0 a stream publication, 1 a map entry (`key`, `removed`).
    #[serde(default, rename = "type")]
    pub kind: i32,
    /// Map publish: the entry's key.
    #[serde(default)]
    pub key: String,
    /// Map publish: remove the key instead of setting it.
    #[serde(default)]
    pub removed: bool,
    /// `data` holds bytes that are not JSON, from a Protobuf client (see
    /// [`Publication::binary`](super::Publication)).
    #[serde(skip)]
    pub binary: bool,
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
    /// `data` holds bytes that are not JSON, from a Protobuf client (a
    /// [`binary_payload`](super::binary_payload)).
    #[serde(skip)]
    pub binary: bool,
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

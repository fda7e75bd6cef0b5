//! The Protobuf encoding of the Centrifugo v2 client protocol.
//!
//! The messages of `client.proto` (repository `centrifugal/protocol`) written as `prost` types by
//! hand — same names, field numbers and types, no build script and no `protoc` — and the framing
//! the `centrifuge-protobuf` WebSocket subprotocol and the HTTP-streaming transport use: a sequence
//! of messages, each preceded by its length as a varint ([`encode_frame`], [`FrameDecoder`]).
//!
//! `bytes` fields are [`bytes::Bytes`], so decoding a frame held in `Bytes` shares its memory
//! instead of copying payloads out of it.
//!
//! Only what crosses the wire is here: [`Command`], [`Reply`], [`Push`] with every request, result
//! and push body, [`Error`], [`Publication`], [`ClientInfo`] and [`EmulationRequest`].

use std::collections::HashMap;

use bytes::{Buf, Bytes};
use prost::Message;

pub use prost;

/// A protocol error in a reply.
#[derive(Clone, PartialEq, Message)]
pub struct Error {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(bool, tag = "3")]
    pub temporary: bool,
}

/// The body of a `POST /emulation` request: a client's commands for a session of an HTTP-streaming
/// or SSE connection held by `node`.
#[derive(Clone, PartialEq, Message)]
pub struct EmulationRequest {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(string, tag = "2")]
    pub session: String,
    /// Length-delimited `Command`s, as on a WebSocket.
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
}

/// A client → server message: an `id` and one request (not a oneof, as in JSON).
#[derive(Clone, PartialEq, Message)]
pub struct Command {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(message, optional, tag = "4")]
    pub connect: Option<ConnectRequest>,
    #[prost(message, optional, tag = "5")]
    pub subscribe: Option<SubscribeRequest>,
    #[prost(message, optional, tag = "6")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    #[prost(message, optional, tag = "7")]
    pub publish: Option<PublishRequest>,
    #[prost(message, optional, tag = "8")]
    pub presence: Option<PresenceRequest>,
    #[prost(message, optional, tag = "9")]
    pub presence_stats: Option<PresenceStatsRequest>,
    #[prost(message, optional, tag = "10")]
    pub history: Option<HistoryRequest>,
    #[prost(message, optional, tag = "11")]
    pub ping: Option<PingRequest>,
    #[prost(message, optional, tag = "12")]
    pub send: Option<SendRequest>,
    #[prost(message, optional, tag = "13")]
    pub rpc: Option<RpcRequest>,
    #[prost(message, optional, tag = "14")]
    pub refresh: Option<RefreshRequest>,
    #[prost(message, optional, tag = "15")]
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// A server → client message: the answer to a command (`id` > 0) or a push (`id` 0). An empty
/// reply is the server's ping.
#[derive(Clone, PartialEq, Message)]
pub struct Reply {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "4")]
    pub push: Option<Push>,
    #[prost(message, optional, tag = "5")]
    pub connect: Option<ConnectResult>,
    #[prost(message, optional, tag = "6")]
    pub subscribe: Option<SubscribeResult>,
    #[prost(message, optional, tag = "7")]
    pub unsubscribe: Option<UnsubscribeResult>,
    #[prost(message, optional, tag = "8")]
    pub publish: Option<PublishResult>,
    #[prost(message, optional, tag = "9")]
    pub presence: Option<PresenceResult>,
    #[prost(message, optional, tag = "10")]
    pub presence_stats: Option<PresenceStatsResult>,
    #[prost(message, optional, tag = "11")]
    pub history: Option<HistoryResult>,
    #[prost(message, optional, tag = "12")]
    pub ping: Option<PingResult>,
    #[prost(message, optional, tag = "13")]
    pub rpc: Option<RpcResult>,
    #[prost(message, optional, tag = "14")]
    pub refresh: Option<RefreshResult>,
    #[prost(message, optional, tag = "15")]
    pub sub_refresh: Option<SubRefreshResult>,
}

/// An asynchronous server → client message about a channel (or the connection).
#[derive(Clone, PartialEq, Message)]
pub struct Push {
    /// A numeric channel id standing for `channel` (a bandwidth optimisation; 0 when unused).
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(string, tag = "2")]
    pub channel: String,
    #[prost(message, optional, tag = "4")]
    pub r#pub: Option<Publication>,
    #[prost(message, optional, tag = "5")]
    pub join: Option<Join>,
    #[prost(message, optional, tag = "6")]
    pub leave: Option<Leave>,
    #[prost(message, optional, tag = "7")]
    pub unsubscribe: Option<Unsubscribe>,
    #[prost(message, optional, tag = "8")]
    pub message: Option<PushMessage>,
    #[prost(message, optional, tag = "9")]
    pub subscribe: Option<Subscribe>,
    #[prost(message, optional, tag = "10")]
    pub connect: Option<Connect>,
    #[prost(message, optional, tag = "11")]
    pub disconnect: Option<Disconnect>,
    #[prost(message, optional, tag = "12")]
    pub refresh: Option<Refresh>,
}

/// Who a client is, as other clients see it.
#[derive(Clone, PartialEq, Message)]
pub struct ClientInfo {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(string, tag = "2")]
    pub client: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub conn_info: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub chan_info: Bytes,
}

/// A message in a channel.
#[derive(Clone, PartialEq, Message)]
pub struct Publication {
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    #[prost(message, optional, tag = "5")]
    pub info: Option<ClientInfo>,
    #[prost(uint64, tag = "6")]
    pub offset: u64,
    #[prost(map = "string, string", tag = "7")]
    pub tags: HashMap<String, String>,
    /// `data` is a Fossil delta against the previous publication's data.
    #[prost(bool, tag = "8")]
    pub delta: bool,
    #[prost(int64, tag = "9")]
    pub time: i64,
    #[prost(string, tag = "10")]
    pub channel: String,
    #[prost(string, tag = "11")]
    pub key: String,
    #[prost(bool, tag = "12")]
    pub removed: bool,
    #[prost(sint64, tag = "13")]
    pub score: i64,
    #[prost(string, tag = "14")]
    pub epoch: String,
    #[prost(bytes = "bytes", tag = "15")]
    pub prev_data: Bytes,
    #[prost(uint64, tag = "16")]
    pub version: u64,
}

/// Someone joined a channel.
#[derive(Clone, PartialEq, Message)]
pub struct Join {
    #[prost(message, optional, tag = "1")]
    pub info: Option<ClientInfo>,
}

/// Someone left a channel.
#[derive(Clone, PartialEq, Message)]
pub struct Leave {
    #[prost(message, optional, tag = "1")]
    pub info: Option<ClientInfo>,
}

/// The server unsubscribed the client from a channel.
#[derive(Clone, PartialEq, Message)]
pub struct Unsubscribe {
    #[prost(uint32, tag = "2")]
    pub code: u32,
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// The server subscribed the client to a channel (server-side subscriptions).
#[derive(Clone, PartialEq, Message)]
pub struct Subscribe {
    #[prost(bool, tag = "1")]
    pub recoverable: bool,
    #[prost(string, tag = "4")]
    pub epoch: String,
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    #[prost(bool, tag = "6")]
    pub positioned: bool,
    #[prost(bytes = "bytes", tag = "7")]
    pub data: Bytes,
}

/// An asynchronous message to one client (`client.proto`'s `Message`; renamed so it does not
/// shadow `prost::Message`).
#[derive(Clone, PartialEq, Message)]
pub struct PushMessage {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

/// The connect result pushed on unidirectional transports.
#[derive(Clone, PartialEq, Message)]
pub struct Connect {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
    #[prost(map = "string, message", tag = "4")]
    pub subs: HashMap<String, SubscribeResult>,
    #[prost(bool, tag = "5")]
    pub expires: bool,
    #[prost(uint32, tag = "6")]
    pub ttl: u32,
    #[prost(uint32, tag = "7")]
    pub ping: u32,
    #[prost(bool, tag = "8")]
    pub pong: bool,
    #[prost(string, tag = "9")]
    pub session: String,
    #[prost(string, tag = "10")]
    pub node: String,
    #[prost(int64, tag = "11")]
    pub time: i64,
}

/// Why the server closes a unidirectional connection.
#[derive(Clone, PartialEq, Message)]
pub struct Disconnect {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub reason: String,
    #[prost(bool, tag = "3")]
    pub reconnect: bool,
}

/// A unidirectional connection's new expiry.
#[derive(Clone, PartialEq, Message)]
pub struct Refresh {
    #[prost(bool, tag = "1")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConnectRequest {
    #[prost(string, tag = "1")]
    pub token: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
    #[prost(map = "string, message", tag = "3")]
    pub subs: HashMap<String, SubscribeRequest>,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    pub version: String,
    #[prost(map = "string, string", tag = "6")]
    pub headers: HashMap<String, String>,
    #[prost(int64, tag = "7")]
    pub flag: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConnectResult {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(bool, tag = "3")]
    pub expires: bool,
    #[prost(uint32, tag = "4")]
    pub ttl: u32,
    #[prost(bytes = "bytes", tag = "5")]
    pub data: Bytes,
    #[prost(map = "string, message", tag = "6")]
    pub subs: HashMap<String, SubscribeResult>,
    #[prost(uint32, tag = "7")]
    pub ping: u32,
    #[prost(bool, tag = "8")]
    pub pong: bool,
    #[prost(string, tag = "9")]
    pub session: String,
    #[prost(string, tag = "10")]
    pub node: String,
    #[prost(int64, tag = "11")]
    pub time: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct RefreshRequest {
    #[prost(string, tag = "1")]
    pub token: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RefreshResult {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(bool, tag = "3")]
    pub expires: bool,
    #[prost(uint32, tag = "4")]
    pub ttl: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct SubscribeRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(string, tag = "2")]
    pub token: String,
    #[prost(bool, tag = "3")]
    pub recover: bool,
    #[prost(string, tag = "6")]
    pub epoch: String,
    #[prost(uint64, tag = "7")]
    pub offset: u64,
    #[prost(bytes = "bytes", tag = "8")]
    pub data: Bytes,
    #[prost(bool, tag = "9")]
    pub positioned: bool,
    #[prost(bool, tag = "10")]
    pub recoverable: bool,
    #[prost(bool, tag = "11")]
    pub join_leave: bool,
    #[prost(string, tag = "12")]
    pub delta: String,
    /// A server-side filter over publication tags.
    #[prost(message, optional, tag = "13")]
    pub tf: Option<FilterNode>,
    #[prost(int64, tag = "14")]
    pub flag: i64,
    #[prost(int32, tag = "15")]
    pub r#type: i32,
    #[prost(int32, tag = "16")]
    pub phase: i32,
    #[prost(string, tag = "17")]
    pub cursor: String,
    #[prost(int32, tag = "18")]
    pub limit: i32,
    #[prost(bool, tag = "19")]
    pub asc: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct SubscribeResult {
    #[prost(bool, tag = "1")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
    #[prost(bool, tag = "3")]
    pub recoverable: bool,
    #[prost(string, tag = "6")]
    pub epoch: String,
    #[prost(message, repeated, tag = "7")]
    pub publications: Vec<Publication>,
    #[prost(bool, tag = "8")]
    pub recovered: bool,
    #[prost(uint64, tag = "9")]
    pub offset: u64,
    #[prost(bool, tag = "10")]
    pub positioned: bool,
    #[prost(bytes = "bytes", tag = "11")]
    pub data: Bytes,
    #[prost(bool, tag = "12")]
    pub was_recovering: bool,
    #[prost(bool, tag = "13")]
    pub delta: bool,
    #[prost(int64, tag = "14")]
    pub id: i64,
    #[prost(int32, tag = "15")]
    pub r#type: i32,
    #[prost(int32, tag = "16")]
    pub phase: i32,
    #[prost(string, tag = "17")]
    pub cursor: String,
    #[prost(message, repeated, tag = "18")]
    pub state: Vec<Publication>,
    #[prost(uint32, tag = "19")]
    pub publish_debounce: u32,
}

/// A map entry a client tracks, with the version it has.
#[derive(Clone, PartialEq, Message)]
pub struct KeyedItem {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct SubRefreshRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(string, tag = "2")]
    pub token: String,
    #[prost(message, repeated, tag = "3")]
    pub items: Vec<KeyedItem>,
    #[prost(string, repeated, tag = "4")]
    pub untrack_keys: Vec<String>,
    #[prost(int32, tag = "5")]
    pub r#type: i32,
    #[prost(string, tag = "6")]
    pub signature: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct SubRefreshResult {
    #[prost(bool, tag = "1")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
    #[prost(message, repeated, tag = "3")]
    pub items: Vec<Publication>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UnsubscribeRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct UnsubscribeResult {}

#[derive(Clone, PartialEq, Message)]
pub struct PublishRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
    /// 0 a stream publication, 1 a map entry.
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    #[prost(string, tag = "4")]
    pub key: String,
    #[prost(bool, tag = "5")]
    pub removed: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PublishResult {
    #[prost(int32, tag = "1")]
    pub debounce: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct PresenceRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PresenceResult {
    #[prost(map = "string, message", tag = "1")]
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PresenceStatsRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PresenceStatsResult {
    #[prost(uint32, tag = "1")]
    pub num_clients: u32,
    #[prost(uint32, tag = "2")]
    pub num_users: u32,
}

/// A place in a channel's stream.
#[derive(Clone, PartialEq, Message)]
pub struct StreamPosition {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(string, tag = "2")]
    pub epoch: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistoryRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(int32, tag = "7")]
    pub limit: i32,
    #[prost(message, optional, tag = "8")]
    pub since: Option<StreamPosition>,
    #[prost(bool, tag = "9")]
    pub reverse: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistoryResult {
    #[prost(message, repeated, tag = "1")]
    pub publications: Vec<Publication>,
    #[prost(string, tag = "2")]
    pub epoch: String,
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PingRequest {}

#[derive(Clone, PartialEq, Message)]
pub struct PingResult {}

#[derive(Clone, PartialEq, Message)]
pub struct RpcRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
    #[prost(string, tag = "2")]
    pub method: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RpcResult {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct SendRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

/// A server-side filter over publication tags: a leaf comparison (`op` empty) or `and`/`or`/`not`
/// over `nodes`.
#[derive(Clone, PartialEq, Message)]
pub struct FilterNode {
    #[prost(string, tag = "1")]
    pub op: String,
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(string, tag = "3")]
    pub cmp: String,
    #[prost(string, tag = "4")]
    pub val: String,
    #[prost(string, repeated, tag = "5")]
    pub vals: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub nodes: Vec<FilterNode>,
}

/// Appends `message` to `out`, preceded by its length as a varint (one element of a frame).
pub fn encode_delimited<M: Message>(message: &M, out: &mut Vec<u8>) {
    // Writing into a Vec only fails when it cannot grow, which aborts anyway.
    message
        .encode_length_delimited(out)
        .expect("a Vec grows to fit");
}

/// Encodes `messages` as one frame: each preceded by its length as a varint.
pub fn encode_frame<'a, M: Message + 'a>(messages: impl IntoIterator<Item = &'a M>) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        encode_delimited(message, &mut out);
    }
    out
}

/// Reads the length-delimited messages of a frame one by one. After the first error it yields
/// nothing more: a frame is not resynchronised past a bad length.
pub struct FrameDecoder<M> {
    rest: Bytes,
    failed: bool,
    _message: std::marker::PhantomData<M>,
}

impl<M> FrameDecoder<M> {
    /// A decoder over `frame`; the messages it yields share `frame`'s memory for `bytes` fields.
    pub fn new(frame: Bytes) -> Self {
        FrameDecoder {
            rest: frame,
            failed: false,
            _message: std::marker::PhantomData,
        }
    }
}

/// Why a frame's message could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// The length prefix announces more bytes than the frame holds.
    Truncated { announced: u64, left: usize },
    /// A bad varint or a body that is not the expected message.
    Decode(prost::DecodeError),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { announced, left } => write!(
                f,
                "truncated message: length {announced} but {left} bytes left in the frame"
            ),
            FrameError::Decode(e) => write!(f, "invalid message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<prost::DecodeError> for FrameError {
    fn from(e: prost::DecodeError) -> Self {
        FrameError::Decode(e)
    }
}

impl<M: Message + Default> Iterator for FrameDecoder<M> {
    type Item = Result<M, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || !self.rest.has_remaining() {
            return None;
        }
        let decoded = decode_one(&mut self.rest);
        self.failed = decoded.is_err();
        Some(decoded)
    }
}

/// Decodes one length-delimited message from the front of `buf`, advancing past it. A length
/// beyond what `buf` holds is an error (a truncated message), never a wait for more.
fn decode_one<M: Message + Default>(buf: &mut Bytes) -> Result<M, FrameError> {
    let announced = prost::encoding::decode_varint(buf)?;
    let left = buf.remaining();
    let len = usize::try_from(announced)
        .ok()
        .filter(|len| *len <= left)
        .ok_or(FrameError::Truncated { announced, left })?;
    Ok(M::decode(buf.split_to(len))?)
}

/// Decodes every length-delimited message of `frame`; the first error ends the frame.
pub fn decode_frame<M: Message + Default>(frame: Bytes) -> Result<Vec<M>, FrameError> {
    FrameDecoder::new(frame).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_order() {
        let commands = [
            Command {
                id: 1,
                connect: Some(ConnectRequest {
                    token: "t".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Command {
                id: 2,
                publish: Some(PublishRequest {
                    channel: "chat".into(),
                    data: Bytes::from_static(b"\x00\xffbinary"),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let frame = encode_frame(&commands);
        assert_eq!(decode_frame::<Command>(frame.into()).unwrap(), commands);
    }

    #[test]
    fn the_empty_reply_is_one_zero_byte() {
        // The server ping: an empty Reply, length 0.
        assert_eq!(encode_frame(&[Reply::default()]), vec![0]);
        assert_eq!(
            decode_frame::<Reply>(Bytes::from_static(&[0, 0])).unwrap(),
            vec![Reply::default(), Reply::default()]
        );
    }

    #[test]
    fn truncated_and_bad_varints_are_errors() {
        // A length of 5 with 2 bytes behind it.
        assert!(decode_frame::<Command>(Bytes::from_static(&[5, 8, 1])).is_err());
        // A varint that never ends.
        assert!(decode_frame::<Command>(Bytes::from_static(&[0xff; 11])).is_err());
        // A message whose body is not a Command (a field with wire type 7).
        assert!(decode_frame::<Command>(Bytes::from_static(&[1, 0x0f])).is_err());
    }

    #[test]
    fn field_numbers_match_client_proto() {
        // Reply{id: 3, subscribe: SubscribeResult{epoch: "e", offset: 7}}: field 1 varint, field 6
        // message holding field 6 string and field 9 varint.
        let reply = Reply {
            id: 3,
            subscribe: Some(SubscribeResult {
                epoch: "e".into(),
                offset: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            reply.encode_to_vec(),
            vec![0x08, 3, 0x32, 5, 0x32, 1, b'e', 0x48, 7]
        );
    }
}

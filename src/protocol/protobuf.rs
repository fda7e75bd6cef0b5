//! The Protobuf encoding (`centrifuge-protobuf`): client frames decoded into the same
//! [`Command`]s the JSON encoding produces, and the same [`Reply`]s encoded as `client.proto`'s
//! messages. A frame is a sequence of messages, each preceded by its length as a varint.
//!
//! Payloads (`data`, `info`) are bytes in Protobuf. JSON text in those bytes is kept as JSON, so
//! it reaches JSON clients, the HTTP API and the backend unchanged, and comes back to Protobuf
//! clients byte for byte. A publication's data may be any bytes: bytes that are not JSON make a
//! binary publication ([`Publication::binary`]), which Protobuf subscribers, history and recovery
//! return byte for byte and JSON clients get as a base64 string. Connect, subscribe and rpc data
//! may be any bytes too: bytes that are not JSON reach the application backend as `b64data` (and
//! the built-in `echo` returns them as they are). Map entries are JSON only: other bytes are
//! refused with error 107 (the command is answered, the connection stays).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use switchboard_proto as pb;
use switchboard_proto::prost::Message as _;

use super::{
    ChannelRequest, ClientInfo, Command, ConnectRequest, ConnectResult, Error, HistoryRequest,
    Payload, Publication, PublishRequest, Push, PushBody, RefreshRequest, Reply, ReplyResult,
    RpcRequest, SendRequest, StreamPosition, SubRefreshRequest, SubscribeRequest, SubscribeResult,
};

/// What a payload that is not JSON gets from the server where only JSON is kept.
pub const NOT_JSON: &str = "bad request: data is not a JSON value";

/// Why a Protobuf frame could not be decoded.
pub type FrameError = pb::FrameError;

/// Splits a client frame into commands. The first message that cannot be read ends the frame
/// with its error (the commands before it are yielded first).
pub fn decode_frame(frame: Bytes) -> impl Iterator<Item = Result<Command, FrameError>> {
    pb::FrameDecoder::<pb::Command>::new(frame).map(|command| command.map(Command::from))
}

/// The server ping in this encoding: an empty reply (length 0).
pub const PING: &[u8] = &[0];

/// A payload from a client: `None` when empty (the field was absent), an error when the bytes are
/// not one JSON value.
fn payload(bytes: Bytes, invalid: &mut Option<&'static str>) -> Option<Payload> {
    if bytes.is_empty() {
        return None;
    }
    let parsed = super::json_from_bytes(&bytes);
    if parsed.is_none() {
        *invalid = Some(NOT_JSON);
    }
    parsed
}

/// A payload from a client that may be any bytes: `None` when empty (the field was absent),
/// else JSON when the bytes are one JSON value and a binary payload otherwise (the flag).
fn any_payload(bytes: Bytes) -> (Option<Payload>, bool) {
    if bytes.is_empty() {
        return (None, false);
    }
    let (payload, binary) = super::payload_from_bytes(&bytes);
    (Some(payload), binary)
}

/// A payload's bytes: its JSON text.
fn bytes_of(payload: &Payload) -> Bytes {
    Bytes::copy_from_slice(payload.get().as_bytes())
}

fn optional_bytes(payload: &Option<Payload>) -> Bytes {
    payload.as_ref().map(bytes_of).unwrap_or_default()
}

fn subscribe_request(r: pb::SubscribeRequest) -> SubscribeRequest {
    let (data, binary) = any_payload(r.data);
    SubscribeRequest {
        channel: r.channel,
        token: r.token,
        data,
        binary,
        recover: r.recover,
        offset: r.offset,
        epoch: r.epoch,
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
        flag: r.flag as u64,
        kind: r.r#type,
        phase: r.phase,
        cursor: r.cursor,
        limit: r.limit,
        delta: r.delta,
    }
}

impl From<pb::Command> for Command {
    fn from(c: pb::Command) -> Self {
        let mut invalid = None;
        let channel = |channel: String| ChannelRequest { channel };
        let connect = c.connect.map(|r| {
            let (data, binary) = any_payload(r.data);
            ConnectRequest {
                token: r.token,
                data,
                binary,
                name: r.name,
                version: r.version,
                subs: r
                    .subs
                    .into_iter()
                    .map(|(channel, sub)| (channel, subscribe_request(sub)))
                    .collect(),
                headers: (!r.headers.is_empty()).then_some(r.headers),
            }
        });
        let subscribe = c.subscribe.map(subscribe_request);
        let publish = c.publish.map(|r| {
            // A stream publication may carry any bytes (a map entry is JSON only).
            let (data, binary) = if r.r#type == 0 {
                any_payload(r.data)
            } else {
                (payload(r.data, &mut invalid), false)
            };
            PublishRequest {
                channel: r.channel,
                data,
                kind: r.r#type,
                key: r.key,
                removed: r.removed,
                binary,
            }
        });
        let rpc = c.rpc.map(|r| {
            let (data, binary) = any_payload(r.data);
            RpcRequest {
                method: r.method,
                data,
                binary,
            }
        });
        Command {
            id: c.id,
            connect,
            subscribe,
            unsubscribe: c.unsubscribe.map(|r| channel(r.channel)),
            publish,
            presence: c.presence.map(|r| channel(r.channel)),
            presence_stats: c.presence_stats.map(|r| channel(r.channel)),
            history: c.history.map(|r| HistoryRequest {
                channel: r.channel,
                limit: r.limit,
                since: r.since.map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch,
                }),
                reverse: r.reverse,
            }),
            ping: c.ping.map(|_| serde::de::IgnoredAny),
            // Nothing handles a `send`'s data (see [`SendRequest`]), whatever its bytes.
            send: c.send.map(|_| SendRequest {}),
            rpc,
            refresh: c.refresh.map(|r| RefreshRequest { token: r.token }),
            sub_refresh: c.sub_refresh.map(|r| SubRefreshRequest {
                channel: r.channel,
                token: r.token,
            }),
            invalid,
        }
    }
}

impl Reply {
    /// The reply as one length-delimited Protobuf message.
    pub fn encode_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::new();
        pb::encode_delimited(&self.to_protobuf(), &mut out);
        out
    }

    fn to_protobuf(&self) -> pb::Reply {
        let mut reply = pb::Reply {
            id: self.id,
            error: self.error.as_ref().map(error),
            ..Default::default()
        };
        match &self.result {
            None => {}
            Some(ReplyResult::Push(push)) => reply.push = Some(push_message(push)),
            Some(ReplyResult::Connect(r)) => reply.connect = Some(connect_result(r)),
            Some(ReplyResult::Subscribe(r)) => reply.subscribe = Some(subscribe_result(r)),
            Some(ReplyResult::Unsubscribe(_)) => reply.unsubscribe = Some(Default::default()),
            Some(ReplyResult::Publish(_)) => reply.publish = Some(Default::default()),
            Some(ReplyResult::Presence(r)) => {
                reply.presence = Some(pb::PresenceResult {
                    presence: r
                        .presence
                        .iter()
                        .map(|(client, info)| (client.clone(), client_info(info)))
                        .collect(),
                })
            }
            Some(ReplyResult::PresenceStats(r)) => {
                reply.presence_stats = Some(pb::PresenceStatsResult {
                    num_clients: saturate(r.num_clients),
                    num_users: saturate(r.num_users),
                })
            }
            Some(ReplyResult::History(r)) => {
                reply.history = Some(pb::HistoryResult {
                    publications: r.publications.iter().map(|p| publication(p)).collect(),
                    epoch: r.epoch.clone(),
                    offset: r.offset,
                })
            }
            Some(ReplyResult::Ping(_)) => reply.ping = Some(Default::default()),
            Some(ReplyResult::Rpc(r)) => {
                reply.rpc = Some(pb::RpcResult {
                    data: r
                        .data
                        .as_ref()
                        .map(|data| super::payload_bytes(data, r.binary))
                        .unwrap_or_default(),
                })
            }
            Some(ReplyResult::Refresh(r)) => {
                reply.refresh = Some(pb::RefreshResult {
                    client: r.client.clone(),
                    version: r.version.clone(),
                    expires: r.expires,
                    ttl: r.ttl,
                })
            }
            Some(ReplyResult::SubRefresh(r)) => {
                reply.sub_refresh = Some(pb::SubRefreshResult {
                    expires: r.expires,
                    ttl: r.ttl,
                    items: Vec::new(),
                })
            }
        }
        reply
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn error(e: &Error) -> pb::Error {
    pb::Error {
        code: e.code,
        message: e.message.clone(),
        temporary: e.temporary,
    }
}

/// Who a client is, in Protobuf.
pub fn client_info(info: &ClientInfo) -> pb::ClientInfo {
    pb::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: optional_bytes(&info.conn_info),
        chan_info: optional_bytes(&info.chan_info),
    }
}

/// A publication in Protobuf, its payload's JSON text as `data`.
pub fn publication(p: &Publication) -> pb::Publication {
    pb::Publication {
        data: p.data_bytes(),
        ..publication_without_data(p)
    }
}

fn subscribe_result(r: &SubscribeResult) -> pb::SubscribeResult {
    let publications = |list: &[Arc<Publication>]| list.iter().map(|p| publication(p)).collect();
    pb::SubscribeResult {
        expires: r.expires,
        ttl: r.ttl,
        recoverable: r.recoverable,
        epoch: r.epoch.clone(),
        publications: publications(&r.publications),
        recovered: r.recovered,
        offset: r.offset,
        positioned: r.positioned,
        data: optional_bytes(&r.data),
        was_recovering: r.was_recovering,
        delta: r.delta,
        r#type: r.kind,
        phase: r.phase,
        cursor: r.cursor.clone(),
        state: publications(&r.state),
        ..Default::default()
    }
}

fn connect_result(r: &ConnectResult) -> pb::ConnectResult {
    pb::ConnectResult {
        client: r.client.clone(),
        version: r.version.clone(),
        expires: r.expires,
        ttl: r.ttl,
        data: optional_bytes(&r.data),
        subs: subscribe_results(&r.subs),
        ping: r.ping,
        pong: r.pong,
        session: r.session.clone(),
        node: r.node.clone(),
        time: i64::try_from(r.time).unwrap_or(i64::MAX),
    }
}

fn subscribe_results(
    subs: &HashMap<String, SubscribeResult>,
) -> HashMap<String, pb::SubscribeResult> {
    subs.iter()
        .map(|(channel, result)| (channel.clone(), subscribe_result(result)))
        .collect()
}

fn push_message(push: &Push) -> pb::Push {
    let mut out = pb::Push {
        channel: push.channel.clone(),
        ..Default::default()
    };
    match &push.body {
        PushBody::Publication(p) => out.r#pub = Some(publication(p)),
        PushBody::Join { info } => {
            out.join = Some(pb::Join {
                info: Some(client_info(info)),
            })
        }
        PushBody::Leave { info } => {
            out.leave = Some(pb::Leave {
                info: Some(client_info(info)),
            })
        }
        PushBody::Unsubscribe { code, reason } => {
            out.unsubscribe = Some(pb::Unsubscribe {
                code: *code,
                reason: reason.clone(),
            })
        }
        PushBody::Subscribe(r) => {
            out.subscribe = Some(pb::Subscribe {
                recoverable: r.recoverable,
                epoch: r.epoch.clone(),
                offset: r.offset,
                positioned: r.positioned,
                data: optional_bytes(&r.data),
            })
        }
        PushBody::Message { data } => {
            out.message = Some(pb::PushMessage {
                data: bytes_of(data),
            })
        }
        PushBody::Connect(r) => {
            out.connect = Some(pb::Connect {
                client: r.client.clone(),
                version: r.version.clone(),
                data: optional_bytes(&r.data),
                subs: subscribe_results(&r.subs),
                expires: r.expires,
                ttl: r.ttl,
                ping: r.ping,
                pong: r.pong,
                session: r.session.clone(),
                node: r.node.clone(),
                time: i64::try_from(r.time).unwrap_or(i64::MAX),
            })
        }
        PushBody::Disconnect { code, reason } => {
            out.disconnect = Some(pb::Disconnect {
                code: *code,
                reason: reason.clone(),
                reconnect: false,
            })
        }
        PushBody::Refresh { expires, ttl } => {
            out.refresh = Some(pb::Refresh {
                expires: *expires,
                ttl: *ttl,
            })
        }
    }
    out
}

/// A publication pushed to a delta subscriber: `data` is the payload's bytes or, with `delta`,
/// a Fossil delta against the previous payload's bytes (centrifuge-js applies it to bytes).
pub fn encode_delta_push(channel: &str, p: &Publication, data: Bytes, delta: bool) -> Bytes {
    let reply = pb::Reply {
        push: Some(pb::Push {
            channel: channel.to_string(),
            r#pub: Some(pb::Publication {
                data,
                delta,
                ..publication_without_data(p)
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(reply.encoded_len() + 5);
    pb::encode_delimited(&reply, &mut out);
    Bytes::from(out)
}

fn publication_without_data(p: &Publication) -> pb::Publication {
    pb::Publication {
        info: p.info.as_ref().map(client_info),
        offset: p.offset,
        tags: p.tags.clone(),
        key: p.key.clone(),
        removed: p.removed,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::protocol::Request;

    fn frame(commands: &[pb::Command]) -> Bytes {
        Bytes::from(pb::encode_frame(commands))
    }

    #[test]
    fn commands_decode_to_the_json_paths_requests() {
        let frame = frame(&[
            pb::Command {
                id: 1,
                connect: Some(pb::ConnectRequest {
                    token: "t".into(),
                    data: Bytes::from_static(br#"{"a":1}"#),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::Command {
                id: 2,
                publish: Some(pb::PublishRequest {
                    channel: "c".into(),
                    data: Bytes::from_static(b"\x00\x01"),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::Command {
                id: 3,
                rpc: Some(pb::RpcRequest {
                    method: "m".into(),
                    data: Bytes::from_static(b"\xff"),
                }),
                ..Default::default()
            },
            pb::Command {
                id: 4,
                publish: Some(pb::PublishRequest {
                    channel: "map".into(),
                    r#type: 1,
                    key: "k".into(),
                    data: Bytes::from_static(b"\xff"),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::Command::default(),
        ]);
        let requests: Vec<Request> = decode_frame(frame).map(|c| c.unwrap().request()).collect();
        match &requests[0] {
            Request::Connect(r) => {
                assert_eq!(r.token, "t");
                assert_eq!(r.data.as_ref().unwrap().get(), r#"{"a":1}"#);
            }
            other => panic!("{other:?}"),
        }
        match &requests[1] {
            Request::Publish(r) => {
                assert!(r.binary);
                assert_eq!(r.data.as_ref().unwrap().get(), r#""AAE=""#);
            }
            other => panic!("{other:?}"),
        }
        match &requests[2] {
            Request::Rpc(r) => {
                assert!(r.binary, "rpc data may be any bytes");
                assert_eq!(r.data.as_ref().unwrap().get(), r#""/w==""#);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(requests[3], Request::Invalid(NOT_JSON)),
            "a map entry is JSON only"
        );
        assert!(matches!(requests[4], Request::Pong));
    }

    #[test]
    fn a_truncated_message_ends_the_frame_after_the_good_ones() {
        let mut bytes = pb::encode_frame(&[pb::Command {
            id: 1,
            ping: Some(pb::PingRequest {}),
            ..Default::default()
        }]);
        bytes.extend_from_slice(&[9, 8]);
        let mut commands = decode_frame(Bytes::from(bytes));
        assert!(matches!(commands.next(), Some(Ok(_))));
        assert!(matches!(commands.next(), Some(Err(_))));
        assert!(commands.next().is_none());
    }

    #[test]
    fn replies_carry_payloads_as_their_json_text() {
        let data: Payload = Arc::from(RawValue::from_string(r#"{"t":1}"#.into()).unwrap());
        let push = Reply::push(Push {
            channel: "chat".into(),
            body: PushBody::Publication(Arc::new(Publication {
                data,
                info: None,
                offset: 4,
                tags: HashMap::new(),
                key: String::new(),
                removed: false,
                binary: false,
            })),
        });
        let bytes = push.encode_protobuf();
        let decoded = pb::decode_frame::<pb::Reply>(Bytes::from(bytes)).unwrap();
        let publication = decoded[0].push.as_ref().unwrap().r#pub.as_ref().unwrap();
        assert_eq!(&publication.data[..], br#"{"t":1}"#);
        assert_eq!(publication.offset, 4);
        assert_eq!(decoded[0].push.as_ref().unwrap().channel, "chat");
    }
}

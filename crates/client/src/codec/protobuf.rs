//! The Protobuf encoding: the `centrifuge-protobuf` WebSocket subprotocol, binary messages of
//! length-delimited `Command`s and `Reply`s (`client.proto`, as the `switchboard-proto` crate
//! types it).
//!
//! Payloads (`data`, `info`) are bytes in Protobuf. Outgoing JSON payloads are written as their
//! JSON text, so JSON clients of the same channel read them as they were given; raw bytes
//! ([`Payload::Binary`]) go as they are. A publication keeps the exact bytes it came with
//! ([`Publication::bytes`]): bytes that are one JSON value are also read as that value, other
//! bytes make a binary publication whose `data` is their base64, as JSON clients see it. An
//! rpc answer keeps its bytes too. Other payloads that are not JSON (the server sends none)
//! become a JSON string when they are UTF-8 text, else an array of the byte values, so nothing
//! the server sends fails to decode.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;
use switchboard_proto as proto;
use tokio_tungstenite::tungstenite::Message;

use super::{Codec, Outgoing};
use crate::protocol::{
    ClientInfo, CodeReason, Command, ConnectResult, ErrorBody, HistoryResult, JoinLeave,
    MessagePush, Payload, PresenceResult, PresenceStats, Publication, Push, RefreshResult, Reply,
    Request, RpcResult, SubscribeResult,
};
use crate::Error;

/// The Protobuf encoding (see the module doc); select it with
/// [`crate::ClientBuilder::codec`]`(ProtobufCodec)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtobufCodec;

/// The WebSocket subprotocol that selects the Protobuf encoding.
pub const SUBPROTOCOL: &str = "centrifuge-protobuf";

impl Codec for ProtobufCodec {
    fn subprotocol(&self) -> Option<&'static str> {
        Some(SUBPROTOCOL)
    }

    fn carries_bytes(&self) -> bool {
        true
    }

    fn encode(&self, item: &Outgoing, frame: &mut Vec<u8>) -> Result<(), Error> {
        let command = match item {
            Outgoing::Command(command) => command_to_proto(command),
            // The pong: an empty command.
            Outgoing::Pong => proto::Command::default(),
        };
        proto::encode_delimited(&command, frame);
        Ok(())
    }

    fn finish(&self, frame: Vec<u8>) -> Result<Message, Error> {
        Ok(Message::binary(frame))
    }

    fn decode(&self, message: &Message) -> Result<Vec<Reply>, Error> {
        let frame = match message {
            Message::Binary(frame) => frame.clone(),
            Message::Text(_) => {
                return Err(Error::Protocol(
                    "a text message on a Protobuf connection".into(),
                ))
            }
            _ => return Ok(Vec::new()),
        };
        proto::FrameDecoder::<proto::Reply>::new(frame)
            .map(|reply| {
                reply.map(reply_from_proto).map_err(|e| {
                    Error::Protocol(format!("unreadable message from the server: {e}"))
                })
            })
            .collect()
    }
}

/// A payload as bytes: its JSON text (nothing for `null`, which Protobuf cannot tell from
/// absent).
fn payload(value: &Value) -> Bytes {
    match value {
        Value::Null => Bytes::new(),
        value => Bytes::from(value.to_string()),
    }
}

/// A command's payload as bytes: a JSON value's text, or the bytes as given.
fn command_payload(data: &Payload) -> Bytes {
    match data {
        Payload::Json(value) => payload(value),
        Payload::Binary(bytes) => bytes.clone(),
    }
}

fn optional_payload(value: &Option<Value>) -> Bytes {
    value.as_ref().map(payload).unwrap_or_default()
}

/// Bytes as a JSON value (see the module doc): JSON, else a string, else the byte values.
fn value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    if let Ok(value) = serde_json::from_slice(bytes) {
        return value;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => Value::Array(bytes.iter().map(|&b| Value::from(b)).collect()),
    }
}

fn optional_value(bytes: &[u8]) -> Option<Value> {
    (!bytes.is_empty()).then(|| value(bytes))
}

fn command_to_proto(command: &Command) -> proto::Command {
    let mut out = proto::Command {
        id: command.id,
        ..Default::default()
    };
    match &command.request {
        Request::Connect(c) => {
            out.connect = Some(proto::ConnectRequest {
                token: c.token.clone().unwrap_or_default(),
                data: optional_payload(&c.data),
                name: c.name.clone(),
                version: c.version.clone(),
                headers: c.headers.clone(),
                subs: c
                    .subs
                    .iter()
                    .map(|(channel, r)| {
                        let request = proto::SubscribeRequest {
                            recover: r.recover,
                            offset: r.offset,
                            epoch: r.epoch.clone(),
                            ..Default::default()
                        };
                        (channel.clone(), request)
                    })
                    .collect(),
                ..Default::default()
            })
        }
        Request::Subscribe(s) => {
            out.subscribe = Some(proto::SubscribeRequest {
                channel: s.channel.clone(),
                token: s.token.clone().unwrap_or_default(),
                data: optional_payload(&s.data),
                recover: s.recover,
                offset: s.offset,
                epoch: s.epoch.clone(),
                join_leave: s.join_leave,
                ..Default::default()
            })
        }
        Request::Unsubscribe { channel } => {
            out.unsubscribe = Some(proto::UnsubscribeRequest {
                channel: channel.clone(),
            })
        }
        Request::Publish { channel, data } => {
            out.publish = Some(proto::PublishRequest {
                channel: channel.clone(),
                data: command_payload(data),
                ..Default::default()
            })
        }
        Request::Presence { channel } => {
            out.presence = Some(proto::PresenceRequest {
                channel: channel.clone(),
            })
        }
        Request::PresenceStats { channel } => {
            out.presence_stats = Some(proto::PresenceStatsRequest {
                channel: channel.clone(),
            })
        }
        Request::History(h) => {
            out.history = Some(proto::HistoryRequest {
                channel: h.channel.clone(),
                limit: h.limit,
                since: h.since.as_ref().map(|p| proto::StreamPosition {
                    offset: p.offset,
                    epoch: p.epoch.clone(),
                }),
                reverse: h.reverse,
            })
        }
        Request::Rpc { method, data } => {
            out.rpc = Some(proto::RpcRequest {
                method: method.clone(),
                data: command_payload(data),
            })
        }
        Request::Refresh { token } => {
            out.refresh = Some(proto::RefreshRequest {
                token: token.clone(),
            })
        }
        Request::SubRefresh { channel, token } => {
            out.sub_refresh = Some(proto::SubRefreshRequest {
                channel: channel.clone(),
                token: token.clone(),
                ..Default::default()
            })
        }
        Request::Send { data } => {
            out.send = Some(proto::SendRequest {
                data: payload(data),
            })
        }
    }
    out
}

fn reply_from_proto(r: proto::Reply) -> Reply {
    Reply {
        id: r.id,
        error: r.error.map(|e| ErrorBody {
            code: e.code,
            message: e.message,
            temporary: e.temporary,
        }),
        push: r.push.map(push_from_proto),
        connect: r.connect.map(connect_from_proto),
        subscribe: r.subscribe.map(subscribe_from_proto),
        unsubscribe: r.unsubscribe.map(|_| Value::Object(Default::default())),
        publish: r.publish.map(|_| Value::Object(Default::default())),
        presence: r.presence.map(|p| PresenceResult {
            presence: p
                .presence
                .into_iter()
                .map(|(client, info)| (client, info_from_proto(info)))
                .collect(),
        }),
        presence_stats: r.presence_stats.map(|s| PresenceStats {
            num_clients: s.num_clients,
            num_users: s.num_users,
        }),
        history: r.history.map(|h| HistoryResult {
            publications: h
                .publications
                .into_iter()
                .map(publication_from_proto)
                .collect(),
            epoch: h.epoch,
            offset: h.offset,
        }),
        rpc: r.rpc.map(|r| RpcResult {
            data: value(&r.data),
            bytes: Some(r.data),
        }),
        refresh: r.refresh.map(|r| RefreshResult {
            expires: r.expires,
            ttl: r.ttl,
        }),
        sub_refresh: r.sub_refresh.map(|r| RefreshResult {
            expires: r.expires,
            ttl: r.ttl,
        }),
    }
}

fn info_from_proto(info: proto::ClientInfo) -> ClientInfo {
    ClientInfo {
        user: info.user,
        client: info.client,
        conn_info: optional_value(&info.conn_info),
        chan_info: optional_value(&info.chan_info),
    }
}

/// A publication with its exact bytes: JSON text is read as its value, other bytes make a
/// binary publication whose `data` is their base64, as JSON clients see it.
fn publication_from_proto(p: proto::Publication) -> Publication {
    let json = if p.data.is_empty() {
        Some(Value::Null)
    } else {
        serde_json::from_slice(&p.data).ok()
    };
    let binary = json.is_none();
    let data = json.unwrap_or_else(|| {
        Value::String(base64::engine::general_purpose::STANDARD.encode(&p.data))
    });
    Publication {
        data,
        binary,
        bytes: Some(p.data),
        info: p.info.map(info_from_proto),
        offset: p.offset,
        tags: p.tags,
    }
}

fn connect_from_proto(c: proto::ConnectResult) -> ConnectResult {
    ConnectResult {
        client: c.client,
        version: c.version,
        expires: c.expires,
        ttl: c.ttl,
        data: optional_value(&c.data),
        subs: c
            .subs
            .into_iter()
            .map(|(channel, s)| (channel, subscribe_from_proto(s)))
            .collect::<HashMap<_, _>>(),
        ping: c.ping,
        pong: c.pong,
    }
}

fn subscribe_from_proto(s: proto::SubscribeResult) -> SubscribeResult {
    SubscribeResult {
        expires: s.expires,
        ttl: s.ttl,
        recoverable: s.recoverable,
        epoch: s.epoch,
        publications: s
            .publications
            .into_iter()
            .map(publication_from_proto)
            .collect(),
        recovered: s.recovered,
        offset: s.offset,
        positioned: s.positioned,
        data: optional_value(&s.data),
        was_recovering: s.was_recovering,
    }
}

fn push_from_proto(p: proto::Push) -> Push {
    Push {
        channel: p.channel,
        publication: p.r#pub.map(publication_from_proto),
        join: p.join.map(|j| JoinLeave {
            info: j.info.map(info_from_proto).unwrap_or_default(),
        }),
        leave: p.leave.map(|l| JoinLeave {
            info: l.info.map(info_from_proto).unwrap_or_default(),
        }),
        unsubscribe: p.unsubscribe.map(|u| CodeReason {
            code: u.code,
            reason: u.reason,
        }),
        subscribe: p.subscribe.map(|s| SubscribeResult {
            recoverable: s.recoverable,
            epoch: s.epoch,
            offset: s.offset,
            positioned: s.positioned,
            data: optional_value(&s.data),
            ..Default::default()
        }),
        message: p.message.map(|m| MessagePush {
            data: value(&m.data),
        }),
        disconnect: p.disconnect.map(|d| CodeReason {
            code: d.code,
            reason: d.reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HistoryRequest, StreamPosition, SubscribeRequest};
    use serde_json::json;

    fn encode_all(items: &[Outgoing]) -> Vec<u8> {
        let mut frame = Vec::new();
        for item in items {
            ProtobufCodec.encode(item, &mut frame).unwrap();
        }
        frame
    }

    #[test]
    fn commands_become_length_delimited_protobuf_with_json_payloads() {
        let frame = encode_all(&[
            Outgoing::Command(Command {
                id: 3,
                request: Request::Publish {
                    channel: "chat".into(),
                    data: json!({"text": "hi"}).into(),
                },
            }),
            Outgoing::Pong,
            Outgoing::Command(Command {
                id: 4,
                request: Request::History(HistoryRequest {
                    channel: "chat".into(),
                    limit: 10,
                    since: Some(StreamPosition {
                        offset: 7,
                        epoch: "e".into(),
                    }),
                    reverse: true,
                }),
            }),
            Outgoing::Command(Command {
                id: 5,
                request: Request::Subscribe(SubscribeRequest {
                    channel: "chat".into(),
                    recover: true,
                    offset: 2,
                    epoch: "e".into(),
                    ..Default::default()
                }),
            }),
        ]);
        let Message::Binary(bytes) = ProtobufCodec.finish(frame).unwrap() else {
            panic!("a binary message")
        };
        let commands: Vec<proto::Command> = proto::decode_frame(bytes).unwrap();
        assert_eq!(commands.len(), 4);
        let publish = commands[0].publish.as_ref().unwrap();
        assert_eq!((commands[0].id, publish.channel.as_str()), (3, "chat"));
        assert_eq!(&publish.data[..], br#"{"text":"hi"}"#);
        assert_eq!(commands[1], proto::Command::default(), "the pong is empty");
        let history = commands[2].history.as_ref().unwrap();
        assert_eq!((history.limit, history.reverse), (10, true));
        assert_eq!(history.since.as_ref().unwrap().offset, 7);
        let subscribe = commands[3].subscribe.as_ref().unwrap();
        assert!(subscribe.recover);
        assert_eq!((subscribe.offset, subscribe.epoch.as_str()), (2, "e"));
    }

    #[test]
    fn replies_pushes_and_pings_decode_with_payloads_as_json() {
        let replies = [
            proto::Reply {
                id: 1,
                connect: Some(proto::ConnectResult {
                    client: "c1".into(),
                    ping: 25,
                    pong: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
            proto::Reply {
                push: Some(proto::Push {
                    channel: "chat".into(),
                    r#pub: Some(proto::Publication {
                        data: Bytes::from_static(br#"{"t":1}"#),
                        offset: 8,
                        info: Some(proto::ClientInfo {
                            user: "u".into(),
                            client: "c2".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            proto::Reply::default(),
            proto::Reply {
                id: 2,
                error: Some(proto::Error {
                    code: 103,
                    message: "permission denied".into(),
                    temporary: false,
                }),
                ..Default::default()
            },
        ];
        let frame = proto::encode_frame(replies.iter());
        let decoded = ProtobufCodec.decode(&Message::binary(frame)).unwrap();
        assert_eq!(decoded.len(), 4);
        let connect = decoded[0].connect.as_ref().unwrap();
        assert_eq!(
            (connect.client.as_str(), connect.ping, connect.pong),
            ("c1", 25, true)
        );
        let publication = decoded[1]
            .push
            .as_ref()
            .unwrap()
            .publication
            .as_ref()
            .unwrap();
        assert_eq!(publication.data, json!({"t": 1}));
        assert_eq!(publication.offset, 8);
        assert_eq!(publication.info.as_ref().unwrap().client, "c2");
        assert!(decoded[2].is_ping());
        assert_eq!(decoded[3].error.as_ref().unwrap().code, 103);
    }

    #[test]
    fn raw_bytes_go_as_given_and_publications_keep_their_exact_bytes() {
        let raw = Bytes::from_static(&[0, 255, 1, 2]);
        let frame = encode_all(&[Outgoing::Command(Command {
            id: 1,
            request: Request::Publish {
                channel: "bin".into(),
                data: Payload::Binary(raw.clone()),
            },
        })]);
        let commands: Vec<proto::Command> = proto::decode_frame(Bytes::from(frame)).unwrap();
        assert_eq!(commands[0].publish.as_ref().unwrap().data, raw);

        let push = |data: &'static [u8]| proto::Reply {
            push: Some(proto::Push {
                channel: "bin".into(),
                r#pub: Some(proto::Publication {
                    data: Bytes::from_static(data),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let frame = proto::encode_frame([push(&[0, 255, 1, 2]), push(br#"{"a": 1}"#)].iter());
        let decoded = ProtobufCodec.decode(&Message::binary(frame)).unwrap();
        let publications: Vec<&Publication> = decoded
            .iter()
            .map(|r| r.push.as_ref().unwrap().publication.as_ref().unwrap())
            .collect();
        assert!(publications[0].binary);
        assert_eq!(
            publications[0].data,
            json!("AP8BAg=="),
            "base64, as JSON sees it"
        );
        assert_eq!(publications[0].bytes.as_deref(), Some(&[0, 255, 1, 2][..]));
        assert!(!publications[1].binary);
        assert_eq!(publications[1].data, json!({"a": 1}));
        assert_eq!(
            publications[1].bytes.as_deref(),
            Some(&br#"{"a": 1}"#[..]),
            "the JSON text exactly as it came"
        );
    }

    #[test]
    fn binary_payloads_and_garbage_never_panic() {
        assert_eq!(value(b"plain text"), json!("plain text"));
        assert_eq!(value(&[0xff, 0x00]), json!([255, 0]));
        assert_eq!(value(b""), Value::Null);
        for bad in [&[0x05, 0x08][..], &[0xff; 11][..], &[0x02, 0xff, 0xff][..]] {
            assert!(
                ProtobufCodec
                    .decode(&Message::binary(bad.to_vec()))
                    .is_err(),
                "{bad:?}"
            );
        }
        assert!(ProtobufCodec.decode(&Message::text("{}")).is_err());
    }
}

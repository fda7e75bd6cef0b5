//! How commands become WebSocket messages and messages become replies: [`JsonCodec`] (the
//! default) and [`ProtobufCodec`] (the `centrifuge-protobuf` subprotocol).
//!
//! The client appends everything it writes in one tick (commands and pongs) to one frame, up to
//! a size bound, and sends each frame as one WebSocket message; it hands the codec every message
//! it reads and gets the replies, pushes and pings it carries. A codec does no I/O and never
//! panics on what the server sends.

use tokio_tungstenite::tungstenite::Message;

mod protobuf;
pub use protobuf::{ProtobufCodec, SUBPROTOCOL as PROTOBUF_SUBPROTOCOL};

use crate::protocol::{Command, Reply};
use crate::Error;

/// What the client writes: a command, or a pong answering a server ping.
// Pongs are rare and short-lived in the outbox: boxing commands would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A command.
    Command(Command),
    /// A pong (an empty command).
    Pong,
}

/// An encoding of the client protocol.
pub trait Codec: Send + Sync + 'static {
    /// The WebSocket subprotocol to ask for, if the encoding needs one.
    fn subprotocol(&self) -> Option<&'static str>;
    /// Whether payloads travel as bytes, so that raw bytes ([`crate::protocol::Payload::Binary`])
    /// can be sent and replies' exact bytes read. The client refuses binary payloads with
    /// [`Error::BinaryNeedsProtobuf`] on a codec that does not.
    fn carries_bytes(&self) -> bool {
        false
    }
    /// Appends one outgoing message to `frame` (with whatever separates messages, when `frame`
    /// is not empty).
    fn encode(&self, item: &Outgoing, frame: &mut Vec<u8>) -> Result<(), Error>;
    /// Turns a frame of appended messages into the WebSocket message that carries it.
    fn finish(&self, frame: Vec<u8>) -> Result<Message, Error>;
    /// Decodes one WebSocket message into the replies, pushes and pings it carries.
    fn decode(&self, message: &Message) -> Result<Vec<Reply>, Error>;
}

/// The JSON encoding: one JSON object per line, several per text message.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn subprotocol(&self) -> Option<&'static str> {
        None
    }

    fn encode(&self, item: &Outgoing, frame: &mut Vec<u8>) -> Result<(), Error> {
        if !frame.is_empty() {
            frame.push(b'\n');
        }
        match item {
            Outgoing::Command(command) => serde_json::to_writer(frame, command)
                .map_err(|e| Error::Protocol(format!("cannot encode a command: {e}"))),
            Outgoing::Pong => {
                frame.extend_from_slice(b"{}");
                Ok(())
            }
        }
    }

    fn finish(&self, frame: Vec<u8>) -> Result<Message, Error> {
        let text = String::from_utf8(frame)
            .map_err(|_| Error::Protocol("a command is not UTF-8".into()))?;
        Ok(Message::text(text))
    }

    fn decode(&self, message: &Message) -> Result<Vec<Reply>, Error> {
        let text = match message {
            Message::Text(text) => text.as_str(),
            Message::Binary(_) => {
                return Err(Error::Protocol(
                    "a binary message on a JSON connection".into(),
                ))
            }
            _ => return Ok(Vec::new()),
        };
        text.split('\n')
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| {
                    Error::Protocol(format!("unreadable message from the server: {e}"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Request;
    use serde_json::json;

    #[test]
    fn batches_commands_and_pongs_one_per_line() {
        let batch = [
            Outgoing::Command(Command {
                id: 3,
                request: Request::Publish {
                    channel: "chat".into(),
                    data: json!({"text": "hi"}).into(),
                },
            }),
            Outgoing::Pong,
            Outgoing::Command(Command {
                id: 0,
                request: Request::Send { data: json!(1) },
            }),
        ];
        let mut frame = Vec::new();
        for item in &batch {
            JsonCodec.encode(item, &mut frame).unwrap();
        }
        let Message::Text(text) = JsonCodec.finish(frame).unwrap() else {
            panic!("a text message")
        };
        assert_eq!(
            text.as_str(),
            "{\"id\":3,\"publish\":{\"channel\":\"chat\",\"data\":{\"text\":\"hi\"}}}\n{}\n{\"send\":{\"data\":1}}"
        );
    }

    #[test]
    fn decodes_replies_pushes_pings_and_nulls() {
        let frame = "{\"id\":2,\"subscribe\":{\"recoverable\":true,\"epoch\":\"e\",\"offset\":7,\"publications\":null}}\n\
                     {\"push\":{\"channel\":\"chat\",\"pub\":{\"data\":{\"t\":1},\"offset\":8}}}\n{}\n";
        let replies = JsonCodec.decode(&Message::text(frame)).unwrap();
        assert_eq!(replies.len(), 3);
        let sub = replies[0].subscribe.as_ref().unwrap();
        assert_eq!((sub.offset, sub.epoch.as_str()), (7, "e"));
        assert!(sub.publications.is_empty());
        let publication = replies[1]
            .push
            .as_ref()
            .unwrap()
            .publication
            .as_ref()
            .unwrap();
        assert_eq!(publication.offset, 8);
        assert!(replies[2].is_ping());
    }

    #[test]
    fn a_binary_publication_gives_its_bytes_decoded_from_base64() {
        let frame = "{\"push\":{\"channel\":\"bin\",\"pub\":{\"data\":\"AP8BAg==\",\"binary\":true,\"offset\":1}}}\n\
                     {\"push\":{\"channel\":\"bin\",\"pub\":{\"data\":\"AP8BAg==\",\"offset\":2}}}\n\
                     {\"push\":{\"channel\":\"bin\",\"pub\":{\"data\":\"not base64!\",\"binary\":true}}}";
        let replies = JsonCodec.decode(&Message::text(frame)).unwrap();
        let publications: Vec<_> = replies
            .iter()
            .map(|r| r.push.as_ref().unwrap().publication.as_ref().unwrap())
            .collect();
        assert!(publications[0].binary);
        assert_eq!(publications[0].data, json!("AP8BAg=="));
        assert_eq!(publications[0].bytes.as_deref(), Some(&[0, 255, 1, 2][..]));
        assert!(!publications[1].binary, "a JSON string stays a string");
        assert_eq!(publications[1].bytes, None);
        assert!(publications[2].binary);
        assert_eq!(
            publications[2].bytes, None,
            "bad base64 is no bytes, no failure"
        );
    }

    #[test]
    fn a_binary_payload_cannot_be_written_as_json() {
        let command = Outgoing::Command(Command {
            id: 1,
            request: Request::Publish {
                channel: "bin".into(),
                data: crate::protocol::Payload::Binary(bytes::Bytes::from_static(&[0xff])),
            },
        });
        assert!(JsonCodec.encode(&command, &mut Vec::new()).is_err());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in ["{", "[1,2]", "{\"id\":\"x\"}", "{\"id\":-1}", "\u{0}"] {
            assert!(JsonCodec.decode(&Message::text(bad)).is_err(), "{bad}");
        }
        assert!(JsonCodec.decode(&Message::binary(vec![1u8])).is_err());
    }
}

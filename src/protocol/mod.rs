//! The Centrifugo v2 client protocol: types, decoding and encoding, in its two [`Encoding`]s.
//!
//! This module does no I/O and knows nothing else of Switchboard, so it can be unit-tested and
//! fuzzed alone. In JSON a frame carries one or more JSON objects separated by `\n`; each client
//! object is a [`Command`], each server object a [`Reply`] (a reply has an `id`, a push has none, a
//! ping is `{}`). In Protobuf ([`protobuf`]) a frame carries length-delimited `client.proto`
//! messages, decoded into the same [`Command`]s and encoded from the same [`Reply`]s.
//!
//! Payloads (`data`, `info`, …) are raw JSON values embedded as they are, never base64 or strings;
//! they are kept as [`RawValue`]s so the server never re-parses what it only forwards. Bytes that
//! are not JSON (a Protobuf client's publication) are held as a JSON string of their base64 in a
//! publication marked [`Publication::binary`].

use std::sync::Arc;

use serde_json::value::RawValue;

mod codes;
mod command;
pub mod protobuf;
mod reply;

pub use codes::*;
pub use command::*;
pub use reply::*;

/// How a connection's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// JSON objects, `\n`-separated (WebSocket text frames, SSE, HTTP streaming).
    #[default]
    Json,
    /// `client.proto` messages, each preceded by its varint length (the `centrifuge-protobuf`
    /// WebSocket subprotocol, binary HTTP streaming).
    Protobuf,
}

impl Encoding {
    /// Its name, as `/metrics` labels it.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }

    /// The server ping: an empty reply.
    pub fn ping(self) -> &'static [u8] {
        match self {
            Encoding::Json => PING,
            Encoding::Protobuf => protobuf::PING,
        }
    }
}

/// A push for many subscribers, encoded at most once per encoding, when the first subscriber
/// speaking it needs it; every subscriber then shares those bytes.
#[derive(Debug)]
pub struct EncodedPush {
    reply: Reply,
    json: std::cell::OnceCell<bytes::Bytes>,
    protobuf: std::cell::OnceCell<bytes::Bytes>,
}

impl EncodedPush {
    /// `push`, not encoded yet.
    pub fn new(push: Push) -> Self {
        EncodedPush {
            reply: Reply::push(push),
            json: Default::default(),
            protobuf: Default::default(),
        }
    }

    /// The push in `encoding` (encoded on first use).
    pub fn get(&self, encoding: Encoding) -> bytes::Bytes {
        let cell = match encoding {
            Encoding::Json => &self.json,
            Encoding::Protobuf => &self.protobuf,
        };
        cell.get_or_init(|| bytes::Bytes::from(self.reply.encode_as(encoding)))
            .clone()
    }
}

/// A raw JSON payload shared between every message that carries it.
pub type Payload = Arc<RawValue>;

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

/// Bytes that are not JSON as a payload: a JSON string of their standard base64 (a publication
/// holding one is marked [`Publication::binary`]).
pub fn binary_payload(bytes: &[u8]) -> Payload {
    use base64::Engine as _;
    let text = format!(
        "\"{}\"",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    Arc::from(RawValue::from_string(text).expect("a base64 string is JSON"))
}

/// Bytes from a binary source (a Protobuf client, the API's `b64data`) as a payload: JSON when
/// they are one JSON value (UTF-8), else a [`binary_payload`]; the flag says which.
pub fn payload_from_bytes(bytes: &[u8]) -> (Payload, bool) {
    match json_from_bytes(bytes) {
        Some(payload) => (payload, false),
        None => (binary_payload(bytes), true),
    }
}

/// The bytes as a JSON payload, if they are one JSON value (UTF-8).
pub fn json_from_bytes(bytes: &[u8]) -> Option<Payload> {
    let text = std::str::from_utf8(bytes).ok()?;
    let raw = serde_json::from_str::<&RawValue>(text).ok()?;
    Some(payload_from_raw(raw))
}

/// The bytes a [`binary_payload`] holds; `None` if `payload` is not a base64 JSON string.
pub fn binary_bytes(payload: &Payload) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let text = payload.get().strip_prefix('"')?.strip_suffix('"')?;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// The base64 text a [`binary_payload`] holds (the contents of its JSON string), for those that
/// take binary data as base64 (`b64data`).
pub fn binary_base64(payload: &Payload) -> &str {
    payload.get().trim_matches('"')
}

/// A payload's bytes as a Protobuf client gets them: the bytes of a binary payload (`binary`),
/// the JSON text of any other.
pub fn payload_bytes(payload: &Payload, binary: bool) -> bytes::Bytes {
    if binary {
        if let Some(bytes) = binary_bytes(payload) {
            return bytes::Bytes::from(bytes);
        }
    }
    bytes::Bytes::copy_from_slice(payload.get().as_bytes())
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

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
            key: String::new(),
            removed: false,
            binary: false,
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

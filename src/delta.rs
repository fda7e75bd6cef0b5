//! Fossil delta compression of publications, for subscriptions that ask for `delta: "fossil"`
//! where the namespace allows it (`allowed_delta_types = ["fossil"]`), encoded as centrifuge-js
//! decodes them over JSON: every publication such a subscriber gets carries its `data` as a JSON
//! string — the payload's JSON text when it is full, or with `delta: true` a Fossil delta that
//! turns the previous payload's text into this one's. A slowly changing document then costs a
//! few bytes per update instead of its whole size.
//!
//! A delta is computed once per publication and channel, against the channel's previous
//! publication on this node, and the same bytes go to every delta subscriber that has that
//! previous payload; a subscriber that does not (just subscribed, or recovered) gets the full
//! payload first. Over Protobuf a publication's `data` is bytes: the payload's JSON text when full,
//! the Fossil delta with `delta: true` (centrifuge-js applies it to bytes in its Protobuf build). A delta that would not be valid UTF-8 (a JSON string must be) or not smaller
//! than the payload is not sent: the full payload is.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::protocol::{protobuf, ClientInfo, Encoding, Payload, Publication};

/// A publication as a delta subscriber gets it.
#[derive(Serialize)]
struct DeltaPublication<'a> {
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: &'a Option<ClientInfo>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    tags: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "is_false")]
    delta: bool,
}

#[derive(Serialize)]
struct PushEnvelope<'a> {
    push: PushBody<'a>,
}

#[derive(Serialize)]
struct PushBody<'a> {
    channel: &'a str,
    #[serde(rename = "pub")]
    publication: DeltaPublication<'a>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `text` as a JSON string value.
fn json_string(text: &str) -> Box<RawValue> {
    let quoted = serde_json::to_string(text).expect("a string serializes");
    RawValue::from_string(quoted).expect("a serialized string is JSON")
}

/// The publication with its payload as a JSON string: how a delta subscriber gets a full
/// payload (in a recovery, or as its first publication).
pub fn with_string_data(publication: &Publication) -> Publication {
    Publication {
        data: Payload::from(json_string(publication.data.get())),
        ..publication.clone()
    }
}

fn encode(channel: &str, publication: &Publication, data: &RawValue, delta: bool) -> Bytes {
    let envelope = PushEnvelope {
        push: PushBody {
            channel,
            publication: DeltaPublication {
                data,
                info: &publication.info,
                offset: publication.offset,
                tags: &publication.tags,
                delta,
            },
        },
    };
    Bytes::from(serde_json::to_vec(&envelope).expect("a push serializes"))
}

/// One publication's pushes for the delta subscribers of a channel, each encoded once per
/// encoding, when first needed. The delta itself is computed once, for both encodings.
pub struct DeltaPushes<'a> {
    channel: &'a str,
    publication: &'a Publication,
    /// The previous publication's payload on this channel, if known, and whether it was binary.
    base: Option<(Payload, bool)>,
    /// The Fossil delta against `base`, once computed (`None` inside: none worth sending).
    computed: Option<Option<Vec<u8>>>,
    json: Variants,
    protobuf: Variants,
}

/// The two pushes of one encoding, once encoded.
#[derive(Default)]
struct Variants {
    full: Option<Bytes>,
    delta: Option<Bytes>,
}

impl<'a> DeltaPushes<'a> {
    pub fn new(
        channel: &'a str,
        publication: &'a Publication,
        base: Option<(Payload, bool)>,
    ) -> Self {
        DeltaPushes {
            channel,
            publication,
            base,
            computed: None,
            json: Variants::default(),
            protobuf: Variants::default(),
        }
    }

    /// The push with the full payload: over JSON as a JSON string, over Protobuf its bytes.
    pub fn full(&mut self, encoding: Encoding) -> Bytes {
        let (channel, publication) = (self.channel, self.publication);
        let variants = match encoding {
            Encoding::Json => &mut self.json,
            Encoding::Protobuf => &mut self.protobuf,
        };
        variants
            .full
            .get_or_insert_with(|| match encoding {
                Encoding::Json => encode(
                    channel,
                    publication,
                    &json_string(publication.data.get()),
                    false,
                ),
                Encoding::Protobuf => protobuf::encode_delta_push(
                    channel,
                    publication,
                    publication.data_bytes(),
                    false,
                ),
            })
            .clone()
    }

    /// The push for a subscriber that has the previous payload: a delta against it, or the full
    /// payload when no delta is worth sending (over JSON, also when the delta is not UTF-8: a
    /// JSON string must be). Deltas are computed between JSON texts, which are the bytes a
    /// Protobuf client holds only for JSON payloads: next to a binary payload, Protobuf
    /// subscribers get the full one.
    pub fn delta(&mut self, encoding: Encoding) -> Bytes {
        let cached = match encoding {
            Encoding::Json => &self.json.delta,
            Encoding::Protobuf => &self.protobuf.delta,
        };
        if let Some(push) = cached {
            return push.clone();
        }
        let binary_involved =
            self.publication.binary || self.base.as_ref().is_some_and(|(_, binary)| *binary);
        if encoding == Encoding::Protobuf && binary_involved {
            let push = self.full(encoding);
            self.protobuf.delta = Some(push.clone());
            return push;
        }
        let computed = self.computed.get_or_insert_with(|| {
            let (base, _) = self.base.as_ref()?;
            let target = self.publication.data.get();
            // `delta(target, source)`: what turns the source into the target.
            let delta = fossil_delta::delta(target, base.get());
            (delta.len() < target.len()).then_some(delta)
        });
        let push = match (encoding, computed.as_deref()) {
            (Encoding::Json, Some(delta)) => match std::str::from_utf8(delta) {
                Ok(text) => Some(encode(
                    self.channel,
                    self.publication,
                    &json_string(text),
                    true,
                )),
                Err(_) => None,
            },
            (Encoding::Protobuf, Some(delta)) => Some(protobuf::encode_delta_push(
                self.channel,
                self.publication,
                Bytes::copy_from_slice(delta),
                true,
            )),
            (_, None) => None,
        };
        let push = push.unwrap_or_else(|| self.full(encoding));
        match encoding {
            Encoding::Json => self.json.delta = Some(push.clone()),
            Encoding::Protobuf => self.protobuf.delta = Some(push.clone()),
        }
        push
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn publication(data: &str, offset: u64) -> Publication {
        Publication {
            data: Arc::from(RawValue::from_string(data.to_string()).unwrap()),
            info: None,
            offset,
            tags: HashMap::new(),
            key: String::new(),
            removed: false,
            binary: false,
        }
    }

    fn pub_of(push: &Bytes) -> serde_json::Value {
        let value: serde_json::Value = serde_json::from_slice(push).unwrap();
        value["push"]["pub"].clone()
    }

    #[test]
    fn a_delta_rebuilds_the_next_payload_from_the_previous_one() {
        let text = "lorem ipsum dolor sit amet ".repeat(20);
        let before = format!(r#"{{"doc":"{text}","rev":1}}"#);
        let after = format!(r#"{{"doc":"{text}","rev":2}}"#);
        let base = publication(&before, 1);
        let next = publication(&after, 2);
        let mut pushes = DeltaPushes::new("doc", &next, Some((base.data.clone(), false)));
        let full = pub_of(&pushes.full(Encoding::Json));
        assert_eq!(full["data"], after.as_str());
        assert!(full.get("delta").is_none());
        let delta = pub_of(&pushes.delta(Encoding::Json));
        assert_eq!(delta["delta"], true);
        assert_eq!(delta["offset"], 2);
        let bytes = delta["data"].as_str().unwrap();
        assert!(bytes.len() < after.len() / 4, "{} bytes", bytes.len());
        let rebuilt = fossil_delta::apply(before.as_bytes(), bytes.as_bytes()).unwrap();
        assert_eq!(rebuilt, after.as_bytes());
    }

    #[test]
    fn over_protobuf_a_delta_is_bytes_against_the_previous_payloads_bytes() {
        let text = "lorem ipsum dolor sit amet ".repeat(20);
        let before = format!(r#"{{"doc":"{text}","rev":1}}"#);
        let after = format!(r#"{{"doc":"{text}","rev":2}}"#);
        let next = publication(&after, 2);
        let mut pushes =
            DeltaPushes::new("doc", &next, Some((publication(&before, 1).data, false)));
        let pub_of = |push: Bytes| {
            let replies =
                switchboard_proto::decode_frame::<switchboard_proto::Reply>(push).unwrap();
            replies[0].push.clone().unwrap().r#pub.unwrap()
        };
        let full = pub_of(pushes.full(Encoding::Protobuf));
        assert!(!full.delta);
        assert_eq!(&full.data[..], after.as_bytes());
        let delta = pub_of(pushes.delta(Encoding::Protobuf));
        assert!(delta.delta);
        assert_eq!(delta.offset, 2);
        assert!(delta.data.len() < after.len() / 4);
        let rebuilt = fossil_delta::apply(before.as_bytes(), &delta.data).unwrap();
        assert_eq!(rebuilt, after.as_bytes());
    }

    #[test]
    fn next_to_a_binary_payload_protobuf_gets_the_full_bytes() {
        let bytes = vec![7u8; 300];
        let binary = Publication {
            binary: true,
            offset: 2,
            ..Publication::new(crate::protocol::binary_payload(&bytes))
        };
        let json = publication(&format!("{{\"doc\":\"{}\"}}", "x".repeat(300)), 3);
        let decoded = |push: Bytes| {
            let replies =
                switchboard_proto::decode_frame::<switchboard_proto::Reply>(push).unwrap();
            replies[0].push.clone().unwrap().r#pub.unwrap()
        };
        // A binary publication after a JSON one, and a JSON one after a binary one.
        let mut pushes = DeltaPushes::new("c", &binary, Some((json.data.clone(), false)));
        let p = decoded(pushes.delta(Encoding::Protobuf));
        assert!(!p.delta);
        assert_eq!(&p.data[..], &bytes[..]);
        let mut pushes = DeltaPushes::new("c", &json, Some((binary.data.clone(), true)));
        let p = decoded(pushes.delta(Encoding::Protobuf));
        assert!(!p.delta);
        assert_eq!(&p.data[..], json.data.get().as_bytes());
    }

    #[test]
    fn without_a_base_or_a_gain_the_payload_goes_whole() {
        let next = publication(r#"{"a":1}"#, 5);
        let mut pushes = DeltaPushes::new("c", &next, None);
        assert_eq!(pub_of(&pushes.delta(Encoding::Json))["data"], r#"{"a":1}"#);
        let unrelated = publication(r#"{"b":2}"#, 4);
        let mut pushes = DeltaPushes::new("c", &next, Some((unrelated.data, false)));
        assert!(pub_of(&pushes.delta(Encoding::Json)).get("delta").is_none());
    }

    #[test]
    fn a_recovered_publication_carries_its_payload_as_a_string() {
        let p = with_string_data(&publication(r#"{"x":[1,2]}"#, 3));
        assert_eq!(p.data.get(), r#""{\"x\":[1,2]}""#);
        assert_eq!(p.offset, 3);
    }
}

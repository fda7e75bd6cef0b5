//! What goes over the wire to the application backend: Centrifugo's HTTP proxy requests (JSON
//! bodies, field names as in its `proxy.proto`) and answers, and how an answer becomes a
//! decision. Pure: no I/O, so every mapping is unit-tested alone.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hooks::decisions::{
    ConnectDecision, Content, Link, OptionOverrides, PublishDecision, RefreshDecision, Refusal,
    RpcDecision, ServerSubscription, SubRefreshDecision, SubscribeDecision,
};
use crate::protocol::{
    binary_base64, payload_from_bytes, payload_from_raw, Disconnect, Error, Payload,
};

/// Who is asking, as every proxy request opens: the connection's id, its transport
/// (`websocket`, `http_stream`, `sse`, `uni_websocket`, `uni_sse`, `uni_http_stream`), its
/// protocol (`json`, `protobuf`), and how this request's payloads are encoded: `binary` when they
/// travel as base64 (`b64data`), `json` when raw.
#[derive(Debug, Serialize)]
pub struct Origin<'a> {
    pub client: &'a str,
    pub transport: &'static str,
    pub protocol: &'static str,
    pub encoding: &'static str,
}

impl<'a> Origin<'a> {
    /// `client`, connected by `link`; `base64`: the request's payloads are in base64.
    pub fn new(client: &'a str, link: Link, base64: bool) -> Origin<'a> {
        Origin {
            client,
            transport: link.transport.name(),
            protocol: link.encoding.name(),
            encoding: if base64 { "binary" } else { "json" },
        }
    }
}

/// A client's payload in a request: raw JSON in `data`, or base64 in `b64data` — always for
/// bytes that are not JSON (which a JSON string would misrepresent), and for every payload in
/// binary mode (`proxy_binary_encoding`, Centrifugo's `binary_encoding`). Neither when absent.
#[derive(Debug, Default, Serialize)]
pub struct Data<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Payload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
}

impl<'a> Data<'a> {
    /// `content` as a request carries it; `all_base64`: binary mode.
    pub fn new(content: Option<&'a Content>, all_base64: bool) -> Data<'a> {
        let Some(content) = content else {
            return Data::default();
        };
        let b64data = if content.binary {
            binary_base64(&content.payload).to_string()
        } else if all_base64 {
            base64::engine::general_purpose::STANDARD.encode(content.payload.get())
        } else {
            return Data {
                data: Some(&content.payload),
                b64data: None,
            };
        };
        Data {
            data: None,
            b64data: Some(b64data),
        }
    }

    /// Whether the payload travels as base64.
    pub fn is_base64(&self) -> bool {
        self.b64data.is_some()
    }
}

/// `connect`: a client without a token asks to connect.
#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    #[serde(flatten)]
    pub origin: Origin<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: &'a str,
    #[serde(flatten)]
    pub data: Data<'a>,
}

/// `refresh`: a connection the backend let in has expired.
#[derive(Debug, Serialize)]
pub struct RefreshRequest<'a> {
    #[serde(flatten)]
    pub origin: Origin<'a>,
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a Payload>,
}

/// `subscribe`: a client asks to subscribe to a channel.
#[derive(Debug, Serialize)]
pub struct SubscribeRequest<'a> {
    #[serde(flatten)]
    pub origin: Origin<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub token: &'a str,
    #[serde(flatten)]
    pub data: Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a Payload>,
}

/// `publish`: a client asks to publish `data` to a channel.
#[derive(Debug, Serialize)]
pub struct PublishRequest<'a> {
    #[serde(flatten)]
    pub origin: Origin<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    #[serde(flatten)]
    pub data: Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a Payload>,
}

/// `sub_refresh`: a client's subscription is to be extended.
#[derive(Debug, Serialize)]
pub struct SubRefreshRequest<'a> {
    #[serde(flatten)]
    pub origin: Origin<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a Payload>,
}

/// `rpc`: a client calls `method` with `data`.
#[derive(Debug, Serialize)]
pub struct RpcRequest<'a> {
    #[serde(flatten)]
    pub origin: Origin<'a>,
    pub user: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub method: &'a str,
    #[serde(flatten)]
    pub data: Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a Payload>,
}

/// Every answer: a result, an error for the client, or a disconnect. A disconnect wins over an
/// error, and an error over a result, as Centrifugo reads them; an answer with none of them is
/// an empty result.
#[derive(Debug, Deserialize)]
pub struct Answer<R> {
    pub result: Option<R>,
    pub error: Option<ErrorAnswer>,
    pub disconnect: Option<DisconnectAnswer>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorAnswer {
    pub code: u32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub temporary: bool,
}

#[derive(Debug, Deserialize)]
pub struct DisconnectAnswer {
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

/// Longest close reason a WebSocket close frame carries, in bytes.
const MAX_CLOSE_REASON: usize = 123;

impl<R: Default> Answer<R> {
    /// The result, or the refusal the backend answered.
    pub fn into_result(self) -> Result<R, Refusal> {
        if let Some(disconnect) = self.disconnect {
            return Err(Refusal::Disconnect(disconnect.into_disconnect()));
        }
        if let Some(error) = self.error {
            return Err(Refusal::Error(Error {
                code: error.code,
                message: error.message,
                temporary: error.temporary,
            }));
        }
        Ok(self.result.unwrap_or_default())
    }
}

impl DisconnectAnswer {
    /// The disconnect to close the connection with. Codes a WebSocket close frame cannot carry
    /// for an application (outside 3000–4999) become 3004 "internal server error"; the reason is
    /// cut to what a close frame holds.
    fn into_disconnect(self) -> Disconnect {
        let Some(code) = u16::try_from(self.code)
            .ok()
            .filter(|code| (3000..=4999).contains(code))
        else {
            tracing::warn!(
                code = self.code,
                "backend disconnect code outside 3000-4999"
            );
            return Disconnect::INTERNAL;
        };
        let mut reason = self.reason;
        if reason.len() > MAX_CLOSE_REASON {
            let mut end = MAX_CLOSE_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Disconnect::custom(code, reason)
    }
}

/// Why an answer's result cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    #[error("{0} is not JSON (binary payloads cannot reach JSON clients)")]
    NotJson(&'static str),
}

/// [`content`] where only JSON is kept (connect, refresh and subscribe results, which reach
/// clients as JSON payloads): base64 must decode to JSON text.
fn payload(
    json: Option<Box<RawValue>>,
    b64: &str,
    field: &'static str,
) -> Result<Option<Payload>, ResultError> {
    match content(json, b64, field)? {
        Some(content) if content.binary => Err(ResultError::NotJson(field)),
        content => Ok(content.map(|content| content.payload)),
    }
}

/// A payload given as raw JSON (`data`) or as base64 (`b64data`, which wins), for what may be
/// any bytes (a publication, an RPC result): bytes that are one JSON value are a JSON payload,
/// others a binary payload. Raw newlines are removed so a payload never splits a frame.
fn content(
    json: Option<Box<RawValue>>,
    b64: &str,
    field: &'static str,
) -> Result<Option<Content>, ResultError> {
    if !b64.is_empty() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| ResultError::Base64(field))?;
        let (payload, binary) = payload_from_bytes(&bytes);
        return Ok(Some(Content { payload, binary }));
    }
    Ok(json.map(|raw| Content::json(payload_from_raw(&raw))))
}

/// A unix time in seconds, 0 (or less) meaning "never".
fn expiry(expire_at: i64) -> Option<u64> {
    u64::try_from(expire_at).ok().filter(|at| *at > 0)
}

/// `{"value": bool}`, as Centrifugo wraps optional booleans.
#[derive(Debug, Default, Deserialize)]
pub struct BoolValue {
    pub value: bool,
}

/// Channel options changed for one subscription.
#[derive(Debug, Default, Deserialize)]
pub struct Override {
    pub presence: Option<BoolValue>,
    pub join_leave: Option<BoolValue>,
    pub force_push_join_leave: Option<BoolValue>,
    pub force_recovery: Option<BoolValue>,
}

impl Override {
    fn into_overrides(self) -> OptionOverrides {
        OptionOverrides {
            presence: self.presence.map(|b| b.value),
            join_leave: self.join_leave.map(|b| b.value),
            force_push_join_leave: self.force_push_join_leave.map(|b| b.value),
            force_recovery: self.force_recovery.map(|b| b.value),
        }
    }
}

/// A server-side subscription the connect result asks for, with its options.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeOptions {
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    pub user: String,
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    pub channels: Vec<String>,
    /// Ordered by channel name, so server-side subscriptions are made in a stable order.
    pub subs: BTreeMap<String, SubscribeOptions>,
    pub meta: Option<Box<RawValue>>,
}

impl ConnectResult {
    /// The decision; `refreshed_by_server`: the backend renews the connection when it expires.
    pub fn into_decision(self, refreshed_by_server: bool) -> Result<ConnectDecision, ResultError> {
        let mut subscriptions: Vec<ServerSubscription> = self
            .channels
            .into_iter()
            .map(|channel| ServerSubscription {
                channel,
                ..Default::default()
            })
            .collect();
        for (channel, options) in self.subs {
            subscriptions.push(ServerSubscription {
                channel,
                chan_info: payload(options.info, &options.b64info, "subs.b64info")?,
                data: payload(options.data, &options.b64data, "subs.b64data")?,
            });
        }
        let expires_at = expiry(self.expire_at);
        Ok(ConnectDecision {
            user: self.user,
            expires_at,
            info: payload(self.info, &self.b64info, "b64info")?,
            data: payload(self.data, &self.b64data, "b64data")?,
            subscriptions,
            meta: self.meta.map(|raw| payload_from_raw(&raw)),
            refreshed_by_server: refreshed_by_server && expires_at.is_some(),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    pub expired: bool,
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
}

impl RefreshResult {
    /// The decision; `expired` ends the connection (3005).
    pub fn into_decision(self) -> Result<Result<RefreshDecision, Refusal>, ResultError> {
        if self.expired {
            return Ok(Err(Refusal::Disconnect(Disconnect::EXPIRED)));
        }
        Ok(Ok(RefreshDecision {
            expires_at: expiry(self.expire_at),
            info: payload(self.info, &self.b64info, "b64info")?,
        }))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    #[serde(rename = "override")]
    pub overrides: Override,
}

impl SubscribeResult {
    /// The decision, renewed by the client (the proxy knows whether the server renews it).
    pub fn into_decision(self) -> Result<SubscribeDecision, ResultError> {
        Ok(SubscribeDecision {
            chan_info: payload(self.info, &self.b64info, "b64info")?,
            expires_at: expiry(self.expire_at),
            data: payload(self.data, &self.b64data, "b64data")?,
            overrides: self.overrides.into_overrides(),
            refreshed_by_server: false,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    pub skip_history: bool,
}

impl PublishResult {
    /// The decision: the backend's data in place of the client's `data`, if it gave any (any
    /// bytes in `b64data`: a binary publication when they are not JSON).
    pub fn into_decision(self, data: Content) -> Result<PublishDecision, ResultError> {
        Ok(PublishDecision {
            data: content(self.data, &self.b64data, "b64data")?.unwrap_or(data),
            skip_history: self.skip_history,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshResult {
    pub expired: bool,
    pub expire_at: i64,
}

impl SubRefreshResult {
    /// The decision; `expired` refuses the refresh (error 110 "expired").
    pub fn into_decision(self) -> Result<SubRefreshDecision, Refusal> {
        if self.expired {
            return Err(Refusal::Error(Error::new(
                crate::protocol::error_code::EXPIRED,
            )));
        }
        Ok(SubRefreshDecision {
            expires_at: expiry(self.expire_at),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
}

impl RpcResult {
    /// The decision; `b64data` may be any bytes (a binary result when they are not JSON).
    pub fn into_decision(self) -> Result<RpcDecision, ResultError> {
        Ok(RpcDecision {
            data: content(self.data, &self.b64data, "b64data")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer<R: serde::de::DeserializeOwned>(json: &str) -> Answer<R> {
        serde_json::from_str(json).unwrap()
    }

    fn raw(json: &str) -> Payload {
        payload_from_raw(&RawValue::from_string(json.into()).unwrap())
    }

    #[test]
    fn requests_carry_centrifugo_field_names_and_omit_what_is_empty() {
        let data = Content::json(raw(r#"{"x":1}"#));
        let connect = ConnectRequest {
            origin: Origin::new("c1", Link::WEBSOCKET_JSON, false),
            name: "js",
            version: "",
            data: Data::new(Some(&data), false),
        };
        assert_eq!(
            serde_json::to_string(&connect).unwrap(),
            r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","name":"js","data":{"x":1}}"#
        );
        let publish = PublishRequest {
            origin: Origin::new("c1", Link::WEBSOCKET_JSON, false),
            user: "ann",
            channel: "chat",
            data: Data::new(Some(&data), false),
            meta: None,
        };
        assert_eq!(
            serde_json::to_string(&publish).unwrap(),
            r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","user":"ann","channel":"chat","data":{"x":1}}"#
        );
        let rpc = RpcRequest {
            origin: Origin::new("c1", Link::WEBSOCKET_JSON, false),
            user: "",
            method: "m",
            data: Data::new(None, true),
            meta: None,
        };
        assert_eq!(
            serde_json::to_string(&rpc).unwrap(),
            r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","user":"","method":"m"}"#
        );
    }

    #[test]
    fn the_origin_names_the_transport_the_protocol_and_how_payloads_travel() {
        let link = Link {
            transport: crate::hooks::decisions::Transport::UniSse,
            encoding: crate::protocol::Encoding::Protobuf,
        };
        assert_eq!(
            serde_json::to_string(&Origin::new("c", link, true)).unwrap(),
            r#"{"client":"c","transport":"uni_sse","protocol":"protobuf","encoding":"binary"}"#
        );
    }

    #[test]
    fn bytes_that_are_not_json_and_binary_mode_travel_as_b64data() {
        let binary = Content {
            payload: crate::protocol::binary_payload(&[0, 255, 7]),
            binary: true,
        };
        let json = Content::json(raw(r#""AP8H""#));
        let shown = |data: Data<'_>| serde_json::to_string(&data).unwrap();
        assert_eq!(
            shown(Data::new(Some(&binary), false)),
            r#"{"b64data":"AP8H"}"#
        );
        assert_eq!(
            shown(Data::new(Some(&json), false)),
            r#"{"data":"AP8H"}"#,
            "a JSON string stays a JSON string"
        );
        assert_eq!(
            shown(Data::new(Some(&json), true)),
            r#"{"b64data":"IkFQOEgi"}"#,
            "binary mode: the JSON text in base64"
        );
        assert_eq!(shown(Data::new(None, true)), "{}");
    }

    #[test]
    fn a_connect_result_names_user_expiry_info_and_subscriptions() {
        let a: Answer<ConnectResult> = answer(
            r#"{"result":{"user":"56","expire_at":4000000000,"info":{"n":1},
                "channels":["a"],"subs":{"b":{"data":{"d":2}}},"meta":{"m":3},"unknown":true}}"#,
        );
        let decision = a.into_result().unwrap().into_decision(true).unwrap();
        assert_eq!(decision.user, "56");
        assert_eq!(decision.expires_at, Some(4_000_000_000));
        assert_eq!(decision.info.unwrap().get(), r#"{"n":1}"#);
        assert_eq!(decision.meta.unwrap().get(), r#"{"m":3}"#);
        let channels: Vec<_> = decision.subscriptions.iter().map(|s| &*s.channel).collect();
        assert_eq!(channels, ["a", "b"]);
        assert!(decision.refreshed_by_server);
        let never: Answer<ConnectResult> = answer(r#"{"result":{"user":""}}"#);
        let decision = never.into_result().unwrap().into_decision(true).unwrap();
        assert!(!decision.refreshed_by_server, "nothing to refresh");
    }

    #[test]
    fn disconnect_wins_over_error_which_wins_over_result() {
        let a: Answer<ConnectResult> = answer(
            r#"{"result":{"user":"x"},"error":{"code":1000,"message":"no"},"disconnect":{"code":4501,"reason":"go"}}"#,
        );
        assert_eq!(
            a.into_result().unwrap_err(),
            Refusal::Disconnect(Disconnect::custom(4501, "go".into()))
        );
        let a: Answer<SubscribeResult> =
            answer(r#"{"error":{"code":403,"message":"permission denied"}}"#);
        assert_eq!(
            a.into_result().unwrap_err(),
            Refusal::Error(Error {
                code: 403,
                message: "permission denied".into(),
                temporary: false
            })
        );
        let a: Answer<SubscribeResult> = answer(r#"{}"#);
        assert!(a.into_result().is_ok(), "no result is an empty result");
    }

    #[test]
    fn a_disconnect_code_a_close_frame_cannot_carry_is_an_internal_error() {
        let a: Answer<RpcResult> = answer(r#"{"disconnect":{"code":1005,"reason":"x"}}"#);
        assert_eq!(
            a.into_result().unwrap_err(),
            Refusal::Disconnect(Disconnect::INTERNAL)
        );
        let long = "é".repeat(100);
        let a: Answer<RpcResult> = answer(&format!(
            r#"{{"disconnect":{{"code":4000,"reason":"{long}"}}}}"#
        ));
        let Err(Refusal::Disconnect(d)) = a.into_result() else {
            panic!("a disconnect")
        };
        assert!(d.reason.len() <= MAX_CLOSE_REASON);
    }

    #[test]
    fn base64_results_are_json_when_they_are_and_binary_otherwise() {
        let a: Answer<RpcResult> = answer(r#"{"result":{"data":1,"b64data":"eyJhIjoxfQ=="}}"#);
        let data = a.into_result().unwrap().into_decision().unwrap().data;
        let data = data.unwrap();
        assert_eq!((data.payload.get(), data.binary), (r#"{"a":1}"#, false));
        let a: Answer<RpcResult> = answer(r#"{"result":{"b64data":"AAEC"}}"#);
        let data = a.into_result().unwrap().into_decision().unwrap().data;
        let data = data.unwrap();
        assert!(data.binary);
        assert_eq!(
            crate::protocol::binary_bytes(&data.payload).unwrap(),
            [0, 1, 2]
        );
        let a: Answer<RpcResult> = answer(r#"{"result":{"b64data":"not base64!"}}"#);
        assert!(a.into_result().unwrap().into_decision().is_err());
        // Where only JSON is kept (connect data), bytes that are not JSON are refused.
        let a: Answer<ConnectResult> = answer(r#"{"result":{"b64data":"AAEC"}}"#);
        assert!(a.into_result().unwrap().into_decision(false).is_err());
    }

    #[test]
    fn publish_data_is_replaced_only_when_the_backend_gives_some() {
        let client = Content::json(raw("1"));
        let a: Answer<PublishResult> = answer(r#"{"result":{}}"#);
        let kept = a.into_result().unwrap().into_decision(client.clone());
        assert_eq!(kept.unwrap().data.payload.get(), "1");
        let a: Answer<PublishResult> =
            answer("{\"result\":{\"data\":{\n\"by\": \"backend\"},\"skip_history\":true}}");
        let replaced = a.into_result().unwrap().into_decision(client).unwrap();
        assert_eq!(
            replaced.data.payload.get(),
            r#"{"by": "backend"}"#,
            "newlines removed"
        );
        assert!(replaced.skip_history);
    }

    #[test]
    fn refresh_expired_ends_the_connection_and_overrides_reach_the_options() {
        let a: Answer<RefreshResult> = answer(r#"{"result":{"expired":true}}"#);
        let decision = a.into_result().unwrap().into_decision().unwrap();
        assert_eq!(
            decision.unwrap_err(),
            Refusal::Disconnect(Disconnect::EXPIRED)
        );
        let a: Answer<SubscribeResult> =
            answer(r#"{"result":{"override":{"presence":{"value":false}}}}"#);
        let decision = a.into_result().unwrap().into_decision().unwrap();
        assert_eq!(decision.overrides.presence, Some(false));
        assert_eq!(decision.overrides.join_leave, None);
    }
}

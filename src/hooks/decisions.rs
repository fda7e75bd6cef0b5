//! Decisions about a client: whether it may connect, subscribe, publish or call, and on what
//! terms.
//!
//! The session asks [`Decisions`] and carries out the answer; it never inspects a token itself.
//! That keeps one seam where the built-in rules can be replaced by an application backend (a
//! Centrifugo-compatible proxy answers each decision with a result, an error or a disconnect,
//! which map one to one onto a decision, [`Refusal::Error`] and [`Refusal::Disconnect`]).

use std::sync::Arc;

use async_trait::async_trait;

use crate::channel::ChannelOptions;
use crate::protocol::{
    ConnectRequest, Disconnect, Encoding, Error, Payload, RefreshRequest, SubRefreshRequest,
    SubscribeRequest,
};

/// Why a client's command is not carried out: an error reply (the connection stays), or a
/// disconnect (the connection ends). Centrifugo's proxy answers the same two ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Reply to the command with this error.
    Error(Error),
    /// Close the connection with this code and reason.
    Disconnect(Disconnect),
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Self {
        Refusal::Error(error)
    }
}

impl From<Disconnect> for Refusal {
    fn from(reason: Disconnect) -> Self {
        Refusal::Disconnect(reason)
    }
}

/// HTTP headers of the request that opened a connection, kept for the application backend:
/// only those the configuration forwards (`proxy_http_headers`), so most connections keep none
/// and pay one pointer.
#[derive(Debug, Clone, Default)]
pub struct ClientHeaders(Option<Arc<Vec<(String, String)>>>);

/// No headers.
static NO_HEADERS: ClientHeaders = ClientHeaders(None);

impl ClientHeaders {
    /// Headers as (name, value) pairs.
    pub fn new(pairs: Vec<(String, String)>) -> ClientHeaders {
        if pairs.is_empty() {
            ClientHeaders(None)
        } else {
            ClientHeaders(Some(Arc::new(pairs)))
        }
    }

    /// No headers, for clients that came without any (or tests).
    pub fn none() -> &'static ClientHeaders {
        &NO_HEADERS
    }

    /// These headers, then those of `emulated` (the client's own, from its connect command)
    /// whose name `allowed` lists (case-insensitively) and that these lack: a real header of
    /// the request wins over an emulated one.
    pub fn with_emulated<'a>(
        &self,
        emulated: impl IntoIterator<Item = (&'a String, &'a String)>,
        allowed: &[String],
    ) -> ClientHeaders {
        let mut pairs: Vec<(String, String)> = self
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let real = pairs.len();
        for (name, value) in emulated {
            let listed = allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
            let present = pairs[..real]
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name));
            if listed && !present {
                pairs.push((name.clone(), value.clone()));
            }
        }
        ClientHeaders::new(pairs)
    }

    /// The (name, value) pairs, in the order the request had them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|pairs| pairs.iter())
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

/// The transports a client connects over, as Centrifugo names them (and `/metrics` labels
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    HttpStream,
    Sse,
    UniWebSocket,
    UniSse,
    UniHttpStream,
}

impl Transport {
    /// The transport's name, as Centrifugo names it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::HttpStream => "http_stream",
            Transport::Sse => "sse",
            Transport::UniWebSocket => "uni_websocket",
            Transport::UniSse => "uni_sse",
            Transport::UniHttpStream => "uni_http_stream",
        }
    }
}

/// How a client is connected: the transport it came over and the encoding it speaks, which a
/// backend may decide by (Centrifugo's proxy requests name both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub transport: Transport,
    pub encoding: Encoding,
}

impl Link {
    /// A WebSocket client speaking JSON, the most common kind (and the tests' default).
    pub const WEBSOCKET_JSON: Link = Link {
        transport: Transport::WebSocket,
        encoding: Encoding::Json,
    };
}

/// A client asking to connect.
#[derive(Debug, Clone, Copy)]
pub struct Connecting<'a> {
    /// The id the connection will have.
    pub client: &'a str,
    /// How the client is connected.
    pub link: Link,
    /// The headers of the request that opened the connection, as far as they are forwarded.
    pub headers: &'a ClientHeaders,
}

/// The client a decision is about, once connected.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The connection's id (what `connect` returned to it).
    pub client: &'a str,
    /// How the client is connected.
    pub link: Link,
    /// The user id; empty for an anonymous client.
    pub user: &'a str,
    /// The connection info others see in presence and publications.
    pub conn_info: Option<&'a Payload>,
    /// Server-only data attached to the connection at connect (never shown to clients).
    pub meta: Option<&'a Payload>,
    /// The headers of the request that opened the connection, as far as they are forwarded.
    pub headers: &'a ClientHeaders,
}

/// A client-side subscription the server makes at connect (the token's `channels` and `subs`, or
/// the backend's answer).
#[derive(Debug, Clone, Default)]
pub struct ServerSubscription {
    pub channel: String,
    /// Channel info others see for this client in the channel.
    pub chan_info: Option<Payload>,
    /// Returned to the client in its subscribe result.
    pub data: Option<Payload>,
}

/// Who a connecting client is, and for how long.
#[derive(Debug, Clone, Default)]
pub struct ConnectDecision {
    /// The user id; empty for an anonymous client.
    pub user: String,
    /// When the connection expires (unix seconds), if it does.
    pub expires_at: Option<u64>,
    /// Connection info, visible to others as `conn_info`.
    pub info: Option<Payload>,
    /// Returned to the client in its connect result.
    pub data: Option<Payload>,
    /// Server-side subscriptions, in the order they are made.
    pub subscriptions: Vec<ServerSubscription>,
    /// Server-only data attached to the connection, handed to later decisions (never shown to
    /// clients).
    pub meta: Option<Payload>,
    /// The server itself renews the connection when it expires (asking [`Decisions::refresh`]
    /// with an empty token), rather than the client with a new token; the client is then not
    /// told that its connection expires.
    pub refreshed_by_server: bool,
}

/// A connection's new lease of life.
#[derive(Debug, Clone, Default)]
pub struct RefreshDecision {
    /// When the connection now expires (unix seconds), if it does.
    pub expires_at: Option<u64>,
    /// New connection info, for what the connection does from now on; `None` keeps it.
    pub info: Option<Payload>,
}

/// A granted subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeDecision {
    /// Channel info others see for this client in the channel.
    pub chan_info: Option<Payload>,
    /// When the subscription expires (unix seconds), if it does.
    pub expires_at: Option<u64>,
    /// Returned to the client in its subscribe result.
    pub data: Option<Payload>,
    /// Channel options changed for this subscription only.
    pub overrides: OptionOverrides,
    /// The server itself renews the subscription when it expires (asking
    /// [`Decisions::sub_refresh`] with an empty token), rather than the client with a new token;
    /// the client is then not told that its subscription expires.
    pub refreshed_by_server: bool,
}

/// Channel options a decision changes for one subscription (`None`: as configured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptionOverrides {
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub force_push_join_leave: Option<bool>,
    pub force_recovery: Option<bool>,
}

impl OptionOverrides {
    /// `options` with these overrides applied.
    pub fn apply(&self, mut options: ChannelOptions) -> ChannelOptions {
        let set = |field: &mut bool, value: Option<bool>| {
            if let Some(value) = value {
                *field = value;
            }
        };
        set(&mut options.presence, self.presence);
        set(&mut options.join_leave, self.join_leave);
        set(
            &mut options.force_push_join_leave,
            self.force_push_join_leave,
        );
        set(&mut options.force_recovery, self.force_recovery);
        options
    }
}

/// A subscription's new lease of life.
#[derive(Debug, Clone, Default)]
pub struct SubRefreshDecision {
    /// When the subscription now expires (unix seconds), if it does.
    pub expires_at: Option<u64>,
}

/// A payload, and whether it stands for bytes that are not JSON (a
/// [`binary_payload`](crate::protocol::binary_payload): a Protobuf client's bytes, or a backend's
/// `b64data`), which only Protobuf clients can receive as they are.
#[derive(Debug, Clone)]
pub struct Content {
    pub payload: Payload,
    pub binary: bool,
}

impl Content {
    /// A JSON payload.
    pub fn json(payload: Payload) -> Content {
        Content {
            payload,
            binary: false,
        }
    }
}

/// A granted publish.
#[derive(Debug, Clone)]
pub struct PublishDecision {
    /// What to publish: the client's data, or what the decision put in its place.
    pub data: Content,
    /// Publish without keeping the publication in the channel's history.
    pub skip_history: bool,
}

/// An answered RPC.
#[derive(Debug, Clone, Default)]
pub struct RpcDecision {
    /// The result returned to the client.
    pub data: Option<Content>,
}

/// Every decision the server makes about a client, in one place: the built-in
/// [`Rules`](super::rules::Rules) (tokens, channel name prefixes, namespace permissions), or an
/// application backend answering for them.
///
/// Contract: a method only decides; it changes no state of the server (the session carries the
/// decision out). The session has already checked what the protocol and this node's state
/// decide alone (channel names, namespaces, limits, subscriptions held), so a method sees only
/// well-formed requests. A refusal is [`Refusal::Error`] (the command fails, the connection
/// stays) or [`Refusal::Disconnect`]. A method may await (a backend call), but it runs on the
/// client's own task: it delays that client only, and must bound its own wait.
#[async_trait]
pub trait Decisions: Send + Sync + 'static {
    /// Whether `client` may connect with `req`, and as whom.
    async fn connect(
        &self,
        client: Connecting<'_>,
        req: &ConnectRequest,
    ) -> Result<ConnectDecision, Refusal>;

    /// Whether a connected client may extend its connection with `req`'s token (empty when the
    /// server renews a connection [`ConnectDecision::refreshed_by_server`]).
    async fn refresh(
        &self,
        client: Client<'_>,
        req: &RefreshRequest,
    ) -> Result<RefreshDecision, Refusal>;

    /// Whether a client may subscribe to `req.channel`, whose options are `options`.
    async fn subscribe(
        &self,
        client: Client<'_>,
        req: &SubscribeRequest,
        options: &ChannelOptions,
    ) -> Result<SubscribeDecision, Refusal>;

    /// Whether a client may extend its subscription to `req.channel` with `req`'s token (empty
    /// when the server renews a subscription [`SubscribeDecision::refreshed_by_server`]).
    async fn sub_refresh(
        &self,
        client: Client<'_>,
        req: &SubRefreshRequest,
    ) -> Result<SubRefreshDecision, Refusal>;

    /// Whether a client may publish `data` to `channel` (whose options are `options`;
    /// `subscribed`: the client is subscribed to it), and what to publish. Takes the parts of a
    /// `publish` request rather than the request, so the hot path copies nothing.
    async fn publish(
        &self,
        client: Client<'_>,
        channel: &str,
        data: Option<Content>,
        options: &ChannelOptions,
        subscribed: bool,
    ) -> Result<PublishDecision, Refusal>;

    /// The answer to a client's RPC of `method` with `data`.
    async fn rpc(
        &self,
        client: Client<'_>,
        method: &str,
        data: Option<Content>,
    ) -> Result<RpcDecision, Refusal>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_headers_win_over_emulated_ones_and_only_listed_ones_are_emulated() {
        let real = ClientHeaders::new(vec![("cookie".into(), "real".into())]);
        let emulated: std::collections::HashMap<String, String> = [
            ("Cookie", "forged"),
            ("Authorization", "Bearer t"),
            ("X-Other", "no"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let allowed = ["cookie".to_string(), "authorization".to_string()];
        let merged = real.with_emulated(&emulated, &allowed);
        let mut pairs: Vec<_> = merged.iter().collect();
        pairs.sort();
        assert_eq!(pairs, [("Authorization", "Bearer t"), ("cookie", "real")]);
        let none = ClientHeaders::default().with_emulated(&emulated, &[]);
        assert_eq!(none.iter().count(), 0);
    }
}

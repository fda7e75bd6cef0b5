//! Centrifugo's unidirectional transports over HTTP: `uni_sse` (`/connection/uni_sse`, Server-Sent
//! Events, for the browser's `EventSource`) and `uni_http_stream` (`/connection/uni_http_stream`,
//! newline-delimited JSON, for `fetch` or `curl -N`), and what they share with `uni_websocket`
//! (see [`super::uni_websocket`]).
//!
//! A unidirectional client sends one message, its connect request (Centrifugo's `ConnectRequest`:
//! `token`, `data`, `name`, `version`, `subs`), and then only receives. It receives pushes — the
//! `Push` objects of the bidirectional protocol without their reply envelope: first
//! `{"connect":{…}}`, then `{"channel":…,"pub":{…}}` and the like, `{}` as the server's ping
//! (no pong is expected), and `{"disconnect":{"code":…,"reason":…}}` before the server closes.
//! Subscriptions are server-side: the token's `channels`/`subs`, the connect proxy's answer, and
//! the channels in `subs` the client may subscribe to; `subs` also carries the positions to
//! recover from (`recover`, `offset`, `epoch`), and the recovered publications come in the
//! connect push's `subs`.
//!
//! Each connection is a [`Session`] driven by the shared loop ([`super::connection::drive`]),
//! with the admission, limits and slow-client policy of WebSocket. Here the loop runs in a task of
//! its own and writes the response body on the socket taken from hyper (or, where it cannot be
//! taken, hands hyper the body's chunks through a channel of one; see [`super::handoff`]): a
//! client that stops reading stops the loop's writes, and its queue overflows as with WebSocket.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;

use super::connection::{drive, Incoming, Wire};
use super::handoff::{Detachable, StreamOut};
use super::{ConnectionLimit, Transport};
use crate::hooks::decisions::ClientHeaders;
use crate::http::json_error;
use crate::hub::ControlInbox;
use crate::node::Node;
use crate::protocol::{error_code, ConnectRequest, Disconnect, Push, PushBody, PING};
use crate::queue::ClientQueue;
use crate::session::Session;

/// Largest connect request taken in a body or a URL (Centrifugo's default for these transports).
pub const MAX_CONNECT_REQUEST: usize = 64 * 1024;

/// Room for control requests (server-side subscribe/unsubscribe) waiting for one session.
const CONTROL_CAPACITY: usize = 64;

/// The URL query of a unidirectional connection.
#[derive(Debug, Default, Deserialize)]
pub struct UniQuery {
    /// The connect request as JSON, for clients that cannot send a body (`EventSource`).
    pub cf_connect: Option<String>,
    /// The encoding asked for (`protobuf`); these streams carry JSON only.
    pub cf_protocol: Option<String>,
}

/// Why a connect request was refused before the connection started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadConnect {
    /// Not a JSON connect request (400).
    Malformed,
    /// Over [`MAX_CONNECT_REQUEST`] (413).
    TooLarge,
}

impl IntoResponse for BadConnect {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            BadConnect::Malformed => (StatusCode::BAD_REQUEST, "malformed connect request"),
            BadConnect::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "connect request too large"),
        };
        json_error(status, error_code::BAD_REQUEST, message)
    }
}

/// Decodes a connect request; an empty one (no body, no parameter) is `{}`.
pub fn parse_connect(text: &[u8]) -> Result<ConnectRequest, BadConnect> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(ConnectRequest::default());
    }
    if text.len() > MAX_CONNECT_REQUEST {
        return Err(BadConnect::TooLarge);
    }
    serde_json::from_slice(text).map_err(|e| {
        tracing::debug!(error = %e, "malformed unidirectional connect request");
        BadConnect::Malformed
    })
}

/// `GET /connection/uni_sse?cf_connect=<JSON>` (what `EventSource` can do) or `POST` with the
/// connect request as the JSON body: an event stream, one push per `data:` event.
pub async fn sse_endpoint(
    state: State<Node>,
    connections: axum::Extension<ConnectionLimit>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<UniQuery>,
    request: axum::extract::Request,
) -> Response {
    let detach = request.extensions().get::<Detachable>().cloned();
    let request = if request.method() == Method::GET {
        parse_connect(query.cf_connect.unwrap_or_default().as_bytes())
    } else {
        read_connect_body(request.into_body()).await
    };
    stream_endpoint(
        state,
        connections,
        peer,
        headers,
        request,
        Transport::UniSse,
        detach,
    )
    .await
}

/// `POST /connection/uni_http_stream` with the connect request as the JSON body: a stream of
/// pushes, one JSON object per line.
pub async fn http_stream_endpoint(
    state: State<Node>,
    connections: axum::Extension<ConnectionLimit>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    detach: Option<axum::Extension<Detachable>>,
    body: Body,
) -> Response {
    let request = read_connect_body(body).await;
    stream_endpoint(
        state,
        connections,
        peer,
        headers,
        request,
        Transport::UniHttpStream,
        detach.map(|d| d.0),
    )
    .await
}

/// Reads a request body holding a connect request, within [`MAX_CONNECT_REQUEST`].
async fn read_connect_body(body: Body) -> Result<ConnectRequest, BadConnect> {
    match axum::body::to_bytes(body, MAX_CONNECT_REQUEST).await {
        Ok(bytes) => parse_connect(&bytes),
        Err(_) => Err(BadConnect::TooLarge),
    }
}

/// Admits the connection, starts its session in a task of its own and answers with the stream
/// it writes (on the socket itself when it can be `detach`ed from hyper, see
/// [`super::handoff`]).
async fn stream_endpoint(
    State(node): State<Node>,
    axum::Extension(connections): axum::Extension<ConnectionLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: Result<ConnectRequest, BadConnect>,
    transport: Transport,
    detach: Option<Detachable>,
) -> Response {
    let request = match request {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let super::Admitted {
        slot,
        address,
        headers: forwarded,
    } = match super::admit_request(&node, &connections, peer, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    // The slot and the address count are held for the connection's whole life.
    let slot = (slot, address);
    let sse = transport == Transport::UniSse;
    let content_type = if sse {
        SSE_CONTENT_TYPE
    } else {
        JSON_CONTENT_TYPE
    };
    let (out, response) = super::handoff::respond(stream_headers(content_type), detach.as_ref());
    let task_node = node.clone();
    node.tracker().spawn(async move {
        if let Some(out) = out.ready().await {
            let wire = StreamWire { out, sse };
            serve(task_node, wire, request, forwarded, transport, slot).await;
        }
    });
    response
}

/// The content type of an SSE stream.
pub(super) const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";
/// The content type of a stream of JSON messages, one per line.
pub(super) const JSON_CONTENT_TYPE: &str = "application/json";

/// The head of a streaming response of `content_type`, with the headers that keep caches and
/// proxies from holding it back.
pub(super) fn stream_headers(content_type: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise hold pushes back to fill their buffers.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers
}

/// Serves one unidirectional connection until it ends: connects the session with `request`
/// (a refusal becomes the disconnect the client is sent), then drives it over `wire`. `slot` is
/// the connection's place under the connection limit, released at the end; dropping the session
/// releases its subscriptions and presence.
pub async fn serve<W: Wire>(
    node: Node,
    mut wire: W,
    request: ConnectRequest,
    headers: ClientHeaders,
    transport: Transport,
    slot: (OwnedSemaphorePermit, crate::node::addresses::AddressGuard),
) {
    transport.opened(&node);
    let queue = Arc::new(ClientQueue::new(node.config().client_queue_max_bytes));
    let control = Arc::new(ControlInbox::new(CONTROL_CAPACITY));
    let mut session = Session::new(node.clone(), queue.clone(), control.clone(), transport);
    session.forward_headers(headers);
    // Boxed: connect handling is only needed once, not by every idle connection's task.
    if let Err(reason) = Box::pin(session.connect_unidirectional(request)).await {
        queue.close(reason);
    }
    let reason = drive(&node, &mut session, &queue, &mut wire, &control).await;
    if let Some(reason) = &reason {
        session.closing(reason);
    }
    tracing::debug!(
        transport = transport.name(),
        client = session.client_id().unwrap_or("-"),
        code = reason.as_ref().map(|r| r.code),
        reason = reason.as_ref().map(|r| r.reason.as_ref()),
        "connection closed"
    );
    drop(session);
    transport.closed(&node);
    drop(slot);
}

/// The messages of a queued frame as a unidirectional client gets them: each push without its
/// reply envelope (`{"push":X}` becomes `X`), the ping `{}` as it is; replies are left out (a
/// unidirectional client sends no command, and its connect result is a push). The bytes are
/// shared with the frame, not copied: a publication is still encoded once for every subscriber.
pub fn uni_messages(frame: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    const ENVELOPE: &[u8] = b"{\"push\":";
    frame.split(|&b| b == b'\n').filter_map(move |line| {
        if line.starts_with(ENVELOPE) && line.ends_with(b"}") {
            Some(frame.slice_ref(&line[ENVELOPE.len()..line.len() - 1]))
        } else if line == PING {
            Some(Bytes::from_static(PING))
        } else {
            None
        }
    })
}

/// The `disconnect` push a unidirectional client gets before the server closes.
pub fn disconnect_push(reason: &Disconnect) -> Vec<u8> {
    let push = Push {
        channel: String::new(),
        body: PushBody::Disconnect {
            code: u32::from(reason.code),
            reason: reason.reason.to_string(),
        },
    };
    serde_json::to_vec(&push).expect("a push serializes")
}

/// A streamed response body: SSE events or JSON lines.
struct StreamWire {
    out: StreamOut,
    /// SSE (`data: <push>\n\n` per push) rather than one push per line.
    sse: bool,
}

impl StreamWire {
    /// Frames the messages of one queued frame (or one push) into a body chunk.
    fn chunk(&self, messages: impl Iterator<Item = Bytes>) -> BytesMut {
        let mut chunk = BytesMut::new();
        chunk.put_bytes(0, self.out.headroom());
        for message in messages {
            if self.sse {
                chunk.put_slice(b"data: ");
                chunk.put_slice(&message);
                chunk.put_slice(b"\n\n");
            } else {
                chunk.put_slice(&message);
                chunk.put_u8(b'\n');
            }
        }
        chunk
    }
}

impl Wire for StreamWire {
    type Frame = String;

    const UNIDIRECTIONAL: bool = true;

    async fn recv(&mut self) -> Incoming<String> {
        // Nothing comes from the client once the request is read; the response body being
        // dropped or the socket closing (the client went away) is the end.
        self.out.closed().await;
        Incoming::Gone
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), ()> {
        let chunk = self.chunk(uni_messages(&frame));
        if chunk.len() == self.out.headroom() {
            return Ok(());
        }
        self.out.send(chunk).await
    }

    async fn close(&mut self, reason: &Disconnect) {
        let push = Bytes::from(disconnect_push(reason));
        let chunk = self.chunk(std::iter::once(push));
        // The stream ends after this chunk.
        let _ = self.out.send(chunk).await;
        self.out.finish().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn pushes_lose_their_envelope_pings_stay_and_replies_go() {
        let frame = Bytes::from_static(
            b"{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1}}}\n{}\n{\"id\":3,\"rpc\":{}}\n{\"push\":{\"connect\":{\"client\":\"c\"}}}",
        );
        let messages: Vec<Bytes> = uni_messages(&frame).collect();
        assert_eq!(
            messages,
            [
                Bytes::from_static(b"{\"channel\":\"a\",\"pub\":{\"data\":1}}"),
                Bytes::from_static(b"{}"),
                Bytes::from_static(b"{\"connect\":{\"client\":\"c\"}}"),
            ]
        );
    }

    #[test]
    fn a_disconnect_is_a_push_with_code_and_reason() {
        assert_eq!(
            disconnect_push(&Disconnect::SHUTDOWN),
            b"{\"disconnect\":{\"code\":3001,\"reason\":\"shutdown\"}}"
        );
    }

    #[test]
    fn connect_requests_decode_and_bad_ones_are_refused() {
        let request = parse_connect(
            br#"{"token":"t","subs":{"news":{"recover":true,"offset":3,"epoch":"e"}}}"#,
        )
        .unwrap();
        assert_eq!(request.token, "t");
        assert_eq!(request.subs["news"].offset, 3);
        assert!(parse_connect(b"").unwrap().subs.is_empty());
        let refused = parse_connect(b"{not json").unwrap_err();
        assert_eq!(refused, BadConnect::Malformed);
        assert_eq!(refused.into_response().status(), StatusCode::BAD_REQUEST);
        let huge = vec![b' '; MAX_CONNECT_REQUEST + 1];
        assert!(parse_connect(&huge).is_ok(), "blank is an empty request");
        let mut long = b"{\"token\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_CONNECT_REQUEST));
        long.extend(b"\"}");
        assert_eq!(parse_connect(&long).unwrap_err(), BadConnect::TooLarge);
    }

    #[test]
    fn sse_events_carry_one_push_each() {
        let (chunks, _receiver) = mpsc::channel(1);
        let wire = StreamWire {
            out: StreamOut::Channel(chunks),
            sse: true,
        };
        let frame = Bytes::from_static(b"{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1}}}\n{}");
        assert_eq!(
            wire.chunk(uni_messages(&frame)).freeze(),
            Bytes::from_static(b"data: {\"channel\":\"a\",\"pub\":{\"data\":1}}\n\ndata: {}\n\n")
        );
    }
}

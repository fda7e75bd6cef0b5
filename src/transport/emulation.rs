//! Centrifugo's bidirectional emulation over HTTP, for clients that cannot open a WebSocket
//! (corporate proxies, some carriers, old load balancers): centrifuge-js's `http_stream` and
//! `sse` transports.
//!
//! - Server → client is one long response: `POST /connection/http_stream` with the client's first
//!   commands (its `connect`) as the body answers with a stream of replies and pushes, one JSON
//!   message per line, exactly the messages a WebSocket client gets; `GET /connection/sse` with
//!   the first commands in the `cf_connect` query parameter answers with Server-Sent Events, one
//!   message per `data:` event.
//! - Client → server: every later command (subscribe, publish, pong, …) is a `POST /emulation`
//!   of `{"session": …, "node": …, "data": "<commands>"}`, naming the session and the node the
//!   connect reply gave it. The node holding the session takes the commands into the session's
//!   inbox; a request that reached another node is forwarded through the broker (Redis), so
//!   several nodes behind a load balancer need no sticky sessions.
//!
//! The session is the WebSocket one, driven by the same loop ([`super::connection::drive`]):
//! same commands, recovery, limits, command rate and slow-client policy. When the server ends the
//! connection, the stream carries a `disconnect` push (code and reason) and then ends.
//!
//! Over `http_stream` a client may speak Protobuf instead (centrifuge-js's Protobuf build): its
//! first commands and the stream are length-delimited `client.proto` messages, asked for with
//! `Content-Type: application/octet-stream` (or `?cf_protocol=protobuf`), and its `/emulation`
//! requests are a Protobuf `EmulationRequest` sent with that content type. SSE carries text only:
//! a Protobuf SSE request is refused with 400. Between `/emulation` and the session (the inbox,
//! and the broker when forwarded) a Protobuf session's commands travel base64-encoded, as text
//! like a JSON session's.
//!
//! `/emulation` answers 200 when the commands were taken (or forwarded), 204 when the session
//! is no longer on its node (its stream has ended), 404 when no live node has the named id (the
//! node restarted: the client reconnects), 429 when the session has too many commands waiting,
//! and 400/413 for a malformed or oversized request, each with a JSON error body.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;

use super::connection::{drive, Incoming, Wire};
use super::handoff::{self, Detachable, PendingOut, StreamOut};
use super::uni::UniQuery;
use super::{ConnectionLimit, Transport};
use crate::hooks::decisions::ClientHeaders;
use crate::http::json_error;
use crate::hub::{ControlInbox, Inbox};
use crate::node::addresses::AddressGuard;
use crate::node::emulation::Delivery;
use crate::node::{Emulated, Node};
use crate::protocol::{error_code, Disconnect, Encoding, Push, PushBody, Reply};
use crate::queue::ClientQueue;
use crate::session::Session;

/// Room for control requests (server-side subscribe/unsubscribe) waiting for one session.
const CONTROL_CAPACITY: usize = 64;

/// `POST /connection/http_stream`: the body holds the client's first commands.
pub async fn http_stream_endpoint(
    state: State<Node>,
    connections: axum::Extension<ConnectionLimit>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<UniQuery>,
    detach: Option<axum::Extension<Detachable>>,
    body: Body,
) -> Response {
    let limit = state.0.config().max_message_size;
    let encoding = if is_binary(&headers) || query.cf_protocol.as_deref() == Some("protobuf") {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let first = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => return too_large(limit),
    };
    if encoding == Encoding::Json && std::str::from_utf8(&first).is_err() {
        return bad_request("the first commands are not UTF-8");
    }
    open(
        state,
        connections,
        peer,
        headers,
        first,
        (Transport::HttpStream, encoding),
        detach,
    )
    .await
}

/// Whether a request's body is binary (Protobuf), as centrifuge-js marks it.
fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(BINARY_CONTENT_TYPE))
}

/// The content type of Protobuf requests and streams.
const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

/// `GET /connection/sse?cf_connect=<commands>`: what the browser's `EventSource` can send.
pub async fn sse_endpoint(
    state: State<Node>,
    connections: axum::Extension<ConnectionLimit>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<UniQuery>,
    detach: Option<axum::Extension<Detachable>>,
) -> Response {
    if query.cf_protocol.as_deref() == Some("protobuf") {
        return bad_request(
            "SSE carries JSON only: use http_stream or WebSocket for the Protobuf encoding",
        );
    }
    let first = query.cf_connect.unwrap_or_default();
    let limit = state.0.config().max_message_size;
    if first.len() > limit {
        return too_large(limit);
    }
    let first = Bytes::from(first);
    open(
        state,
        connections,
        peer,
        headers,
        first,
        (Transport::Sse, Encoding::Json),
        detach,
    )
    .await
}

/// The body of `POST /emulation`.
#[derive(Debug, Deserialize)]
pub struct EmulationRequest {
    /// The session id from the connect reply.
    pub session: String,
    /// The node id from the connect reply.
    pub node: String,
    /// The commands, encoded as over WebSocket (JSON, `\n`-separated); for a Protobuf session,
    /// the length-delimited commands of its binary request in base64.
    pub data: String,
}

/// `POST /emulation`: commands for a session opened by one of the endpoints above.
pub async fn emulation_endpoint(
    State(node): State<Node>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The commands are bounded like one WebSocket message; the envelope adds the two ids.
    let limit = node.config().max_message_size + 1024;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return too_large(limit);
    };
    let request = if is_binary(&headers) {
        use switchboard_proto::prost::Message as _;
        match switchboard_proto::EmulationRequest::decode(bytes) {
            Ok(request) => EmulationRequest {
                session: request.session,
                node: request.node,
                data: base64::engine::general_purpose::STANDARD.encode(&request.data),
            },
            Err(e) => return bad_request(&format!("malformed Protobuf emulation request: {e}")),
        }
    } else {
        match serde_json::from_slice::<EmulationRequest>(&bytes) {
            Ok(request) => request,
            Err(e) => return bad_request(&format!("malformed emulation request: {e}")),
        }
    };
    match node
        .emulate(&request.node, &request.session, request.data)
        .await
    {
        Emulated::Here(Delivery::Delivered) | Emulated::Forwarded => StatusCode::OK.into_response(),
        Emulated::Here(Delivery::Unknown) => StatusCode::NO_CONTENT.into_response(),
        Emulated::Here(Delivery::Full) => json_error(
            StatusCode::TOO_MANY_REQUESTS,
            error_code::TOO_MANY_REQUESTS,
            "too many commands waiting for this session",
        ),
        Emulated::NoSuchNode => json_error(
            StatusCode::NOT_FOUND,
            error_code::BAD_REQUEST,
            "no live node has this id: reconnect",
        ),
        Emulated::Unavailable => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            error_code::NOT_AVAILABLE,
            "cannot reach the session's node",
        ),
    }
}

fn bad_request(message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, error_code::BAD_REQUEST, message)
}

fn too_large(limit: usize) -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        error_code::BAD_REQUEST,
        &format!("request body over {limit} bytes"),
    )
}

/// Admits the connection, starts its session in a task of its own with `first` as the client's
/// first frame, and answers with the stream the session writes (on the socket itself when it can
/// be `detach`ed from hyper, see [`super::handoff`]).
async fn open(
    State(node): State<Node>,
    axum::Extension(connections): axum::Extension<ConnectionLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    first: Bytes,
    (transport, encoding): (Transport, Encoding),
    detach: Option<axum::Extension<Detachable>>,
) -> Response {
    let super::Admitted {
        slot,
        address,
        headers: forwarded,
    } = match super::admit_request(&node, &connections, peer, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    let sse = transport == Transport::Sse;
    let content_type = match (sse, encoding) {
        (true, _) => super::uni::SSE_CONTENT_TYPE,
        (false, Encoding::Json) => super::uni::JSON_CONTENT_TYPE,
        (false, Encoding::Protobuf) => BINARY_CONTENT_TYPE,
    };
    let (out, response) = handoff::respond(
        super::uni::stream_headers(content_type),
        detach.as_ref().map(|d| &d.0),
    );
    // Spawned as it is: an `async` block awaiting it would store the connection's future twice
    // (once captured, once awaited), for every idle session.
    node.tracker().spawn(serve(
        node.clone(),
        out,
        (sse, encoding),
        first,
        forwarded,
        transport,
        (slot, address),
    ));
    response
}

/// Serves one emulation connection until it ends. Dropping the session releases its
/// subscriptions and presence; dropping the registration forgets the session id. `slot` (the
/// connection's place under the limit, and its address counted) is held to the end.
async fn serve(
    node: Node,
    out: PendingOut,
    (sse, encoding): (bool, Encoding),
    first: Bytes,
    headers: ClientHeaders,
    transport: Transport,
    slot: (OwnedSemaphorePermit, AddressGuard),
) {
    let Some(out) = out.ready().await else {
        return;
    };
    transport.opened(&node);
    let queue = Arc::new(ClientQueue::with_encoding(
        node.config().client_queue_max_bytes,
        encoding,
    ));
    let control = Arc::new(ControlInbox::new(CONTROL_CAPACITY));
    let mut session = Session::new(node.clone(), queue.clone(), control.clone(), transport);
    session.forward_headers(headers);
    let (registration, inbox) = node.emulation().register(session.conn_id());
    let mut wire = EmulationWire {
        out,
        sse,
        encoding,
        first: Some(first),
        inbox,
    };
    let reason = drive(&node, &mut session, &queue, &mut wire, &control).await;
    if let Some(reason) = &reason {
        session.closing(reason);
    }
    tracing::debug!(
        transport = transport.name(),
        client = session.client_id().unwrap_or("-"),
        session = registration.id(),
        code = reason.as_ref().map(|r| r.code),
        reason = reason.as_ref().map(|r| r.reason.as_ref()),
        "connection closed"
    );
    drop(registration);
    drop(session);
    transport.closed(&node);
    drop(slot);
}

/// The response body out, the session's inbox (fed by `/emulation`) in.
struct EmulationWire {
    out: StreamOut,
    /// SSE (`data: <message>\n\n` per message) rather than one message per line.
    sse: bool,
    encoding: Encoding,
    /// The commands of the request that opened the stream, taken first.
    first: Option<Bytes>,
    /// Later commands, from `/emulation` (base64 for a Protobuf session).
    inbox: Arc<Inbox<String>>,
}

impl EmulationWire {
    /// Frames the messages of one queued frame into a body chunk, after the room the body's
    /// framing asks for: Protobuf messages carry their length and go as they are; JSON ones
    /// (`\n`-separated) one per line or per SSE event.
    fn chunk(&self, frame: &[u8]) -> BytesMut {
        let room = self.out.headroom();
        let mut chunk = BytesMut::with_capacity(room + frame.len() + 16);
        chunk.put_bytes(0, room);
        if self.encoding == Encoding::Protobuf {
            chunk.put_slice(frame);
            return chunk;
        }
        for message in frame.split(|&b| b == b'\n').filter(|m| !m.is_empty()) {
            if self.sse {
                chunk.put_slice(b"data: ");
                chunk.put_slice(message);
                chunk.put_slice(b"\n\n");
            } else {
                chunk.put_slice(message);
                chunk.put_u8(b'\n');
            }
        }
        chunk
    }
}

impl Wire for EmulationWire {
    type Frame = Bytes;

    async fn recv(&mut self) -> Incoming<Bytes> {
        if let Some(first) = self.first.take() {
            return Incoming::Frame(first);
        }
        tokio::select! {
            commands = self.inbox.recv() => match self.encoding {
                Encoding::Json => Incoming::Frame(Bytes::from(commands)),
                Encoding::Protobuf => {
                    match base64::engine::general_purpose::STANDARD.decode(commands) {
                        Ok(binary) => Incoming::Frame(Bytes::from(binary)),
                        // Text sent to a Protobuf session: a JSON `/emulation` request.
                        Err(_) => Incoming::Invalid(Disconnect::bad_request(
                            &"a JSON emulation request for a Protobuf session",
                        )),
                    }
                }
            },
            // The response body dropped, or the socket closed: the client went away.
            () = self.out.closed() => Incoming::Gone,
        }
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), ()> {
        let chunk = self.chunk(&frame);
        if chunk.len() == self.out.headroom() {
            return Ok(());
        }
        self.out.send(chunk).await
    }

    async fn close(&mut self, reason: &Disconnect) {
        let push = Reply::push(Push {
            channel: String::new(),
            body: PushBody::Disconnect {
                code: u32::from(reason.code),
                reason: reason.reason.to_string(),
            },
        })
        .encode_as(self.encoding);
        let chunk = self.chunk(&push);
        // The stream ends after this chunk.
        let _ = self.out.send(chunk).await;
        self.out.finish().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn wire(sse: bool) -> EmulationWire {
        let (chunks, _) = mpsc::channel(1);
        let inbox = Arc::new(Inbox::new(1));
        EmulationWire {
            out: StreamOut::Channel(chunks),
            sse,
            encoding: Encoding::Json,
            first: None,
            inbox,
        }
    }

    #[test]
    fn messages_keep_their_envelope_one_per_line_or_event() {
        let frame =
            b"{\"id\":1,\"connect\":{}}\n{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1}}}";
        assert_eq!(
            wire(false).chunk(frame).freeze(),
            Bytes::from_static(
                b"{\"id\":1,\"connect\":{}}\n{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1}}}\n"
            )
        );
        assert_eq!(
            wire(true).chunk(frame).freeze(),
            Bytes::from_static(
                b"data: {\"id\":1,\"connect\":{}}\n\ndata: {\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1}}}\n\n"
            )
        );
    }
}

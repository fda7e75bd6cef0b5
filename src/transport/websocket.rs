//! The WebSocket transport: the upgrade at `/connection/websocket`, and a [`Wire`] over the
//! socket for the shared connection loop (see [`super::connection`]).
//!
//! A client that asks for the `centrifuge-protobuf` subprotocol speaks Protobuf (binary frames of
//! length-delimited messages); any other speaks JSON (text frames of `\n`-separated messages).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;

use super::connection::{drive, Incoming, Wire};
use super::{ConnectionLimit, Transport};
use crate::hooks::decisions::ClientHeaders;
use crate::hub::ControlInbox;
use crate::node::addresses::AddressGuard;
use crate::node::Node;
use crate::protocol::{Disconnect, Encoding};
use crate::queue::ClientQueue;
use crate::session::Session;

/// Room for control requests (server-side subscribe/unsubscribe) waiting for one session.
const CONTROL_CAPACITY: usize = 64;

/// `GET /connection/websocket`: checks the connection limit, origin and connection rate,
/// upgrades, and hands the socket to [`serve`].
pub async fn endpoint(
    State(node): State<Node>,
    axum::Extension(connections): axum::Extension<ConnectionLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Not a WebSocket handshake (a plain GET, a missing header): said in JSON, like every refusal.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return crate::http::json_error(
                rejection.status(),
                crate::protocol::error_code::BAD_REQUEST,
                &rejection.body_text(),
            )
        }
    };
    let super::Admitted {
        slot,
        address,
        headers: forwarded,
    } = match super::admit_request(&node, &connections, peer, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    // Offered only to a client that asks for it: the JSON client asks for no subprotocol.
    let upgrade = upgrade.protocols([PROTOBUF_SUBPROTOCOL]);
    let encoding = match upgrade.selected_protocol() {
        Some(_) => Encoding::Protobuf,
        None => Encoding::Json,
    };
    let limit = node.config().max_message_size;
    // The library's own limit sits above ours so an oversized message still gets a proper close
    // (1009) from the transport rather than a dropped connection.
    let hard_limit = limit.saturating_mul(2).max(limit + 64 * 1024);
    upgrade
        // Client frames are small commands; the buffer is zero-filled up to this size on every
        // read, so it is resident memory for every idle connection. Larger frames grow it.
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            // The slot is released when the connection ends (or if the upgrade never completes,
            // when this closure is dropped). `map` rather than an `async` block awaiting `serve`:
            // such a block would store the future twice (as captured value and as awaited one).
            let serve =
                serve(node.clone(), socket, encoding, forwarded, address).map(move |()| drop(slot));
            node.tracker().track_future(serve)
        })
}

/// Serves one upgraded WebSocket, speaking `encoding`, until it closes; `headers` are those of the upgrade request
/// the application backend is told of, `address` the client's address, counted until the end.
/// Every exit path ends here, where dropping the session releases its subscriptions and
/// presence.
///
/// Not an `async fn`: one moves its arguments into the future and then again into locals of its
/// body, so the socket would be stored twice in every idle connection's task. The socket is
/// wrapped before the `async move` block, which keeps each captured value once and lends the
/// wire from there (wrapping it inside the block costs a second copy: 1.2 KB per connection).
#[allow(clippy::manual_async_fn)] // see above: an `async fn` would store the socket twice
pub fn serve(
    node: Node,
    socket: WebSocket,
    encoding: Encoding,
    headers: ClientHeaders,
    address: AddressGuard,
) -> impl Future<Output = ()> + Send {
    let mut wire = WsWire { socket, encoding };
    async move {
        Transport::WebSocket.opened(&node);
        let queue = Arc::new(ClientQueue::with_encoding(
            node.config().client_queue_max_bytes,
            encoding,
        ));
        let control = Arc::new(ControlInbox::new(CONTROL_CAPACITY));
        let mut session = Session::new(
            node.clone(),
            queue.clone(),
            control.clone(),
            Transport::WebSocket,
        );
        session.forward_headers(headers);
        let reason = drive(&node, &mut session, &queue, &mut wire, &control).await;
        if let Some(reason) = &reason {
            // What the client was told is what the `disconnected` event reports.
            session.closing(reason);
        }
        tracing::debug!(
            client = session.client_id().unwrap_or("-"),
            client_addr = %address.address(),
            code = reason.as_ref().map(|r| r.code),
            reason = reason.as_ref().map(|r| r.reason.as_ref()),
            "connection closed"
        );
        drop(session);
        Transport::WebSocket.closed(&node);
    }
}

fn close_frame(reason: &Disconnect) -> CloseFrame {
    CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from(reason.reason.to_string()),
    }
}

/// The subprotocol of the Protobuf encoding, as centrifuge-js and centrifuge-python ask for it.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The socket as the connection loop sees it. JSON: text frames (binary ones too, when they are
/// UTF-8) in, text frames out. Protobuf: binary frames in and out. Either way a close frame
/// carrying the disconnect code and reason at the end.
struct WsWire {
    socket: WebSocket,
    encoding: Encoding,
}

impl Wire for WsWire {
    type Frame = Bytes;

    async fn recv(&mut self) -> Incoming<Bytes> {
        match (self.socket.recv().await, self.encoding) {
            (None | Some(Ok(Message::Close(_))), _) => Incoming::Gone,
            (Some(Err(e)), _) => read_error(e),
            (Some(Ok(Message::Text(text))), Encoding::Json) => Incoming::Frame(Bytes::from(text)),
            (Some(Ok(Message::Binary(bytes))), Encoding::Json) => {
                match std::str::from_utf8(&bytes) {
                    Ok(_) => Incoming::Frame(bytes),
                    Err(_) => Incoming::Invalid(Disconnect::BAD_REQUEST),
                }
            }
            (Some(Ok(Message::Binary(bytes))), Encoding::Protobuf) => Incoming::Frame(bytes),
            (Some(Ok(Message::Text(_))), Encoding::Protobuf) => Incoming::Invalid(
                Disconnect::bad_request(&"text frame on the centrifuge-protobuf subprotocol"),
            ),
            (Some(Ok(_)), _) => Incoming::Skip,
        }
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), ()> {
        let message = match self.encoding {
            // A JSON frame that is not UTF-8 would be a bug, never sent as text.
            Encoding::Json => Message::Text(Utf8Bytes::try_from(frame).map_err(|_| {
                tracing::error!("outbound frame is not UTF-8");
            })?),
            Encoding::Protobuf => Message::Binary(frame),
        };
        self.socket.send(message).await.map_err(drop)
    }

    async fn close(&mut self, reason: &Disconnect) {
        // The socket then lingers (see `transport::linger`), so the close frame is read before
        // the connection ends, even if the client was still sending.
        let _ = self
            .socket
            .send(Message::Close(Some(close_frame(reason))))
            .await;
    }
}

/// What a read error means for the client: a frame over the size limit closes with 1009 and
/// text that is not UTF-8 with 1007 (both with a close frame the client receives); anything else
/// means the socket is gone.
fn read_error(error: axum::Error) -> Incoming<Bytes> {
    use tungstenite::error::{CapacityError, Error};
    let inner = error.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(CapacityError::MessageTooLong { .. })) => {
            Incoming::Invalid(Disconnect::MESSAGE_TOO_BIG)
        }
        Some(Error::Utf8(_)) => Incoming::Invalid(Disconnect::INVALID_UTF8),
        _ => Incoming::Gone,
    }
}

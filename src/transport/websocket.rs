//! The WebSocket transport: the upgrade at `/connection/websocket`, and a [`Wire`] over the
//! socket for the shared connection loop (see [`super::connection`]).

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
use crate::protocol::Disconnect;
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
            let serve = serve(node.clone(), socket, forwarded, address).map(move |()| drop(slot));
            node.tracker().track_future(serve)
        })
}

/// Serves one upgraded WebSocket until it closes; `headers` are those of the upgrade request
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
    headers: ClientHeaders,
    address: AddressGuard,
) -> impl Future<Output = ()> + Send {
    let mut wire = WsWire(socket);
    async move {
        Transport::WebSocket.opened(&node);
        let queue = Arc::new(ClientQueue::new(node.config().client_queue_max_bytes));
        let control = Arc::new(ControlInbox::new(CONTROL_CAPACITY));
        let mut session = Session::new(node.clone(), queue.clone(), control.clone());
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

/// The socket as the connection loop sees it: text frames (binary ones too, when they are UTF-8)
/// in, text frames out, a close frame carrying the disconnect code and reason at the end.
struct WsWire(WebSocket);

impl Wire for WsWire {
    type Frame = Utf8Bytes;

    async fn recv(&mut self) -> Incoming<Utf8Bytes> {
        match self.0.recv().await {
            None | Some(Ok(Message::Close(_))) => Incoming::Gone,
            Some(Err(e)) => read_error(e),
            Some(Ok(Message::Text(text))) => Incoming::Frame(text),
            Some(Ok(Message::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => Incoming::Frame(text),
                Err(_) => Incoming::Invalid(Disconnect::BAD_REQUEST),
            },
            Some(Ok(_)) => Incoming::Skip,
        }
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), ()> {
        // Frames are encoded JSON; a frame that is not UTF-8 would be a bug, never sent as text.
        let text = Utf8Bytes::try_from(frame).map_err(|_| {
            tracing::error!("outbound frame is not UTF-8");
        })?;
        self.0.send(Message::Text(text)).await.map_err(drop)
    }

    async fn close(&mut self, reason: &Disconnect) {
        // The socket then lingers (see `transport::linger`), so the close frame is read before
        // the connection ends, even if the client was still sending.
        let _ = self.0.send(Message::Close(Some(close_frame(reason)))).await;
    }
}

/// What a read error means for the client: a frame over the size limit closes with 1009 and
/// text that is not UTF-8 with 1007 (both with a close frame the client receives); anything else
/// means the socket is gone.
fn read_error(error: axum::Error) -> Incoming<Utf8Bytes> {
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

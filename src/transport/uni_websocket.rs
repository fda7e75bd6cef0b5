//! Centrifugo's unidirectional WebSocket, at `/connection/uni_websocket`: the client's first
//! message is its connect request (or, as in Centrifugo 6.3, the request comes in the
//! `cf_connect` URL parameter and the client sends nothing); from then on the server sends one
//! push per WebSocket message (see [`super::uni`] for the protocol) and ignores what the client
//! sends. Before closing, the server sends the `disconnect` push, then a close frame with the same
//! code and reason.

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::OwnedSemaphorePermit;

use super::connection::{Incoming, Wire};
use super::uni::{disconnect_push, parse_connect, uni_messages, UniQuery, MAX_CONNECT_REQUEST};
use super::{ConnectionLimit, Transport};
use crate::hooks::decisions::ClientHeaders;
use crate::node::Node;
use crate::protocol::{ConnectRequest, Disconnect};

/// `GET /connection/uni_websocket`: checks a connect request given in the URL, admits the
/// connection (origin, connection rate, connection limit) and upgrades.
pub async fn endpoint(
    State(node): State<Node>,
    axum::Extension(connections): axum::Extension<ConnectionLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<UniQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let given = match query.cf_connect {
        Some(text) => match parse_connect(text.as_bytes()) {
            Ok(request) => Some(request),
            Err(refusal) => return refusal.into_response(),
        },
        None => None,
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
    upgrade
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_message_size(MAX_CONNECT_REQUEST)
        .max_frame_size(MAX_CONNECT_REQUEST)
        .on_upgrade(move |socket| {
            let serve = serve(node.clone(), socket, given, forwarded, slot);
            node.tracker().track_future(serve)
        })
}

/// Takes the connect request (from the URL, or the first message within the stale timeout),
/// then serves the connection as every unidirectional transport is served.
async fn serve(
    node: Node,
    mut socket: WebSocket,
    given: Option<ConnectRequest>,
    headers: ClientHeaders,
    slot: (OwnedSemaphorePermit, crate::node::addresses::AddressGuard),
) {
    let request = match given {
        Some(request) => request,
        None => match first_request(&node, &mut socket).await {
            Ok(request) => request,
            Err(Some(reason)) => {
                let mut wire = UniWsWire(socket);
                wire.close(&reason).await;
                return;
            }
            Err(None) => return,
        },
    };
    let wire = UniWsWire(socket);
    super::uni::serve(node, wire, request, headers, Transport::UniWebSocket, slot).await;
}

/// The client's connect request, its first message. `Err(Some)`: the disconnect to close with
/// (3502 when nothing came in time, 3501 when it is no connect request); `Err(None)`: the client
/// went away.
async fn first_request(
    node: &Node,
    socket: &mut WebSocket,
) -> Result<ConnectRequest, Option<Disconnect>> {
    let read = async {
        loop {
            let text = match socket.recv().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(None),
                Some(Ok(Message::Text(text))) => Bytes::from(text),
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(_)) => continue,
            };
            return parse_connect(&text).map_err(|_| Some(Disconnect::BAD_REQUEST));
        }
    };
    tokio::time::timeout(node.config().stale_timeout(), read)
        .await
        .unwrap_or(Err(Some(Disconnect::STALE)))
}

/// The socket of a unidirectional client: one push per message out; what comes in is ignored,
/// until the client closes.
struct UniWsWire(WebSocket);

impl Wire for UniWsWire {
    type Frame = Bytes;

    const UNIDIRECTIONAL: bool = true;

    async fn recv(&mut self) -> Incoming<Bytes> {
        match self.0.recv().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Incoming::Gone,
            Some(Ok(_)) => Incoming::Skip,
        }
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), ()> {
        for message in uni_messages(&frame) {
            let text = Utf8Bytes::try_from(message).map_err(|_| {
                tracing::error!("outbound message is not UTF-8");
            })?;
            self.0.feed(Message::Text(text)).await.map_err(drop)?;
        }
        self.0.flush().await.map_err(drop)
    }

    async fn close(&mut self, reason: &Disconnect) {
        let push = Bytes::from(disconnect_push(reason));
        if let Ok(text) = Utf8Bytes::try_from(push) {
            let _ = self.0.send(Message::Text(text)).await;
        }
        let frame = CloseFrame {
            code: reason.code,
            reason: Utf8Bytes::from(reason.reason.to_string()),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
    }
}

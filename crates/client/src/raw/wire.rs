//! [`WireClient`]: one JSON protocol connection over a WebSocket, driven command by command.
//!
//! For tests and tools that must see the protocol itself: the exact replies and pushes, the
//! close code and reason, and frames the high-level [`crate::Client`] would never write
//! (malformed JSON, commands out of order, a pong nobody asked for). It keeps no state beyond
//! the next command id and the messages read but not yet asked for; it neither answers pings
//! nor reconnects unless told to. Every read is bounded by a wait ([`WireClient::set_wait`]),
//! so a silent server is an error, never a hang.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a [`WireClient`] waits for the server by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// What one read from the server produced.
#[derive(Debug, Clone, PartialEq)]
pub enum WireEvent {
    /// One message (reply, push or ping), parsed.
    Message(Value),
    /// A close frame: its code and reason (1005 and "" when the frame had no payload).
    Closed(u16, String),
    /// The socket ended without a close frame.
    Dropped,
}

/// Why a [`WireClient`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The WebSocket (or its TCP connection) could not be opened.
    #[error("cannot open the WebSocket: {0}")]
    Open(#[source] tungstenite::Error),
    /// The request (URL or a header) is not valid.
    #[error("bad request: {0}")]
    Request(String),
    /// A frame could not be written: the connection is gone.
    #[error("cannot send: {0}")]
    Send(#[source] tungstenite::Error),
    /// The server sent a text message that is not JSON.
    #[error("the server sent a message that is not JSON: {line:?}: {source}")]
    NotJson {
        /// The message as received.
        line: String,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A socket operation of an HTTP transport failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An HTTP response was not what the protocol expects (status, framing).
    #[error("HTTP: {0}")]
    Http(String),
    /// The server sent something that is not the Protobuf encoding (an unreadable frame, or a
    /// text frame), or did not accept its subprotocol.
    #[error("not the Protobuf encoding: {0}")]
    NotProtobuf(String),
    /// Nothing arrived within the wait.
    #[error("nothing from the server within {0:?}")]
    Timeout(Duration),
    /// The connection ended (or something else came) where the caller expected a message.
    #[error("expected {expected}, got {got:?}")]
    Unexpected {
        /// What the caller waited for.
        expected: String,
        /// What came instead.
        got: WireEvent,
    },
}

/// One JSON protocol connection over a WebSocket (see the module doc).
pub struct WireClient<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
    /// Messages read from the socket and not yet returned, oldest first.
    pending: VecDeque<Value>,
    next_id: u32,
    wait: Duration,
    /// The client id the server gave in the `connect` reply (empty before).
    pub client_id: String,
}

impl WireClient {
    /// Opens a WebSocket to `url` (`ws://` or `wss://`).
    pub async fn open(url: &str) -> Result<Self, WireError> {
        Self::open_with_headers(url, &[]).await
    }

    /// Opens a WebSocket whose upgrade request also carries `headers` (name, value).
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Self, WireError> {
        let (ws, _) = tokio_tungstenite::connect_async(upgrade_request(url, headers)?)
            .await
            .map_err(WireError::Open)?;
        Ok(Self::from_ws(ws))
    }

    /// Upgrades `stream`, a TCP connection already made (from a chosen source address, or with
    /// chosen socket options), with `request`'s URL and headers.
    pub async fn from_stream(request: Request, stream: TcpStream) -> Result<Self, WireError> {
        let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .map_err(WireError::Open)?;
        Ok(Self::from_ws(ws))
    }

    /// Opens a WebSocket to `ws://addr/connection/websocket` whose socket has a tiny receive
    /// buffer, so that not reading fills the server's side quickly (a slow client).
    pub async fn open_small_buffer(addr: SocketAddr) -> Result<Self, WireError> {
        let open = |e: std::io::Error| WireError::Open(tungstenite::Error::Io(e));
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(open)?;
        socket.set_recv_buffer_size(4096).map_err(open)?;
        let stream = socket.connect(addr).await.map_err(open)?;
        let request = format!("ws://{addr}/connection/websocket")
            .into_client_request()
            .map_err(|e| WireError::Request(e.to_string()))?;
        Self::from_stream(request, stream).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WireClient<S> {
    /// A client over a WebSocket opened elsewhere.
    pub fn from_ws(ws: WebSocketStream<S>) -> Self {
        WireClient {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            wait: DEFAULT_WAIT,
            client_id: String::new(),
        }
    }

    /// Sets how long each read waits for the server ([`DEFAULT_WAIT`] unless set).
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// Sends `text` as one text frame, as is.
    pub async fn send_raw(&mut self, text: &str) -> Result<(), WireError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(WireError::Send)
    }

    /// Sends `{"id": <next id>, key: body}`; returns the id.
    pub async fn send(&mut self, key: &str, body: Value) -> Result<u32, WireError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id });
        command[key] = body;
        self.send_raw(&command.to_string()).await?;
        Ok(id)
    }

    /// Sends a command and waits for its reply (success or error), keeping the pushes that
    /// arrive meanwhile for [`WireClient::next_event`].
    pub async fn call(&mut self, key: &str, body: Value) -> Result<Value, WireError> {
        let id = self.send(key, body).await?;
        self.reply_to(id).await
    }

    /// Waits for the reply with `id`; [`WireError::Unexpected`] if the connection ends first.
    pub async fn reply_to(&mut self, id: u32) -> Result<Value, WireError> {
        loop {
            if let Some(i) = self.pending.iter().position(|m| m["id"] == id) {
                return Ok(self.pending.remove(i).expect("position is in range"));
            }
            if let Some(ended) = self.read_frame().await? {
                return Err(WireError::Unexpected {
                    expected: format!("reply {id}"),
                    got: ended,
                });
            }
        }
    }

    /// Answers a server ping (an empty message) with a pong, also an empty message.
    pub async fn pong(&mut self) -> Result<(), WireError> {
        self.send_raw("{}").await
    }

    /// Sends `connect` with `body` and waits for the reply; remembers the client id it gives.
    pub async fn connect(&mut self, body: Value) -> Result<Value, WireError> {
        let reply = self.call("connect", body).await?;
        if let Some(client) = reply["connect"]["client"].as_str() {
            self.client_id = client.to_string();
        }
        Ok(reply)
    }

    /// The next message, reply or push, skipping server pings.
    pub async fn next_message(&mut self) -> Result<Value, WireError> {
        loop {
            match self.next_event().await? {
                WireEvent::Message(m) if m == json!({}) => continue,
                WireEvent::Message(m) => return Ok(m),
                other => {
                    return Err(WireError::Unexpected {
                        expected: "a message".into(),
                        got: other,
                    })
                }
            }
        }
    }

    /// The next push's body (what is under `push`), skipping pings; a reply is
    /// [`WireError::Unexpected`].
    pub async fn next_push(&mut self) -> Result<Value, WireError> {
        let message = self.next_message().await?;
        match message.get("push") {
            Some(push) => Ok(push.clone()),
            None => Err(WireError::Unexpected {
                expected: "a push".into(),
                got: WireEvent::Message(message),
            }),
        }
    }

    /// The next push holding a publication (`pub`), skipping other pushes.
    pub async fn next_publication(&mut self) -> Result<Value, WireError> {
        loop {
            let push = self.next_push().await?;
            if push.get("pub").is_some() {
                return Ok(push);
            }
        }
    }

    /// Reads until the connection ends: its close frame's code and reason, or
    /// [`WireError::Unexpected`] with [`WireEvent::Dropped`] when it ended without one.
    pub async fn closed(&mut self) -> Result<(u16, String), WireError> {
        match self.closed_or_dropped().await? {
            WireEvent::Closed(code, reason) => Ok((code, reason)),
            other => Err(WireError::Unexpected {
                expected: "a close frame".into(),
                got: other,
            }),
        }
    }

    /// Reads until the connection ends, skipping messages: [`WireEvent::Closed`] or
    /// [`WireEvent::Dropped`].
    pub async fn closed_or_dropped(&mut self) -> Result<WireEvent, WireError> {
        loop {
            match self.next_event().await? {
                WireEvent::Message(_) => continue,
                ended => return Ok(ended),
            }
        }
    }

    /// Whether nothing (not even a ping) arrives within `wait`. A frame that arrives is kept
    /// for [`WireClient::next_event`].
    pub async fn silent_for(&mut self, wait: Duration) -> Result<bool, WireError> {
        if !self.pending.is_empty() {
            return Ok(false);
        }
        let saved = std::mem::replace(&mut self.wait, wait);
        let read = self.read_frame().await;
        self.wait = saved;
        match read {
            Err(WireError::Timeout(_)) => Ok(true),
            Err(e) => Err(e),
            Ok(None) => Ok(false),
            // The end is not silence; the caller learns of it at its next read anyway.
            Ok(Some(_)) => Ok(false),
        }
    }

    /// The next event: a message read earlier, else the next frame's first message, else the
    /// end of the connection.
    pub async fn next_event(&mut self) -> Result<WireEvent, WireError> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(WireEvent::Message(m));
            }
            if let Some(ended) = self.read_frame().await? {
                return Ok(ended);
            }
        }
    }

    /// Reads one frame into `pending` within the wait; returns the end of the connection
    /// instead, if it ends.
    async fn read_frame(&mut self) -> Result<Option<WireEvent>, WireError> {
        loop {
            match next_data_message(&mut self.ws, self.wait).await? {
                Ok(Message::Text(text)) => {
                    for line in super::lines(&text) {
                        let message =
                            serde_json::from_str(line).map_err(|source| WireError::NotJson {
                                line: line.to_string(),
                                source,
                            })?;
                        self.pending.push_back(message);
                    }
                    return Ok(None);
                }
                // Binary frames are not part of the JSON encoding.
                Ok(_) => continue,
                Err(ended) => return Ok(Some(ended)),
            }
        }
    }

    /// Ends the connection abruptly: the TCP socket closes with no close frame.
    pub fn drop_tcp(self) {
        drop(self.ws);
    }
}

/// The upgrade request for `url` with `headers` (name, value) added.
pub(super) fn upgrade_request(url: &str, headers: &[(&str, &str)]) -> Result<Request, WireError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| WireError::Request(e.to_string()))?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| WireError::Request(format!("header {name:?}: {e}")))?;
        let value = value
            .parse()
            .map_err(|e| WireError::Request(format!("header value {value:?}: {e}")))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

/// The next text or binary message from `ws`, each read bounded by `wait`, skipping control
/// frames; `Err(ended)` when the connection ends instead ([`WireEvent::Closed`] or
/// [`WireEvent::Dropped`]).
pub(super) async fn next_data_message<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    wait: Duration,
) -> Result<Result<Message, WireEvent>, WireError> {
    loop {
        let frame = tokio::time::timeout(wait, ws.next())
            .await
            .map_err(|_| WireError::Timeout(wait))?;
        return Ok(match frame {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => Ok(message),
            Some(Ok(Message::Close(frame))) => Err(match frame {
                Some(f) => WireEvent::Closed(u16::from(f.code), f.reason.to_string()),
                None => WireEvent::Closed(u16::from(CloseCode::Status), String::new()),
            }),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => Err(WireEvent::Dropped),
        });
    }
}

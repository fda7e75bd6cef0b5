//! [`ProtobufWireClient`]: one Protobuf protocol connection over a WebSocket (the
//! `centrifuge-protobuf` subprotocol), driven frame by frame.
//!
//! The Protobuf counterpart of [`super::WireClient`], for tests and tools that must see the
//! encoding itself: several commands in one binary frame, the exact replies, pushes and pings
//! (`client.proto`'s types from `switchboard-proto`), the close code and reason, and frames the
//! high-level [`crate::Client`] would never write (malformed Protobuf, a text frame). It keeps
//! no state beyond the messages read but not yet asked for; it neither answers pings nor numbers
//! commands. Every read is bounded by a wait, so a silent server is an error, never a hang.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::SinkExt;
use switchboard_proto as proto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::wire::{next_data_message, upgrade_request, DEFAULT_WAIT};
use super::{WireError, WireEvent, PROTOBUF_SUBPROTOCOL};

/// One Protobuf protocol connection over a WebSocket (see the module doc).
pub struct ProtobufWireClient<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
    /// Messages read from the socket and not yet returned, oldest first.
    pending: VecDeque<proto::Reply>,
    wait: Duration,
}

impl ProtobufWireClient {
    /// Opens a WebSocket to `url` (`ws://` or `wss://`) asking for the `centrifuge-protobuf`
    /// subprotocol; [`WireError::NotProtobuf`] if the server does not choose it.
    pub async fn open(url: &str) -> Result<Self, WireError> {
        let request = upgrade_request(url, &[("sec-websocket-protocol", PROTOBUF_SUBPROTOCOL)])?;
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(WireError::Open)?;
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        if chosen.as_deref() != Some(PROTOBUF_SUBPROTOCOL) {
            return Err(WireError::NotProtobuf(format!(
                "the server chose the subprotocol {chosen:?}, not {PROTOBUF_SUBPROTOCOL}"
            )));
        }
        Ok(Self::from_ws(ws))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ProtobufWireClient<S> {
    /// A client over a WebSocket opened elsewhere (with the subprotocol already agreed).
    pub fn from_ws(ws: WebSocketStream<S>) -> Self {
        ProtobufWireClient {
            ws,
            pending: VecDeque::new(),
            wait: DEFAULT_WAIT,
        }
    }

    /// Sets how long each read waits for the server ([`DEFAULT_WAIT`] unless set).
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// Sends `commands` length-delimited in one binary frame (an empty command is a pong).
    pub async fn send(&mut self, commands: &[proto::Command]) -> Result<(), WireError> {
        self.send_frame(proto::encode_frame(commands)).await
    }

    /// Sends `frame` as one binary frame, as is (malformed Protobuf included).
    pub async fn send_frame(&mut self, frame: Vec<u8>) -> Result<(), WireError> {
        self.ws
            .send(Message::binary(frame))
            .await
            .map_err(WireError::Send)
    }

    /// Sends `text` as one text frame, which the Protobuf encoding does not allow.
    pub async fn send_text(&mut self, text: &str) -> Result<(), WireError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(WireError::Send)
    }

    /// Sends `command` and waits for the reply with its id, keeping the pushes and pings that
    /// arrive meanwhile for [`ProtobufWireClient::next`].
    pub async fn call(&mut self, command: proto::Command) -> Result<proto::Reply, WireError> {
        let id = command.id;
        self.send(&[command]).await?;
        loop {
            if let Some(i) = self.pending.iter().position(|r| r.id == id) {
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

    /// The next message: a reply, a push, or a ping (the empty reply); [`WireError::Unexpected`]
    /// if the connection ends first.
    pub async fn next(&mut self) -> Result<proto::Reply, WireError> {
        loop {
            if let Some(reply) = self.pending.pop_front() {
                return Ok(reply);
            }
            if let Some(ended) = self.read_frame().await? {
                return Err(WireError::Unexpected {
                    expected: "a message".into(),
                    got: ended,
                });
            }
        }
    }

    /// Reads until the server closes, skipping messages: its close frame's code and reason, or
    /// [`WireError::Unexpected`] with [`WireEvent::Dropped`] when it ended without one.
    pub async fn closed(&mut self) -> Result<(u16, String), WireError> {
        self.pending.clear();
        loop {
            match self.read_frame().await? {
                None => self.pending.clear(),
                Some(WireEvent::Closed(code, reason)) => return Ok((code, reason)),
                Some(other) => {
                    return Err(WireError::Unexpected {
                        expected: "a close frame".into(),
                        got: other,
                    })
                }
            }
        }
    }

    /// Reads one frame into `pending` within the wait; returns the end of the connection
    /// instead, if it ends.
    async fn read_frame(&mut self) -> Result<Option<WireEvent>, WireError> {
        match next_data_message(&mut self.ws, self.wait).await? {
            Ok(Message::Binary(frame)) => {
                let replies = proto::decode_frame::<proto::Reply>(frame)
                    .map_err(|e| WireError::NotProtobuf(format!("an unreadable frame: {e}")))?;
                self.pending.extend(replies);
                Ok(None)
            }
            Ok(_) => Err(WireError::NotProtobuf("a text frame".into())),
            Err(ended) => Ok(Some(ended)),
        }
    }
}

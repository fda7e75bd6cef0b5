//! Long streamed responses (the `sse` and `http_stream` emulation) written straight to their
//! socket, outside hyper.
//!
//! A response whose body hyper writes keeps hyper's HTTP/1 connection alive for as long as the
//! stream lasts: an 8 KiB write buffer (allocated with every connection), an 8 KiB read buffer
//! (reserved to notice the client leaving mid-response), the cached response headers, the
//! connection's task, and the channel feeding the body — about 17 KB per idle session, four times
//! a whole WebSocket connection. A WebSocket leaves hyper through its upgrade; a `200` stream
//! cannot (hyper hands a connection over only after `101` or `CONNECT`). So the plain listener
//! makes each HTTP/1.1 connection's socket [`Detachable`]: a streaming endpoint writes the
//! response head itself, takes the socket from under hyper (whose connection then sees the
//! stream end and is freed), and its session writes the chunked body directly ([`StreamOut`]).
//!
//! Where the socket cannot be taken (TLS, where the bytes pass through rustls; HTTP/1.0; a router
//! called without the listener) the body goes through hyper as before, fed by a channel.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::linger::LingeringTcp;

/// A plain HTTP/1.1 connection's socket, which a streaming endpoint may take from hyper; the
/// listener puts one in every request's extensions.
#[derive(Clone)]
pub struct Detachable(pub(super) Arc<DetachSlot>);

/// Shared by a connection's [`LingeringTcp`] and its requests.
#[derive(Default)]
pub(super) struct DetachSlot {
    /// Set once [`DetachSlot::to`] holds where the socket goes; read on every read and write.
    pub(super) requested: AtomicBool,
    pub(super) to: Mutex<Option<oneshot::Sender<TcpStream>>>,
}

impl Detachable {
    /// A new slot, for one connection.
    pub(super) fn new() -> Self {
        Detachable(Arc::new(DetachSlot::default()))
    }

    /// Asks for the socket. The connection hands it over at its next read or write (writing the
    /// handler's response, right after the handler returns), and from then on hyper reads the end
    /// of the stream and writes into nothing; the receiver fails if the connection ended first.
    fn take(&self) -> oneshot::Receiver<TcpStream> {
        let (sender, receiver) = oneshot::channel();
        *self.0.to.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        self.0.requested.store(true, Ordering::Release);
        receiver
    }
}

/// The longest a session waits for hyper to hand its socket over (it does at once, unless the
/// connection died).
const HANDOFF_WAIT: Duration = Duration::from_secs(5);

/// Most bytes a client may send on a stream it only reads before it is taken as gone (nothing is
/// expected: commands go to `/emulation`).
const MAX_UNEXPECTED_INPUT: usize = 64 * 1024;

/// The response of a streaming endpoint, and where its session writes the body: `headers` is
/// the response's head (content type, caching). With `detach` (a plain HTTP/1.1 connection) the
/// head goes out with the first chunk, written by the session itself, and the response handed to
/// hyper is a placeholder it writes into nothing; otherwise the response's body is a channel of
/// one chunk (the client's reading pace sets the session's).
pub fn respond(headers: HeaderMap, detach: Option<&Detachable>) -> (PendingOut, Response) {
    if let Some(detach) = detach {
        let head = chunked_head(&headers);
        let pending = PendingOut::Socket(detach.take(), head);
        return (pending, Response::new(Body::empty()));
    }
    let (chunks, receiver) = mpsc::channel::<Bytes>(1);
    let body = Body::from_stream(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move {
            let chunk = receiver.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(chunk), receiver))
        },
    ));
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    (PendingOut::Channel(chunks), response)
}

/// A `200` response head for a chunked body, as hyper would have written it.
fn chunked_head(headers: &HeaderMap) -> Bytes {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let _ = write!(head, "date: {date}\r\ntransfer-encoding: chunked\r\n\r\n");
    Bytes::from(head)
}

/// Where a streaming session's body will go, once the socket is handed over.
pub enum PendingOut {
    Channel(mpsc::Sender<Bytes>),
    Socket(oneshot::Receiver<TcpStream>, Bytes),
}

impl PendingOut {
    /// The body's writer; `None` if the connection ended before its socket was handed over.
    pub async fn ready(self) -> Option<StreamOut> {
        match self {
            PendingOut::Channel(chunks) => Some(StreamOut::Channel(chunks)),
            PendingOut::Socket(receiver, head) => {
                let stream = tokio::time::timeout(HANDOFF_WAIT, receiver)
                    .await
                    .ok()?
                    .ok()?;
                // hyper's connection task may have left its waker in the socket's read (and write)
                // slot; a waker holds its task's memory (1 KB) until the socket's next event, which
                // on an idle stream may never come. Polling once here puts a no-op in its place.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let _ = stream.poll_read_ready(&mut cx);
                let _ = stream.poll_write_ready(&mut cx);
                Some(StreamOut::Socket {
                    socket: LingeringTcp::new(stream),
                    head: Some(head),
                    unexpected: 0,
                })
            }
        }
    }
}

/// A streaming response's body, written chunk by chunk.
pub enum StreamOut {
    /// Through hyper: each chunk goes to the response body.
    Channel(mpsc::Sender<Bytes>),
    /// Straight to the socket, with HTTP/1.1 chunked framing; the head still to write before the
    /// first chunk, and how many bytes the client sent meanwhile. The socket lingers when dropped.
    Socket {
        socket: LingeringTcp,
        head: Option<Bytes>,
        unexpected: usize,
    },
}

/// Room left before a chunk for its size line (hex digits and CRLF).
const SIZE_LINE: usize = 18;

impl StreamOut {
    /// Room to leave at the start of a chunk's buffer for [`StreamOut::send`]'s framing.
    pub fn headroom(&self) -> usize {
        match self {
            StreamOut::Channel(_) => 0,
            StreamOut::Socket { head, .. } => SIZE_LINE + head.as_ref().map_or(0, Bytes::len),
        }
    }

    /// Sends one chunk: `chunk` holds the chunk's bytes after [`StreamOut::headroom`] bytes of
    /// room. `Err` when the client is gone.
    pub async fn send(&mut self, mut chunk: BytesMut) -> Result<(), ()> {
        match self {
            StreamOut::Channel(chunks) => chunks.send(chunk.freeze()).await.map_err(drop),
            StreamOut::Socket { socket, head, .. } => {
                let room = SIZE_LINE + head.as_ref().map_or(0, Bytes::len);
                if chunk.len() == room {
                    // An empty chunk would end the body.
                    return Ok(());
                }
                let size = format!("{:x}\r\n", chunk.len() - room);
                let mut start = room - size.len();
                chunk[start..room].copy_from_slice(size.as_bytes());
                if let Some(head) = head.take() {
                    start -= head.len();
                    chunk[start..start + head.len()].copy_from_slice(&head);
                }
                chunk.put_slice(b"\r\n");
                socket.write_all(&chunk[start..]).await.map_err(drop)
            }
        }
    }

    /// Ends the body (its last chunk, when written here; the channel's body ends when the
    /// sender is dropped).
    pub async fn finish(&mut self) {
        if let StreamOut::Socket { socket, head, .. } = self {
            let mut end = BytesMut::new();
            if let Some(head) = head.take() {
                end.put_slice(&head);
            }
            end.put_slice(b"0\r\n\r\n");
            let _ = socket.write_all(&end).await;
        }
    }

    /// Resolves when the client is gone: the body dropped, or the socket read its end (or more
    /// input than a reading client sends). Cancel-safe.
    pub async fn closed(&mut self) {
        match self {
            StreamOut::Channel(chunks) => chunks.closed().await,
            StreamOut::Socket {
                socket, unexpected, ..
            } => {
                let mut scratch = [0u8; 64];
                while *unexpected <= MAX_UNEXPECTED_INPUT {
                    let Some(tcp) = socket.get_ref() else { return };
                    if tcp.readable().await.is_err() {
                        return;
                    }
                    match tcp.try_read(&mut scratch) {
                        Ok(0) => return,
                        Ok(n) => *unexpected += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

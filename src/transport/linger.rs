//! A lingering close for every accepted TCP connection.
//!
//! Closing a socket that still has unread input makes the kernel answer with a reset, and a reset
//! can overtake what was written just before it: a client closed with 1009, 1007 or 3013 while it
//! was still sending would see a bare drop instead of the close frame telling it why, and an SDK
//! would simply reconnect and do it again. So when a connection's stream is dropped, its socket
//! is not closed at once: a small task sends FIN (the close frame, if any, is already written),
//! reads and drops what the client still sends until it closes too, at most [`LINGER`] and
//! [`LINGER_BYTES`], then closes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::handoff::{DetachSlot, Detachable};

/// Longest a closed connection keeps reading what the client still sends.
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read (and dropped) while lingering.
pub const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// A TCP stream that lingers when dropped (see the module). A plain listener's connection may also
/// hand its socket over to a streaming response ([`Detachable`]); from then on it reads the end
/// of the stream and its writes go nowhere, so hyper's connection ends and frees its buffers.
pub struct LingeringTcp {
    /// `None` once handed over (or dropped).
    stream: Option<TcpStream>,
    /// Where a request may ask for the socket; dropped once nothing can ask any more.
    detach: Option<Arc<DetachSlot>>,
}

impl LingeringTcp {
    pub fn new(stream: TcpStream) -> LingeringTcp {
        LingeringTcp {
            stream: Some(stream),
            detach: None,
        }
    }

    /// A stream whose socket the returned handle's holder may take (see [`Detachable`]).
    pub fn detachable(stream: TcpStream) -> (LingeringTcp, Detachable) {
        let handle = Detachable::new();
        let tcp = LingeringTcp {
            stream: Some(stream),
            detach: Some(handle.0.clone()),
        };
        (tcp, handle)
    }

    /// The socket, unless handed over.
    pub fn get_ref(&self) -> Option<&TcpStream> {
        self.stream.as_ref()
    }

    /// Hands the socket over if it was asked for; called before every read and write. Once the
    /// only handle left is this one (the connection was upgraded, or ended), nothing can ask.
    fn detach_if_asked(&mut self) {
        let Some(slot) = &self.detach else { return };
        if slot.requested.load(Ordering::Acquire) {
            let to = slot.to.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.detach = None;
            if let (Some(to), Some(stream)) = (to, self.stream.take()) {
                // The session is gone already: the socket closes as any other would.
                if let Err(stream) = to.send(stream) {
                    drop(LingeringTcp::new(stream));
                }
            }
        } else if Arc::strong_count(slot) == 1 {
            self.detach = None;
        }
    }
}

impl Drop for LingeringTcp {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Outside a runtime (the process is ending), the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(linger(stream)));
        }
    }
}

/// Sends FIN, then drains the client's input until it closes, or the bounds run out.
async fn linger(mut stream: TcpStream) {
    let drain = async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut buffer = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

impl AsyncRead for LingeringTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.detach_if_asked();
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            // Handed over: the end of the stream.
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for LingeringTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.detach_if_asked();
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_write(cx, buf),
            // Handed over: written into nothing.
            None => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.detach_if_asked();
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.detach_if_asked();
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.detach_if_asked();
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

/// The TLS listener's accept step (axum-server): each socket is a [`LingeringTcp`] under TLS, so
/// its connections linger as the plain listener's do.
#[derive(Clone, Copy, Debug, Default)]
pub struct LingeringAcceptor;

impl<S> axum_server::accept::Accept<TcpStream, S> for LingeringAcceptor {
    type Stream = LingeringTcp;
    type Service = S;
    type Future = std::future::Ready<io::Result<(LingeringTcp, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let _ = stream.set_nodelay(true);
        std::future::ready(Ok((LingeringTcp::new(stream), service)))
    }
}

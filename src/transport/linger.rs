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
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Longest a closed connection keeps reading what the client still sends.
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read (and dropped) while lingering.
pub const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// A TCP stream that lingers when dropped (see the module).
pub struct LingeringTcp(Option<TcpStream>);

impl LingeringTcp {
    pub fn new(stream: TcpStream) -> LingeringTcp {
        LingeringTcp(Some(stream))
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.0
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for LingeringTcp {
    fn drop(&mut self) {
        let Some(stream) = self.0.take() else {
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
        Pin::new(self.stream()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()?).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()?).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
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

//! A streamed HTTP response read message by message: the client crate's wire-level
//! [`switchboard_client::raw::HttpStream`], failing the test on any error.

use std::net::SocketAddr;

use serde_json::Value;

#[allow(unused_imports)]
pub use switchboard_client::raw::urlencode;

/// The body of a streamed response, message by message.
pub struct HttpStream(pub switchboard_client::raw::HttpStream);

impl HttpStream {
    /// Sends `request` (a whole HTTP/1.1 request) and reads the response head, which must be a 200.
    pub async fn open(addr: SocketAddr, request: &str, sse: bool) -> HttpStream {
        let mut stream = switchboard_client::raw::HttpStream::open(addr, request, sse)
            .await
            .expect("a streamed 200 response");
        stream.set_wait(super::WAIT);
        HttpStream(stream)
    }

    /// The next message, or `None` when the stream ended; within the tests' wait.
    pub async fn next(&mut self) -> Option<Value> {
        self.0
            .next()
            .await
            .expect("the server sent a message in time")
    }
}

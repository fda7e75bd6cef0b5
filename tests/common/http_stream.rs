//! A streamed HTTP response read over a raw socket, as the HTTP transports send them: SSE
//! (`data: <message>` events) or one JSON message per line, in a chunked body.

use std::collections::VecDeque;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::WAIT;

/// The body of a streamed response, message by message.
pub struct HttpStream {
    body: BufReader<TcpStream>,
    sse: bool,
    lines: VecDeque<String>,
}

impl HttpStream {
    /// Sends `request` (a whole HTTP/1.1 request) and reads the response head, which must be a 200.
    pub async fn open(addr: SocketAddr, request: &str, sse: bool) -> HttpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut body = BufReader::new(stream);
        let mut status = String::new();
        body.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 200 "), "status {status}");
        loop {
            let mut line = String::new();
            body.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        HttpStream {
            body,
            sse,
            lines: VecDeque::new(),
        }
    }

    /// The next message, or `None` when the stream ended; within the tests' wait.
    pub async fn next(&mut self) -> Option<Value> {
        tokio::time::timeout(WAIT, self.next_unbounded())
            .await
            .expect("the server sent something in time")
    }

    async fn next_unbounded(&mut self) -> Option<Value> {
        loop {
            while let Some(line) = self.lines.pop_front() {
                let json = if self.sse {
                    match line.strip_prefix("data: ") {
                        Some(json) => json.to_string(),
                        None => continue,
                    }
                } else {
                    line
                };
                if !json.is_empty() {
                    return Some(serde_json::from_str(&json).unwrap());
                }
            }
            // One chunk of the chunked body: its size line, the data, CRLF.
            let mut size = String::new();
            if self.body.read_line(&mut size).await.unwrap_or(0) == 0 {
                return None;
            }
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0; size + 2];
            if self.body.read_exact(&mut chunk).await.is_err() {
                return None;
            }
            chunk.truncate(size);
            let text = String::from_utf8(chunk).unwrap();
            self.lines.extend(text.split('\n').map(String::from));
        }
    }
}

/// Percent-encodes `text` for a URL query.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

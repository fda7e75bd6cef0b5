//! The HTTP transports at the wire level: a streamed response read message by message
//! ([`HttpStream`]), and a session of Centrifugo's bidirectional emulation over it
//! ([`Emulated`]): `POST /connection/http_stream` or `GET /connection/sse?cf_connect=…` opens
//! the stream with the first commands, and every later command is a `POST /emulation` naming
//! the session and node the connect reply gave.
//!
//! The same messages as on a WebSocket, JSON encoded: an http_stream body carries one message
//! per line, an SSE body one message per `data:` event. Both bodies are chunked; a message may
//! span chunks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::wire::{WireError, DEFAULT_WAIT};

/// Which emulation transport carries a session's server → client stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulationKind {
    /// `POST /connection/http_stream`: one JSON message per line.
    HttpStream,
    /// `GET /connection/sse?cf_connect=…`: one `data:` event per message.
    Sse,
}

/// The body of a streamed HTTP response, message by message.
pub struct HttpStream {
    body: BufReader<TcpStream>,
    sse: bool,
    /// Complete lines read and not yet returned.
    lines: VecDeque<String>,
    /// The start of a line whose end is in a later chunk.
    partial: Vec<u8>,
    wait: Duration,
}

impl HttpStream {
    /// Sends `request` (a whole HTTP/1.1 request) to `addr` and reads the response head, which
    /// must be a 200 (another status is [`WireError::Http`] with the status line). `sse` says
    /// how the body holds messages: SSE events, or one per line.
    pub async fn open(addr: SocketAddr, request: &str, sse: bool) -> Result<Self, WireError> {
        Self::open_on(TcpStream::connect(addr).await?, request, sse).await
    }

    /// [`HttpStream::open`] over `stream`, a connection already made (from a chosen source
    /// address, say).
    pub async fn open_on(
        mut stream: TcpStream,
        request: &str,
        sse: bool,
    ) -> Result<Self, WireError> {
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        let mut body = BufReader::new(stream);
        let wait = DEFAULT_WAIT;
        let mut status = String::new();
        read_line_within(&mut body, &mut status, wait).await?;
        if !status.contains(" 200 ") {
            return Err(WireError::Http(format!("status {}", status.trim_end())));
        }
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if read_line_within(&mut body, &mut line, wait).await? == 0 {
                return Err(WireError::Http("the response head ended early".into()));
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
        }
        if !chunked {
            return Err(WireError::Http(
                "a streamed response must be chunked".into(),
            ));
        }
        Ok(HttpStream {
            body,
            sse,
            lines: VecDeque::new(),
            partial: Vec::new(),
            wait,
        })
    }

    /// Sets how long each read waits for the server ([`DEFAULT_WAIT`] unless set).
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// The next message as parsed JSON, or `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<Value>, WireError> {
        match self.next_text().await? {
            Some(line) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|source| WireError::NotJson { line, source }),
            None => Ok(None),
        }
    }

    /// The next message as the server wrote it, or `None` when the stream ended.
    pub async fn next_text(&mut self) -> Result<Option<String>, WireError> {
        loop {
            while let Some(line) = self.lines.pop_front() {
                let message = if self.sse {
                    match line.strip_prefix("data: ") {
                        Some(message) => message.to_string(),
                        // Event separators, comments and other fields.
                        None => continue,
                    }
                } else {
                    line
                };
                if !message.is_empty() {
                    return Ok(Some(message));
                }
            }
            let wait = self.wait;
            let chunk = tokio::time::timeout(wait, self.read_chunk())
                .await
                .map_err(|_| WireError::Timeout(wait))??;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.partial.extend_from_slice(&chunk);
            if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
                let complete: Vec<u8> = self.partial.drain(..=end).collect();
                let text = String::from_utf8(complete)
                    .map_err(|_| WireError::Http("the stream is not UTF-8".into()))?;
                self.lines.extend(
                    text.split('\n')
                        .map(|l| l.trim_end_matches('\r').to_string()),
                );
            }
        }
    }

    /// One chunk of the chunked body (its size line, the data, CRLF); `None` at the end.
    async fn read_chunk(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let mut size = String::new();
        if self.body.read_line(&mut size).await? == 0 {
            return Ok(None);
        }
        let size = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| WireError::Http(format!("bad chunk size {:?}", size.trim())))?;
        if size == 0 {
            return Ok(None);
        }
        let mut chunk = vec![0; size + 2];
        if self.body.read_exact(&mut chunk).await.is_err() {
            return Ok(None);
        }
        chunk.truncate(size);
        Ok(Some(chunk))
    }
}

async fn read_line_within(
    body: &mut BufReader<TcpStream>,
    line: &mut String,
    wait: Duration,
) -> Result<usize, WireError> {
    tokio::time::timeout(wait, body.read_line(line))
        .await
        .map_err(|_| WireError::Timeout(wait))?
        .map_err(WireError::Io)
}

/// A session of the bidirectional emulation: the stream, and the ids that `/emulation`
/// requests name.
pub struct Emulated {
    /// The server → client stream.
    pub stream: HttpStream,
    /// The session id of the connect reply.
    pub session: String,
    /// The node id of the connect reply.
    pub node: String,
    /// Where `/emulation` requests go by default (the server that opened the stream).
    pub addr: SocketAddr,
    next_id: u32,
    /// Messages read while waiting for a reply.
    pending: VecDeque<Value>,
}

impl Emulated {
    /// Opens a session on `addr` over `kind`, sending `connect` (the body of a `connect`
    /// command) as the first command; returns the session and the connect result.
    pub async fn open(
        addr: SocketAddr,
        kind: EmulationKind,
        connect: Value,
    ) -> Result<(Emulated, Value), WireError> {
        Self::open_on(TcpStream::connect(addr).await?, addr, kind, connect).await
    }

    /// [`Emulated::open`] over `stream`, a connection to `addr` already made.
    pub async fn open_on(
        stream: TcpStream,
        addr: SocketAddr,
        kind: EmulationKind,
        connect: Value,
    ) -> Result<(Emulated, Value), WireError> {
        let first = json!({"id": 1, "connect": connect}).to_string();
        let request = match kind {
            EmulationKind::HttpStream => format!(
                "POST /connection/http_stream HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
                first.len()
            ),
            EmulationKind::Sse => format!(
                "GET /connection/sse?cf_connect={} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
                urlencode(&first)
            ),
        };
        let mut stream = HttpStream::open_on(stream, &request, kind == EmulationKind::Sse).await?;
        let reply = match stream.next().await? {
            Some(reply) if reply["id"] == 1 => reply,
            other => {
                return Err(WireError::Http(format!(
                    "expected the connect reply, got {other:?}"
                )))
            }
        };
        if reply.get("error").is_some() {
            return Err(WireError::Http(format!("connect failed: {reply}")));
        }
        let connected = reply["connect"].clone();
        let id = |key: &str| {
            connected[key]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| WireError::Http(format!("the connect reply has no {key}")))
        };
        let session = Emulated {
            session: id("session")?,
            node: id("node")?,
            stream,
            addr,
            next_id: 2,
            pending: VecDeque::new(),
        };
        Ok((session, connected))
    }

    /// Posts `commands` (newline-separated JSON commands) for this session to `/emulation`
    /// on `addr`; returns the status.
    pub async fn post_to(&self, addr: SocketAddr, commands: &str) -> Result<u16, WireError> {
        let body = json!({"session": self.session, "node": self.node, "data": commands});
        Ok(
            http_post(addr, "/emulation", &body.to_string(), self.stream.wait)
                .await?
                .0,
        )
    }

    /// Posts `commands` to the server that opened the session (see [`Emulated::post_to`]).
    pub async fn post(&self, commands: &str) -> Result<u16, WireError> {
        self.post_to(self.addr, commands).await
    }

    /// Sends one command through `/emulation` on `addr` and waits for its reply on the stream,
    /// keeping what arrives meanwhile for [`Emulated::next_push`].
    pub async fn call_via(
        &mut self,
        addr: SocketAddr,
        key: &str,
        body: Value,
    ) -> Result<Value, WireError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id});
        command[key] = body;
        let status = self.post_to(addr, &command.to_string()).await?;
        if status != 200 {
            return Err(WireError::Http(format!("/emulation answered {status}")));
        }
        loop {
            match self.stream.next().await? {
                Some(message) if message["id"] == id => return Ok(message),
                Some(message) => self.pending.push_back(message),
                None => {
                    return Err(WireError::Http(format!(
                        "the stream ended before reply {id}; read {:?}",
                        self.pending
                    )))
                }
            }
        }
    }

    /// The next message that is not a ping (`{}`), or `None` when the stream ended.
    pub async fn next_push(&mut self) -> Result<Option<Value>, WireError> {
        loop {
            let message = match self.pending.pop_front() {
                Some(message) => message,
                None => match self.stream.next().await? {
                    Some(message) => message,
                    None => return Ok(None),
                },
            };
            if message.as_object().is_some_and(|o| !o.is_empty()) {
                return Ok(Some(message));
            }
        }
    }
}

/// POSTs a JSON `body` to `path` on `addr` over a fresh connection (`Connection: close`);
/// returns the status and the body.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    wait: Duration,
) -> Result<(u16, String), WireError> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_exchange(addr, &request, wait).await
}

/// Sends `request`, a whole HTTP/1.1 request that asks for `Connection: close`, and reads the
/// response to its end within `wait`; returns the status and the body (de-chunked).
pub async fn http_exchange(
    addr: SocketAddr,
    request: &str,
    wait: Duration,
) -> Result<(u16, String), WireError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| WireError::Timeout(wait))??;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| WireError::Http(format!("no status line in {response:?}")))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The data of a whole chunked body.
fn dechunk(mut body: &str) -> Result<String, WireError> {
    let bad = || WireError::Http("a malformed chunked body".into());
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad())?;
        if n == 0 {
            break;
        }
        out.push_str(rest.get(..n).ok_or_else(bad)?);
        body = rest.get(n + 2..).unwrap_or_default();
    }
    Ok(out)
}

/// Percent-encodes `text` for a URL query.
pub fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encodes_queries() {
        assert_eq!(urlencode(r#"{"id":1}"#), "%7B%22id%22%3A1%7D");
        assert_eq!(urlencode("a-b_c.d~"), "a-b_c.d~");
    }

    #[test]
    fn joins_chunks_and_refuses_malformed_ones() {
        assert_eq!(
            dechunk("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n").unwrap(),
            "hello!"
        );
        assert!(dechunk("zz\r\nhello\r\n").is_err());
        assert!(dechunk("50\r\nshort\r\n").is_err());
    }
}

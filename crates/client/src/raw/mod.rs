//! The low-level protocol client: sockets and frames written by hand, for `switchboard bench`,
//! the integration tests and tools that must see or bend the protocol itself.
//!
//! - The bench holds tens of thousands of connections and writes millions of publishes, so it
//!   drives the wire itself instead of going through [`crate::Client`]: [`Target`] opens
//!   WebSockets (from spread source addresses when one address's ports would run out) and
//!   completes `connect`; [`subscribe`], [`push_publish`], [`push_rpc`] and [`pong`] cover the
//!   other commands; [`expect_reply`] and [`lines`] read frames, which carry several messages
//!   split by newlines. [`now_micros`] is a clock shared between processes on one machine, for
//!   end-to-end latency.
//! - [`WireClient`] (module [`wire`]) is one connection driven command by command with parsed
//!   JSON: for tests that assert exact replies, pushes and close codes, or send malformed frames.
//!   [`ProtobufWireClient`] (module [`protobuf_wire`]) is the same over the Protobuf encoding,
//!   with `client.proto`'s types.
//! - [`HttpStream`] and [`Emulated`] (module [`http`]) read the HTTP transports' streamed
//!   responses and drive a session of the bidirectional emulation (`http_stream`, `sse`, and
//!   `POST /emulation`).

pub mod http;
pub mod protobuf_wire;
pub mod wire;

pub use http::{http_exchange, http_post, urlencode, Emulated, EmulationKind, HttpStream};
pub use protobuf_wire::ProtobufWireClient;
pub use wire::{WireClient, WireError, WireEvent};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use std::fmt::Write as _;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use switchboard_proto as proto;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Loopback ports per source address a [`Target`] plans to use; Linux's default ephemeral range
/// (32768–60999) holds about 28,000.
pub const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://host:port/path`.
    pub url: String,
    /// The server's socket address.
    pub addr: SocketAddr,
    /// Source addresses to spread connections over; empty means "let the kernel pick".
    pub sources: Vec<IpAddr>,
    /// Connection token sent in `connect`, if the server wants one.
    pub token: Option<String>,
    /// How [`Target::open_link`] connects (WebSocket unless set).
    pub transport: Transport,
    /// How [`Target::open_link`]'s connections encode the protocol (JSON unless set; Protobuf
    /// on WebSocket only). [`Target::open_connected`] always speaks JSON.
    pub encoding: Encoding,
}

/// The encodings of the client protocol a [`Link`] can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON in text frames, several messages per frame split by newlines.
    Json,
    /// The `centrifuge-protobuf` subprotocol: binary frames of length-delimited messages.
    Protobuf,
}

/// The WebSocket subprotocol of the Protobuf encoding.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The bidirectional transports a [`Target`] can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/connection/websocket` (the target's URL).
    WebSocket,
    /// `POST /connection/http_stream` on the target's host and port, commands over
    /// `POST /emulation`.
    HttpStream,
    /// `GET /connection/sse` on the target's host and port, commands over `POST /emulation`.
    Sse,
}

/// A connection a [`Target`] opened over one of the [`Transport`]s, `connect` completed.
pub enum Link {
    /// A WebSocket speaking JSON.
    WebSocket(Ws),
    /// A WebSocket speaking Protobuf.
    Protobuf(Ws),
    /// A session of the bidirectional emulation.
    Emulated(Box<Emulated>),
}

impl Target {
    /// Parses `url` (`ws://host:port/path`; host must be an IP address or `localhost`) and plans
    /// source addresses: `sources` of them from 127.0.0.2 up, or, with `None`, as many as
    /// `connections` need on a loopback target.
    pub fn new(
        url: &str,
        token: Option<String>,
        sources: Option<usize>,
        connections: usize,
    ) -> anyhow::Result<Target> {
        let addr = socket_addr_of(url, "ws://", 80)?;
        let wanted = match sources {
            Some(n) => n,
            None if addr.ip().is_loopback() && connections > CONNECTIONS_PER_SOURCE => {
                connections.div_ceil(CONNECTIONS_PER_SOURCE)
            }
            None => 0,
        };
        if wanted > 0 && !addr.ip().is_loopback() {
            bail!("--sources needs a loopback target (127.0.0.0/8)");
        }
        if wanted > 250 {
            bail!("at most 250 source addresses (127.0.0.2 to 127.0.0.251)");
        }
        let sources = (0..wanted)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect();
        Ok(Target {
            url: url.to_string(),
            addr,
            sources,
            token,
            transport: Transport::WebSocket,
            encoding: Encoding::Json,
        })
    }

    /// Opens the `n`th connection's TCP socket, bound to its source address.
    async fn tcp(&self, n: usize) -> anyhow::Result<TcpStream> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if !self.sources.is_empty() {
            let source = self.sources[n % self.sources.len()];
            bind_no_port(&socket);
            socket
                .bind(SocketAddr::new(source, 0))
                .with_context(|| format!("cannot bind source address {source}"))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Opens the `n`th connection's TCP socket (bound to its source address) and upgrades it.
    pub async fn open(&self, n: usize) -> anyhow::Result<Ws> {
        self.open_with(n, None).await
    }

    /// [`Target::open`], asking for `subprotocol` if given.
    async fn open_with(&self, n: usize, subprotocol: Option<&str>) -> anyhow::Result<Ws> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = self.url.as_str().into_client_request()?;
        if let Some(subprotocol) = subprotocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", subprotocol.parse()?);
        }
        let stream = self.tcp(n).await?;
        // Small buffers: the bench holds tens of thousands of sockets, and its frames are small
        // except pushes, for which the buffer grows as needed.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 20));
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(ws)
    }

    /// Opens connection `n` and completes `connect`; returns the socket and the connect reply.
    pub async fn open_connected(&self, n: usize, timeout: Duration) -> anyhow::Result<Ws> {
        tokio::time::timeout(timeout, async {
            let mut ws = self.open(n).await?;
            let connect = match &self.token {
                Some(token) => format!(
                    r#"{{"id":1,"connect":{{"token":{},"name":"switchboard-bench"}}}}"#,
                    serde_json::to_string(token)?
                ),
                None => r#"{"id":1,"connect":{"name":"switchboard-bench"}}"#.to_string(),
            };
            ws.send(Message::text(connect)).await?;
            expect_reply(&mut ws, 1, "connect").await?;
            Ok(ws)
        })
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))?
    }
}

impl Target {
    /// Opens connection `n` over the target's [`Transport`] and completes `connect`.
    pub async fn open_link(&self, n: usize, timeout: Duration) -> anyhow::Result<Link> {
        if self.encoding == Encoding::Protobuf {
            if self.transport != Transport::WebSocket {
                bail!("the Protobuf encoding is spoken on WebSocket only here");
            }
            return self.open_protobuf(n, timeout).await;
        }
        let kind = match self.transport {
            Transport::WebSocket => {
                return Ok(Link::WebSocket(self.open_connected(n, timeout).await?))
            }
            Transport::HttpStream => EmulationKind::HttpStream,
            Transport::Sse => EmulationKind::Sse,
        };
        let mut connect = serde_json::json!({"name": "switchboard-bench"});
        if let Some(token) = &self.token {
            connect["token"] = token.clone().into();
        }
        let session = tokio::time::timeout(timeout, async {
            let stream = self.tcp(n).await?;
            let (mut session, _) = Emulated::open_on(stream, self.addr, kind, connect).await?;
            session.stream.set_wait(timeout);
            anyhow::Ok(session)
        })
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))??;
        Ok(Link::Emulated(Box::new(session)))
    }
}

impl Target {
    /// Opens connection `n` with the Protobuf subprotocol and completes `connect`.
    async fn open_protobuf(&self, n: usize, timeout: Duration) -> anyhow::Result<Link> {
        tokio::time::timeout(timeout, async {
            let mut ws = self.open_with(n, Some(PROTOBUF_SUBPROTOCOL)).await?;
            let connect = proto::Command {
                id: 1,
                connect: Some(proto::ConnectRequest {
                    token: self.token.clone().unwrap_or_default(),
                    name: "switchboard-bench".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            ws.send(Message::binary(proto::encode_frame([&connect])))
                .await?;
            expect_protobuf_reply(&mut ws, 1, "connect").await?;
            Ok(Link::Protobuf(ws))
        })
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))?
    }
}

/// The Protobuf pong: an empty command, length-delimited (its length, 0).
const PROTOBUF_PONG: &[u8] = &[0];

/// [`expect_reply`] for a Protobuf connection.
async fn expect_protobuf_reply(ws: &mut Ws, id: u32, what: &str) -> anyhow::Result<()> {
    loop {
        let Message::Binary(frame) = next_data_frame(ws, what).await? else {
            continue;
        };
        for reply in proto::FrameDecoder::<proto::Reply>::new(frame) {
            let reply = reply.with_context(|| format!("{what}: an unreadable reply"))?;
            if is_protobuf_ping(&reply) {
                ws.send(Message::binary(PROTOBUF_PONG)).await?;
            } else if reply.id == id {
                if let Some(e) = reply.error {
                    bail!("{what} failed: {} {}", e.code, e.message);
                }
                return Ok(());
            }
        }
    }
}

/// The next text or binary frame, waiting for a reply to `what`; the end of the connection is
/// an error.
async fn next_data_frame(ws: &mut Ws, what: &str) -> anyhow::Result<Message> {
    loop {
        match ws.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => return Ok(message),
            Some(Ok(Message::Close(frame))) => {
                bail!("{what}: server closed the connection: {frame:?}")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("{what}: {e}"),
            None => bail!("{what}: connection ended"),
        }
    }
}

/// Whether `reply` is the server's ping: no id, no push, no result.
fn is_protobuf_ping(reply: &proto::Reply) -> bool {
    *reply == proto::Reply::default()
}

impl Link {
    /// Subscribes to `channel` with command `id` and waits for the reply (answering pings).
    pub async fn subscribe(&mut self, id: u32, channel: &str) -> anyhow::Result<()> {
        match self {
            Link::WebSocket(ws) => subscribe(ws, id, channel).await,
            Link::Protobuf(ws) => {
                let command = proto::Command {
                    id,
                    subscribe: Some(proto::SubscribeRequest {
                        channel: channel.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                ws.send(Message::binary(proto::encode_frame([&command])))
                    .await?;
                expect_protobuf_reply(ws, id, "subscribe").await
            }
            Link::Emulated(session) => {
                let reply = session
                    .call_via(
                        session.addr,
                        "subscribe",
                        serde_json::json!({"channel": channel}),
                    )
                    .await?;
                if reply.get("error").is_some() {
                    bail!("subscribe failed: {reply}");
                }
                // Reads from now on wait as long as the caller's loop decides.
                session.stream.set_wait(Duration::from_secs(365 * 86_400));
                Ok(())
            }
        }
    }

    /// Answers the server's ping.
    pub async fn pong(&mut self) -> anyhow::Result<()> {
        match self {
            Link::WebSocket(ws) => Ok(pong(ws).await?),
            Link::Protobuf(ws) => Ok(ws.send(Message::binary(PROTOBUF_PONG)).await?),
            Link::Emulated(session) => match session.post("{}").await? {
                200 => Ok(()),
                status => bail!("/emulation answered {status} to a pong"),
            },
        }
    }

    /// The next thing the server sent.
    pub async fn read(&mut self) -> LinkRead {
        match self {
            // Text frames are JSON and binary frames Protobuf, whichever the link asked for:
            // a server that sends the other kind gets its messages read as `Other`.
            Link::WebSocket(ws) | Link::Protobuf(ws) => loop {
                return match ws.next().await {
                    Some(Ok(Message::Text(text))) => LinkRead::Frame(text),
                    Some(Ok(Message::Binary(frame))) => LinkRead::Protobuf(frame),
                    Some(Ok(Message::Close(frame))) => {
                        LinkRead::Ended(frame.map_or(1005, |f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => LinkRead::Ended(0),
                };
            },
            Link::Emulated(session) => match session.stream.next_text().await {
                // The emulation's disconnect is a push, then the end of the stream.
                Ok(Some(message)) if message.starts_with(r#"{"push":{"disconnect""#) => {
                    LinkRead::Ended(field_u64(&message, "\"code\":").unwrap_or(0) as u16)
                }
                Ok(Some(message)) => LinkRead::Message(message),
                Ok(None) | Err(_) => LinkRead::Ended(0),
            },
        }
    }

    /// Closes the connection (a close frame on WebSocket; the end of the TCP connection on
    /// the emulation, which the server sees as the client gone).
    pub async fn close(self) {
        match self {
            Link::WebSocket(mut ws) | Link::Protobuf(mut ws) => {
                let _ = ws.close(None).await;
            }
            Link::Emulated(session) => drop(session),
        }
    }
}

/// What [`Link::read`] got.
pub enum LinkRead {
    /// A WebSocket frame: one or more messages, split by newlines (see [`lines`]).
    Frame(Utf8Bytes),
    /// One message of an emulation stream.
    Message(String),
    /// A Protobuf frame: length-delimited replies, read by [`LinkRead::messages`] without
    /// decoding them whole.
    Protobuf(Bytes),
    /// The connection ended: the close (or disconnect) code, 0 when it ended without one.
    Ended(u16),
}

/// One message of a [`LinkRead`], as much as a subscriber needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMessage<'a> {
    /// The server's ping, to answer with [`Link::pong`].
    Ping,
    /// A push: in JSON the whole message, in Protobuf a publication's `data` (when it is
    /// UTF-8, as the bench's JSON payloads are).
    Push(&'a str),
    /// Anything else (a reply).
    Other,
}

impl LinkRead {
    /// The messages read (none for [`LinkRead::Ended`]).
    pub fn messages(&self) -> impl Iterator<Item = LinkMessage<'_>> {
        let (frame, single, replies) = match self {
            LinkRead::Frame(text) => (Some(lines(text)), None, None),
            LinkRead::Message(m) => (None, Some(m.as_str()), None),
            LinkRead::Protobuf(frame) => (None, None, Some(ProtobufMessages { rest: frame })),
            LinkRead::Ended(_) => (None, None, None),
        };
        frame
            .into_iter()
            .flatten()
            .chain(single)
            .map(json_message)
            .chain(replies.into_iter().flatten())
    }
}

fn json_message(line: &str) -> LinkMessage<'_> {
    match line {
        "{}" => LinkMessage::Ping,
        line if line.starts_with("{\"push\"") => LinkMessage::Push(line),
        _ => LinkMessage::Other,
    }
}

/// The messages of a Protobuf frame, scanned rather than decoded: a subscriber needs only to
/// tell pings (empty replies) from publications and to read a publication's `data`, and decoding
/// every reply whole (its maps, its boxed messages) cost the bench more than the server spent
/// sending it. A malformed message ends the scan (what came before it counts).
struct ProtobufMessages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ProtobufMessages<'a> {
    type Item = LinkMessage<'a>;

    fn next(&mut self) -> Option<LinkMessage<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let Some((reply, rest)) = delimited(self.rest) else {
            self.rest = &[];
            return None;
        };
        self.rest = rest;
        if reply.is_empty() {
            return Some(LinkMessage::Ping);
        }
        // Reply.push (4) → Push.pub (4) → Publication.data (4), as in client.proto.
        let data = length_field(reply, 4)
            .and_then(|push| length_field(push, 4))
            .and_then(|publication| length_field(publication, 4));
        Some(match data.map(std::str::from_utf8) {
            Some(Ok(text)) => LinkMessage::Push(text),
            _ => LinkMessage::Other,
        })
    }
}

/// A varint at the front of `buf`, and what follows it.
fn varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &buf[i + 1..]));
        }
    }
    None
}

/// A length-delimited value at the front of `buf`, and what follows it.
fn delimited(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = varint(buf)?;
    let len = usize::try_from(len).ok().filter(|len| *len <= rest.len())?;
    Some(rest.split_at(len))
}

/// The first length-delimited field numbered `number` of a Protobuf message.
fn length_field(mut message: &[u8], number: u64) -> Option<&[u8]> {
    while !message.is_empty() {
        let (key, rest) = varint(message)?;
        message = match key & 7 {
            0 => varint(rest)?.1,
            1 => rest.get(8..)?,
            2 => {
                let (value, rest) = delimited(rest)?;
                if key >> 3 == number {
                    return Some(value);
                }
                rest
            }
            5 => rest.get(4..)?,
            _ => return None,
        };
    }
    None
}

/// Asks the kernel to pick the local port at `connect` (from the 4-tuple) rather than at `bind`,
/// so each source address gets its full ephemeral range per destination.
fn bind_no_port(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads `one` for the given length; the fd is valid for this call.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// `scheme://host[:port]/…` → socket address (IP literals and `localhost` only: the bench
/// targets this machine).
pub fn socket_addr_of(url: &str, scheme: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix(scheme)
        .with_context(|| format!("{url:?} does not start with {scheme}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host, port.parse().context("bad port")?)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .with_context(|| format!("host {host:?} is not an IP address"))?
    };
    Ok(SocketAddr::new(ip, port))
}

/// Reads until the reply with `id` arrives (answering pings); fails on an error reply.
pub async fn expect_reply(ws: &mut Ws, id: u32, what: &str) -> anyhow::Result<()> {
    let prefix = format!("{{\"id\":{id},");
    loop {
        let Message::Text(text) = next_data_frame(ws, what).await? else {
            continue;
        };
        for line in lines(&text) {
            if line == "{}" {
                pong(ws).await?;
            } else if line.starts_with(&prefix) {
                if line.contains("\"error\":") {
                    bail!("{what} failed: {line}");
                }
                return Ok(());
            }
        }
    }
}

/// Subscribes to `channel` with command `id` and waits for the reply (answering pings).
pub async fn subscribe(ws: &mut Ws, id: u32, channel: &str) -> anyhow::Result<()> {
    let subscribe = format!(
        r#"{{"id":{id},"subscribe":{{"channel":{}}}}}"#,
        serde_json::to_string(channel)?
    );
    ws.send(Message::text(subscribe)).await?;
    expect_reply(ws, id, "subscribe").await
}

/// Answers the server's ping (an empty `{}` message) with a pong, which is also `{}`.
pub async fn pong(ws: &mut Ws) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.send(Message::text("{}")).await
}

/// Appends a `publish` command to `frame`, a newline-separated batch of commands sent as one
/// WebSocket message. `channel` is written as is (it must need no JSON escaping) and `data` must
/// already be JSON: publishers build millions of these, so nothing is encoded twice.
pub fn push_publish(frame: &mut String, id: u64, channel: &str, data: &str) {
    if !frame.is_empty() {
        frame.push('\n');
    }
    let _ = write!(
        frame,
        r#"{{"id":{id},"publish":{{"channel":"{channel}","data":{data}}}}}"#
    );
}

/// Appends an `rpc` command to `frame` (see [`push_publish`]); `method` is written as is and
/// `data` must already be JSON.
pub fn push_rpc(frame: &mut String, id: u64, method: &str, data: &str) {
    if !frame.is_empty() {
        frame.push('\n');
    }
    let _ = write!(
        frame,
        r#"{{"id":{id},"rpc":{{"method":"{method}","data":{data}}}}}"#
    );
}

/// The messages of one frame.
pub fn lines(text: &Utf8Bytes) -> impl Iterator<Item = &str> {
    text.as_str().split('\n').filter(|l| !l.is_empty())
}

/// The unsigned integer after `key` (such as `"bs":`) in `line`.
pub fn field_u64(line: &str, key: &str) -> Option<u64> {
    let start = line.find(key)? + key.len();
    let digits = &line.as_bytes()[start..];
    let mut value: u64 = 0;
    let mut any = false;
    for &b in digits {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add((b - b'0') as u64);
        any = true;
    }
    any.then_some(value)
}

/// Microseconds on the system-wide monotonic clock, comparable between processes on one machine
/// (so a publisher process can stamp what a subscriber process receives).
pub fn now_micros() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the struct we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
    }
    #[cfg(not(unix))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_micros() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_fields() {
        assert_eq!(
            socket_addr_of("ws://127.0.0.1:8000/connection/websocket", "ws://", 80).unwrap(),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(
            socket_addr_of("http://localhost/api", "http://", 80).unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert!(socket_addr_of("ws://example.com/", "ws://", 80).is_err());
        let line = r#"{"push":{"channel":"c","pub":{"data":{"bs":42,"bw":3,"bt":17},"offset":9}}}"#;
        assert_eq!(field_u64(line, "\"bs\":"), Some(42));
        assert_eq!(field_u64(line, "\"bw\":"), Some(3));
        assert_eq!(field_u64(line, "\"zz\":"), None);
    }

    #[test]
    fn batches_commands_one_per_line() {
        let mut frame = String::new();
        push_publish(&mut frame, 3, "chat", r#"{"text":"hi"}"#);
        push_rpc(&mut frame, 4, "echo", "{}");
        assert_eq!(
            frame,
            "{\"id\":3,\"publish\":{\"channel\":\"chat\",\"data\":{\"text\":\"hi\"}}}\n\
             {\"id\":4,\"rpc\":{\"method\":\"echo\",\"data\":{}}}"
        );
    }

    #[test]
    fn scans_protobuf_frames_for_pings_and_publication_data() {
        let publication = |data: &'static [u8]| proto::Reply {
            push: Some(proto::Push {
                channel: "c".into(),
                r#pub: Some(proto::Publication {
                    data: Bytes::from_static(data),
                    offset: 9,
                    info: Some(proto::ClientInfo {
                        user: "u".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let replies = [
            proto::Reply {
                id: 2,
                subscribe: Some(Default::default()),
                ..Default::default()
            },
            publication(br#"{"bs":1,"bw":0,"bt":5}"#),
            proto::Reply::default(),
            publication(b"\xff binary"),
        ];
        let read = LinkRead::Protobuf(Bytes::from(proto::encode_frame(replies.iter())));
        let messages: Vec<_> = read.messages().collect();
        assert_eq!(
            messages,
            [
                LinkMessage::Other,
                LinkMessage::Push(r#"{"bs":1,"bw":0,"bt":5}"#),
                LinkMessage::Ping,
                LinkMessage::Other,
            ]
        );
        // A truncated or garbled frame ends the scan without a panic.
        for bad in [
            &[0x05, 0x22][..],
            &[0xff; 12][..],
            &[0x03, 0x22, 0x09, 0x00][..],
        ] {
            let read = LinkRead::Protobuf(Bytes::copy_from_slice(bad));
            assert!(read.messages().all(|m| m == LinkMessage::Other), "{bad:?}");
        }
    }

    #[test]
    fn plans_source_addresses_for_large_loopback_runs() {
        let url = "ws://127.0.0.1:8000/connection/websocket";
        assert!(Target::new(url, None, None, 1000)
            .unwrap()
            .sources
            .is_empty());
        let t = Target::new(url, None, None, 50_000).unwrap();
        assert_eq!(t.sources.len(), 3);
        assert_eq!(t.sources[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    }
}

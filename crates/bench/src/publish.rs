//! Publishers: paced streams of numbered, timestamped publications, over the client protocol
//! (`publish` commands, several per frame when behind) or the server HTTP API (`POST
//! /api/publish`, one request at a time per connection, over keep-alive).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use switchboard_client::raw::{lines, now_micros, push_publish, Target};

use super::group::channel_name;
use super::report::{new_histogram, record};

/// Most `publish` commands in one frame (about 20 KiB with 100-byte payloads).
const MAX_BATCH: usize = 100;

/// What every publisher needs to know.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Publications per second, all publishers together.
    pub rate: f64,
    pub duration: Duration,
    /// Bytes of each publication's `data` JSON.
    pub payload: usize,
    pub channels: usize,
    pub prefix: String,
    pub publishers: usize,
}

impl Plan {
    /// Publications publisher `w` sends in all.
    fn quota(&self, w: usize) -> u64 {
        let total = (self.rate * self.duration.as_secs_f64()).round() as u64;
        let m = self.publishers as u64;
        total / m + u64::from((w as u64) < total % m)
    }

    /// The instant local publication `l` of one publisher is due.
    fn due(&self, start: Instant, l: u64) -> Instant {
        let per_publisher = self.rate / self.publishers as f64;
        start + Duration::from_secs_f64(l as f64 / per_publisher)
    }

    /// The channel and `data` JSON of global sequence number `seq` from publisher `w`.
    fn publication(&self, seq: u64, w: usize) -> (String, String) {
        let channel = channel_name(&self.prefix, (seq % self.channels as u64) as usize);
        let head = format!(r#"{{"bs":{seq},"bw":{w},"bt":{},"bp":""#, now_micros());
        let pad = self.payload.saturating_sub(head.len() + 2);
        let mut data = head;
        data.extend(std::iter::repeat_n('x', pad));
        data.push_str("\"}");
        (channel, data)
    }
}

/// The bench stamp of a publication push: (sequence number, publisher, send time), read from
/// the `{"bs":…,"bw":…,"bt":…` the publishers put at the start of `data`. One substring search
/// then a straight parse: the subscriber side must read millions of these per second.
pub fn bench_stamp(line: &str) -> Option<(u64, u64, u64)> {
    static STAMP: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"{\"bs\":"));
    let bytes = line.as_bytes();
    let mut at = STAMP.find(bytes)? + 6;
    let mut number = |prefix: &[u8]| -> Option<u64> {
        if !bytes[at..].starts_with(prefix) {
            return None;
        }
        at += prefix.len();
        let start = at;
        let mut value: u64 = 0;
        while let Some(d) = bytes.get(at).filter(|b| b.is_ascii_digit()) {
            value = value.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            at += 1;
        }
        (at > start).then_some(value)
    };
    let seq = number(b"")?;
    let publisher = number(b",\"bw\":")?;
    let sent = number(b",\"bt\":")?;
    Some((seq, publisher, sent))
}

/// Live counters, shared with the progress display.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
}

/// One publisher's result.
#[derive(Debug, Clone)]
pub struct PublisherEnd {
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Time from sending each publication to its acknowledgement (the `publish` reply or the
    /// API response), in microseconds.
    pub ack_latency: Histogram<u64>,
}

impl Default for PublisherEnd {
    fn default() -> Self {
        PublisherEnd {
            sent: 0,
            errors: 0,
            first_error: None,
            ack_latency: new_histogram(),
        }
    }
}

/// Runs publisher `w` over a WebSocket until its quota is sent and acknowledged (or `ack_wait`
/// passes after the last send).
pub async fn ws_publisher(
    target: Target,
    plan: Arc<Plan>,
    w: usize,
    start: Instant,
    counters: Arc<Counters>,
    ack_wait: Duration,
) -> PublisherEnd {
    let mut end = PublisherEnd::default();
    let mut ws = match target
        .open_connected(usize::MAX - w, Duration::from_secs(10))
        .await
    {
        Ok(ws) => ws,
        Err(e) => {
            end.first_error = Some(format!("publisher connect: {e:#}"));
            return end;
        }
    };
    let mut quota = plan.quota(w);
    let give_up = start + plan.duration + ack_wait;
    let m = plan.publishers as u64;
    // Command ids start after connect's.
    let mut next_id: u64 = 2;
    let mut acked = 0u64;
    let mut frame = String::new();
    let tick = Duration::from_millis(1);
    let mut next_tick = start;
    let mut ack_deadline: Option<Instant> = None;
    // Send times of publications awaiting their reply; replies come back in command order.
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    loop {
        if end.sent >= quota && acked >= end.sent {
            break;
        }
        let wake = ack_deadline.unwrap_or(next_tick);
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let mut pong = false;
                    for line in lines(&text) {
                        if line == "{}" {
                            pong = true;
                        } else if line.starts_with("{\"id\":") {
                            acked += 1;
                            if let Some(sent_at) = in_flight.pop_front() {
                                record(&mut end.ack_latency, sent_at.elapsed().as_micros() as u64);
                            }
                            counters.acked.fetch_add(1, Ordering::Relaxed);
                            if line.contains("\"error\":") {
                                end.errors += 1;
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                if end.first_error.is_none() {
                                    end.first_error = Some(line.to_string());
                                }
                            }
                        }
                    }
                    if pong && switchboard_client::raw::pong(&mut ws).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    end.first_error.get_or_insert(format!("publisher closed by server: {frame:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    end.first_error.get_or_insert("publisher connection lost".into());
                    break;
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                if ack_deadline.is_some() {
                    end.first_error.get_or_insert(format!("{} publish replies missing", end.sent - acked));
                    break;
                }
                let now = Instant::now();
                frame.clear();
                // Bounded frames: a publisher that fell behind catches up over several frames
                // rather than one larger than the server's message limit.
                let mut batch = 0;
                if now > give_up {
                    // The server cannot take publications as fast as planned; stop here rather
                    // than run unbounded. The report shows the shortfall.
                    end.first_error.get_or_insert(format!("publishing fell behind: {} of {quota} sent", end.sent));
                    quota = end.sent;
                }
                while end.sent < quota && plan.due(start, end.sent) <= now && batch < MAX_BATCH {
                    batch += 1;
                    let seq = end.sent * m + w as u64;
                    let (channel, data) = plan.publication(seq, w);
                    push_publish(&mut frame, next_id, &channel, &data);
                    next_id += 1;
                    end.sent += 1;
                }
                if !frame.is_empty() {
                    let n = frame.matches('\n').count() as u64 + 1;
                    let sent_at = Instant::now();
                    in_flight.extend(std::iter::repeat_n(sent_at, n as usize));
                    if let Err(e) = ws.send(Message::text(frame.as_str())).await {
                        end.first_error.get_or_insert(format!("publisher send failed: {e}"));
                        break;
                    }
                    counters.sent.fetch_add(n, Ordering::Relaxed);
                }
                if end.sent >= quota {
                    ack_deadline = Some(Instant::now() + ack_wait);
                } else if batch < MAX_BATCH {
                    next_tick = (next_tick + tick).max(now);
                }
            }
        }
    }
    let _ = ws.close(None).await;
    end
}

/// Runs publisher `w` over the HTTP API: one keep-alive connection, one request in flight.
pub async fn api_publisher(
    api: ApiTarget,
    plan: Arc<Plan>,
    w: usize,
    start: Instant,
    counters: Arc<Counters>,
) -> PublisherEnd {
    let mut end = PublisherEnd::default();
    let mut conn: Option<HttpConnection> = None;
    let quota = plan.quota(w);
    let m = plan.publishers as u64;
    let give_up = start + plan.duration * 2;
    while end.sent < quota {
        tokio::time::sleep_until(plan.due(start, end.sent)).await;
        if Instant::now() > give_up {
            end.first_error.get_or_insert(format!(
                "publishing fell behind: {} of {quota} sent",
                end.sent
            ));
            break;
        }
        let seq = end.sent * m + w as u64;
        let (channel, data) = plan.publication(seq, w);
        let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
        end.sent += 1;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let sent_at = Instant::now();
        let outcome = async {
            if conn.is_none() {
                conn = Some(HttpConnection::open(api.addr).await?);
            }
            let c = conn.as_mut().expect("just opened");
            c.post(&api, "publish", &body).await
        }
        .await;
        record(&mut end.ack_latency, sent_at.elapsed().as_micros() as u64);
        counters.acked.fetch_add(1, Ordering::Relaxed);
        let failure = match outcome {
            Ok((200, reply)) if !reply.contains("\"error\"") => None,
            Ok((status, reply)) => Some(format!("HTTP {status}: {reply}")),
            Err(e) => {
                conn = None;
                Some(format!("{e:#}"))
            }
        };
        if let Some(failure) = failure {
            end.errors += 1;
            counters.errors.fetch_add(1, Ordering::Relaxed);
            end.first_error.get_or_insert(failure);
        }
    }
    end
}

/// Where the server API is.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    pub addr: SocketAddr,
    /// Path prefix, such as `/api`.
    pub path: String,
    pub host: String,
    pub key: Option<String>,
}

impl ApiTarget {
    /// `http://host:port/api` (IP literal or `localhost`).
    pub fn new(url: &str, key: Option<String>) -> anyhow::Result<ApiTarget> {
        let addr = switchboard_client::raw::socket_addr_of(url, "http://", 80)?;
        let rest = url.trim_start_matches("http://");
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        Ok(ApiTarget {
            addr,
            path: path.to_string(),
            host: host.to_string(),
            key,
        })
    }
}

/// A minimal HTTP/1.1 keep-alive client: enough for JSON POSTs answered with Content-Length.
struct HttpConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl HttpConnection {
    async fn open(addr: SocketAddr) -> anyhow::Result<HttpConnection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` to `{path}/{method}`; returns the status and body.
    async fn post(
        &mut self,
        api: &ApiTarget,
        method: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let key = api
            .key
            .as_ref()
            .map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
        let request = format!(
            "POST {}/{method} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\n\r\n{body}",
            api.path,
            api.host,
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        tokio::time::timeout(Duration::from_secs(10), self.read_response())
            .await
            .context("API response timed out")?
    }

    async fn read_response(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end])?.to_string();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("bad status line")?;
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .context("API response without Content-Length")?;
                let total = end + 4 + length;
                while self.buffer.len() < total {
                    self.fill().await?;
                }
                let body = String::from_utf8_lossy(&self.buffer[end + 4..total]).to_string();
                self.buffer.drain(..total);
                return Ok((status, body));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("API connection closed");
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stamp_publishers_write() {
        let line = r#"{"push":{"channel":"c","pub":{"data":{"bs":42,"bw":3,"bt":17},"offset":9}}}"#;
        assert_eq!(bench_stamp(line), Some((42, 3, 17)));
        assert_eq!(bench_stamp(r#"{"push":{"pub":{"data":{"bs":1}}}}"#), None);
    }

    #[test]
    fn plan_splits_quota_and_pads_payload() {
        let plan = Plan {
            rate: 100.0,
            duration: Duration::from_secs(1),
            payload: 100,
            channels: 3,
            prefix: "b".into(),
            publishers: 3,
        };
        assert_eq!(plan.quota(0) + plan.quota(1) + plan.quota(2), 100);
        assert_eq!(plan.quota(0), 34);
        let (channel, data) = plan.publication(7, 1);
        assert_eq!(channel, "b-1");
        assert_eq!(data.len(), 100);
        let value: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(value["bs"], 7);
        let api = ApiTarget::new("http://127.0.0.1:8000/api", None).unwrap();
        assert_eq!(api.path, "/api");
        assert_eq!(api.host, "127.0.0.1:8000");
    }
}

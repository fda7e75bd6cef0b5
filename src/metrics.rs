//! Node counters, rendered in the Prometheus text format for `GET /metrics`.
//!
//! A handful of relaxed atomics is all the hot path pays; gauges that the hub already knows
//! (connections, channels, subscriptions) are read from it when scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::hooks::events::{Event, EventSink};

/// Monotonic counters of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client commands received.
    pub commands_received: AtomicU64,
    /// Messages (replies and pushes) queued to clients.
    pub messages_sent: AtomicU64,
    /// Frames written to sockets (each may hold many messages).
    pub frames_written: AtomicU64,
    /// Publications accepted from clients and the API.
    pub publications: AtomicU64,
    /// Messages not queued because a client's queue was full or closed.
    pub queue_drops: AtomicU64,
    /// Clients disconnected because their queue overflowed.
    pub slow_disconnects: AtomicU64,
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Client connections refused because the connection limit was reached.
    pub connections_refused: AtomicU64,
    /// WebSocket connections refused by the per-address rate (`connection_rate_per_ip`).
    pub connections_rate_limited: AtomicU64,
    /// Server API calls.
    pub api_requests: AtomicU64,
    /// Clients that completed `connect`.
    pub connects: AtomicU64,
    /// Connected clients gone, whatever the cause.
    pub disconnects: AtomicU64,
    /// Subscriptions that took effect.
    pub subscribes: AtomicU64,
    /// Subscriptions that ended.
    pub unsubscribes: AtomicU64,
    /// Open connections per transport.
    pub transports: TransportConnections,
    /// Open connections per encoding.
    pub encodings: EncodingConnections,
    /// Calls to the application backend's proxy endpoints.
    pub proxy: ProxyMetrics,
    /// Webhook deliveries to the application backend.
    pub webhooks: WebhookMetrics,
}

/// Open connections per transport (gauges), counted from the request that opened each one until
/// it ends, connected or not.
#[derive(Debug, Default)]
pub struct TransportConnections {
    pub websocket: AtomicU64,
    pub http_stream: AtomicU64,
    pub sse: AtomicU64,
    pub uni_websocket: AtomicU64,
    pub uni_sse: AtomicU64,
    pub uni_http_stream: AtomicU64,
}

impl TransportConnections {
    /// Each transport's name (as Centrifugo names it) and its open connections.
    pub fn by_name(&self) -> [(&'static str, u64); 6] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("websocket", get(&self.websocket)),
            ("http_stream", get(&self.http_stream)),
            ("sse", get(&self.sse)),
            ("uni_websocket", get(&self.uni_websocket)),
            ("uni_sse", get(&self.uni_sse)),
            ("uni_http_stream", get(&self.uni_http_stream)),
        ]
    }
}

/// Open connections per encoding (gauges), counted for each client session's whole life.
#[derive(Debug, Default)]
pub struct EncodingConnections {
    pub json: AtomicU64,
    pub protobuf: AtomicU64,
}

impl EncodingConnections {
    fn gauge(&self, encoding: crate::protocol::Encoding) -> &AtomicU64 {
        match encoding {
            crate::protocol::Encoding::Json => &self.json,
            crate::protocol::Encoding::Protobuf => &self.protobuf,
        }
    }

    /// Counts a connection speaking `encoding` as open.
    pub fn opened(&self, encoding: crate::protocol::Encoding) {
        self.gauge(encoding).fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection speaking `encoding` as ended.
    pub fn closed(&self, encoding: crate::protocol::Encoding) {
        self.gauge(encoding).fetch_sub(1, Ordering::Relaxed);
    }

    /// Each encoding's open connections, with the name it is labelled with.
    pub fn by_name(&self) -> [(&'static str, u64); 2] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [("json", get(&self.json)), ("protobuf", get(&self.protobuf))]
    }
}

/// Webhook deliveries (see [`crate::hooks::webhook`]); rendered once webhooks are on.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    pub enabled: AtomicBool,
    /// Events queued in the outbox, not delivered yet (a gauge).
    pub pending: AtomicU64,
    /// Events the backend took.
    pub events_delivered: AtomicU64,
    /// Events the backend refused with a 4xx other than 408 and 429 (logged, not retried).
    pub events_dropped: AtomicU64,
    /// Requests sent again after a failure.
    pub retries: AtomicU64,
    /// The requests: count, failures, timeouts, in flight, durations.
    pub requests: BackendCalls,
}

/// Counts a request in flight until dropped, however the call ends (a timeout drops it).
pub struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    pub fn start(gauge: &'a AtomicU64) -> InFlight<'a> {
        Metrics::inc(gauge);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Calls to each proxy endpoint of the application backend (see [`crate::hooks::proxy`]); only
/// the endpoints in use are rendered.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    pub connect: BackendCalls,
    pub refresh: BackendCalls,
    pub subscribe: BackendCalls,
    pub publish: BackendCalls,
    pub sub_refresh: BackendCalls,
    pub rpc: BackendCalls,
}

impl ProxyMetrics {
    /// Each endpoint with the name its metrics are labelled with.
    fn labelled(&self) -> [(&'static str, &BackendCalls); 6] {
        [
            ("connect", &self.connect),
            ("refresh", &self.refresh),
            ("subscribe", &self.subscribe),
            ("publish", &self.publish),
            ("sub_refresh", &self.sub_refresh),
            ("rpc", &self.rpc),
        ]
    }
}

/// One counter family of the proxy metrics: name, type, help, and which counter it reads.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&BackendCalls) -> &AtomicU64,
);

/// Upper bounds (seconds) of the latency histogram buckets of backend calls; the last bucket,
/// `+Inf`, is implied.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Calls to one backend endpoint.
#[derive(Debug, Default)]
pub struct BackendCalls {
    /// The endpoint is configured: its metrics are rendered.
    pub enabled: AtomicBool,
    /// Calls started (each decision asked of the endpoint).
    pub calls: AtomicU64,
    /// Calls that failed: no answer in time, refused connection, a status other than 200, a body
    /// that is not a proxy answer. Answers that refuse the client are not errors.
    pub errors: AtomicU64,
    /// Of the errors, the calls that ran out of time (waiting for a slot included).
    pub timeouts: AtomicU64,
    /// Requests sent to the backend and not answered yet (a gauge).
    pub in_flight: AtomicU64,
    /// Request durations: a count per bucket of [`LATENCY_BUCKETS`] (not cumulative), then the
    /// overflow.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of request durations, in microseconds.
    latency_sum_micros: AtomicU64,
}

impl BackendCalls {
    /// Records one request's duration.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        Metrics::inc(&self.latency_buckets[bucket]);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        Metrics::add(&self.latency_sum_micros, micros);
    }
}

/// The node's counters follow its lifecycle events (see [`crate::hooks::events`]).
impl EventSink for Metrics {
    fn emit(&self, event: &Event<'_>) {
        let counter = match event {
            Event::Connected { .. } => &self.connects,
            Event::Disconnected { .. } => &self.disconnects,
            Event::Subscribed { .. } => &self.subscribes,
            Event::Unsubscribed { .. } => &self.unsubscribes,
            Event::Published { .. } => &self.publications,
            Event::ChannelOccupied { .. } | Event::ChannelVacated { .. } => return,
        };
        Metrics::inc(counter);
    }
}

/// Instant values read when rendering.
#[derive(Debug, Default)]
pub struct Gauges {
    pub connections: u64,
    pub users: u64,
    pub channels: u64,
    pub subscriptions: u64,
    pub uptime_seconds: u64,
    /// Tasks alive on the runtime (connections, their cleanups, background work): a leak shows
    /// as a count that keeps growing at a steady load.
    pub runtime_tasks: u64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of these counters and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP switchboard_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
            let _ = writeln!(out, "switchboard_{name} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        line(
            "connections",
            "gauge",
            "Connected clients.",
            gauges.connections,
        );
        line("users", "gauge", "Distinct users connected.", gauges.users);
        line(
            "channels",
            "gauge",
            "Channels with subscribers.",
            gauges.channels,
        );
        line(
            "subscriptions",
            "gauge",
            "Client subscriptions.",
            gauges.subscriptions,
        );
        line(
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            gauges.uptime_seconds,
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_transport_connections Open connections by transport."
        );
        let _ = writeln!(out, "# TYPE switchboard_transport_connections gauge");
        for (name, open) in self.transports.by_name() {
            let _ = writeln!(
                out,
                "switchboard_transport_connections{{transport=\"{name}\"}} {open}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_encoding_connections Open connections by encoding."
        );
        let _ = writeln!(out, "# TYPE switchboard_encoding_connections gauge");
        for (name, open) in self.encodings.by_name() {
            let _ = writeln!(
                out,
                "switchboard_encoding_connections{{encoding=\"{name}\"}} {open}"
            );
        }
        let mut line = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP switchboard_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
            let _ = writeln!(out, "switchboard_{name} {value}");
        };
        line(
            "runtime_tasks",
            "gauge",
            "Tasks alive on the async runtime.",
            gauges.runtime_tasks,
        );
        line(
            "connections_accepted_total",
            "counter",
            "Connections accepted.",
            get(&self.connections_accepted),
        );
        line(
            "connections_refused_total",
            "counter",
            "Client connections refused at the connection limit.",
            get(&self.connections_refused),
        );
        line(
            "connections_rate_limited_total",
            "counter",
            "WebSocket connections refused by the per-address rate (connection_rate_per_ip).",
            get(&self.connections_rate_limited),
        );
        line(
            "messages_received_total",
            "counter",
            "Client commands received.",
            get(&self.commands_received),
        );
        line(
            "messages_sent_total",
            "counter",
            "Replies and pushes queued to clients.",
            get(&self.messages_sent),
        );
        line(
            "frames_written_total",
            "counter",
            "WebSocket frames written.",
            get(&self.frames_written),
        );
        line(
            "publications_total",
            "counter",
            "Publications accepted.",
            get(&self.publications),
        );
        line(
            "queue_drops_total",
            "counter",
            "Messages dropped because a client queue was full or closed.",
            get(&self.queue_drops),
        );
        line(
            "slow_disconnects_total",
            "counter",
            "Clients disconnected as slow.",
            get(&self.slow_disconnects),
        );
        line(
            "api_requests_total",
            "counter",
            "Server API requests.",
            get(&self.api_requests),
        );
        line(
            "client_connects_total",
            "counter",
            "Clients that completed connect.",
            get(&self.connects),
        );
        line(
            "client_disconnects_total",
            "counter",
            "Connected clients gone, whatever the cause.",
            get(&self.disconnects),
        );
        line(
            "subscribes_total",
            "counter",
            "Subscriptions that took effect.",
            get(&self.subscribes),
        );
        line(
            "unsubscribes_total",
            "counter",
            "Subscriptions that ended.",
            get(&self.unsubscribes),
        );
        self.render_proxy(&mut out);
        self.render_webhooks(&mut out);
        out
    }

    /// Appends the proxy endpoints' families, one series per endpoint in use (label `hook`).
    fn render_proxy(&self, out: &mut String) {
        let endpoints: Vec<_> = self
            .proxy
            .labelled()
            .into_iter()
            .filter(|(_, calls)| calls.enabled.load(Ordering::Relaxed))
            .collect();
        if endpoints.is_empty() {
            return;
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let families: [Family; 4] = [
            (
                "proxy_calls_total",
                "counter",
                "Calls to the application backend, per proxy endpoint.",
                |c| &c.calls,
            ),
            (
                "proxy_errors_total",
                "counter",
                "Backend calls that failed (timeouts included), per proxy endpoint.",
                |c| &c.errors,
            ),
            (
                "proxy_timeouts_total",
                "counter",
                "Backend calls that ran out of time, per proxy endpoint.",
                |c| &c.timeouts,
            ),
            (
                "proxy_in_flight",
                "gauge",
                "Backend requests awaiting an answer, per proxy endpoint.",
                |c| &c.in_flight,
            ),
        ];
        for (name, kind, help, counter) in families {
            let _ = writeln!(out, "# HELP switchboard_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
            for (hook, calls) in &endpoints {
                let value = get(counter(calls));
                let _ = writeln!(out, "switchboard_{name}{{hook=\"{hook}\"}} {value}");
            }
        }
        let name = "switchboard_proxy_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of backend requests, per proxy endpoint."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (hook, calls) in &endpoints {
            histogram(out, name, &format!("hook=\"{hook}\","), calls);
        }
    }

    /// Appends the webhook families, once webhooks are on.
    fn render_webhooks(&self, out: &mut String) {
        let webhooks = &self.webhooks;
        if !webhooks.enabled.load(Ordering::Relaxed) {
            return;
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let requests = &webhooks.requests;
        let families = [
            ("webhook_queue_depth", "gauge", "Webhook events queued, not delivered yet.", get(&webhooks.pending)),
            ("webhook_events_delivered_total", "counter", "Webhook events the backend took.", get(&webhooks.events_delivered)),
            ("webhook_events_dropped_total", "counter", "Webhook events the backend refused with a 4xx (not retried).", get(&webhooks.events_dropped)),
            ("webhook_requests_total", "counter", "Webhook requests sent.", get(&requests.calls)),
            ("webhook_failures_total", "counter", "Webhook requests that failed (timeouts, connection errors, status other than 2xx).", get(&requests.errors)),
            ("webhook_timeouts_total", "counter", "Webhook requests without an answer in time.", get(&requests.timeouts)),
            ("webhook_retries_total", "counter", "Webhook requests sent again after a failure.", get(&webhooks.retries)),
            ("webhook_in_flight", "gauge", "Webhook requests awaiting an answer.", get(&requests.in_flight)),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP switchboard_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
            let _ = writeln!(out, "switchboard_{name} {value}");
        }
        let name = "switchboard_webhook_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Duration of webhook requests.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        histogram(out, name, "", requests);
    }
}

/// Appends the buckets, sum and count of `calls`' latency histogram; `labels` (empty, or ending
/// with a comma) come before `le`.
fn histogram(out: &mut String, name: &str, labels: &str, calls: &BackendCalls) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut cumulative = 0;
    for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&calls.latency_buckets) {
        cumulative += get(bucket);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
    }
    cumulative += get(&calls.latency_buckets[LATENCY_BUCKETS.len()]);
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
    let sum = get(&calls.latency_sum_micros) as f64 / 1e6;
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() {
        String::new()
    } else {
        format!("{{{plain}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_metrics_render_only_endpoints_in_use_as_prometheus_families() {
        let metrics = Metrics::default();
        assert!(!metrics.render(&Gauges::default()).contains("proxy"));
        let connect = &metrics.proxy.connect;
        connect.enabled.store(true, Ordering::Relaxed);
        Metrics::add(&connect.calls, 3);
        Metrics::inc(&connect.errors);
        connect.observe(Duration::from_millis(3));
        connect.observe(Duration::from_millis(30));
        connect.observe(Duration::from_secs(9));
        let text = metrics.render(&Gauges::default());
        assert!(text.contains("switchboard_proxy_calls_total{hook=\"connect\"} 3"));
        assert!(text.contains("switchboard_proxy_errors_total{hook=\"connect\"} 1"));
        assert!(text.contains(
            "switchboard_proxy_duration_seconds_bucket{hook=\"connect\",le=\"0.005\"} 1"
        ));
        assert!(text
            .contains("switchboard_proxy_duration_seconds_bucket{hook=\"connect\",le=\"0.05\"} 2"));
        assert!(text
            .contains("switchboard_proxy_duration_seconds_bucket{hook=\"connect\",le=\"+Inf\"} 3"));
        assert!(text.contains("switchboard_proxy_duration_seconds_count{hook=\"connect\"} 3"));
        assert!(!text.contains("hook=\"rpc\""));
        assert_eq!(
            text.matches("# TYPE switchboard_proxy_calls_total").count(),
            1
        );
    }
}

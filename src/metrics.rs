//! Node counters, rendered in the Prometheus text format for `GET /metrics`.
//!
//! A handful of relaxed atomics is all the hot path pays; gauges that the hub already knows
//! (connections, channels, subscriptions) are read from it when scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// WebSocket connections refused because the connection limit was reached.
    pub connections_refused: AtomicU64,
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
        line(
            "connections_accepted_total",
            "counter",
            "Connections accepted.",
            get(&self.connections_accepted),
        );
        line(
            "connections_refused_total",
            "counter",
            "WebSocket connections refused at the connection limit.",
            get(&self.connections_refused),
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
        out
    }
}

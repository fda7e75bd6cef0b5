//! `switchboard bench`: a load generator for any server that speaks the Centrifugo v2 JSON client
//! protocol and its server HTTP API (Switchboard, Centrifugo, the reference in `bench/reference/`).
//!
//! Scenarios, one module each: [`fanout`] (subscribers × publications: throughput, loss, order,
//! end-to-end latency), [`idle`] (many quiet subscribed connections: memory per connection),
//! [`rpc`] (closed-loop `echo` round trips) and [`connect`] (a connection storm). Shared parts:
//! [`group`] (a set of subscribers and their accounting), [`publish`] (paced publishers),
//! [`worker`] (spreading subscribers over processes) and [`report`] (tables, JSON, histograms).
//! Sockets, spread source addresses and the wire are the [`switchboard_client::raw`] module's;
//! `fanout` and `idle` subscribers connect over any of its transports (WebSocket, http_stream,
//! SSE) and encodings (JSON, Protobuf), or through the high-level SDK ([`SubscriberArgs`]).
//!
//! The `switchboard` binary calls [`run`] for `switchboard bench`; this crate does not depend on
//! the server, so it measures Switchboard and any compatible server alike.
//!
//! The bench runs on one thread by default: pinned to its own core, it should be cheaper than
//! the server it measures, and the report says how busy it was so a saturated bench is visible.

pub mod backend;
pub mod connect;
pub mod fanout;
pub mod group;
pub mod idle;
pub mod publish;
pub mod report;
pub mod rpc;
pub mod soak;
pub mod worker;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// `switchboard bench <scenario>`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// What to measure.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N subscribers on K channels; publications at a rate for a duration; delivered/s, loss,
    /// duplicates, order and end-to-end latency.
    Fanout(fanout::FanoutArgs),
    /// Hold C connected and subscribed connections; with --pid, the server's memory per
    /// connection.
    Idle(idle::IdleArgs),
    /// K clients calling rpc `echo` in a closed loop; round trips/s and latency.
    Rpc(rpc::RpcArgs),
    /// A connection storm: WebSocket handshakes + `connect` per second, and failures.
    Connect(connect::ConnectArgs),
    /// A long steady mixed load (subscribers, a publisher, connection churn) while the
    /// server's memory, open files and tasks are sampled; then the server settles.
    Soak(soak::SoakArgs),
    /// Not a load: a minimal application backend (connect and rpc proxy, webhook receiver) to
    /// measure the server with its hooks on.
    Backend(backend::BackendArgs),
}

/// Options every scenario has.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// WebSocket endpoint of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub url: String,
    /// Connection token to send in `connect` (for servers that require one).
    #[arg(long)]
    pub token: Option<String>,
    /// Spread client sockets over this many source addresses from 127.0.0.2 up [default: one
    /// per 20,000 connections beyond the first 20,000, loopback only].
    #[arg(long)]
    pub sources: Option<usize>,
    /// Handshakes in flight at once while opening connections.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds one connection may take to open, connect and subscribe.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Print the report as JSON (one object) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Threads for the bench's runtime (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Internal: this process is worker I of a `--workers` run.
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
}

/// How publications reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `publish` commands over WebSocket connections.
    Ws,
    /// `POST /api/publish` over HTTP keep-alive connections.
    Api,
}

/// How subscribers reach the server (`--transport`; the `fanout` and `idle` scenarios only:
/// the others' clients send commands at a rate the HTTP fallbacks are not made for).
/// Publishers always use WebSocket (`--via ws`) or the server API (`--via api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum TransportArg {
    /// `/connection/websocket` at `--url`.
    #[value(name = "websocket")]
    #[serde(rename = "websocket")]
    WebSocket,
    /// `POST /connection/http_stream` on `--url`'s host, commands over `POST /emulation`.
    #[value(name = "http_stream")]
    #[serde(rename = "http_stream")]
    HttpStream,
    /// `GET /connection/sse` on `--url`'s host, commands over `POST /emulation`.
    #[value(name = "sse")]
    #[serde(rename = "sse")]
    Sse,
}

impl TransportArg {
    /// The name `--transport` takes.
    pub fn name(self) -> &'static str {
        match self {
            TransportArg::WebSocket => "websocket",
            TransportArg::HttpStream => "http_stream",
            TransportArg::Sse => "sse",
        }
    }
}

impl From<TransportArg> for switchboard_client::raw::Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::WebSocket => Self::WebSocket,
            TransportArg::HttpStream => Self::HttpStream,
            TransportArg::Sse => Self::Sse,
        }
    }
}

/// How subscribers encode the protocol (`--encoding`; `fanout` and `idle`, on `--transport
/// websocket`). Publishers speak JSON either way: what is measured is the delivery to
/// subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingArg {
    /// JSON text frames.
    Json,
    /// The `centrifuge-protobuf` subprotocol.
    Protobuf,
}

impl From<EncodingArg> for switchboard_client::raw::Encoding {
    fn from(e: EncodingArg) -> Self {
        match e {
            EncodingArg::Json => Self::Json,
            EncodingArg::Protobuf => Self::Protobuf,
        }
    }
}

/// What drives each subscriber (`--client`; `fanout` and `idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientArg {
    /// The client crate's wire layer (`switchboard_client::raw`): one task per connection
    /// reading frames and answering pings itself, payloads scanned without parsing.
    Wire,
    /// The high-level SDK (`switchboard_client::Client`): its driver task per connection, its
    /// subscription state and event channel, payloads parsed as JSON (WebSocket only; no spread
    /// source addresses, so at most about 28,000 connections on one loopback address).
    Sdk,
}

/// Subscriber options of the `fanout` and `idle` scenarios.
#[derive(Debug, Clone, Copy, Args)]
pub struct SubscriberArgs {
    /// How the subscribers connect.
    #[arg(long, value_enum, default_value_t = TransportArg::WebSocket)]
    pub transport: TransportArg,
    /// How the subscribers encode the protocol (protobuf: on websocket only).
    #[arg(long, value_enum, default_value_t = EncodingArg::Json)]
    pub encoding: EncodingArg,
    /// What drives each subscriber connection (sdk: on websocket only).
    #[arg(long, value_enum, default_value_t = ClientArg::Wire)]
    pub client: ClientArg,
}

impl SubscriberArgs {
    /// Applies the transport and encoding to `target`, refusing combinations not offered.
    pub fn apply(&self, target: &mut switchboard_client::raw::Target) -> anyhow::Result<()> {
        if self.transport != TransportArg::WebSocket {
            if self.encoding == EncodingArg::Protobuf {
                anyhow::bail!("--encoding protobuf needs --transport websocket");
            }
            if self.client == ClientArg::Sdk {
                anyhow::bail!("--client sdk needs --transport websocket");
            }
        }
        target.transport = self.transport.into();
        target.encoding = self.encoding.into();
        Ok(())
    }
}

/// Runs a bench scenario: builds the runtime, raises the fd limit, prints the report.
///
/// `--workers` re-executes the current program with the same arguments, so the binary that calls
/// this must accept them as given (the `switchboard` binary does: `switchboard bench …`).
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Scenario::Backend(backend) = args.scenario {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(backend::run(backend));
    }
    let common = match &args.scenario {
        Scenario::Fanout(a) => &a.common,
        Scenario::Idle(a) => &a.common,
        Scenario::Rpc(a) => &a.common,
        Scenario::Connect(a) => &a.common,
        Scenario::Soak(a) => &a.common,
        Scenario::Backend(_) => return Ok(()),
    }
    .clone();
    let fd_limit = raise_fd_limit();
    let runtime = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(common.threads)
            .enable_all()
            .build()?
    };
    let env = Env { fd_limit };
    runtime.block_on(async move {
        match args.scenario {
            Scenario::Fanout(a) => fanout::run(a, env).await,
            Scenario::Idle(a) => idle::run(a, env).await,
            Scenario::Rpc(a) => rpc::run(a, env).await,
            Scenario::Connect(a) => connect::run(a, env).await,
            Scenario::Soak(a) => soak::run(a, env).await,
            Scenario::Backend(_) => Ok(()),
        }
    })
}

/// Raises the soft open-file limit as far as the hard limit allows (every connection is a file
/// descriptor, and the default soft limit is often 1,024) and returns the soft limit now in force.
/// A hard limit of "unlimited" cannot be a soft limit for files, so the target is capped at the
/// kernel's per-process maximum (fs.nr_open, commonly 1,048,576).
fn raise_fd_limit() -> u64 {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1 << 20);
    rlimit::increase_nofile_limit(ceiling).unwrap_or_else(|_| {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024)
    })
}

/// Facts about the bench process the scenarios check against.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    /// The bench's soft fd limit after raising it.
    pub fd_limit: u64,
}

impl Env {
    /// Fails early when `connections` sockets cannot fit in one process.
    pub fn check_fds(&self, connections: usize, workers: usize) -> anyhow::Result<()> {
        let per_process = connections.div_ceil(workers.max(1)) as u64 + 64;
        if per_process > self.fd_limit {
            anyhow::bail!(
                "{connections} connections over {workers} process(es) need about {per_process} \
                 descriptors each, above this process's limit of {}: use --workers {}",
                self.fd_limit,
                (connections as u64).div_ceil(self.fd_limit.saturating_sub(64).max(1))
            );
        }
        Ok(())
    }
}

/// Prints the report: JSON (`--json`) or the table.
pub fn emit<T: Serialize>(common: &CommonArgs, json: &T, table: report::Table) {
    if common.json {
        match serde_json::to_string_pretty(json) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cannot encode the report: {e}"),
        }
    } else {
        print!("{}", table.render());
    }
}

/// A progress bar counting to `len` (hidden with `--quiet`, in workers, or off a terminal).
pub fn counter(common: &CommonArgs, len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), draw_target(common));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<12} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A progress bar over a duration, whose message the caller updates.
pub fn timer(common: &CommonArgs, duration: Duration, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(duration.as_millis().max(1) as u64),
        draw_target(common),
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:<12} [{bar:40}] {elapsed}/{len_s} {msg}")
            .expect("valid template")
            .with_key(
                "len_s",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}s", state.len().unwrap_or(0) / 1000);
                },
            )
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn draw_target(common: &CommonArgs) -> ProgressDrawTarget {
    if common.quiet || common.worker_index.is_some() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// CPU seconds this process has used (user + system), to show how busy the bench was.
pub fn cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes the struct we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }
    #[cfg(not(unix))]
    0.0
}

/// CPU seconds used by process `pid` (utime + stime from /proc/PID/stat), if readable.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// Resident memory (VmRSS) of process `pid`, in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc status")
}

/// Parses `10`, `10s`, `500ms`, `2m` as a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {text:?} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_fd_checks() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("3h").is_err());
        let env = Env { fd_limit: 20_000 };
        env.check_fds(19_000, 1).unwrap();
        let err = env.check_fds(50_000, 1).unwrap_err().to_string();
        assert!(err.contains("--workers 3"), "{err}");
        env.check_fds(50_000, 3).unwrap();
    }
}

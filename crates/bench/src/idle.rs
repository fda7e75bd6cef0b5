//! `bench idle`: open C connections, subscribe each to one of K channels, and hold them for D
//! seconds answering pings. With `--pid` of a local server, its resident memory (VmRSS) before
//! and after gives the memory one subscribed connection costs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use switchboard_client::raw::Target;

use super::group::Group;
use super::report::{thousands, Table};
use super::worker::{merge, nothing_published, share, Parent, Ready, Workers};
use super::{
    counter, emit, parse_duration, rss_kib, timer, ClientArg, CommonArgs, EncodingArg, Env,
    SubscriberArgs, TransportArg,
};

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub subscriber: SubscriberArgs,
    /// Connections to open and hold.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// Channels the connections subscribe to (connection i to channel i % K).
    #[arg(long, short = 'k', default_value_t = 100)]
    pub channels: usize,
    /// How long to hold the connections once all are open.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Wait this long after opening before reading the server's memory.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Process id of a local server: report its RSS per connection.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Channel name prefix.
    #[arg(long, default_value = "idle")]
    pub prefix: String,
    /// Spread the connections over this many bench processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

/// The idle report (`--json`).
#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    /// How the connections were made.
    pub transport: TransportArg,
    pub encoding: EncodingArg,
    pub client: ClientArg,
    pub connections: usize,
    pub connected: u64,
    pub connect_failures: u64,
    pub channels: usize,
    pub open_seconds: f64,
    pub held_seconds: f64,
    /// Connections still open when the hold ended.
    pub alive_at_end: u64,
    pub closed_early: BTreeMap<u16, u64>,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_rss_peak_kib: Option<u64>,
    /// (after − before) / connected, in bytes.
    pub server_bytes_per_connection: Option<u64>,
    pub bench_bytes_per_connection: Option<u64>,
    pub errors: Vec<String>,
}

pub async fn run(args: IdleArgs, env: Env) -> anyhow::Result<()> {
    let common = &args.common;
    let mut target = Target::new(
        &common.url,
        common.token.clone(),
        common.sources,
        args.connections,
    )?;
    args.subscriber.apply(&mut target)?;
    if let Some(index) = common.worker_index {
        let mut parent = Parent::new();
        let group = Group::open(
            &target,
            args.subscriber.client,
            share(args.connections, args.workers, index),
            args.channels,
            0,
            &args.prefix,
            common.connect_concurrency,
            common.connect_timeout,
            |_| {},
        )
        .await;
        parent.send(&Ready {
            connected: group.connected(),
            failed: group.failed(),
        })?;
        let _: serde_json::Value = parent.receive().await?;
        parent.send(&group.finish(nothing_published(), Duration::ZERO).await)?;
        return Ok(());
    }
    env.check_fds(args.connections, args.workers)?;
    let rss = |pid: Option<u32>| pid.and_then(|p| rss_kib(p).ok());
    let self_pid = std::process::id();
    let bench_before = rss(Some(self_pid));
    let before = rss(args.pid);
    if args.pid.is_some() && before.is_none() {
        anyhow::bail!("cannot read the memory of process {:?}", args.pid);
    }

    let opened = Instant::now();
    let (local, mut workers, connected, failed) = if args.workers > 1 {
        let mut workers = Workers::spawn(args.workers)?;
        let bar = counter(common, args.workers as u64, "workers");
        let ready: Vec<Ready> = workers.receive().await?;
        bar.finish_and_clear();
        let connected = ready.iter().map(|r| r.connected).sum();
        let failed = ready.iter().map(|r| r.failed).sum();
        (None, Some(workers), connected, failed)
    } else {
        let bar = counter(common, args.connections as u64, "connecting");
        let group = Group::open(
            &target,
            args.subscriber.client,
            0..args.connections,
            args.channels,
            0,
            &args.prefix,
            common.connect_concurrency,
            common.connect_timeout,
            |_| bar.inc(1),
        )
        .await;
        bar.finish_and_clear();
        let (c, f) = (group.connected(), group.failed());
        (Some(group), None, c, f)
    };
    let open_seconds = opened.elapsed().as_secs_f64();
    tokio::time::sleep(args.settle).await;
    let bench_after = rss(Some(self_pid));

    let held = Instant::now();
    let bar = timer(common, args.duration, "holding");
    let mut peak = rss(args.pid);
    while held.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(500).min(args.duration)).await;
        bar.set_position(held.elapsed().as_millis() as u64);
        if let Some(now) = rss(args.pid) {
            peak = peak.max(Some(now));
        }
        let mut message = String::new();
        if let Some(g) = &local {
            message = format!("{} open", thousands(g.alive()));
        }
        if let Some(kib) = peak {
            message.push_str(&format!(" · server RSS {} MiB", kib / 1024));
        }
        bar.set_message(message);
    }
    bar.finish_and_clear();
    let held_seconds = held.elapsed().as_secs_f64();
    let after = rss(args.pid);
    let report = match (local, workers.as_mut()) {
        (Some(group), _) => group.finish(nothing_published(), Duration::ZERO).await,
        (None, Some(w)) => {
            w.send(&serde_json::json!({"stop": true})).await?;
            merge(w.receive().await?)
        }
        (None, None) => unreachable!("either a local group or workers"),
    };
    if let Some(w) = workers {
        w.wait().await;
    }
    let closed: u64 = report.closed_early.values().sum();
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if connected > 0 => Some(b.saturating_sub(a) * 1024 / connected),
        _ => None,
    };
    let result = IdleReport {
        scenario: "idle",
        transport: args.subscriber.transport,
        encoding: args.subscriber.encoding,
        client: args.subscriber.client,
        connections: args.connections,
        connected,
        connect_failures: failed,
        channels: args.channels,
        open_seconds: (open_seconds * 100.0).round() / 100.0,
        held_seconds: (held_seconds * 100.0).round() / 100.0,
        alive_at_end: connected - closed,
        closed_early: report.closed_early.clone(),
        server_rss_before_kib: before,
        server_rss_after_kib: after,
        server_rss_peak_kib: peak,
        server_bytes_per_connection: per(before, after),
        bench_bytes_per_connection: if args.workers > 1 {
            None
        } else {
            per(bench_before, bench_after)
        },
        errors: report.errors.clone(),
    };
    let mut t = Table::new(format!(
        "idle: {} {} {:?} connections on {} channel(s), held {:.0} s",
        args.connections,
        args.subscriber.transport.name(),
        args.subscriber.encoding,
        args.channels,
        result.held_seconds
    ));
    t.row(
        "connected",
        format!(
            "{} ({} failed) in {:.1} s → {}/s",
            thousands(connected),
            failed,
            open_seconds,
            thousands((connected as f64 / open_seconds.max(1e-9)) as u64)
        ),
    )
    .row(
        "alive at end",
        format!(
            "{} (closed early: {:?})",
            thousands(result.alive_at_end),
            result.closed_early
        ),
    );
    if let (Some(b), Some(a)) = (before, after) {
        t.row(
            "server RSS",
            format!(
                "{:.1} MiB before → {:.1} MiB after (peak {:.1} MiB)",
                b as f64 / 1024.0,
                a as f64 / 1024.0,
                peak.unwrap_or(a) as f64 / 1024.0
            ),
        );
        t.row(
            "per connection",
            format!(
                "{} bytes ({:.2} KiB)",
                result.server_bytes_per_connection.unwrap_or(0),
                result.server_bytes_per_connection.unwrap_or(0) as f64 / 1024.0
            ),
        );
    }
    if let Some(b) = result.bench_bytes_per_connection {
        t.row("bench per connection", format!("{b} bytes"));
    }
    for e in &result.errors {
        t.row("error", e.clone());
    }
    emit(common, &result, t);
    Ok(())
}

//! `bench connect`: a connection storm. C clients open a WebSocket and complete `connect`, at
//! most M at once; every connection stays open until the storm is over (so the server holds them
//! all, as after a restart when every client comes back), then all close.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use switchboard_client::raw::{Target, Ws};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::report::{new_histogram, record, thousands, Latency, Table};
use super::{counter, cpu_seconds, emit, process_cpu_seconds, CommonArgs, Env};

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections to open.
    #[arg(long, short = 'c', default_value_t = 5000)]
    pub connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, short = 'm', default_value_t = 200)]
    pub concurrency: usize,
    /// Process id of a local server, to report its CPU use during the storm.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// The connect report (`--json`).
#[derive(Debug, Serialize)]
pub struct ConnectReport {
    pub scenario: &'static str,
    pub connections: usize,
    pub concurrency: usize,
    pub connected: u64,
    pub failed: u64,
    /// Failures by error message (first 60 characters).
    pub failures: BTreeMap<String, u64>,
    pub seconds: f64,
    pub connects_per_sec: f64,
    /// Time from opening the socket to the `connect` reply.
    pub latency: Latency,
    pub bench_cpu_percent: f64,
    pub server_cpu_percent: Option<f64>,
}

pub async fn run(args: ConnectArgs, env: Env) -> anyhow::Result<()> {
    let common = &args.common;
    env.check_fds(args.connections, 1)?;
    let target = Arc::new(Target::new(
        &common.url,
        common.token.clone(),
        common.sources,
        args.connections,
    )?);
    let bar = counter(common, args.connections as u64, "connecting");
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut histogram = new_histogram();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut open: Vec<Ws> = Vec::with_capacity(args.connections);
    let mut tasks = JoinSet::new();
    let cpu_before = (cpu_seconds(), args.pid.and_then(process_cpu_seconds));
    let start = Instant::now();
    let mut settle = |done: Result<(Duration, anyhow::Result<Ws>), tokio::task::JoinError>,
                      open: &mut Vec<Ws>| {
        match done {
            Ok((took, Ok(ws))) => {
                record(&mut histogram, took.as_micros() as u64);
                open.push(ws);
            }
            Ok((_, Err(e))) => {
                let key: String = format!("{e:#}").chars().take(60).collect();
                *failures.entry(key).or_default() += 1;
            }
            Err(e) => *failures.entry(e.to_string()).or_default() += 1,
        }
        bar.inc(1);
    };
    for n in 0..args.connections {
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let target = target.clone();
        let timeout = common.connect_timeout;
        tasks.spawn(async move {
            let began = Instant::now();
            let result = target.open_connected(n, timeout).await;
            drop(permit);
            (began.elapsed(), result)
        });
        while let Some(done) = tasks.try_join_next() {
            settle(done, &mut open);
        }
    }
    while let Some(done) = tasks.join_next().await {
        settle(done, &mut open);
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_after = (cpu_seconds(), args.pid.and_then(process_cpu_seconds));
    bar.finish_and_clear();
    let connected = open.len() as u64;
    // Close everything (bounded: each close gets a short time).
    let mut closing = JoinSet::new();
    for mut ws in open {
        closing.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        });
    }
    while closing.join_next().await.is_some() {}
    let failed = failures.values().sum();
    let result = ConnectReport {
        scenario: "connect",
        connections: args.connections,
        concurrency: args.concurrency,
        connected,
        failed,
        failures,
        seconds: (seconds * 100.0).round() / 100.0,
        connects_per_sec: (connected as f64 / seconds).round(),
        latency: Latency::of(&histogram),
        bench_cpu_percent: ((cpu_after.0 - cpu_before.0) / seconds * 1000.0).round() / 10.0,
        server_cpu_percent: match (cpu_before.1, cpu_after.1) {
            (Some(a), Some(b)) => Some(((b - a) / seconds * 1000.0).round() / 10.0),
            _ => None,
        },
    };
    let mut t = Table::new(format!(
        "connect storm: {} connections, {} at once",
        args.connections, args.concurrency
    ));
    t.row(
        "connected",
        format!(
            "{} in {:.2} s → {}/s, {} failed",
            thousands(connected),
            seconds,
            thousands(result.connects_per_sec as u64),
            failed
        ),
    )
    .row("handshake+connect", result.latency.describe())
    .row(
        "cpu",
        format!(
            "bench {:.0}%{}",
            result.bench_cpu_percent,
            result
                .server_cpu_percent
                .map_or(String::new(), |s| format!(" · server {s:.0}%"))
        ),
    );
    for (e, n) in &result.failures {
        t.row("failure", format!("{n} × {e}"));
    }
    emit(common, &result, t);
    Ok(())
}

//! `bench soak`: a steady mixed load for a long while — subscribers on a few channels, a paced
//! publisher, and connection churn (clients that connect, subscribe, call rpc `echo` and leave,
//! half of them closing cleanly, half dropping the socket) — while the server's resident memory,
//! open files, runtime tasks and connections are sampled. Then the churn stops and the server is
//! let settle: what a leak looks like is files or tasks above where they were before the churn,
//! or memory that keeps climbing. Delivery is checked too: every publication reaches every
//! subscriber of its channel once, in order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use switchboard_client::raw::{
    expect_reply, lines, pong, push_publish, push_rpc, subscribe, Target,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::report::Table;
use super::{emit, parse_duration, rss_kib, CommonArgs, Env};

#[derive(Debug, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long the load runs (then the server settles for up to 15 s).
    #[arg(long, short = 'd', default_value = "2m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Subscribers held for the whole run.
    #[arg(long, short = 'n', default_value_t = 200)]
    pub subscribers: usize,
    /// Channels they spread over.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub channels: usize,
    /// Publications per second.
    #[arg(long, short = 'r', default_value_t = 200.0)]
    pub rate: f64,
    /// Short-lived connections opened (and closed) per second.
    #[arg(long, default_value_t = 20.0)]
    pub churn: f64,
    /// Time between samples of the server.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Process id of a local server, to sample its memory and open files.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// One look at the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub seconds: f64,
    pub rss_kib: Option<u64>,
    pub open_files: Option<u64>,
    pub runtime_tasks: Option<u64>,
    pub connections: Option<u64>,
}

/// The soak report (`--json`).
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub scenario: &'static str,
    pub seconds: f64,
    pub subscribers: usize,
    pub channels: usize,
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub churned: u64,
    pub churn_failures: u64,
    /// Before the churn started, with the subscribers and the publisher connected.
    pub baseline: Sample,
    /// After the churn stopped and the server settled.
    pub settled: Sample,
    /// Growth of resident memory over the second half of the run, KiB per minute.
    pub rss_growth_kib_per_min: Option<f64>,
    pub samples: Vec<Sample>,
    pub failures: Vec<String>,
}

/// Delivery counters of every subscriber.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
}

pub async fn run(args: SoakArgs, env: Env) -> anyhow::Result<()> {
    let common = &args.common;
    env.check_fds(args.subscribers + 200, 1)?;
    anyhow::ensure!(
        args.channels > 0 && args.rate > 0.0,
        "channels and rate must be positive"
    );
    let target = Arc::new(Target::new(
        &common.url,
        common.token.clone(),
        common.sources,
        0,
    )?);
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut failures = Vec::new();

    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let mut ws = target.open_connected(i, common.connect_timeout).await?;
        let channel = format!("soak-{}", i % args.channels);
        subscribe(&mut ws, 2, &channel).await?;
        let tally = tally.clone();
        subscribers.push(tokio::spawn(async move {
            let mut next = 1u64;
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                for line in lines(&text) {
                    if line == "{}" {
                        let _ = pong(&mut ws).await;
                    } else if let Some(n) = publication_number(line) {
                        match n.cmp(&next) {
                            std::cmp::Ordering::Equal => {}
                            std::cmp::Ordering::Greater => {
                                tally.lost.fetch_add(n - next, Ordering::Relaxed);
                            }
                            std::cmp::Ordering::Less => {
                                tally.duplicates.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                        next = n + 1;
                        tally.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            next - 1
        }));
    }

    // The publisher: one connection, numbered publications round-robin over the channels.
    let mut publisher = target
        .open_connected(args.subscribers, common.connect_timeout)
        .await?;
    let published = Arc::new(AtomicU64::new(0));
    let baseline = sample(&args, target.addr, started).await;
    let deadline = started + args.duration;
    let publishing = {
        let (published, stop) = (published.clone(), stop.clone());
        let channels = args.channels;
        let period = Duration::from_secs_f64(1.0 / args.rate);
        tokio::spawn(async move {
            let mut counts = vec![0u64; channels];
            let mut tick = tokio::time::interval(period);
            let mut id = 10u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = tick.tick() => {
                        let c = (id as usize) % channels;
                        counts[c] += 1;
                        let mut frame = String::new();
                        let data = format!("{{\"n\":{}}}", counts[c]);
                        push_publish(&mut frame, id, &format!("soak-{c}"), &data);
                        id += 1;
                        if publisher.send(Message::text(frame)).await.is_err() {
                            break;
                        }
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    incoming = publisher.next() => match incoming {
                        Some(Ok(Message::Text(text))) if lines(&text).any(|l| l == "{}") => {
                            let _ = pong(&mut publisher).await;
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
            (counts, publisher)
        })
    };

    // Churn: short-lived connections, at most 64 at once.
    let churned = Arc::new(AtomicU64::new(0));
    let churn_failures = Arc::new(AtomicU64::new(0));
    let churning = {
        let (target, stop) = (target.clone(), stop.clone());
        let (churned, churn_failures) = (churned.clone(), churn_failures.clone());
        let (channels, timeout) = (args.channels, common.connect_timeout);
        let period = Duration::from_secs_f64(1.0 / args.churn.max(0.001));
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(64));
            let mut tick = tokio::time::interval(period);
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                n += 1;
                let (target, churned, churn_failures) =
                    (target.clone(), churned.clone(), churn_failures.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let visit = async {
                        let mut ws = target.open_connected(n, timeout).await?;
                        subscribe(&mut ws, 2, &format!("soak-{}", n % channels)).await?;
                        let mut frame = String::new();
                        push_rpc(&mut frame, 3, "echo", "{\"churn\":true}");
                        ws.send(Message::text(frame)).await?;
                        expect_reply(&mut ws, 3, "rpc").await?;
                        if n % 2 == 0 {
                            let _ = ws.close(None).await;
                        }
                        anyhow::Ok(())
                    };
                    match tokio::time::timeout(timeout, visit).await {
                        Ok(Ok(())) => churned.fetch_add(1, Ordering::Relaxed),
                        _ => churn_failures.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
            // Wait for the visits in flight.
            let _ = slots.acquire_many(64).await;
        })
    };

    let mut samples = vec![baseline.clone()];
    while Instant::now() < deadline {
        let wait = args.sample_every.min(deadline - Instant::now());
        tokio::time::sleep(wait).await;
        samples.push(sample(&args, target.addr, started).await);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = churning.await;
    let (counts, mut publisher) = publishing.await?;
    // Let the last publications arrive, and the server forget the churned connections.
    let expected_connections = (args.subscribers + 1) as u64;
    let settle_until = Instant::now() + Duration::from_secs(15);
    let mut settled = sample(&args, target.addr, started).await;
    while Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        settled = sample(&args, target.addr, started).await;
        let delivered = tally.delivered.load(Ordering::Relaxed);
        let expected: u64 = expected_deliveries(&counts, args.subscribers);
        // Closed connections linger a moment (up to 2 s, reading what their client still
        // sends) before their sockets go: files and tasks are compared once back near the
        // baseline, or when the wait runs out (a leak never comes back).
        let near = |now: Option<u64>, before: Option<u64>| match (now, before) {
            (Some(now), Some(before)) => now <= before + 2,
            _ => true,
        };
        if settled.connections == Some(expected_connections)
            && delivered >= expected
            && near(settled.open_files, baseline.open_files)
            && near(settled.runtime_tasks, baseline.runtime_tasks)
        {
            break;
        }
    }
    let _ = publisher.close(None).await;
    for subscriber in &subscribers {
        subscriber.abort();
    }
    let expected = expected_deliveries(&counts, args.subscribers);
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let lost = tally.lost.load(Ordering::Relaxed) + expected.saturating_sub(delivered);
    if settled.connections != Some(expected_connections) && settled.connections.is_some() {
        failures.push(format!(
            "{:?} connections after settling, {expected_connections} expected",
            settled.connections
        ));
    }
    let report = SoakReport {
        scenario: "soak",
        seconds: args.duration.as_secs_f64(),
        subscribers: args.subscribers,
        channels: args.channels,
        published: published.load(Ordering::Relaxed),
        expected_deliveries: expected,
        delivered,
        lost,
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        churned: churned.load(Ordering::Relaxed),
        churn_failures: churn_failures.load(Ordering::Relaxed),
        rss_growth_kib_per_min: rss_slope(&samples),
        baseline,
        settled,
        samples,
        failures,
    };
    let mut table = Table::new(format!(
        "soak: {} subscribers on {} channels, {}/s published, {}/s churn, {:?}",
        args.subscribers, args.channels, args.rate, args.churn, args.duration
    ));
    table.row("published", report.published.to_string());
    table.row(
        "delivered",
        format!("{} of {}", report.delivered, report.expected_deliveries),
    );
    table.row(
        "lost / duplicates",
        format!("{} / {}", report.lost, report.duplicates),
    );
    table.row(
        "churned",
        format!("{} ({} failed)", report.churned, report.churn_failures),
    );
    table.row(
        "open files",
        format!(
            "{:?} → {:?}",
            report.baseline.open_files, report.settled.open_files
        ),
    );
    table.row(
        "runtime tasks",
        format!(
            "{:?} → {:?}",
            report.baseline.runtime_tasks, report.settled.runtime_tasks
        ),
    );
    table.row(
        "RSS growth",
        format!("{:?} KiB/min", report.rss_growth_kib_per_min),
    );
    emit(common, &report, table);
    Ok(())
}

/// Every subscriber of channel c should get counts[c] publications.
fn expected_deliveries(counts: &[u64], subscribers: usize) -> u64 {
    let channels = counts.len();
    (0..subscribers).map(|i| counts[i % channels]).sum()
}

/// The `n` of a publication push of this bench (`{"push":{…,"pub":{"data":{"n":N},…}}}`).
fn publication_number(line: &str) -> Option<u64> {
    if !line.contains("\"pub\"") {
        return None;
    }
    switchboard_client::raw::field_u64(line, "\"n\":")
}

/// Reads the server's memory and open files (with `--pid`) and its gauges (from `/metrics`).
async fn sample(args: &SoakArgs, addr: SocketAddr, started: Instant) -> Sample {
    let metrics = scrape(addr).await.unwrap_or_default();
    let gauge = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    Sample {
        seconds: started.elapsed().as_secs_f64(),
        rss_kib: args.pid.and_then(|p| rss_kib(p).ok()),
        open_files: args.pid.and_then(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .ok()
                .map(|d| d.count() as u64)
        }),
        runtime_tasks: gauge("switchboard_runtime_tasks"),
        connections: gauge("switchboard_connections"),
    }
}

/// `GET /metrics` on the server's address.
async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
    Ok(response)
}

/// Least-squares slope of RSS over the second half of the samples, in KiB per minute.
fn rss_slope(samples: &[Sample]) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples[samples.len() / 2..]
        .iter()
        .filter_map(|s| Some((s.seconds / 60.0, s.rss_kib? as f64)))
        .collect();
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den > 0.0).then(|| num / den)
}

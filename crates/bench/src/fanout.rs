//! `bench fanout`: N subscribers spread over K channels receive publications sent at rate R for
//! D seconds, through WebSocket `publish` commands or the HTTP API.
//!
//! Reported: deliveries per second, loss (publications some subscriber of their channel had not
//! received when the drain period ended), duplicates, order violations (per publisher stream) and
//! end-to-end latency from the send time stamped in each payload to its arrival.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use switchboard_client::raw::{now_micros, Target};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::group::{Group, GroupReport, Published};
use super::publish::{api_publisher, ws_publisher, ApiTarget, Counters, Plan, PublisherEnd};
use super::report::{new_histogram, thousands, Latency, Table};
use super::worker::{share, Parent, Ready, Workers};
use super::{counter, cpu_seconds, emit, parse_duration, process_cpu_seconds, rss_kib, timer};
use super::{ClientArg, CommonArgs, EncodingArg, Env, SubscriberArgs, TransportArg, Via};

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub subscriber: SubscriberArgs,
    /// Subscribed connections.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    /// Channels the subscribers are spread over (connection i subscribes to channel i % K).
    #[arg(long, short = 'k', default_value_t = 1)]
    pub channels: usize,
    /// Publications per second, all publishers together.
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to publish.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How publications reach the server.
    #[arg(long, value_enum, default_value_t = Via::Ws)]
    pub via: Via,
    /// Bytes of each publication's `data` JSON.
    #[arg(long, short = 'p', default_value_t = 100)]
    pub payload: usize,
    /// Publisher connections [default: 1 over WebSocket, 4 over the API].
    #[arg(long)]
    pub publishers: Option<usize>,
    /// How long to wait after the last publication for deliveries to arrive.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Server API base URL [default: http://<host of --url>/api].
    #[arg(long)]
    pub api_url: Option<String>,
    /// Server API key (X-API-Key).
    #[arg(long, env = "SWITCHBOARD_API_KEY")]
    pub api_key: Option<String>,
    /// Channel name prefix (channels are <prefix>-0, <prefix>-1, …).
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Spread subscribers over this many bench processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Process id of a local server, to report its CPU use and memory during the run.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Of the subscribers, this many never read until publishing ends (clients that stopped
    /// reading); a server should disconnect them as slow (3008) and keep serving the others.
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
}

/// The fanout report (`--json`).
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub via: Via,
    /// How the subscribers connected.
    pub transport: TransportArg,
    pub encoding: EncodingArg,
    pub client: ClientArg,
    pub subscribers: usize,
    pub connected: u64,
    pub connect_failures: u64,
    pub channels: usize,
    pub publishers: usize,
    pub rate_target: f64,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_rate: f64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub delivered_per_sec: f64,
    /// Publications not delivered to every subscriber of their channel.
    pub lost_publications: u64,
    pub missing_deliveries: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    pub latency: Latency,
    /// Publish acknowledgement latency: send to `publish` reply (or API response).
    pub ack_latency: Latency,
    pub closed_early: BTreeMap<u16, u64>,
    /// Subscribers that did not read during publishing, and how the server ended them.
    pub slow_subscribers: u64,
    pub slow_closed: BTreeMap<u16, u64>,
    pub slow_still_open: u64,
    pub server_rss_start_kib: Option<u64>,
    pub server_rss_peak_kib: Option<u64>,
    pub bench_cpu_percent: f64,
    pub server_cpu_percent: Option<f64>,
    pub errors: Vec<String>,
}

pub async fn run(args: FanoutArgs, env: Env) -> anyhow::Result<()> {
    let common = &args.common;
    let mut target = Target::new(
        &common.url,
        common.token.clone(),
        common.sources,
        args.subscribers,
    )?;
    args.subscriber.apply(&mut target)?;
    if let Some(index) = common.worker_index {
        return run_worker(&args, &target, index).await;
    }
    env.check_fds(args.subscribers, args.workers)?;
    if args.channels == 0 || args.rate <= 0.0 {
        anyhow::bail!("--channels and --rate must be positive");
    }

    // 1. Subscribers, here or in worker processes.
    let subscribers = Subscribers::open(&args, &target).await?;
    let (connected, failed) = subscribers.counts();
    if connected == 0 {
        anyhow::bail!(
            "no subscriber could connect: {}",
            subscribers.errors().join("; ")
        );
    }

    // 2. Publishers.
    let publishers = args.publishers.unwrap_or(match args.via {
        Via::Ws => 1,
        Via::Api => 4,
    });
    let plan = Arc::new(Plan {
        rate: args.rate,
        duration: args.duration,
        payload: args.payload,
        channels: args.channels,
        prefix: args.prefix.clone(),
        publishers,
    });
    let counters = Arc::new(Counters::default());
    let start = Instant::now() + Duration::from_millis(100);
    let start_us = now_micros() + 100_000;
    let cpu_before = (cpu_seconds(), args.pid.and_then(process_cpu_seconds));
    let rss_start = args.pid.and_then(|p| rss_kib(p).ok());
    let mut rss_peak = rss_start;
    let mut tasks = JoinSet::new();
    for w in 0..publishers {
        let (plan, counters) = (plan.clone(), counters.clone());
        match args.via {
            Via::Ws => {
                let publisher = ws_publisher(target.clone(), plan, w, start, counters, args.drain);
                tasks.spawn(async move { (w, publisher.await) });
            }
            Via::Api => {
                let api = ApiTarget::new(&api_url(&args), args.api_key.clone())?;
                let publisher = api_publisher(api, plan, w, start, counters);
                tasks.spawn(async move { (w, publisher.await) });
            }
        }
    }
    let bar = timer(common, args.duration, "publishing");
    // Indexed by publisher: publisher w's counts name its sequence numbers (see `Published`), so
    // they must not be taken in the order the publishers finish.
    let mut ends: Vec<PublisherEnd> = (0..publishers).map(|_| PublisherEnd::default()).collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            end = tasks.join_next() => match end {
                Some(Ok((w, end))) => ends[w] = end,
                Some(Err(e)) => tracing::error!(error = %e, "publisher task failed"),
                None => break,
            },
            _ = ticker.tick() => {
                let elapsed = start.elapsed();
                bar.set_position(elapsed.as_millis() as u64);
                if let Some(kib) = args.pid.and_then(|p| rss_kib(p).ok()) {
                    rss_peak = rss_peak.max(Some(kib));
                }
                let sent = counters.sent.load(Ordering::Relaxed);
                let mut message = format!("sent {}", thousands(sent));
                if let Some(delivered) = subscribers.delivered() {
                    message.push_str(&format!(" · delivered {}", thousands(delivered)));
                }
                bar.set_message(message);
            }
        }
    }
    bar.finish_and_clear();
    let publish_elapsed = start.elapsed().as_secs_f64();
    let published = Published {
        channels: args.channels,
        sent: ends.iter().map(|e| e.sent).collect(),
    };

    // 3. Drain and account.
    let draining = counter(common, 0, "draining");
    draining.set_length(subscribers.expected(&published).unwrap_or(0));
    let report = subscribers.finish(published.clone(), args.drain).await?;
    if let Some(kib) = args.pid.and_then(|p| rss_kib(p).ok()) {
        rss_peak = rss_peak.max(Some(kib));
    }
    draining.finish_and_clear();
    let cpu_after = (cpu_seconds(), args.pid.and_then(process_cpu_seconds));
    let wall = (now_micros().saturating_sub(start_us)) as f64 / 1e6;

    let mut histogram = new_histogram();
    report.latency.add_to(&mut histogram);
    let latency = Latency::of(&histogram);
    let mut acks = new_histogram();
    for end in &ends {
        acks.add(&end.ack_latency).expect("same histogram bounds");
    }
    let ack_latency = Latency::of(&acks);
    let total = published.total();
    let publish_errors: u64 = ends.iter().map(|e| e.errors).sum();
    let delivery_window = report.last_delivery_us.saturating_sub(start_us) as f64 / 1e6;
    let mut errors = report.errors.clone();
    errors.extend(ends.iter().filter_map(|e| e.first_error.clone()).take(3));
    let result = FanoutReport {
        scenario: "fanout",
        via: args.via,
        transport: args.subscriber.transport,
        encoding: args.subscriber.encoding,
        client: args.subscriber.client,
        subscribers: args.subscribers,
        connected,
        connect_failures: failed,
        channels: args.channels,
        publishers,
        rate_target: args.rate,
        duration_s: args.duration.as_secs_f64(),
        payload_bytes: args.payload,
        published: total,
        publish_errors,
        publish_rate: round1(total as f64 / publish_elapsed.max(1e-9)),
        expected_deliveries: report.expected,
        delivered: report.delivered,
        delivered_per_sec: round1(report.delivered as f64 / delivery_window.max(1e-9)),
        lost_publications: report.lost(),
        missing_deliveries: report.expected.saturating_sub(report.delivered),
        duplicates: report.duplicates,
        order_violations: report.order_violations,
        latency,
        ack_latency,
        closed_early: report.closed_early.clone(),
        slow_subscribers: report.slow,
        slow_closed: report.slow_closed.clone(),
        slow_still_open: report.slow_still_open,
        server_rss_start_kib: rss_start,
        server_rss_peak_kib: rss_peak,
        bench_cpu_percent: round1((cpu_after.0 - cpu_before.0) / wall * 100.0),
        server_cpu_percent: match (cpu_before.1, cpu_after.1) {
            (Some(a), Some(b)) => Some(round1((b - a) / wall * 100.0)),
            _ => None,
        },
        errors,
    };
    emit(common, &result, table(&result));
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn api_url(args: &FanoutArgs) -> String {
    args.api_url.clone().unwrap_or_else(|| {
        let rest = args
            .common
            .url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:8000");
        format!("http://{rest}/api")
    })
}

fn table(r: &FanoutReport) -> Table {
    let mut t = Table::new(format!(
        "fanout via {:?}: {} {} {:?} subscribers on {} channel(s), {}/s for {} s, {} B payloads",
        r.via,
        r.subscribers,
        r.transport.name(),
        r.encoding,
        r.channels,
        r.rate_target,
        r.duration_s,
        r.payload_bytes
    ));
    t.row(
        "subscribers",
        format!(
            "{} connected, {} failed",
            thousands(r.connected),
            r.connect_failures
        ),
    )
    .row(
        "published",
        format!(
            "{} by {} publisher(s), {:.1}/s, {} errors",
            thousands(r.published),
            r.publishers,
            r.publish_rate,
            r.publish_errors
        ),
    )
    .row(
        "delivered",
        format!(
            "{} of {} expected → {}/s",
            thousands(r.delivered),
            thousands(r.expected_deliveries),
            thousands(r.delivered_per_sec as u64)
        ),
    )
    .row(
        "loss",
        format!(
            "{} publications not delivered to every subscriber ({} deliveries missing)",
            thousands(r.lost_publications),
            thousands(r.missing_deliveries)
        ),
    )
    .row(
        "duplicates · order",
        format!("{} · {} violations", r.duplicates, r.order_violations),
    )
    .row("latency", r.latency.describe())
    .row("publish ack latency", r.ack_latency.describe());
    if !r.closed_early.is_empty() {
        t.row(
            "closed by server",
            format!("{:?} (code: count)", r.closed_early),
        );
    }
    if r.slow_subscribers > 0 {
        t.row(
            "slow subscribers",
            format!(
                "{}: closed {:?} (code: count), {} still open",
                r.slow_subscribers, r.slow_closed, r.slow_still_open
            ),
        );
    }
    if let (Some(a), Some(b)) = (r.server_rss_start_kib, r.server_rss_peak_kib) {
        t.row(
            "server RSS",
            format!(
                "{:.1} MiB at start, peak {:.1} MiB",
                a as f64 / 1024.0,
                b as f64 / 1024.0
            ),
        );
    }
    t.row(
        "cpu",
        format!(
            "bench {:.0}%{}",
            r.bench_cpu_percent,
            r.server_cpu_percent
                .map_or(String::new(), |s| format!(" · server {s:.0}%"))
        ),
    );
    for e in &r.errors {
        t.row("error", e.clone());
    }
    t
}

/// The subscribers: a group in this process, or worker processes each holding a share.
enum Subscribers {
    Local(Group),
    Workers(Workers, Vec<Ready>),
}

impl Subscribers {
    async fn open(args: &FanoutArgs, target: &Target) -> anyhow::Result<Subscribers> {
        let common = &args.common;
        if args.workers > 1 {
            let mut workers = Workers::spawn(args.workers)?;
            let bar = counter(common, args.workers as u64, "workers");
            let ready: Vec<Ready> = workers.receive().await?;
            bar.finish_and_clear();
            return Ok(Subscribers::Workers(workers, ready));
        }
        let bar = counter(common, args.subscribers as u64, "subscribing");
        let group = Group::open(
            target,
            args.subscriber.client,
            0..args.subscribers,
            args.channels,
            args.slow,
            &args.prefix,
            common.connect_concurrency,
            common.connect_timeout,
            |_| bar.inc(1),
        )
        .await;
        bar.finish_and_clear();
        Ok(Subscribers::Local(group))
    }

    fn counts(&self) -> (u64, u64) {
        match self {
            Subscribers::Local(g) => (g.connected(), g.failed()),
            Subscribers::Workers(_, ready) => (
                ready.iter().map(|r| r.connected).sum(),
                ready.iter().map(|r| r.failed).sum(),
            ),
        }
    }

    fn errors(&self) -> Vec<String> {
        match self {
            Subscribers::Local(g) => g.errors().to_vec(),
            Subscribers::Workers(..) => vec!["see the workers' output".into()],
        }
    }

    fn delivered(&self) -> Option<u64> {
        match self {
            Subscribers::Local(g) => Some(g.delivered()),
            Subscribers::Workers(..) => None,
        }
    }

    fn expected(&self, published: &Published) -> Option<u64> {
        match self {
            Subscribers::Local(g) => Some(g.expected(published)),
            Subscribers::Workers(..) => None,
        }
    }

    async fn finish(self, published: Published, drain: Duration) -> anyhow::Result<GroupReport> {
        match self {
            Subscribers::Local(g) => Ok(g.finish(published, drain).await),
            Subscribers::Workers(mut workers, _) => {
                workers.send(&published).await?;
                let reports: Vec<GroupReport> = workers.receive().await?;
                workers.wait().await;
                Ok(super::worker::merge(reports))
            }
        }
    }
}

/// A worker process: open this share, report ready, wait for the publication counts, drain,
/// report.
async fn run_worker(args: &FanoutArgs, target: &Target, index: usize) -> anyhow::Result<()> {
    let mut parent = Parent::new();
    let group = Group::open(
        target,
        args.subscriber.client,
        share(args.subscribers, args.workers, index),
        args.channels,
        args.slow,
        &args.prefix,
        args.common.connect_concurrency,
        args.common.connect_timeout,
        |_| {},
    )
    .await;
    parent.send(&Ready {
        connected: group.connected(),
        failed: group.failed(),
    })?;
    let published: Published = parent.receive().await?;
    let report = group.finish(published, args.drain).await;
    parent.send(&report)?;
    Ok(())
}

//! `bench rpc`: K clients call rpc `echo` in a closed loop (each keeps `--inflight` calls
//! outstanding, one by default) for D seconds; round trips per second and their latency.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use switchboard_client::raw::{lines, push_rpc, Target, Ws};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::report::{new_histogram, record, thousands, Latency, Table};
use super::{counter, cpu_seconds, emit, parse_duration, process_cpu_seconds, timer};
use super::{CommonArgs, Env};

#[derive(Debug, Args)]
pub struct RpcArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Concurrent clients.
    #[arg(long, short = 'k', default_value_t = 50)]
    pub clients: usize,
    /// Calls each client keeps outstanding.
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// How long to call.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes of each call's `data` JSON.
    #[arg(long, short = 'p', default_value_t = 32)]
    pub payload: usize,
    /// Process id of a local server, to report its CPU use during the run.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// The rpc report (`--json`).
#[derive(Debug, Serialize)]
pub struct RpcReport {
    pub scenario: &'static str,
    pub clients: usize,
    pub connected: usize,
    pub inflight: usize,
    pub payload_bytes: usize,
    pub seconds: f64,
    pub round_trips: u64,
    pub round_trips_per_sec: f64,
    pub errors: u64,
    pub latency: Latency,
    pub bench_cpu_percent: f64,
    pub server_cpu_percent: Option<f64>,
    pub failures: Vec<String>,
}

pub async fn run(args: RpcArgs, env: Env) -> anyhow::Result<()> {
    let common = &args.common;
    env.check_fds(args.clients, 1)?;
    let target = Target::new(
        &common.url,
        common.token.clone(),
        common.sources,
        args.clients,
    )?;
    let bar = counter(common, args.clients as u64, "connecting");
    let mut sockets = Vec::with_capacity(args.clients);
    let mut failures = Vec::new();
    for n in 0..args.clients {
        match target.open_connected(n, common.connect_timeout).await {
            Ok(ws) => sockets.push(ws),
            Err(e) => failures.push(format!("{e:#}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if sockets.is_empty() {
        anyhow::bail!("no client could connect: {}", failures.join("; "));
    }
    let connected = sockets.len();
    let data = {
        let mut d = String::from(r#"{"bp":""#);
        d.extend(std::iter::repeat_n('x', args.payload.saturating_sub(10)));
        d.push_str("\"}");
        Arc::<str>::from(d)
    };
    let done = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let start = Instant::now();
    let deadline = start + args.duration;
    let cpu_before = (cpu_seconds(), args.pid.and_then(process_cpu_seconds));
    let mut tasks = JoinSet::new();
    for ws in sockets {
        tasks.spawn(caller(
            ws,
            args.inflight.max(1),
            data.clone(),
            deadline,
            done.clone(),
            histogram.clone(),
        ));
    }
    let bar = timer(common, args.duration, "calling");
    let mut errors = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            end = tasks.join_next() => match end {
                Some(Ok(Ok(n))) => errors += n,
                Some(Ok(Err(e))) => { errors += 1; failures.push(format!("{e:#}")); }
                Some(Err(e)) => failures.push(e.to_string()),
                None => break,
            },
            _ = ticker.tick() => {
                bar.set_position(start.elapsed().as_millis() as u64);
                let n = done.load(Ordering::Relaxed);
                bar.set_message(format!("{} round trips", thousands(n)));
            }
        }
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let cpu_after = (cpu_seconds(), args.pid.and_then(process_cpu_seconds));
    let round_trips = done.load(Ordering::Relaxed);
    let latency = Latency::of(&histogram.lock().expect("not poisoned"));
    failures.truncate(5);
    let result = RpcReport {
        scenario: "rpc",
        clients: args.clients,
        connected,
        inflight: args.inflight,
        payload_bytes: args.payload,
        seconds: (seconds * 100.0).round() / 100.0,
        round_trips,
        round_trips_per_sec: (round_trips as f64 / seconds).round(),
        errors,
        latency,
        bench_cpu_percent: ((cpu_after.0 - cpu_before.0) / seconds * 1000.0).round() / 10.0,
        server_cpu_percent: match (cpu_before.1, cpu_after.1) {
            (Some(a), Some(b)) => Some(((b - a) / seconds * 1000.0).round() / 10.0),
            _ => None,
        },
        failures,
    };
    let mut t = Table::new(format!(
        "rpc echo: {} clients × {} in flight, {} B payloads, {:.0} s",
        args.clients, args.inflight, args.payload, seconds
    ));
    t.row(
        "round trips",
        format!(
            "{} → {}/s, {} errors",
            thousands(round_trips),
            thousands(result.round_trips_per_sec as u64),
            errors
        ),
    )
    .row("latency", latency.describe())
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
    for f in &result.failures {
        t.row("error", f.clone());
    }
    emit(common, &result, t);
    Ok(())
}

/// One client's loop; returns its count of error replies.
async fn caller(
    mut ws: Ws,
    inflight: usize,
    data: Arc<str>,
    deadline: Instant,
    done: Arc<AtomicU64>,
    histogram: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
) -> anyhow::Result<u64> {
    let mut next_id: u32 = 2;
    let mut outstanding: VecDeque<(u32, Instant)> = VecDeque::with_capacity(inflight);
    let mut errors = 0;
    let mut frame = String::new();
    let mut samples = Vec::with_capacity(inflight);
    loop {
        let now = Instant::now();
        if now < deadline && outstanding.len() < inflight {
            frame.clear();
            while outstanding.len() < inflight {
                push_rpc(&mut frame, next_id.into(), "echo", &data);
                outstanding.push_back((next_id, now));
                next_id = next_id.wrapping_add(1).max(2);
            }
            ws.send(Message::text(frame.as_str())).await?;
        }
        if outstanding.is_empty() {
            break;
        }
        let message = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(m) => m,
            Err(_) => anyhow::bail!("rpc reply timed out"),
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => anyhow::bail!("server closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection ended"),
        };
        let now = Instant::now();
        let mut pong = false;
        for line in lines(&text) {
            if line == "{}" {
                pong = true;
                continue;
            }
            if !line.starts_with("{\"id\":") {
                continue;
            }
            if let Some((_, sent)) = outstanding.pop_front() {
                samples.push(now.duration_since(sent).as_micros() as u64);
            }
            if line.contains("\"error\":") {
                errors += 1;
            }
        }
        if !samples.is_empty() {
            done.fetch_add(samples.len() as u64, Ordering::Relaxed);
            let mut h = histogram.lock().expect("not poisoned");
            for s in samples.drain(..) {
                record(&mut h, s);
            }
        }
        if pong {
            switchboard_client::raw::pong(&mut ws).await?;
        }
    }
    let _ = ws.close(None).await;
    Ok(errors)
}

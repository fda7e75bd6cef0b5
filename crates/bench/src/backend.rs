//! `bench backend`: a minimal application backend to measure Switchboard with its hooks on. It
//! answers Centrifugo proxy requests — connect (`POST /connect`: every client is user `bench`)
//! and rpc (`POST /rpc`: the call's data back) — and takes webhooks (`POST /events`), counting
//! the events; `GET /stats` tells how many arrived and at what rate (first to last arrival).
//! It does as little as it can, so what is measured is the server's side of each call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:3900")]
    pub listen: SocketAddr,
    /// Stop after this long (every load is bounded).
    #[arg(long, short = 'd', default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
}

#[derive(Default)]
struct Stats {
    proxy_calls: AtomicU64,
    webhook_requests: AtomicU64,
    events: AtomicU64,
    /// First and last arrival of a webhook request.
    window: Mutex<Option<(Instant, Instant)>>,
}

pub async fn run(args: BackendArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "the bench backend listens on loopback only"
    );
    let stats = Arc::new(Stats::default());
    let app = Router::new()
        .route("/connect", post(connect))
        .route("/rpc", post(rpc))
        .route("/events", post(events))
        .route("/stats", get(report))
        .with_state(stats);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("bench backend on http://{}", listener.local_addr()?);
    let serve = axum::serve(listener, app);
    tokio::select! {
        result = serve => result?,
        _ = tokio::time::sleep(args.duration) => {}
    }
    Ok(())
}

const CONNECTED: &str = r#"{"result":{"user":"bench"}}"#;

async fn connect(State(stats): State<Arc<Stats>>) -> impl IntoResponse {
    stats.proxy_calls.fetch_add(1, Ordering::Relaxed);
    ([(CONTENT_TYPE, "application/json")], CONNECTED)
}

async fn rpc(State(stats): State<Arc<Stats>>, Json(request): Json<Value>) -> Json<Value> {
    stats.proxy_calls.fetch_add(1, Ordering::Relaxed);
    Json(json!({"result": {"data": request.get("data").cloned().unwrap_or(Value::Null)}}))
}

async fn events(State(stats): State<Arc<Stats>>, body: Bytes) -> &'static str {
    let now = Instant::now();
    // Each event is one object with a "type"; counting them needs no parse.
    let count = memchr::memmem::find_iter(&body, b"\"type\":").count() as u64;
    stats.events.fetch_add(count, Ordering::Relaxed);
    stats.webhook_requests.fetch_add(1, Ordering::Relaxed);
    let mut window = stats.window.lock().unwrap_or_else(|e| e.into_inner());
    let (first, _) = window.unwrap_or((now, now));
    *window = Some((first, now));
    "ok"
}

async fn report(State(stats): State<Arc<Stats>>) -> Json<Value> {
    let window = *stats.window.lock().unwrap_or_else(|e| e.into_inner());
    let seconds = window.map_or(0.0, |(first, last)| (last - first).as_secs_f64());
    let events = stats.events.load(Ordering::Relaxed);
    Json(json!({
        "proxy_calls": stats.proxy_calls.load(Ordering::Relaxed),
        "webhook_requests": stats.webhook_requests.load(Ordering::Relaxed),
        "events": events,
        "seconds": seconds,
        "events_per_sec": if seconds > 0.0 { events as f64 / seconds } else { 0.0 },
    }))
}

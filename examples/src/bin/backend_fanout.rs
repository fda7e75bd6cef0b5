//! The guide's `gather`, `Semaphore` and `create_task`, in an application backend's handler.
//! A client calls `dashboard` over its WebSocket; Switchboard's RPC proxy hands the call to the
//! backend (an axum app in this process), whose handler:
//! - calls three services one after the other, then the same three concurrently
//!   (`futures::future::join_all`, the guide's `asyncio.gather`): the time of the slowest, not
//!   the sum;
//! - fetches five pages with at most two in flight (`tokio::sync::Semaphore::new(2)`);
//! - starts a background task (`tokio::spawn`, the guide's `create_task`) that publishes
//!   "report ready" to the client's channel through the server API *after* the answer went out.
//!
//! The example prints the guide's timelines from the times it measured.
//!
//! `cargo run -p switchboard-examples --bin backend_fanout`
//! Against your own server: `-- --url ws://127.0.0.1:8000/connection/websocket --backend 127.0.0.1:3003`
//! with `switchboard serve --proxy-rpc-endpoint http://127.0.0.1:3003/switchboard/rpc`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::join_all;
use serde_json::{json, Value};
use switchboard_client::SubscriptionOptions;
use switchboard_examples::{backend_listener, next_publication, within, Api, Args, Server};
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() -> ExitCode {
    switchboard_examples::main("backend_fanout", run()).await
}

/// How long each simulated service takes.
const SERVICE: Duration = Duration::from_millis(300);
const PAGE: Duration = Duration::from_millis(200);

struct Backend {
    /// Where the backend's own services are (`http://…/service/…`).
    base: String,
    http: reqwest::Client,
    api: Api,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A slow service: answers after `SERVICE` (or `PAGE` for pages), without blocking the thread
/// (`tokio::time::sleep`, the guide's `asyncio.sleep`, never `std::thread::sleep`).
async fn service(Path(name): Path<String>) -> Json<Value> {
    let delay = if name.starts_with("page") {
        PAGE
    } else {
        SERVICE
    };
    tokio::time::sleep(delay).await;
    Json(json!({ "service": name }))
}

/// One call to a service; returns its (start, end) in ms since `t0`.
async fn call(backend: &Backend, name: &str, t0: Instant) -> anyhow::Result<(u64, u64)> {
    let started = t0.elapsed().as_millis() as u64;
    backend
        .http
        .get(format!("{}/service/{name}", backend.base))
        .send()
        .await?
        .error_for_status()?;
    Ok((started, t0.elapsed().as_millis() as u64))
}

async fn rpc(State(backend): State<Arc<Backend>>, Json(request): Json<Value>) -> Json<Value> {
    if request["method"] != "dashboard" {
        return Json(json!({"error": {"code": 404, "message": "no such method"}}));
    }
    match dashboard(
        backend,
        request["client"].as_str().unwrap_or_default().to_string(),
    )
    .await
    {
        Ok(data) => Json(json!({ "result": { "data": data } })),
        Err(e) => Json(json!({"error": {"code": 500, "message": e.to_string()}})),
    }
}

async fn dashboard(backend: Arc<Backend>, client: String) -> anyhow::Result<Value> {
    let services = ["weather", "news", "stocks"];

    // 1. await one after the other: the sum of the three.
    let t0 = Instant::now();
    let mut sequential = Vec::new();
    for name in services {
        sequential.push(call(&backend, name, t0).await?);
    }
    let sequential_ms = t0.elapsed().as_millis() as u64;

    // 2. gather: all three at once; the time of the slowest.
    let t0 = Instant::now();
    let gathered: Vec<(u64, u64)> = join_all(services.iter().map(|name| call(&backend, name, t0)))
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let gather_ms = t0.elapsed().as_millis() as u64;

    // 3. Semaphore(2): five pages, never more than two in flight.
    let t0 = Instant::now();
    let permits = Semaphore::new(2);
    let pages = (1..=5).map(|n| {
        let (backend, permits) = (&backend, &permits);
        async move {
            let _permit = permits.acquire().await?;
            let now = backend.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            backend.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let span = call(backend, &format!("page{n}"), t0).await;
            backend.in_flight.fetch_sub(1, Ordering::SeqCst);
            span
        }
    });
    let bounded: Vec<(u64, u64)> = join_all(pages)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let bounded_ms = t0.elapsed().as_millis() as u64;

    // 4. create_task: the report is built in the background; the answer does not wait for it.
    let background = backend.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let channel = format!("reports-{client}");
        let published = background
            .api
            .call(
                "publish",
                json!({"channel": channel, "data": {"text": "report ready"}}),
            )
            .await;
        if let Err(e) = published {
            eprintln!("backend: background publish failed: {e:#}");
        }
    });

    Ok(json!({
        "sequential": sequential, "sequential_ms": sequential_ms,
        "gathered": gathered, "gather_ms": gather_ms,
        "bounded": bounded, "bounded_ms": bounded_ms,
        "max_in_flight": backend.max_in_flight.load(Ordering::SeqCst),
    }))
}

/// (start, end) pairs from the answer.
fn spans(value: &Value) -> Vec<(u64, u64)> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| (s[0].as_u64().unwrap_or(0), s[1].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// One bar per span, 20 ms per column.
fn bar(start: u64, end: u64) -> String {
    let (from, to) = ((start / 20) as usize, (end / 20) as usize);
    format!(
        "{}{}",
        " ".repeat(from),
        "█".repeat(to.saturating_sub(from).max(1))
    )
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let listener = backend_listener(&args).await?;
    let addr = listener.local_addr()?;
    let endpoint = format!("http://{addr}/switchboard/rpc");
    let server = Server::start(&args, |config| {
        config.proxy_rpc_endpoint = Some(endpoint.clone());
        // The dashboard takes about 2 s: give the backend room.
        config.proxy_timeout = Duration::from_secs(10);
    })
    .await?;
    if !server.in_process {
        println!("(your server needs --proxy-rpc-endpoint {endpoint} --proxy-timeout 10s)");
    }
    let backend = Arc::new(Backend {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        api: server.api.clone(),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/switchboard/rpc", post(rpc))
        .route("/service/{name}", get(service))
        .with_state(backend);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = server.client().timeout(Duration::from_secs(15)).build();
    client.connect();
    within("the connection", client.ready()).await??;
    let reports = client.new_subscription(
        format!("reports-{}", client.client_id().unwrap_or_default()),
        SubscriptionOptions::new(),
    )?;
    let mut report_events = reports.events();
    reports.subscribe();
    within("the reports subscription", reports.ready()).await??;

    let asked = Instant::now();
    let answer = client.rpc("dashboard", json!({})).await?;
    let answered_ms = asked.elapsed().as_millis();
    let sequential_ms = answer["sequential_ms"].as_u64().unwrap_or(0);
    let gather_ms = answer["gather_ms"].as_u64().unwrap_or(0);
    let bounded_ms = answer["bounded_ms"].as_u64().unwrap_or(0);
    let max_in_flight = answer["max_in_flight"].as_u64().unwrap_or(0);

    println!("TIMELINE - await one after the other ({sequential_ms} ms)\n════════");
    for (name, (s, e)) in ["weather", "news", "stocks"]
        .iter()
        .zip(spans(&answer["sequential"]))
    {
        println!("{name:<8} {}", bar(s, e));
    }
    println!("\nTIMELINE - join_all, the guide's gather ({gather_ms} ms)\n════════");
    for (name, (s, e)) in ["weather", "news", "stocks"]
        .iter()
        .zip(spans(&answer["gathered"]))
    {
        println!("{name:<8} {}", bar(s, e));
    }
    println!("\nTIMELINE - 5 pages, Semaphore(2) ({bounded_ms} ms, at most {max_in_flight} in flight)\n════════");
    let mut slots: Vec<(u64, String, String)> = Vec::new();
    let mut pages: Vec<(usize, (u64, u64))> =
        spans(&answer["bounded"]).into_iter().enumerate().collect();
    pages.sort_by_key(|(_, (s, _))| *s);
    for (n, (s, e)) in pages {
        // A page goes on the first slot free when it started.
        let slot = match slots.iter().position(|(end, _, _)| *end <= s + 5) {
            Some(i) => i,
            None => {
                slots.push((0, String::new(), String::new()));
                slots.len() - 1
            }
        };
        let (end, line, labels) = &mut slots[slot];
        // The slot's line grows by this page's bar (bars on one slot never overlap).
        let from = line.chars().count();
        line.extend(bar(s, e).chars().skip(from));
        let label = format!("page{}", n + 1);
        let col = (s / 20) as usize;
        while labels.chars().count() < col {
            labels.push(' ');
        }
        labels.push_str(&label);
        *end = e;
    }
    for (i, (_, line, labels)) in slots.iter().enumerate() {
        println!("Slot {}: {line}\n        {labels}", i + 1);
    }
    println!(
        "\nclient: dashboard answered in {answered_ms} ms; the report is still being made (tokio::spawn)"
    );
    let report = next_publication(&mut report_events).await?;
    println!(
        "client: {} arrived {} ms after asking, after the answer",
        report.data["text"],
        asked.elapsed().as_millis()
    );

    anyhow::ensure!(
        gather_ms < sequential_ms * 2 / 3,
        "gather ({gather_ms} ms) was not faster than one after the other ({sequential_ms} ms)"
    );
    anyhow::ensure!(
        max_in_flight == 2,
        "the semaphore let {max_in_flight} pages in flight"
    );
    anyhow::ensure!(
        bounded_ms >= 3 * PAGE.as_millis() as u64,
        "5 pages, 2 at a time, cannot take less than 3 rounds"
    );
    anyhow::ensure!(report.data["text"] == "report ready");
    client.disconnect();
    server.stop().await;
    Ok(())
}

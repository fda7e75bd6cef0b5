//! A webhook receiver for tests: a real HTTP server in the test process recording the events
//! Switchboard delivers, checking their signatures, and failing or stalling on demand.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use switchboard::hooks::webhook::{sign, SIGNATURE_HEADER};
use tokio::net::TcpListener;

pub const SECRET: &str = "webhook-secret";

/// A webhook receiver: records every event of every request it accepts; answers `status` to the
/// first `fail_first` requests, and sleeps `delay` in each.
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<ReceiverState>,
}

#[derive(Default)]
pub struct ReceiverState {
    /// Accepted events, in arrival order.
    pub events: Mutex<Vec<Value>>,
    pub requests: AtomicUsize,
    pub fail_first: AtomicUsize,
    /// Every signature header checked out.
    pub bad_signatures: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub delay_ms: AtomicUsize,
    pub fail_status: AtomicUsize,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        state.fail_status.store(503, Ordering::SeqCst);
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn events(&self) -> Vec<Value> {
        self.state.events.lock().unwrap().clone()
    }

    /// Accepted events of `kind`, first delivery of each id only.
    pub fn of(&self, kind: &str) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind && seen.insert(e["id"].clone()))
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    if n < state.fail_first.load(Ordering::SeqCst) {
        let status = state.fail_status.load(Ordering::SeqCst) as u16;
        return StatusCode::from_u16(status).unwrap();
    }
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if signature != sign(SECRET.as_bytes(), &body) {
        state.bad_signatures.fetch_add(1, Ordering::SeqCst);
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    let events = parsed["events"].as_array().unwrap().clone();
    state.events.lock().unwrap().extend(events);
    StatusCode::OK
}

/// Position of the first event matching `kind` and `client` in `events`.
pub fn position(events: &[Value], kind: &str, client: &str) -> usize {
    events
        .iter()
        .position(|e| e["type"] == kind && e["client"] == client)
        .unwrap_or_else(|| panic!("no {kind} event of {client} in {events:#?}"))
}

/// The value of an unlabelled series in a Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

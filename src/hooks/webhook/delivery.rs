//! Delivering queued events: one task per lane, each posting its oldest events in a batch and
//! retrying that batch until the backend takes it, so a lane's events arrive in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use reqwest::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::outbox::{Outbox, Stored};
use crate::metrics::{InFlight, Metrics};
use crate::timeline::{Lane, Timeline};

/// The header carrying the body's signature: `sha256=<hex HMAC-SHA256 of the raw body>`.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// First retry delay; each retry doubles it up to [`MAX_BACKOFF`], and the wait is drawn at
/// random between half of it and all of it (jitter), so lanes that failed together do not retry
/// together.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What every lane shares.
pub(super) struct Sender {
    pub http: reqwest::Client,
    pub url: reqwest::Url,
    pub secret: Option<Vec<u8>>,
    pub timeout: Duration,
    pub batch_size: usize,
    pub batch_delay: Duration,
    pub outbox: Arc<Outbox>,
    /// One waker per lane, notified by the outbox when it queues events there.
    pub wake: Arc<[Notify]>,
    pub metrics: Arc<Metrics>,
    pub timeline: Arc<Timeline>,
    /// Set at shutdown: lanes deliver what is queued, then stop instead of waiting for more.
    pub draining: AtomicBool,
    /// With several nodes on Redis: the outbox's lanes forward to the shared queue there, and
    /// the lanes this node holds are delivered from it (see [`Sender::run_shared_lane`]).
    pub shared: Option<Arc<Cluster>>,
    /// One waker per shared lane, notified when this node forwarded events to it.
    pub shared_wake: Arc<[Notify]>,
}

/// How often a held shared lane with nothing in it is read again (events forwarded by this
/// node wake it at once; those of other nodes are found this way).
const SHARED_POLL: Duration = Duration::from_millis(100);

/// How the backend took one request.
enum Outcome {
    Delivered,
    /// A 4xx other than 408 and 429: sending it again would get the same answer.
    Refused(u16),
    /// Anything else (timeout, refused connection, 408, 429, 5xx): try again later.
    Retry(String),
}

impl Sender {
    /// Delivers lane `lane` until `stop`, or, once draining, until the lane is empty.
    pub async fn run_lane(self: Arc<Self>, lane: u32, stop: CancellationToken) {
        let wake = &self.wake[lane as usize];
        loop {
            let mut batch = match self.outbox.fetch(lane, self.batch_size).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(lane, error = %e, "webhook outbox read failed");
                    if pause(&stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                if self.draining.load(Ordering::Acquire) {
                    return;
                }
                tokio::select! {
                    _ = wake.notified() => continue,
                    _ = stop.cancelled() => return,
                }
            }
            if batch.len() < self.batch_size
                && !self.batch_delay.is_zero()
                && !self.draining.load(Ordering::Acquire)
            {
                // A short wait lets a burst travel in one request.
                if pause(&stop, self.batch_delay).await {
                    return;
                }
                if let Ok(fuller) = self.outbox.fetch(lane, self.batch_size).await {
                    if fuller.len() > batch.len() {
                        batch = fuller;
                    }
                }
            }
            let Some(last) = batch.last().map(|event| event.id) else {
                continue;
            };
            let done = match &self.shared {
                Some(cluster) => self.forward(cluster, lane, &batch, &stop).await,
                None => {
                    let body = batch_body(batch.iter().map(|event| event.body.as_str()));
                    self.deliver(lane, body, batch.len(), &stop, None).await
                }
            };
            if !done {
                return;
            }
            self.outbox.ack(lane, last);
        }
    }

    /// Wakes every lane (a lane not waiting keeps the permit for its next wait).
    pub fn wake_all(&self) {
        self.wake.iter().for_each(Notify::notify_one);
        self.shared_wake.iter().for_each(Notify::notify_one);
    }

    /// Moves a batch from the outbox to the shared queue in Redis, retrying until it is there.
    /// False when stopped first (the batch stays in the outbox).
    async fn forward(
        &self,
        cluster: &Cluster,
        lane: u32,
        batch: &[Stored],
        stop: &CancellationToken,
    ) -> bool {
        let mut attempt = 0u32;
        loop {
            let events = batch.iter().map(|event| event.body.as_str());
            match cluster.enqueue(lane, events).await {
                Ok(()) => {
                    self.shared_wake[lane as usize].notify_one();
                    return true;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let wait = backoff(attempt);
                    tracing::warn!(lane, attempt, error = %e, ?wait, "moving webhook events to Redis failed, retrying");
                    if pause(stop, wait).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Delivers shared lane `lane` from Redis whenever this node holds it, until `stop` (or,
    /// once draining, until the lane is empty); then gives it up.
    pub async fn run_shared_lane(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        lane: u32,
        stop: CancellationToken,
    ) {
        let wake = &self.shared_wake[lane as usize];
        loop {
            let held = match cluster.own_lane(lane).await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(lane, error = %e, "taking a webhook lane in Redis failed");
                    false
                }
            };
            if !held {
                if self.draining.load(Ordering::Acquire) || pause(&stop, cluster.lease() / 3).await
                {
                    return;
                }
                continue;
            }
            let entries = match cluster.read_lane(lane, self.batch_size).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(lane, error = %e, "reading a webhook lane in Redis failed");
                    if pause(&stop, Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            if entries.is_empty() {
                if self.draining.load(Ordering::Acquire) {
                    break;
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(SHARED_POLL) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            let body = batch_body(entries.iter().map(|(_, body)| body.as_str()));
            if !self
                .deliver(lane, body, entries.len(), &stop, Some(&cluster))
                .await
            {
                if stop.is_cancelled() {
                    break;
                }
                // Another node holds the lane now: wait for it back.
                continue;
            }
            let ids: Vec<String> = entries.into_iter().map(|(id, _)| id).collect();
            if let Err(e) = cluster.remove(lane, &ids).await {
                // They go out again: at least once.
                tracing::warn!(lane, error = %e, "removing delivered webhook events from Redis failed");
            }
        }
        cluster.release_lane(lane).await;
    }

    /// Posts one batch until the backend takes or refuses it. False when stopped first, or when
    /// the shared lane was taken by another node meanwhile (the batch stays queued).
    /// `held`: the batch comes from a shared lane of this Redis cluster, whose hold is renewed
    /// between retries (given up when another node took the lane meanwhile: it delivers it).
    async fn deliver(
        &self,
        lane: u32,
        body: String,
        events: usize,
        stop: &CancellationToken,
        held: Option<&Cluster>,
    ) -> bool {
        let webhooks = &self.metrics.webhooks;
        let _span = self.timeline.span(
            Lane::Background,
            "webhook delivery",
            &format!("lane {lane}, {events} events"),
        );
        let signature = self
            .secret
            .as_deref()
            .map(|secret| sign(secret, body.as_bytes()));
        let body = bytes::Bytes::from(body);
        let mut attempt = 0u32;
        loop {
            let outcome = tokio::select! {
                outcome = self.post(body.clone(), signature.as_deref()) => outcome,
                _ = stop.cancelled() => return false,
            };
            match outcome {
                Outcome::Delivered => {
                    Metrics::add(&webhooks.events_delivered, events as u64);
                    return true;
                }
                Outcome::Refused(status) => {
                    Metrics::add(&webhooks.events_dropped, events as u64);
                    tracing::warn!(
                        lane,
                        status,
                        events,
                        "webhook refused by the backend: events dropped"
                    );
                    return true;
                }
                Outcome::Retry(why) => {
                    attempt = attempt.saturating_add(1);
                    Metrics::inc(&webhooks.retries);
                    let wait = backoff(attempt);
                    tracing::warn!(lane, attempt, error = %why, ?wait, "webhook delivery failed, retrying");
                    if pause(stop, wait).await {
                        return false;
                    }
                    if let Some(cluster) = held {
                        if matches!(cluster.own_lane(lane).await, Ok(false)) {
                            tracing::info!(lane, "webhook lane taken by another node");
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// One request, bounded by the timeout; counted in the webhook metrics.
    async fn post(&self, body: bytes::Bytes, signature: Option<&str>) -> Outcome {
        let calls = &self.metrics.webhooks.requests;
        Metrics::inc(&calls.calls);
        let _in_flight = InFlight::start(&calls.in_flight);
        let started = Instant::now();
        let mut request = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                concat!("switchboard/", env!("CARGO_PKG_VERSION")),
            )
            .body(body);
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let response = tokio::time::timeout(self.timeout, request.send()).await;
        calls.observe(started.elapsed());
        let outcome = match response {
            Err(_) => {
                Metrics::inc(&calls.timeouts);
                Outcome::Retry(format!("no answer within {:?}", self.timeout))
            }
            Ok(Err(e)) => Outcome::Retry(e.to_string()),
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_success() {
                    Outcome::Delivered
                } else if status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Outcome::Refused(status.as_u16())
                } else {
                    Outcome::Retry(format!("HTTP status {status}"))
                }
            }
        };
        if !matches!(outcome, Outcome::Delivered) {
            Metrics::inc(&calls.errors);
        }
        outcome
    }
}

/// `{"events":[…]}` of JSON objects.
fn batch_body<'a>(events: impl Iterator<Item = &'a str>) -> String {
    let mut body = String::with_capacity(4096);
    body.push_str("{\"events\":[");
    for (i, event) in events.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(event);
    }
    body.push_str("]}");
    body
}

/// `sha256=<hex HMAC-SHA256 of body keyed with secret>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut signature = String::with_capacity(7 + 2 * digest.len());
    signature.push_str("sha256=");
    for byte in digest {
        signature.push_str(&format!("{byte:02x}"));
    }
    signature
}

/// The wait before retry number `attempt` (from 1): jittered below an exponential bound.
fn backoff(attempt: u32) -> Duration {
    let bound = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    bound.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Sleeps for `wait`; true if `stop` came first.
async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_grows_to_its_bound() {
        for attempt in 1..40 {
            let wait = backoff(attempt);
            assert!(wait <= MAX_BACKOFF, "attempt {attempt}: {wait:?}");
            assert!(wait >= FIRST_BACKOFF / 2, "attempt {attempt}: {wait:?}");
        }
        assert!(backoff(30) >= MAX_BACKOFF / 2);
    }
}

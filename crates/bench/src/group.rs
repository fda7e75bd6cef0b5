//! A group of subscribed connections: opened together, held (answering pings), and, after the
//! publishers are done, drained and accounted for. One process runs one group, or several worker
//! processes each run a share (see [`super::worker`]).
//!
//! Every publication carries its global sequence number `bs`, its publisher `bw` and its send time
//! `bt` in its payload; a publication is *lost* if any subscriber of its channel lacks it when the
//! drain ends.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_client::codec::{JsonCodec, ProtobufCodec};
use switchboard_client::raw::{now_micros, Encoding, Link, LinkMessage, LinkRead, Target};
use switchboard_client::{Events, SubscriptionEvent, SubscriptionOptions};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::publish::bench_stamp;
use super::report::{new_histogram, record, HistogramData};
use super::ClientArg;

/// How publications were numbered: `publishers` streams, stream `w` sending global sequence
/// numbers `l * publishers + w` for `l` in `0..sent[w]`; a publication's channel is `seq % channels`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Published {
    pub channels: usize,
    pub sent: Vec<u64>,
}

impl Published {
    pub fn total(&self) -> u64 {
        self.sent.iter().sum()
    }

    /// Every sequence number published on `channel`.
    fn on_channel(&self, channel: usize) -> impl Iterator<Item = u64> + '_ {
        let m = self.sent.len() as u64;
        let k = self.channels.max(1) as u64;
        self.sent.iter().enumerate().flat_map(move |(w, &n)| {
            (0..n)
                .map(move |l| l * m + w as u64)
                .filter(move |g| g % k == channel as u64)
        })
    }

    /// Publications on `channel`.
    fn count_on(&self, channel: usize) -> u64 {
        self.on_channel(channel).count() as u64
    }
}

/// What a group reports at the end.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct GroupReport {
    pub connected: u64,
    pub failed: u64,
    /// The first connection errors, for the report.
    pub errors: Vec<String>,
    /// Publications received, duplicates excluded.
    pub delivered: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Deliveries the group should have received.
    pub expected: u64,
    /// Bitset over sequence numbers: publications some subscriber of this group missed.
    pub missed: Vec<u64>,
    /// Connections the server closed (or that failed) before the end, by close code (0 = no
    /// close frame).
    pub closed_early: BTreeMap<u16, u64>,
    /// Subscribers that did not read until publishing ended (`--slow`).
    pub slow: u64,
    /// How slow subscribers' connections ended, by close code (0 = no close frame).
    pub slow_closed: BTreeMap<u16, u64>,
    /// Slow subscribers the server had not closed when the drain ended.
    pub slow_still_open: u64,
    /// Monotonic time (µs) of the last publication received.
    pub last_delivery_us: u64,
    pub latency: HistogramData,
}

impl GroupReport {
    /// Adds another group's report (from another worker) into this one.
    pub fn merge(&mut self, other: GroupReport) {
        self.connected += other.connected;
        self.failed += other.failed;
        for e in other.errors {
            if self.errors.len() < 5 {
                self.errors.push(e);
            }
        }
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.order_violations += other.order_violations;
        self.expected += other.expected;
        if self.missed.len() < other.missed.len() {
            self.missed.resize(other.missed.len(), 0);
        }
        for (a, b) in self.missed.iter_mut().zip(other.missed) {
            *a |= b;
        }
        for (code, n) in other.closed_early {
            *self.closed_early.entry(code).or_default() += n;
        }
        self.slow += other.slow;
        for (code, n) in other.slow_closed {
            *self.slow_closed.entry(code).or_default() += n;
        }
        self.slow_still_open += other.slow_still_open;
        self.last_delivery_us = self.last_delivery_us.max(other.last_delivery_us);
        self.latency.0.extend(other.latency.0);
    }

    /// Publications not delivered to every subscriber.
    pub fn lost(&self) -> u64 {
        self.missed.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// Counters shared by a group's tasks (one runtime, so contention is nil).
#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    /// Subscribers whose connection ended before the group stopped.
    closed: AtomicU64,
    /// Slow subscribers whose connection has ended.
    slow_ended: AtomicU64,
    last_delivery_us: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
    missed: Mutex<Vec<u64>>,
}

/// One subscriber task's final counts.
#[derive(Default)]
struct SubscriberEnd {
    slow: bool,
    duplicates: u64,
    order_violations: u64,
    /// Close code if the connection ended before the group stopped.
    closed_early: Option<u16>,
}

/// A running group of subscribed connections.
pub struct Group {
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Lets slow subscribers start reading.
    release: CancellationToken,
    /// Told the final publication counts; subscribers then compute what they missed.
    published: Arc<Mutex<Option<Published>>>,
    tasks: JoinSet<SubscriberEnd>,
    /// Subscribers per channel index (slow ones excluded).
    per_channel: BTreeMap<usize, u64>,
    slow: u64,
    connected: u64,
    failed: u64,
    errors: Vec<String>,
}

/// Channel name of channel index `k`.
pub fn channel_name(prefix: &str, k: usize) -> String {
    format!("{prefix}-{k}")
}

impl Group {
    /// Opens connections `range` (numbered globally, so workers share one numbering), connection
    /// `n` subscribing to channel `n % channels`; at most `concurrency` handshakes at once.
    /// Connections numbered below `slow` do not read until [`Group::finish`] (they stand for
    /// clients that stopped reading; the server should disconnect them as slow).
    /// `progress` is called once per connection attempt.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        target: &Target,
        client: ClientArg,
        range: Range<usize>,
        channels: usize,
        slow: usize,
        prefix: &str,
        concurrency: usize,
        timeout: Duration,
        progress: impl Fn(bool),
    ) -> Group {
        let shared = Arc::new(Shared {
            latency: Mutex::new(Some(new_histogram())),
            ..Default::default()
        });
        let stop = CancellationToken::new();
        let release = CancellationToken::new();
        let published = Arc::new(Mutex::new(None));
        let mut tasks = JoinSet::new();
        let mut per_channel = BTreeMap::new();
        let mut slow_count = 0;
        let (mut connected, mut failed, mut errors) = (0, 0, Vec::new());
        let limit = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut opening = JoinSet::new();
        for n in range {
            let permit = limit.clone().acquire_owned().await.expect("never closed");
            let target = target.clone();
            let channel = n % channels.max(1);
            let name = channel_name(prefix, channel);
            let is_slow = n < slow;
            opening.spawn(async move {
                let result = open_subscriber(&target, client, n, &name, timeout).await;
                drop(permit);
                (channel, is_slow, result)
            });
            // Collect finished handshakes as we go, so progress is live.
            while let Some(done) = opening.try_join_next() {
                Self::opened(
                    done,
                    &mut tasks,
                    (&mut per_channel, &mut slow_count),
                    (&mut connected, &mut failed, &mut errors),
                    &shared,
                    (&stop, &release),
                    &published,
                    &progress,
                );
            }
        }
        while let Some(done) = opening.join_next().await {
            Self::opened(
                done,
                &mut tasks,
                (&mut per_channel, &mut slow_count),
                (&mut connected, &mut failed, &mut errors),
                &shared,
                (&stop, &release),
                &published,
                &progress,
            );
        }
        Group {
            shared,
            stop,
            release,
            published,
            tasks,
            per_channel,
            slow: slow_count,
            connected,
            failed,
            errors,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn opened(
        done: Result<(usize, bool, anyhow::Result<Conn>), tokio::task::JoinError>,
        tasks: &mut JoinSet<SubscriberEnd>,
        (per_channel, slow_count): (&mut BTreeMap<usize, u64>, &mut u64),
        (connected, failed, errors): (&mut u64, &mut u64, &mut Vec<String>),
        shared: &Arc<Shared>,
        (stop, release): (&CancellationToken, &CancellationToken),
        published: &Arc<Mutex<Option<Published>>>,
        progress: &impl Fn(bool),
    ) {
        match done {
            Ok((channel, slow, Ok(ws))) => {
                *connected += 1;
                if slow {
                    *slow_count += 1;
                    tasks.spawn(slow_subscriber(
                        ws,
                        shared.clone(),
                        stop.clone(),
                        release.clone(),
                    ));
                } else {
                    *per_channel.entry(channel).or_default() += 1;
                    tasks.spawn(subscriber(
                        ws,
                        channel,
                        shared.clone(),
                        stop.clone(),
                        published.clone(),
                    ));
                }
                progress(true);
            }
            Ok((_, _, Err(e))) => {
                *failed += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
                progress(false);
            }
            Err(e) => {
                *failed += 1;
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
                progress(false);
            }
        }
    }

    pub fn connected(&self) -> u64 {
        self.connected
    }

    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// The first connection errors.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Publications received so far (duplicates excluded).
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Subscribers still connected.
    pub fn alive(&self) -> u64 {
        self.connected - self.shared.closed.load(Ordering::Relaxed)
    }

    /// Deliveries this group should receive once `published` arrived.
    pub fn expected(&self, published: &Published) -> u64 {
        self.per_channel
            .iter()
            .map(|(&k, &subs)| subs * published.count_on(k))
            .sum()
    }

    /// Waits up to `drain` for every expected delivery, stops the subscribers and reports.
    pub async fn finish(mut self, published: Published, drain: Duration) -> GroupReport {
        let expected = self.expected(&published);
        self.release.cancel();
        let deadline = tokio::time::Instant::now() + drain;
        while (self.delivered() < expected
            || self.shared.slow_ended.load(Ordering::Relaxed) < self.slow)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        *self.published.lock().expect("not poisoned") = Some(published);
        self.stop.cancel();
        let mut report = GroupReport {
            connected: self.connected,
            failed: self.failed,
            errors: std::mem::take(&mut self.errors),
            expected,
            slow: self.slow,
            ..Default::default()
        };
        while let Some(end) = self.tasks.join_next().await {
            let Ok(end) = end else { continue };
            if end.slow {
                match end.closed_early {
                    Some(code) => *report.slow_closed.entry(code).or_default() += 1,
                    None => report.slow_still_open += 1,
                }
                continue;
            }
            report.duplicates += end.duplicates;
            report.order_violations += end.order_violations;
            if let Some(code) = end.closed_early {
                *report.closed_early.entry(code).or_default() += 1;
            }
        }
        report.delivered = self.delivered();
        report.last_delivery_us = self.shared.last_delivery_us.load(Ordering::Relaxed);
        report.missed = std::mem::take(&mut *self.shared.missed.lock().expect("not poisoned"));
        if let Some(h) = self.shared.latency.lock().expect("not poisoned").as_ref() {
            report.latency = HistogramData::from_histogram(h);
        }
        report
    }
}

/// One subscriber's connection: the wire layer's, or a client of the SDK.
// The wire variant is the common one and the one measured against the server: boxing it would
// add an allocation per connection to the bench's own footprint.
#[allow(clippy::large_enum_variant)]
enum Conn {
    Wire(Link),
    Sdk(Box<SdkSubscriber>),
}

/// A subscriber on the high-level SDK: the client (its driver task holds the connection), the
/// subscription and its events.
struct SdkSubscriber {
    client: switchboard_client::Client,
    _subscription: switchboard_client::Subscription,
    events: Events<SubscriptionEvent>,
}

/// What [`Conn::read`] got.
enum Got {
    Wire(LinkRead),
    /// A publication's data, through the SDK.
    Publication(Value),
    /// An SDK event a subscriber does not count (subscribed, lagged: what it lost shows as
    /// missed at the end).
    Nothing,
    /// The connection (or subscription) ended: close or unsubscribe code, 0 without one.
    Ended(u16),
}

impl Conn {
    async fn read(&mut self) -> Got {
        match self {
            Conn::Wire(link) => match link.read().await {
                LinkRead::Ended(code) => Got::Ended(code),
                read => Got::Wire(read),
            },
            Conn::Sdk(sdk) => match sdk.events.next().await {
                Some(SubscriptionEvent::Publication(p)) => Got::Publication(p.data),
                Some(SubscriptionEvent::Unsubscribed { code, .. }) => {
                    Got::Ended(u16::try_from(code).unwrap_or(u16::MAX))
                }
                Some(_) => Got::Nothing,
                None => Got::Ended(0),
            },
        }
    }

    /// Answers a ping read by [`Conn::read`] (the SDK answers its own).
    async fn pong(&mut self) -> anyhow::Result<()> {
        match self {
            Conn::Wire(link) => link.pong().await,
            Conn::Sdk(_) => Ok(()),
        }
    }

    async fn close(self) {
        match self {
            Conn::Wire(link) => link.close().await,
            Conn::Sdk(sdk) => sdk.client.disconnect(),
        }
    }
}

/// The bench stamp of a publication's data read through the SDK (see [`bench_stamp`]).
fn sdk_stamp(data: &Value) -> Option<(u64, u64, u64)> {
    Some((
        data["bs"].as_u64()?,
        data["bw"].as_u64()?,
        data["bt"].as_u64()?,
    ))
}

async fn open_subscriber(
    target: &Target,
    client: ClientArg,
    n: usize,
    channel: &str,
    timeout: Duration,
) -> anyhow::Result<Conn> {
    if client == ClientArg::Sdk {
        return open_sdk_subscriber(target, channel, timeout).await;
    }
    let mut link = target.open_link(n, timeout).await?;
    tokio::time::timeout(timeout, link.subscribe(2, channel))
        .await
        .map_err(|_| anyhow::anyhow!("subscribe timed out"))??;
    Ok(Conn::Wire(link))
}

async fn open_sdk_subscriber(
    target: &Target,
    channel: &str,
    timeout: Duration,
) -> anyhow::Result<Conn> {
    let mut builder = switchboard_client::Client::builder(target.url.as_str())
        .name("switchboard-bench")
        .timeout(timeout);
    builder = match target.encoding {
        Encoding::Json => builder.codec(JsonCodec),
        Encoding::Protobuf => builder.codec(ProtobufCodec),
    };
    if let Some(token) = &target.token {
        builder = builder.token(token.clone());
    }
    let client = builder.build();
    client.connect();
    client.ready_within(timeout).await?;
    let subscription = client.new_subscription(channel, SubscriptionOptions::new())?;
    let events = subscription.events();
    subscription.subscribe();
    subscription.ready_within(timeout).await?;
    Ok(Conn::Sdk(Box::new(SdkSubscriber {
        client,
        _subscription: subscription,
        events,
    })))
}

/// A subscriber that stopped reading: it reads nothing until released, then reads (and
/// discards) until the server closes it, to learn the close code.
async fn slow_subscriber(
    mut ws: Conn,
    shared: Arc<Shared>,
    stop: CancellationToken,
    release: CancellationToken,
) -> SubscriberEnd {
    let mut end = SubscriberEnd {
        slow: true,
        ..Default::default()
    };
    tokio::select! {
        _ = release.cancelled() => {}
        _ = stop.cancelled() => return end,
    }
    loop {
        let read = tokio::select! {
            r = ws.read() => r,
            _ = stop.cancelled() => break,
        };
        if let Got::Ended(code) = read {
            end.closed_early = Some(code);
            break;
        }
    }
    if end.closed_early.is_some() {
        shared.slow_ended.fetch_add(1, Ordering::Relaxed);
    }
    end
}

/// A growable bitset over sequence numbers.
#[derive(Default)]
struct Seen(Vec<u64>);

impl Seen {
    /// Sets bit `i`; returns whether it was already set.
    fn set(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, i % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1 + word / 2, 0);
        }
        let was = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        was
    }

    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// Reads one subscriber's pushes until stopped, answering pings.
async fn subscriber(
    mut ws: Conn,
    channel: usize,
    shared: Arc<Shared>,
    stop: CancellationToken,
    published: Arc<Mutex<Option<Published>>>,
) -> SubscriberEnd {
    let mut end = SubscriberEnd::default();
    let mut seen = Seen::default();
    // Last sequence number seen per publisher stream, plus one (0: none yet).
    let mut last: Vec<u64> = Vec::new();
    let mut latencies: Vec<u64> = Vec::with_capacity(64);
    loop {
        let read = tokio::select! {
            biased;
            r = ws.read() => r,
            _ = stop.cancelled() => break,
        };
        let (wire, sdk) = match &read {
            Got::Ended(code) => {
                end.closed_early = Some(*code);
                break;
            }
            Got::Nothing => continue,
            Got::Wire(read) => (Some(read), None),
            Got::Publication(data) => (None, Some(data)),
        };
        let now = now_micros();
        let mut new = 0;
        let mut pong = false;
        let wire_stamps = wire
            .into_iter()
            .flat_map(LinkRead::messages)
            .filter_map(|message| match message {
                LinkMessage::Ping => {
                    pong = true;
                    None
                }
                LinkMessage::Push(line) => bench_stamp(line),
                LinkMessage::Other => None,
            });
        for (seq, publisher, sent) in wire_stamps.chain(sdk.and_then(sdk_stamp)) {
            let publisher = publisher as usize;
            if seen.set(seq) {
                end.duplicates += 1;
                continue;
            }
            if publisher >= last.len() {
                last.resize(publisher + 1, 0);
            }
            if seq + 1 < last[publisher] {
                end.order_violations += 1;
            } else {
                last[publisher] = seq + 1;
            }
            new += 1;
            latencies.push(now.saturating_sub(sent));
        }
        if new > 0 {
            shared.delivered.fetch_add(new, Ordering::Relaxed);
            shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
            if let Some(h) = shared.latency.lock().expect("not poisoned").as_mut() {
                for l in latencies.drain(..) {
                    record(h, l);
                }
            }
        }
        if pong && ws.pong().await.is_err() {
            end.closed_early = Some(0);
            break;
        }
    }
    if end.closed_early.is_some() {
        shared.closed.fetch_add(1, Ordering::Relaxed);
    }
    // Account for what this subscriber missed on its channel, once the counts are known (a
    // subscriber the server closed early waits for them).
    stop.cancelled().await;
    let published = published.lock().expect("not poisoned").clone();
    if let Some(published) = published {
        let mut missed = Vec::new();
        for seq in published.on_channel(channel) {
            if !seen.get(seq) {
                missed.push(seq);
            }
        }
        if !missed.is_empty() {
            let mut global = shared.missed.lock().expect("not poisoned");
            for seq in missed {
                let word = (seq / 64) as usize;
                if word >= global.len() {
                    global.resize(word + 1, 0);
                }
                global[word] |= 1 << (seq % 64);
            }
        }
    }
    if end.closed_early.is_none() {
        ws.close().await;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_sequences_per_channel() {
        let p = Published {
            channels: 2,
            sent: vec![3, 2],
        };
        // Publisher 0 sent 0, 2, 4; publisher 1 sent 1, 3.
        assert_eq!(p.on_channel(0).collect::<Vec<_>>(), vec![0, 2, 4]);
        assert_eq!(p.on_channel(1).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(p.total(), 5);
        let mut s = Seen::default();
        assert!(!s.set(130));
        assert!(s.set(130));
        assert!(s.get(130) && !s.get(129));
    }
}

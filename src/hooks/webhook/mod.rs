//! Webhooks: the application backend learns what happened — connects, disconnects (with code,
//! reason and duration), subscriptions, channels occupied and vacated, and, per namespace,
//! publications — after the fact, never delaying the client's reply or the API's response (the
//! guide's `BackgroundTasks`).
//!
//! [`Webhooks`] is an event sink: emitting copies the event into the [`outbox`] thread's channel
//! and returns. The outbox stores it durably in the data directory; delivery lanes
//! ([`delivery`]) post batches `{"events": [...]}` to `webhook_endpoint`, signed with
//! `webhook_secret`, retrying with backoff until the backend takes them: at least once, in order
//! per connection (a connection's events, and a channel's, always travel on one lane), with at
//! most `webhook_concurrency` requests in flight (the guide's `Semaphore`). Each event has a
//! unique `id` for the receiver to drop repeats.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hooks::events::{Event, EventSink};
use crate::metrics::Metrics;
use crate::protocol::Payload;
use crate::timeline::Timeline;

mod cluster;
mod delivery;
mod outbox;

pub use delivery::{sign, SIGNATURE_HEADER};
pub use outbox::NODE_LOST;

/// Why webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook outbox: {0}")]
    Storage(String),
    #[error("webhook outbox: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("webhook HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("webhook_endpoint {0:?} is not a URL")]
    Url(String),
}

/// An event type, as the backend receives it in `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Connect,
    Disconnect,
    Subscribe,
    Unsubscribe,
    ChannelOccupied,
    ChannelVacated,
    Publication,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Disconnect => "disconnect",
            Kind::Subscribe => "subscribe",
            Kind::Unsubscribe => "unsubscribe",
            Kind::ChannelOccupied => "channel_occupied",
            Kind::ChannelVacated => "channel_vacated",
            Kind::Publication => "publication",
        }
    }

    const ALL: [Kind; 7] = [
        Kind::Connect,
        Kind::Disconnect,
        Kind::Subscribe,
        Kind::Unsubscribe,
        Kind::ChannelOccupied,
        Kind::ChannelVacated,
        Kind::Publication,
    ];
}

/// An event copied out of the emitter's borrow, on its way to the outbox thread.
pub(super) struct Record {
    kind: Kind,
    time_ms: u64,
    client: Option<String>,
    user: Option<String>,
    channel: Option<String>,
    code: u32,
    reason: String,
    offset: u64,
    data: Option<Payload>,
    /// `data` stands for bytes that are not JSON: it goes out as `b64data`.
    binary: bool,
    /// A disconnect's duration when known beforehand (a lost node's connection); otherwise the
    /// outbox takes it from the connect it recorded.
    duration_ms: Option<u64>,
}

impl Record {
    /// A record of `kind` about `client` of `user` (and `channel`), happening now.
    fn about(kind: Kind, client: &str, user: &str, channel: Option<&str>) -> Record {
        Record {
            client: Some(client.into()),
            user: Some(user.into()),
            channel: channel.map(Into::into),
            ..Record::new(kind)
        }
    }

    fn new(kind: Kind) -> Record {
        Record {
            kind,
            time_ms: now_ms(),
            client: None,
            user: None,
            channel: None,
            code: 0,
            reason: String::new(),
            offset: 0,
            data: None,
            binary: false,
            duration_ms: None,
        }
    }
}

/// The node's webhooks: an event sink feeding the outbox, and the lanes delivering from it.
pub struct Webhooks {
    sender: Arc<delivery::Sender>,
    /// Publications of channels outside any namespace are sent.
    publication_default: bool,
    /// Namespaces whose publications are sent.
    publication_namespaces: HashSet<String>,
    sends_publications: bool,
    /// With Redis: where connections, subscriptions and occupancy are tracked for the cluster.
    cluster: Option<(Arc<cluster::Cluster>, mpsc::UnboundedSender<cluster::Track>)>,
    lanes: TaskTracker,
    stop: CancellationToken,
}

impl Webhooks {
    /// Opens the outbox in the data directory (queuing the events of connections a killed run
    /// left behind) and starts the delivery lanes. `None` without a `webhook_endpoint`.
    pub async fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        timeline: Arc<Timeline>,
    ) -> Result<Option<Arc<Webhooks>>, WebhookError> {
        let Some(endpoint) = &config.webhook_endpoint else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(endpoint).map_err(|_| WebhookError::Url(endpoint.clone()))?;
        // HTTPS uses the ring provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(config.webhook_timeout)
            .pool_max_idle_per_host(config.webhook_concurrency)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        metrics.webhooks.enabled.store(true, Ordering::Relaxed);
        let sent: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|kind| config.webhook_sends(kind.name()))
            .collect();
        let wake: Arc<[Notify]> = (0..config.webhook_concurrency)
            .map(|_| Notify::new())
            .collect();
        let clustered = config.uses_redis();
        let (outbox, lost) = outbox::Outbox::open(
            &config.data_dir,
            !clustered,
            wake.clone(),
            move |kind| sent.contains(&kind),
            metrics.clone(),
        )?;
        if lost > 0 {
            tracing::warn!(
                connections = lost,
                "connections of a previous run were never closed (the node was killed): their \
                 disconnect events are queued with code {NODE_LOST}"
            );
        }
        let outbox = Arc::new(outbox);
        let stop = CancellationToken::new();
        let lanes = TaskTracker::new();
        let cluster = match config.redis.first() {
            Some(url) => {
                let lease = Duration::from_secs(config.presence_ttl.max(1));
                let tls_ca = config
                    .redis_tls_roots()
                    .map_err(|e| WebhookError::Storage(e.to_string()))?;
                let cluster = cluster::Cluster::connect(
                    url,
                    tls_ca.as_deref(),
                    &config.redis_prefix,
                    lease,
                    outbox.clone(),
                )
                .await
                .map_err(|e| WebhookError::Storage(format!("Redis: {e}")))?;
                let cluster = Arc::new(cluster);
                let (tracks, received) = mpsc::unbounded_channel();
                // Not on `lanes`: these run until `stop`, after the lanes drained.
                tokio::spawn(cluster.clone().track(received, stop.clone()));
                tokio::spawn(cluster.clone().lease_and_sweep(stop.clone()));
                Some((cluster, tracks))
            }
            None => None,
        };
        let shared_wake: Arc<[Notify]> = (0..config.webhook_concurrency)
            .map(|_| Notify::new())
            .collect();
        let sender = Arc::new(delivery::Sender {
            http,
            url,
            secret: config
                .webhook_secret
                .as_ref()
                .map(|s| s.as_bytes().to_vec()),
            timeout: config.webhook_timeout,
            batch_size: config.webhook_batch_size,
            batch_delay: config.webhook_batch_delay,
            outbox,
            wake: wake.clone(),
            metrics,
            timeline,
            draining: AtomicBool::new(false),
            shared: cluster.as_ref().map(|(cluster, _)| cluster.clone()),
            shared_wake,
        });
        for lane in 0..wake.len() {
            lanes.spawn(sender.clone().run_lane(lane as u32, stop.clone()));
        }
        if let Some((cluster, _)) = &cluster {
            for lane in 0..wake.len() {
                let run =
                    sender
                        .clone()
                        .run_shared_lane(cluster.clone(), lane as u32, stop.clone());
                lanes.spawn(run);
            }
        }
        lanes.close();
        let namespaces = config.namespace.iter();
        Ok(Some(Arc::new(Webhooks {
            sender,
            publication_default: config.channel.webhook_publication.unwrap_or(false),
            publication_namespaces: namespaces
                .filter(|ns| ns.webhook_publication.unwrap_or(false))
                .map(|ns| ns.name.clone())
                .collect(),
            sends_publications: config.webhook_sends("publication"),
            cluster,
            lanes,
            stop,
        })))
    }

    /// At shutdown, after the connections are closed: stores their last events, gives the lanes
    /// until `within` to deliver what is queued, then stops them. What is left stays queued for
    /// the next start.
    pub async fn finish(&self, within: Duration) {
        if let Some((cluster, tracks)) = &self.cluster {
            let (done, flushed) = oneshot::channel();
            if tracks.send(cluster::Track::Flush(done)).is_ok() {
                let _ = flushed.await;
            }
            cluster.leave().await;
        }
        self.sender.outbox.flush().await;
        self.sender.draining.store(true, Ordering::Release);
        // Lanes waiting for events wake, find their lane empty and stop.
        self.sender.wake_all();
        if tokio::time::timeout(within, self.lanes.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown with webhook events still queued: they go out at next start");
        }
        self.stop.cancel();
        self.lanes.wait().await;
    }

    /// Whether publications to `channel` are sent.
    fn sends_publication(&self, channel: &str) -> bool {
        self.sends_publications
            && match channel.split_once(':') {
                None => self.publication_default,
                Some((namespace, _)) => self.publication_namespaces.contains(namespace),
            }
    }
}

impl EventSink for Webhooks {
    fn emit(&self, event: &Event<'_>) {
        let record = match *event {
            Event::Connected { client, user } => Record::about(Kind::Connect, client, user, None),
            Event::Disconnected {
                client,
                user,
                code,
                reason,
            } => Record {
                code,
                reason: reason.into(),
                ..Record::about(Kind::Disconnect, client, user, None)
            },
            Event::Subscribed {
                client,
                user,
                channel,
            } => Record::about(Kind::Subscribe, client, user, Some(channel)),
            Event::Unsubscribed {
                client,
                user,
                channel,
            } => Record::about(Kind::Unsubscribe, client, user, Some(channel)),
            Event::ChannelOccupied { channel } => Record {
                channel: Some(channel.into()),
                ..Record::new(Kind::ChannelOccupied)
            },
            Event::ChannelVacated { channel } => Record {
                channel: Some(channel.into()),
                ..Record::new(Kind::ChannelVacated)
            },
            Event::Published {
                channel,
                offset,
                client,
                user,
                data,
                binary,
            } => {
                if !self.sends_publication(channel) {
                    return;
                }
                Record {
                    client: client.map(Into::into),
                    user: user.map(Into::into),
                    channel: Some(channel.into()),
                    offset,
                    data: Some(data.clone()),
                    binary,
                    ..Record::new(Kind::Publication)
                }
            }
        };
        if let Some((_, tracks)) = &self.cluster {
            if let Some(track) = cluster_track(&record) {
                let occupancy = matches!(track, cluster::Track::Occupancy { .. });
                let _ = tracks.send(track);
                if occupancy {
                    // The cluster decides whether the channel changed for everyone.
                    return;
                }
            }
        }
        self.sender.outbox.record(record);
    }
}

/// What a record changes of the node's state in the cluster.
fn cluster_track(record: &Record) -> Option<cluster::Track> {
    let client = || record.client.clone().unwrap_or_default();
    let channel = || record.channel.clone().unwrap_or_default();
    Some(match record.kind {
        Kind::Connect => cluster::Track::Connect {
            client: client(),
            user: record.user.clone().unwrap_or_default(),
            time_ms: record.time_ms,
        },
        Kind::Disconnect => cluster::Track::Disconnect { client: client() },
        Kind::Subscribe => cluster::Track::Subscribe {
            client: client(),
            channel: channel(),
        },
        Kind::Unsubscribe => cluster::Track::Unsubscribe {
            client: client(),
            channel: channel(),
        },
        Kind::ChannelOccupied | Kind::ChannelVacated => cluster::Track::Occupancy {
            channel: channel(),
            occupied: record.kind == Kind::ChannelOccupied,
            time_ms: record.time_ms,
        },
        Kind::Publication => return None,
    })
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

//! The node: one running server's shared state and the operations that sessions and the HTTP API
//! both use (publish, history, presence, user control). Sessions and the API reach the engines
//! only through it; `dispatch` turns what the broker delivers into messages queued to local
//! subscribers.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::config::Config;
use crate::engine::broker::{Broker, BrokerError, NodeControl, NodeInfo};
use crate::engine::history::{HistoryError, HistoryFilter, HistoryPage};
use crate::engine::presence::{Presence, PresenceStats};
use crate::hooks::decisions::Decisions;
use crate::hooks::events::{Event, EventSink, Events};
use crate::hooks::rules::Rules;
use crate::hub::{ConnId, Hub};
use crate::metrics::{Gauges, Metrics};
use crate::protocol::{error_code, ClientInfo, Error};
use crate::queue::ClientQueue;
use crate::ratelimit::PerIpLimiter;
use crate::timeline::{Timeline, TimelineEvents};

pub mod addresses;
mod dispatch;
pub mod emulation;
mod map;
mod map_presence;
mod publish;

use addresses::ClientAddresses;

use crate::channel::ChannelOptions;
use dispatch::Dispatcher;
use emulation::{Delivery, EmulationSessions};
pub use map::MAX_KEY_LENGTH;
pub use publish::Submitted;

/// The server version reported to clients and in `/api/info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (short hash), or `unknown` (see `build.rs`).
pub const COMMIT: &str = env!("SWITCHBOARD_COMMIT");

/// Longest channel name anyone may use, in bytes (configurations may lower it).
pub const MAX_CHANNEL_LENGTH: usize = 1024;

/// Rejects empty, oversized or newline-bearing channel names (error 107). Newlines would break
/// the frame format, which separates messages with them.
pub fn check_channel(channel: &str) -> Result<(), Error> {
    if channel.is_empty() || channel.len() > MAX_CHANNEL_LENGTH || channel.contains(['\n', '\r']) {
        return Err(Error::new(error_code::BAD_REQUEST));
    }
    Ok(())
}

/// What the application plugs into a node.
#[derive(Clone, Default)]
pub struct NodeHooks {
    /// Who decides about clients; `None`: the built-in [`Rules`] (tokens and configuration).
    pub decisions: Option<Arc<dyn Decisions>>,
    /// Who hears of lifecycle events, besides the node's own metrics.
    pub sinks: Vec<Arc<dyn EventSink>>,
    /// The node's counters; `None`: fresh ones. Hooks built before the node (the backend proxy)
    /// count into the node's metrics through this.
    pub metrics: Option<Arc<Metrics>>,
    /// The dashboard's timeline; `None`: a fresh one. Hooks built before the node (webhooks)
    /// draw their work on it through this.
    pub timeline: Option<Arc<Timeline>>,
}

/// A cheap-to-clone handle on the node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    default_options: ChannelOptions,
    namespaces: HashMap<String, ChannelOptions>,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn Presence>,
    metrics: Arc<Metrics>,
    timeline: Arc<Timeline>,
    events: Events,
    decisions: Arc<dyn Decisions>,
    verifier: Option<TokenVerifier>,
    uid: String,
    name: String,
    started: Instant,
    next_conn: AtomicU64,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    connection_limiter: PerIpLimiter,
    client_addresses: Arc<ClientAddresses>,
    map_presence: map_presence::MapPresence,
    emulation: Arc<EmulationSessions>,
}

/// What became of an `/emulation` request (see [`Node::emulate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulated {
    /// The session is on this node.
    Here(Delivery),
    /// Sent to the live node holding the session.
    Forwarded,
    /// No live node has that id (it stopped, or the id is made up).
    NoSuchNode,
    /// The broker could not be reached.
    Unavailable,
}

impl Node {
    /// A node on `broker` and `presence` deciding by the built-in rules; registers itself as the
    /// broker's event handler. Its background tasks (connections, cleanups, engines' tasks) run
    /// on `tracker`.
    pub fn new(
        config: Config,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        verifier: Option<TokenVerifier>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Node {
        Node::with_hooks(
            config,
            broker,
            presence,
            verifier,
            shutdown,
            tracker,
            NodeHooks::default(),
        )
    }

    /// [`Node::new`] with the application's `hooks`.
    pub fn with_hooks(
        config: Config,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        verifier: Option<TokenVerifier>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        hooks: NodeHooks,
    ) -> Node {
        let hub = Arc::new(Hub::default());
        let metrics = hooks.metrics.unwrap_or_default();
        let timeline = hooks.timeline.unwrap_or_default();
        let uid = uuid::Uuid::new_v4().to_string();
        let emulation = Arc::new(EmulationSessions::default());
        broker.set_handler(Arc::new(Dispatcher {
            hub: hub.clone(),
            metrics: metrics.clone(),
            timeline: timeline.clone(),
            uid: uid.clone(),
            emulation: emulation.clone(),
        }));
        let name = config.name.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "switchboard".to_string())
        });
        let connection_rate = config.connection_rate_per_ip;
        let default_options = ChannelOptions::resolve(&config, &config.channel);
        let map_presence = map_presence::MapPresence::new(&config);
        let namespaces = config
            .namespace
            .iter()
            .map(|ns| (ns.name.clone(), ChannelOptions::resolve(&config, ns)))
            .collect();
        let decisions = hooks
            .decisions
            .unwrap_or_else(|| Arc::new(Rules::new(&config, verifier.clone())));
        let events = hooks.sinks.into_iter().fold(
            Events::default()
                .with(metrics.clone())
                .with(Arc::new(TimelineEvents(timeline.clone()))),
            Events::with,
        );
        Node {
            inner: Arc::new(Inner {
                config,
                default_options,
                namespaces,
                hub,
                broker,
                presence,
                events,
                decisions,
                metrics,
                timeline,
                verifier,
                uid,
                name,
                started: Instant::now(),
                next_conn: AtomicU64::new(1),
                shutdown,
                tracker,
                connection_limiter: PerIpLimiter::new(connection_rate),
                client_addresses: Arc::default(),
                map_presence,
                emulation,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn broker(&self) -> &dyn Broker {
        &*self.inner.broker
    }

    pub fn presence_storage(&self) -> &dyn Presence {
        &*self.inner.presence
    }

    /// Tells every event sink (metrics, and what the application registers) what happened.
    pub fn emit(&self, event: Event<'_>) {
        self.inner.events.emit(event);
    }

    /// Who decides about clients (see [`Decisions`]).
    pub fn decisions(&self) -> &dyn Decisions {
        &*self.inner.decisions
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Recent spans of work, for the dashboard's timeline.
    pub fn timeline(&self) -> &Arc<Timeline> {
        &self.inner.timeline
    }

    pub fn verifier(&self) -> Option<&TokenVerifier> {
        self.inner.verifier.as_ref()
    }

    /// Cancelled when the server shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Tracks connection and cleanup tasks so shutdown can wait for them.
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// New-connection rate limits per client address.
    pub fn connection_limiter(&self) -> &PerIpLimiter {
        &self.inner.connection_limiter
    }

    /// This node's unique id (a fresh one each start).
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    /// The sessions over HTTP emulation on this node.
    pub fn emulation(&self) -> &Arc<EmulationSessions> {
        &self.inner.emulation
    }

    /// Hands `commands` from an `/emulation` request to `session` on node `node_uid`: here
    /// directly, on another live node through the broker (which cannot say whether the session
    /// is still there: [`Emulated::Forwarded`]).
    pub async fn emulate(&self, node_uid: &str, session: &str, commands: String) -> Emulated {
        if node_uid == self.inner.uid {
            return Emulated::Here(self.inner.emulation.deliver(session, commands));
        }
        let live = if self.inner.emulation.known_live(node_uid) {
            true
        } else {
            match self.broker().nodes().await {
                Ok(records) => {
                    let uids: HashSet<String> = records.into_iter().map(|r| r.info.uid).collect();
                    let live = uids.contains(node_uid);
                    self.inner.emulation.set_live(uids);
                    live
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list nodes for an emulation request");
                    return Emulated::Unavailable;
                }
            }
        };
        if !live {
            return Emulated::NoSuchNode;
        }
        let control = NodeControl::Emulation {
            node: node_uid.to_string(),
            session: session.to_string(),
            commands,
        };
        match self.broker().publish_control(control).await {
            Ok(()) => Emulated::Forwarded,
            Err(e) => {
                tracing::warn!(error = %e, "cannot forward an emulation request");
                Emulated::Unavailable
            }
        }
    }

    /// Open connections per client address (the dashboard lists them).
    pub fn client_addresses(&self) -> &Arc<ClientAddresses> {
        &self.inner.client_addresses
    }

    /// A fresh connection number.
    pub fn next_conn_id(&self) -> ConnId {
        self.inner.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Channel behaviour from configuration: the options of the channel's namespace (the part
    /// of its name before `:`), or the server-wide ones. An undefined namespace is error 102.
    pub fn channel_options(&self, channel: &str) -> Result<ChannelOptions, Error> {
        match channel.split_once(':') {
            None => Ok(self.inner.default_options),
            Some((namespace, _)) => self
                .inner
                .namespaces
                .get(namespace)
                .copied()
                .ok_or_else(|| Error::new(error_code::UNKNOWN_CHANNEL)),
        }
    }

    /// `user`'s personal channel when connections are subscribed to it (see
    /// [`Config::subscribe_to_user_personal_channel`]); `None` for anonymous clients or when off.
    pub fn personal_channel(&self, user: &str) -> Option<String> {
        let config = self.config();
        if !config.subscribe_to_user_personal_channel || user.is_empty() {
            return None;
        }
        Some(match config.personal_channel_namespace.as_str() {
            "" => format!("#{user}"),
            namespace => format!("{namespace}:#{user}"),
        })
    }

    /// [`check_channel`] with the configured length limit: what clients may name.
    pub fn check_channel_name(&self, channel: &str) -> Result<(), Error> {
        check_channel(channel)?;
        if channel.len() > self.config().channel_max_length {
            return Err(Error::new(error_code::BAD_REQUEST));
        }
        Ok(())
    }

    /// Reads a channel's history.
    pub async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, Error> {
        if self.channel_options(channel)?.history.is_none() {
            return Err(Error::new(error_code::NOT_AVAILABLE));
        }
        self.broker()
            .history(channel, filter)
            .await
            .map_err(|e| broker_error(channel, e))
    }

    /// Removes a channel's history (its position is kept).
    pub async fn remove_history(&self, channel: &str) -> Result<(), Error> {
        if self.channel_options(channel)?.history.is_none() {
            return Err(Error::new(error_code::NOT_AVAILABLE));
        }
        self.broker()
            .remove_history(channel)
            .await
            .map_err(|e| broker_error(channel, e))
    }

    /// Who is subscribed to `channel`, by client id.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, Error> {
        if !self.channel_options(channel)?.presence {
            return Err(Error::new(error_code::NOT_AVAILABLE));
        }
        self.presence_storage().get(channel).await.map_err(|e| {
            tracing::error!(channel, error = %e, "presence read failed");
            Error::new(error_code::INTERNAL)
        })
    }

    /// Client and user counts of `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, Error> {
        if !self.channel_options(channel)?.presence {
            return Err(Error::new(error_code::NOT_AVAILABLE));
        }
        self.presence_storage().stats(channel).await.map_err(|e| {
            tracing::error!(channel, error = %e, "presence read failed");
            Error::new(error_code::INTERNAL)
        })
    }

    /// Adds local subscriber `conn` to `channel`, its deliveries held until
    /// [`Hub::activate`]; `join_leave`: it receives join/leave pushes. The channel's first
    /// subscriber on this node starts the broker's deliveries of it here and occupies it; a later
    /// one returns once those deliveries have started too.
    pub async fn join_channel(
        &self,
        channel: &str,
        conn: ConnId,
        queue: &Arc<ClientQueue>,
        join_leave: bool,
    ) {
        self.join_channel_with(channel, conn, queue, join_leave, false)
            .await
    }

    /// [`Node::join_channel`] for a subscriber that may ask for Fossil deltas (`delta`).
    pub async fn join_channel_with(
        &self,
        channel: &str,
        conn: ConnId,
        queue: &Arc<ClientQueue>,
        join_leave: bool,
        delta: bool,
    ) {
        if self
            .hub()
            .subscribe(channel, conn, queue, join_leave, delta)
        {
            if let Err(e) = self.broker().subscribe(channel).await {
                tracing::error!(channel, error = %e, "broker subscribe failed");
            }
            self.emit(Event::ChannelOccupied { channel });
        } else {
            self.broker().listening(channel).await;
        }
    }

    /// Removes local subscriber `conn` from `channel`; the last one vacates it and stops the
    /// broker's deliveries of it here.
    pub async fn leave_channel(&self, channel: &str, conn: ConnId) {
        if self.leave_channel_in_hub(channel, conn) {
            self.stop_receiving(channel).await;
        }
    }

    /// The part of [`Node::leave_channel`] that needs no I/O, for callers that cannot await
    /// (a session's `Drop`). Returns true when the channel is vacated: the caller then owes
    /// [`Node::stop_receiving`].
    pub fn leave_channel_in_hub(&self, channel: &str, conn: ConnId) -> bool {
        let vacated = self.hub().unsubscribe(channel, conn);
        if vacated {
            self.emit(Event::ChannelVacated { channel });
        }
        vacated
    }

    /// Stops the broker's deliveries of a channel this node no longer has subscribers of.
    pub async fn stop_receiving(&self, channel: &str) {
        if let Err(e) = self.broker().unsubscribe(channel).await {
            tracing::debug!(channel, error = %e, "broker unsubscribe failed");
        }
    }

    /// Adds a subscriber to `channel`'s presence; a failure is logged (presence is advisory).
    pub async fn add_presence(&self, channel: &str, info: ClientInfo) {
        if let Err(e) = self.presence_storage().add(channel, info).await {
            tracing::error!(channel, error = %e, "presence add failed");
        }
    }

    /// Removes `client` from `channel`'s presence; a failure is logged.
    pub async fn remove_presence(&self, channel: &str, client: &str) {
        if let Err(e) = self.presence_storage().remove(channel, client).await {
            tracing::error!(channel, error = %e, "presence remove failed");
        }
    }

    /// Tells `channel`'s subscribers on every node that `info` joined; a failure is logged.
    pub async fn publish_join(&self, channel: &str, info: &ClientInfo) {
        if let Err(e) = self.broker().publish_join(channel, info).await {
            tracing::error!(channel, error = %e, "join publish failed");
        }
    }

    /// Tells `channel`'s subscribers on every node that `info` left; a failure is logged.
    pub async fn publish_leave(&self, channel: &str, info: &ClientInfo) {
        if let Err(e) = self.broker().publish_leave(channel, info).await {
            tracing::error!(channel, error = %e, "leave publish failed");
        }
    }

    /// Sends a user-targeted action to whichever node holds the user's connections.
    pub async fn control(&self, control: NodeControl) -> Result<(), Error> {
        self.broker().publish_control(control).await.map_err(|e| {
            tracing::error!(error = %e, "control publish failed");
            Error::new(error_code::INTERNAL)
        })
    }

    /// This node's identity and counts, as `/api/info` lists them.
    pub fn info(&self) -> NodeInfo {
        let (connections, users, channels, subscriptions) = self.hub().counts();
        NodeInfo {
            uid: self.inner.uid.clone(),
            name: self.inner.name.clone(),
            version: VERSION.to_string(),
            num_clients: connections as u64,
            num_users: users as u64,
            num_channels: channels as u64,
            num_subs: subscriptions as u64,
            uptime: self.inner.started.elapsed().as_secs(),
        }
    }

    /// Every live node (this one included, always).
    pub async fn nodes(&self) -> Vec<NodeInfo> {
        let mine = self.info();
        let mut nodes: Vec<NodeInfo> = match self.broker().nodes().await {
            Ok(records) => records
                .into_iter()
                .map(|r| r.info)
                .filter(|n| n.uid != mine.uid)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list nodes");
                Vec::new()
            }
        };
        nodes.push(mine);
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        nodes
    }

    /// Announces this node through the broker every few seconds until shutdown.
    pub async fn announce_forever(self) {
        loop {
            let record = crate::engine::broker::NodeRecord {
                info: self.info(),
                seen: crate::auth::unix_now(),
            };
            if let Err(e) = self.broker().announce(record).await {
                tracing::debug!(error = %e, "node announcement failed");
            }
            tokio::select! {
                _ = self.shutdown_token().cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
        }
    }

    /// The Prometheus exposition of this node's metrics.
    pub fn render_metrics(&self) -> String {
        let info = self.info();
        self.metrics().render(&Gauges {
            connections: info.num_clients,
            users: info.num_users,
            channels: info.num_channels,
            subscriptions: info.num_subs,
            uptime_seconds: info.uptime,
            runtime_tasks: tokio::runtime::Handle::try_current()
                .map_or(0, |runtime| runtime.metrics().num_alive_tasks() as u64),
        })
    }
}

fn broker_error(channel: &str, error: BrokerError) -> Error {
    match error {
        BrokerError::History(HistoryError::UnrecoverablePosition) => {
            Error::new(error_code::UNRECOVERABLE_POSITION)
        }
        BrokerError::History(HistoryError::TooManyKeys) => Error::new(error_code::LIMIT_EXCEEDED),
        BrokerError::History(HistoryError::TooLarge(max_bytes)) => {
            Error::too_large("history page", max_bytes)
        }
        // Temporary: the same publish may succeed a moment later.
        BrokerError::History(HistoryError::Busy) => {
            tracing::warn!(channel, "history storage busy");
            Error::new(error_code::INTERNAL)
        }
        BrokerError::Unavailable(reason) => {
            tracing::warn!(channel, %reason, "broker unavailable");
            Error::new(error_code::NOT_AVAILABLE)
        }
        other => {
            tracing::error!(channel, error = %other, "broker failed");
            Error::new(error_code::INTERNAL)
        }
    }
}

//! The broker: how a publication, a join/leave or a control message reaches every node.
//!
//! Every publication goes through the broker, so one node and many nodes run the same path. The
//! [`LocalBroker`](super::memory::LocalBroker) delivers within this process and keeps history through a
//! [`History`](super::history::History) storage; a shared broker (Redis) carries the same events
//! between nodes.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::engine::history::{HistoryError, HistoryFilter, HistoryPage, Retention};
use crate::engine::idempotency::{IdempotencyKey, Idempotent};
use crate::engine::map::{MapUpdate, StatePage};
use crate::protocol::{ClientInfo, Disconnect, Payload, Publication, StreamPosition};

/// A node-wide action that must reach the node holding the target connections (it travels
/// between nodes as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeControl {
    /// Subscribe `user`'s connections (only `client`, if given) to `channel`.
    Subscribe {
        user: String,
        channel: String,
        client: Option<String>,
        chan_info: Option<Payload>,
        data: Option<Payload>,
    },
    /// Unsubscribe `user`'s connections (only `client`, if given) from `channel`.
    Unsubscribe {
        user: String,
        channel: String,
        client: Option<String>,
    },
    /// Disconnect `user`'s connections (only `client`, if given), sparing `whitelist`.
    Disconnect {
        user: String,
        client: Option<String>,
        whitelist: Vec<String>,
        reason: Disconnect,
    },
    /// Report this node's channels under `request` (for `/api/channels` across nodes; the
    /// broker that asked collects the answers).
    Channels { request: String },
    /// Refresh `user`'s connections (only `client`, if given): end them as expired, or set
    /// their expiry (`None`: they no longer expire), and their connection info if given.
    Refresh {
        user: String,
        client: Option<String>,
        expired: bool,
        expire_at: Option<u64>,
        info: Option<Payload>,
    },
    /// Commands a client sent over HTTP emulation to another node, for its `session` on `node`
    /// (the node's uid); other nodes ignore it.
    Emulation {
        node: String,
        session: String,
        commands: String,
    },
}

/// A publish under way (see [`Broker::submit_publish`]).
pub type Publishing = BoxFuture<'static, Result<Option<StreamPosition>, BrokerError>>;

/// Receives what the broker delivers to this node. Implemented by the node.
pub trait BrokerEventHandler: Send + Sync + 'static {
    /// A publication for `channel`; per channel, called in offset order.
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>);
    fn handle_join(&self, channel: &str, info: &ClientInfo);
    fn handle_leave(&self, channel: &str, info: &ClientInfo);
    fn handle_control(&self, control: NodeControl);
    /// Publications of `channel` may have been lost on their way to this node: its local
    /// subscribers must recover from history.
    fn handle_insufficient_state(&self, channel: &str);
    /// This node's channels with their local subscriber counts, for a broker answering
    /// [`NodeControl::Channels`].
    fn local_channels(&self) -> Vec<(Arc<str>, usize)>;
}

/// A node's entry in `/api/info`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: u64,
    pub num_users: u64,
    pub num_channels: u64,
    pub num_subs: u64,
    pub uptime: u64,
}

/// A node's announcement of itself, for `/api/info` across nodes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    pub info: NodeInfo,
    /// When it was announced (unix seconds).
    pub seen: u64,
}

/// Why the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The broker cannot reach its backend; nothing was published.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Fan-out of events to every node.
///
/// Contract: `publish` with a retention appends the publication to the channel's stream (assigning
/// its offset) and delivers it to every node's subscribers, in offset order per channel; it returns
/// the stream position once the publication is stored. Without a retention the publication is
/// delivered without offset and not stored. A failed `publish` delivered nothing.
/// `publish_idempotent` does the same once per idempotency key and channel within the key's
/// window, on every node that shares the broker.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sets who receives this node's events; called once, before any other method.
    fn set_handler(&self, handler: Arc<dyn BrokerEventHandler>);

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
    ) -> Result<Option<StreamPosition>, BrokerError>;

    /// Starts a publish whose place in the channel's order is fixed when this returns, so that a
    /// caller may keep several in flight and still see them ordered as submitted; the future ends
    /// as `publish` would. `Err` hands the publication back when this broker fixes the order only
    /// while `publish` runs, or cannot take it now (a full queue): await `publish` instead, once
    /// the caller's earlier publishes are answered.
    fn submit_publish(
        &self,
        _channel: &str,
        publication: Publication,
        _history: Option<Retention>,
    ) -> Result<Publishing, Box<Publication>> {
        Err(Box::new(publication))
    }

    /// [`publish`](Broker::publish) unless `key` was used for `channel` within its window: then
    /// nothing is published or stored, and the answer is [`Idempotent::Repeated`] with the
    /// position the first publish answered. Checking and remembering the key are atomic with the
    /// publish, so concurrent retries (from any node) publish once. The key is remembered exactly
    /// when the publication went out: a publish refused before that remembers nothing, and one
    /// whose answer was lost on the way back (a dropped connection) is answered to its retry.
    /// Publishes without a key never pay for this: they call `publish`.
    async fn publish_idempotent(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
        key: IdempotencyKey,
    ) -> Result<Idempotent, BrokerError>;

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;
    async fn publish_control(&self, control: NodeControl) -> Result<(), BrokerError>;

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError>;
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;

    /// Changes `channel`'s map by `publication` (setting or removing `publication.key`) and
    /// appends it to the channel's stream in one atomic step, then delivers it to every node as
    /// `publish` does. `None`: nothing changed (the removal of an absent key). The contract is
    /// [`crate::engine::map`]'s.
    async fn map_update(
        &self,
        channel: &str,
        publication: Publication,
        update: MapUpdate,
    ) -> Result<Option<StreamPosition>, BrokerError>;

    /// A page of `channel`'s map state after key `after` (from it, when `inclusive`), with its
    /// consistent stream position.
    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<StatePage, BrokerError>;

    /// Removes keys whose TTL ran out (a bounded batch), delivering each removal to every node;
    /// returns how many. Safe to run on every node at once: a key expires once.
    async fn map_expire(&self) -> Result<usize, BrokerError>;

    /// This node has its first local subscriber of `channel`: start receiving its events.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Another local subscriber of `channel` joined: returns once the node receives the
    /// channel's events, if [`Broker::subscribe`] for it is still under way (boundedly).
    async fn listening(&self, _channel: &str) {}
    /// This node has no local subscriber of `channel` left.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Announces this node (called every few seconds).
    async fn announce(&self, record: NodeRecord) -> Result<(), BrokerError>;
    /// Every live node's latest announcement.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, BrokerError>;

    /// Every channel with subscribers on any node, with its subscribers summed over the nodes
    /// that answered within a second; `None` from a broker of one node (its hub knows). A node
    /// that does not answer in time is left out (and logged).
    async fn channels_everywhere(&self) -> Result<Option<Vec<(String, u64)>>, BrokerError> {
        Ok(None)
    }
}

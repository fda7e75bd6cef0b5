//! The broker: how a publication, a join/leave or a control message reaches every node.
//!
//! Every publication goes through the broker, so one node and many nodes run the same path. The
//! [`LocalBroker`] delivers within this process and keeps history through a [`History`] storage;
//! a shared broker (Redis) carries the same events between nodes.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::history::{History, HistoryError, HistoryFilter, HistoryPage, Retention};
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
}

/// A node's announcement of itself, for `/api/info` across nodes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    pub info: crate::node::NodeInfo,
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
    /// while `publish` runs: await `publish` instead.
    fn submit_publish(
        &self,
        _channel: &str,
        publication: Publication,
        _history: Option<Retention>,
    ) -> Result<Publishing, Box<Publication>> {
        Err(Box::new(publication))
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;
    async fn publish_control(&self, control: NodeControl) -> Result<(), BrokerError>;

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError>;
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;

    /// This node has its first local subscriber of `channel`: start receiving its events.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// This node has no local subscriber of `channel` left.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Announces this node (called every few seconds).
    async fn announce(&self, record: NodeRecord) -> Result<(), BrokerError>;
    /// Every live node's latest announcement.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, BrokerError>;
}

/// A broker for a single node: events go straight to this node's handler.
pub struct LocalBroker {
    history: Arc<dyn History>,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    record: std::sync::Mutex<Option<NodeRecord>>,
}

impl LocalBroker {
    pub fn new(history: Arc<dyn History>) -> Self {
        LocalBroker {
            history,
            handler: OnceLock::new(),
            record: std::sync::Mutex::new(None),
        }
    }

    /// Appends (or delivers, without history) now; the future waits for the append.
    fn start_publish(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
    ) -> Publishing {
        let handler = match self.handler() {
            Ok(handler) => handler.clone(),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        match history {
            Some(retention) => {
                let name = channel.to_string();
                let appending = self.history.append(
                    channel,
                    publication,
                    retention,
                    Box::new(move |p| handler.handle_publication(&name, p)),
                );
                Box::pin(async move { Ok(Some(appending.await?)) })
            }
            None => {
                handler.handle_publication(channel, Arc::new(publication));
                Box::pin(std::future::ready(Ok(None)))
            }
        }
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerEventHandler>, BrokerError> {
        self.handler
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker has no handler".into()))
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        self.start_publish(channel, publication, history).await
    }

    fn submit_publish(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
    ) -> Result<Publishing, Box<Publication>> {
        Ok(self.start_publish(channel, publication, history))
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.handler()?.handle_join(channel, info);
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.handler()?.handle_leave(channel, info);
        Ok(())
    }

    async fn publish_control(&self, control: NodeControl) -> Result<(), BrokerError> {
        self.handler()?.handle_control(control);
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, BrokerError> {
        Ok(self.history.read(channel, filter).await?)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        Ok(self.history.remove(channel).await?)
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn announce(&self, record: NodeRecord) -> Result<(), BrokerError> {
        *self.record.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, BrokerError> {
        Ok(self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect())
    }
}

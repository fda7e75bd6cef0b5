//! The embedded engine: one node on its own. [`LocalBroker`] delivers within this process and
//! keeps history through any [`History`] storage (SQLite by default, or [`MemoryHistory`]);
//! [`MemoryPresence`] holds this node's presence.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;

use super::broker::{Broker, BrokerError, BrokerEventHandler, NodeControl, NodeRecord, Publishing};
use super::history::{
    new_epoch, select, Appending, AppendingOnce, History, HistoryError, HistoryFilter, HistoryPage,
    OnStored, Retention, Updating,
};
use super::idempotency::{IdempotencyKey, Idempotent, RememberedKeys};
use super::map::{Deliver, MapUpdate, StatePage};
use super::memory_map::{self, MemoryMap};
use super::presence::{Presence, PresenceError, PresenceStats};
use crate::protocol::{ClientInfo, Publication, StreamPosition};

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

    /// The history storage checks and remembers the key with the append, so the key lasts as
    /// long as the storage's streams (across restarts with SQLite).
    async fn publish_idempotent(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
        key: IdempotencyKey,
    ) -> Result<Idempotent, BrokerError> {
        let handler = self.handler()?.clone();
        let name = channel.to_string();
        let on_stored: OnStored = Box::new(move |p| handler.handle_publication(&name, p));
        Ok(self
            .history
            .append_once(channel, publication, history, key, on_stored)
            .await?)
    }

    async fn map_update(
        &self,
        channel: &str,
        publication: Publication,
        update: MapUpdate,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        let handler = self.handler()?.clone();
        let name = channel.to_string();
        let on_stored: OnStored = Box::new(move |p| handler.handle_publication(&name, p));
        Ok(self
            .history
            .map_update(channel, publication, update, on_stored)
            .await?)
    }

    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<StatePage, BrokerError> {
        Ok(self
            .history
            .map_state(channel, after, inclusive, limit)
            .await?)
    }

    async fn map_expire(&self) -> Result<usize, BrokerError> {
        let handler = self.handler()?.clone();
        let deliver: Deliver = Arc::new(move |channel, p| handler.handle_publication(channel, p));
        Ok(self.history.map_expire(deliver).await?)
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

/// Streams kept in memory: fast, lost on restart. For tests and ephemeral deployments.
#[derive(Default)]
pub struct MemoryHistory {
    streams: Mutex<HashMap<String, MemoryStream>>,
    /// Idempotency keys; locked after `streams` when both are.
    keys: Mutex<RememberedKeys>,
    /// Map channels' states; locked after `streams` when both are.
    maps: Mutex<HashMap<String, MemoryMap>>,
}

pub(super) struct MemoryStream {
    epoch: String,
    top: u64,
    items: VecDeque<(Instant, Arc<Publication>)>,
}

impl MemoryStream {
    /// `channel`'s stream, made (with a fresh epoch) on first use.
    pub(super) fn of<'a>(
        streams: &'a mut HashMap<String, MemoryStream>,
        channel: &str,
    ) -> &'a mut MemoryStream {
        streams
            .entry(channel.to_string())
            .or_insert_with(|| MemoryStream {
                epoch: new_epoch(),
                top: 0,
                items: VecDeque::new(),
            })
    }

    fn trim(&mut self, retention: Option<Retention>) {
        let now = Instant::now();
        if let Some(r) = retention {
            while self.items.len() > r.size {
                self.items.pop_front();
            }
            while let Some((at, _)) = self.items.front() {
                if now.duration_since(*at) > r.ttl {
                    self.items.pop_front();
                } else {
                    break;
                }
            }
        }
    }

    pub(super) fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

#[async_trait]
impl History for MemoryHistory {
    fn append(
        &self,
        channel: &str,
        publication: Publication,
        retention: Retention,
        on_stored: OnStored,
    ) -> Appending {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let (position, _) = append_locked(&mut streams, channel, publication, retention, on_stored);
        Box::pin(std::future::ready(Ok(position)))
    }

    fn append_once(
        &self,
        channel: &str,
        publication: Publication,
        retention: Option<Retention>,
        key: IdempotencyKey,
        on_stored: OnStored,
    ) -> AppendingOnce {
        // Both locks are held from the check to the remembering: one atomic step.
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(first) = keys.get(channel, &key.key, now) {
            return Box::pin(std::future::ready(Ok(Idempotent::Repeated(first))));
        }
        let position = match retention {
            Some(retention) => {
                Some(append_locked(&mut streams, channel, publication, retention, on_stored).0)
            }
            None => {
                on_stored(Arc::new(publication));
                None
            }
        };
        keys.remember(channel, &key, position.clone(), now);
        Box::pin(std::future::ready(Ok(Idempotent::Published(position))))
    }

    async fn read(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryPage, HistoryError> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let stream = MemoryStream::of(&mut streams, channel);
        let position = stream.position();
        let publications = select(stream.items.iter().map(|(_, p)| p), &position, &filter)?;
        Ok(HistoryPage {
            publications,
            position,
        })
    }

    async fn remove(&self, channel: &str) -> Result<(), HistoryError> {
        if let Some(stream) = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(channel)
        {
            stream.items.clear();
        }
        Ok(())
    }

    fn map_update(
        &self,
        channel: &str,
        publication: Publication,
        update: MapUpdate,
        on_stored: OnStored,
    ) -> Updating {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let result = memory_map::update(
            &mut streams,
            &mut maps,
            channel,
            publication,
            update,
            on_stored,
        );
        Box::pin(std::future::ready(result))
    }

    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<StatePage, HistoryError> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        Ok(memory_map::state(
            &mut streams,
            &maps,
            channel,
            (after, inclusive),
            limit,
        ))
    }

    async fn map_expire(&self, deliver: Deliver) -> Result<usize, HistoryError> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        Ok(memory_map::expire(&mut streams, &mut maps, deliver))
    }
}

/// Appends to `channel`'s stream, under the streams' lock; runs `on_stored` under it too, so
/// per-channel calls are ordered and never concurrent. Returns the position and the stored
/// publication.
pub(super) fn append_locked(
    streams: &mut HashMap<String, MemoryStream>,
    channel: &str,
    mut publication: Publication,
    retention: Retention,
    on_stored: OnStored,
) -> (StreamPosition, Arc<Publication>) {
    let stream = MemoryStream::of(streams, channel);
    stream.top += 1;
    publication.offset = stream.top;
    let publication = Arc::new(publication);
    stream
        .items
        .push_back((Instant::now(), publication.clone()));
    stream.trim(Some(retention));
    let position = stream.position();
    on_stored(publication.clone());
    (position, publication)
}

/// Presence of this node's clients, in memory.
#[derive(Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<String, HashMap<String, ClientInfo>>>,
}

impl MemoryPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, ClientInfo>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), PresenceError> {
        self.lock()
            .entry(channel.to_string())
            .or_default()
            .insert(info.client.clone(), info);
        Ok(())
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError> {
        let mut channels = self.lock();
        if let Some(members) = channels.get_mut(channel) {
            members.remove(client_id);
            if members.is_empty() {
                channels.remove(channel);
            }
        }
        Ok(())
    }

    async fn get(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError> {
        Ok(self.lock().get(channel).cloned().unwrap_or_default())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError> {
        let channels = self.lock();
        let Some(members) = channels.get(channel) else {
            return Ok(PresenceStats::default());
        };
        let users: HashSet<&str> = members.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: members.len() as u64,
            num_users: users.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::null_payload;
    use std::time::Duration;

    fn publication() -> Publication {
        Publication::new(null_payload())
    }

    #[tokio::test]
    async fn offsets_are_consecutive_and_retention_applies() {
        let h = MemoryHistory::default();
        let r = Retention {
            size: 3,
            ttl: Duration::from_secs(60),
        };
        let mut epoch = String::new();
        for i in 1..=5u64 {
            let pos = h
                .append("c", publication(), r, Box::new(|_| {}))
                .await
                .unwrap();
            assert_eq!(pos.offset, i);
            if epoch.is_empty() {
                epoch = pos.epoch.clone();
            }
            assert_eq!(pos.epoch, epoch);
        }
        let page = h.read("c", HistoryFilter::default()).await.unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        let since = HistoryFilter {
            since: Some(StreamPosition {
                offset: 3,
                epoch: epoch.clone(),
            }),
            limit: Some(1),
            ..Default::default()
        };
        let page = h.read("c", since).await.unwrap();
        assert_eq!(page.publications[0].offset, 4);
        let wrong_epoch = HistoryFilter {
            since: Some(StreamPosition {
                offset: 3,
                epoch: "other".into(),
            }),
            ..Default::default()
        };
        assert!(matches!(
            h.read("c", wrong_epoch).await,
            Err(HistoryError::UnrecoverablePosition)
        ));
        h.remove("c").await.unwrap();
        let page = h.read("c", HistoryFilter::default()).await.unwrap();
        assert!(page.publications.is_empty());
        assert_eq!(page.position.offset, 5);
    }

    #[tokio::test]
    async fn a_repeated_key_appends_and_delivers_once_per_channel() {
        let h = MemoryHistory::default();
        let r = Retention {
            size: 10,
            ttl: Duration::from_secs(60),
        };
        let key = |k: &str| IdempotencyKey {
            key: k.into(),
            window: Duration::from_secs(60),
        };
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let counting = |channel: &'static str| -> OnStored {
            let delivered = delivered.clone();
            Box::new(move |p| delivered.lock().unwrap().push((channel, p.offset)))
        };
        let once = |channel: &'static str, k: &str, retention| {
            h.append_once(channel, publication(), retention, key(k), counting(channel))
        };
        let first = once("c", "k", Some(r)).await.unwrap();
        let Idempotent::Published(Some(position)) = first else {
            panic!("first publish: {first:?}");
        };
        assert_eq!(position.offset, 1);
        assert_eq!(
            once("c", "k", Some(r)).await.unwrap(),
            Idempotent::Repeated(Some(position.clone()))
        );
        // Another key, another channel, or a key first used without history: each its own.
        assert!(matches!(
            once("c", "other", Some(r)).await.unwrap(),
            Idempotent::Published(Some(StreamPosition { offset: 2, .. }))
        ));
        assert!(matches!(
            once("d", "k", Some(r)).await.unwrap(),
            Idempotent::Published(Some(_))
        ));
        assert_eq!(
            once("e", "live", None).await.unwrap(),
            Idempotent::Published(None)
        );
        assert_eq!(
            once("e", "live", Some(r)).await.unwrap(),
            Idempotent::Repeated(None)
        );
        let delivered = delivered.lock().unwrap().clone();
        assert_eq!(delivered, vec![("c", 1), ("c", 2), ("d", 1), ("e", 0)]);
        let page = h.read("c", HistoryFilter::default()).await.unwrap();
        assert_eq!(page.publications.len(), 2);
    }
}

//! Map presence (Centrifugo's `map_clients` and `map_users`): a subscriber of a channel whose
//! namespace names a presence prefix is listed in the map channel `<prefix><channel>`, by client
//! id with its client info, or by user id. This node keeps the entries of its own subscribers
//! alive (a keep-alive restarts their TTL, publishing nothing) until they leave; a client entry
//! is removed when its client leaves, a user entry expires one TTL after the user's last local
//! subscriber left, so a quick reconnect does not flicker. Entries of a node that dies expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::Node;
use crate::config::Config;
use crate::protocol::{ClientInfo, Payload};

/// The presence channels of each namespace that has them, and this node's live entries.
#[derive(Default)]
pub(super) struct MapPresence {
    /// Namespace name ("" for channels outside any) → (clients prefix, users prefix).
    prefixes: HashMap<String, (Option<String>, Option<String>)>,
    /// (presence channel, key) → entry.
    entries: Mutex<HashMap<(String, String), Entry>>,
}

struct Entry {
    data: Payload,
    info: Option<ClientInfo>,
    /// Local subscriptions holding the entry (a user's connections).
    holders: usize,
    /// When it was last written or kept alive.
    refreshed: Instant,
}

impl MapPresence {
    pub(super) fn new(config: &Config) -> MapPresence {
        let prefixes = std::iter::once(&config.channel)
            .chain(&config.namespace)
            .filter(|ns| {
                ns.map_clients_presence_channel_prefix.is_some()
                    || ns.map_users_presence_channel_prefix.is_some()
            })
            .map(|ns| {
                (
                    ns.name.clone(),
                    (
                        ns.map_clients_presence_channel_prefix.clone(),
                        ns.map_users_presence_channel_prefix.clone(),
                    ),
                )
            })
            .collect();
        MapPresence {
            prefixes,
            entries: Mutex::default(),
        }
    }

    /// The clients and users presence channels of `channel`, if its namespace has them.
    fn channels(&self, channel: &str) -> (Option<String>, Option<String>) {
        let namespace = channel.split_once(':').map_or("", |(ns, _)| ns);
        match self.prefixes.get(namespace) {
            Some((clients, users)) => (
                clients.as_ref().map(|p| format!("{p}{channel}")),
                users.as_ref().map(|p| format!("{p}{channel}")),
            ),
            None => (None, None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An empty JSON object: the value of a user entry.
fn empty_object() -> Payload {
    Arc::from(RawValue::from_string("{}".into()).expect("{} is JSON"))
}

impl Node {
    /// Whether subscribers of `channel` are listed in map presence channels.
    pub fn has_map_presence(&self, channel: &str) -> bool {
        let (clients, users) = self.inner.map_presence.channels(channel);
        clients.is_some() || users.is_some()
    }

    /// Lists the subscriber `info` of `channel` in its presence channels.
    pub async fn map_presence_join(&self, channel: &str, info: &ClientInfo) {
        let (clients, users) = self.inner.map_presence.channels(channel);
        if let Some(clients) = clients {
            let data = match serde_json::value::to_raw_value(info) {
                Ok(data) => Payload::from(data),
                Err(_) => empty_object(),
            };
            self.hold(&clients, &info.client, data, Some(info.clone()), false)
                .await;
        }
        // Anonymous users have no key to be listed under.
        if let Some(users) = users.filter(|_| !info.user.is_empty()) {
            self.hold(&users, &info.user, empty_object(), None, true)
                .await;
        }
    }

    /// Takes the subscriber `info` of `channel` out of its presence channels: its client entry
    /// goes now, its user entry when the TTL runs out after the last local holder left.
    pub async fn map_presence_leave(&self, channel: &str, info: &ClientInfo) {
        let (clients, users) = self.inner.map_presence.channels(channel);
        if let Some(clients) = clients {
            self.release(&clients, &info.client);
            if let Err(error) = self.map_remove(&clients, &info.client, None).await {
                tracing::warn!(channel = clients, ?error, "map presence removal failed");
            }
        }
        if let Some(users) = users.filter(|_| !info.user.is_empty()) {
            self.release(&users, &info.user);
        }
    }

    async fn hold(
        &self,
        channel: &str,
        key: &str,
        data: Payload,
        info: Option<ClientInfo>,
        keep_alive: bool,
    ) {
        {
            let mut entries = self.inner.map_presence.lock();
            let entry = entries
                .entry((channel.to_string(), key.to_string()))
                .or_insert_with(|| Entry {
                    data: data.clone(),
                    info: info.clone(),
                    holders: 0,
                    refreshed: Instant::now(),
                });
            entry.holders += 1;
            entry.refreshed = Instant::now();
        }
        let written = self
            .map_set(channel, key, data, info, HashMap::new(), keep_alive)
            .await;
        if let Err(error) = written {
            tracing::warn!(channel, ?error, "map presence entry not written");
        }
    }

    fn release(&self, channel: &str, key: &str) {
        let mut entries = self.inner.map_presence.lock();
        let id = (channel.to_string(), key.to_string());
        if let Some(entry) = entries.get_mut(&id) {
            entry.holders = entry.holders.saturating_sub(1);
            if entry.holders == 0 {
                entries.remove(&id);
            }
        }
    }

    /// Keeps alive this node's entries whose TTL is a third gone (the sweep calls it each second).
    pub(super) async fn refresh_map_presence(&self) {
        let now = Instant::now();
        let due: Vec<_> = {
            let entries = self.inner.map_presence.lock();
            entries
                .iter()
                .filter(|((channel, _), entry)| {
                    let ttl = self
                        .map_options(channel)
                        .ok()
                        .and_then(|o| o.update.key_ttl)
                        .unwrap_or(Duration::from_secs(60));
                    now.duration_since(entry.refreshed) >= ttl / 3
                })
                .map(|((channel, key), entry)| {
                    (
                        channel.clone(),
                        key.clone(),
                        entry.data.clone(),
                        entry.info.clone(),
                    )
                })
                .collect()
        };
        for (channel, key, data, info) in due {
            if let Some(entry) = self
                .inner
                .map_presence
                .lock()
                .get_mut(&(channel.clone(), key.clone()))
            {
                entry.refreshed = now;
            }
            let kept = self
                .map_set(&channel, &key, data, info, HashMap::new(), true)
                .await;
            if let Err(error) = kept {
                tracing::warn!(channel, ?error, "map presence keep-alive failed");
            }
        }
    }
}

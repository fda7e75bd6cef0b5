//! Presence: who is subscribed to a channel, across every node.
//!
//! Contract: `add` and `remove` are idempotent per (channel, client id); `get` and `stats` reflect
//! every `add` that returned and no `remove` that returned. A storage shared by several nodes must
//! also expire the entries of a node that died.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::protocol::ClientInfo;

/// Counts of one channel's presence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u64,
    pub num_users: u64,
}

/// Why presence failed.
#[derive(Debug, thiserror::Error)]
#[error("presence storage failed: {0}")]
pub struct PresenceError(pub String);

/// Storage of channel presence.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), PresenceError>;
    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError>;
    async fn get(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError>;
    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError>;
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

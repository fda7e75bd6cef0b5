//! Presence: who is subscribed to a channel, across every node.
//!
//! Contract: `add` and `remove` are idempotent per (channel, client id); `get` and `stats` reflect
//! every `add` that returned and no `remove` that returned. A storage shared by several nodes must
//! also expire the entries of a node that died.

use std::collections::HashMap;

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

    /// Counts connection `client` of `user` against `limit` connections per user across every
    /// node sharing this storage: registers it and answers true if the user had fewer, answers
    /// false (registering nothing) if not. Check and registration are one atomic step, so nodes
    /// admitting the same user at once never exceed the limit together. A storage of one node
    /// admits everything (the hub counts that node's connections).
    async fn admit_user_connection(
        &self,
        _user: &str,
        _client: &str,
        _limit: usize,
    ) -> Result<bool, PresenceError> {
        Ok(true)
    }

    /// Forgets connection `client` of `user` admitted by `admit_user_connection` (idempotent).
    async fn release_user_connection(
        &self,
        _user: &str,
        _client: &str,
    ) -> Result<(), PresenceError> {
        Ok(())
    }
}

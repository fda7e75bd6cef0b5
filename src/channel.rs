//! Channel options: how a channel behaves (presence, join/leave, history, permissions), resolved
//! once at start from the server-wide settings and each namespace's overrides.

use std::time::Duration;

use crate::config::{Config, Namespace};
use crate::engine::history::Retention;

/// How a channel behaves, resolved from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOptions {
    pub presence: bool,
    /// Join/leave notices are published (to subscribers that ask for them).
    pub join_leave: bool,
    /// Join/leave notices go to every subscriber, asked or not.
    pub force_push_join_leave: bool,
    /// History retention; `None` when the channel keeps no history.
    pub history: Option<Retention>,
    /// Subscriptions are positioned and recoverable without the client asking.
    pub force_recovery: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_subscriber: bool,
    /// `name#user1,user2` channels are open to the users listed (opt-in, even in development).
    pub allow_user_limited_channels: bool,
}

impl ChannelOptions {
    /// Resolves a namespace's options over the server-wide ones. Permissions nobody configured
    /// are granted only in development mode.
    pub(crate) fn resolve(config: &Config, ns: &Namespace) -> ChannelOptions {
        let dev = config.development();
        let allow = |own: Option<bool>| own.unwrap_or(dev);
        ChannelOptions {
            presence: ns.presence.unwrap_or(config.presence),
            join_leave: ns.join_leave.unwrap_or(config.join_leave),
            force_push_join_leave: ns.force_push_join_leave.unwrap_or(false),
            history: retention(
                ns.history_size.unwrap_or(config.history_size),
                ns.history_ttl.unwrap_or(config.history_ttl),
            ),
            force_recovery: ns.force_recovery.unwrap_or(true),
            allow_subscribe_for_client: allow(ns.allow_subscribe_for_client),
            allow_subscribe_for_anonymous: allow(ns.allow_subscribe_for_anonymous),
            allow_publish_for_client: allow(ns.allow_publish_for_client),
            allow_publish_for_subscriber: allow(ns.allow_publish_for_subscriber),
            allow_publish_for_anonymous: allow(ns.allow_publish_for_anonymous),
            allow_presence_for_client: allow(ns.allow_presence_for_client),
            allow_presence_for_subscriber: allow(ns.allow_presence_for_subscriber),
            allow_history_for_client: allow(ns.allow_history_for_client),
            allow_history_for_subscriber: allow(ns.allow_history_for_subscriber),
            allow_user_limited_channels: ns.allow_user_limited_channels.unwrap_or(false),
        }
    }
}

/// History retention, or none when either bound is zero.
fn retention(size: usize, ttl_secs: u64) -> Option<Retention> {
    (size > 0 && ttl_secs > 0).then(|| Retention {
        size,
        ttl: Duration::from_secs(ttl_secs),
    })
}

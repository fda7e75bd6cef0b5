//! Channel options: how a channel behaves (presence, join/leave, history, permissions, map), resolved
//! once at start from the server-wide settings and each namespace's overrides.

use std::time::Duration;

use crate::config::{ClientKey, Config, MapMode, Namespace, PRESENCE_KEY_TTL};
use crate::engine::history::Retention;
use crate::engine::map::MapUpdate;

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
    /// Set when the channel is a map channel (`subscription_type = "map"`).
    pub map: Option<MapOptions>,
    /// Subscribers may ask for Fossil deltas (`allowed_delta_types = ["fossil"]`).
    pub delta_fossil: bool,
}

/// `type` of a map subscription: a map the application writes.
pub const MAP: i32 = 1;
/// `type` of a map presence subscription by client (Centrifugo's `map_clients`).
pub const MAP_CLIENTS: i32 = 2;
/// `type` of a map presence subscription by user (Centrifugo's `map_users`).
pub const MAP_USERS: i32 = 3;

/// How a map channel behaves (see [`crate::engine::map`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapOptions {
    /// The subscription type of the namespace: [`MAP`], [`MAP_CLIENTS`] or [`MAP_USERS`].
    pub kind: i32,
    pub mode: MapMode,
    /// How each change is stored: the stream's retention, the key TTL, the key bound.
    pub update: MapUpdate,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_remove_for_client: bool,
    pub allow_remove_for_subscriber: bool,
    pub allow_remove_for_anonymous: bool,
    pub client_key: ClientKey,
    pub remove_client_on_unsubscribe: bool,
    pub default_page_size: usize,
    pub min_page_size: usize,
    pub max_page_size: usize,
    pub max_value_size: usize,
}

impl MapOptions {
    /// The entries per page for a client that asked for `limit` (0 or less: the default),
    /// within the namespace's minimum and maximum.
    pub fn page_size(&self, limit: i32) -> usize {
        if limit <= 0 {
            self.default_page_size
        } else {
            (limit as usize)
                .max(self.min_page_size)
                .min(self.max_page_size)
        }
    }
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
            map: None,
            delta_fossil: ns
                .allowed_delta_types
                .iter()
                .flatten()
                .any(|kind| kind == "fossil"),
        }
        .with_map(ns, dev)
    }

    /// A map namespace's options (validated by the configuration): its stream is the channel's
    /// history, recoverable unless the mode is ephemeral.
    fn with_map(mut self, ns: &Namespace, dev: bool) -> ChannelOptions {
        let kind = match ns.subscription_type.as_deref() {
            Some("map") => MAP,
            Some("map_clients") => MAP_CLIENTS,
            Some("map_users") => MAP_USERS,
            _ => return self,
        };
        let mut map = ns.map.clone().unwrap_or_default();
        // Map presence is the server's to write, and its entries need a TTL.
        let presence = kind != MAP;
        if presence {
            map.key_ttl = Some(map.key_ttl.unwrap_or(PRESENCE_KEY_TTL));
        }
        let allow = |own: Option<bool>| !presence && own.unwrap_or(dev);
        let mode = map.mode().unwrap_or(MapMode::Persistent);
        let stream = Retention {
            size: map.stream_size.unwrap_or(100),
            ttl: map.stream_ttl.unwrap_or(Duration::from_secs(60)),
        };
        self.history = Some(stream);
        self.force_recovery = mode != MapMode::Ephemeral;
        self.map = Some(MapOptions {
            kind,
            mode,
            update: MapUpdate {
                stream,
                key_ttl: map.key_ttl,
                max_keys: map.max_keys.unwrap_or(10_000),
                keep_alive: false,
            },
            allow_publish_for_client: allow(map.allow_publish_for_client),
            allow_publish_for_subscriber: allow(map.allow_publish_for_subscriber),
            allow_publish_for_anonymous: allow(map.allow_publish_for_anonymous),
            allow_remove_for_client: allow(map.allow_remove_for_client),
            allow_remove_for_subscriber: allow(map.allow_remove_for_subscriber),
            allow_remove_for_anonymous: allow(map.allow_remove_for_anonymous),
            client_key: map.client_key().unwrap_or(ClientKey::Sent),
            remove_client_on_unsubscribe: map.remove_client_on_unsubscribe.unwrap_or(false),
            default_page_size: map.default_page_size.unwrap_or(100),
            min_page_size: map.min_page_size.unwrap_or(100),
            max_page_size: map.max_page_size.unwrap_or(1000),
            max_value_size: map.max_value_size.unwrap_or(65536),
        });
        self
    }
}

/// History retention, or none when either bound is zero.
fn retention(size: usize, ttl_secs: u64) -> Option<Retention> {
    (size > 0 && ttl_secs > 0).then(|| Retention {
        size,
        ttl: Duration::from_secs(ttl_secs),
    })
}

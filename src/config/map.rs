//! A namespace's map options (`[namespace.map]`, Centrifugo's `map` block), for namespaces whose
//! `subscription_type` is `"map"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::parse_duration;
use super::ConfigError;

/// Options of a map namespace. Names follow Centrifugo's; `max_keys` and `max_value_size` are
/// Switchboard's own bounds.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapNamespace {
    /// `"ephemeral"` (keys need a TTL; a reconnecting client reads the state again),
    /// `"durable"` (keys need a TTL; a reconnecting client catches up from the stream) or
    /// `"persistent"` (keys live until removed; catch-up from the stream).
    pub mode: Option<String>,
    /// How long a key lives after it was last set (`"60s"`); required for ephemeral and durable.
    #[serde(
        deserialize_with = "optional_duration",
        serialize_with = "show_optional_duration"
    )]
    pub key_ttl: Option<Duration>,
    /// Changes kept in the map's stream for catch-up (default 100).
    pub stream_size: Option<usize>,
    /// How long changes stay in the stream (default `"1m"`).
    #[serde(
        deserialize_with = "optional_duration",
        serialize_with = "show_optional_duration"
    )]
    pub stream_ttl: Option<Duration>,
    /// Any connected user may set keys from the client side.
    pub allow_publish_for_client: Option<bool>,
    /// Subscribers of the channel may set keys.
    pub allow_publish_for_subscriber: Option<bool>,
    /// Anonymous users may set keys (with one of the two above).
    pub allow_publish_for_anonymous: Option<bool>,
    /// Any connected user may remove keys.
    pub allow_remove_for_client: Option<bool>,
    /// Subscribers of the channel may remove keys.
    pub allow_remove_for_subscriber: Option<bool>,
    /// Anonymous users may remove keys (with one of the two above).
    pub allow_remove_for_anonymous: Option<bool>,
    /// `"client_id"` or `"user_id"`: a client's publish and remove use that as the key, whatever
    /// key it sent. Empty (default): the client's key.
    pub client_key: Option<String>,
    /// When a client unsubscribes or disconnects, the key named by its client id is removed.
    pub remove_client_on_unsubscribe: Option<bool>,
    /// State entries per page when the client does not say (default 100).
    pub default_page_size: Option<usize>,
    /// Fewest entries per page: a smaller `limit` from a client is raised to it (default 100).
    pub min_page_size: Option<usize>,
    /// Most state entries or stream changes per page (default 1000).
    pub max_page_size: Option<usize>,
    /// Most keys a map holds; a new key beyond it is refused with 106 (default 10000).
    pub max_keys: Option<usize>,
    /// Longest value of a key, in bytes of JSON (default 65536); larger is refused with 107.
    pub max_value_size: Option<usize>,
}

/// How a map keeps its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapMode {
    Ephemeral,
    Durable,
    Persistent,
}

/// Which key a client's publish or remove uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKey {
    /// The key the client sent.
    Sent,
    /// The client's connection id.
    ClientId,
    /// The client's user id.
    UserId,
}

impl MapNamespace {
    /// The mode, checked.
    pub fn mode(&self) -> Result<MapMode, ConfigError> {
        match self.mode.as_deref() {
            Some("ephemeral") => Ok(MapMode::Ephemeral),
            Some("durable") => Ok(MapMode::Durable),
            Some("persistent") => Ok(MapMode::Persistent),
            Some(other) => Err(ConfigError::Invalid(format!(
                "map.mode {other:?} must be \"ephemeral\", \"durable\" or \"persistent\""
            ))),
            None => Err(ConfigError::Invalid(
                "a map namespace needs map.mode (\"ephemeral\", \"durable\" or \"persistent\")"
                    .into(),
            )),
        }
    }

    /// The client key rule, checked.
    pub fn client_key(&self) -> Result<ClientKey, ConfigError> {
        match self.client_key.as_deref().unwrap_or("") {
            "" => Ok(ClientKey::Sent),
            "client_id" => Ok(ClientKey::ClientId),
            "user_id" => Ok(ClientKey::UserId),
            other => Err(ConfigError::Invalid(format!(
                "map.client_key {other:?} must be \"\", \"client_id\" or \"user_id\""
            ))),
        }
    }

    /// Checks the options of namespace `name`.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let invalid = |what: &str| ConfigError::Invalid(format!("namespace {name:?}: {what}"));
        let mode = self.mode().map_err(|e| invalid(&e.to_string()))?;
        self.client_key().map_err(|e| invalid(&e.to_string()))?;
        match (mode, self.key_ttl) {
            (MapMode::Ephemeral | MapMode::Durable, None) => {
                return Err(invalid(
                    "map.key_ttl is required in ephemeral and durable modes",
                ))
            }
            (MapMode::Persistent, Some(_)) => {
                return Err(invalid("map.key_ttl does not apply in persistent mode"))
            }
            (_, Some(ttl)) if ttl < Duration::from_secs(1) => {
                return Err(invalid("map.key_ttl must be at least 1s"))
            }
            _ => {}
        }
        let zero = |v: Option<usize>| v == Some(0);
        if zero(self.stream_size)
            || zero(self.default_page_size)
            || zero(self.min_page_size)
            || zero(self.max_page_size)
            || zero(self.max_keys)
            || zero(self.max_value_size)
            || self.stream_ttl.is_some_and(|t| t < Duration::from_secs(1))
        {
            return Err(invalid(
                "map sizes must be at least 1 and map.stream_ttl at least 1s",
            ));
        }
        let max = self.max_page_size.unwrap_or(1000);
        if self.default_page_size.unwrap_or(100) > max || self.min_page_size.unwrap_or(100) > max {
            return Err(invalid(
                "map.default_page_size and map.min_page_size must not exceed map.max_page_size",
            ));
        }
        Ok(())
    }
}

/// An optional duration in a file: a string with units or a number of seconds.
fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(u64),
        WithUnit(String),
    }
    match Option::<Text>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Text::Seconds(seconds)) => Ok(Some(Duration::from_secs(seconds))),
        Some(Text::WithUnit(text)) => parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn show_optional_duration<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => super::show::serialize_duration(d, serializer),
        None => serializer.serialize_none(),
    }
}

impl super::Namespace {
    /// Checks `subscription_type` and, for a map namespace, its `map` options.
    pub(super) fn validate_type(&self, name: &str) -> Result<(), ConfigError> {
        match self.subscription_type.as_deref() {
            None | Some("stream") => {
                if self.map.is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "namespace {name:?}: map options need subscription_type = \"map\""
                    )));
                }
                Ok(())
            }
            Some("map") => self.map.clone().unwrap_or_default().validate(name),
            Some("map_clients" | "map_users") => {
                let map = self.map.clone().unwrap_or_default();
                if map.mode()? == MapMode::Persistent {
                    return Err(ConfigError::Invalid(format!(
                        "namespace {name:?}: map presence needs mode \"ephemeral\" or \"durable\""
                    )));
                }
                // The key TTL is what removes a vanished client's entry: 60 s by default.
                MapNamespace {
                    key_ttl: Some(map.key_ttl.unwrap_or(PRESENCE_KEY_TTL)),
                    ..map
                }
                .validate(name)
            }
            Some(other @ "shared_poll") => Err(ConfigError::Invalid(format!(
                "namespace {name:?}: subscription_type {other:?} is not supported by \
                     Switchboard (see README, protocol section)"
            ))),
            Some(other) => Err(ConfigError::Invalid(format!(
                "namespace {name:?}: subscription_type {other:?} must be \"stream\", \"map\", \
                 \"map_clients\" or \"map_users\""
            ))),
        }
    }

    /// Checks that each map presence prefix names a namespace of the right type.
    pub(super) fn validate_presence_prefixes(
        &self,
        name: &str,
        namespaces: &[super::Namespace],
    ) -> Result<(), ConfigError> {
        let prefixes = [
            (
                "map_clients_presence_channel_prefix",
                &self.map_clients_presence_channel_prefix,
                "map_clients",
            ),
            (
                "map_users_presence_channel_prefix",
                &self.map_users_presence_channel_prefix,
                "map_users",
            ),
        ];
        for (option, prefix, kind) in prefixes {
            let Some(prefix) = prefix else { continue };
            let target = prefix.split_once(':').map(|(ns, _)| ns);
            let found = namespaces
                .iter()
                .find(|ns| Some(ns.name.as_str()) == target);
            if found.and_then(|ns| ns.subscription_type.as_deref()) != Some(kind) {
                return Err(ConfigError::Invalid(format!(
                    "namespace {name:?}: {option} {prefix:?} must start with \"<namespace>:\" \
                     naming a namespace whose subscription_type is {kind:?}"
                )));
            }
        }
        Ok(())
    }
}

/// The key TTL of map presence entries when the namespace does not say (Centrifugo's default).
pub const PRESENCE_KEY_TTL: Duration = Duration::from_secs(60);

//! Map channels at the node: setting and removing keys (for sessions and the server API),
//! reading the state, and the sweep that expires keys whose TTL ran out. The storage contract is
//! [`crate::engine::map`]'s.

use std::collections::HashMap;
use std::time::Duration;

use super::{broker_error, Node};
use crate::channel::MapOptions;
use crate::engine::history::publication_size;
use crate::engine::map::{removal, StatePage, EXPIRY_BATCH};
use crate::hooks::events::Event;
use crate::protocol::{error_code, ClientInfo, Error, Payload, Publication, StreamPosition};

/// Longest map key, in bytes.
pub const MAX_KEY_LENGTH: usize = 256;
/// How often expired keys are swept (Centrifugo's default cleanup interval).
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

impl Node {
    /// The map options of `channel`: error 102 for an unknown namespace, 107 (as Centrifugo)
    /// when the channel is not a map channel.
    pub fn map_options(&self, channel: &str) -> Result<MapOptions, Error> {
        self.channel_options(channel)?
            .map
            .ok_or_else(|| Error::new(error_code::BAD_REQUEST))
    }

    /// Sets `key` of map `channel` to `data` (and `tags`), published by `info` if a client did.
    /// Returns the change's position. A key that is empty, longer than [`MAX_KEY_LENGTH`] or
    /// holds a newline, or a value over the namespace's `max_value_size`, is error 107; a new key
    /// beyond `max_keys` is 106.
    pub async fn map_publish(
        &self,
        channel: &str,
        key: &str,
        data: Payload,
        info: Option<ClientInfo>,
        tags: HashMap<String, String>,
    ) -> Result<StreamPosition, Error> {
        Ok(self
            .map_set(channel, key, data, info, tags, false)
            .await?
            .unwrap_or_default())
    }

    /// [`Node::map_publish`], or with `keep_alive` only the key's TTL restarted when it is
    /// present (`None`: nothing published).
    pub(super) async fn map_set(
        &self,
        channel: &str,
        key: &str,
        data: Payload,
        info: Option<ClientInfo>,
        tags: HashMap<String, String>,
        keep_alive: bool,
    ) -> Result<Option<StreamPosition>, Error> {
        let mut options = self.map_options(channel)?;
        options.update.keep_alive = keep_alive;
        check_key(key)?;
        if data.get().len() > options.max_value_size {
            return Err(Error::new(error_code::BAD_REQUEST));
        }
        let publisher = info.as_ref().map(|i| (i.client.clone(), i.user.clone()));
        let published = data.clone();
        let publication = Publication {
            data,
            info,
            offset: 0,
            tags,
            key: key.to_string(),
            removed: false,
            binary: false,
        };
        let position = self
            .broker()
            .map_update(channel, publication, options.update)
            .await
            .map_err(|e| broker_error(channel, e))?;
        if let Some(position) = &position {
            self.emit(Event::Published {
                channel,
                offset: position.offset,
                client: publisher.as_ref().map(|(client, _)| client.as_str()),
                user: publisher.as_ref().map(|(_, user)| user.as_str()),
                data: &published,
                // Map entries are JSON only.
                binary: false,
            });
        }
        Ok(position)
    }

    /// Removes `key` from map `channel`; `None` when the key was not there (nothing changes).
    pub async fn map_remove(
        &self,
        channel: &str,
        key: &str,
        info: Option<ClientInfo>,
    ) -> Result<Option<StreamPosition>, Error> {
        let options = self.map_options(channel)?;
        check_key(key)?;
        let mut publication = removal(key);
        publication.info = info;
        self.broker()
            .map_update(channel, publication, options.update)
            .await
            .map_err(|e| broker_error(channel, e))
    }

    /// A page of map `channel`'s state: up to `limit` entries after key `after`, and no more
    /// than fit in `max_bytes` (a shorter page then, whose cursor continues after its last key;
    /// always at least one entry, so the walk advances).
    pub async fn map_state(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<StatePage, Error> {
        self.map_options(channel)?;
        let mut page = self
            .broker()
            .map_state(channel, after, false, limit)
            .await
            .map_err(|e| broker_error(channel, e))?;
        let mut used = 0usize;
        let fitting = page
            .entries
            .iter()
            .take_while(|entry| {
                used = used.saturating_add(publication_size(entry) + entry.key.len());
                used <= max_bytes
            })
            .count()
            .max(1);
        if fitting < page.entries.len() {
            page.entries.truncate(fitting);
            page.cursor = page
                .entries
                .last()
                .map(|e| e.key.clone())
                .unwrap_or_default();
        }
        Ok(page)
    }

    /// The entry of `key` in map `channel`, if present, with the stream position.
    pub async fn map_get(&self, channel: &str, key: &str) -> Result<StatePage, Error> {
        self.map_options(channel)?;
        check_key(key)?;
        let mut page = self
            .broker()
            .map_state(channel, key, true, 1)
            .await
            .map_err(|e| broker_error(channel, e))?;
        page.entries.retain(|entry| entry.key == key);
        page.cursor.clear();
        Ok(page)
    }

    /// Removes every key of map `channel`, each as a removal subscribers see; returns how many.
    pub async fn map_clear(&self, channel: &str) -> Result<u64, Error> {
        let options = self.map_options(channel)?;
        let mut removed = 0;
        loop {
            // Always from the first key: what is removed no longer shows.
            let page = self
                .map_state(channel, "", options.max_page_size, usize::MAX)
                .await?;
            if page.entries.is_empty() {
                return Ok(removed);
            }
            for entry in &page.entries {
                if self.map_remove(channel, &entry.key, None).await?.is_some() {
                    removed += 1;
                }
            }
        }
    }

    /// Sweeps expired map keys every second until shutdown, when a namespace is a map.
    pub async fn expire_maps_forever(self) {
        let config = self.config();
        let any_map = config
            .namespace
            .iter()
            .chain(std::iter::once(&config.channel))
            .any(|ns| {
                matches!(
                    ns.subscription_type.as_deref(),
                    Some("map" | "map_clients" | "map_users")
                )
            });
        if !any_map {
            return;
        }
        let shutdown = self.shutdown_token().clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(EXPIRY_INTERVAL) => {}
            }
            self.refresh_map_presence().await;
            // A full batch means more may be waiting: sweep again at once.
            loop {
                match self.broker().map_expire().await {
                    Ok(n) if n >= EXPIRY_BATCH => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "map key expiry failed");
                        break;
                    }
                }
            }
        }
    }
}

/// A key clients and the API may use.
fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_LENGTH || key.contains(['\n', '\r']) {
        return Err(Error::new(error_code::BAD_REQUEST));
    }
    Ok(())
}

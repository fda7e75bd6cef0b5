//! Idempotent publishing: a publish that carries a key already used for the same channel within a
//! window publishes nothing and answers what the first publish answered (Centrifugo's
//! `idempotency_key`, which acts per channel). A backend that retries a publish whose answer it
//! lost then delivers it once.
//!
//! Each engine remembers keys where it keeps streams, checked and written atomically with the
//! publication, so the guarantee lasts as long as the streams do and holds between concurrent
//! retries: [`RememberedKeys`] in process memory (the memory history), a table written by the
//! SQLite history's writer in the publication's transaction, a key per channel and idempotency key
//! in Redis read and set by the publish script. Publishes without a key never look at any of it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::StreamPosition;

/// Longest idempotency key accepted, in bytes: every key is stored for the whole window.
pub const MAX_KEY_LENGTH: usize = 256;

/// An idempotency key and how long it is remembered after the publish that first used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub window: Duration,
}

/// What a publish with an idempotency key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotent {
    /// The key was new for the channel: the publication went out; its position when stored.
    Published(Option<StreamPosition>),
    /// The key was used for the channel within its window: nothing was published; the position
    /// the first publish answered.
    Repeated(Option<StreamPosition>),
}

impl Idempotent {
    /// The position answered, first time or repeated.
    pub fn into_position(self) -> Option<StreamPosition> {
        match self {
            Idempotent::Published(position) | Idempotent::Repeated(position) => position,
        }
    }
}

/// Keys remembered in memory, per channel, each until its window ends. Expired keys are dropped
/// as new ones are remembered, so memory holds at most the keys of one window.
#[derive(Default)]
pub struct RememberedKeys {
    /// (channel, key) → when it expires, and the first publish's position.
    keys: HashMap<(String, String), (Instant, Option<StreamPosition>)>,
    /// The same entries in the order they were remembered, to drop expired ones cheaply.
    expiry: VecDeque<(Instant, String, String)>,
}

impl RememberedKeys {
    /// The position the first publish with `key` in `channel` answered, if it is remembered at
    /// `now`.
    pub fn get(&self, channel: &str, key: &str, now: Instant) -> Option<Option<StreamPosition>> {
        // Looked up by an owned pair: a borrowed pair would need a custom key type, and keys
        // are only looked up by publishes that carry one.
        let (expires, position) = self.keys.get(&(channel.to_string(), key.to_string()))?;
        (*expires > now).then(|| position.clone())
    }

    /// Remembers that the publish with `key` in `channel` answered `position`, for the key's
    /// window from `now`; drops the keys whose window has ended.
    pub fn remember(
        &mut self,
        channel: &str,
        key: &IdempotencyKey,
        position: Option<StreamPosition>,
        now: Instant,
    ) {
        self.expire(now);
        let expires = now + key.window;
        self.keys
            .insert((channel.to_string(), key.key.clone()), (expires, position));
        self.expiry
            .push_back((expires, channel.to_string(), key.key.clone()));
    }

    /// How many keys are held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((expires, _, _)) = self.expiry.front() {
            if *expires > now {
                break;
            }
            let Some((expires, channel, key)) = self.expiry.pop_front() else {
                break;
            };
            let pair = (channel, key);
            // A key remembered again after its window ended has a later expiry: keep it.
            if self.keys.get(&pair).is_some_and(|(at, _)| *at == expires) {
                self.keys.remove(&pair);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: &str, seconds: u64) -> IdempotencyKey {
        IdempotencyKey {
            key: key.into(),
            window: Duration::from_secs(seconds),
        }
    }

    fn position(offset: u64) -> Option<StreamPosition> {
        Some(StreamPosition {
            offset,
            epoch: "e".into(),
        })
    }

    #[test]
    fn keys_are_per_channel_and_last_their_window() {
        let mut keys = RememberedKeys::default();
        let start = Instant::now();
        keys.remember("a", &key("k", 10), position(1), start);
        assert_eq!(keys.get("a", "k", start), Some(position(1)));
        assert_eq!(keys.get("b", "k", start), None, "another channel");
        assert_eq!(keys.get("a", "other", start), None, "another key");
        let later = start + Duration::from_secs(10);
        assert_eq!(keys.get("a", "k", later), None, "the window has ended");
    }

    #[test]
    fn expired_keys_are_dropped_and_a_renewed_key_is_kept() {
        let mut keys = RememberedKeys::default();
        let start = Instant::now();
        for n in 0..100 {
            keys.remember("c", &key(&format!("k{n}"), 1), None, start);
        }
        assert_eq!(keys.len(), 100);
        // After the window, remembering one more drops the hundred expired ones.
        let later = start + Duration::from_secs(2);
        keys.remember("c", &key("k0", 1), position(7), later);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.get("c", "k0", later), Some(position(7)));
        // The renewed key's old expiry entry must not remove it.
        let much_later = later + Duration::from_millis(500);
        keys.remember("c", &key("x", 1), None, much_later);
        assert_eq!(keys.get("c", "k0", much_later), Some(position(7)));
    }
}

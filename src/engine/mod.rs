//! The engines behind a node: how publications reach every node ([`broker`]), how channel streams
//! are kept ([`history`]) and who is in a channel ([`presence`]). Each of those modules holds a
//! trait whose doc comment is the contract; the implementations live beside them:
//!
//! - [`memory`]: one node on its own (in-process fan-out, in-memory history and presence);
//! - [`sqlite`]: durable history in an embedded SQLite file (the default);
//! - [`redis`]: several nodes sharing fan-out, history and presence through Redis.
//!
//! [`idempotency`] holds what every engine shares to publish a key's publication once;
//! [`map`] the contract of map channels (a key/value state beside a channel's stream).
//!
//! Sessions and the HTTP API never call an engine directly: they go through [`crate::node`].

pub mod broker;
pub mod history;
pub mod idempotency;
pub mod map;
pub mod memory;
mod memory_map;
pub mod presence;
pub mod redis;
pub mod sqlite;

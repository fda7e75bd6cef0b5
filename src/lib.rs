//! Switchboard: a real-time messaging server speaking the Centrifugo v2 client protocol.
//!
//! Clients hold a WebSocket open, subscribe to channels and receive every publication pushed by
//! other clients or by a backend through the HTTP server API. One tokio runtime serves thousands of
//! open lines; nothing that blocks runs on its workers.
//!
//! The layout follows the path of a message:
//!
//! - [`protocol`]: wire types and the frame codec; pure, no I/O.
//! - [`transport`]: one task per WebSocket, reading frames and writing the client's queue.
//! - [`session`]: one client's state and command handling; its `Drop` is the only cleanup path.
//! - [`queue`]: a client's bounded outbound queue (slow readers are disconnected, never buffered
//!   without bound).
//! - [`node`]: the shared state and operations used by sessions and the API.
//! - [`hub`]: channel → local subscribers, sharded; a publication is encoded once for all.
//! - [`broker`], [`history`], [`presence`]: the traits behind which storage and multi-node fan-out
//!   live, with in-process implementations; [`redis_engine`] implements them on Redis for
//!   several nodes.
//! - [`api`]: the HTTP server API, health and metrics; [`server`] assembles routes and runs them.
//! - [`web`]: the embedded pages, `/chat` (on the official browser SDK) and `/dashboard` (this
//!   node's live view, with the [`timeline`] of recent work).
//! - [`vecmap`]: the small map each connection keeps its subscriptions in.
//! - [`config`], [`auth`], [`ratelimit`], [`fd_limit`], [`metrics`]: configuration, tokens, rate
//!   limits, the open-file limit, counters.
//!
//! `switchboard bench`, the load generator, is the workspace's `switchboard-bench` crate (in
//! `crates/bench`, on the protocol client in `crates/client`); only `main.rs` calls it, and the
//! server modules never use it.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod fd_limit;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod queue;
pub mod ratelimit;
pub mod redis_engine;
pub mod server;
pub mod session;
pub mod timeline;
pub mod transport;
pub mod vecmap;
pub mod web;

pub use config::Config;
pub use server::{run, run_with, Listeners};

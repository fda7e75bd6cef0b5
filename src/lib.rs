//! Switchboard: a real-time messaging server speaking the Centrifugo v2 client protocol.
//!
//! Clients hold a WebSocket open, subscribe to channels and receive every publication pushed by
//! other clients or by a backend through the HTTP server API. One tokio runtime serves thousands of
//! open lines; nothing that blocks runs on its workers.
//!
//! The layout follows the path of a message, and each arrow points to what a module may use:
//! `http`, `transport` → `session` → `node` → `hub`, `hooks`, `engine`, `channel` → `protocol`.
//!
//! - [`protocol`]: wire types and the frame codecs (JSON, and Protobuf on the `prost` types of
//!   `crates/proto`), named error, disconnect and unsubscribe codes; pure, no I/O.
//! - [`transport`]: how a client's bytes reach its session: admission of new connections (and
//!   the client's address behind trusted proxies, [`transport::client_addr`]), the
//!   connection loop every transport shares ([`transport::connection`]), the WebSocket
//!   ([`transport::websocket`]), its HTTP fallbacks (HTTP streaming and SSE with commands over
//!   `/emulation`, [`transport::emulation`]) and Centrifugo's unidirectional transports: SSE and
//!   HTTP streaming ([`transport::uni`]) and WebSocket ([`transport::uni_websocket`]); the
//!   streamed ones write their response on the socket taken from hyper
//!   ([`transport::handoff`]).
//! - [`session`]: one client's state and command handling, one file per command family; its
//!   `Drop` is the only cleanup path.
//! - [`queue`]: a client's bounded outbound queue (slow readers are disconnected, never buffered
//!   without bound).
//! - [`node`]: the facade sessions and the API use (publish, history, presence, user control),
//!   and the dispatch of broker events to the hub; [`channel`]: how each channel behaves.
//! - [`hub`]: channel → local subscribers, sharded; a publication is encoded once for all.
//! - [`engine`]: the `Broker`, `History` and `Presence` traits (their doc comments are the
//!   contracts) with the embedded implementations (memory, SQLite) and the Redis one for several
//!   nodes; map channels ([`engine::map`]: a key/value state kept beside a channel's stream, for
//!   Centrifugo's map subscriptions) live in the same storages.
//! - [`hooks`]: the seam to the application backend: every decision about a client (connect,
//!   refresh, subscribe, publish, sub_refresh, rpc) through one `Decisions` trait, answered by the
//!   built-in token and permission rules or the backend's HTTP proxy; lifecycle events to one set
//!   of sinks.
//! - [`http`]: the server API, health, metrics and the embedded pages (`/chat`, `/dashboard`
//!   with the [`timeline`] of recent work); [`server`] assembles a node and its routes and runs
//!   them.
//! - [`vecmap`]: the small map each connection keeps its subscriptions in.
//! - [`config`], [`auth`], [`ratelimit`], [`fd_limit`], [`metrics`]: configuration, tokens, rate
//!   limits, the open-file limit, counters.
//!
//! `switchboard bench`, the load generator, is the workspace's `switchboard-bench` crate (in
//! `crates/bench`, on the protocol client in `crates/client`); only `main.rs` calls it, and the
//! server modules never use it.

pub mod auth;
pub mod channel;
pub mod config;
pub mod delta;
pub mod engine;
pub mod fd_limit;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod timeline;
pub mod transport;
pub mod vecmap;

pub use config::Config;
pub use server::{run, run_with, Listeners};

//! Hooks: the seam between the server and the application behind it.
//!
//! - [`decisions`]: every decision about a client (connect, refresh, subscribe, sub_refresh,
//!   publish, rpc) is asked of one [`decisions::Decisions`], which the node holds; sessions carry
//!   the answer out. A [`Refusal`] is an error reply or a disconnect, as a Centrifugo proxy answers.
//! - [`rules`]: the built-in decisions (tokens, private and user-limited channels, namespace
//!   permissions, the `echo` RPC).
//! - [`proxy`]: decisions by the application backend over HTTP, asked as Centrifugo's proxy
//!   asks them, with the rules for whatever no endpoint is configured for.
//! - [`events`]: every lifecycle event (connected, disconnected, subscribed, unsubscribed, channel
//!   occupied/vacated, publication) goes to one [`events::Events`] of sinks: the node's metrics,
//!   the dashboard's timeline, and [`webhook`].
//! - [`webhook`]: events told to the application backend after the fact, durably queued and
//!   delivered at least once.

pub mod decisions;
pub mod events;
pub mod proxy;
pub mod rules;
pub mod webhook;

pub use decisions::Refusal;

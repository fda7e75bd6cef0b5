//! Hooks: the seam between the server and the application behind it.
//!
//! - [`decisions`]: how a refusal is told to the client ([`Refusal`]: an error reply or a
//!   disconnect).
//! - [`events`]: every lifecycle event (connected, disconnected, subscribed, unsubscribed, channel
//!   occupied/vacated, publication) goes to one [`events::Events`] of sinks: the node's metrics,
//!   which the dashboard reads, today; webhooks next.

pub mod decisions;
pub mod events;

pub use decisions::Refusal;

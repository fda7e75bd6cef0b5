//! Hooks: the seam between the server and the application behind it.
//!
//! - [`events`]: every lifecycle event (connected, disconnected, subscribed, unsubscribed, channel
//!   occupied/vacated, publication) goes to one [`events::Events`] of sinks: the node's metrics,
//!   which the dashboard reads, today; webhooks next.

pub mod events;

//! A Rust client for Switchboard — and for Centrifugo, whose client protocol (v2, JSON over
//! WebSocket) it speaks.
//!
//! ```no_run
//! use serde_json::json;
//! use switchboard_client::{Client, SubscriptionEvent, SubscriptionOptions};
//!
//! # async fn demo() -> Result<(), switchboard_client::Error> {
//! let client = Client::new("ws://127.0.0.1:8000/connection/websocket");
//! client.connect();
//! let chat = client.new_subscription("chat", SubscriptionOptions::new())?;
//! let mut events = chat.events();
//! chat.subscribe();
//! chat.ready().await?;
//! chat.publish(json!({"text": "hi"})).await?;
//! while let Some(event) = events.next().await {
//!     if let SubscriptionEvent::Publication(publication) = event {
//!         println!("{}", publication.data);
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! How it is put together:
//! - [`Client`] and [`Subscription`] are cheap handles; one background task per client (the
//!   `driver` module) owns the socket, every command waiting for its reply, every subscription's
//!   state and the timers. What the application asks for in one tick goes out batched in one
//!   WebSocket message.
//! - The connection's state machine (disconnected → connecting → connected) reconnects with
//!   exponential backoff and full jitter, on the codes that call for it, as centrifuge-js does
//!   ([`codes`]); a server that stops pinging is left and reconnected to.
//! - Each [`Subscription`] has its own state machine (unsubscribed → subscribing → subscribed),
//!   resubscribes after a reconnect and recovers what it missed from the channel's history
//!   (offset and epoch), telling the application whether everything came back
//!   ([`Subscribed::recovered`]).
//! - Tokens: a static token, or callbacks that fetch one before it expires and when the server
//!   says it has (error 109), for the connection and for each subscription.
//! - Events are streams: [`Client::events`] and [`Subscription::events`] hand out receivers of a
//!   bounded broadcast, so a slow reader gets a `Lagged` event, never slows the connection.
//! - [`codec`] is the seam between the protocol's messages ([`protocol`]) and the wire: JSON (the
//!   default) or Protobuf. Over Protobuf the client can also send raw bytes
//!   ([`Client::publish_binary`], [`Client::rpc_binary`]) and reads every publication's exact
//!   bytes ([`Publication::bytes`]); over JSON a binary publication's base64 is decoded for it.
//! - [`raw`] is the low-level protocol client `switchboard bench` drives tens of thousands of
//!   sockets with.
//!
//! Errors are one [`Error`] enum; nothing the server sends makes the client panic; every handle
//! and future is `Send`, and every `async fn` here may be cancelled (dropping it) at any point
//! without corrupting the client: a command already handed over may still be sent.
#![warn(missing_docs)]

mod client;
pub mod codec;
pub mod codes;
mod driver;
mod error;
mod events;
pub mod protocol;
pub mod raw;

pub use client::{
    Client, ClientBuilder, HistoryOptions, PublishResult, Subscription, SubscriptionOptions,
    TokenFuture,
};
pub use error::Error;
pub use events::{
    ClientEvent, Events, Lagging, State, Subscribed, SubscriptionEvent, SubscriptionState,
};
pub use protocol::{ClientInfo, HistoryResult, PresenceStats, Publication, StreamPosition};

/// Compile-time checks: every handle and every future of the API is `Send` (and the handles
/// `Sync`), so they can move between tasks and threads.
#[allow(dead_code)]
fn _send_and_sync(client: &Client, subscription: &Subscription) {
    fn send<T: Send>(_: T) {}
    fn sync<T: Send + Sync>(_: &T) {}
    sync(client);
    sync(subscription);
    let data = serde_json::Value::Null;
    send(client.ready());
    send(client.rpc("m", data.clone()));
    send(client.publish("c", data.clone()));
    send(client.publish_binary("c", &b"bytes"[..]));
    send(client.rpc_binary("m", &b"[]"[..]));
    send(client.send(data.clone()));
    send(client.presence("c"));
    send(client.presence_stats("c"));
    send(client.history("c", HistoryOptions::default()));
    send(client.events().into_stream());
    send(subscription.ready());
    send(subscription.publish(data));
    send(subscription.publish_binary(&b"bytes"[..]));
    send(subscription.history(HistoryOptions::default()));
    let mut events = subscription.events();
    send(events.next());
}

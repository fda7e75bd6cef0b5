//! What the client and its subscriptions tell the application: states and events.

use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::protocol::{ClientInfo, Publication, StreamPosition};
use crate::Error;

/// The connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected and not trying to be: before [`crate::Client::connect`], after
    /// [`crate::Client::disconnect`] or a terminal disconnect code.
    Disconnected,
    /// Opening the connection, or waiting to try again.
    Connecting,
    /// Connected: commands go out at once.
    Connected,
}

/// A subscription's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Not subscribed and not trying to be.
    Unsubscribed,
    /// Subscribing, or waiting for the connection to resubscribe.
    Subscribing,
    /// Subscribed: publications arrive.
    Subscribed,
}

/// What happened to the connection, and what the server pushed outside client subscriptions.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// The client is (re)connecting: `code` and `reason` say why (see [`crate::codes`]).
    Connecting {
        /// Why: a client-side code or the disconnect code that ended the last connection.
        code: u32,
        /// Why, in words.
        reason: String,
    },
    /// The client is connected.
    Connected {
        /// The connection's id.
        client: String,
        /// What the connect proxy returned, if anything.
        data: Option<Value>,
    },
    /// The client is disconnected and will not reconnect by itself.
    Disconnected {
        /// A client-side code or the terminal disconnect code.
        code: u32,
        /// Why, in words.
        reason: String,
    },
    /// Something failed; the client handles it (retrying where the rules say so).
    Error(Error),
    /// An asynchronous message the server sent to this client.
    Message(Value),
    /// The server subscribed this client to a channel (a server-side subscription).
    ServerSubscribed {
        /// The channel.
        channel: String,
        /// What the subscription looks like.
        subscribed: Subscribed,
    },
    /// The server ended a server-side subscription.
    ServerUnsubscribed {
        /// The channel.
        channel: String,
    },
    /// A publication on a server-side subscription.
    ServerPublication {
        /// The channel.
        channel: String,
        /// The publication.
        publication: Publication,
    },
    /// Someone joined a channel of a server-side subscription.
    ServerJoin {
        /// The channel.
        channel: String,
        /// Who.
        info: ClientInfo,
    },
    /// Someone left a channel of a server-side subscription.
    ServerLeave {
        /// The channel.
        channel: String,
        /// Who.
        info: ClientInfo,
    },
    /// This receiver fell behind and `missed` events were dropped for it (the connection is
    /// unaffected: read faster or with a larger [`crate::ClientBuilder::event_capacity`]).
    Lagged {
        /// How many events this receiver missed.
        missed: u64,
    },
}

/// What happened to a subscription.
#[derive(Debug, Clone)]
pub enum SubscriptionEvent {
    /// (Re)subscribing: `code` and `reason` say why.
    Subscribing {
        /// Why (see [`crate::codes`]): a client-side code or the server's unsubscribe code.
        code: u32,
        /// Why, in words.
        reason: String,
    },
    /// Subscribed; after a reconnect, whether what was missed came back.
    Subscribed(Subscribed),
    /// Unsubscribed, and not trying again.
    Unsubscribed {
        /// Why (see [`crate::codes`]).
        code: u32,
        /// Why, in words.
        reason: String,
    },
    /// A publication (after a recovery, the missed ones come first, in order).
    Publication(Publication),
    /// A client joined the channel (with `join_leave`).
    Join(ClientInfo),
    /// A client left the channel (with `join_leave`).
    Leave(ClientInfo),
    /// Something failed; the subscription handles it (resubscribing where the rules say so).
    Error(Error),
    /// This receiver fell behind and `missed` events were dropped for it: the subscription
    /// itself is intact. [`crate::Subscription::history`] from the last offset seen fills the gap.
    Lagged {
        /// How many events this receiver missed.
        missed: u64,
    },
}

/// A subscription's state once subscribed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subscribed {
    /// The channel keeps a stream this client recovers from after a reconnect.
    pub recoverable: bool,
    /// The server tracks the client's position.
    pub positioned: bool,
    /// The stream's position when subscribed (top offset and epoch), when the channel has one.
    pub stream_position: Option<StreamPosition>,
    /// The client asked to recover what it missed.
    pub was_recovering: bool,
    /// Everything missed came back (delivered as publications right after this event).
    pub recovered: bool,
    /// What the subscribe proxy returned, if anything.
    pub data: Option<Value>,
}

/// Lets a stream of events say that its receiver fell behind. Sealed: implemented by
/// [`ClientEvent`] and [`SubscriptionEvent`].
pub trait Lagging: sealed::Sealed {
    /// The event saying `missed` events were dropped.
    fn lagged(missed: u64) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ClientEvent {}
    impl Sealed for super::SubscriptionEvent {}
}

impl Lagging for ClientEvent {
    fn lagged(missed: u64) -> Self {
        ClientEvent::Lagged { missed }
    }
}

impl Lagging for SubscriptionEvent {
    fn lagged(missed: u64) -> Self {
        SubscriptionEvent::Lagged { missed }
    }
}

/// A receiver of events: each receiver gets every event sent after it was created, up to a
/// bounded backlog (a receiver that falls further behind gets a `Lagged` event instead of the
/// oldest ones; nobody else waits for it).
pub struct Events<T> {
    rx: broadcast::Receiver<Arc<T>>,
}

/// Where a client's (or a subscription's) events are sent. Each is shared behind an [`Arc`], so
/// the channel's backlog is a pointer per slot, not a whole event (an event is a few hundred
/// bytes, and every client and subscription has a backlog of `event_capacity` slots).
pub(crate) type EventSender<T> = broadcast::Sender<Arc<T>>;

/// A channel of events with a backlog of `capacity`.
pub(crate) fn event_channel<T: Clone>(capacity: usize) -> EventSender<T> {
    broadcast::channel(capacity).0
}

impl<T: Clone + Send + Sync + Lagging + 'static> Events<T> {
    pub(crate) fn new(rx: broadcast::Receiver<Arc<T>>) -> Self {
        Events { rx }
    }

    /// The next event; `None` once the client (or subscription) is gone. Cancellation-safe.
    pub async fn next(&mut self) -> Option<T> {
        match self.rx.recv().await {
            Ok(event) => Some(Arc::unwrap_or_clone(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(T::lagged(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        match self.rx.try_recv() {
            Ok(event) => Some(Arc::unwrap_or_clone(event)),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Some(T::lagged(missed)),
            Err(_) => None,
        }
    }

    /// The events as a [`futures_util::Stream`].
    pub fn into_stream(self) -> BoxStream<'static, T> {
        futures_util::stream::unfold(self, |mut events| async move {
            events.next().await.map(|event| (event, events))
        })
        .boxed()
    }
}

impl<T> std::fmt::Debug for Events<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

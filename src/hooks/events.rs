//! Lifecycle events: what happened to clients and channels on this node, told to every listener.
//!
//! Sessions and the node emit an [`Event`] at each step of a client's life (connected,
//! subscribed, unsubscribed, disconnected with its code) and of a channel's (occupied and vacated
//! on this node, publication stored). [`Events`] hands each one to every registered
//! [`EventSink`]: the node's metrics (which the dashboard and `/metrics` read) and the dashboard's
//! timeline, and the application backend's webhooks ([`crate::hooks::webhook`]). Emitting happens on the path of the
//! event itself, so a sink must never block or await: one that does I/O copies what it needs into
//! its own bounded queue and works from there (the seed's `BackgroundTasks`: after the response,
//! never before it).

use std::sync::Arc;

use crate::protocol::Payload;

/// Something that happened. Borrowed, so that emitting costs nothing when no sink wants a copy.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A client completed `connect`.
    Connected { client: &'a str, user: &'a str },
    /// A connected client is gone, with the disconnect code and reason it was given (3000
    /// "connection closed" when the network or the client ended it).
    Disconnected {
        client: &'a str,
        user: &'a str,
        code: u32,
        reason: &'a str,
    },
    /// A client's subscription to `channel` took effect (client or server side).
    Subscribed {
        client: &'a str,
        user: &'a str,
        channel: &'a str,
    },
    /// A client's subscription to `channel` ended (unsubscribe, server action, expiry or
    /// disconnect).
    Unsubscribed {
        client: &'a str,
        user: &'a str,
        channel: &'a str,
    },
    /// `channel` has its first subscriber on this node.
    ChannelOccupied { channel: &'a str },
    /// `channel` lost its last subscriber on this node.
    ChannelVacated { channel: &'a str },
    /// A publication to `channel` was accepted (stored, when the channel keeps history, at
    /// `offset`); `client` and `user` are the publisher's, `None` for the server API; `binary`:
    /// `data` stands for bytes that are not JSON (see [`crate::protocol::Publication::binary`]).
    Published {
        channel: &'a str,
        offset: u64,
        client: Option<&'a str>,
        user: Option<&'a str>,
        data: &'a Payload,
        binary: bool,
    },
}

impl Event<'_> {
    /// The event's name, as webhooks and logs call it.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Connected { .. } => "connected",
            Event::Disconnected { .. } => "disconnected",
            Event::Subscribed { .. } => "subscribed",
            Event::Unsubscribed { .. } => "unsubscribed",
            Event::ChannelOccupied { .. } => "channel_occupied",
            Event::ChannelVacated { .. } => "channel_vacated",
            Event::Published { .. } => "published",
        }
    }
}

/// Receives every event. Called on the emitter's path: must return at once.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: &Event<'_>);
}

/// The sinks of one node, in registration order.
#[derive(Clone, Default)]
pub struct Events {
    sinks: Vec<Arc<dyn EventSink>>,
}

impl Events {
    /// Events going to `sinks`.
    pub fn new(sinks: Vec<Arc<dyn EventSink>>) -> Events {
        Events { sinks }
    }

    /// Adds a sink (before the node starts serving).
    pub fn with(mut self, sink: Arc<dyn EventSink>) -> Events {
        self.sinks.push(sink);
        self
    }

    /// Tells every sink.
    pub fn emit(&self, event: Event<'_>) {
        for sink in &self.sinks {
            sink.emit(&event);
        }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl EventSink for Recorder {
        fn emit(&self, event: &Event<'_>) {
            self.0.lock().unwrap().push(format!("{event:?}"));
        }
    }

    #[test]
    fn every_sink_gets_every_event_in_order() {
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        let events = Events::default().with(a.clone()).with(b.clone());
        events.emit(Event::ChannelOccupied { channel: "c" });
        events.emit(Event::Connected {
            client: "x",
            user: "u",
        });
        for recorder in [&a, &b] {
            let seen = recorder.0.lock().unwrap();
            assert_eq!(seen.len(), 2);
            assert!(seen[0].starts_with("ChannelOccupied"));
            assert!(seen[1].starts_with("Connected"));
        }
        assert_eq!(
            Event::Published {
                channel: "c",
                offset: 1,
                client: None,
                user: None,
                data: &serde_json::value::RawValue::from_string("1".into())
                    .unwrap()
                    .into(),
                binary: false,
            }
            .name(),
            "published"
        );
    }
}

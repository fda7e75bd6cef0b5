//! The hub: which local connections exist and which of them subscribe to which channel.
//!
//! Channels are spread over shards, each behind its own lock, so publishers on different channels
//! never contend. A delivery is a list of queue pushes of shared, already-encoded [`Bytes`]:
//! publishing to 1,000 subscribers encodes once per encoding they speak (JSON, Protobuf; each
//! only if someone needs it) and copies no payload.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::Bytes;

use crate::delta::DeltaPushes;
use crate::protocol::{Disconnect, EncodedPush, Payload, Publication};
use crate::queue::{ClientQueue, PushError};

/// A connection's number on this node (never reused while the node runs).
pub type ConnId = u64;

const SHARDS: usize = 64;

/// A request from the node to one session, for actions the session must take on its own state
/// (server-side subscribe/unsubscribe from the API).
#[derive(Debug)]
pub enum Control {
    Subscribe {
        channel: String,
        chan_info: Option<Payload>,
        data: Option<Payload>,
    },
    Unsubscribe {
        channel: String,
        /// Unsubscribe push code: below 2500 the client stays unsubscribed, from 2500 it
        /// resubscribes (and recovers).
        code: u32,
        reason: &'static str,
    },
    /// The connection's new expiry (`None`: it no longer expires), and its new info if given.
    Refresh {
        expire_at: Option<u64>,
        info: Option<Payload>,
    },
}

/// Where the node sends a session its [`Control`] requests.
pub type ControlSender = Arc<ControlInbox>;

/// A session's inbox of control requests.
pub type ControlInbox = Inbox<Control>;

/// A small bounded inbox of requests for one connection's task (its control requests; an
/// emulation session's commands). Not a tokio `mpsc` channel: one of those costs 1.3 KB or more
/// per connection before any use (a cache-padded channel and a 32-slot block), for requests most
/// connections receive rarely or never; this costs about 100 bytes, and gives its buffer back
/// once emptied. Its one consumer's waker is kept under the lock, so waiting costs the
/// connection loop no registration of its own.
#[derive(Debug)]
pub struct Inbox<T> {
    state: Mutex<Waiting<T>>,
    capacity: usize,
}

#[derive(Debug)]
struct Waiting<T> {
    requests: VecDeque<T>,
    waiter: Option<Waker>,
}

impl<T> Inbox<T> {
    /// An inbox holding at most `capacity` waiting requests.
    pub fn new(capacity: usize) -> Self {
        Inbox {
            state: Mutex::new(Waiting {
                requests: VecDeque::new(),
                waiter: None,
            }),
            capacity,
        }
    }

    /// Queues a request; gives it back when the inbox is full.
    pub fn try_send(&self, request: T) -> Result<(), T> {
        let mut state = lock(&self.state);
        if state.requests.len() >= self.capacity {
            return Err(request);
        }
        state.requests.push_back(request);
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Ok(())
    }

    /// The next request. Cancel-safe: a request is taken only when this resolves.
    pub fn recv(&self) -> impl Future<Output = T> + '_ {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.state);
            if let Some(request) = state.requests.pop_front() {
                if state.requests.is_empty() {
                    // An idle connection keeps no buffer.
                    state.requests = VecDeque::new();
                }
                return Poll::Ready(request);
            }
            match &state.waiter {
                Some(waiter) if waiter.will_wake(cx.waker()) => {}
                _ => state.waiter = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

/// What the hub keeps of one connection.
#[derive(Debug, Clone)]
pub struct ClientHandle {
    pub client_id: Arc<str>,
    pub user: Arc<str>,
    pub queue: Arc<ClientQueue>,
    pub control: ControlSender,
}

/// Result of one delivery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Subscribers the message was queued to.
    pub queued: u64,
    /// Subscribers whose queue was full or closed.
    pub dropped: u64,
    /// Of those, subscribers this delivery pushed over their limit (now closed as slow).
    pub overflowed: u64,
}

/// One subscriber of a channel.
#[derive(Debug)]
struct Subscriber {
    queue: Arc<ClientQueue>,
    /// While the subscription is being set up (its position read from history), deliveries are
    /// held here instead of queued; see [`Hub::activate`]. Boxed: every subscriber of every
    /// channel pays for this field, and only new ones use it.
    held: Option<Box<Held>>,
    /// Whether it wants join/leave pushes.
    join_leave: bool,
    /// Whether it gets Fossil deltas (see [`crate::delta`]).
    delta: DeltaState,
}

/// A subscriber's place in its channel's chain of deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeltaState {
    /// Full publications, as everyone.
    Off,
    /// Deltas asked for, but it may not have the channel's last payload: the next publication
    /// goes whole (as a string).
    Fresh,
    /// It has the channel's last payload: the next publication may be a delta against it.
    Ready,
}

/// Deliveries held for a subscriber being set up: messages with their offsets, and their bytes.
#[derive(Debug, Default)]
struct Held {
    messages: Vec<(u64, Bytes)>,
    bytes: usize,
}

type ChannelMap = HashMap<Arc<str>, HashMap<ConnId, Subscriber>>;

/// Channel → local subscribers, plus the registry of local connections by id and by user.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Mutex<ChannelMap>]>,
    hasher: RandomState,
    connections: Mutex<Connections>,
    /// The last payload delivered on each channel that has delta subscribers: what the next
    /// delta is computed against. Locked after a shard, never before.
    delta_bases: Mutex<HashMap<Arc<str>, (Payload, bool)>>,
}

#[derive(Debug, Default)]
struct Connections {
    by_id: HashMap<ConnId, ClientHandle>,
    by_user: HashMap<Arc<str>, HashSet<ConnId>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            connections: Mutex::new(Connections::default()),
            delta_bases: Mutex::default(),
        }
    }
}

impl Hub {
    fn shard(&self, channel: &str) -> MutexGuard<'_, ChannelMap> {
        let i = (self.hasher.hash_one(channel) as usize) % SHARDS;
        lock(&self.shards[i])
    }

    /// Registers a connected client.
    pub fn add_connection(&self, id: ConnId, handle: ClientHandle) {
        let mut conns = lock(&self.connections);
        conns
            .by_user
            .entry(handle.user.clone())
            .or_default()
            .insert(id);
        conns.by_id.insert(id, handle);
    }

    /// Forgets a client. Its subscriptions must be removed by the caller (the session knows them).
    pub fn remove_connection(&self, id: ConnId) {
        let mut conns = lock(&self.connections);
        if let Some(handle) = conns.by_id.remove(&id) {
            if let Some(set) = conns.by_user.get_mut(&handle.user) {
                set.remove(&id);
                if set.is_empty() {
                    conns.by_user.remove(&handle.user);
                }
            }
        }
    }

    /// The connections of `user`.
    pub fn user_connections(&self, user: &str) -> Vec<ClientHandle> {
        let conns = lock(&self.connections);
        conns
            .by_user
            .get(user)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| conns.by_id.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many connections `user` has.
    pub fn user_connection_count(&self, user: &str) -> usize {
        lock(&self.connections)
            .by_user
            .get(user)
            .map_or(0, HashSet::len)
    }

    /// The connections subscribed to `channel` on this node.
    pub fn subscriber_handles(&self, channel: &str) -> Vec<ClientHandle> {
        let ids: Vec<ConnId> = self
            .shard(channel)
            .get(channel)
            .map(|subs| subs.keys().copied().collect())
            .unwrap_or_default();
        let conns = lock(&self.connections);
        ids.iter()
            .filter_map(|id| conns.by_id.get(id).cloned())
            .collect()
    }

    /// Adds a subscriber, its deliveries held until [`Hub::activate`] (so the subscribe reply,
    /// computed meanwhile, goes first). `join_leave`: it receives join/leave pushes. Returns true
    /// if the channel had no local subscriber before.
    pub fn subscribe(
        &self,
        channel: &str,
        id: ConnId,
        queue: &Arc<ClientQueue>,
        join_leave: bool,
        delta: bool,
    ) -> bool {
        let mut shard = self.shard(channel);
        let subscriber = Subscriber {
            queue: queue.clone(),
            held: Some(Box::default()),
            join_leave,
            delta: if delta {
                DeltaState::Fresh
            } else {
                DeltaState::Off
            },
        };
        match shard.get_mut(channel) {
            Some(subs) => {
                subs.insert(id, subscriber);
                false
            }
            None => {
                shard.insert(Arc::from(channel), HashMap::from([(id, subscriber)]));
                true
            }
        }
    }

    /// Ends the hold of a new subscriber: queues `first` (the subscribe reply), then
    /// the held deliveries whose offset is above `after` (the reply covers the rest), then lets
    /// deliveries flow. Nothing published meanwhile is lost or duplicated. Called by the
    /// subscriber's own connection task, which looks at its queue next.
    pub fn activate(&self, channel: &str, id: ConnId, first: Option<Bytes>, after: u64) {
        let mut shard = self.shard(channel);
        let Some(subscriber) = shard.get_mut(channel).and_then(|subs| subs.get_mut(&id)) else {
            return;
        };
        if let Some(first) = first {
            let _ = subscriber.queue.push_from_consumer(first);
        }
        let held = subscriber
            .held
            .take()
            .map(|h| h.messages)
            .unwrap_or_default();
        // A delta subscriber has the channel's last payload if the last publication held (all
        // held ones are whole) is the last it gets here.
        let mut has_last = false;
        for (offset, message) in held {
            if offset > 0 {
                has_last = offset > after;
            }
            if offset > after && subscriber.queue.push_from_consumer(message).is_err() {
                break;
            }
        }
        if subscriber.delta != DeltaState::Off {
            subscriber.delta = if has_last {
                DeltaState::Ready
            } else {
                DeltaState::Fresh
            };
        }
    }

    /// Removes a subscriber. Returns true if the channel has no local subscriber left.
    pub fn unsubscribe(&self, channel: &str, id: ConnId) -> bool {
        let mut shard = self.shard(channel);
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        if subs.remove(&id).is_none() {
            return false;
        }
        if subs.is_empty() {
            shard.remove(channel);
            lock(&self.delta_bases).remove(channel);
            return true;
        }
        false
    }

    /// Queues `message` (the publication at `offset`, 0 when it has none) to every local
    /// subscriber of `channel`, in its encoding.
    pub fn deliver(&self, channel: &str, message: &EncodedPush, offset: u64) -> Delivery {
        self.deliver_to(channel, offset, false, |subscriber| {
            message.get(subscriber.queue.encoding())
        })
    }

    /// Queues `publication`, pushed as `message`, to every local subscriber of `channel` in its
    /// encoding; a subscriber that asked for Fossil deltas gets it as [`crate::delta`] says, each
    /// variant encoded once per encoding for all of them.
    pub fn deliver_publication(
        &self,
        channel: &str,
        publication: &Publication,
        message: &EncodedPush,
    ) -> Delivery {
        let mut pushes: Option<DeltaPushes> = None;
        let delivery = self.deliver_to(channel, publication.offset, false, |subscriber| {
            let encoding = subscriber.queue.encoding();
            if subscriber.delta == DeltaState::Off {
                return message.get(encoding);
            }
            let pushes = pushes.get_or_insert_with(|| {
                let base = lock(&self.delta_bases).get(channel).cloned();
                DeltaPushes::new(channel, publication, base)
            });
            let push = if subscriber.delta == DeltaState::Ready && subscriber.held.is_none() {
                pushes.delta(encoding)
            } else {
                pushes.full(encoding)
            };
            if subscriber.held.is_none() {
                subscriber.delta = DeltaState::Ready;
            }
            push
        });
        if pushes.is_some() {
            lock(&self.delta_bases).insert(
                Arc::from(channel),
                (publication.data.clone(), publication.binary),
            );
        }
        delivery
    }

    /// Queues a join/leave push to the subscribers of `channel` that asked for them, in their
    /// encoding.
    pub fn deliver_join_leave(&self, channel: &str, message: &EncodedPush) -> Delivery {
        self.deliver_to(channel, 0, true, |subscriber| {
            message.get(subscriber.queue.encoding())
        })
    }

    /// Queues to each subscriber of `channel` (those that want join/leave pushes, for one) the
    /// message `encode` picks for it.
    fn deliver_to(
        &self,
        channel: &str,
        offset: u64,
        join_leave: bool,
        mut encode: impl FnMut(&mut Subscriber) -> Bytes,
    ) -> Delivery {
        let mut shard = self.shard(channel);
        let mut delivery = Delivery::default();
        if let Some(subs) = shard.get_mut(channel) {
            for subscriber in subs.values_mut() {
                if join_leave && !subscriber.join_leave {
                    continue;
                }
                // Owned: each subscriber's push takes its handle of the bytes, no second count.
                let message = encode(subscriber);
                if let Some(held) = &mut subscriber.held {
                    // Held messages count against the client's queue bound too.
                    if held.bytes + message.len() > subscriber.queue.max_bytes() {
                        subscriber.queue.close(Disconnect::SLOW);
                        // Closed: later deliveries meet the closed queue (dropped, not counted
                        // as another overflow).
                        subscriber.held = None;
                        delivery.dropped += 1;
                        delivery.overflowed += 1;
                    } else {
                        held.bytes += message.len();
                        held.messages.push((offset, message));
                        delivery.queued += 1;
                    }
                    continue;
                }
                match subscriber.queue.push(message) {
                    Ok(()) => delivery.queued += 1,
                    Err(PushError::Closed) => delivery.dropped += 1,
                    Err(PushError::Overflow) => {
                        delivery.dropped += 1;
                        delivery.overflowed += 1;
                    }
                }
            }
        }
        delivery
    }

    /// Local subscribers of `channel`.
    pub fn num_subscribers(&self, channel: &str) -> usize {
        self.shard(channel).get(channel).map_or(0, |s| s.len())
    }

    /// Every channel with local subscribers, with their count.
    pub fn channels(&self) -> Vec<(Arc<str>, usize)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .iter()
                    .map(|(name, subs)| (name.clone(), subs.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// (connections, distinct users, channels, subscriptions) on this node.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let (connections, users) = {
            let conns = lock(&self.connections);
            (conns.by_id.len(), conns.by_user.len())
        };
        let (mut channels, mut subscriptions) = (0, 0);
        for shard in self.shards.iter() {
            let shard = lock(shard);
            channels += shard.len();
            subscriptions += shard.values().map(|s| s.len()).sum::<usize>();
        }
        (connections, users, channels, subscriptions)
    }
}

/// Locks a hub mutex; every update under these locks is a single step, so a poisoned lock still
/// guards consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Encoding, Push, PushBody};
    use crate::queue::Outbound;

    fn message(text: &str) -> EncodedPush {
        let data = serde_json::value::RawValue::from_string(format!("\"{text}\"")).unwrap();
        EncodedPush::new(Push {
            channel: "c".into(),
            body: PushBody::Message {
                data: Arc::from(data),
            },
        })
    }

    #[test]
    fn subscribe_deliver_unsubscribe() {
        let hub = Hub::default();
        let a = Arc::new(ClientQueue::new(1024));
        let b = Arc::new(ClientQueue::new(1024));
        assert!(hub.subscribe("c", 1, &a, false, false));
        hub.activate("c", 1, None, 0);
        assert!(!hub.subscribe("c", 2, &b, true, false));
        assert_eq!(hub.num_subscribers("c"), 2);
        let (m1, m2) = (message("m1"), message("m2"));
        let size = m1.get(Encoding::Json).len();
        let d = hub.deliver("c", &m1, 1);
        assert_eq!(d.queued, 2);
        hub.deliver("c", &m2, 2);
        assert_eq!(a.pending_bytes(), 2 * size);
        assert_eq!(b.pending_bytes(), 0);
        // The reply covers offset 1; held offset 2 follows it.
        hub.activate("c", 2, Some(Bytes::from_static(b"r")), 1);
        assert_eq!(b.pending_bytes(), 1 + size);
        assert!(!hub.unsubscribe("c", 1));
        assert!(hub.unsubscribe("c", 2));
        assert_eq!(hub.counts(), (0, 0, 0, 0));
        assert_eq!(hub.deliver("c", &message("m"), 3).queued, 0);
    }

    #[tokio::test]
    async fn each_subscriber_gets_its_encoding_encoded_once_for_all() {
        let hub = Hub::default();
        let queues: Vec<_> = [Encoding::Json, Encoding::Protobuf, Encoding::Protobuf]
            .into_iter()
            .enumerate()
            .map(|(i, encoding)| {
                let q = Arc::new(ClientQueue::with_encoding(1024, encoding));
                hub.subscribe("c", i as u64, &q, false, false);
                hub.activate("c", i as u64, None, 0);
                q
            })
            .collect();
        hub.deliver("c", &message("hi"), 0);
        let mut frames = Vec::new();
        for q in &queues {
            match q.next().await {
                Outbound::Frame(frame) => frames.push(frame),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            &frames[0][..],
            br#"{"push":{"channel":"c","message":{"data":"hi"}}}"#
        );
        let replies =
            switchboard_proto::decode_frame::<switchboard_proto::Reply>(frames[1].clone()).unwrap();
        let push = replies[0].push.as_ref().unwrap();
        assert_eq!(&push.message.as_ref().unwrap().data[..], br#""hi""#);
        // The two Protobuf subscribers share one encoding: the same bytes, not a copy.
        assert_eq!(frames[1].as_ptr(), frames[2].as_ptr());
    }
}

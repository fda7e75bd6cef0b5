//! One client's outbound queue, bounded by bytes.
//!
//! Publishers (the hub, on any thread) push already-encoded messages; the client's connection task
//! takes everything pending at once (up to [`MAX_FRAME_BYTES`] per frame, the rest in the next)
//! and writes it as one frame (JSON messages joined by `\n`, Protobuf ones, length-delimited
//! already, back to back), so a busy channel costs one write per wake-up rather than
//! one per message. A client that does not read lets its
//! queue fill; the push that would overflow it closes the queue with [`Disconnect::SLOW`] instead of
//! growing memory, and publishers are never blocked by a slow reader.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::task::{Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

use crate::protocol::{Disconnect, Encoding};

/// Largest coalesced frame. Every byte of a frame is copied twice more on its way out (into the
/// WebSocket library's write buffer, which keeps its largest size for the connection's life, and
/// into the socket), so frames stay well below the queue bound: under load a busy connection
/// retains at most this much, and a write blocked on a client that stopped reading is short.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// What the connection task must do next.
#[derive(Debug)]
pub enum Outbound {
    /// Write this frame (one or more messages, joined as the encoding wants).
    Frame(Bytes),
    /// Close the connection with this code and reason.
    Close(Disconnect),
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is closed (the client is going away).
    Closed,
    /// This push overflowed the queue, which is now closed as slow.
    Overflow,
}

/// A bounded, closable, many-producer one-consumer queue of encoded messages.
#[derive(Debug)]
pub struct ClientQueue {
    state: Mutex<State>,
    /// Woken on close only, for a writer blocked on the socket.
    closing: Notify,
    max_bytes: usize,
    /// What the messages are: the hub encodes each delivery in its subscribers' encodings.
    encoding: Encoding,
}

#[derive(Debug, Default)]
struct State {
    messages: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Disconnect>,
    /// The consumer waiting for work, woken (and forgotten) by the next push or close.
    waiter: Option<Waker>,
}

impl ClientQueue {
    /// A queue of JSON messages that holds at most `max_bytes` of pending messages.
    pub fn new(max_bytes: usize) -> Self {
        Self::with_encoding(max_bytes, Encoding::Json)
    }

    /// A queue of messages in `encoding` that holds at most `max_bytes` of pending messages.
    pub fn with_encoding(max_bytes: usize, encoding: Encoding) -> Self {
        ClientQueue {
            state: Mutex::new(State::default()),
            closing: Notify::new(),
            max_bytes,
            encoding,
        }
    }

    /// How the messages of this queue are encoded.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Queues one encoded message. Never blocks beyond a short critical section.
    pub fn push(&self, message: Bytes) -> Result<(), PushError> {
        self.push_and_wake(message, true)
    }

    /// Queues a message from the consumer's own task (a reply), which looks at the queue before
    /// it waits again: waking it would only cost it a whole extra poll. Any other push still
    /// wakes it if it is waiting.
    pub fn push_from_consumer(&self, message: Bytes) -> Result<(), PushError> {
        self.push_and_wake(message, false)
    }

    fn push_and_wake(&self, message: Bytes, wake: bool) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        if state.bytes + message.len() > self.max_bytes {
            state.close = Some(Disconnect::SLOW);
            state.messages.clear();
            state.bytes = 0;
            let waiter = state.waiter.take();
            drop(state);
            if let Some(waiter) = waiter {
                waiter.wake();
            }
            self.closing.notify_one();
            return Err(PushError::Overflow);
        }
        state.bytes += message.len();
        state.messages.push_back(message);
        let waiter = if wake { state.waiter.take() } else { None };
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Ok(())
    }

    /// Asks the connection to close with `reason`. The first reason given wins; messages still
    /// pending are written first, so a reply that preceded the close is not lost.
    pub fn close(&self, reason: Disconnect) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        self.closing.notify_one();
    }

    /// The close reason, once the queue is closed.
    pub fn closed(&self) -> Option<Disconnect> {
        self.lock().close.clone()
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().close.is_some()
    }

    /// The most bytes this queue holds.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes currently waiting.
    pub fn pending_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Waits for work: the pending messages as one frame (up to [`MAX_FRAME_BYTES`]), or the close
    /// once nothing is pending.
    /// Cancel-safe: nothing is taken from the queue until the returned value is ready.
    pub fn next(&self) -> impl Future<Output = Outbound> + '_ {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if let Some(out) = take_next(&mut state, self.encoding) {
                return Poll::Ready(out);
            }
            match &state.waiter {
                Some(waiter) if waiter.will_wake(cx.waker()) => {}
                _ => state.waiter = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Resolves when the queue is closed; used to abandon a write blocked on a client that stopped
    /// reading.
    pub async fn wait_closed(&self) -> Disconnect {
        loop {
            if let Some(reason) = self.closed() {
                return reason;
            }
            self.closing.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state consistent (every update is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every pending message as one frame (up to [`MAX_FRAME_BYTES`]), or the close once nothing is
/// pending.
fn take_next(state: &mut State, encoding: Encoding) -> Option<Outbound> {
    // JSON messages are joined by `\n`; Protobuf ones carry their length and need nothing.
    let separated = encoding == Encoding::Json;
    match state.messages.len() {
        0 => state.close.clone().map(Outbound::Close),
        1 => {
            state.bytes = 0;
            let message = state.messages.pop_front();
            // A quiet connection (one message per wake-up) gives its small buffer back, so
            // idle connections hold none; a busy one keeps its larger buffer.
            if state.messages.capacity() <= 8 {
                state.messages = VecDeque::new();
            }
            message.map(Outbound::Frame)
        }
        _ => {
            // As many messages as fit in one frame of MAX_FRAME_BYTES (at least one); the
            // rest make the next frame, taken at once by the next call.
            let mut take = 0;
            let mut size = 0;
            for message in state.messages.iter() {
                let next = size + usize::from(separated && take > 0) + message.len();
                if take > 0 && next > MAX_FRAME_BYTES {
                    break;
                }
                size = next;
                take += 1;
            }
            let mut frame = BytesMut::with_capacity(size);
            let mut taken = 0;
            for (i, message) in state.messages.drain(..take).enumerate() {
                if separated && i > 0 {
                    frame.put_u8(b'\n');
                }
                taken += message.len();
                frame.put_slice(&message);
            }
            state.bytes -= taken;
            Some(Outbound::Frame(frame.freeze()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn coalesces_pending_messages_into_one_frame() {
        let q = ClientQueue::new(1024);
        q.push(Bytes::from_static(b"{\"a\":1}")).unwrap();
        q.push(Bytes::from_static(b"{\"b\":2}")).unwrap();
        match q.next().await {
            Outbound::Frame(f) => assert_eq!(&f[..], b"{\"a\":1}\n{\"b\":2}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn frames_are_capped_and_the_rest_follows() {
        let q = ClientQueue::new(1 << 20);
        let message = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..100 {
            q.push(message.clone()).unwrap();
        }
        let mut total = 0;
        while q.pending_bytes() > 0 {
            match q.next().await {
                Outbound::Frame(f) => {
                    assert!(f.len() <= MAX_FRAME_BYTES);
                    total += f.split(|b| *b == b'\n').count();
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(total, 100);
        // A single message larger than the cap still goes, alone.
        q.push(Bytes::from(vec![b'y'; MAX_FRAME_BYTES + 1]))
            .unwrap();
        q.push(Bytes::from_static(b"z")).unwrap();
        assert!(matches!(q.next().await, Outbound::Frame(f) if f.len() == MAX_FRAME_BYTES + 1));
        assert!(matches!(q.next().await, Outbound::Frame(f) if &f[..] == b"z"));
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_and_rejects_more() {
        let q = ClientQueue::new(10);
        q.push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(
            q.push(Bytes::from_static(b"123456")),
            Err(PushError::Overflow)
        );
        assert_eq!(q.push(Bytes::from_static(b"1")), Err(PushError::Closed));
        assert!(matches!(q.next().await, Outbound::Close(d) if d == Disconnect::SLOW));
    }

    #[tokio::test]
    async fn close_after_pending_messages_are_written() {
        let q = ClientQueue::new(100);
        q.push(Bytes::from_static(b"x")).unwrap();
        q.close(Disconnect::SHUTDOWN);
        q.close(Disconnect::SLOW);
        assert!(matches!(q.next().await, Outbound::Frame(_)));
        assert!(matches!(q.next().await, Outbound::Close(d) if d == Disconnect::SHUTDOWN));
    }
}

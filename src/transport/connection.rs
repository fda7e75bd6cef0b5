//! The connection loop every transport shares: it drives one [`Session`] over a [`Wire`].
//!
//! The loop waits on whichever comes first: a client frame, pending outbound messages (written as
//! one frame), a control request from the node, the oldest of the client's publishes in flight,
//! the ping/pong/stale/expiry timer, or shutdown. One task per connection, not one per direction,
//! keeps idle connections cheap. A transport only says how frames are read and written.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::time::{timeout, Instant};

use crate::hub::ControlInbox;
use crate::node::Node;
use crate::protocol::Disconnect;
use crate::queue::{ClientQueue, Outbound};
use crate::session::Session;

/// What arrived from the client.
pub enum Incoming<F> {
    /// One frame of commands (`\n`-separated JSON, or length-delimited Protobuf).
    Frame(F),
    /// Something the transport handled itself (a WebSocket ping, say): nothing to do.
    Skip,
    /// A frame the transport cannot take: the connection closes with this reason.
    Invalid(Disconnect),
    /// The client went away (closed, reset, or the stream ended).
    Gone,
}

/// One transport's two directions, as the connection loop uses them.
pub trait Wire: Send {
    /// A received frame's bytes.
    type Frame: AsRef<[u8]> + Send;

    /// The client only receives (Centrifugo's unidirectional transports): its session is
    /// connected before the loop starts, and the server's pings expect no pong.
    const UNIDIRECTIONAL: bool = false;

    /// The next thing from the client. Cancel-safe: the loop drops it when something else is
    /// ready first and calls again.
    fn recv(&mut self) -> impl Future<Output = Incoming<Self::Frame>> + Send;

    /// Writes one frame (in the session's encoding, as the queue joined it); `Err` when the peer
    /// is gone.
    fn send(&mut self, frame: Bytes) -> impl Future<Output = Result<(), ()>> + Send;

    /// Tells the client why the connection ends (a WebSocket close frame, say), as far as the
    /// transport can.
    fn close(&mut self, reason: &Disconnect) -> impl Future<Output = ()> + Send;
}

/// Runs the connection; returns the disconnect sent to the client (`None` if the client left or
/// the socket failed first).
pub async fn drive<W: Wire>(
    node: &Node,
    session: &mut Session,
    queue: &ClientQueue,
    wire: &mut W,
    control: &ControlInbox,
) -> Option<Disconnect> {
    let config = node.config();
    let shutdown = node.shutdown_token().clone();
    let stale_deadline = Instant::now() + config.stale_timeout();
    // A unidirectional transport connects the session before the loop starts.
    let mut next_ping = session
        .is_connected()
        .then(|| first_ping(config.ping_interval()));
    // The shutdown signal and the timer live across iterations: re-creating them on every
    // wake-up (every frame written) would register and cancel a timer entry and a waiter each
    // time, a visible share of the cost of a delivery.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(stale_deadline);
    tokio::pin!(timer);
    loop {
        let wake = next_wake(session, stale_deadline, next_ping, config.pong_timeout());
        // Deadlines derived from wall-clock seconds (token expiry) or from the client's last
        // frame (a due pong) move a little on every wake-up; a pending timer within a second of
        // the wanted instant is kept rather than re-registered each time. Checks may then run up
        // to a second late, never spin: an elapsed timer is always reset.
        let current = timer.deadline();
        if timer.is_elapsed() || current.max(wake) - current.min(wake) >= TIMER_SLACK {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            _ = &mut cancelled, if !queue.is_closed() => queue.close(Disconnect::SHUTDOWN),
            out = queue.next() => match out {
                Outbound::Frame(frame) => {
                    // Boxed: a write's state (timers, the pending send) is only needed while
                    // writing, not by every idle connection's task.
                    let write = Box::pin(write_frame(wire, queue, frame, config.write_timeout()));
                    match write.await {
                        Written::Done => crate::metrics::Metrics::inc(&node.metrics().frames_written),
                        Written::Failed => return None,
                        Written::TimedOut => return Some(Disconnect::WRITE_ERROR),
                        Written::Slow(reason, finished) => {
                            if finished {
                                let _ = timeout(SLOW_CLOSE_GRACE, wire.close(&reason)).await;
                            }
                            return Some(reason);
                        }
                    }
                }
                Outbound::Close(reason) => {
                    let _ = timeout(config.write_timeout(), wire.close(&reason)).await;
                    return Some(reason);
                }
            },
            // Once closing, nothing more is read: the close frame goes out after what is queued
            // (a read could only find the end of a stream the transport gave up on, and end the
            // connection before it), and the socket lingers afterwards (`transport::linger`).
            incoming = wire.recv(), if !queue.is_closed() => {
                let text = match incoming {
                    Incoming::Frame(text) => text,
                    Incoming::Skip => continue,
                    Incoming::Invalid(reason) => { queue.close(reason); continue; }
                    Incoming::Gone => return None,
                };
                session.frame_received();
                let text = text.as_ref();
                if text.len() > config.max_message_size {
                    queue.close(Disconnect::MESSAGE_TOO_BIG);
                    continue;
                }
                let was_connected = session.is_connected();
                // Boxed: command handling is the largest state of this future, and inlined it
                // would make every idle connection's task carry it.
                if let Err(reason) = Box::pin(session.handle_frame(text)).await {
                    queue.close(reason);
                }
                if !was_connected && session.is_connected() {
                    next_ping = Some(first_ping(config.ping_interval()));
                }
            },
            request = control.recv() => Box::pin(session.handle_control(request)).await,
            // Publishes run while the next frames are read; their replies go out in order.
            _ = session.finish_publish(), if session.has_publishes_in_flight() => {}
            _ = &mut timer => {
                let now = Instant::now();
                if !session.is_connected() {
                    if now >= stale_deadline { queue.close(Disconnect::STALE); }
                } else if session.awaiting_pong_since().is_some_and(|sent| now >= sent + config.pong_timeout()) {
                    queue.close(Disconnect::NO_PONG);
                } else if let Err(reason) = Box::pin(session.check_expiry()).await {
                    queue.close(reason);
                } else if next_ping.is_some_and(|at| now >= at) {
                    let ping = session.encoding().ping();
                    let _ = queue.push_from_consumer(bytes::Bytes::from_static(ping));
                    if !W::UNIDIRECTIONAL {
                        session.ping_sent(now);
                    }
                    next_ping = Some(now + config.ping_interval());
                }
            }
        }
    }
}

/// How far a pending timer may be from the wanted wake-up before it is re-registered.
const TIMER_SLACK: Duration = Duration::from_secs(1);

/// How long a connection closed as slow may take to finish its write and close frame.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a frame write ended.
enum Written {
    Done,
    Failed,
    TimedOut,
    /// The queue overflowed during the write; whether the write then finished within the grace.
    Slow(Disconnect, bool),
}

/// Writes one frame, unless the client proves slow meanwhile: a client that stopped reading
/// blocks the write, and its queue overflows; the write then gets a short grace and is abandoned.
async fn write_frame<W: Wire>(
    wire: &mut W,
    queue: &ClientQueue,
    frame: Bytes,
    limit: Duration,
) -> Written {
    let write = wire.send(frame);
    tokio::pin!(write);
    // Fast path: a reading client's socket has room, and the write completes at once, with no
    // timer or overflow watch to set up and tear down.
    let first = std::future::poll_fn(|cx| match write.as_mut().poll(cx) {
        std::task::Poll::Ready(result) => std::task::Poll::Ready(Some(result)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    match first {
        Some(Ok(())) => return Written::Done,
        Some(Err(_)) => return Written::Failed,
        None => {}
    }
    tokio::select! {
        result = timeout(limit, &mut write) => match result {
            Ok(Ok(())) => Written::Done,
            Ok(Err(_)) => Written::Failed,
            Err(_) => Written::TimedOut,
        },
        reason = overflowed(queue) => {
            let finished = matches!(timeout(SLOW_CLOSE_GRACE, &mut write).await, Ok(Ok(())));
            Written::Slow(reason, finished)
        }
    }
}

/// Resolves only if the queue gets closed as slow.
async fn overflowed(queue: &ClientQueue) -> Disconnect {
    let reason = queue.wait_closed().await;
    if reason == Disconnect::SLOW {
        return reason;
    }
    std::future::pending().await
}

/// The next instant a timer needs attention.
fn next_wake(
    session: &Session,
    stale_deadline: Instant,
    next_ping: Option<Instant>,
    pong_timeout: Duration,
) -> Instant {
    if !session.is_connected() {
        return stale_deadline;
    }
    // Nothing due: a far deadline, fixed (not "now + 1 h") so the timer is not reset on every
    // wake-up.
    let far = || {
        let far = stale_deadline + Duration::from_secs(3600);
        let now = Instant::now();
        if far > now {
            far
        } else {
            now + Duration::from_secs(3600)
        }
    };
    [
        next_ping,
        session
            .awaiting_pong_since()
            .map(|sent| sent + pong_timeout),
        session.expiry_deadline(),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or_else(far)
}

/// The first ping comes at a random point in [interval/2, interval), so pings of clients that
/// connected together do not all fire at once.
fn first_ping(interval: Duration) -> Instant {
    let half = interval / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
    Instant::now() + half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    //! The loop over a transport made of channels: a second transport drives a session without
    //! any command handling of its own.

    use std::sync::Arc;

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::config::Config;
    use crate::engine::memory::{LocalBroker, MemoryHistory, MemoryPresence};
    use crate::transport::Transport;

    /// Frames in from one channel, frames and the close reason out to another.
    struct ChannelWire {
        incoming: mpsc::Receiver<String>,
        outgoing: mpsc::Sender<Result<String, Disconnect>>,
    }

    impl Wire for ChannelWire {
        type Frame = String;

        async fn recv(&mut self) -> Incoming<String> {
            match self.incoming.recv().await {
                Some(frame) => Incoming::Frame(frame),
                None => Incoming::Gone,
            }
        }

        async fn send(&mut self, frame: Bytes) -> Result<(), ()> {
            let text = String::from_utf8(frame.to_vec()).map_err(drop)?;
            self.outgoing.send(Ok(text)).await.map_err(drop)
        }

        async fn close(&mut self, reason: &Disconnect) {
            let _ = self.outgoing.send(Err(reason.clone())).await;
        }
    }

    fn node(config: Config) -> Node {
        let broker = Arc::new(LocalBroker::new(Arc::new(MemoryHistory::default())));
        Node::new(
            config,
            broker,
            Arc::new(MemoryPresence::default()),
            None,
            CancellationToken::new(),
            TaskTracker::new(),
        )
    }

    /// What the server wrote: frames, then the close reason.
    type FromServer = mpsc::Receiver<Result<String, Disconnect>>;

    /// Runs one connection over a [`ChannelWire`]; returns the client's ends and the loop's task.
    fn connect(
        node: &Node,
    ) -> (
        mpsc::Sender<String>,
        FromServer,
        tokio::task::JoinHandle<Option<Disconnect>>,
    ) {
        let (to_server, incoming) = mpsc::channel(16);
        let (outgoing, from_server) = mpsc::channel(16);
        let node = node.clone();
        let task = tokio::spawn(async move {
            let queue = Arc::new(ClientQueue::new(node.config().client_queue_max_bytes));
            let control = Arc::new(ControlInbox::new(8));
            let mut session = Session::new(
                node.clone(),
                queue.clone(),
                control.clone(),
                Transport::WebSocket,
            );
            let mut wire = ChannelWire { incoming, outgoing };
            drive(&node, &mut session, &queue, &mut wire, &control).await
        });
        (to_server, from_server, task)
    }

    async fn next_frame(from_server: &mut FromServer) -> String {
        match from_server.recv().await {
            Some(Ok(frame)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_channel_transport_connects_subscribes_and_receives_publications() {
        let node = node(Config::default());
        let (to_server, mut from_server, task) = connect(&node);
        to_server
            .send(r#"{"id":1,"connect":{}}"#.into())
            .await
            .unwrap();
        let reply = next_frame(&mut from_server).await;
        assert!(
            reply.contains(r#""id":1"#) && reply.contains(r#""connect""#),
            "{reply}"
        );
        to_server
            .send(r#"{"id":2,"subscribe":{"channel":"news"}}"#.into())
            .await
            .unwrap();
        let reply = next_frame(&mut from_server).await;
        assert!(
            reply.contains(r#""id":2"#) && reply.contains(r#""subscribe""#),
            "{reply}"
        );
        let data = crate::protocol::payload_from_raw(
            &serde_json::value::RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap(),
        );
        node.publish("news", crate::protocol::Publication::new(data), false, None)
            .await
            .unwrap();
        let push = next_frame(&mut from_server).await;
        assert!(
            push.contains(r#""channel":"news""#) && push.contains(r#""text":"hi""#),
            "{push}"
        );
        // The client goes away: the loop ends without a disconnect of its own.
        drop(to_server);
        assert_eq!(task.await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_connects_is_closed_as_stale() {
        let node = node(Config::default());
        let (_to_server, mut from_server, task) = connect(&node);
        assert_eq!(from_server.recv().await, Some(Err(Disconnect::STALE)));
        assert_eq!(task.await.unwrap(), Some(Disconnect::STALE));
    }

    #[tokio::test]
    async fn bad_input_closes_with_the_protocol_code() {
        let node = node(Config::default());
        let (to_server, mut from_server, task) = connect(&node);
        to_server.send("not json".into()).await.unwrap();
        let Some(Err(reason)) = from_server.recv().await else {
            panic!("expected a close");
        };
        assert_eq!(reason.code, Disconnect::BAD_REQUEST.code);
        assert!(
            reason
                .reason
                .starts_with("bad request: invalid command JSON"),
            "{reason:?}"
        );
        assert_eq!(task.await.unwrap(), Some(reason));
    }

    /// A [`ChannelWire`] of a client that only receives.
    struct UniChannelWire(ChannelWire);

    impl Wire for UniChannelWire {
        type Frame = String;

        const UNIDIRECTIONAL: bool = true;

        async fn recv(&mut self) -> Incoming<String> {
            self.0.recv().await
        }

        async fn send(&mut self, frame: Bytes) -> Result<(), ()> {
            self.0.send(frame).await
        }

        async fn close(&mut self, reason: &Disconnect) {
            self.0.close(reason).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_unidirectional_client_is_pinged_without_awaiting_pongs() {
        let node = node(Config::default());
        let (_to_server, incoming) = mpsc::channel::<String>(16);
        let (outgoing, mut from_server) = mpsc::channel(16);
        let loop_node = node.clone();
        let task = tokio::spawn(async move {
            let node = loop_node;
            let queue = Arc::new(ClientQueue::new(node.config().client_queue_max_bytes));
            let control = Arc::new(ControlInbox::new(8));
            let mut session = Session::new(
                node.clone(),
                queue.clone(),
                control.clone(),
                Transport::UniWebSocket,
            );
            session
                .connect_unidirectional(Default::default())
                .await
                .unwrap();
            let mut wire = UniChannelWire(ChannelWire { incoming, outgoing });
            drive(&node, &mut session, &queue, &mut wire, &control).await
        });
        let connect = next_frame(&mut from_server).await;
        assert!(connect.contains(r#""connect""#), "{connect}");
        // Many ping intervals, each longer than the pong timeout: pings keep coming, and the
        // client, which cannot answer, stays connected.
        let config = node.config();
        assert!(config.ping_interval() > config.pong_timeout());
        for _ in 0..5 {
            assert_eq!(next_frame(&mut from_server).await, "{}");
        }
        node.shutdown_token().cancel();
        assert_eq!(from_server.recv().await, Some(Err(Disconnect::SHUTDOWN)));
        assert_eq!(task.await.unwrap(), Some(Disconnect::SHUTDOWN));
    }
}

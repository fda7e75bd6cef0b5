//! Pipelined publishing: one task per shard sends every queued publication in one round trip.
//!
//! A publication's place in its channel's order is fixed when it enters the shard's queue: the
//! task takes the queue in order and sends each batch as one `MULTI`/`EXEC` of script calls (and
//! plain `PUBLISH`es for channels without history), and starts the next batch only once the
//! previous one is answered. So a client may keep many publishes in flight and still see them
//! stored and delivered in the order it sent them, at one Redis round trip per batch instead of
//! one per publication.
//!
//! Why `MULTI`/`EXEC`: Redis runs a transaction without interleaving other clients, so a batch
//! finds the publish script loaded for all its calls or for none (another node may load it, or an
//! operator flush the script cache, at any moment). A `NOSCRIPT` batch therefore executed nothing
//! and is sent again whole after loading the script, keeping its order. A batch lost with its
//! connection likewise ran completely or not at all.
//!
//! Publishes with an idempotency key travel the same queue (their scripts check and remember the
//! key), so they keep their place in the channel's order too.
//!
//! On Redis Cluster a batch cannot be one transaction (its channels live on different masters):
//! it is sent as one pipeline per channel, all at once, each to the master of the channel's
//! slot, and the next batch waits for all of them, so each channel keeps its order. The script
//! travels with each call (`EVAL`), so no master can lack it, and the cluster client never
//! resends a call, so a publication lost with its connection was stored once or not at all.
//!
//! With a replica wait, each answered batch is followed by `WAIT <replicas> <timeout>` on the
//! same connection: its publications are acknowledged only once that many replicas hold them,
//! and answered "not available" otherwise (they may still have been delivered and may survive:
//! the caller retries, with an idempotency key if a repeat matters). One more round trip per
//! batch, not per publication. On Redis Cluster `WAIT` has no key, and what it waits for is
//! the writes of the connection it arrives on, so it ends each channel's pipeline: the cluster
//! client sends a pipeline whole to the master of its first keyed command's slot, so the `WAIT`
//! runs on that master's connection right after the channel's writes (a `WAIT` sent on its own
//! could reach another master after a slot map change, and confirm nothing). No extra round
//! trip, but one `WAIT` per channel of a batch, and a channel's pipeline is answered only once
//! its replicas confirm.

use std::time::Duration;

use redis::{Cmd, Script, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::keys::PUBLISH_SCRIPT;
use super::link::Link;
use super::CALL_TIMEOUT;
use crate::engine::broker::BrokerError;
use crate::engine::idempotency::Idempotent;
use crate::protocol::StreamPosition;

/// Most publications queued for one shard. Beyond it, `submit` refuses (the caller awaits
/// `publish` instead, which waits for room): a bound on memory, and a few batches of work.
pub(super) const PUBLISH_QUEUE: usize = 1024;
/// Most publications in one batch, so one transaction holds Redis for a few milliseconds at most.
const MAX_BATCH: usize = 256;

/// What a publish resolves to (without an idempotency key, always `Published`).
type Outcome = Result<Idempotent, BrokerError>;

/// What the command of a publish replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// Nothing to read (a plain `PUBLISH`: not stored).
    Live,
    /// `{offset, epoch}`: the publication's place in its stream.
    Stored,
    /// `{offset, epoch, repeated}` of an idempotent publish; an empty epoch: not stored.
    Once,
}

/// A publication waiting for its shard's next batch.
pub(super) struct PublishRequest {
    /// The command that stores and publishes it (a publish script call or a plain `PUBLISH`).
    command: Cmd,
    /// How to read its reply.
    reply_kind: Reply,
    /// When its caller stops waiting: past it, the publication is refused instead of sent.
    deadline: Instant,
    reply: oneshot::Sender<Outcome>,
    /// On Redis Cluster, its channel: requests of one channel are sent in one pipeline.
    group: Option<String>,
}

/// The result of a publish request, once its batch is answered.
pub(super) struct PublishAnswer(oneshot::Receiver<Outcome>);

impl PublishRequest {
    /// A request to run `command`, whose reply reads as `reply_kind`. Its caller waits at most
    /// the engine's call timeout from now.
    pub(super) fn new(command: Cmd, reply_kind: Reply) -> (PublishRequest, PublishAnswer) {
        let (reply, answer) = oneshot::channel();
        let request = PublishRequest {
            command,
            reply_kind,
            deadline: Instant::now() + CALL_TIMEOUT,
            reply,
            group: None,
        };
        (request, PublishAnswer(answer))
    }

    /// The request, sent in the pipeline of `group` (on Redis Cluster: its channel).
    pub(super) fn in_group(mut self, group: Option<String>) -> PublishRequest {
        self.group = group;
        self
    }

    /// When the caller stops waiting.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl PublishAnswer {
    /// Waits for the batch holding this publication; its stream position, if stored. Always
    /// ends: the task answers every request by its deadline, or drops it on shutdown.
    pub(super) async fn outcome(self) -> Result<Option<StreamPosition>, BrokerError> {
        self.once().await.map(Idempotent::into_position)
    }

    /// [`outcome`](Self::outcome), telling a repeated idempotency key from a new one.
    pub(super) async fn once(self) -> Outcome {
        self.0.await.unwrap_or_else(|_| {
            Err(BrokerError::Unavailable(
                "Redis publisher stopped (shutting down)".into(),
            ))
        })
    }
}

/// Sends one shard's queued publications, a batch per round trip, until shutdown.
pub(super) struct Publisher {
    pub(super) commands: Link,
    /// Replicas that must hold a batch before it is acknowledged, and how long to wait for them.
    pub(super) wait: Option<(u32, Duration)>,
    pub(super) shutdown: CancellationToken,
}

impl Publisher {
    /// Serves `queue` until shutdown (then refuses what is still queued) or until every sender is
    /// gone.
    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<PublishRequest>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let received = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                received = queue.recv_many(&mut batch, MAX_BATCH) => received,
            };
            if received == 0 {
                return;
            }
            self.send_batch(&mut batch).await;
        }
        queue.close();
        while let Ok(request) = queue.try_recv() {
            let _ = request
                .reply
                .send(Err(BrokerError::Unavailable("shutting down".into())));
        }
    }

    /// Sends `batch` (emptying it) and answers each request.
    async fn send_batch(&mut self, batch: &mut Vec<PublishRequest>) {
        let now = Instant::now();
        // A request whose caller has given up is refused, not sent: a publish reported failed
        // must not be delivered later.
        let (expired, live): (Vec<_>, Vec<_>) = batch.drain(..).partition(|r| r.deadline <= now);
        for request in expired {
            let _ = request.reply.send(Err(BrokerError::Unavailable(
                "Redis did not take the publication in time".into(),
            )));
        }
        let Some(deadline) = live.iter().map(|r| r.deadline).min() else {
            return;
        };
        if live.iter().any(|r| r.group.is_some()) {
            self.send_grouped(live, deadline).await;
            return;
        }
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        let mut waiting = Vec::with_capacity(live.len());
        for request in live {
            pipe.add_command(request.command);
            waiting.push((request.reply_kind, request.reply));
        }
        let mut executed = self.execute(&pipe, waiting.len(), deadline).await;
        if let (Ok(_), Some((replicas, timeout))) = (&executed, self.wait) {
            if let Err(reason) = self.wait_for_replicas(replicas, timeout, deadline).await {
                executed = Err(reason);
            }
        }
        answer(waiting, executed);
    }

    /// Sends `requests` as one pipeline per group (on Redis Cluster: per channel, so per slot),
    /// all at once, and answers each request.
    async fn send_grouped(&mut self, requests: Vec<PublishRequest>, deadline: Instant) {
        let mut groups: Vec<Vec<PublishRequest>> = Vec::new();
        let mut index: std::collections::HashMap<Option<String>, usize> = Default::default();
        for request in requests {
            let at = *index.entry(request.group.clone()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[at].push(request);
        }
        let wait = self.wait;
        let sends = groups.into_iter().map(|group| {
            let mut conn = self.commands.clone();
            async move {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                let mut waiting = Vec::with_capacity(group.len());
                for request in group {
                    pipe.add_command(request.command);
                    waiting.push((request.reply_kind, request.reply));
                }
                // The wait ends the pipeline, so it runs on the channel's master, after its
                // writes, on the same connection (see the module doc).
                if let Some((replicas, timeout)) = wait {
                    pipe.add_command(wait_command(replicas, timeout));
                }
                let executed = within(deadline, pipe.query_async::<Vec<Value>>(&mut conn))
                    .await
                    .and_then(|mut values| {
                        if let Some((replicas, _)) = wait {
                            let confirmed = values.pop().unwrap_or(Value::Nil);
                            confirmed_by(replicas, confirmed)?;
                        }
                        if values.len() != waiting.len() {
                            return Err(format!(
                                "Redis answered {} of {} publications",
                                values.len(),
                                waiting.len()
                            ));
                        }
                        Ok(values)
                    });
                answer(waiting, executed);
            }
        });
        futures_util::future::join_all(sends).await;
    }

    /// Waits (until `timeout`, and at most until `deadline`) for `replicas` replicas to hold
    /// everything this connection wrote.
    async fn wait_for_replicas(
        &mut self,
        replicas: u32,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(), String> {
        let wait = wait_command(replicas, timeout);
        let confirmed = within(deadline, wait.query_async(&mut self.commands)).await?;
        confirmed_by(replicas, confirmed)
    }

    /// Runs the transaction by `deadline`, loading the script once if Redis lost it (then the
    /// transaction ran nothing, see the module doc). Returns one reply per command.
    async fn execute(
        &mut self,
        pipe: &redis::Pipeline,
        commands: usize,
        deadline: Instant,
    ) -> Result<Vec<Value>, String> {
        let mut loaded = false;
        loop {
            let values =
                within(deadline, pipe.query_async::<Vec<Value>>(&mut self.commands)).await?;
            if values.len() != commands {
                return Err(format!(
                    "Redis answered {} of {commands} publications",
                    values.len()
                ));
            }
            if loaded || !values.iter().any(is_noscript) {
                return Ok(values);
            }
            tracing::info!("Redis lost the publish script (restart or flush); loading it");
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(PUBLISH_SCRIPT);
            let hash: String = within(deadline, load.query_async(&mut self.commands)).await?;
            if hash != Script::new(PUBLISH_SCRIPT).get_hash() {
                return Err("Redis loaded the publish script under another hash".into());
            }
            loaded = true;
        }
    }
}

/// A publication's way back to its caller, with how to read its reply.
type Waiting = (Reply, oneshot::Sender<Outcome>);

/// Answers each of `waiting` from its reply in `executed`, or all with its failure.
fn answer(waiting: Vec<Waiting>, executed: Result<Vec<Value>, String>) {
    match executed {
        Ok(values) => {
            for ((reply_kind, reply), value) in waiting.into_iter().zip(values) {
                let _ = reply.send(outcome(reply_kind, value));
            }
        }
        Err(reason) => {
            for (_, reply) in waiting {
                let _ = reply.send(Err(BrokerError::Unavailable(reason.clone())));
            }
        }
    }
}

/// `WAIT <replicas> <timeout>`: blocks the connection until that many replicas hold everything
/// it wrote, or the timeout passes; answers how many do.
fn wait_command(replicas: u32, timeout: Duration) -> Cmd {
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(timeout.as_millis().max(1) as u64);
    wait
}

/// Whether the reply of a [`wait_command`] counts `replicas` replicas.
fn confirmed_by(replicas: u32, reply: Value) -> Result<(), String> {
    if let Value::ServerError(e) = &reply {
        return Err(format!("Redis refused the replica wait: {e}"));
    }
    let confirmed: u32 = redis::from_redis_value(reply)
        .map_err(|e| format!("unexpected replica wait reply: {e}"))?;
    if confirmed < replicas {
        return Err(format!(
            "only {confirmed} of {replicas} Redis replicas confirmed the publication in time"
        ));
    }
    Ok(())
}

/// Runs a Redis call until `deadline`, describing a failure.
async fn within<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("Redis call timed out".into()),
    }
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// What one command's reply means for its publish.
fn outcome(reply_kind: Reply, value: Value) -> Outcome {
    if let Value::ServerError(e) = &value {
        return Err(BrokerError::Unavailable(format!("Redis: {e}")));
    }
    let unexpected =
        |e: redis::ParsingError| BrokerError::Unavailable(format!("unexpected publish reply: {e}"));
    match reply_kind {
        Reply::Live => Ok(Idempotent::Published(None)),
        Reply::Stored => {
            let (offset, epoch): (u64, String) =
                redis::from_redis_value(value).map_err(unexpected)?;
            Ok(Idempotent::Published(Some(StreamPosition {
                offset,
                epoch,
            })))
        }
        Reply::Once => {
            let (offset, epoch, repeated): (u64, String, u8) =
                redis::from_redis_value(value).map_err(unexpected)?;
            let position = (!epoch.is_empty()).then_some(StreamPosition { offset, epoch });
            Ok(if repeated == 1 {
                Idempotent::Repeated(position)
            } else {
                Idempotent::Published(position)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::engine::history::Retention;
    use crate::engine::idempotency::IdempotencyKey;
    use crate::engine::redis::keys::{live_publish, publish_call, publish_once_call, ScriptRef};

    /// A throwaway redis-server on a free loopback port, killed on drop.
    struct Server {
        child: Child,
        url: String,
    }

    impl Server {
        async fn start() -> Server {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Server {
                child,
                url: format!("redis://127.0.0.1:{port}"),
            }
        }

        async fn connection(&self) -> Link {
            Link::fixed(&self.url, None)
                .await
                .expect("redis-server answers")
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    const RETENTION: Retention = Retention {
        size: 1000,
        ttl: Duration::from_secs(60),
    };

    /// Starts a publisher on `server`; returns its queue.
    async fn publisher(server: &Server) -> (mpsc::Sender<PublishRequest>, CancellationToken) {
        let shutdown = CancellationToken::new();
        let (queue, requests) = mpsc::channel(PUBLISH_QUEUE);
        let publisher = Publisher {
            commands: server.connection().await,
            wait: None,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(publisher.run(requests));
        (queue, shutdown)
    }

    /// Queues `count` stored publications to `channel` at once; returns their answers in order.
    fn submit_many(
        queue: &mpsc::Sender<PublishRequest>,
        channel: &str,
        count: usize,
    ) -> Vec<PublishAnswer> {
        let hash = Script::new(PUBLISH_SCRIPT).get_hash().to_string();
        (0..count)
            .map(|n| {
                let call = publish_call(
                    ScriptRef::Sha(&hash),
                    "t",
                    channel,
                    &format!("{{\"n\":{n}}}"),
                    RETENTION,
                );
                let (request, answer) = PublishRequest::new(call, Reply::Stored);
                assert!(queue.try_send(request).is_ok(), "room in the queue");
                answer
            })
            .collect()
    }

    async fn offsets(answers: Vec<PublishAnswer>) -> Vec<u64> {
        let mut offsets = Vec::new();
        for answer in answers {
            let position = answer.outcome().await.expect("published").expect("stored");
            offsets.push(position.offset);
        }
        offsets
    }

    #[tokio::test]
    async fn queued_publications_keep_their_order_across_a_lost_script() {
        let server = Server::start().await;
        let (queue, shutdown) = publisher(&server).await;
        // The script was never loaded: the first batch finds NOSCRIPT, loads it, runs again.
        let first = submit_many(&queue, "feed", 600);
        assert_eq!(offsets(first).await, (1..=600).collect::<Vec<u64>>());
        // An operator flushes the script cache: still in order, no gap, no duplicate.
        let mut conn = server.connection().await;
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async::<()>(&mut conn)
            .await
            .expect("flushed");
        let second = submit_many(&queue, "feed", 300);
        assert_eq!(offsets(second).await, (601..=900).collect::<Vec<u64>>());
        let stored: u64 = redis::cmd("XLEN")
            .arg("t.stream.feed")
            .query_async(&mut conn)
            .await
            .expect("a stream");
        assert_eq!(stored, 900);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_publication_no_replica_confirms_is_not_acknowledged() {
        let server = Server::start().await;
        let shutdown = CancellationToken::new();
        let (queue, requests) = mpsc::channel(PUBLISH_QUEUE);
        let publisher = Publisher {
            commands: server.connection().await,
            wait: Some((1, Duration::from_millis(50))),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(publisher.run(requests));
        // A lone server has no replica: WAIT answers 0 after its timeout.
        for answer in submit_many(&queue, "feed", 3) {
            match answer.outcome().await {
                Err(BrokerError::Unavailable(reason)) => {
                    assert!(reason.contains("replicas"), "{reason}")
                }
                other => panic!("acknowledged without a replica: {other:?}"),
            }
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn live_and_expired_publications() {
        let server = Server::start().await;
        let (queue, shutdown) = publisher(&server).await;
        let (live, answer) =
            PublishRequest::new(live_publish("t", "feed", "{}", false), Reply::Live);
        assert!(queue.try_send(live).is_ok(), "room");
        assert!(matches!(answer.outcome().await, Ok(None)));
        // A caller that already gave up is refused, and nothing is stored for it.
        let hash = Script::new(PUBLISH_SCRIPT).get_hash().to_string();
        let (mut late, answer) = PublishRequest::new(
            publish_call(ScriptRef::Sha(&hash), "t", "feed", "{}", RETENTION),
            Reply::Stored,
        );
        late.deadline = Instant::now() - Duration::from_millis(1);
        assert!(queue.try_send(late).is_ok(), "room");
        assert!(matches!(
            answer.outcome().await,
            Err(BrokerError::Unavailable(_))
        ));
        assert_eq!(offsets(submit_many(&queue, "feed", 1)).await, vec![1]);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_stopped_redis_answers_unavailable_and_shutdown_refuses_the_rest() {
        let mut server = Server::start().await;
        let (queue, shutdown) = publisher(&server).await;
        assert_eq!(offsets(submit_many(&queue, "feed", 1)).await, vec![1]);
        let _ = server.child.kill();
        let _ = server.child.wait();
        for answer in submit_many(&queue, "feed", 10) {
            assert!(matches!(
                answer.outcome().await,
                Err(BrokerError::Unavailable(_))
            ));
        }
        shutdown.cancel();
        // After shutdown a publication is refused at the queue, or answered: never left hanging.
        let (request, answer) =
            PublishRequest::new(live_publish("t", "feed", "{}", false), Reply::Live);
        if queue.try_send(request).is_ok() {
            assert!(answer.outcome().await.is_err());
        }
    }

    #[tokio::test]
    async fn a_repeated_idempotency_key_publishes_once_even_in_one_batch() {
        let server = Server::start().await;
        let (queue, shutdown) = publisher(&server).await;
        let hash = Script::new(PUBLISH_SCRIPT).get_hash().to_string();
        let key = IdempotencyKey {
            key: "k".into(),
            window: Duration::from_secs(60),
        };
        let submit = |command| {
            let (request, answer) = PublishRequest::new(command, Reply::Once);
            assert!(queue.try_send(request).is_ok(), "room in the queue");
            answer
        };
        let once = |channel, retention| {
            publish_once_call(ScriptRef::Sha(&hash), "t", channel, "{}", retention, &key)
        };
        // Neither script is loaded yet: the batch finds NOSCRIPT, loads both, runs again.
        let answers = [
            submit(once("feed", Some(RETENTION))),
            submit(once("feed", Some(RETENTION))),
            submit(once("live", None)),
            submit(once("live", Some(RETENTION))),
            submit(once("other", Some(RETENTION))),
        ];
        let mut outcomes = Vec::new();
        for answer in answers {
            outcomes.push(answer.once().await.expect("answered"));
        }
        let at = |offset| {
            Some(StreamPosition {
                offset,
                epoch: outcomes[0].clone().into_position().unwrap().epoch,
            })
        };
        assert_eq!(outcomes[0], Idempotent::Published(at(1)));
        assert_eq!(outcomes[1], Idempotent::Repeated(at(1)));
        assert_eq!(outcomes[2], Idempotent::Published(None));
        assert_eq!(outcomes[3], Idempotent::Repeated(None));
        assert!(matches!(&outcomes[4], Idempotent::Published(Some(p)) if p.offset == 1));
        let mut conn = server.connection().await;
        let stored: u64 = redis::cmd("XLEN")
            .arg("t.stream.feed")
            .query_async(&mut conn)
            .await
            .expect("a stream");
        assert_eq!(stored, 1);
        let ttl: i64 = redis::cmd("PTTL")
            .arg("t.idem.4.feed.k")
            .query_async(&mut conn)
            .await
            .expect("a key");
        assert!(
            ttl > 0 && ttl <= 60_000,
            "the key expires with its window: {ttl}"
        );
        shutdown.cancel();
    }
}

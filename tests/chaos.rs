//! Chaos: two nodes on one real redis-server, one of them reaching Redis through a fault-injecting
//! TCP proxy made here (connections reset, traffic blackholed, then restored) while publications
//! flow. Named invariants, checked after the faults:
//!
//! - **durable**: every publication the API acknowledged is in the channel's history, once, in
//!   offset order, with its data;
//! - **ordered**: no subscriber receives a publication twice or out of order;
//! - **told, not lost**: a subscriber of the faulty node that follows the protocol (on the
//!   unsubscribe push 2500 or a reconnect-with-recovery close, it resubscribes with its position)
//!   ends with every acknowledged publication;
//! - **alive**: both nodes answer `/health`, and serve clients afterwards.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::follower::{assert_durable, Follower, Numbered, Refused};
use common::redis_server::*;
use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
const PASS: u8 = 0;
/// Accepts and holds connections, forwards nothing.
const BLACKHOLE: u8 = 1;
/// Forwards each chunk 50 ms late.
const DELAY: u8 = 2;

/// A TCP proxy to `target` whose faults the test switches: pass, blackhole, or reset every
/// connection open now.
struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
}

impl FaultProxy {
    async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let (resets, _) = watch::channel(0u64);
        let (m, r) = (mode.clone(), resets.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (mode, mut reset) = (m.clone(), r.subscribe());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = pipe(&mut cr, &mut sw, &mode);
                    let down = pipe(&mut sr, &mut cw, &mode);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = reset.changed() => {}
                    }
                    // Dropping both halves ends the connection for both sides.
                });
            }
        });
        FaultProxy { addr, mode, resets }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

/// Copies `from` to `to` while the mode lets it; in blackhole mode, holds what it read.
async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mode: &AtomicU8,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::io::AsyncReadExt::read(from, &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while mode.load(Ordering::SeqCst) == BLACKHOLE {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if mode.load(Ordering::SeqCst) == DELAY {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_faults_on_one_node_lose_and_repeat_nothing() {
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let prefix = unique_prefix();
    let node = |url: String| {
        let prefix = prefix.clone();
        move |c: &mut switchboard::Config| {
            c.redis = vec![url];
            c.redis_prefix = prefix;
            c.presence_ttl = 2;
        }
    };
    let faulty = TestServer::with(node(format!("redis://{}", proxy.addr))).await;
    let steady = TestServer::with(node(redis.url())).await;
    let mut on_faulty = Follower::start(&faulty.ws_url(), "ledger").await;
    let mut on_steady = Follower::start(&steady.ws_url(), "ledger").await;

    // 300 numbered publications through the steady node's API, while the faulty node's Redis
    // connections are reset, then blackholed, then restored.
    let publishing = Numbered::start(steady.addr, "ledger", 300, Refused::Fail);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.set(BLACKHOLE);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set(PASS);
    proxy.reset_all();
    let (acked, _) = publishing.finish().await;
    assert_eq!(acked.len(), 300);

    // durable: the history holds every acknowledged publication, once, in order.
    let (_, history) = steady
        .api("history", json!({"channel": "ledger", "limit": -1}))
        .await;
    assert_durable(&history, &acked);

    // told, not lost; ordered.
    for (name, follower) in [("faulty", &mut on_faulty), ("steady", &mut on_steady)] {
        follower.assert_followed(name, "ledger", &acked).await;
    }

    // The faults did break the faulty node's stream (or there was nothing to check).
    assert!(
        on_faulty.recoveries >= 1,
        "the faulty node's subscriber was never told"
    );
    // alive.
    for server in [&faulty, &steady] {
        let (status, _) = http_raw(
            server.addr,
            &format!(
                "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                server.addr
            ),
        )
        .await;
        assert_eq!(status, 200);
    }
    let mut late = faulty.client().await;
    late.subscribe("after").await;
    steady
        .api("publish", json!({"channel": "after", "data": 1}))
        .await;
    assert_eq!(late.next_publication().await["pub"]["data"], 1);
    faulty.stop().await;
    steady.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_network_faults_lose_and_repeat_nothing() {
    // Pings every second, a pong due within one: a half-open connection is found quickly.
    let server = TestServer::with(|c| {
        c.ping_interval = 1;
        c.pong_timeout = 1;
    })
    .await;
    let proxy = FaultProxy::start(server.addr).await;
    let url = format!("ws://{}/connection/websocket", proxy.addr);
    let mut followers = Vec::new();
    for _ in 0..3 {
        let mut follower = Follower::start(&url, "ledger").await;
        follower.reconnects_on_drop = true;
        followers.push(follower);
    }
    let publishing = Numbered::start(server.addr, "ledger", 250, Refused::Fail);
    // The followers read while the network misbehaves: they run on their own tasks.
    let top = 250;
    let running: Vec<_> = followers
        .into_iter()
        .map(|mut follower| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(40), follower.follow("ledger", top))
                    .await
                    .unwrap_or_else(|_| panic!("reached offset {} of {top}", follower.last));
                // What it saw, and its connection kept up (pings answered) from now on.
                let seen = (follower.seen.clone(), follower.recoveries);
                (seen, follower.stay_connected())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(DELAY);
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.set(PASS);
    proxy.reset_all(); // cut: every client connection ends without a close frame
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.set(BLACKHOLE); // half-open: sockets stay, nothing flows; pings go unanswered
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.set(PASS);
    let (acked, _) = publishing.finish().await;
    assert_eq!(*acked.keys().last().unwrap(), top);
    let mut alive = Vec::new();
    for running in running {
        let ((seen, recoveries), connected) = running.await.unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "ordered, once");
        let missing: Vec<_> = acked.keys().filter(|o| !seen.contains(o)).collect();
        assert!(missing.is_empty(), "missing {missing:?}");
        // The cut ended every connection: each follower reconnected and recovered.
        assert!(recoveries >= 1, "a follower was never told");
        alive.push(connected);
    }
    // No ghost connections: the server ends with the followers' live connections only.
    assert!(
        eventually(|| async {
            server
                .metrics()
                .await
                .contains("switchboard_connections 3\n")
        })
        .await,
        "{}",
        server.metrics().await
    );
    drop(alive);
    server.stop().await;
}

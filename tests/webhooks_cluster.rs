//! Webhooks with several nodes on one real redis-server: occupancy of the whole cluster, and a
//! killed node's connections reported by a node that lives on.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis_server::*;
use common::webhook_receiver::*;
use common::*;
use switchboard::hooks::webhook::NODE_LOST;

async fn node(redis: &RedisServer, prefix: &str, receiver: &Receiver) -> TestServer {
    let (url, prefix, endpoint) = (redis.url(), prefix.to_string(), receiver.url());
    TestServer::with(move |c| {
        c.redis = vec![url];
        c.redis_prefix = prefix;
        c.presence_ttl = 2;
        c.webhook_endpoint = Some(endpoint);
        c.webhook_secret = Some(SECRET.into());
        c.webhook_batch_delay = Duration::from_millis(5);
    })
    .await
}

/// Starts the real binary (so it can be killed with SIGKILL) as a node on `redis` with webhooks
/// to `receiver` and its data in `dir`.
async fn start_binary(
    redis: &RedisServer,
    prefix: &str,
    receiver: &Receiver,
    dir: &std::path::Path,
) -> (KillOnDrop, SocketAddr) {
    let port = free_port();
    let child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--port", &port.to_string()])
            .args(["--redis", &redis.url(), "--redis-prefix", prefix])
            .args(["--presence-ttl", "2", "--data-dir"])
            .arg(dir)
            .args(["--webhook-endpoint", &receiver.url()])
            .args(["--webhook-secret", SECRET, "--webhook-batch-delay", "5ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(eventually(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await);
    (child, addr)
}

/// Members of a channel's set of occupying nodes in Redis.
async fn occupying_nodes(redis: &RedisServer, prefix: &str, channel: &str) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SCARD")
        .arg(format!("{prefix}.webhook.occupied.{channel}"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupied_and_vacated_describe_the_whole_cluster() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let receiver = Receiver::start().await;
    let a = node(&redis, &prefix, &receiver).await;
    let b = node(&redis, &prefix, &receiver).await;
    let on_a = a.sdk().await;
    let room_a = sdk_subscribe(&on_a, "room").await;
    assert!(eventually(|| async { receiver.of("channel_occupied").len() == 1 }).await);
    let on_b = b.sdk().await;
    let room_b = sdk_subscribe(&on_b, "room").await;
    assert!(eventually(|| async { occupying_nodes(&redis, &prefix, "room").await == 2 }).await);
    // The first node's last subscriber leaves: the channel is still occupied on the other.
    drop((room_a, on_a));
    assert!(eventually(|| async { occupying_nodes(&redis, &prefix, "room").await == 1 }).await);
    drop((room_b, on_b));
    assert!(
        eventually(|| async { receiver.of("channel_vacated").len() == 1 }).await,
        "{:#?}",
        receiver.events()
    );
    assert!(eventually(|| async { receiver.of("disconnect").len() == 2 }).await);
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.of("channel_occupied").len(), 1);
    assert_eq!(receiver.of("channel_vacated").len(), 1);
    assert_eq!(receiver.of("subscribe").len(), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_connections_are_reported_by_a_live_node() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let receiver = Receiver::start().await;
    let survivor = node(&redis, &prefix, &receiver).await;
    let alive = survivor.sdk().await;
    let _hall = sdk_subscribe(&alive, "hall").await;
    // The doomed node is the real binary, so it can be killed with SIGKILL.
    let dir = temp_dir();
    let (mut doomed, addr) = start_binary(&redis, &prefix, &receiver, &dir).await;
    let mut ghosts = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let ghost = sdk_client(&format!("ws://{addr}/connection/websocket")).await;
        let hall = sdk_subscribe(&ghost, "hall").await;
        let solo = sdk_subscribe(&ghost, "solo").await;
        ghosts.push(ghost.client_id().unwrap());
        sockets.push((ghost, hall, solo));
    }
    assert!(eventually(|| async { receiver.of("subscribe").len() == 7 }).await);
    assert!(eventually(|| async { occupying_nodes(&redis, &prefix, "solo").await == 1 }).await);
    doomed.kill(); // SIGKILL: no session ends, no event is emitted
    drop(sockets);
    assert!(
        eventually(|| async { receiver.of("disconnect").len() == 3 }).await,
        "the survivor reports the dead node's connections: {:#?}",
        receiver.events()
    );
    let events = receiver.events();
    for ghost in &ghosts {
        let disconnect = receiver
            .of("disconnect")
            .into_iter()
            .find(|e| e["client"] == ghost.as_str())
            .unwrap();
        assert_eq!(disconnect["code"], NODE_LOST, "{disconnect}");
        let unsubscribed: Vec<_> = receiver
            .of("unsubscribe")
            .into_iter()
            .filter(|e| e["client"] == ghost.as_str())
            .map(|e| e["channel"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(unsubscribed.len(), 2, "{events:#?}");
        assert!(position(&events, "unsubscribe", ghost) < position(&events, "disconnect", ghost));
    }
    assert!(eventually(|| async { receiver.of("channel_vacated").len() == 1 }).await);
    // "hall" still has the survivor's subscriber: only "solo" is vacated.
    assert_eq!(receiver.of("channel_vacated")[0]["channel"], "solo");
    assert_eq!(
        receiver
            .state
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    drop(alive);
    let _ = std::fs::remove_dir_all(dir);
    survivor.stop().await;
}

/// Events waiting in the shared queue in Redis, over every lane.
async fn queued_in_redis(redis: &RedisServer, prefix: &str) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut total = 0;
    for lane in 0..16 {
        let len: usize = redis::cmd("XLEN")
            .arg(format!("{prefix}.webhook.queue.{lane}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        total += len;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_killed_node_queued_in_redis_are_delivered_by_another() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let receiver = Receiver::start().await;
    // The backend is down while the doomed node runs.
    receiver
        .state
        .fail_first
        .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    // The doomed node starts first and so holds the shared lanes.
    let dir = temp_dir();
    let (mut doomed, addr) = start_binary(&redis, &prefix, &receiver, &dir).await;
    let survivor = node(&redis, &prefix, &receiver).await;
    let mut ids = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let client = sdk_client(&format!("ws://{addr}/connection/websocket")).await;
        let hall = sdk_subscribe(&client, "hall").await;
        ids.push(client.client_id().unwrap());
        sockets.push((client, hall));
    }
    // Three connects, three subscribes, one occupied: all in Redis, none delivered.
    assert!(eventually(|| async { queued_in_redis(&redis, &prefix).await == 7 }).await);
    doomed.kill();
    drop(sockets);
    // Its disk is gone too: only Redis remembers.
    std::fs::remove_dir_all(&dir).unwrap();
    receiver
        .state
        .fail_first
        .store(0, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(|| async { receiver.of("disconnect").len() == 3 }).await,
        "{:#?}",
        receiver.events()
    );
    let events = receiver.events();
    for id in &ids {
        assert!(position(&events, "connect", id) < position(&events, "subscribe", id));
        assert!(position(&events, "subscribe", id) < position(&events, "unsubscribe", id));
        assert!(position(&events, "unsubscribe", id) < position(&events, "disconnect", id));
    }
    assert!(eventually(|| async { receiver.of("channel_vacated").len() == 1 }).await);
    assert_eq!(receiver.of("channel_occupied").len(), 1);
    assert!(eventually(|| async { queued_in_redis(&redis, &prefix).await == 0 }).await);
    survivor.stop().await;
}

//! Several nodes on one real redis-server (started here on a free loopback port).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis_server::*;
use common::*;
use serde_json::{json, Value};

async fn node(redis: &RedisServer, prefix: &str, name: &str) -> TestServer {
    let (url, prefix, name) = (redis.url(), prefix.to_string(), name.to_string());
    TestServer::with(move |c| {
        c.redis = vec![url];
        c.redis_prefix = prefix;
        c.name = Some(name);
        c.presence_ttl = 2;
    })
    .await
}

async fn publish(server: &TestServer, channel: &str, data: Value) -> Value {
    server
        .api("publish", json!({"channel": channel, "data": data}))
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_delivery_history_presence_and_recovery() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let c = node(&redis, &prefix, "c").await;
    let mut on_a = a.client().await;
    on_a.subscribe("news").await;
    let mut on_b = b.client().await;
    on_b.subscribe("news").await;
    assert!(
        eventually(|| async {
            let (_, p) = c.api("presence_stats", json!({"channel": "news"})).await;
            p["result"]["num_clients"] == 2
        })
        .await,
        "presence agrees across nodes"
    );
    assert!(
        topic_listeners(&redis, &format!("{prefix}.pub.news"), 2).await,
        "nodes a and b listen to the channel"
    );
    let r = on_b
        .call(
            "publish",
            json!({"channel": "news", "data": {"from": "client on b"}}),
        )
        .await;
    assert_eq!(r["publish"], json!({}));
    let api = publish(&c, "news", json!({"from": "api of c"})).await;
    assert_eq!(api["result"]["offset"], 2);
    let epoch = api["result"]["epoch"].as_str().unwrap().to_string();
    let first = on_a.next_publication().await;
    let second = on_a.next_publication().await;
    assert_eq!(first["pub"]["data"]["from"], "client on b");
    assert_eq!(first["pub"]["offset"], 1);
    assert_eq!(second["pub"]["data"]["from"], "api of c");
    assert_eq!(second["pub"]["offset"], 2);
    // History and presence are the same from every node.
    for node in [&a, &b, &c] {
        let (_, h) = node
            .api("history", json!({"channel": "news", "limit": -1}))
            .await;
        assert_eq!(h["result"]["epoch"], epoch.as_str());
        assert_eq!(h["result"]["publications"].as_array().unwrap().len(), 2);
        let (_, p) = node.api("presence", json!({"channel": "news"})).await;
        let members = p["result"]["presence"].as_object().unwrap();
        assert!(members.contains_key(&on_a.client_id) && members.contains_key(&on_b.client_id));
    }
    // All three nodes know each other.
    assert!(
        eventually(|| async {
            let (_, info) = a.api("info", json!({})).await;
            info["result"]["nodes"].as_array().map_or(0, |n| n.len()) == 3
        })
        .await
    );
    // A client drops off node A, misses two publications, and recovers them on node C.
    on_a.drop_tcp();
    publish(&b, "news", json!(3)).await;
    publish(&b, "news", json!(4)).await;
    let mut on_c = c.client().await;
    let r = on_c
        .call(
            "subscribe",
            json!({"channel": "news", "recover": true, "offset": 2, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    let data: Vec<&Value> = r["subscribe"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(data, vec![&json!(3), &json!(4)]);
    // Server API actions reach users on other nodes.
    let (_, reply) = c.api("disconnect", json!({"user": ""})).await;
    assert_eq!(
        reply["error"]["code"], 107,
        "anonymous users cannot be targeted"
    );
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_no_ghost_presence() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let survivor = node(&redis, &prefix, "survivor").await;
    // The doomed node is the real binary, so it can be killed with SIGKILL.
    let port = free_port();
    let dir = temp_dir();
    let mut doomed = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--port", &port.to_string()])
        .args(["--redis", &redis.url(), "--redis-prefix", &prefix])
        .args(["--presence-ttl", "2", "--name", "doomed", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(eventually(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await);
    let mut ghost = Client::open(&format!("ws://{addr}/connection/websocket")).await;
    ghost.connect(json!({})).await;
    ghost.subscribe("hall").await;
    let mut alive = survivor.client().await;
    alive.subscribe("hall").await;
    let count = || async {
        let (_, p) = survivor
            .api("presence_stats", json!({"channel": "hall"}))
            .await;
        p["result"]["num_clients"].as_u64().unwrap_or(99)
    };
    assert!(eventually(|| async { count().await == 2 }).await);
    assert!(
        eventually(|| async {
            let (_, info) = survivor.api("info", json!({})).await;
            info["result"]["nodes"].as_array().map_or(0, |n| n.len()) == 2
        })
        .await,
        "both nodes listed"
    );
    doomed.kill().unwrap(); // SIGKILL: no cleanup at all
    doomed.wait().unwrap();
    assert!(
        eventually(|| async { count().await == 1 }).await,
        "the dead node's member expires"
    );
    // The survivor carries on.
    publish(&survivor, "hall", json!("still here")).await;
    assert_eq!(alive.next_publication().await["pub"]["data"], "still here");
    let _ = std::fs::remove_dir_all(dir);
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_answered_and_survived() {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let mut sub = a.client().await;
    sub.subscribe("ticker").await;
    assert!(listening(&redis, &prefix, "ticker").await, "node a listens");
    let mut acked = Vec::new();
    for n in 1..=5 {
        let r = publish(&b, "ticker", json!(n)).await;
        acked.push((r["result"]["offset"].as_u64().unwrap(), n));
    }
    let epoch = publish(&b, "ticker", json!(6)).await["result"]["epoch"].clone();
    acked.push((6, 6));
    for n in 1..=6 {
        assert_eq!(sub.next_publication().await["pub"]["data"], n);
    }
    redis.stop();
    // Publishing now fails with "not available", not a hang (the request itself is bounded by
    // WAIT in `http_raw`).
    let r = publish(&b, "ticker", json!("lost")).await;
    assert_eq!(r["error"]["code"], 108, "{r}");
    // Local work that needs no Redis still runs.
    let echo = sub
        .call("rpc", json!({"method": "echo", "data": "ok"}))
        .await;
    assert_eq!(echo["rpc"]["data"], "ok");
    redis.launch().await;
    // Nodes reconnect by themselves; publications flow again to the same subscriber.
    assert!(
        eventually(|| async { publish(&b, "ticker", json!(7)).await["result"]["offset"] == 7 })
            .await,
        "publishing works again"
    );
    // Node A either got it live, or (if its pub/sub link came back after the publication) told
    // the subscriber its position has a gap; recovery then brings the missed publication.
    loop {
        let push = sub.next_push().await;
        if push["pub"]["data"] == 7 {
            break;
        }
        if push["unsubscribe"]["code"] == 2500 {
            let r = sub
                .call(
                    "subscribe",
                    json!({"channel": "ticker", "recover": true, "offset": 6, "epoch": epoch}),
                )
                .await;
            assert_eq!(r["subscribe"]["recovered"], true, "{r}");
            assert_eq!(r["subscribe"]["publications"][0]["data"], 7);
            break;
        }
    }
    // Nothing acknowledged was lost, and the epoch held.
    let (_, h) = a
        .api("history", json!({"channel": "ticker", "limit": -1}))
        .await;
    assert_eq!(h["result"]["epoch"], epoch);
    let stored: Vec<(u64, u64)> = h["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p["offset"].as_u64()?, p["data"].as_u64()?)))
        .collect();
    for pair in &acked {
        assert!(
            stored.contains(pair),
            "acknowledged {pair:?} kept: {stored:?}"
        );
    }
    // A wiped Redis loses the stream: the subscriber is told to recover, and learns it cannot.
    redis.command(&["FLUSHALL"]).await;
    publish(&b, "ticker", json!("after wipe")).await;
    let unsubscribe = loop {
        let push = sub.next_push().await;
        if let Some(u) = push.get("unsubscribe") {
            break u.clone();
        }
    };
    assert_eq!(unsubscribe["code"], 2500);
    let r = sub
        .call(
            "subscribe",
            json!({"channel": "ticker", "recover": true, "offset": 7, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["was_recovering"], true);
    assert!(
        r["subscribe"].get("recovered").is_none(),
        "not recovered: {r}"
    );
    assert_ne!(r["subscribe"]["epoch"], epoch);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_user_actions_reach_other_nodes() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let with_secret = |name: &str| {
        let (url, prefix, name) = (redis.url(), prefix.clone(), name.to_string());
        move |c: &mut switchboard::Config| {
            c.redis = vec![url];
            c.redis_prefix = prefix;
            c.name = Some(name);
            c.token_hmac_secret = Some("s".into());
            open_channels(c);
        }
    };
    let a = TestServer::with(with_secret("a")).await;
    let b = TestServer::with(with_secret("b")).await;
    let token = switchboard::auth::make_hmac_token("s", "zed", 0).unwrap();
    let mut zed = Client::open(&a.ws_url()).await;
    zed.connect(json!({"token": token})).await;
    // Both nodes listen to the control topic (subscribed asynchronously at start).
    assert!(topic_listeners(&redis, &format!("{prefix}.control"), 2).await);
    let (_, r) = b
        .api("subscribe", json!({"user": "zed", "channel": "inbox"}))
        .await;
    assert_eq!(r, json!({"result": {}}));
    assert_eq!(zed.next_push().await["channel"], "inbox");
    publish(&b, "inbox", json!("hello from b")).await;
    assert_eq!(zed.next_publication().await["pub"]["data"], "hello from b");
    let (_, r) = b.api("disconnect", json!({"user": "zed"})).await;
    assert_eq!(r, json!({"result": {}}));
    assert_eq!(zed.closed().await, (3503, "force disconnect".into()));
    a.stop().await;
    b.stop().await;
}

/// Waits until a node listens to `channel`'s topic (its pub/sub subscription is asynchronous).
async fn listening(redis: &RedisServer, prefix: &str, channel: &str) -> bool {
    topic_listeners(redis, &format!("{prefix}.pub.{channel}"), 1).await
}

/// Waits until at least `nodes` connections are subscribed to pub/sub `topic`.
async fn topic_listeners(redis: &RedisServer, topic: &str, nodes: u64) -> bool {
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    eventually(|| {
        let mut conn = conn.clone();
        async move {
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(topic)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            counts.first().is_some_and(|(_, n)| *n >= nodes)
        }
    })
    .await
}

fn offsets_and_numbers(publications: &Value) -> Vec<(u64, u64)> {
    publications
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// One client sends many publishes without waiting for replies (a bad one among them): on a
/// Redis-backed node they are pipelined, yet answered, stored and delivered in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_their_order_through_redis() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let server = node(&redis, &prefix, "a").await;
    let mut subscriber = server.client().await;
    subscriber.subscribe("feed").await;
    assert!(listening(&redis, &prefix, "feed").await, "node listens");
    let mut publisher = server.client().await;
    const COUNT: u64 = 300;
    let bad = 150;
    let mut ids = Vec::new();
    for n in 1..=COUNT {
        let channel = if n == bad { "undefined:feed" } else { "feed" };
        ids.push(
            publisher
                .send("publish", json!({"channel": channel, "data": {"n": n}}))
                .await,
        );
    }
    ids.push(
        publisher
            .send("history", json!({"channel": "feed", "limit": -1}))
            .await,
    );
    let mut replies = Vec::new();
    while replies.len() < ids.len() {
        let message = publisher.next_message().await;
        assert!(message.get("push").is_none(), "unexpected push {message}");
        replies.push(message);
    }
    let order: Vec<u64> = replies.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    let sent: Vec<u64> = ids.iter().map(|&id| id as u64).collect();
    assert_eq!(order, sent, "replies in command order");
    for (n, reply) in (1..=COUNT).zip(&replies) {
        if n == bad {
            assert_eq!(reply["error"]["code"], 102, "{reply}");
        } else {
            assert_eq!(reply["publish"], json!({}), "{reply}");
        }
    }
    let stored = offsets_and_numbers(&replies[COUNT as usize]["history"]["publications"]);
    let expected: Vec<(u64, u64)> = (1..=COUNT)
        .filter(|&n| n != bad)
        .enumerate()
        .map(|(i, n)| (i as u64 + 1, n))
        .collect();
    assert_eq!(stored, expected, "history in send order");
    for &(offset, n) in &expected {
        let push = subscriber.next_publication().await;
        assert_eq!(push["pub"]["offset"], offset);
        assert_eq!(push["pub"]["data"]["n"], n);
    }
    server.stop().await;
}

/// A backend retries a publish on another node with the same `idempotency_key`: one
/// publication, stored once, and both nodes answer the same position; a new key publishes. The
/// same for a publication without history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_holds_across_nodes() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let mut subscriber = a.client().await;
    subscriber.subscribe("news").await;
    assert!(listening(&redis, &prefix, "news").await, "node a listens");
    let keyed =
        |n: u64, key: &str| json!({"channel": "news", "data": {"n": n}, "idempotency_key": key});
    let (_, first) = a.api("publish", keyed(1, "k1")).await;
    assert_eq!(first["result"]["offset"], 1, "{first}");
    let (_, retry) = b.api("publish", keyed(1, "k1")).await;
    assert_eq!(retry, first, "node b answers what node a published");
    let (_, other) = b.api("publish", keyed(2, "k2")).await;
    assert_eq!(other["result"]["offset"], 2, "{other}");
    let live = json!({"channel": "news", "data": {"n": 0}, "skip_history": true, "idempotency_key": "live"});
    for node in [&a, &b] {
        let (_, reply) = node.api("publish", live.clone()).await;
        assert_eq!(reply["result"], json!({}), "{reply}");
    }
    let (_, marker) = a
        .api("publish", json!({"channel": "news", "data": {"n": 3}}))
        .await;
    assert_eq!(
        marker["result"]["offset"], 3,
        "nothing else was stored: {marker}"
    );
    // Delivered: 1, 2, the live one once, then the marker.
    let mut delivered = Vec::new();
    for _ in 0..4 {
        let push = subscriber.next_publication().await;
        delivered.push((
            push["pub"]["offset"].as_u64().unwrap_or(0),
            push["pub"]["data"]["n"].clone(),
        ));
    }
    assert_eq!(
        delivered,
        vec![(1, json!(1)), (2, json!(2)), (0, json!(0)), (3, json!(3))]
    );
    let (_, history) = b
        .api("history", json!({"channel": "news", "limit": -1}))
        .await;
    assert_eq!(
        offsets_and_numbers(&history["result"]["publications"]),
        vec![(1, 1), (2, 2), (3, 3)]
    );
    a.stop().await;
    b.stop().await;
}

/// A live node renews its members' presence (one round trip per shard and chunk), so they outlive
/// several TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_members_outlive_the_presence_ttl() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let (url, p) = (redis.url(), prefix.clone());
    let server = TestServer::with(move |c| {
        c.redis = vec![url];
        c.redis_prefix = p;
        // Two seconds, renewed every 0.67 s: a renewal late by a second on a loaded machine
        // (these tests run beside others) does not lose the entry.
        c.presence_ttl = 2;
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..30 {
        let mut c = server.client().await;
        c.subscribe("lasting").await;
        clients.push(c);
    }
    // Three TTLs pass: without renewal every entry would have expired.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, stats) = server
        .api("presence_stats", json!({"channel": "lasting"}))
        .await;
    assert_eq!(stats["result"]["num_clients"], 30, "{stats}");
    drop(clients);
    server.stop().await;
}

/// Connects with `token`; the connect reply, or the close code that refused it.
async fn connect_or_code(server: &TestServer, token: &str) -> Result<Client, u16> {
    let mut c = Client::open(&server.ws_url()).await;
    c.send("connect", json!({"token": token})).await;
    match c.next_event().await {
        Event::Message(m) if m.get("connect").is_some() => Ok(c),
        Event::Message(m) => panic!("unexpected answer to connect: {m}"),
        Event::Closed(code, _) => Err(code),
        Event::Dropped => Err(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_connection_limit_holds_across_nodes() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let limited = || {
        let (url, prefix) = (redis.url(), prefix.clone());
        move |c: &mut switchboard::Config| {
            c.redis = vec![url];
            c.redis_prefix = prefix;
            c.presence_ttl = 2;
            c.token_hmac_secret = Some("s".into());
            c.user_connection_limit = 2;
        }
    };
    let a = TestServer::with(limited()).await;
    let b = TestServer::with(limited()).await;
    let token = switchboard::auth::make_hmac_token("s", "dee", 0).unwrap();
    let first = connect_or_code(&a, &token).await.expect("first admitted");
    let _second = connect_or_code(&b, &token).await.expect("second admitted");
    // Two open, one on each node: a third is refused on either node.
    assert_eq!(connect_or_code(&a, &token).await.err(), Some(3504));
    assert_eq!(connect_or_code(&b, &token).await.err(), Some(3504));
    // Another user is not affected.
    let other = switchboard::auth::make_hmac_token("s", "eve", 0).unwrap();
    assert!(connect_or_code(&b, &other).await.is_ok());
    // A connection that ends is uncounted: one more is admitted, on the other node.
    first.drop_tcp();
    let mut admitted = None;
    for _ in 0..100 {
        if let Ok(client) = connect_or_code(&b, &token).await {
            admitted = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted.is_some(), "the freed place was not given again");
    // The counts outlive the presence TTL while the connections live (each node refreshes its
    // own), and a stopped node's connections no longer count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connect_or_code(&a, &token).await.err(), Some(3504));
    b.stop().await;
    let mut freed = false;
    for _ in 0..100 {
        if connect_or_code(&a, &token).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "a stopped node's connections were never uncounted");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_counted_across_nodes() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let mut on_a = a.client().await;
    on_a.subscribe("news").await;
    let mut on_b = b.client().await;
    on_b.subscribe("news").await;
    let mut also_on_b = b.client().await;
    also_on_b.subscribe("sport").await;
    let expected = json!({"result": {"channels": {
        "news": {"num_clients": 2},
        "sport": {"num_clients": 1},
    }}});
    // Each node counts every node once both have announced themselves (at start).
    for server in [&a, &b] {
        assert!(
            eventually(|| async { server.api("channels", json!({})).await.1 == expected }).await,
            "{}",
            server.api("channels", json!({})).await.1
        );
    }
    let (_, filtered) = a.api("channels", json!({"pattern": "sp*"})).await;
    assert_eq!(
        filtered,
        json!({"result": {"channels": {"sport": {"num_clients": 1}}}})
    );
    // The answers are not left behind in Redis.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}.channels.*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_went_back_gets_a_new_epoch() {
    // What a failover without the replica wait can do: the new master lacks publications the
    // old one delivered. Here the stream's top offset is set back by hand, then the node's
    // pub/sub connection is cut, as a failover cuts it.
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let a = node(&redis, &prefix, "a").await;
    let mut sub = a.client().await;
    let subscribed = sub.subscribe("ledger").await;
    let epoch = subscribed["subscribe"]["epoch"].clone();
    assert!(listening(&redis, &prefix, "ledger").await, "node a listens");
    for n in 1..=5 {
        publish(&a, "ledger", json!(n)).await;
    }
    for n in 1..=5 {
        assert_eq!(sub.next_publication().await["pub"]["data"], n);
    }
    // A master that never got offsets 3 to 5: its stream ends at 2.
    let (meta, stream) = (
        format!("{prefix}.meta.ledger"),
        format!("{prefix}.stream.ledger"),
    );
    redis.command(&["DEL", &stream]).await;
    for id in ["1-1", "2-1"] {
        redis.command(&["XADD", &stream, id, "d", "{}"]).await;
    }
    redis.command(&["HSET", &meta, "s", "2"]).await;
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    // Told to recover, the subscriber learns it cannot: offsets 3 to 5 would be given again.
    let unsubscribe = loop {
        let push = sub.next_push().await;
        if let Some(u) = push.get("unsubscribe") {
            break u.clone();
        }
    };
    assert_eq!(unsubscribe["code"], 2500);
    let r = sub
        .call(
            "subscribe",
            json!({"channel": "ledger", "recover": true, "offset": 5, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["was_recovering"], true, "{r}");
    assert!(
        r["subscribe"].get("recovered").is_none(),
        "not recovered: {r}"
    );
    assert_ne!(r["subscribe"]["epoch"], epoch);
    // Publications go on in the new epoch.
    let next = publish(&a, "ledger", json!(6)).await;
    assert_eq!(next["result"]["epoch"], r["subscribe"]["epoch"], "{next}");
    assert_eq!(sub.next_publication().await["pub"]["data"], 6);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_told_before_the_publication_that_revealed_it() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let a = node(&redis, &prefix, "a").await;
    let mut sub = a.client().await;
    let epoch = sub.subscribe("ledger").await["subscribe"]["epoch"].clone();
    assert!(listening(&redis, &prefix, "ledger").await, "node a listens");
    publish(&a, "ledger", json!(1)).await;
    assert_eq!(sub.next_publication().await["pub"]["offset"], 1);
    // Offset 2 never reaches this node (here it is never published: a hole no history fills).
    redis
        .command(&["HINCRBY", &format!("{prefix}.meta.ledger"), "s", "1"])
        .await;
    publish(&a, "ledger", json!(3)).await;
    // First the unsubscribe push, not offset 3: a subscriber that took 3 first would recover
    // from past the gap.
    let push = sub.next_push().await;
    assert_eq!(push["unsubscribe"]["code"], 2500, "{push}");
    let r = sub
        .call(
            "subscribe",
            json!({"channel": "ledger", "recover": true, "offset": 1, "epoch": epoch}),
        )
        .await;
    // Offset 2 is in no history: the subscriber learns it cannot recover.
    assert_eq!(r["subscribe"]["was_recovering"], true, "{r}");
    assert!(r["subscribe"].get("recovered").is_none(), "{r}");
    a.stop().await;
}

/// A relay to `redis` that holds each client write carrying a `SUBSCRIBE` for `delay`: a node's
/// pub/sub subscriptions are slow to take effect while its commands go straight through.
async fn slow_subscribe_relay(redis: &RedisServer, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target: SocketAddr = redis.url()["redis://".len()..].parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buffer).await {
                    let chunk = &buffer[..n];
                    if chunk
                        .windows(9)
                        .any(|w| w.eq_ignore_ascii_case(b"subscribe"))
                    {
                        tokio::time::sleep(delay).await;
                    }
                    if to_server.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("redis://{addr}")
}

/// A node reaching `redis` through [`slow_subscribe_relay`].
async fn node_with_slow_subscribes(redis: &RedisServer, delay: Duration) -> TestServer {
    let url = slow_subscribe_relay(redis, delay).await;
    let prefix = unique_prefix();
    TestServer::with(move |c| {
        c.redis = vec![url];
        c.redis_prefix = prefix;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_is_answered_once_the_node_hears_the_channel() {
    let redis = RedisServer::start().await;
    let a = node_with_slow_subscribes(&redis, Duration::from_millis(500)).await;
    let mut sub = a.client().await;
    sub.subscribe("news").await;
    // Published as soon as the subscription is answered: the node must hear it already, or the
    // publication would reach this subscriber only as a gap (2500) after the next one.
    publish(&a, "news", json!(1)).await;
    let push = sub.next_push().await;
    assert_eq!(push["pub"]["offset"], 1, "{push}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscriber_is_answered_once_the_node_hears_the_channel() {
    let redis = RedisServer::start().await;
    let a = node_with_slow_subscribes(&redis, Duration::from_millis(800)).await;
    // The first subscriber's subscription is held up at the relay while the second one joins.
    let mut first = a.client().await;
    let first_subscribed = tokio::spawn(async move {
        first.subscribe("news").await;
        first
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = a.client().await;
    second.subscribe("news").await;
    // Published as soon as the second subscription is answered: the node must hear it already.
    publish(&a, "news", json!(1)).await;
    let push = second.next_push().await;
    assert_eq!(push["pub"]["offset"], 1, "{push}");
    let mut first = first_subscribed.await.unwrap();
    assert_eq!(first.next_push().await["pub"]["offset"], 1);
    a.stop().await;
}

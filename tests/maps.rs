//! Map subscriptions over real WebSockets and the server API: the state snapshot page by page,
//! the stream catch-up and the live phase, key TTL, removal, permissions, recovery after a
//! reconnect, a map surviving a restart on SQLite and on Redis, and map presence
//! (`map_clients`, `map_users`).

mod common;

use std::time::Duration;

use common::redis_server::*;
use common::*;
use serde_json::{json, Value};
use switchboard::config::{HistoryStorage, MapNamespace, Namespace};
use switchboard::Config;

/// A map namespace `name` in `mode`, every permission open.
fn map_namespace(name: &str, mode: &str, key_ttl: Option<u64>) -> Namespace {
    Namespace {
        name: name.into(),
        allow_subscribe_for_client: Some(true),
        allow_subscribe_for_anonymous: Some(true),
        subscription_type: Some("map".into()),
        map: Some(MapNamespace {
            mode: Some(mode.into()),
            key_ttl: key_ttl.map(Duration::from_secs),
            allow_publish_for_client: Some(true),
            allow_publish_for_anonymous: Some(true),
            allow_remove_for_client: Some(true),
            allow_remove_for_anonymous: Some(true),
            // Small pages in these tests.
            min_page_size: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The usual namespaces: `board` (persistent), `cursors` (durable, 1 s TTL).
fn maps(config: &mut Config) {
    config
        .namespace
        .push(map_namespace("board", "persistent", None));
    config
        .namespace
        .push(map_namespace("cursors", "durable", Some(1)));
}

async fn map_publish(server: &TestServer, channel: &str, key: &str, data: Value) -> Value {
    let (status, reply) = server
        .api(
            "map_publish",
            json!({"channel": channel, "key": key, "data": data}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    reply
}

/// The values `map_read_state` finds for one `key`.
async fn read_key(server: &TestServer, channel: &str, key: &str) -> Value {
    let (_, reply) = server
        .api("map_read_state", json!({"channel": channel, "key": key}))
        .await;
    let entries = reply["result"]["entries"].as_array().expect("entries");
    Value::Array(entries.iter().map(|e| e["data"].clone()).collect())
}

/// What a map subscriber ends with: the entries (key → data) after walking the state pages,
/// and the live reply.
struct Subscribed {
    entries: Vec<(String, Value)>,
    live: Value,
}

/// Subscribes to map `channel` as centrifuge-js does: state pages of `page` entries, then
/// stream pages from the first page's position until the server answers live.
async fn map_subscribe(client: &mut Client, channel: &str, page: i32) -> Subscribed {
    let mut entries = Vec::new();
    let mut cursor = String::new();
    let mut position: Option<(u64, String)> = None;
    loop {
        let mut req = json!({"channel": channel, "type": 1, "phase": 2, "limit": page});
        if !cursor.is_empty() {
            req["cursor"] = json!(cursor);
        }
        if let Some((offset, epoch)) = &position {
            req["offset"] = json!(offset);
            req["epoch"] = json!(epoch);
        }
        let reply = client.call("subscribe", req).await;
        let result = &reply["subscribe"];
        assert!(result.is_object(), "state page: {reply}");
        assert_eq!(result["phase"], 2);
        let state = result["state"].as_array().cloned().unwrap_or_default();
        assert!(
            state.len() <= page as usize,
            "a page holds at most the limit"
        );
        for entry in state {
            entries.push((
                entry["key"].as_str().unwrap().to_string(),
                entry["data"].clone(),
            ));
        }
        if position.is_none() {
            let offset = result["offset"].as_u64().unwrap_or(0);
            position = Some((offset, result["epoch"].as_str().unwrap().to_string()));
        }
        match result["cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let (mut offset, epoch) = position.unwrap();
    loop {
        let reply = client
            .call(
                "subscribe",
                json!({"channel": channel, "type": 1, "phase": 1, "offset": offset,
                       "epoch": epoch, "limit": page}),
            )
            .await;
        let result = reply["subscribe"].clone();
        assert!(result.is_object(), "stream page: {reply}");
        if result.get("phase").is_none() {
            return Subscribed {
                entries,
                live: result,
            };
        }
        assert_eq!(result["phase"], 1);
        offset = result["offset"].as_u64().unwrap();
    }
}

/// The next publication pushed on `channel`.
async fn next_change(client: &mut Client, channel: &str) -> Value {
    loop {
        let push = client.next_publication().await;
        if push["channel"] == channel {
            return push["pub"].clone();
        }
    }
}

#[tokio::test]
async fn a_subscriber_reads_the_state_page_by_page_then_follows_changes() {
    let server = TestServer::with(maps).await;
    for i in 0..7 {
        map_publish(&server, "board:1", &format!("k{i}"), json!({"n": i})).await;
    }
    let mut client = server.client().await;
    let subscribed = map_subscribe(&mut client, "board:1", 3).await;
    let keys: Vec<_> = subscribed.entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "k5", "k6"]);
    assert_eq!(subscribed.entries[4].1, json!({"n": 4}));
    assert_eq!(subscribed.live["type"], 1);
    assert_eq!(subscribed.live["recoverable"], true);
    assert_eq!(subscribed.live["offset"], 7);
    assert!(
        subscribed.live.get("recovered").is_none(),
        "a fresh map gets sync"
    );

    map_publish(&server, "board:1", "k2", json!({"n": 20})).await;
    let change = next_change(&mut client, "board:1").await;
    assert_eq!(
        (change["key"].clone(), change["data"].clone()),
        (json!("k2"), json!({"n": 20}))
    );
    assert_eq!(change["offset"], 8);
    let (_, removed) = server
        .api("map_remove", json!({"channel": "board:1", "key": "k2"}))
        .await;
    assert_eq!(removed["result"]["offset"], 9);
    let change = next_change(&mut client, "board:1").await;
    assert_eq!(
        (change["key"].clone(), change["removed"].clone()),
        (json!("k2"), json!(true))
    );
    // Removing an absent key changes nothing and publishes nothing.
    let (_, again) = server
        .api("map_remove", json!({"channel": "board:1", "key": "k2"}))
        .await;
    assert_eq!(again["result"]["suppressed"], true);
    map_publish(&server, "board:1", "k9", json!(9)).await;
    assert_eq!(next_change(&mut client, "board:1").await["offset"], 10);
}

#[tokio::test]
async fn changes_made_while_the_state_is_read_arrive_with_the_live_reply() {
    let server = TestServer::with(maps).await;
    for i in 0..4 {
        map_publish(&server, "board:2", &format!("k{i}"), json!(i)).await;
    }
    let mut client = server.client().await;
    let first = client
        .call(
            "subscribe",
            json!({"channel": "board:2", "type": 1, "phase": 2, "limit": 2}),
        )
        .await;
    let first = &first["subscribe"];
    let (offset, epoch) = (first["offset"].as_u64().unwrap(), first["epoch"].clone());
    assert_eq!(offset, 4);
    // Between pages: one key changes, one goes, one is new.
    map_publish(&server, "board:2", "k3", json!(33)).await;
    server
        .api("map_remove", json!({"channel": "board:2", "key": "k0"}))
        .await;
    map_publish(&server, "board:2", "k5", json!(5)).await;
    let live = client
        .call(
            "subscribe",
            json!({"channel": "board:2", "type": 1, "phase": 1, "offset": offset, "epoch": epoch}),
        )
        .await;
    let publications = live["subscribe"]["publications"].as_array().unwrap();
    let changes: Vec<_> = publications
        .iter()
        .map(|p| (p["key"].as_str().unwrap(), p["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(changes, [("k3", 5), ("k0", 6), ("k5", 7)]);
    assert_eq!(publications[1]["removed"], true);
    assert_eq!(live["subscribe"]["offset"], 7);
}

#[tokio::test]
async fn keys_expire_after_their_ttl_and_subscribers_see_the_removal() {
    let server = TestServer::with(maps).await;
    let mut client = server.client().await;
    map_subscribe(&mut client, "cursors:1", 100).await;
    map_publish(&server, "cursors:1", "ann", json!({"x": 1})).await;
    let set = next_change(&mut client, "cursors:1").await;
    assert_eq!(set["key"], "ann");
    // The sweep runs every second; the wait is bounded, not timed.
    let gone = next_change(&mut client, "cursors:1").await;
    assert_eq!(
        (gone["key"].clone(), gone["removed"].clone()),
        (json!("ann"), json!(true))
    );
    let (_, stats) = server
        .api("map_stats", json!({"channel": "cursors:1"}))
        .await;
    assert_eq!(stats["result"]["num_keys"], 0);
}

#[tokio::test]
async fn the_server_api_reads_counts_clears_and_bounds_maps() {
    let server = TestServer::with(|c| {
        maps(c);
        let mut small = map_namespace("small", "persistent", None);
        let map = small.map.as_mut().unwrap();
        map.max_keys = Some(2);
        map.max_value_size = Some(16);
        c.namespace.push(small);
        let mut plain = map_namespace("plain", "persistent", None);
        plain.map.as_mut().unwrap().min_page_size = None;
        c.namespace.push(plain);
    })
    .await;
    for key in ["b", "a", "c"] {
        map_publish(&server, "board:api", key, json!({"k": key})).await;
    }
    let (_, state) = server
        .api(
            "map_read_state",
            json!({"channel": "board:api", "limit": 2}),
        )
        .await;
    let result = &state["result"];
    let keys: Vec<_> = result["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].clone())
        .collect();
    assert_eq!(keys, [json!("a"), json!("b")]);
    assert_eq!(result["cursor"], "b");
    assert_eq!(result["offset"], 3);
    let (_, rest) = server
        .api(
            "map_read_state",
            json!({"channel": "board:api", "limit": 2, "cursor": "b"}),
        )
        .await;
    assert_eq!(rest["result"]["entries"][0]["key"], "c");
    assert_eq!(rest["result"]["cursor"], "");
    assert_eq!(
        read_key(&server, "board:api", "b").await,
        json!([{"k": "b"}])
    );
    assert_eq!(read_key(&server, "board:api", "bb").await, json!([]));
    let (_, stream) = server
        .api(
            "map_read_stream",
            json!({"channel": "board:api", "limit": 10, "since_offset": 1}),
        )
        .await;
    let offsets: Vec<_> = stream["result"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].clone())
        .collect();
    assert_eq!(offsets, [json!(2), json!(3)]);
    let (_, stats) = server
        .api("map_stats", json!({"channel": "board:api"}))
        .await;
    assert_eq!(stats["result"]["num_keys"], 3);
    // Without min_page_size set, a page holds at least 100 entries, whatever the limit asked.
    for key in ["b", "a", "c"] {
        map_publish(&server, "plain:api", key, json!(1)).await;
    }
    let (_, raised) = server
        .api(
            "map_read_state",
            json!({"channel": "plain:api", "limit": 2}),
        )
        .await;
    assert_eq!(raised["result"]["entries"].as_array().unwrap().len(), 3);
    let (_, cleared) = server
        .api("map_clear", json!({"channel": "board:api"}))
        .await;
    assert_eq!(cleared["result"], json!({}));
    let (_, stats) = server
        .api("map_stats", json!({"channel": "board:api"}))
        .await;
    assert_eq!(stats["result"]["num_keys"], 0);

    // Bounds and refusals, with Centrifugo's codes.
    map_publish(&server, "small:x", "a", json!(1)).await;
    map_publish(&server, "small:x", "b", json!(2)).await;
    let cases = [
        (
            "map_publish",
            json!({"channel": "small:x", "key": "c", "data": 3}),
            106,
        ),
        (
            "map_publish",
            json!({"channel": "small:x", "key": "a", "data": "a value longer than 16"}),
            107,
        ),
        (
            "map_publish",
            json!({"channel": "small:x", "key": "", "data": 1}),
            107,
        ),
        (
            "map_publish",
            json!({"channel": "small:x", "key": "x".repeat(300), "data": 1}),
            107,
        ),
        (
            "map_publish",
            json!({"channel": "news", "key": "a", "data": 1}),
            107,
        ),
        (
            "map_publish",
            json!({"channel": "nowhere:x", "key": "a", "data": 1}),
            102,
        ),
        ("map_read_state", json!({"channel": "news"}), 107),
        ("publish", json!({"channel": "small:x", "data": 1}), 107),
    ];
    for (method, body, code) in cases {
        let (_, reply) = server.api(method, body.clone()).await;
        assert_eq!(reply["error"]["code"], code, "{method} {body}: {reply}");
    }
    // An existing key may still change when the map is full.
    map_publish(&server, "small:x", "a", json!(10)).await;
}

#[tokio::test]
async fn clients_publish_and_remove_only_where_the_namespace_allows() {
    let server = TestServer::with(|c| {
        let mut ns = map_namespace("room", "persistent", None);
        let map = ns.map.as_mut().unwrap();
        map.allow_publish_for_client = Some(false);
        map.allow_publish_for_subscriber = Some(true);
        map.allow_remove_for_client = Some(false);
        map.allow_remove_for_anonymous = Some(false);
        map.client_key = Some("client_id".into());
        map.remove_client_on_unsubscribe = Some(true);
        c.namespace.push(ns);
    })
    .await;
    let mut client = server.client().await;
    let refused = client
        .call(
            "publish",
            json!({"channel": "room:1", "type": 1, "key": "k", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(
        refused["error"]["code"], 103,
        "not subscribed yet: {refused}"
    );
    map_subscribe(&mut client, "room:1", 10).await;
    let ok = client
        .call(
            "publish",
            json!({"channel": "room:1", "type": 1, "key": "ignored", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(ok["publish"], json!({}), "{ok}");
    let change = next_change(&mut client, "room:1").await;
    assert_eq!(
        change["key"],
        client.client_id.as_str(),
        "client_key = client_id"
    );
    assert_eq!(change["info"]["client"], client.client_id.as_str());
    let refused = client
        .call(
            "publish",
            json!({"channel": "room:1", "type": 1, "key": "k", "removed": true}),
        )
        .await;
    assert_eq!(
        refused["error"]["code"], 103,
        "no remove permission: {refused}"
    );
    // A stream publish or subscribe to a map channel is refused.
    let stream = client
        .call("publish", json!({"channel": "room:1", "data": {"x": 1}}))
        .await;
    assert_eq!(stream["error"]["code"], 107);
    let mut other = server.client().await;
    let stream = other.call("subscribe", json!({"channel": "room:1"})).await;
    assert_eq!(stream["error"]["code"], 107);
    // Leaving removes the client's own key.
    client
        .call("unsubscribe", json!({"channel": "room:1"}))
        .await;
    assert!(
        eventually(|| async {
            let (_, stats) = server.api("map_stats", json!({"channel": "room:1"})).await;
            stats["result"]["num_keys"] == 0
        })
        .await,
        "remove_client_on_unsubscribe"
    );
}

#[tokio::test]
async fn a_reconnecting_subscriber_catches_up_or_is_told_to_read_the_state_again() {
    let server = TestServer::with(|c| {
        maps(c);
        let mut short = map_namespace("short", "persistent", None);
        short.map.as_mut().unwrap().stream_size = Some(2);
        c.namespace.push(short);
    })
    .await;
    for (channel, count) in [("board:r", 3), ("short:r", 3)] {
        for i in 0..count {
            map_publish(&server, channel, &format!("k{i}"), json!(i)).await;
        }
    }
    let mut client = server.client().await;
    let board = map_subscribe(&mut client, "board:r", 10).await.live;
    let short = map_subscribe(&mut client, "short:r", 10).await.live;
    client.drop_tcp();
    for channel in ["board:r", "short:r"] {
        map_publish(&server, channel, "k1", json!("new")).await;
        server
            .api("map_remove", json!({"channel": channel, "key": "k0"}))
            .await;
        map_publish(&server, channel, "k7", json!(7)).await;
    }
    let mut again = server.client().await;
    let recovered = again
        .call(
            "subscribe",
            json!({"channel": "board:r", "type": 1, "phase": 1, "recover": true,
                   "offset": board["offset"], "epoch": board["epoch"]}),
        )
        .await;
    let result = &recovered["subscribe"];
    assert_eq!(result["recovered"], true, "{recovered}");
    assert_eq!(result["was_recovering"], true);
    let keys: Vec<_> = result["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].clone())
        .collect();
    assert_eq!(keys, [json!("k1"), json!("k0"), json!("k7")]);
    // Its stream keeps 2 changes: 3 were missed, so the client must read the state again.
    let lost = again
        .call(
            "subscribe",
            json!({"channel": "short:r", "type": 1, "phase": 1, "recover": true,
                   "offset": short["offset"], "epoch": short["epoch"]}),
        )
        .await;
    assert_eq!(lost["error"]["code"], 112, "{lost}");
    let wrong_epoch = again
        .call(
            "subscribe",
            json!({"channel": "board:r", "type": 1, "phase": 1, "recover": true,
                   "offset": 1, "epoch": "not-it"}),
        )
        .await;
    // Subscribed already to board:r on this connection: try on a fresh one.
    assert!(wrong_epoch["error"].is_object());
    let mut third = server.client().await;
    let wrong_epoch = third
        .call(
            "subscribe",
            json!({"channel": "board:r", "type": 1, "phase": 1, "recover": true,
                   "offset": 1, "epoch": "not-it"}),
        )
        .await;
    assert_eq!(wrong_epoch["error"]["code"], 112, "{wrong_epoch}");
}

#[tokio::test]
async fn a_map_survives_a_restart_on_sqlite() {
    let dir = temp_dir();
    let d = dir.clone();
    let server = TestServer::with(move |c| {
        maps(c);
        c.data_dir = d;
    })
    .await;
    map_publish(&server, "board:keep", "a", json!({"v": 1})).await;
    map_publish(&server, "board:keep", "b", json!({"v": 2})).await;
    let mut client = server.client().await;
    let before = map_subscribe(&mut client, "board:keep", 10).await.live;
    drop(client);
    server.stop_keeping_data().await;

    let d = dir.clone();
    let server = TestServer::with(move |c| {
        maps(c);
        c.data_dir = d;
    })
    .await;
    let mut client = server.client().await;
    let after = map_subscribe(&mut client, "board:keep", 10).await;
    assert_eq!(
        after.entries,
        [
            ("a".to_string(), json!({"v": 1})),
            ("b".to_string(), json!({"v": 2}))
        ]
    );
    assert_eq!(
        after.live["epoch"], before["epoch"],
        "the stream's epoch is kept"
    );
    map_publish(&server, "board:keep", "c", json!({"v": 3})).await;
    assert_eq!(next_change(&mut client, "board:keep").await["offset"], 3);
    let mut late = server.client().await;
    let recovered = late
        .call(
            "subscribe",
            json!({"channel": "board:keep", "type": 1, "phase": 1, "recover": true,
                   "offset": before["offset"], "epoch": before["epoch"]}),
        )
        .await;
    assert_eq!(recovered["subscribe"]["recovered"], true, "{recovered}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn maps_work_on_the_memory_history_too() {
    let server = TestServer::with(|c| {
        maps(c);
        c.history_storage = HistoryStorage::Memory;
    })
    .await;
    map_publish(&server, "board:m", "a", json!(1)).await;
    map_publish(&server, "cursors:m", "a", json!(1)).await;
    let mut client = server.client().await;
    let subscribed = map_subscribe(&mut client, "board:m", 10).await;
    assert_eq!(subscribed.entries, [("a".to_string(), json!(1))]);
    assert_eq!(read_key(&server, "board:m", "a").await, json!([1]));
    map_subscribe(&mut client, "cursors:m", 10).await;
    let gone = next_change(&mut client, "cursors:m").await;
    assert_eq!(gone["removed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_nodes_share_a_map_that_outlives_them() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let node = |name: &'static str| {
        let (url, prefix) = (redis.url(), prefix.clone());
        TestServer::with(move |c| {
            maps(c);
            c.redis = vec![url];
            c.redis_prefix = prefix;
            c.name = Some(name.into());
        })
    };
    let a = node("a").await;
    let b = node("b").await;
    for i in 0..5 {
        map_publish(&a, "board:r", &format!("k{i}"), json!(i)).await;
    }
    let mut on_b = b.client().await;
    let subscribed = map_subscribe(&mut on_b, "board:r", 2).await;
    assert_eq!(subscribed.entries.len(), 5);
    assert_eq!(read_key(&b, "board:r", "k3").await, json!([3]));
    map_publish(&a, "board:r", "k1", json!("from a")).await;
    let change = next_change(&mut on_b, "board:r").await;
    assert_eq!(
        (change["key"].clone(), change["offset"].clone()),
        (json!("k1"), json!(6))
    );
    // TTL on Redis: both nodes sweep, the key expires once.
    let mut cursors = b.client().await;
    map_subscribe(&mut cursors, "cursors:r", 10).await;
    map_publish(&a, "cursors:r", "ann", json!({"x": 1})).await;
    assert_eq!(next_change(&mut cursors, "cursors:r").await["key"], "ann");
    let gone = next_change(&mut cursors, "cursors:r").await;
    assert_eq!(
        (gone["removed"].clone(), gone["offset"].clone()),
        (json!(true), json!(2))
    );
    assert!(
        cursors.silent_for(Duration::from_millis(1500)).await || {
            // Only pings may follow, never a second removal.
            let next = cursors.next_message().await;
            next.get("push").is_none()
        }
    );
    let live = subscribed.live;
    drop(on_b);
    drop(cursors);
    a.stop().await;
    b.stop().await;

    // A new node on the same Redis finds the map, and a reconnecting client recovers.
    let c = node("c").await;
    let mut client = c.client().await;
    let after = map_subscribe(&mut client, "board:r", 10).await;
    assert_eq!(after.entries.len(), 5);
    assert!(after.entries.contains(&("k1".to_string(), json!("from a"))));
    let mut late = c.client().await;
    let recovered = late
        .call(
            "subscribe",
            json!({"channel": "board:r", "type": 1, "phase": 1, "recover": true,
                   "offset": live["offset"], "epoch": live["epoch"]}),
        )
        .await;
    assert_eq!(recovered["subscribe"]["recovered"], true, "{recovered}");
    assert_eq!(recovered["subscribe"]["publications"][0]["key"], "k1");
}

/// `game:<id>` (a stream namespace) lists its subscribers in `clients:game:<id>` (map_clients)
/// and `users:game:<id>` (map_users), both with a 1 s key TTL.
fn map_presence(config: &mut Config) {
    config.token_hmac_secret = Some(SECRET.into());
    config.insecure = true;
    config.namespace.push(Namespace {
        name: "game".into(),
        allow_subscribe_for_client: Some(true),
        map_clients_presence_channel_prefix: Some("clients:".into()),
        map_users_presence_channel_prefix: Some("users:".into()),
        ..Default::default()
    });
    for (name, kind) in [("clients", "map_clients"), ("users", "map_users")] {
        let mut ns = map_namespace(name, "durable", Some(1));
        ns.subscription_type = Some(kind.into());
        config.namespace.push(ns);
    }
}

const SECRET: &str = "map-presence-secret";

async fn user_client(server: &TestServer, user: &str) -> Client {
    let token = switchboard::auth::sign_hmac(SECRET, &json!({"sub": user})).unwrap();
    let mut client = Client::open(&server.ws_url()).await;
    let reply = client.connect(json!({"token": token})).await;
    assert!(reply["connect"].is_object(), "{reply}");
    client
}

/// Subscribes with map presence `kind` (2 clients, 3 users) in one state page.
async fn presence_subscribe(client: &mut Client, channel: &str, kind: i32) -> Vec<Value> {
    let state = client
        .call(
            "subscribe",
            json!({"channel": channel, "type": kind, "phase": 2, "limit": 100}),
        )
        .await;
    let result = &state["subscribe"];
    assert_eq!(result["type"], kind, "{state}");
    let live = client
        .call(
            "subscribe",
            json!({"channel": channel, "type": kind, "phase": 1,
                   "offset": result["offset"], "epoch": result["epoch"]}),
        )
        .await;
    assert_eq!(live["subscribe"]["type"], kind, "{live}");
    result["state"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn subscribers_are_listed_in_map_presence_channels() {
    let server = TestServer::with(map_presence).await;
    let mut ann = user_client(&server, "ann").await;
    ann.subscribe("game:1").await;
    let mut watcher = user_client(&server, "watcher").await;
    let clients = presence_subscribe(&mut watcher, "clients:game:1", 2).await;
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["key"], ann.client_id.as_str());
    assert_eq!(clients[0]["info"]["user"], "ann");
    assert_eq!(clients[0]["data"]["user"], "ann");
    let users = presence_subscribe(&mut watcher, "users:game:1", 3).await;
    let keys: Vec<_> = users.iter().map(|u| u["key"].clone()).collect();
    assert_eq!(keys, [json!("ann")]);

    // A client of another user joins: both maps get it.
    let mut bob = user_client(&server, "bob").await;
    bob.subscribe("game:1").await;
    let joined = next_change(&mut watcher, "clients:game:1").await;
    assert_eq!(joined["key"], bob.client_id.as_str());
    assert_eq!(
        next_change(&mut watcher, "users:game:1").await["key"],
        "bob"
    );

    // Entries outlive their TTL while their client stays (kept alive, nothing published).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, state) = server
        .api("map_read_state", json!({"channel": "clients:game:1"}))
        .await;
    assert_eq!(
        state["result"]["entries"].as_array().unwrap().len(),
        2,
        "{state}"
    );

    // Bob leaves: his client entry goes at once, his user entry when its TTL runs out.
    bob.call("unsubscribe", json!({"channel": "game:1"})).await;
    let left = next_change(&mut watcher, "clients:game:1").await;
    assert_eq!(
        (left["key"].clone(), left["removed"].clone()),
        (json!(bob.client_id), json!(true))
    );
    let gone = next_change(&mut watcher, "users:game:1").await;
    assert_eq!(
        (gone["key"].clone(), gone["removed"].clone()),
        (json!("bob"), json!(true))
    );
    // Presence channels are the server's: clients cannot write them.
    let refused = watcher
        .call(
            "publish",
            json!({"channel": "clients:game:1", "type": 1, "key": "x", "data": {}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], 107);
    let mut other = user_client(&server, "carol").await;
    let wrong_type = other
        .call(
            "subscribe",
            json!({"channel": "users:game:1", "type": 2, "phase": 2}),
        )
        .await;
    assert_eq!(wrong_type["error"]["code"], 107, "{wrong_type}");
}

#[tokio::test]
async fn state_pages_shrink_to_what_one_answer_may_hold() {
    // Answers of at most 4 KiB (half the queue bound): 20 values of 1 KB take several pages
    // even when the client asks for 100 entries a page.
    let server = TestServer::with(|c| {
        maps(c);
        c.max_message_size = 8192;
        c.client_queue_max_bytes = 8192;
    })
    .await;
    let value = "v".repeat(1000);
    for i in 0..20 {
        map_publish(&server, "board:big", &format!("k{i:02}"), json!(value)).await;
    }
    let mut client = server.client().await;
    let id = client
        .send(
            "subscribe",
            json!({"channel": "board:big", "type": 1, "phase": 2, "limit": 100}),
        )
        .await;
    let first = client.reply_to(id).await;
    let entries = first["subscribe"]["state"].as_array().unwrap().len();
    assert!(
        (1..20).contains(&entries),
        "a shorter first page: {entries}"
    );
    drop(client);
    let mut client = server.client().await;
    let subscribed = map_subscribe(&mut client, "board:big", 100).await;
    let keys: Vec<_> = subscribed.entries.iter().map(|(k, _)| k.clone()).collect();
    let expected: Vec<_> = (0..20).map(|i| format!("k{i:02}")).collect();
    assert_eq!(
        keys, expected,
        "every key once, in order, across the shorter pages"
    );
}

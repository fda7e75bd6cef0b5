//! The client protocol over real WebSockets.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn connect_reply_carries_client_version_ping_pong() {
    let server = TestServer::start().await;
    let mut c = Client::open(&server.ws_url()).await;
    let reply = c.connect(json!({"name": "test"})).await;
    let connect = &reply["connect"];
    assert_eq!(reply["id"], 1);
    assert_eq!(connect["client"].as_str().unwrap().len(), 36);
    assert_eq!(connect["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(connect["ping"], 25);
    assert_eq!(connect["pong"], true);
    assert!(reply.get("error").is_none());
    server.stop().await;
}

#[tokio::test]
async fn publication_reaches_every_subscriber_and_no_one_else() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut outsider = server.client().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    outsider.subscribe("other").await;
    let reply = a
        .call(
            "publish",
            json!({"channel": "news", "data": {"text": "hi"}}),
        )
        .await;
    assert_eq!(reply["publish"], json!({}));
    let publisher = a.client_id.clone();
    for client in [&mut a, &mut b] {
        let push = client.next_publication().await;
        assert_eq!(push["channel"], "news");
        assert_eq!(push["pub"]["data"], json!({"text": "hi"}));
        assert_eq!(push["pub"]["offset"], 1);
        assert_eq!(push["pub"]["info"]["client"], publisher.as_str());
    }
    // The outsider only ever sees its own channel's traffic.
    assert!(outsider.silent_for(Duration::from_millis(200)).await);
    server.stop().await;
}

#[tokio::test]
async fn offsets_increase_per_channel_and_unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.subscribe("a").await;
    for n in 1..=3 {
        c.call("publish", json!({"channel": "a", "data": n})).await;
    }
    for n in 1..=3u64 {
        let p = c.next_publication().await;
        assert_eq!(p["pub"]["offset"], n);
        assert_eq!(p["pub"]["data"], n);
    }
    let reply = c.call("unsubscribe", json!({"channel": "a"})).await;
    assert_eq!(reply["unsubscribe"], json!({}));
    c.call("publish", json!({"channel": "a", "data": 4})).await;
    assert!(c.silent_for(Duration::from_millis(200)).await);
    // Subscribing again is allowed after unsubscribing; twice in a row is not.
    c.subscribe("a").await;
    let again = c.call("subscribe", json!({"channel": "a"})).await;
    assert_eq!(again["error"]["code"], 105);
    server.stop().await;
}

#[tokio::test]
async fn rpc_echo_and_unknown_method() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let reply = c
        .call("rpc", json!({"method": "echo", "data": {"x": [1, 2]}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"x": [1, 2]}));
    let reply = c.call("rpc", json!({"method": "nope", "data": 1})).await;
    assert_eq!(reply["error"]["code"], 108);
    server.stop().await;
}

#[tokio::test]
async fn presence_and_join_leave() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut quiet = server.client().await;
    quiet.subscribe("room").await;
    a.subscribe_join_leave("room").await;
    // a sees its own join first.
    assert_eq!(
        a.next_push().await["join"]["info"]["client"],
        a.client_id.as_str()
    );
    b.subscribe_join_leave("room").await;
    let join = a.next_push().await;
    assert_eq!(join["channel"], "room");
    assert_eq!(join["join"]["info"]["client"], b.client_id.as_str());
    let presence = a.call("presence", json!({"channel": "room"})).await;
    let members = presence["presence"]["presence"].as_object().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.contains_key(&a.client_id) && members.contains_key(&b.client_id));
    let stats = a.call("presence_stats", json!({"channel": "room"})).await;
    assert_eq!(
        stats["presence_stats"],
        json!({"num_clients": 3, "num_users": 1})
    );
    let b_id = b.client_id.clone();
    b.call("unsubscribe", json!({"channel": "room"})).await;
    let leave = a.next_push().await;
    assert_eq!(leave["leave"]["info"]["client"], b_id.as_str());
    let stats = a.call("presence_stats", json!({"channel": "room"})).await;
    assert_eq!(stats["presence_stats"]["num_clients"], 2);
    // Join/leave pushes go only to subscribers that asked for them.
    assert!(quiet.silent_for(Duration::from_millis(200)).await);
    server.stop().await;
}

#[tokio::test]
async fn batched_commands_in_one_frame_get_every_reply() {
    let server = TestServer::start().await;
    let mut c = Client::open(&server.ws_url()).await;
    c.send_raw(concat!(
        "{\"id\":1,\"connect\":{}}\n",
        "{\"id\":2,\"subscribe\":{\"channel\":\"x\"}}\n",
        "{\"id\":3,\"publish\":{\"channel\":\"x\",\"data\":\"one\"}}\n",
        "{\"id\":4,\"rpc\":{\"method\":\"echo\",\"data\":4}}\n",
        "{\"send\":{\"data\":\"ignored\"}}\n"
    ))
    .await;
    assert!(c.reply_to(1).await.get("connect").is_some());
    assert!(c.reply_to(2).await.get("subscribe").is_some());
    assert_eq!(c.reply_to(3).await["publish"], json!({}));
    assert_eq!(c.reply_to(4).await["rpc"]["data"], 4);
    let p = c.next_publication().await;
    assert_eq!(p["pub"]["data"], "one");
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_protocol_disconnect_codes() {
    let server = TestServer::with(|c| c.max_message_size = 1024).await;
    // Not JSON.
    let mut c = Client::open(&server.ws_url()).await;
    c.send_raw("{nope").await;
    let (code, reason) = c.closed().await;
    assert_eq!(code, 3501);
    assert!(reason.starts_with("bad request: "), "{reason}");
    // A command before connect.
    let mut c = Client::open(&server.ws_url()).await;
    c.send("subscribe", json!({"channel": "x"})).await;
    assert_eq!(c.closed().await.0, 3501);
    // A command the server does not know.
    let mut c = server.client().await;
    c.send_raw("{\"id\":9,\"teleport\":{}}").await;
    assert_eq!(c.closed().await.0, 3501);
    // A second connect.
    let mut c = server.client().await;
    c.send("connect", json!({})).await;
    assert_eq!(c.closed().await.0, 3501);
    // A message over the size limit.
    let mut c = server.client().await;
    let big = "x".repeat(2000);
    c.send("publish", json!({"channel": "x", "data": big}))
        .await;
    assert_eq!(c.closed().await, (1009, "message too big".into()));
    // A pong nobody asked for.
    let mut c = server.client().await;
    c.send_raw("{}").await;
    assert_eq!(c.closed().await.0, 3501);
    // Errors that keep the connection: empty channel, missing data.
    let mut c = server.client().await;
    let r = c.call("subscribe", json!({"channel": ""})).await;
    assert_eq!(r["error"]["code"], 107);
    let r = c.call("publish", json!({"channel": "x"})).await;
    assert_eq!(r["error"]["code"], 107);
    // The server is unharmed.
    let r = c.call("rpc", json!({"method": "echo", "data": 1})).await;
    assert_eq!(r["rpc"]["data"], 1);
    server.stop().await;
}

#[tokio::test]
async fn stale_socket_without_connect_is_closed() {
    let server = TestServer::with(|c| c.stale_timeout = 1).await;
    let mut c = Client::open(&server.ws_url()).await;
    assert_eq!(c.closed().await, (3502, "stale".into()));
    server.stop().await;
}

#[tokio::test]
async fn ping_pong_keeps_answering_clients_and_drops_silent_ones() {
    let server = TestServer::with(|c| {
        c.ping_interval = 1;
        c.pong_timeout = 1;
    })
    .await;
    let mut silent = server.client().await;
    let mut polite = server.client().await;
    // Never answers pings, but keeps sending: alive (its pong could be stuck behind its frames).
    let mut busy = server.client().await;
    let busy_task = tokio::spawn(async move {
        for _ in 0..20 {
            busy.send_raw(r#"{"send":{"data":"working"}}"#).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        busy
    });
    let polite_task = tokio::spawn(async move {
        let mut pings = 0;
        while pings < 3 {
            match polite.next_event().await {
                Event::Message(m) if m == json!({}) => {
                    pings += 1;
                    polite.send_raw("{}").await;
                }
                Event::Message(_) => {}
                other => panic!("polite client lost its connection: {other:?}"),
            }
        }
        polite
    });
    assert_eq!(silent.closed().await, (3012, "no pong".into()));
    let mut polite = polite_task.await.unwrap();
    let r = polite
        .call("rpc", json!({"method": "echo", "data": "still here"}))
        .await;
    assert_eq!(r["rpc"]["data"], "still here");
    let mut busy = busy_task.await.unwrap();
    let r = busy
        .call("rpc", json!({"method": "echo", "data": "busy"}))
        .await;
    assert_eq!(
        r["rpc"]["data"], "busy",
        "a client sending frames is not dropped"
    );
    // Once it stops sending, its missing pong counts again.
    assert_eq!(busy.closed().await, (3012, "no pong".into()));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_the_reconnect_code() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = Client::open(&server.ws_url()).await; // not yet connected
    server.shutdown.cancel();
    assert_eq!(a.closed().await, (3001, "shutdown".into()));
    assert_eq!(b.closed().await.0, 3001);
    server.stop().await;
}

#[tokio::test]
async fn slow_reader_is_disconnected_while_a_fast_one_gets_everything() {
    let server = TestServer::with(|c| {
        c.client_queue_max_bytes = 256 * 1024;
        c.max_message_size = 256 * 1024;
        c.client_command_rate = 0;
        c.history_size = 0;
    })
    .await;
    // The slow client subscribes, then never reads again.
    let mut slow = Client::open_small_buffer(server.addr).await;
    slow.connect(json!({})).await;
    slow.subscribe("feed").await;
    let mut fast = server.client().await;
    fast.subscribe("feed").await;
    let total = 1000u64;
    let reader = tokio::spawn(async move {
        let mut next = 1u64;
        while next <= total {
            let p = fast.next_publication().await;
            assert_eq!(p["pub"]["data"]["n"], next, "in order, nothing missing");
            next += 1;
        }
        fast
    });
    let mut publisher = server.client().await;
    let payload = "p".repeat(8000);
    for batch in 0..(total / 10) {
        let frame: Vec<String> = (1..=10)
            .map(|i| {
                let n = batch * 10 + i;
                json!({"id": n, "publish": {"channel": "feed", "data": {"n": n, "pad": payload}}})
                    .to_string()
            })
            .collect();
        publisher.send_raw(&frame.join("\n")).await;
        publisher.reply_to((batch * 10 + 10) as u32).await;
    }
    let fast = reader.await.unwrap();
    drop(fast);
    // 8 MB went out, more than socket buffers hold: the slow client's queue overflowed. A client
    // that reads nothing cannot receive a close frame through its full socket, so after what its
    // buffers hold it sees either the 3008 close or the connection's end.
    let code = slow.closed_or_dropped_code().await;
    assert!(
        matches!(code, Some(3008) | None),
        "slow client closed with {code:?}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("switchboard_slow_disconnects_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_disconnect_path_releases_subscriptions_and_presence() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe_join_leave("watch").await;
    // Abrupt TCP drops.
    for _ in 0..5 {
        let mut c = server.client().await;
        c.subscribe("lobby").await;
        c.subscribe("watch").await;
        c.drop_tcp();
    }
    // A clean close frame.
    let mut c = server.client().await;
    c.subscribe("lobby").await;
    drop(c);
    // Server-side API disconnect of a user.
    let secret_server = TestServer::with(|c| {
        c.token_hmac_secret = Some("k".into());
        open_channels(c);
    })
    .await;
    let token = switchboard::auth::make_hmac_token("k", "u1", 60).unwrap();
    let mut u = Client::open(&secret_server.ws_url()).await;
    u.connect(json!({"token": token})).await;
    u.subscribe("lobby").await;
    let (_, r) = secret_server.api("disconnect", json!({"user": "u1"})).await;
    assert_eq!(r, json!({"result": {}}));
    assert_eq!(u.closed().await, (3503, "force disconnect".into()));
    assert!(
        eventually(|| async {
            let (_, c) = secret_server.api("channels", json!({})).await;
            c["result"]["channels"] == json!({})
        })
        .await
    );
    assert!(
        eventually(|| async {
            let (_, c) = server.api("channels", json!({})).await;
            let (_, p) = server
                .api("presence_stats", json!({"channel": "watch"}))
                .await;
            c["result"]["channels"] == json!({"watch": {"num_clients": 1}})
                && p["result"]["num_clients"] == 1
        })
        .await,
        "subscriptions and presence return to the watcher alone"
    );
    let (_, p) = server
        .api("presence_stats", json!({"channel": "lobby"}))
        .await;
    assert_eq!(p["result"]["num_clients"], 0);
    // The watcher saw 5 joins and 5 leaves of the dropped clients.
    let mut leaves = 0;
    while leaves < 5 {
        if watcher.next_push().await.get("leave").is_some() {
            leaves += 1;
        }
    }
    secret_server.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn tokens_decide_who_connects() {
    let server = TestServer::with(|c| {
        c.token_hmac_secret = Some("secret".into());
        open_channels(c);
    })
    .await;
    // No token while a secret is set.
    let mut c = Client::open(&server.ws_url()).await;
    c.send("connect", json!({})).await;
    assert_eq!(c.closed().await, (3500, "invalid token".into()));
    // A token signed with another key.
    let bad = switchboard::auth::make_hmac_token("other", "u", 60).unwrap();
    let mut c = Client::open(&server.ws_url()).await;
    c.send("connect", json!({"token": bad})).await;
    assert_eq!(c.closed().await.0, 3500);
    // An expired token: error 109, connection kept so the client can retry.
    let claims = json!({"sub": "u", "exp": switchboard::auth::unix_now() - 5});
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let mut c = Client::open(&server.ws_url()).await;
    let r = c.connect(json!({"token": expired})).await;
    assert_eq!(r["error"]["code"], 109);
    // A valid token: the user shows up in presence, and the connection expiry is announced.
    let good = switchboard::auth::make_hmac_token("secret", "alice", 3600).unwrap();
    let r = c.connect(json!({"token": good})).await;
    assert_eq!(r["connect"]["expires"], true);
    let ttl = r["connect"]["ttl"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
    c.subscribe("room").await;
    let p = c.call("presence", json!({"channel": "room"})).await;
    let me: &Value = &p["presence"]["presence"][&c.client_id];
    assert_eq!(me["user"], "alice");
    server.stop().await;
}

/// A subscriber's saved position must name the stream's epoch even when nothing was published
/// yet (the official SDKs store `epoch` from the subscribe reply and recover with it), on every
/// history storage.
#[tokio::test]
async fn first_subscriber_of_a_new_channel_gets_the_stream_epoch() {
    use switchboard::config::HistoryStorage;
    for storage in [HistoryStorage::Sqlite, HistoryStorage::Memory] {
        let server = TestServer::with(|c| c.history_storage = storage).await;
        let mut a = server.client().await;
        let reply = a.subscribe("fresh").await;
        let epoch = reply["subscribe"]["epoch"].as_str().unwrap_or_default();
        assert!(!epoch.is_empty(), "{storage:?}: no epoch in {reply}");
        assert!(reply["subscribe"].get("offset").is_none(), "{reply}");
        // The first publication continues that epoch, so the saved position stays valid.
        let (_, published) = server
            .api("publish", json!({"channel": "fresh", "data": 1}))
            .await;
        assert_eq!(published["result"], json!({"offset": 1, "epoch": epoch}));
        a.drop_tcp();
        let mut b = server.client().await;
        let recovered = b
            .call(
                "subscribe",
                json!({"channel": "fresh", "recover": true, "epoch": epoch}),
            )
            .await;
        let result = &recovered["subscribe"];
        assert_eq!(result["recovered"], true, "{storage:?}: {recovered}");
        assert_eq!(result["publications"][0]["offset"], 1);
        // The server API sees the same epoch for a channel nobody published to.
        let (_, top) = server.api("history", json!({"channel": "untouched"})).await;
        assert!(
            !top["result"]["epoch"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{top}"
        );
        server.stop().await;
    }
}

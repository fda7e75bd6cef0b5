//! The server API's `idempotency_key` on one node: with the default SQLite history (across a
//! restart too) and with the memory history. Several nodes on Redis: `tests/redis.rs`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard::config::HistoryStorage;

/// `publish` with `body`, which must succeed (HTTP 200, a `result`); returns the whole reply.
async fn publish(server: &TestServer, body: Value) -> Value {
    let (status, reply) = server.api("publish", body).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
    reply
}

/// The `data` of every publication in `channel`'s history, oldest first.
async fn history(server: &TestServer, channel: &str) -> Vec<Value> {
    let (_, reply) = server
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    reply["result"]["publications"]
        .as_array()
        .expect("a history")
        .iter()
        .map(|p| p["data"].clone())
        .collect()
}

/// Same key twice: one publication delivered and stored, identical replies; another key: a
/// second one. Broadcast keys act per channel, shared with `publish`.
async fn a_repeated_key_publishes_once(server: &TestServer) {
    let mut subscriber = server.sdk_subscriber("news").await;
    let first = publish(
        server,
        json!({"channel": "news", "data": {"n": 1}, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(first["result"]["offset"], 1);
    let retry = publish(
        server,
        json!({"channel": "news", "data": {"n": 1}, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(retry, first, "a retry answers what the first publish did");
    let other = publish(
        server,
        json!({"channel": "news", "data": {"n": 2}, "idempotency_key": "k2"}),
    )
    .await;
    assert_eq!(other["result"]["offset"], 2);
    assert_eq!(other["result"]["epoch"], first["result"]["epoch"]);
    // The subscriber gets 1 then 2: the retry delivered nothing in between.
    for n in 1..=2 {
        let publication = subscriber.next_publication().await;
        assert_eq!(publication.offset, n);
        assert_eq!(publication.data["n"], n);
    }
    assert_eq!(
        history(server, "news").await,
        vec![json!({"n": 1}), json!({"n": 2})]
    );

    let (_, first) = server
        .api(
            "broadcast",
            json!({"channels": ["news", "sport"], "data": {"n": 3}, "idempotency_key": "b"}),
        )
        .await;
    let (_, retry) = server
        .api(
            "broadcast",
            json!({"channels": ["news", "sport", "weather"], "data": {"n": 3}, "idempotency_key": "b"}),
        )
        .await;
    let (first, retry) = (&first["result"]["responses"], &retry["result"]["responses"]);
    assert_eq!(first[0]["result"]["offset"], 3, "{first}");
    assert_eq!(retry[0], first[0], "repeated in news");
    assert_eq!(retry[1], first[1], "repeated in sport");
    assert_eq!(retry[2]["result"]["offset"], 1, "new in weather: {retry}");
    let again = publish(
        server,
        json!({"channel": "news", "data": {"n": 4}, "idempotency_key": "b"}),
    )
    .await;
    assert_eq!(
        again["result"], first[0]["result"],
        "publish and broadcast share keys"
    );
    // Next come 3 (the broadcast) and 4 (this marker): the repeats delivered nothing.
    publish(server, json!({"channel": "news", "data": {"n": 4}})).await;
    for n in 3..=4 {
        assert_eq!(subscriber.next_publication().await.offset, n);
    }
    assert_eq!(history(server, "news").await.len(), 4);
    assert_eq!(history(server, "sport").await, vec![json!({"n": 3})]);
    // An empty key is no key.
    for _ in 0..2 {
        publish(
            server,
            json!({"channel": "plain", "data": 0, "idempotency_key": ""}),
        )
        .await;
    }
    assert_eq!(history(server, "plain").await.len(), 2);
}

#[tokio::test]
async fn a_repeated_key_publishes_once_with_sqlite_history() {
    let server = TestServer::start().await;
    a_repeated_key_publishes_once(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_repeated_key_publishes_once_with_memory_history() {
    let server = TestServer::with(|c| c.history_storage = HistoryStorage::Memory).await;
    a_repeated_key_publishes_once(&server).await;
    server.stop().await;
}

/// Publications without history (`skip_history`) are deduplicated too; a repeat delivers
/// nothing, which the next publication shows.
#[tokio::test]
async fn a_repeated_key_without_history_delivers_once() {
    let server = TestServer::start().await;
    let mut subscriber = server.sdk_subscriber("live").await;
    for _ in 0..2 {
        let reply = publish(
            &server,
            json!({"channel": "live", "data": "once", "skip_history": true, "idempotency_key": "k"}),
        )
        .await;
        assert_eq!(reply["result"], json!({}));
    }
    publish(&server, json!({"channel": "live", "data": "next"})).await;
    assert_eq!(subscriber.next_publication().await.data, "once");
    assert_eq!(subscriber.next_publication().await.data, "next");
    server.stop().await;
}

/// Past the window (1 s here) a key publishes again; expired keys are cleaned up meanwhile.
#[tokio::test]
async fn a_key_publishes_again_after_its_window() {
    for storage in [HistoryStorage::Sqlite, HistoryStorage::Memory] {
        let server = TestServer::with(|c| {
            c.history_storage = storage;
            c.idempotency_window = Duration::from_secs(1);
        })
        .await;
        let body = json!({"channel": "news", "data": "x", "idempotency_key": "k"});
        let first = publish(&server, body.clone()).await;
        assert_eq!(publish(&server, body.clone()).await, first);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let later = publish(&server, body.clone()).await;
        assert_eq!(later["result"]["offset"], 2, "{storage:?}: {later}");
        assert_eq!(publish(&server, body).await, later, "{storage:?}");
        assert_eq!(history(&server, "news").await.len(), 2);
        server.stop().await;
    }
}

/// A key survives a restart of a SQLite-backed server on the same data directory.
#[tokio::test]
async fn a_key_still_holds_after_a_restart() {
    let server = TestServer::start().await;
    let body = json!({"channel": "news", "data": "x", "idempotency_key": "restart"});
    let first = publish(&server, body.clone()).await;
    let live =
        json!({"channel": "news", "data": "y", "skip_history": true, "idempotency_key": "live"});
    assert_eq!(publish(&server, live.clone()).await["result"], json!({}));
    let dir = server.stop_keeping_data().await;
    let d = dir.clone();
    let again = TestServer::with(move |c| c.data_dir = d).await;
    assert_eq!(
        publish(&again, body).await,
        first,
        "the same answer after a restart"
    );
    let live_answer = publish(&again, live).await;
    assert_eq!(live_answer["result"], json!({}));
    assert_eq!(history(&again, "news").await, vec![json!("x")]);
    let next = publish(&again, json!({"channel": "news", "data": "z"})).await;
    assert_eq!(next["result"]["offset"], 2, "nothing else was stored");
    again.stop().await;
}

/// A key that is not a string or is longer than 256 bytes is a bad request (HTTP 400, JSON
/// error 107), for `publish`, `broadcast` and inside a `batch`.
#[tokio::test]
async fn bad_idempotency_keys_are_refused() {
    let server = TestServer::start().await;
    let long = "k".repeat(257);
    for (method, body) in [
        (
            "publish",
            json!({"channel": "c", "data": 1, "idempotency_key": 5}),
        ),
        (
            "publish",
            json!({"channel": "c", "data": 1, "idempotency_key": long}),
        ),
        (
            "broadcast",
            json!({"channels": ["c"], "data": 1, "idempotency_key": long}),
        ),
        (
            "broadcast",
            json!({"channels": ["c"], "data": 1, "idempotency_key": ["k"]}),
        ),
    ] {
        let (status, reply) = server.api(method, body).await;
        assert_eq!(status, 400, "{method}: {reply}");
        assert_eq!(reply["error"]["code"], 107, "{reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    let (_, reply) = server
        .api(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "c", "data": 1, "idempotency_key": long}},
                {"publish": {"channel": "c", "data": 2, "idempotency_key": "k".repeat(256)}},
            ]}),
        )
        .await;
    assert_eq!(reply["replies"][0]["error"]["code"], 107, "{reply}");
    assert_eq!(reply["replies"][1]["publish"]["offset"], 1, "{reply}");
    assert_eq!(history(&server, "c").await, vec![json!(2)]);
    server.stop().await;
}

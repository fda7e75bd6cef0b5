//! Answers are bounded: a client's answer is at most half its queue bound
//! (`client_queue_max_bytes`), a server API result at most 64 MiB. A history page or a recovery
//! that would be bigger is not built; the client gets error 106 (limit exceeded) and stays
//! connected — instead of an answer that overflows its queue and closes it as slow (3008).

mod common;

use common::redis_server::{unique_prefix, RedisServer};
use common::*;
use serde_json::{json, Value};

/// A queue bound of 64 KiB: answers up to 32 KiB.
const QUEUE: usize = 64 * 1024;

async fn server() -> TestServer {
    server_with(|_| {}).await
}

async fn server_with(adjust: impl FnOnce(&mut switchboard::Config)) -> TestServer {
    TestServer::with(|c| {
        c.client_queue_max_bytes = QUEUE;
        c.max_message_size = QUEUE;
        adjust(c);
    })
    .await
}

/// Publishes `count` publications of about `size` bytes each to `channel`; returns the last offset.
async fn fill(server: &TestServer, channel: &str, count: usize, size: usize) -> u64 {
    let mut top = 0;
    for n in 0..count {
        let (status, reply) = server
            .api(
                "publish",
                json!({"channel": channel, "data": {"n": n, "text": "x".repeat(size)}}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        top = reply["result"]["offset"].as_u64().unwrap();
    }
    top
}

/// The client is still connected and served: a publication reaches it.
async fn still_served(server: &TestServer, client: &mut Client) {
    client.subscribe("after").await;
    server
        .api("publish", json!({"channel": "after", "data": "still here"}))
        .await;
    assert_eq!(client.next_publication().await["pub"]["data"], "still here");
}

#[tokio::test]
async fn a_history_page_over_the_answer_bound_is_106_and_the_client_stays() {
    let server = server().await;
    // 40 publications of 2 KiB: 80 KiB in all, over the 32 KiB a page may hold.
    fill(&server, "big", 40, 2048).await;
    let mut client = server.client().await;
    let r = client
        .call("history", json!({"channel": "big", "limit": -1}))
        .await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("32768 bytes"), "{message}");
    // A page that fits is served.
    let r = client
        .call("history", json!({"channel": "big", "limit": 10}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(r["history"]["publications"].as_array().unwrap().len(), 10);
    still_served(&server, &mut client).await;
}

#[tokio::test]
async fn the_memory_and_redis_storages_bound_pages_too() {
    let redis = RedisServer::start().await;
    let memory = server_with(|c| c.history_storage = switchboard::config::HistoryStorage::Memory);
    let on_redis = server_with(|c| {
        c.redis = vec![redis.url()];
        c.redis_prefix = unique_prefix();
    });
    for server in [memory.await, on_redis.await] {
        fill(&server, "big", 40, 2048).await;
        let mut client = server.client().await;
        let r = client
            .call("history", json!({"channel": "big", "limit": -1}))
            .await;
        assert_eq!(r["error"]["code"], 106, "{r}");
        let r = client
            .call("history", json!({"channel": "big", "limit": 10}))
            .await;
        assert_eq!(
            r["history"]["publications"].as_array().unwrap().len(),
            10,
            "{r}"
        );
        still_served(&server, &mut client).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_recovery_over_the_answer_bound_is_not_recovered_and_the_client_stays() {
    let server = server().await;
    let mut client = server.client().await;
    let r = client.subscribe("big").await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_string();
    client.call("unsubscribe", json!({"channel": "big"})).await;
    let top = fill(&server, "big", 40, 2048).await;
    let r = client
        .call(
            "subscribe",
            json!({"channel": "big", "recover": true, "offset": 0, "epoch": epoch}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let subscribed = &r["subscribe"];
    assert_ne!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(subscribed["offset"], top);
    assert!(subscribed
        .get("publications")
        .is_none_or(|p| p.as_array().is_some_and(Vec::is_empty)));
    // A gap that fits is recovered as before.
    let r = client.call("unsubscribe", json!({"channel": "big"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let after = fill(&server, "big", 3, 2048).await;
    let r = client
        .call(
            "subscribe",
            json!({"channel": "big", "recover": true, "offset": top, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(r["subscribe"]["offset"], after);
    still_served(&server, &mut client).await;
}

#[tokio::test]
async fn any_answer_over_the_bound_is_106_instead() {
    let server = server().await;
    let mut client = server.client().await;
    // The built-in `echo` method answers with what it was sent: 40 KiB, over the 32 KiB bound.
    let data = "y".repeat(40 * 1024);
    let r = client
        .call("rpc", json!({"method": "echo", "data": data}))
        .await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    let r = client
        .call("rpc", json!({"method": "echo", "data": "small"}))
        .await;
    assert_eq!(r["rpc"]["data"], "small", "{r}");
    still_served(&server, &mut client).await;
}

#[tokio::test]
async fn a_server_api_history_page_over_64_mib_is_106() {
    let server = TestServer::start().await;
    // 17 publications of 4,000,000 bytes: 68 MB in all, over the 64 MiB an answer may hold.
    let big = "z".repeat(4_000_000);
    for n in 0..17 {
        let (status, reply) = server
            .api(
                "publish",
                json!({"channel": "huge", "data": {"n": n, "big": big}}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        assert!(reply.get("error").is_none(), "{reply}");
    }
    let (status, reply) = server
        .api("history", json!({"channel": "huge", "limit": -1}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    let (_, reply): (u16, Value) = server
        .api("history", json!({"channel": "huge", "limit": 2}))
        .await;
    assert_eq!(
        reply["result"]["publications"].as_array().map(Vec::len),
        Some(2),
        "a page that fits is served"
    );
}

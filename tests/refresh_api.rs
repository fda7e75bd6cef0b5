//! The server API's `refresh` over real sockets: it extends a user's connections past their
//! token's expiry, ends them as expired (3005) with `expired` or an `expire_at` in the past,
//! replaces their connection info, targets one client when asked, and tells a unidirectional
//! client its new expiry in a `refresh` push.

mod common;

use std::time::Duration;

use common::http_stream::HttpStream;
use common::{Client, TestServer};
use serde_json::{json, Value};
use switchboard::auth::{make_hmac_token, unix_now};

const SECRET: &str = "refresh-api-secret";

async fn server() -> TestServer {
    TestServer::with(|c| {
        c.token_hmac_secret = Some(SECRET.into());
        // An expired connection is closed one second after its token's `exp`.
        c.expired_grace = 1;
        c.presence = true;
        common::open_channels(c);
    })
    .await
}

async fn connect(server: &TestServer, user: &str, ttl: u64) -> Client {
    let mut client = Client::open(&server.ws_url()).await;
    let reply = client
        .connect(json!({"token": make_hmac_token(SECRET, user, ttl).unwrap()}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    client
}

async fn refresh(server: &TestServer, body: Value) -> Value {
    let (status, reply) = server.api("refresh", body).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_connection_outlives_its_token() {
    let server = server().await;
    // Tokens valid for one second: without the refresh both are closed (3005) two seconds in.
    let mut kept = connect(&server, "kate", 1).await;
    let mut other = connect(&server, "otto", 1).await;
    kept.subscribe("news").await;
    let reply = refresh(
        &server,
        json!({"user": "kate", "expire_at": unix_now() + 3600}),
    )
    .await;
    assert!(reply.get("error").is_none(), "{reply}");
    let (code, _) = other.closed().await;
    assert_eq!(code, 3005, "the connection not refreshed expires");
    // Past the expiry and its grace, the refreshed one is still served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server
        .api("publish", json!({"channel": "news", "data": "still here"}))
        .await;
    assert_eq!(kept.next_publication().await["pub"]["data"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_a_past_expire_at_ends_connections_as_expired() {
    let server = server().await;
    let mut a = connect(&server, "ann", 3600).await;
    refresh(&server, json!({"user": "ann", "expired": true})).await;
    assert_eq!(a.closed().await.0, 3005);
    let mut b = connect(&server, "bob", 3600).await;
    refresh(
        &server,
        json!({"user": "bob", "expire_at": unix_now() - 10}),
    )
    .await;
    assert_eq!(b.closed().await.0, 3005);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_may_be_targeted() {
    let server = server().await;
    let mut first = connect(&server, "cora", 3600).await;
    let mut second = connect(&server, "cora", 3600).await;
    first.subscribe("news").await;
    refresh(
        &server,
        json!({"user": "cora", "client": second.client_id, "expired": true}),
    )
    .await;
    assert_eq!(second.closed().await.0, 3005);
    server
        .api(
            "publish",
            json!({"channel": "news", "data": "to the first"}),
        )
        .await;
    assert_eq!(
        first.next_publication().await["pub"]["data"],
        "to the first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_info_shows_in_presence() {
    let server = server().await;
    let mut client = connect(&server, "dana", 3600).await;
    client.subscribe("room").await;
    refresh(&server, json!({"user": "dana", "info": {"status": "away"}})).await;
    // A fresh subscription carries the new info into presence (the refresh reaches the
    // connection through the broker: a few tries, bounded).
    let mut found = false;
    for _ in 0..50 {
        client.call("unsubscribe", json!({"channel": "room"})).await;
        client.subscribe("room").await;
        let (_, presence) = server.api("presence", json!({"channel": "room"})).await;
        found = presence["result"]["presence"]
            .as_object()
            .is_some_and(|p| p.values().any(|c| c["conn_info"]["status"] == "away"));
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the new info never showed in presence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unidirectional_client_is_told_its_new_expiry() {
    let server = server().await;
    let body = json!({"token": make_hmac_token(SECRET, "uma", 3600).unwrap()}).to_string();
    let request = format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    let mut stream = HttpStream::open(server.addr, &request, false).await;
    let connected = stream.next().await.unwrap();
    assert_eq!(connected["connect"]["expires"], true, "{connected}");
    refresh(
        &server,
        json!({"user": "uma", "expire_at": unix_now() + 7200}),
    )
    .await;
    let push = loop {
        let push = stream.next().await.expect("the refresh push");
        if push.get("refresh").is_some() {
            break push;
        }
    };
    assert_eq!(push["refresh"]["expires"], true, "{push}");
    let ttl = push["refresh"]["ttl"].as_u64().unwrap();
    assert!((7100..=7200).contains(&ttl), "{push}");
    // Without `expire_at` the connection no longer expires.
    refresh(&server, json!({"user": "uma"})).await;
    let push = loop {
        let push = stream.next().await.expect("the refresh push");
        if push.get("refresh").is_some() {
            break push;
        }
    };
    assert_eq!(push["refresh"], json!({}), "{push}");
}

#[tokio::test]
async fn a_refresh_without_a_user_is_refused() {
    let server = server().await;
    let (status, reply) = server.api("refresh", json!({"expired": true})).await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = server.api("refresh", json!({"user": ""})).await;
    assert_eq!(status, 200);
    assert_eq!(reply["error"]["code"], 107, "{reply}");
}

//! History, positions and recovery, on the default SQLite storage.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{json, Value};
use switchboard::config::Namespace;

/// Subscribes with a recovery request from `offset`/`epoch`.
async fn recover(c: &mut Client, channel: &str, offset: u64, epoch: &str, flag: u64) -> Value {
    c.call(
        "subscribe",
        json!({"channel": channel, "recover": true, "offset": offset, "epoch": epoch, "flag": flag}),
    )
    .await
}

/// `(offset, data.n)` of each publication in a reply's list.
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

async fn publish(server: &TestServer, channel: &str, data: Value) -> Value {
    let (status, reply) = server
        .api("publish", json!({"channel": channel, "data": data}))
        .await;
    assert_eq!(status, 200);
    reply["result"].clone()
}

#[tokio::test]
async fn reconnecting_client_recovers_exactly_what_it_missed() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let sub = a.subscribe("feed").await;
    assert_eq!(sub["subscribe"]["recoverable"], true);
    assert_eq!(sub["subscribe"]["positioned"], true);
    for n in 1..=3 {
        publish(&server, "feed", json!({"n": n})).await;
    }
    let mut last = Value::Null;
    for _ in 0..3 {
        last = a.next_publication().await;
    }
    let (offset, epoch) = (last["pub"]["offset"].as_u64().unwrap(), {
        let (_, h) = server.api("history", json!({"channel": "feed"})).await;
        h["result"]["epoch"].as_str().unwrap().to_string()
    });
    assert_eq!(offset, 3);
    a.drop_tcp();
    for n in 4..=7 {
        publish(&server, "feed", json!({"n": n})).await;
    }
    let mut b = server.client().await;
    let reply = recover(&mut b, "feed", offset, &epoch, 0).await;
    let result = &reply["subscribe"];
    assert_eq!(result["was_recovering"], true);
    assert_eq!(result["recovered"], true);
    assert_eq!(result["epoch"], epoch.as_str());
    assert_eq!(result["offset"], 7);
    let missed = offsets_and_numbers(&result["publications"]);
    assert_eq!(missed, vec![(4, 4), (5, 5), (6, 6), (7, 7)]);
    // Live publications continue right after, with no duplicate.
    publish(&server, "feed", json!({"n": 8})).await;
    assert_eq!(b.next_publication().await["pub"]["offset"], 8);
    // Recovering from the top itself is a complete, empty recovery.
    let mut c = server.client().await;
    let reply = recover(&mut c, "feed", 8, &epoch, 0).await;
    assert_eq!(reply["subscribe"]["recovered"], true);
    assert!(reply["subscribe"].get("publications").is_none());
    server.stop().await;
}

#[tokio::test]
async fn positions_beyond_retention_or_epoch_are_reported_unrecovered() {
    let server = TestServer::with(|c| c.history_size = 3).await;
    let first = publish(&server, "s", json!(1)).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for n in 2..=10 {
        publish(&server, "s", json!(n)).await;
    }
    // Offsets 2..7 were trimmed away: continuity cannot be proven.
    let mut c = server.client().await;
    let reply = recover(&mut c, "s", 1, &epoch, 0).await;
    let result = &reply["subscribe"];
    assert_eq!(result["was_recovering"], true);
    assert!(result.get("recovered").is_none(), "{reply}");
    assert!(result.get("publications").is_none(), "no partial recovery");
    assert_eq!(result["offset"], 10);
    // A client that asked to be refused instead gets error 112.
    let mut c = server.client().await;
    let reply = recover(&mut c, "s", 1, &epoch, 2).await;
    assert_eq!(reply["error"]["code"], 112);
    // Another epoch: the stream the client knew is gone.
    let mut c = server.client().await;
    let reply = recover(&mut c, "s", 9, "someother", 0).await;
    assert!(reply["subscribe"].get("recovered").is_none());
    assert_eq!(reply["subscribe"]["epoch"], epoch.as_str());
    server.stop().await;
}

#[tokio::test]
async fn history_command_limits_since_reverse_and_namespaces() {
    let server = TestServer::with(|c| {
        c.namespace = vec![Namespace {
            name: "ephemeral".into(),
            history_size: Some(0),
            ..Default::default()
        }];
    })
    .await;
    let mut c = server.client().await;
    for n in 1..=5 {
        c.call("publish", json!({"channel": "h", "data": n})).await;
    }
    let r = c.call("history", json!({"channel": "h"})).await;
    assert_eq!(r["history"]["offset"], 5);
    assert!(r["history"]["publications"]
        .as_array()
        .is_none_or(|p| p.is_empty()));
    let epoch = r["history"]["epoch"].clone();
    let r = c
        .call(
            "history",
            json!({"channel": "h", "limit": 2, "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    let data: Vec<u64> = r["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].as_u64().unwrap())
        .collect();
    assert_eq!(data, vec![2, 3]);
    let r = c
        .call(
            "history",
            json!({"channel": "h", "limit": -1, "reverse": true}),
        )
        .await;
    assert_eq!(r["history"]["publications"][0]["data"], 5);
    assert_eq!(r["history"]["publications"].as_array().unwrap().len(), 5);
    // History off in a namespace: no history, no offsets, not recoverable.
    let r = c
        .call("history", json!({"channel": "ephemeral:x", "limit": 1}))
        .await;
    assert_eq!(r["error"]["code"], 108);
    let r = c.subscribe("ephemeral:x").await;
    assert!(r["subscribe"].get("recoverable").is_none());
    c.call("publish", json!({"channel": "ephemeral:x", "data": 1}))
        .await;
    let p = c.next_publication().await;
    assert!(p["pub"].get("offset").is_none());
    // A namespace nobody defined.
    let r = c.call("subscribe", json!({"channel": "nowhere:x"})).await;
    assert_eq!(r["error"]["code"], 102);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_publishers_leave_no_gap_and_no_duplicate() {
    let server = TestServer::with(|c| c.history_size = 10_000).await;
    let mut subscriber = server.client().await;
    subscriber.subscribe("busy").await;
    let publishers = 100;
    let each = 20;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let url = server.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::open(&url).await;
            c.connect(json!({})).await;
            for i in 0..each {
                let r = c
                    .call(
                        "publish",
                        json!({"channel": "busy", "data": {"p": p, "i": i}}),
                    )
                    .await;
                assert_eq!(r["publish"], json!({}), "{r}");
            }
        }));
    }
    // Readers run alongside the writers.
    let addr = server.addr;
    let reader = tokio::spawn(async move {
        for _ in 0..20 {
            let (status, r) = api_call(
                addr,
                "history",
                &json!({"channel": "busy", "limit": 50, "reverse": true}).to_string(),
                None,
            )
            .await;
            assert_eq!(status, 200);
            let offsets: Vec<u64> = r["result"]["publications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["offset"].as_u64().unwrap())
                .collect();
            assert!(offsets.windows(2).all(|w| w[0] == w[1] + 1), "{offsets:?}");
        }
    });
    for t in tasks {
        t.await.unwrap();
    }
    reader.await.unwrap();
    let total = (publishers * each) as u64;
    // The live subscriber got every offset once, in order.
    for expected in 1..=total {
        assert_eq!(
            subscriber.next_publication().await["pub"]["offset"],
            expected
        );
    }
    let (_, r) = server
        .api("history", json!({"channel": "busy", "limit": -1}))
        .await;
    let pubs = r["result"]["publications"].as_array().unwrap();
    let offsets: Vec<u64> = pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=total).collect::<Vec<_>>());
    let distinct: HashSet<(u64, u64)> = pubs
        .iter()
        .map(|p| {
            (
                p["data"]["p"].as_u64().unwrap(),
                p["data"]["i"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        distinct.len(),
        total as usize,
        "every publication stored once"
    );
    server.stop().await;
}

#[tokio::test]
async fn history_survives_a_restart_in_process() {
    let dir = temp_dir();
    let d = dir.clone();
    let server = TestServer::with(move |c| c.data_dir = d).await;
    let first = publish(&server, "keep", json!("a")).await;
    publish(&server, "keep", json!("b")).await;
    // Stop (waiting for the server to end) without removing the data directory.
    server.stop_keeping_data().await;
    let d = dir.clone();
    let again = TestServer::with(move |c| c.data_dir = d).await;
    let (_, r) = again
        .api("history", json!({"channel": "keep", "limit": -1}))
        .await;
    assert_eq!(r["result"]["epoch"], first["epoch"]);
    assert_eq!(r["result"]["offset"], 2);
    assert_eq!(r["result"]["publications"][1]["data"], "b");
    let third = publish(&again, "keep", json!("c")).await;
    assert_eq!(third["offset"], 3);
    again.stop().await;
}

#[tokio::test]
async fn publications_expire_after_their_ttl_but_the_position_stays() {
    let server = TestServer::with(|c| c.history_ttl = 1).await;
    let first = publish(&server, "brief", json!("soon gone")).await;
    let (_, r) = server
        .api("history", json!({"channel": "brief", "limit": -1}))
        .await;
    assert_eq!(r["result"]["publications"].as_array().unwrap().len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (_, r) = server
        .api("history", json!({"channel": "brief", "limit": -1}))
        .await;
    assert_eq!(r["result"]["publications"], json!([]));
    assert_eq!(r["result"]["offset"], 1);
    assert_eq!(r["result"]["epoch"], first["epoch"]);
    // Recovery from before the expiry is honestly refused.
    let mut c = server.client().await;
    let reply = recover(&mut c, "brief", 0, first["epoch"].as_str().unwrap(), 0).await;
    assert!(reply["subscribe"].get("recovered").is_none(), "{reply}");
    server.stop().await;
}

/// A client that sends publishes without waiting for their replies has them in flight together:
/// the stream keeps the order they were sent in, replies come back in command order (errors in
/// their place), and a command after them (here `history`) sees them all.
#[tokio::test]
async fn pipelined_publishes_keep_their_order() {
    let server = TestServer::start().await;
    let mut subscriber = server.client().await;
    subscriber.subscribe("feed").await;
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
    let history = publisher
        .send("history", json!({"channel": "feed", "limit": -1}))
        .await;
    ids.push(history);
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

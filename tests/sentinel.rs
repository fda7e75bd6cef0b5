//! Redis Sentinel: two nodes find the master through three real `redis-sentinel`s (a master and
//! two replicas, all started here on free loopback ports; the Sentinels' password differs from
//! the servers'), and the master is killed while
//! publications flow. With the replica wait on (`redis_wait_replicas = 1`), the invariants of
//! the chaos tests hold through the failover:
//!
//! - **durable**: every publication the API acknowledged is in the channel's history afterwards,
//!   at its offset, with its data;
//! - **ordered**: no subscriber receives a publication twice or out of order;
//! - **told, not lost**: subscribers of both nodes stay connected and, following the protocol
//!   (on unsubscribe 2500, resubscribe with their position), end with every acknowledged
//!   publication;
//! - **followed**: the nodes publish to the new master afterwards.

mod common;

use std::time::Duration;

use common::follower::{assert_kept, Follower, Numbered, Refused};
use common::redis_server::*;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_loses_and_repeats_nothing_acknowledged() {
    // The Sentinels and the Redis servers have passwords of their own.
    let (master_password, sentinel_password) = ("master-secret", "sentinel-secret");
    let mut master = RedisServer::start_with_password(master_password).await;
    let replicas = [
        RedisServer::start_replica_of(master.port, master_password).await,
        RedisServer::start_replica_of(master.port, master_password).await,
    ];
    let sentinels = Sentinels::start(master.port, master_password, sentinel_password).await;
    let mut ready = false;
    for _ in 0..6 {
        if eventually(|| sentinels.ready(2)).await {
            ready = true;
            break;
        }
    }
    assert!(ready, "the Sentinels found each other and both replicas");

    let prefix = unique_prefix();
    let node = || {
        let (prefix, addresses) = (prefix.clone(), sentinels.addresses());
        move |c: &mut switchboard::Config| {
            c.redis_sentinel = addresses;
            c.redis_sentinel_master = Some(SENTINEL_MASTER.into());
            c.redis_master_password = Some(master_password.into());
            c.redis_wait_replicas = 1;
            c.redis_wait_timeout = Duration::from_millis(500);
            c.redis_prefix = prefix;
            c.presence_ttl = 2;
        }
    };
    let publishing_node = TestServer::with(node()).await;
    let other_node = TestServer::with(node()).await;
    // The front page says how the node reaches Redis.
    let (_, front) = http_raw(
        publishing_node.addr,
        &format!(
            "GET /front/config HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            publishing_node.addr
        ),
    )
    .await;
    let front: serde_json::Value = serde_json::from_str(&front).unwrap();
    assert_eq!(front["redis"], "sentinel", "{front}");
    assert_eq!(front["redis_sentinel_master"], SENTINEL_MASTER, "{front}");
    let mut followers = [
        Follower::start(&publishing_node.ws_url(), "ledger").await,
        Follower::start(&other_node.ws_url(), "ledger").await,
    ];

    // 200 numbered publications, one at a time; one refused (error 108 while no master answers)
    // is sent again until acknowledged.
    let publishing = Numbered::start(publishing_node.addr, "ledger", 200, Refused::Resend);
    publishing.wait_for(60).await;
    let old_master = master.port;
    master.stop();
    let mut failed_over = false;
    for _ in 0..3 {
        if eventually(|| async {
            matches!(sentinels.master_port(0).await, Some(p) if p != old_master)
        })
        .await
        {
            failed_over = true;
            break;
        }
    }
    assert!(failed_over, "the Sentinels promoted a replica");
    let (acked, refused) = publishing.finish().await;
    assert_eq!(acked.len(), 200);
    assert!(
        refused > 0,
        "the failover was felt (publications refused while no master answered)"
    );

    // durable: every acknowledged publication is in the history at its offset, with its data.
    for server in [&publishing_node, &other_node] {
        let (_, history) = server
            .api("history", json!({"channel": "ledger", "limit": -1}))
            .await;
        assert_kept(&history, &acked);
    }

    // told, not lost; ordered.
    for (name, follower) in ["publishing node", "other node"]
        .into_iter()
        .zip(followers.iter_mut())
    {
        follower.assert_followed(name, "ledger", &acked).await;
    }

    // followed: both nodes serve a new subscriber from the new master.
    let mut late = other_node.client().await;
    late.subscribe("after").await;
    let (_, reply) = publishing_node
        .api("publish", json!({"channel": "after", "data": 1}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(late.next_publication().await["pub"]["data"], 1);
    publishing_node.stop().await;
    other_node.stop().await;
    drop(replicas);
}

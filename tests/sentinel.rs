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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::follower::Follower;
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
    let total = 200u64;
    let acked: Arc<std::sync::Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publishing = {
        let (addr, acked, refused) = (publishing_node.addr, acked.clone(), refused.clone());
        tokio::spawn(async move {
            for n in 1..=total {
                let body = json!({"channel": "ledger", "data": {"n": n}}).to_string();
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts < 300, "publication {n} never acknowledged");
                    let (status, reply) = api_call(addr, "publish", &body, None).await;
                    if status == 200 && reply.get("error").is_none() {
                        let offset = reply["result"]["offset"].as_u64().unwrap();
                        acked.lock().unwrap().insert(offset, n);
                        break;
                    }
                    refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    assert!(
        eventually(|| async { acked.lock().unwrap().len() >= 60 }).await,
        "publishing started"
    );
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
    tokio::time::timeout(Duration::from_secs(90), publishing)
        .await
        .expect("publishing ended")
        .unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), total as usize);
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the failover was felt (publications refused while no master answered)"
    );
    let top = *acked.keys().last().unwrap();

    // durable: every acknowledged publication is in the history at its offset, with its data.
    for server in [&publishing_node, &other_node] {
        let (_, history) = server
            .api("history", json!({"channel": "ledger", "limit": -1}))
            .await;
        let stored: BTreeMap<u64, u64> = history["result"]["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("a history: {history}"))
            .iter()
            .map(|p| {
                (
                    p["offset"].as_u64().unwrap(),
                    p["data"]["n"].as_u64().unwrap(),
                )
            })
            .collect();
        for (offset, n) in &acked {
            assert_eq!(stored.get(offset), Some(n), "durable: offset {offset}");
        }
    }

    // told, not lost; ordered.
    for (name, follower) in ["publishing node", "other node"]
        .into_iter()
        .zip(followers.iter_mut())
    {
        tokio::time::timeout(Duration::from_secs(30), follower.follow("ledger", top))
            .await
            .unwrap_or_else(|_| panic!("{name}: reached offset {} of {top}", follower.last));
        assert!(
            follower.seen.windows(2).all(|w| w[0] < w[1]),
            "{name}: twice or out of order: {:?}",
            follower.seen
        );
        let missing: Vec<_> = acked
            .keys()
            .filter(|o| !follower.seen.contains(o))
            .collect();
        assert!(missing.is_empty(), "{name}: missing {missing:?}");
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

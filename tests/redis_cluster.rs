//! Redis Cluster: nodes on a real 3-master cluster (started here on free loopback ports, joined
//! by `redis-cli --cluster create`). Each channel's keys and topic share one slot (its hash tag),
//! so the publish script runs on the channel's master; publications travel by sharded pub/sub
//! (`SPUBLISH`/`SSUBSCRIBE`) to that master only; a master's death is an outage for its
//! channels until its replica takes over, after which subscribers are told to recover. With the
//! replica wait on, `WAIT` ends each channel's pipeline on the channel's master: an
//! acknowledged publication survives the master's death, and one the master's replica cannot
//! confirm in time is answered 108.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::follower::{assert_kept, Follower, Numbered, Refused};
use common::redis_server::*;
use common::*;
use serde_json::{json, Value};

fn on_cluster(cluster: &RedisCluster, prefix: &str) -> impl FnOnce(&mut switchboard::Config) {
    let (seeds, prefix) = (cluster.seeds(), prefix.to_string());
    move |c| {
        c.redis_cluster = seeds;
        c.redis_prefix = prefix;
        c.presence_ttl = 2;
    }
}

/// [`on_cluster`], with publications acknowledged once one replica holds them.
fn waiting_on_cluster(
    cluster: &RedisCluster,
    prefix: &str,
) -> impl FnOnce(&mut switchboard::Config) {
    let on = on_cluster(cluster, prefix);
    move |c| {
        on(c);
        c.redis_wait_replicas = 1;
        c.redis_wait_timeout = Duration::from_millis(300);
    }
}

async fn publish(server: &TestServer, channel: &str, data: Value) -> Value {
    server
        .api("publish", json!({"channel": channel, "data": data}))
        .await
        .1
}

/// The values of a reply that is a list of strings (empty if it is not one).
async fn strings(port: u16, args: &[&str]) -> Vec<String> {
    match query(port, args).await {
        Ok(value) => redis::from_redis_value(value).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_a_three_master_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    let prefix = unique_prefix();
    let a = TestServer::with(on_cluster(&cluster, &prefix)).await;
    let b = TestServer::with(on_cluster(&cluster, &prefix)).await;
    // The front page says how the node reaches Redis.
    let (_, front) = http_raw(
        a.addr,
        &format!(
            "GET /front/config HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            a.addr
        ),
    )
    .await;
    let front: Value = serde_json::from_str(&front).unwrap();
    assert_eq!(front["redis"], "cluster", "{front}");
    let channels: Vec<String> = (0..12).map(|i| format!("room{i}")).collect();
    let mut sub = a.client().await;
    let mut epochs = BTreeMap::new();
    for channel in &channels {
        let r = sub.subscribe(channel).await;
        epochs.insert(channel.clone(), r["subscribe"]["epoch"].clone());
    }
    // Node a listens to every channel's shard topic (sharded pub/sub, nothing global).
    let listening = || async {
        let mut topics = 0;
        for node in &cluster.nodes {
            topics += strings(
                node.port,
                &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}.pub.*")],
            )
            .await
            .len();
        }
        topics == channels.len()
    };
    assert!(
        eventually(listening).await,
        "node a listens to every shard topic"
    );
    for node in &cluster.nodes {
        let global = strings(
            node.port,
            &["PUBSUB", "CHANNELS", &format!("{prefix}.pub.*")],
        )
        .await;
        assert!(global.is_empty(), "no global topic: {global:?}");
    }
    // Published on node b, delivered on node a, every channel.
    for (n, channel) in channels.iter().enumerate() {
        let r = publish(&b, channel, json!(n)).await;
        assert_eq!(r["result"]["offset"], 1, "{channel}: {r}");
    }
    let mut got = HashSet::new();
    while got.len() < channels.len() {
        let push = sub.next_publication().await;
        got.insert(push["channel"].as_str().unwrap().to_string());
    }
    // The channels' keys spread over the masters, and each channel's keys live together.
    let mut masters_used = 0;
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &cluster.nodes {
        let keys = strings(node.port, &["KEYS", &format!("{prefix}.*")]).await;
        masters_used += usize::from(!keys.is_empty());
        for channel in &channels {
            if keys.iter().any(|k| k.ends_with(&format!("}}{channel}"))) {
                *holders.entry(channel).or_default() += 1;
            }
        }
    }
    assert!(masters_used >= 2, "channels spread over the masters");
    for channel in &channels {
        assert_eq!(
            holders.get(channel.as_str()),
            Some(&1),
            "{channel}: one master"
        );
    }
    // History and recovery through another node.
    let (_, history) = a
        .api("history", json!({"channel": "room0", "limit": -1}))
        .await;
    assert_eq!(history["result"]["publications"][0]["data"], 0, "{history}");
    drop(sub);
    for n in 1..=3 {
        publish(&b, "room0", json!(n)).await;
    }
    let mut back = a.client().await;
    let r = back
        .call(
            "subscribe",
            json!({"channel": "room0", "recover": true, "offset": 1, "epoch": epochs["room0"]}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    let data: Vec<Value> = r["subscribe"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(1), json!(2), json!(3)]);
    // Presence and the cluster-wide channel count.
    assert!(
        eventually(|| async {
            let (_, presence) = b.api("presence_stats", json!({"channel": "room0"})).await;
            presence["result"]["num_clients"] == 1
        })
        .await,
        "presence across nodes"
    );
    assert!(
        eventually(|| async {
            b.api("channels", json!({"pattern": "room0"})).await.1
                == json!({"result": {"channels": {"room0": {"num_clients": 1}}}})
        })
        .await,
        "channels across nodes"
    );
    a.stop().await;
    b.stop().await;
}

/// A map namespace `cursors` whose keys live 1 s unless published again.
fn with_cursors(config: &mut switchboard::Config) {
    use switchboard::config::{MapNamespace, Namespace};
    config.namespace.push(Namespace {
        name: "cursors".into(),
        allow_subscribe_for_client: Some(true),
        allow_subscribe_for_anonymous: Some(true),
        subscription_type: Some("map".into()),
        map: Some(MapNamespace {
            mode: Some("durable".into()),
            key_ttl: Some(Duration::from_secs(1)),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// Subscribes to map `channel` (small: one state page), then reads the stream to the live
/// phase; the keys of the state.
async fn map_subscribe(client: &mut Client, channel: &str) -> Vec<String> {
    let reply = client
        .call(
            "subscribe",
            json!({"channel": channel, "type": 1, "phase": 2, "limit": 100}),
        )
        .await;
    let state = &reply["subscribe"];
    assert!(state["cursor"].is_null(), "one page: {reply}");
    let keys = state["state"]
        .as_array()
        .map(|entries| {
            let keys = entries
                .iter()
                .map(|e| e["key"].as_str().unwrap_or_default());
            keys.map(str::to_string).collect()
        })
        .unwrap_or_default();
    let (mut offset, epoch) = (
        state["offset"].as_u64().unwrap_or(0),
        state["epoch"].clone(),
    );
    for _ in 0..100 {
        let reply = client
            .call(
                "subscribe",
                json!({"channel": channel, "type": 1, "phase": 1, "offset": offset,
                       "epoch": epoch, "limit": 100}),
            )
            .await;
        let result = &reply["subscribe"];
        assert!(result.is_object(), "stream page: {reply}");
        if result.get("phase").is_none() {
            return keys;
        }
        offset = result["offset"].as_u64().unwrap_or(offset);
    }
    panic!("{channel} never reached the live phase");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_keys_expire_once_across_masters() {
    let cluster = RedisCluster::start(3, 0).await;
    let prefix = unique_prefix();
    let node = || {
        let on = on_cluster(&cluster, &prefix);
        TestServer::with(move |c| {
            on(c);
            with_cursors(c);
        })
    };
    let (a, b) = (node().await, node().await);
    // Channels on every master; a subscriber of each on node b.
    let channels: Vec<String> = (0..9).map(|i| format!("cursors:{i}")).collect();
    let mut sub = b.client().await;
    for channel in &channels {
        assert!(map_subscribe(&mut sub, channel).await.is_empty());
    }
    for channel in &channels {
        let (_, reply) = a
            .api(
                "map_publish",
                json!({"channel": channel, "key": "ann", "data": {"x": 1}}),
            )
            .await;
        assert_eq!(reply["result"]["offset"], 1, "{reply}");
    }
    let mut masters = HashSet::new();
    for channel in &channels {
        masters.insert(cluster.master_holding(&format!("}}{channel}")).await);
    }
    assert!(masters.len() >= 2, "the maps spread over masters");
    // Each key is set, then removed once by whichever node swept first.
    let mut set = HashSet::new();
    let mut removed = HashSet::new();
    while removed.len() < channels.len() {
        let push = sub.next_publication().await;
        let channel = push["channel"].as_str().unwrap().to_string();
        assert_eq!(push["pub"]["key"], "ann", "{push}");
        if push["pub"]["removed"] == true {
            assert!(set.contains(&channel), "set before removed: {push}");
            assert_eq!(push["pub"]["offset"], 2, "removed once: {push}");
            assert!(removed.insert(channel), "removed twice: {push}");
        } else {
            assert!(set.insert(channel), "set once: {push}");
        }
    }
    assert!(
        sub.silent_for(Duration::from_millis(1500)).await || {
            // Only pings may follow, never a second removal.
            sub.next_message().await.get("push").is_none()
        }
    );
    for channel in &channels {
        let (_, stats) = a.api("map_stats", json!({"channel": channel})).await;
        assert_eq!(stats["result"]["num_keys"], 0, "{channel}: {stats}");
    }
    // Nothing is left to sweep: the list of channels with keys to expire is empty.
    let mut listed = 0;
    for node in &cluster.nodes {
        let key = format!("{prefix}.map_expiring_channels");
        listed += strings(node.port, &["ZRANGE", &key, "0", "-1"]).await.len();
    }
    assert_eq!(listed, 0);
    a.stop().await;
    b.stop().await;
}

/// What happens to the master of the test channel's slot mid-traffic.
enum Fault {
    /// Killed: its replica takes over.
    KillMaster,
    /// Its slot moves to another master (resharding).
    MoveSlot,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_loses_and_repeats_nothing_acknowledged() {
    // Two replicas per master: after the failover the new master still has one to wait for.
    channel_through(RedisCluster::start(3, 2).await, Fault::KillMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_confirm_makes_its_masters_publications_108() {
    let cluster = RedisCluster::start(3, 1).await;
    let prefix = unique_prefix();
    let node = TestServer::with(waiting_on_cluster(&cluster, &prefix)).await;
    // Two channels whose slots live on different masters.
    let mut owners: BTreeMap<usize, String> = BTreeMap::new();
    for n in 0..40 {
        let channel = format!("c{n}x");
        let r = publish(&node, &channel, json!(0)).await;
        assert_eq!(r["result"]["offset"], 1, "confirmed by the replica: {r}");
        let owner = cluster
            .master_holding(&format!("}}{channel}"))
            .await
            .expect("a master holds the channel");
        owners.entry(owner).or_insert(channel);
        if owners.len() == 2 {
            break;
        }
    }
    let mut owners = owners.into_iter();
    let (frozen_master, frozen_channel) = owners.next().unwrap();
    let (_, other_channel) = owners.next().expect("channels on two masters");
    let replica = cluster
        .replica_of(frozen_master)
        .await
        .expect("the master has a replica");
    // The replica freezes: its master keeps serving, but can have nothing confirmed.
    cluster.nodes[replica].pause();
    let refused = publish(&node, &frozen_channel, json!(1)).await;
    let other = publish(&node, &other_channel, json!(1)).await;
    cluster.nodes[replica].resume();
    assert_eq!(refused["error"]["code"], 108, "not acknowledged: {refused}");
    // The wait ran on the frozen replica's master only: the other master's replica confirmed.
    assert_eq!(other["result"]["offset"], 2, "{other}");
    // Thawed, the replica catches up and confirms again.
    assert!(
        eventually(|| async {
            publish(&node, &frozen_channel, json!(2)).await["result"]["offset"].is_u64()
        })
        .await,
        "acknowledged again once the replica is back"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharded_slot_loses_and_repeats_nothing() {
    channel_through(RedisCluster::start(3, 0).await, Fault::MoveSlot).await;
}

/// Two nodes, a subscriber on each, numbered publications through one node's API (a refused one
/// is sent again), and `fault` to the channel's master mid-traffic; then the chaos invariants.
async fn channel_through(mut cluster: RedisCluster, fault: Fault) {
    let prefix = unique_prefix();
    // Through a master's death, only the replica wait keeps what it acknowledged.
    let node = |cluster: &RedisCluster| -> Box<dyn FnOnce(&mut switchboard::Config)> {
        match fault {
            Fault::KillMaster => Box::new(waiting_on_cluster(cluster, &prefix)),
            Fault::MoveSlot => Box::new(on_cluster(cluster, &prefix)),
        }
    };
    let publishing_node = TestServer::with(node(&cluster)).await;
    let other_node = TestServer::with(node(&cluster)).await;
    let mut followers = [
        Follower::start(&publishing_node.ws_url(), "ledger").await,
        Follower::start(&other_node.ws_url(), "ledger").await,
    ];
    let publishing = Numbered::start(publishing_node.addr, "ledger", 200, Refused::Resend);
    publishing.wait_for(60).await;
    let owner = cluster
        .master_holding("}ledger")
        .await
        .expect("a master holds the channel");
    match fault {
        Fault::KillMaster => cluster.nodes[owner].stop(),
        Fault::MoveSlot => {
            let key = strings(cluster.nodes[owner].port, &["KEYS", "*}ledger"]).await;
            let to = (owner + 1) % cluster.nodes.len();
            cluster.move_slot_of(&key[0], owner, to).await;
            assert_eq!(cluster.master_holding("}ledger").await, Some(to), "moved");
        }
    }
    let mut healed = false;
    for _ in 0..3 {
        if eventually(|| cluster.healthy()).await {
            healed = true;
            break;
        }
    }
    assert!(healed, "every slot served again");
    let (acked, refused) = publishing.finish().await;
    assert_eq!(acked.len(), 200);
    assert!(
        refused > 0,
        "the fault was felt (publications refused while the slot had no master, or moved)"
    );
    // The other node reads the channel from the new master too, at once: it made no call to the
    // slot since the fault, so its slot map may still name the old master; a `MOVED` is followed.
    let history = other_node
        .api("history", json!({"channel": "ledger", "limit": -1}))
        .await
        .1;
    assert_kept(&history, &acked);
    for (name, follower) in ["publishing node", "other node"]
        .into_iter()
        .zip(followers.iter_mut())
    {
        follower.assert_followed(name, "ledger", &acked).await;
    }
    publishing_node.stop().await;
    other_node.stop().await;
}

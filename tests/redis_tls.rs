//! TLS to Redis: real redis-servers that speak TLS only (Debian's redis-server, `--tls-port`),
//! with a certificate signed by a CA made here (rcgen). Nodes given that CA (`redis_tls_ca`)
//! share a Redis over `rediss://`, a TLS master named by Sentinel, and a 3-master Redis Cluster
//! that speaks TLS to clients and on its bus (`tls-cluster yes`); a node given another CA
//! refuses to start, saying why.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::redis_server::*;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::json;

/// A CA, a server certificate it signed (for 127.0.0.1 and localhost), and the server's key,
/// as PEM files in a directory of their own.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn new() -> Certificates {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "switchboard test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        Certificates { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert(),
            key: self.key(),
            ca: self.ca(),
        }
    }

    async fn server(&self, more: &[&str]) -> RedisServer {
        RedisServer::start_tls(&self.files(), more).await
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn over_tls(url: String, ca: &Path, prefix: &str) -> impl FnOnce(&mut switchboard::Config) {
    let (ca, prefix) = (ca.to_path_buf(), prefix.to_string());
    move |c| {
        c.redis = vec![url];
        c.redis_tls_ca = Some(ca);
        c.redis_prefix = prefix;
    }
}

/// Where two nodes meet: the Redis servers (`rediss://` URLs: one, or a cluster's masters), the
/// CA to trust, the nodes' key prefix.
struct Meeting<'a> {
    redis: Vec<String>,
    ca: &'a Path,
    prefix: &'a str,
}

/// Whether the server at `url` (trusting `ca`) has a subscriber of `channel`'s topic, plain
/// (`PUBSUB CHANNELS`) or sharded (`PUBSUB SHARDCHANNELS`; on a cluster the topic carries the
/// channel's hash tag before its name).
async fn listens(url: &str, ca: &Path, prefix: &str, channel: &str) -> bool {
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(ca).unwrap()),
    };
    let Ok(client) = redis::Client::build_with_tls(url, certificates) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    for kind in ["CHANNELS", "SHARDCHANNELS"] {
        let topics: Vec<String> = redis::cmd("PUBSUB")
            .arg(kind)
            .arg(format!("{prefix}.pub.*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if topics.iter().any(|t| t.ends_with(channel)) {
            return true;
        }
    }
    false
}

/// Subscribes a client of `to` to `channel`, waits until `to` listens to the channel's topic
/// in Redis (asked over TLS too: the node's pub/sub connection may still be on its way, and a
/// publication before it would be a gap, told with 2500), publishes through `from`, and checks
/// the subscriber receives the publication and `to` reads it from history; then stops both.
async fn shared(from: TestServer, to: TestServer, channel: &str, at: Meeting<'_>) {
    let mut sub = to.client().await;
    sub.subscribe(channel).await;
    let listening = || async {
        for url in &at.redis {
            if listens(url, at.ca, at.prefix, channel).await {
                return true;
            }
        }
        false
    };
    assert!(eventually(listening).await, "the node listens to {channel}");
    let (_, reply) = from
        .api(
            "publish",
            json!({"channel": channel, "data": {"over": "tls"}}),
        )
        .await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    let push = sub.next_publication().await;
    assert_eq!(push["pub"]["data"], json!({"over": "tls"}), "{push}");
    let (_, history) = to
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    assert_eq!(
        history["result"]["publications"][0]["data"],
        json!({"over": "tls"}),
        "{history}"
    );
    drop(sub);
    from.stop().await;
    to.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_a_tls_redis_trusting_the_given_ca() {
    let certificates = Certificates::new();
    let redis = certificates.server(&[]).await;
    // The server speaks TLS only: a plain connection gets nothing.
    assert!(query(redis.port, &["PING"]).await.is_err(), "plain refused");
    let prefix = unique_prefix();
    let a = TestServer::with(over_tls(redis.tls_url(), &certificates.ca(), &prefix)).await;
    let b = TestServer::with(over_tls(redis.tls_url(), &certificates.ca(), &prefix)).await;
    let at = Meeting {
        redis: vec![redis.tls_url()],
        ca: &certificates.ca(),
        prefix: &prefix,
    };
    shared(a, b, "secure", at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_another_ca_signed_is_refused_at_start() {
    let certificates = Certificates::new();
    let stranger = Certificates::new();
    let redis = certificates.server(&[]).await;
    let mut config = switchboard::Config {
        data_dir: temp_dir(),
        ..switchboard::Config::default()
    };
    over_tls(redis.tls_url(), &stranger.ca(), &unique_prefix())(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::timeout(
        Duration::from_secs(20),
        switchboard::run(config, listener, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the start ends, refused");
    let error = started
        .expect_err("a certificate no trusted CA signed")
        .to_string();
    assert!(
        error.contains("Redis") && error.to_lowercase().contains("certificate"),
        "the error says why: {error}"
    );
    // A CA file that holds no certificate is refused too, naming the file.
    let empty = stranger.dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let mut config = switchboard::Config::default();
    over_tls(redis.tls_url(), &empty, "x")(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = switchboard::run(config, listener, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("no CA in the file")
        .to_string();
    assert!(error.contains("empty.pem"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_names_a_tls_master_the_nodes_reach_trusting_the_given_ca() {
    let certificates = Certificates::new();
    let password = "master-secret";
    let auth = ["--requirepass", password, "--masterauth", password];
    let master = certificates.server(&auth).await;
    let master_port = master.port.to_string();
    let mut replica_args = auth.to_vec();
    replica_args.extend([
        "--tls-replication",
        "yes",
        "--replicaof",
        "127.0.0.1",
        &master_port,
    ]);
    let _replica = certificates.server(&replica_args).await;
    // The Sentinels listen in plain text and reach the servers over TLS.
    let tls = [
        format!("tls-cert-file {}", certificates.cert().display()),
        format!("tls-key-file {}", certificates.key().display()),
        format!("tls-ca-cert-file {}", certificates.ca().display()),
        "tls-replication yes".to_string(),
    ];
    let sentinels = Sentinels::start_with(master.port, password, "sentinel-secret", &tls).await;
    let mut ready = false;
    for _ in 0..6 {
        if eventually(|| sentinels.ready(1)).await {
            ready = true;
            break;
        }
    }
    assert!(
        ready,
        "the Sentinels found each other and the replica over TLS"
    );
    let prefix = unique_prefix();
    let node = || {
        let (prefix, addresses, ca) = (prefix.clone(), sentinels.addresses(), certificates.ca());
        move |c: &mut switchboard::Config| {
            c.redis_sentinel = addresses;
            c.redis_sentinel_master = Some(SENTINEL_MASTER.into());
            c.redis_master_password = Some(password.into());
            c.redis_master_tls = true;
            c.redis_tls_ca = Some(ca);
            c.redis_prefix = prefix;
        }
    };
    let a = TestServer::with(node()).await;
    let b = TestServer::with(node()).await;
    let at = Meeting {
        redis: vec![format!("rediss://:{password}@127.0.0.1:{}", master.port)],
        ca: &certificates.ca(),
        prefix: &prefix,
    };
    shared(a, b, "secure", at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_a_tls_cluster_trusting_the_given_ca() {
    let certificates = Certificates::new();
    let cluster = RedisCluster::start_tls(3, &certificates.files()).await;
    let prefix = unique_prefix();
    let node = || {
        let (seeds, ca, prefix) = (cluster.seeds(), certificates.ca(), prefix.clone());
        TestServer::with(move |c| {
            c.redis_cluster = seeds;
            c.redis_tls_ca = Some(ca);
            c.redis_prefix = prefix;
        })
    };
    let (a, b) = (node().await, node().await);
    let at = Meeting {
        redis: cluster.seeds(),
        ca: &certificates.ca(),
        prefix: &prefix,
    };
    shared(a, b, "secure", at).await;
}

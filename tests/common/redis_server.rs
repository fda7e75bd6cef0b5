//! A real redis-server for multi-node tests, started on a free loopback port with its own
//! directory, and helpers to share it between nodes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{eventually, temp_dir};

/// A redis-server process of one test, with append-only persistence in its own directory.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// More arguments (a replica's `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(Vec::new()).await
    }

    /// A server whose clients (and replicas) must give `password`.
    pub async fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(auth_args(password)).await
    }

    /// A replica of the server on `master_port` (which wants `password`), syncing at once (no
    /// diskless-sync delay), wanting the same password.
    pub async fn start_replica_of(master_port: u16, password: &str) -> RedisServer {
        let mut args = auth_args(password);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master_port.to_string(),
        ]);
        Self::start_with(args).await
    }

    /// A server that speaks TLS only, with the certificate and key at `cert` and `key` (PEM),
    /// not asking clients for certificates; `more` arguments follow (a replica's
    /// `--replicaof` with `--tls-replication yes`).
    pub async fn start_tls(tls: &TlsFiles, more: &[&str]) -> RedisServer {
        let port = free_port();
        let mut args = tls.server_args(port);
        args.extend(more.iter().map(|a| a.to_string()));
        Self::start_on(port, args).await
    }

    /// The `rediss://` URL of a [`start_tls`](Self::start_tls) server.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    async fn start_with(extra: Vec<String>) -> RedisServer {
        Self::start_on(free_port(), extra).await
    }

    async fn start_on(port: u16, extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir: temp_dir(),
            extra,
        };
        server.launch().await;
        server
    }

    pub async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            eventually(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await,
            "redis-server listens"
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): it keeps its connections but answers nothing, as a
    /// server stuck on a slow disk or a long pause would; `resume` thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`pause`](Self::pause)d process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal}");
    }

    /// Runs a redis-cli-like command through the crate's client.
    pub async fn command(&self, args: &[&str]) {
        let _ = query(self.port, args).await.unwrap();
    }
}

fn auth_args(password: &str) -> Vec<String> {
    ["--requirepass", password, "--masterauth", password]
        .iter()
        .map(|a| a.to_string())
        .collect()
}

/// The PEM files of a TLS redis-server: its certificate and key, and the CA that signed it.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The arguments of a server speaking TLS only on `port` (and on its cluster bus, and to
    /// its master), not asking clients for certificates.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> = ["--port", "0", "--tls-port", &port.to_string()]
            .iter()
            .map(|a| a.to_string())
            .collect();
        for (flag, path) in [
            ("--tls-cert-file", &self.cert),
            ("--tls-key-file", &self.key),
            ("--tls-ca-cert-file", &self.ca),
        ] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        args.extend(["--tls-auth-clients", "no", "--tls-cluster", "yes"].map(String::from));
        args
    }
}

/// [`query`] over TLS, trusting the CA in the PEM file `ca`.
pub async fn query_tls(
    port: u16,
    ca: &std::path::Path,
    args: &[&str],
) -> redis::RedisResult<redis::Value> {
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(ca)?),
    };
    let url = format!("rediss://127.0.0.1:{port}");
    let client = redis::Client::build_with_tls(url.as_str(), certificates)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await
}

/// Sends one command to the server (or Sentinel) on `port`; its reply, or why there is none.
pub async fn query(port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
    query_with_password(port, None, args).await
}

/// [`query`] to a server that wants `password`.
pub async fn query_with_password(
    port: u16,
    password: Option<&str>,
    args: &[&str],
) -> redis::RedisResult<redis::Value> {
    let auth = password.map_or(String::new(), |p| format!(":{p}@"));
    let client = redis::Client::open(format!("redis://{auth}127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await
}

/// Three `redis-sentinel`s watching the master on `master_port` under the name `main`, quick to
/// decide (1 s without an answer is down), each with its own config file and directory.
pub struct Sentinels {
    children: Vec<super::KillOnDrop>,
    pub ports: Vec<u16>,
    dirs: Vec<PathBuf>,
    /// The Sentinels' own password (the master's differs).
    password: String,
}

/// The name the test Sentinels monitor their master under.
pub const SENTINEL_MASTER: &str = "main";

impl Sentinels {
    pub async fn start(master_port: u16, master_password: &str, password: &str) -> Sentinels {
        Self::start_with(master_port, master_password, password, &[]).await
    }

    /// [`start`](Self::start), with more lines in each Sentinel's config file (TLS settings).
    pub async fn start_with(
        master_port: u16,
        master_password: &str,
        password: &str,
        more: &[String],
    ) -> Sentinels {
        let mut sentinels = Sentinels {
            children: Vec::new(),
            ports: Vec::new(),
            dirs: Vec::new(),
            password: password.to_string(),
        };
        for _ in 0..3 {
            let port = free_port();
            let dir = temp_dir();
            let config = dir.join("sentinel.conf");
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 4000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n\
                     sentinel auth-pass {SENTINEL_MASTER} {master_password}\n\
                     requirepass {password}\nsentinel sentinel-pass {password}\n{more}\n",
                    dir = dir.display(),
                    more = more.join("\n"),
                ),
            )
            .unwrap();
            let child = Command::new("redis-sentinel")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel must be installed (apt-get install redis-sentinel)");
            sentinels.children.push(super::KillOnDrop(child));
            sentinels.ports.push(port);
            sentinels.dirs.push(dir);
        }
        sentinels
    }

    /// The Sentinels' addresses, as `--redis-sentinel` takes them.
    pub fn addresses(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://:{}@127.0.0.1:{p}", self.password))
            .collect()
    }

    /// The master's port as the Sentinel on `ports[index]` names it now.
    pub async fn master_port(&self, index: usize) -> Option<u16> {
        let reply = query_with_password(
            self.ports[index],
            Some(&self.password),
            &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
        )
        .await
        .ok()?;
        let (_, port): (String, String) = redis::from_redis_value(reply).ok()?;
        port.parse().ok()
    }

    /// Whether every Sentinel knows the other two and `replicas` replicas of the master, so a
    /// failover can be agreed on.
    pub async fn ready(&self, replicas: usize) -> bool {
        for port in &self.ports {
            let args = ["SENTINEL", "master", SENTINEL_MASTER];
            let Ok(reply) = query_with_password(*port, Some(&self.password), &args).await else {
                return false;
            };
            let Ok(fields) = redis::from_redis_value::<Vec<String>>(reply) else {
                return false;
            };
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| pair[0] == name)
                    .and_then(|pair| pair.get(1))
                    .and_then(|v| v.parse::<usize>().ok())
            };
            if field("num-slaves") != Some(replicas) || field("num-other-sentinels") != Some(2) {
                return false;
            }
        }
        true
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            child.kill();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A Redis Cluster on free loopback ports: `masters` masters with `replicas` replicas each
/// (`redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`), quick to fail
/// over (1 s without an answer is down).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// Over TLS (`tls-cluster yes`): the servers' files.
    tls: Option<TlsFiles>,
}

impl RedisCluster {
    pub async fn start(masters: usize, replicas: usize) -> RedisCluster {
        Self::start_with(masters, replicas, None).await
    }

    /// A cluster whose nodes speak TLS only, to clients and on the cluster bus.
    pub async fn start_tls(masters: usize, tls: &TlsFiles) -> RedisCluster {
        Self::start_with(masters, 0, Some(tls.clone())).await
    }

    async fn start_with(masters: usize, replicas: usize, tls: Option<TlsFiles>) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = cluster_port();
            let mut args: Vec<String> = tls.as_ref().map_or(Vec::new(), |t| t.server_args(port));
            let cluster = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ];
            args.extend(cluster.map(String::from));
            nodes.push(RedisServer::start_on(port, args).await);
        }
        let mut create = Command::new("redis-cli");
        if let Some(tls) = &tls {
            create.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        let status = create
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(status.success(), "redis-cli --cluster create");
        let cluster = RedisCluster { nodes, tls };
        let mut ok = false;
        for _ in 0..3 {
            if super::eventually(|| cluster.healthy()).await {
                ok = true;
                break;
            }
        }
        assert!(ok, "the cluster formed");
        cluster
    }

    /// The seed nodes, as `--redis-cluster` takes them (`rediss://` URLs over TLS).
    pub fn seeds(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "rediss://" } else { "" };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}127.0.0.1:{}", n.port))
            .collect()
    }

    /// [`query`] to the node on `port`, over TLS if the cluster speaks it.
    pub async fn query(&self, port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
        match &self.tls {
            Some(tls) => query_tls(port, &tls.ca, args).await,
            None => query(port, args).await,
        }
    }

    /// Whether every running node reports the cluster OK, with every slot served.
    pub async fn healthy(&self) -> bool {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(info) = self.query(node.port, &["CLUSTER", "INFO"]).await else {
                return false;
            };
            let Ok(info) = redis::from_redis_value::<String>(info) else {
                return false;
            };
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return false;
            }
        }
        true
    }

    /// The index of the running master that holds a key containing `fragment`, if one does.
    pub async fn master_holding(&self, fragment: &str) -> Option<usize> {
        for (index, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let Ok(role) = self.query(node.port, &["ROLE"]).await else {
                continue;
            };
            let Ok(role) = redis::from_redis_value::<Vec<redis::Value>>(role) else {
                continue;
            };
            if role.first() != Some(&redis::Value::BulkString(b"master".to_vec())) {
                continue;
            }
            let pattern = format!("*{fragment}*");
            if let Ok(keys) = self.query(node.port, &["KEYS", &pattern]).await {
                if redis::from_redis_value::<Vec<String>>(keys).is_ok_and(|k| !k.is_empty()) {
                    return Some(index);
                }
            }
        }
        None
    }
}

impl RedisCluster {
    /// The index of the running replica of the master on node `master`, if it has one.
    pub async fn replica_of(&self, master: usize) -> Option<usize> {
        let master_port = self.nodes[master].port as i64;
        for (index, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let Ok(role) = self.query(node.port, &["ROLE"]).await else {
                continue;
            };
            // A replica's ROLE: ["slave", master host, master port, state, offset].
            let Ok((kind, _, port, _, _)) =
                redis::from_redis_value::<(String, String, i64, String, i64)>(role)
            else {
                continue;
            };
            if kind == "slave" && port == master_port {
                return Some(index);
            }
        }
        None
    }

    /// Moves the slot of `key` from the master on node `from` to the master on node `to`, keys
    /// and all (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE`, `CLUSTER SETSLOT … NODE`):
    /// what `redis-cli --cluster reshard` does, for one slot.
    pub async fn move_slot_of(&self, key: &str, from: usize, to: usize) {
        let (source, target) = (self.nodes[from].port, self.nodes[to].port);
        let slot: i64 =
            redis::from_redis_value(query(source, &["CLUSTER", "KEYSLOT", key]).await.unwrap())
                .unwrap();
        let slot = slot.to_string();
        let id = |port| async move {
            redis::from_redis_value::<String>(query(port, &["CLUSTER", "MYID"]).await.unwrap())
                .unwrap()
        };
        let (source_id, target_id) = (id(source).await, id(target).await);
        query(
            target,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
        )
        .await
        .unwrap();
        query(
            source,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
        )
        .await
        .unwrap();
        loop {
            let keys = strings_of(
                query(source, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])
                    .await
                    .unwrap(),
            );
            if keys.is_empty() {
                break;
            }
            let target_port = target.to_string();
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                "5000",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            query(source, &args).await.unwrap();
        }
        // The new owner first, then the old one, then the rest.
        let mut ports = vec![target, source];
        ports.extend(
            self.nodes
                .iter()
                .filter(|n| n.child.is_some() && n.port != source && n.port != target)
                .map(|n| n.port),
        );
        for port in ports {
            query(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id])
                .await
                .unwrap();
        }
    }
}

fn strings_of(value: redis::Value) -> Vec<String> {
    redis::from_redis_value(value).unwrap_or_default()
}

/// A free port whose cluster bus port (10000 above) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

//! The deployment of `deploy/`, for real: Debian's nginx running `deploy/nginx.conf` (its ports
//! and listen line replaced) in front of two Switchboard nodes (the real binary, with
//! `--trusted-proxies` for nginx's address) on a real redis-server, clients connecting through
//! nginx from their own loopback addresses (127.0.1.x).
//!
//! Checks that clients connect through nginx and reach either node; that when a node restarts,
//! its clients, closed with 3001, reconnect through nginx to the other and recover every
//! publication they missed, none lost, none twice; and that the per-address connection limit
//! counts each client's own address, not nginx's.
//!
//! Needs nginx at /usr/sbin/nginx (or `SWITCHBOARD_NGINX`) and redis-server; `./test.sh`
//! installs both. Without them the test fails saying so.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::redis_server::*;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Subscribers, each from its own address.
const CLIENTS: u8 = 6;
const CHANNEL: &str = "news";

fn nginx_binary() -> PathBuf {
    std::env::var_os("SWITCHBOARD_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// nginx, not daemonized, with its configuration, pid and logs in its own directory.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Runs `deploy/nginx.conf` on `port`, in front of the nodes on `upstreams`.
    async fn start(port: u16, upstreams: [u16; 2]) -> Nginx {
        let binary = nginx_binary();
        assert!(
            binary.is_file(),
            "{} is missing: install Debian's nginx (`apt-get install nginx`; ./test.sh does) or \
             point SWITCHBOARD_NGINX at an nginx binary",
            binary.display()
        );
        let dir = temp_dir();
        let site = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"),
        )
        .unwrap();
        let replaced = |text: String, from: &str, to: &str| {
            assert!(text.contains(from), "deploy/nginx.conf has no {from:?}");
            text.replace(from, to)
        };
        let site = replaced(site, "listen 80;", &format!("listen 127.0.0.1:{port};"));
        let site = replaced(
            site,
            "127.0.0.1:8001",
            &format!("127.0.0.1:{}", upstreams[0]),
        );
        let site = replaced(
            site,
            "127.0.0.1:8002",
            &format!("127.0.0.1:{}", upstreams[1]),
        );
        std::fs::write(dir.join("site.conf"), site).unwrap();
        let d = dir.display();
        // As root, nginx would switch its workers to `nobody`, who cannot use this directory.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let main = format!(
            "{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(&binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let nginx = Nginx { child, port, dir };
        let addr = nginx.addr();
        assert!(
            eventually(|| async move { TcpStream::connect(addr).await.is_ok() }).await,
            "nginx listens (its log: {})",
            nginx.log()
        );
        nginx
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: nginx's graceful stop, which takes its worker along; then wait, bounded.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node: the real binary, as `deploy/switchboard.service` runs it.
struct Node {
    child: Option<Child>,
    dir: PathBuf,
}

impl Node {
    async fn start(port: u16, redis: &RedisServer, prefix: &str, name: &str) -> Node {
        let dir = temp_dir();
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--port", &port.to_string(), "--name", name])
            .args(["--redis", &redis.url(), "--redis-prefix", prefix])
            // nginx connects to the nodes from 127.0.0.1; clients come from 127.0.1.x.
            .args(["--trusted-proxies", "127.0.0.1/32"])
            // One new connection per second per address, a burst of two: each client
            // connects once and reconnects once; a third connection at once is refused.
            .args(["--connection-rate-per-ip", "1"])
            .arg("--data-dir")
            .arg(&dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            eventually(|| async move { TcpStream::connect(addr).await.is_ok() }).await,
            "node {name} listens"
        );
        Node {
            child: Some(child),
            dir,
        }
    }

    /// SIGTERM, as systemd stops it: its clients are closed with 3001.
    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens a WebSocket through `proxy` from `source`; the handshake's HTTP status on refusal.
async fn open_from(proxy: SocketAddr, source: IpAddr) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    let request = format!("ws://{proxy}/connection/websocket")
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
    {
        Ok((ws, _)) => Ok(Client::from_ws(ws)),
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("handshake through nginx failed: {e}"),
    }
}

/// A POST to the server API through nginx.
async fn api(proxy: SocketAddr, method: &str, body: Value) -> Value {
    let (status, reply) = api_call(proxy, method, &body.to_string(), None).await;
    assert_eq!(status, 200, "{method}: {reply}");
    reply
}

/// A subscriber with what it received, and where it stands in the stream.
struct Subscriber {
    source: IpAddr,
    client: Client,
    received: Vec<u64>,
    offset: u64,
    epoch: String,
}

impl Subscriber {
    async fn join(proxy: SocketAddr, source: IpAddr) -> Subscriber {
        let mut client = open_from(proxy, source).await.expect("connects");
        client.connect(json!({})).await;
        let reply = client.call("subscribe", json!({"channel": CHANNEL})).await;
        assert!(reply.get("error").is_none(), "{reply}");
        Subscriber {
            source,
            client,
            received: Vec::new(),
            offset: reply["subscribe"]["offset"].as_u64().unwrap_or(0),
            epoch: reply["subscribe"]["epoch"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        }
    }

    fn note(&mut self, publication: &Value) {
        self.received
            .push(publication["data"]["n"].as_u64().expect("n"));
        self.offset = publication["offset"].as_u64().expect("offset");
    }

    /// Reads until publication `n` has arrived; `false` if the connection closed with 3001
    /// (the node shut down) first.
    async fn read_until(&mut self, n: u64) -> bool {
        while self.received.last() != Some(&n) {
            match self.client.next_event().await {
                Event::Message(m) if m.get("push").is_some() => {
                    if let Some(publication) = m["push"].get("pub") {
                        let publication = publication.clone();
                        self.note(&publication);
                    }
                }
                Event::Message(_) => {}
                Event::Closed(code, reason) => {
                    assert_eq!(code, 3001, "closed with {code} {reason}");
                    return false;
                }
                Event::Dropped => panic!("dropped without a close frame"),
            }
        }
        true
    }

    /// Reconnects through nginx and resubscribes from where it stood: what it missed comes
    /// back in the subscribe reply.
    async fn reconnect(&mut self, proxy: SocketAddr) {
        let mut client = open_from(proxy, self.source).await.expect("reconnects");
        client.connect(json!({})).await;
        let reply = client
            .call(
                "subscribe",
                json!({"channel": CHANNEL, "recover": true, "offset": self.offset,
                       "epoch": self.epoch}),
            )
            .await;
        assert!(reply.get("error").is_none(), "{reply}");
        assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
        for publication in reply["subscribe"]["publications"]
            .as_array()
            .unwrap_or(&vec![])
        {
            self.note(publication);
        }
        self.client = client;
    }
}

/// Clients per node name, from `/api/info` through nginx.
async fn clients_per_node(proxy: SocketAddr) -> Vec<(String, u64)> {
    let info = api(proxy, "info", json!({})).await;
    let mut nodes: Vec<(String, u64)> = info["result"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["num_clients"].as_u64().unwrap(),
            )
        })
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_nginx_survive_a_restart_and_limit_each_client_address() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let ports = [free_port(), free_port()];
    let mut a = Node::start(ports[0], &redis, &prefix, "node-a").await;
    let _b = Node::start(ports[1], &redis, &prefix, "node-b").await;
    let nginx = Nginx::start(free_port(), ports).await;
    let proxy = nginx.addr();

    // The pages, health and the dashboard's event stream (unbuffered) come through nginx too.
    let (status, page) = get(proxy, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Switchboard</title>"), "{page}");
    assert_eq!(get(proxy, "/health").await.0, 200);

    // Clients from their own addresses, spread by nginx over both nodes.
    let mut subscribers = Vec::new();
    for i in 1..=CLIENTS {
        let source = IpAddr::from([127, 0, 1, i]);
        subscribers.push(Subscriber::join(proxy, source).await);
    }
    assert!(
        eventually(|| async {
            let nodes = clients_per_node(proxy).await;
            nodes.len() == 2
                && nodes.iter().all(|(_, n)| *n > 0)
                && nodes.iter().map(|(_, n)| n).sum::<u64>() == u64::from(CLIENTS)
        })
        .await,
        "both nodes serve clients: {:?}",
        clients_per_node(proxy).await
    );

    // Each node's dashboard (streamed through nginx, unbuffered) lists its clients by their
    // own addresses, never nginx's.
    for _ in 0..2 {
        let snapshot = first_event(proxy, "/dashboard/events").await;
        let data = snapshot.split_once("data:").expect("event data").1.trim();
        let snapshot: Value = serde_json::from_str(data).unwrap();
        let addresses = snapshot["client_addresses"].as_array().unwrap();
        assert!(!addresses.is_empty(), "{snapshot}");
        for entry in addresses {
            let address = entry[0].as_str().unwrap();
            assert!(
                address.starts_with("127.0.1."),
                "{address} listed: {snapshot}"
            );
        }
    }

    let publish = |n: u64| async move {
        let reply = api(
            proxy,
            "publish",
            json!({"channel": CHANNEL, "data": {"n": n}}),
        )
        .await;
        assert!(reply.get("result").is_some(), "{reply}");
    };
    for n in 1..=3 {
        publish(n).await;
    }
    for s in subscribers.iter_mut() {
        assert!(s.read_until(3).await, "{} received 1..3", s.source);
    }

    // Node A restarts: its clients are closed with 3001. Meanwhile publications go on, through
    // nginx to node B.
    a.terminate();
    for n in 4..=6 {
        publish(n).await;
    }
    let mut moved = 0;
    for s in subscribers.iter_mut() {
        if !s.read_until(6).await {
            moved += 1;
            s.reconnect(proxy).await;
        }
    }
    assert!(moved > 0, "some clients were on the restarted node");
    let a = Node::start(ports[0], &redis, &prefix, "node-a").await;
    publish(7).await;
    for s in subscribers.iter_mut() {
        assert!(s.read_until(7).await, "{} received 7", s.source);
        assert_eq!(
            s.received,
            (1..=7).collect::<Vec<_>>(),
            "{}: every publication once, in order",
            s.source
        );
    }

    // The per-address limit (a burst of two per node) counts each client's own address behind
    // nginx: eight new connections from one address, spread over two nodes, cannot all pass;
    // one each from eight other addresses all do.
    let crowded = IpAddr::from([127, 0, 2, 1]);
    let mut refused = 0;
    let mut open = Vec::new();
    for _ in 0..8 {
        match open_from(proxy, crowded).await {
            Ok(client) => open.push(client),
            Err(status) => {
                assert_eq!(status, 429);
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "one address cannot open eight connections at once"
    );
    for i in 1..=8 {
        let source = IpAddr::from([127, 0, 3, i]);
        open.push(
            open_from(proxy, source)
                .await
                .expect("another address is not limited"),
        );
    }
    drop(open);
    drop(subscribers);
    drop(a);
}

/// The first Server-Sent Event of `path` through nginx: arrives only if nginx passes the stream
/// on as it comes.
async fn first_event(proxy: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {proxy}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("an event through nginx in time")
            .unwrap();
        assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(at) = text.find("event: snapshot") {
            if let Some(end) = text[at..].find("\n\n") {
                return text[at..at + end].to_string();
            }
        }
        assert!(seen.len() < 1 << 20, "no event in the first MiB");
    }
}

/// A raw HTTP GET through nginx.
async fn get(proxy: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {proxy}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

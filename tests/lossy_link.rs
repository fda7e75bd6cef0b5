//! A real lossy link: the server runs in a network namespace made by this test, reached through a
//! veth pair, and the kernel drops packets on that link (an nftables rule drawing a random number
//! per packet: `tc netem` needs a kernel module this test cannot count on, and loss is what
//! matters here — TCP's own retransmissions, timeouts and backoff, not a proxy's idea of them).
//! The link loses 15% of the packets each way while publications flow, then all of them for three
//! seconds (half-open connections on both sides), then none. Invariants afterwards:
//!
//! - **durable**: the history holds every publication the API acknowledged, once, in order;
//! - **ordered**: no subscriber receives a publication twice or out of order;
//! - **told, not lost**: every subscriber ends with every acknowledged publication, and each was
//!   cut off by the outage and recovered from its position at least once;
//! - **no ghosts**: the server's half-open connections are closed (no pong) and its connection
//!   count ends at the live subscribers.
//!
//! Needs root (or `sudo` without a password) for `ip netns` and `nft`: `./test.sh` runs as root on
//! CI and installs `nftables`. Without them the test fails, saying so.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::follower::{assert_durable, Follower};
use common::{temp_dir, KillOnDrop};
use serde_json::{json, Value};

const API_KEY: &str = "lossy-link-key";
const CHANNEL: &str = "ledger";

/// Whether this process runs as root; otherwise privileged commands go through `sudo -n`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// `program` run with the privileges network namespaces need.
fn privileged_command(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-n").arg(program);
        sudo
    }
}

/// Runs a privileged command, failing the test with its output when it fails.
fn privileged(args: &[&str]) {
    let output = privileged_command(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "`{}` could not run ({e}): this test needs iproute2 and nftables, as root or \
                 with passwordless sudo (./test.sh installs them)",
                args.join(" ")
            )
        });
    assert!(
        output.status.success(),
        "`{}` failed: {}{} — this test needs root (or passwordless sudo) for network namespaces",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace joined to this one by a veth pair; deleted (with the pair) when dropped.
struct LossyLink {
    namespace: String,
    /// The server's side of the link.
    inside: String,
}

impl LossyLink {
    fn create() -> LossyLink {
        let id = std::process::id();
        let namespace = format!("sb-lossy-{id}");
        let (outer_if, inner_if) = (
            format!("sbl{}a", id % 100_000),
            format!("sbl{}b", id % 100_000),
        );
        // One /30 per process id, so two runs at once do not collide.
        let subnet = (id % 16_000) * 4;
        let (b, c) = (subnet / 256 % 64, subnet % 256);
        let outside = format!("10.{}.{b}.{}", 200 + (subnet / 16_384), c + 1);
        let inside = format!("10.{}.{b}.{}", 200 + (subnet / 16_384), c + 2);
        // A namespace left by a killed earlier run with this id is removed first.
        remove_namespace(&namespace);
        let link = LossyLink {
            namespace: namespace.clone(),
            inside: inside.clone(),
        };
        let ns = namespace.as_str();
        privileged(&["ip", "netns", "add", ns]);
        privileged(&[
            "ip", "link", "add", &outer_if, "type", "veth", "peer", "name", &inner_if, "netns", ns,
        ]);
        privileged(&[
            "ip",
            "addr",
            "add",
            &format!("{outside}/30"),
            "dev",
            &outer_if,
        ]);
        privileged(&["ip", "link", "set", &outer_if, "up"]);
        privileged(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &inner_if,
        ]);
        privileged(&["ip", "-n", ns, "link", "set", &inner_if, "up"]);
        privileged(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        privileged(&[
            "ip", "netns", "exec", ns, "nft", "add", "table", "inet", "lossy",
        ]);
        for hook in ["input", "output"] {
            privileged(&[
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "add",
                "chain",
                "inet",
                "lossy",
                hook,
                &format!("{{ type filter hook {hook} priority 0; }}"),
            ]);
        }
        link
    }

    /// Drops `percent` of the TCP packets crossing the link, each way (0 stops dropping).
    fn set_loss(&self, percent: u32) {
        let ns = self.namespace.as_str();
        for hook in ["input", "output"] {
            privileged(&[
                "ip", "netns", "exec", ns, "nft", "flush", "chain", "inet", "lossy", hook,
            ]);
            let mut rule = vec![
                "ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "lossy", hook, "iifname",
                "!=", "lo", "oifname", "!=", "lo", "meta", "l4proto", "tcp",
            ];
            let threshold = percent.to_string();
            match percent {
                0 => continue,
                1..=99 => rule.extend(["numgen", "random", "mod", "100", "<", &threshold]),
                _ => {}
            }
            rule.push("drop");
            privileged(&rule);
        }
    }
}

impl LossyLink {
    /// TCP segments the server's side of the link has retransmitted so far (`RetransSegs` of the
    /// namespace's `/proc/net/snmp`).
    fn retransmitted_segments(&self) -> u64 {
        let output = privileged_command("ip")
            .args(["netns", "exec", &self.namespace, "cat", "/proc/net/snmp"])
            .output()
            .expect("reads the namespace's TCP counters");
        let snmp = String::from_utf8_lossy(&output.stdout);
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "RetransSegs")
            .and_then(|(_, value)| value.parse().ok())
            .expect("/proc/net/snmp has RetransSegs")
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        remove_namespace(&self.namespace);
    }
}

/// Deletes a namespace if it exists (with its end of the veth pair, which deletes the pair),
/// killing what still runs in it first (a server started through `sudo` is not the test's child
/// to kill).
fn remove_namespace(namespace: &str) {
    if let Ok(output) = privileged_command("ip")
        .args(["netns", "pids", namespace])
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let _ = privileged_command("kill").args(["-9", pid]).status();
        }
    }
    let _ = privileged_command("ip")
        .args(["netns", "del", namespace])
        .stderr(Stdio::null())
        .status();
}

/// A server API caller on one kept-alive connection (a new connection per call would pay a lost
/// SYN's one-second retransmission far more often than the test needs).
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .header("X-API-Key", API_KEY)
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(response.status(), 200, "{method}");
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_link_then_an_outage_lose_and_repeat_nothing() {
    let link = LossyLink::create();
    let data = temp_dir();
    let port = "8000";
    let child = privileged_command("ip")
        .args(["netns", "exec", &link.namespace])
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "serve",
            "--address",
            &link.inside,
            "--port",
            port,
            "--insecure",
        ])
        .args(["--api-key", API_KEY, "--data-dir"])
        .arg(&data)
        // A ping every second and a pong due within one: the outage's half-open connections
        // are found while it lasts.
        .args(["--ping-interval", "1", "--pong-timeout", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("the server starts in the namespace");
    let _server = KillOnDrop(child);
    let base = format!("http://{}:{port}", link.inside);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while api.http.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server in the namespace never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!("ws://{}:{port}/connection/websocket", link.inside);
    let mut followers = Vec::new();
    for _ in 0..3 {
        let mut follower = Follower::start(&url, CHANNEL).await;
        follower.reconnects_on_drop = true;
        followers.push(follower);
    }
    link.set_loss(15);

    let top = 200u64;
    let acked: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let publishing = {
        let (api, acked) = (api.clone(), acked.clone());
        tokio::spawn(async move {
            for n in 1..=top {
                let reply = api
                    .call("publish", json!({"channel": CHANNEL, "data": {"n": n}}))
                    .await;
                let offset = reply["result"]["offset"].as_u64().unwrap();
                acked.lock().unwrap().insert(offset, n);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let running: Vec<_> = followers
        .into_iter()
        .map(|mut follower| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(60), follower.follow(CHANNEL, top))
                    .await
                    .unwrap_or_else(|_| panic!("reached offset {} of {top}", follower.last));
                // What it saw, and its connection kept up (pings answered) from now on.
                let seen = (follower.seen.clone(), follower.recoveries);
                (seen, follower.stay_connected())
            })
        })
        .collect();

    // Lossy until half of the publications are acknowledged, then an outage longer than a
    // ping and its pong timeout, then a clean link.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (acked.lock().unwrap().len() as u64) < top / 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing stalled on the lossy link"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The loss bit: the server's TCP retransmitted what the link dropped.
    let retransmitted = link.retransmitted_segments();
    assert!(
        retransmitted > 0,
        "no segment was retransmitted on the lossy link"
    );
    eprintln!("lossy phase: {retransmitted} segments retransmitted by the server");
    link.set_loss(100);
    tokio::time::sleep(Duration::from_secs(3)).await;
    link.set_loss(0);

    tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publishing ends once the link is back")
        .unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, top);

    // durable.
    let history = api
        .call("history", json!({"channel": CHANNEL, "limit": -1}))
        .await;
    assert_durable(&history, &acked);

    // ordered; told, not lost.
    let mut alive = Vec::new();
    for running in running {
        let ((seen, recoveries), connected) = running.await.unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "a publication came twice or out of order: {seen:?}"
        );
        let missing: Vec<_> = acked.keys().filter(|o| !seen.contains(o)).collect();
        assert!(missing.is_empty(), "missing {missing:?}");
        assert!(recoveries >= 1, "the outage never cut this subscriber off");
        eprintln!(
            "a subscriber received {} publications and recovered {recoveries} times",
            seen.len()
        );
        alive.push(connected);
    }

    // no ghosts: the server closed the half-open connections it held during the outage.
    let metrics_url = format!("{base}/metrics");
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        last = match api.http.get(&metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => last,
        };
        if last.contains("switchboard_connections 3\n") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections never came back to the 3 live ones: {}",
            last.lines()
                .filter(|l| l.starts_with("switchboard_connections"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(alive);
    let _ = std::fs::remove_dir_all(&data);
}

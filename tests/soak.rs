//! A two-minute soak of the real binary (`switchboard bench soak`): subscribers, a paced publisher
//! and connection churn (clean closes and dropped sockets). Invariants: every publication reaches
//! every subscriber of its channel once and in order, every churned visit succeeds, and once the
//! churn stops the server is back to its connections, open files and runtime tasks from before it
//! (nothing leaked). Memory growth is reported by the bench (BENCHMARKS.md), not asserted.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_minutes_of_churn_leak_nothing_and_lose_nothing() {
    let dir = temp_dir();
    let port = redis_server::free_port();
    let server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            // The bench opens its 200 subscribers from one address at once.
            .args([
                "serve",
                "--port",
                &port.to_string(),
                "--connection-rate-per-ip",
                "0",
            ])
            .arg("--data-dir")
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("binary starts"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(eventually(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await);
    let pid = server.0.id().to_string();
    let url = format!("ws://{addr}/connection/websocket");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([
                "bench", "soak", "-d", "2m", "-n", "200", "-k", "10", "-r", "200",
            ])
            .args([
                "--churn", "20", "--url", &url, "--pid", &pid, "--json", "--quiet",
            ])
            .output()
            .expect("bench runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let field = |name: &str| report[name].as_u64().unwrap();
    assert!(field("published") > 1000, "{report:#}");
    assert_eq!(
        field("delivered"),
        field("expected_deliveries"),
        "{report:#}"
    );
    assert_eq!(field("lost"), 0, "{report:#}");
    assert_eq!(field("duplicates"), 0, "{report:#}");
    assert!(field("churned") > 500, "{report:#}");
    assert_eq!(field("churn_failures"), 0, "{report:#}");
    let (baseline, settled) = (&report["baseline"], &report["settled"]);
    assert_eq!(settled["connections"], 201, "{report:#}");
    for gauge in ["open_files", "runtime_tasks"] {
        let before = baseline[gauge].as_u64().unwrap();
        let after = settled[gauge].as_u64().unwrap();
        assert!(
            after <= before + 2,
            "{gauge}: {before} before the churn, {after} after: {report:#}"
        );
    }
    assert!(
        report["failures"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

//! Crash safety: the real binary is killed with SIGKILL under load and restarted on the same data
//! directory; every publication acknowledged before the kill must still be there.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

/// Starts `switchboard serve` on a free loopback port with `data_dir`.
async fn start_binary(data_dir: &std::path::Path) -> (Child, SocketAddr) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = eventually(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
    assert!(up, "server listens on {addr}");
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publications_survive_sigkill() {
    let dir = temp_dir();
    let (mut child, addr) = start_binary(&dir).await;
    let acked: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let epochs: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut publishers = Vec::new();
    for p in 0..8 {
        let (acked, epochs, stop) = (acked.clone(), epochs.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0..100_000u64 {
                if stop.is_cancelled() {
                    break;
                }
                let data = format!("{p}-{i}");
                let body = json!({"channel": "ledger", "data": data}).to_string();
                let Ok((200, reply)) = try_api(addr, &body).await else {
                    break; // the server is gone: this publication was never acknowledged
                };
                let offset = reply["result"]["offset"].as_u64().unwrap();
                acked.lock().unwrap().insert(offset, data);
                epochs
                    .lock()
                    .unwrap()
                    .push(reply["result"]["epoch"].as_str().unwrap().into());
            }
        }));
    }
    // Let acknowledgements pile up, then kill the server mid-stream.
    assert!(eventually(|| async { acked.lock().unwrap().len() >= 300 }).await);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stop.cancel();
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let epochs = epochs.lock().unwrap().clone();
    assert!(
        epochs.windows(2).all(|w| w[0] == w[1]),
        "one epoch before the kill"
    );

    let (mut child, addr) = start_binary(&dir).await;
    let (status, reply) = api_call(
        addr,
        "history",
        &json!({"channel": "ledger", "limit": -1}).to_string(),
        None,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, 200);
    let result = &reply["result"];
    assert_eq!(
        result["epoch"],
        epochs[0].as_str(),
        "epoch unchanged by the crash"
    );
    let stored: HashMap<u64, String> = result["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (offset, data) in &acked {
        assert_eq!(
            stored.get(offset),
            Some(data),
            "acknowledged publication {offset} lost or changed"
        );
    }
    let top = result["offset"].as_u64().unwrap();
    assert!(top >= acked.len() as u64);
    let offsets: Vec<u64> = {
        let mut o: Vec<u64> = stored.keys().copied().collect();
        o.sort();
        o
    };
    assert_eq!(
        offsets,
        (1..=top).collect::<Vec<_>>(),
        "no gap in the stream"
    );
}

/// An API publish that reports a dead server as an error instead of panicking.
async fn try_api(addr: SocketAddr, body: &str) -> std::io::Result<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value = serde_json::from_str(body).map_err(std::io::Error::other)?;
    Ok((status, value))
}

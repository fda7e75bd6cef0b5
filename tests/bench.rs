//! `switchboard bench` against a real server: its accounting (deliveries, loss, order, close
//! codes) must be right before its figures mean anything. No timing is asserted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use switchboard_bench::group::{Group, Published};
use switchboard_bench::publish::{ws_publisher, Counters, Plan};
use switchboard_bench::ClientArg;
use switchboard_client::raw::{Encoding, Target, Transport};

/// Subscribers over each transport and encoding (publishers over JSON WebSocket) get every
/// publication once.
#[tokio::test]
async fn fanout_accounting_over_real_sockets() {
    for (transport, encoding, client) in [
        (Transport::WebSocket, Encoding::Json, ClientArg::Wire),
        (Transport::WebSocket, Encoding::Protobuf, ClientArg::Wire),
        (Transport::HttpStream, Encoding::Json, ClientArg::Wire),
        (Transport::Sse, Encoding::Json, ClientArg::Wire),
        (Transport::WebSocket, Encoding::Json, ClientArg::Sdk),
        (Transport::WebSocket, Encoding::Protobuf, ClientArg::Sdk),
    ] {
        fanout_accounting_over(transport, encoding, client).await;
    }
}

async fn fanout_accounting_over(transport: Transport, encoding: Encoding, client: ClientArg) {
    let server = TestServer::with(|c| c.join_leave = false).await;
    let mut target = Target::new(&server.ws_url(), None, None, 6).unwrap();
    target.transport = transport;
    target.encoding = encoding;
    let group = Group::open(&target, client, 0..6, 2, 0, "t", 4, WAIT, |_| {}).await;
    assert_eq!(
        (group.connected(), group.failed()),
        (6, 0),
        "{transport:?} {encoding:?} {client:?}: {:?}",
        group.errors()
    );
    let plan = Arc::new(Plan {
        rate: 200.0,
        duration: Duration::from_millis(100),
        payload: 100,
        channels: 2,
        prefix: "t".into(),
        publishers: 2,
    });
    let counters = Arc::new(Counters::default());
    let start = tokio::time::Instant::now();
    let a = tokio::spawn(ws_publisher(
        target.clone(),
        plan.clone(),
        0,
        start,
        counters.clone(),
        WAIT,
    ));
    let b = tokio::spawn(ws_publisher(
        target.clone(),
        plan.clone(),
        1,
        start,
        counters.clone(),
        WAIT,
    ));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(
        (a.sent, b.sent, a.errors + b.errors),
        (10, 10, 0),
        "{a:?} {b:?}"
    );
    let published = Published {
        channels: 2,
        sent: vec![a.sent, b.sent],
    };
    // 20 publications over 2 channels, 3 subscribers each.
    assert_eq!(group.expected(&published), 60);
    let report = group.finish(published, WAIT).await;
    assert_eq!(
        report.delivered, 60,
        "{transport:?} {encoding:?} {client:?}"
    );
    assert_eq!(report.lost(), 0);
    assert_eq!((report.duplicates, report.order_violations), (0, 0));
    assert!(report.closed_early.is_empty());
    assert_eq!(report.latency.0.iter().map(|(_, n)| n).sum::<u64>(), 60);
    server.stop().await;
}

#[tokio::test]
async fn publications_nobody_received_count_as_lost() {
    let server = TestServer::with(|c| c.join_leave = false).await;
    let target = Target::new(&server.ws_url(), None, None, 2).unwrap();
    let group = Group::open(
        &target,
        ClientArg::Wire,
        0..2,
        1,
        0,
        "lost",
        2,
        WAIT,
        |_| {},
    )
    .await;
    // The group is told of 5 publications that were never sent.
    let published = Published {
        channels: 1,
        sent: vec![5],
    };
    let report = group.finish(published, Duration::from_millis(50)).await;
    assert_eq!(report.expected, 10);
    assert_eq!(report.delivered, 0);
    assert_eq!(report.lost(), 5);
    server.stop().await;
}

/// The whole `bench fanout` command, with publishers that send different counts (10 over 3
/// publishers: 4, 3, 3) and so finish in another order than they started: each publisher's count
/// must still name its own sequence numbers, or delivered publications count as lost.
#[tokio::test]
async fn fanout_command_accounts_publishers_by_index() {
    let server = TestServer::with(|c| c.join_leave = false).await;
    let url = server.ws_url();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "bench",
            "fanout",
            "--url",
            &url,
            "--via",
            "api",
            "--publishers",
            "3",
        ])
        .args([
            "-n", "3", "-r", "10", "-d", "1s", "--drain", "2s", "--json", "--quiet",
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["published"], 10, "{report}");
    assert_eq!(report["delivered"], 30, "{report}");
    assert_eq!(report["lost_publications"], 0, "{report}");
    server.stop().await;
}

/// `bench idle --transport sse`, `--transport http_stream` and `--encoding protobuf` (on the
/// wire layer and on the SDK) hold their connections that way: the server's gauges of
/// connections per transport or encoding count them while they are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_command_holds_connections_over_each_transport_and_encoding() {
    let server = TestServer::with(|c| c.join_leave = false).await;
    let url = server.ws_url();
    for (transport, encoding, client, gauge) in [
        ("sse", "json", "wire", "transport=\"sse\"} 4"),
        (
            "http_stream",
            "json",
            "wire",
            "transport=\"http_stream\"} 4",
        ),
        ("websocket", "protobuf", "wire", "encoding=\"protobuf\"} 4"),
        ("websocket", "protobuf", "sdk", "encoding=\"protobuf\"} 4"),
    ] {
        let bench = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["bench", "idle", "--url", &url, "--transport", transport])
            .args(["--encoding", encoding, "--client", client])
            .args([
                "-c", "4", "-k", "2", "-d", "2s", "--settle", "0s", "--json", "--quiet",
            ])
            .kill_on_drop(true)
            .output();
        let bench = tokio::spawn(bench);
        assert!(
            eventually(|| async {
                server
                    .metrics()
                    .await
                    .contains(&format!("_connections{{{gauge}"))
            })
            .await,
            "{transport} {encoding}: the server never held 4 connections"
        );
        let output = bench.await.unwrap().unwrap();
        assert!(output.status.success(), "{transport}: {output:?}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["transport"], transport, "{report}");
        assert_eq!(report["encoding"], encoding, "{report}");
        assert_eq!(report["client"], client, "{report}");
        assert_eq!(report["connected"], 4, "{report}");
        assert_eq!(report["alive_at_end"], 4, "{report}");
    }
    server.stop().await;
}

/// Protobuf and the SDK need a WebSocket here: asking for them over an HTTP fallback is a clear
/// error before any connection.
#[tokio::test]
async fn protobuf_or_the_sdk_over_an_http_fallback_is_refused() {
    for (option, value) in [("--encoding", "protobuf"), ("--client", "sdk")] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["bench", "idle", "--transport", "sse", option, value])
            .args(["-c", "1", "--quiet"])
            .output()
            .await
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = format!("{option} {value} needs --transport websocket");
        assert!(stderr.contains(&expected), "{stderr}");
    }
}

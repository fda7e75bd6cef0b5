//! `switchboard bench` against a real server: its accounting (deliveries, loss, order, close
//! codes) must be right before its figures mean anything. No timing is asserted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use switchboard_bench::group::{Group, Published};
use switchboard_bench::publish::{ws_publisher, Counters, Plan};
use switchboard_client::raw::Target;

#[tokio::test]
async fn fanout_accounting_over_real_sockets() {
    let server = TestServer::with(|c| c.join_leave = false).await;
    let target = Target::new(&server.ws_url(), None, None, 6).unwrap();
    let group = Group::open(&target, 0..6, 2, 0, "t", 4, WAIT, |_| {}).await;
    assert_eq!((group.connected(), group.failed()), (6, 0));
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
    assert_eq!(report.delivered, 60);
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
    let group = Group::open(&target, 0..2, 1, 0, "lost", 2, WAIT, |_| {}).await;
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

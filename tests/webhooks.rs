//! Webhooks end to end: a real HTTP receiver in this process, real servers (in process, and the
//! real binary killed with SIGKILL), clients of the Rust SDK over real WebSockets.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::webhook_receiver::*;
use common::*;
use serde_json::json;
use switchboard::hooks::webhook::NODE_LOST;
use switchboard::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn webhooks_to(receiver: &Receiver) -> impl FnOnce(&mut Config) + '_ {
    move |config: &mut Config| {
        config.webhook_endpoint = Some(receiver.url());
        config.webhook_secret = Some(SECRET.into());
        config.webhook_batch_delay = Duration::from_millis(5);
        config.namespace.push(switchboard::config::Namespace {
            name: "chat".into(),
            webhook_publication: Some(true),
            ..Default::default()
        });
    }
}

#[tokio::test]
async fn every_event_reaches_the_backend_signed_and_in_order() {
    let receiver = Receiver::start().await;
    let server = TestServer::with(webhooks_to(&receiver)).await;
    let client = server.sdk().await;
    let id = client.client_id().unwrap();
    let room = sdk_subscribe(&client, "chat:room").await;
    room.publish(json!({"text": "hi"})).await.unwrap();
    // A channel whose namespace did not opt in sends no publication event.
    sdk_subscribe(&client, "quiet").await;
    client.publish("quiet", json!(1)).await.unwrap();
    room.unsubscribe();
    // A reply after the unsubscribe: the server has handled it.
    client.rpc("echo", json!(1)).await.unwrap();
    drop((room, client));
    assert!(
        eventually(|| async { !receiver.of("disconnect").is_empty() }).await,
        "disconnect delivered: {:#?}",
        receiver.events()
    );
    assert!(eventually(|| async { receiver.of("channel_vacated").len() == 2 }).await);
    let events = receiver.events();
    let order = [
        position(&events, "connect", &id),
        position(&events, "subscribe", &id),
        position(&events, "unsubscribe", &id),
        position(&events, "disconnect", &id),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{events:#?}");
    let disconnect = &receiver.of("disconnect")[0];
    assert_eq!(disconnect["code"], 3000, "{disconnect}");
    assert!(disconnect["duration_ms"].is_u64(), "{disconnect}");
    let publications = receiver.of("publication");
    assert_eq!(publications.len(), 1, "{publications:#?}");
    assert_eq!(publications[0]["channel"], "chat:room");
    assert_eq!(publications[0]["data"], json!({"text": "hi"}));
    assert_eq!(publications[0]["client"], id.as_str());
    let occupied: Vec<_> = receiver.of("channel_occupied");
    assert_eq!(occupied.len(), 2, "{occupied:#?}");
    let ids: HashSet<_> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    assert!(events.iter().all(|e| e["time_ms"].is_u64()));
    assert_eq!(receiver.state.bad_signatures.load(Ordering::SeqCst), 0);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("switchboard_webhook_events_delivered_total"),
        "{metrics}"
    );
    server.stop().await;
}

/// A publication of bytes that are not JSON (a Protobuf client's) goes out as `b64data`, never as
/// a JSON string that would look like the client's own; JSON bytes stay `data`.
#[tokio::test]
async fn a_binary_publication_is_sent_as_b64data() {
    use switchboard_proto as pb;
    let receiver = Receiver::start().await;
    let server = TestServer::with(webhooks_to(&receiver)).await;
    let mut client = PbClient::connected(&server).await;
    for (id, data) in [(2, &[0u8, 255, 1, 2][..]), (3, &b"\"AP8BAg==\""[..])] {
        let reply = client
            .0
            .call(pb::Command {
                id,
                publish: Some(pb::PublishRequest {
                    channel: "chat:bin".into(),
                    data: bytes::Bytes::copy_from_slice(data),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("a reply");
        assert!(reply.error.is_none(), "{reply:?}");
    }
    assert!(eventually(|| async { receiver.of("publication").len() == 2 }).await);
    let publications = receiver.of("publication");
    assert_eq!(publications[0]["b64data"], "AP8BAg==", "{publications:#?}");
    assert!(publications[0].get("data").is_none(), "{publications:#?}");
    // The same text, published as a JSON string, is `data`.
    assert_eq!(publications[1]["data"], "AP8BAg==", "{publications:#?}");
    assert!(
        publications[1].get("b64data").is_none(),
        "{publications:#?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_gets_every_event_in_order_per_connection() {
    let receiver = Receiver::start().await;
    receiver.state.fail_first.store(5, Ordering::SeqCst);
    let server = TestServer::with(|config| {
        webhooks_to(&receiver)(config);
        config.webhook_concurrency = 4;
        config.webhook_batch_size = 3;
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let client = server.sdk().await;
        ids.push(client.client_id().unwrap());
        let news = sdk_subscribe(&client, "news").await;
        drop((news, client));
    }
    assert!(
        eventually(|| async { receiver.of("disconnect").len() == 20 }).await,
        "all disconnects after retries: {} events",
        receiver.events().len()
    );
    let events = receiver.events();
    for id in &ids {
        assert!(position(&events, "connect", id) < position(&events, "subscribe", id));
        assert!(position(&events, "subscribe", id) < position(&events, "disconnect", id));
    }
    assert_eq!(receiver.of("connect").len(), 20);
    let metrics = server.metrics().await;
    let retries = metric(&metrics, "switchboard_webhook_retries_total");
    assert!(retries >= 5.0, "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn refused_events_are_dropped_and_counted_not_retried() {
    let receiver = Receiver::start().await;
    receiver.state.fail_first.store(1, Ordering::SeqCst);
    receiver.state.fail_status.store(400, Ordering::SeqCst);
    let server = TestServer::with(|config| {
        webhooks_to(&receiver)(config);
        config.webhook_concurrency = 1;
        config.webhook_events = vec!["connect".into()];
    })
    .await;
    let first = server.sdk().await;
    assert!(
        eventually(|| async {
            metric(
                &server.metrics().await,
                "switchboard_webhook_events_dropped_total",
            ) == 1.0
        })
        .await
    );
    let second = server.sdk().await;
    assert!(eventually(|| async { receiver.of("connect").len() == 1 }).await);
    assert_eq!(
        receiver.of("connect")[0]["client"].as_str(),
        second.client_id().as_deref()
    );
    assert_ne!(first.client_id(), second.client_id());
    assert!(receiver.of("disconnect").is_empty(), "not asked for");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_delays_no_client_and_bounds_requests_in_flight() {
    let receiver = Receiver::start().await;
    // The backend never answers within the test.
    receiver.state.delay_ms.store(60_000, Ordering::SeqCst);
    let server = TestServer::with(|config| {
        webhooks_to(&receiver)(config);
        config.webhook_concurrency = 2;
        config.webhook_batch_size = 1;
        config.webhook_timeout = Duration::from_secs(120);
        config.shutdown_timeout = 1;
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        let client = server.sdk().await;
        let busy = sdk_subscribe(&client, "busy").await;
        clients.push((client, busy));
    }
    assert!(eventually(|| async { receiver.state.in_flight.load(Ordering::SeqCst) == 2 }).await);
    // Give more lanes a chance to exceed the bound, were there any.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.state.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(receiver.state.requests.load(Ordering::SeqCst), 0);
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "switchboard_webhook_in_flight"),
        2.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "switchboard_webhook_queue_depth") >= 78.0,
        "{metrics}"
    );
    drop(clients);
    server.stop().await;
}

/// Starts `switchboard::run` on a free port with `config` (whose data directory outlives it).
async fn run_server(
    config: Config,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), switchboard::server::ServerError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(switchboard::run(config, listener, shutdown.clone()));
    (addr, shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_survive_a_restart() {
    let receiver = Receiver::start().await;
    // The backend is down for the first run.
    receiver
        .state
        .fail_first
        .store(usize::MAX, Ordering::SeqCst);
    let dir = temp_dir();
    let mut config = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    webhooks_to(&receiver)(&mut config);
    config.shutdown_timeout = 1;
    let (addr, shutdown, task) = run_server(config.clone()).await;
    let client = sdk_client(&format!("ws://{addr}/connection/websocket")).await;
    let id = client.client_id().unwrap();
    let chat = sdk_subscribe(&client, "chat:x").await;
    assert!(eventually(|| async { receiver.state.requests.load(Ordering::SeqCst) > 0 }).await);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    // Gone with the node: no reconnect to the next one.
    drop((chat, client));
    assert!(receiver.events().is_empty());
    // The backend is back, and so is the node.
    receiver.state.fail_first.store(0, Ordering::SeqCst);
    let (_, shutdown, task) = run_server(config).await;
    assert!(
        eventually(|| async { !receiver.of("disconnect").is_empty() }).await,
        "{:#?}",
        receiver.events()
    );
    let events = receiver.events();
    assert!(position(&events, "connect", &id) < position(&events, "subscribe", &id));
    let disconnect = &receiver.of("disconnect")[0];
    assert_eq!(disconnect["client"], id.as_str());
    assert_eq!(disconnect["code"], 3001, "shutdown: {disconnect}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts the real binary with webhooks to `receiver` on `data_dir`.
async fn start_binary(data_dir: &std::path::Path, receiver: &Receiver) -> (KillOnDrop, SocketAddr) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(["--webhook-endpoint", &receiver.url()])
        .args(["--webhook-secret", SECRET])
        .args(["--webhook-batch-delay", "5ms"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let child = KillOnDrop(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = eventually(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
    assert!(up, "server listens on {addr}");
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_a_killed_node_get_their_disconnect_after_restart() {
    let receiver = Receiver::start().await;
    let dir = temp_dir();
    let (mut child, addr) = start_binary(&dir, &receiver).await;
    let mut clients = Vec::new();
    let mut ids = HashMap::new();
    for i in 0..5 {
        let client = sdk_client(&format!("ws://{addr}/connection/websocket")).await;
        let room = sdk_subscribe(&client, &format!("room{}", i % 2)).await;
        ids.insert(client.client_id().unwrap(), i % 2);
        clients.push((client, room));
    }
    assert!(eventually(|| async { receiver.of("subscribe").len() == 5 }).await);
    child.kill(); // SIGKILL: no session ends, no event is emitted
    drop(clients);
    assert!(receiver.of("disconnect").is_empty());

    let (mut child, _) = start_binary(&dir, &receiver).await;
    assert!(
        eventually(|| async { receiver.of("disconnect").len() == 5 }).await,
        "{:#?}",
        receiver.events()
    );
    assert!(eventually(|| async { receiver.of("channel_vacated").len() == 2 }).await);
    let events = receiver.events();
    for (id, room) in &ids {
        let disconnect = events
            .iter()
            .find(|e| e["type"] == "disconnect" && e["client"] == id.as_str())
            .unwrap();
        assert_eq!(disconnect["code"], NODE_LOST, "{disconnect}");
        assert!(position(&events, "unsubscribe", id) < position(&events, "disconnect", id));
        let unsubscribe = &events[position(&events, "unsubscribe", id)];
        assert_eq!(unsubscribe["channel"], format!("room{room}"));
    }
    assert_eq!(receiver.state.bad_signatures.load(Ordering::SeqCst), 0);
    child.kill();
    let _ = std::fs::remove_dir_all(dir);
}

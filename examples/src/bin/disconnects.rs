//! The guide's disconnect handling (`except WebSocketDisconnect:` … `finally:
//! connections.remove(websocket)`): a client goes away — one closes its tab (a clean close), one
//! loses its network (the socket just ends) — and the server cleans up after both on its own:
//! the other clients see them leave, presence no longer lists them, and the backend's webhook is
//! told each one disconnected. Nobody has to write the `finally`.
//!
//! `cargo run -p switchboard-examples --bin disconnects`
//! Against your own server: `-- --url ws://127.0.0.1:8000/connection/websocket --backend 127.0.0.1:3002`
//! with `switchboard serve --webhook-endpoint http://127.0.0.1:3002/switchboard/events`.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use switchboard_client::raw::Target;
use switchboard_client::{ClientInfo, Events, SubscriptionEvent, SubscriptionOptions};
use switchboard_examples::{backend_listener, ms_since, within, Args, Server, WAIT};

#[tokio::main]
async fn main() -> ExitCode {
    switchboard_examples::main("disconnects", run()).await
}

/// The webhook events the backend received, in order.
type Received = Arc<Mutex<Vec<Value>>>;

async fn webhook(State(received): State<Received>, Json(body): Json<Value>) -> &'static str {
    if let Some(events) = body["events"].as_array() {
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(events.iter().cloned());
    }
    "ok"
}

async fn next_membership(
    events: &mut Events<SubscriptionEvent>,
) -> anyhow::Result<(&'static str, ClientInfo)> {
    within("a join or leave", async {
        loop {
            match events.next().await {
                Some(SubscriptionEvent::Join(info)) => return Ok(("joined", info)),
                Some(SubscriptionEvent::Leave(info)) => return Ok(("left", info)),
                Some(_) => continue,
                None => anyhow::bail!("the subscription ended"),
            }
        }
    })
    .await?
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let received = Received::default();
    let listener = backend_listener(&args).await?;
    let endpoint = format!("http://{}/switchboard/events", listener.local_addr()?);
    let app = Router::new()
        .route("/switchboard/events", post(webhook))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let server = Server::start(&args, |config| {
        config.webhook_endpoint = Some(endpoint.clone());
        config.webhook_batch_delay = Duration::ZERO;
    })
    .await?;
    if !server.in_process {
        println!("(your server needs --webhook-endpoint {endpoint})");
    }
    let start = Instant::now();

    // The watcher stays; it sees the others come and go.
    let watcher = server.client().name("watcher").build();
    watcher.connect();
    let room = watcher.new_subscription("room", SubscriptionOptions::new().join_leave(true))?;
    let mut members = room.events();
    room.subscribe();
    within("the watcher's subscription", room.ready()).await??;

    // A browser tab: the SDK, which closes cleanly.
    let tab = server.client().name("tab").build();
    tab.connect();
    let tab_room = tab.new_subscription("room", SubscriptionOptions::new())?;
    tab_room.subscribe();
    within("the tab's subscription", tab_room.ready()).await??;
    let tab_id = tab.client_id().unwrap_or_default();

    // A phone on a flaky network: a bare socket that will just end, with no goodbye.
    let target = Target::new(&server.ws_url, None, None, 1)?;
    let mut phone = target.open_connected(0, WAIT).await?;
    switchboard_client::raw::subscribe(&mut phone, 2, "room").await?;

    let mut ids = Vec::new();
    while ids.len() < 2 {
        let (what, info) = next_membership(&mut members).await?;
        if what == "joined" && info.client != watcher.client_id().unwrap_or_default() {
            ids.push(info.client);
        }
    }
    let phone_id = ids.into_iter().find(|id| *id != tab_id).unwrap_or_default();
    let present = room.presence().await?;
    println!(
        "+{:>4} ms  presence in room: {} clients (watcher, tab, phone)",
        ms_since(start),
        present.len()
    );
    anyhow::ensure!(present.len() == 3);

    tab.disconnect();
    println!(
        "+{:>4} ms  tab: closed (clean WebSocket close)",
        ms_since(start)
    );
    drop(phone);
    println!(
        "+{:>4} ms  phone: network gone (the socket ends, no close frame)",
        ms_since(start)
    );

    let mut left = Vec::new();
    while left.len() < 2 {
        let (what, info) = next_membership(&mut members).await?;
        if what == "left" {
            let who = if info.client == tab_id {
                "tab"
            } else {
                "phone"
            };
            println!("+{:>4} ms  watcher: saw {who} leave", ms_since(start));
            left.push(info.client);
        }
    }
    let present = room.presence().await?;
    println!(
        "+{:>4} ms  presence in room: {} client (watcher)",
        ms_since(start),
        present.len()
    );
    anyhow::ensure!(present.len() == 1, "presence still lists {present:?}");

    let disconnects = within("the webhooks", async {
        loop {
            let events = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let gone: Vec<Value> = events
                .into_iter()
                .filter(|e| {
                    e["type"] == "disconnect"
                        && (e["client"] == tab_id.as_str() || e["client"] == phone_id.as_str())
                })
                .collect();
            if gone.len() == 2 {
                return gone;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    for event in &disconnects {
        let who = if event["client"] == tab_id.as_str() {
            "tab"
        } else {
            "phone"
        };
        println!(
            "+{:>4} ms  backend webhook: {who} disconnected (code {}, \"{}\", connected {} ms)",
            ms_since(start),
            event["code"],
            event["reason"].as_str().unwrap_or_default(),
            event["duration_ms"]
        );
    }
    println!(
        "\nTIMELINE - Disconnect\n═════════════════════\n\
         tab:     ══════════════════╳ (closes the tab)\n\
         phone:   ══════════════════╳ (network lost)\n\
         \x20                          │\n\
         server:  ──await receive───┤  the session's one exit path runs:\n\
         \x20                          ├─→ leave pushed to the room (the watcher saw it)\n\
         \x20                          ├─→ presence entry removed\n\
         \x20                          └─→ webhook `disconnect` queued, delivered in the background"
    );
    server.stop().await;
    Ok(())
}

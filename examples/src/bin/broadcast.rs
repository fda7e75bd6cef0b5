//! The guide's broadcast (`for connection in active_connections: await connection.send_text(…)`):
//! one message reaches every connected client. Here the application's backend does it with one
//! call of the server API's `broadcast`, which publishes to each user's own channel; the server
//! fans out to every subscriber, one encoding for all.
//!
//! `cargo run -p switchboard-examples --bin broadcast [-- --url … --api-key …]`

use std::process::ExitCode;

use serde_json::json;
use switchboard_client::SubscriptionOptions;
use switchboard_examples::{next_publication, within, Args, Server};

#[tokio::main]
async fn main() -> ExitCode {
    switchboard_examples::main("broadcast", run()).await
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let server = Server::start(&args, |_| {}).await?;
    let names = ["alice", "bob", "carol", "dave"];
    let mut listeners = Vec::new();
    for name in names {
        let client = server.client().name(name).build();
        client.connect();
        // Each client listens on its own inbox and on the shared `notifications` channel.
        let inbox = client.new_subscription(format!("inbox-{name}"), SubscriptionOptions::new())?;
        let notifications = client.new_subscription("notifications", SubscriptionOptions::new())?;
        let (inbox_events, notification_events) = (inbox.events(), notifications.events());
        inbox.subscribe();
        notifications.subscribe();
        within("the inbox subscription", inbox.ready()).await??;
        within("the notifications subscription", notifications.ready()).await??;
        println!("{name}: connected and listening");
        listeners.push((name, client, inbox_events, notification_events));
    }

    // One API call, one message per user channel.
    let channels: Vec<String> = names.iter().map(|n| format!("inbox-{n}")).collect();
    let result = server
        .api
        .call(
            "broadcast",
            json!({"channels": channels, "data": {"text": "maintenance at 22:00"}}),
        )
        .await?;
    let delivered = result["responses"].as_array().map_or(0, Vec::len);
    println!("backend: broadcast to {delivered} channels with one API call");
    // And one publication to the channel everyone shares.
    server
        .api
        .call(
            "publish",
            json!({"channel": "notifications", "data": {"text": "new version deployed"}}),
        )
        .await?;
    println!("backend: published once to `notifications`");

    for (name, _client, inbox, notifications) in &mut listeners {
        let personal = next_publication(inbox).await?;
        let shared = next_publication(notifications).await?;
        println!(
            "{name}: got {} (inbox) and {} (notifications)",
            personal.data["text"], shared.data["text"]
        );
        anyhow::ensure!(personal.data["text"] == "maintenance at 22:00");
        anyhow::ensure!(shared.data["text"] == "new version deployed");
    }
    println!("every client got both messages");
    server.stop().await;
    Ok(())
}

//! The guide's rooms (send to the clients of one group: chat rooms, games): two rooms are two
//! channels; what is said in one stays in it.
//!
//! `cargo run -p switchboard-examples --bin rooms [-- --url …]`

use std::process::ExitCode;

use serde_json::json;
use switchboard_client::SubscriptionOptions;
use switchboard_examples::{next_publication, within, Args, Server};

#[tokio::main]
async fn main() -> ExitCode {
    switchboard_examples::main("rooms", run()).await
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let server = Server::start(&args, |_| {}).await?;
    let members = [
        ("alice", "room-kitchen"),
        ("bob", "room-kitchen"),
        ("carol", "room-garden"),
        ("dave", "room-garden"),
    ];
    let mut people = Vec::new();
    for (name, room) in members {
        let client = server.client().name(name).build();
        client.connect();
        let subscription = client.new_subscription(room, SubscriptionOptions::new())?;
        let events = subscription.events();
        subscription.subscribe();
        within("joining the room", subscription.ready()).await??;
        println!("{name} joined {room}");
        people.push((name, room, subscription, events));
    }

    // Alice speaks in the kitchen, then Carol in the garden.
    people[0]
        .2
        .publish(json!({"from": "alice", "text": "coffee?"}))
        .await?;
    people[2]
        .2
        .publish(json!({"from": "carol", "text": "the roses bloomed"}))
        .await?;

    // Then each room's last word, which closes each one's check: everything a member hears
    // before it is in order from their own room only.
    for room in ["room-kitchen", "room-garden"] {
        server
            .api
            .call(
                "publish",
                json!({"channel": room, "data": {"from": "host", "text": "closing"}}),
            )
            .await?;
    }
    for (name, room, _, events) in &mut people {
        let first = next_publication(events).await?;
        println!(
            "{name} ({room}) heard {}: {}",
            first.data["from"], first.data["text"]
        );
        let expected = if *room == "room-kitchen" {
            "alice"
        } else {
            "carol"
        };
        anyhow::ensure!(
            first.data["from"] == expected,
            "{name} heard a message from another room"
        );
        let last = next_publication(events).await?;
        anyhow::ensure!(
            last.data["from"] == "host",
            "{name} heard {} from another room",
            last.data
        );
    }
    println!("each message stayed in its room");
    server.stop().await;
    Ok(())
}

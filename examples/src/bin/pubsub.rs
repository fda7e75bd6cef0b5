//! The guide's pub/sub (clients subscribe to topics: real-time feeds): subscribers pick topics;
//! publishers publish to topics without subscribing, and so never see the messages themselves.
//!
//! `cargo run -p switchboard-examples --bin pubsub [-- --url …]`

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use switchboard_client::{ClientEvent, SubscriptionOptions};
use switchboard_examples::{next_publication, within, Args, Server};

#[tokio::main]
async fn main() -> ExitCode {
    switchboard_examples::main("pubsub", run()).await
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let server = Server::start(&args, |_| {}).await?;

    // Subscribers and their topics.
    let wanted = [
        ("fan", vec!["sports"]),
        ("farmer", vec!["weather"]),
        ("news-junkie", vec!["sports", "weather"]),
    ];
    let mut subscribers = Vec::new();
    for (name, topics) in &wanted {
        let client = server.client().name(*name).build();
        client.connect();
        let mut feeds = Vec::new();
        for topic in topics {
            let subscription = client.new_subscription(*topic, SubscriptionOptions::new())?;
            let events = subscription.events();
            subscription.subscribe();
            within("the subscription", subscription.ready()).await??;
            feeds.push((*topic, events));
        }
        println!("{name} subscribed to {}", topics.join(", "));
        subscribers.push((*name, client, feeds));
    }

    // Publishers: connected, subscribed to nothing.
    let mut publishers = Vec::new();
    for (name, topic, text) in [
        ("stadium", "sports", "3-1 at half time"),
        ("meteo", "weather", "rain at 16:00"),
    ] {
        let client = server.client().name(name).build();
        let events = client.events();
        client.connect();
        within("the publisher's connection", client.ready()).await??;
        client
            .publish(topic, json!({"from": name, "text": text}))
            .await?;
        println!("{name} published to {topic}: {text}");
        publishers.push((name, client, events));
    }

    for (name, _client, feeds) in &mut subscribers {
        for (topic, events) in feeds {
            let publication = next_publication(events).await?;
            println!("{name} got on {topic}: {}", publication.data["text"]);
            anyhow::ensure!(
                publication.data["from"]
                    == if *topic == "sports" {
                        "stadium"
                    } else {
                        "meteo"
                    }
            );
            anyhow::ensure!(
                events.try_next().is_none(),
                "{name} got another topic on {topic}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (name, _client, events) in &mut publishers {
        while let Some(event) = events.try_next() {
            anyhow::ensure!(
                !matches!(event, ClientEvent::ServerPublication { .. }),
                "publisher {name} received a publication"
            );
        }
        println!("{name} (publisher) received nothing back");
    }
    server.stop().await;
    Ok(())
}

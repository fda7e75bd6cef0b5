//! The guide's WebSocket echo (`await websocket.receive_text()` then `send_text(f"Echo: {data}")`):
//! a client sends a message over its open connection and gets it back, through the server's
//! built-in RPC method `echo`. The connection stays open between messages: no new handshake per
//! message, unlike HTTP.
//!
//! `cargo run -p switchboard-examples --bin echo [-- --url ws://127.0.0.1:8000/connection/websocket]`

use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;
use switchboard_examples::{within, Args, Server};

#[tokio::main]
async fn main() -> ExitCode {
    switchboard_examples::main("echo", run()).await
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let server = Server::start(&args, |_| {}).await?;
    let client = server.client().name("echo-example").build();
    client.connect();
    within("the connection", client.ready()).await??;
    println!(
        "connected to {} as client {}",
        server.ws_url,
        client.client_id().unwrap_or_default()
    );
    for text in ["Hello", "Hi there!", "Bye"] {
        let sent = Instant::now();
        let answer = client.rpc("echo", json!({ "text": text })).await?;
        println!(
            "> {text}\n< {}   ({} µs, same connection)",
            answer["text"].as_str().unwrap_or("?"),
            sent.elapsed().as_micros()
        );
        anyhow::ensure!(
            answer == json!({ "text": text }),
            "echo changed the message: {answer}"
        );
    }
    client.disconnect();
    server.stop().await;
    Ok(())
}

//! The guide's request/response over WebSocket (the client asks, the server answers: RPC over
//! WS): the client calls methods of the application's backend through the server's RPC proxy.
//! The client's `rpc` travels on its open WebSocket; Switchboard POSTs it to the backend (here
//! a small axum app in this process) and sends the answer back as the reply to that command.
//!
//! `cargo run -p switchboard-examples --bin request_response`
//! Against your own server: start this example's backend on a known address, and point the
//! server's RPC proxy at it:
//! `cargo run -p switchboard-examples --bin request_response -- --url ws://127.0.0.1:8000/connection/websocket --backend 127.0.0.1:3001`
//! with `switchboard serve --proxy-rpc-endpoint http://127.0.0.1:3001/switchboard/rpc`.

use std::process::ExitCode;
use std::time::Instant;

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use switchboard_examples::{backend_listener, within, Args, Server};

#[tokio::main]
async fn main() -> ExitCode {
    switchboard_examples::main("request_response", run()).await
}

/// The backend's RPC endpoint: Centrifugo's RPC proxy request in, `{"result": {"data": …}}` or
/// `{"error": {code, message}}` out.
async fn rpc(Json(request): Json<Value>) -> Json<Value> {
    let data = &request["data"];
    let answer = match request["method"].as_str().unwrap_or_default() {
        "add" => {
            let (a, b) = (data["a"].as_f64(), data["b"].as_f64());
            match (a, b) {
                (Some(a), Some(b)) => json!({"result": {"data": {"sum": a + b}}}),
                _ => json!({"error": {"code": 400, "message": "add needs numbers a and b"}}),
            }
        }
        "whoami" => json!({"result": {"data": {
            "client": request["client"],
            "transport": request["transport"],
        }}}),
        other => json!({"error": {"code": 404, "message": format!("no method {other}")}}),
    };
    Json(answer)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let listener = backend_listener(&args).await?;
    let backend = listener.local_addr()?;
    let app = Router::new().route("/switchboard/rpc", post(rpc));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let endpoint = format!("http://{backend}/switchboard/rpc");
    println!("backend: RPC endpoint at {endpoint}");
    let server = Server::start(&args, |config| {
        config.proxy_rpc_endpoint = Some(endpoint.clone());
    })
    .await?;
    if !server.in_process {
        println!("(your server needs --proxy-rpc-endpoint {endpoint})");
    }

    let client = server.client().name("rpc-example").build();
    client.connect();
    within("the connection", client.ready()).await??;

    let asked = Instant::now();
    let sum = client.rpc("add", json!({"a": 2, "b": 40})).await?;
    println!(
        "client: add(2, 40) -> {sum}   ({} µs through the server to the backend and back)",
        asked.elapsed().as_micros()
    );
    anyhow::ensure!(sum == json!({"sum": 42.0}), "wrong sum {sum}");

    let me = client.rpc("whoami", json!({})).await?;
    println!("client: whoami -> {me}");
    anyhow::ensure!(me["client"].as_str() == client.client_id().as_deref());

    // Several requests in flight on one connection: each reply finds its caller by id.
    let calls = (1..=5).map(|n| client.rpc("add", json!({"a": n, "b": n})));
    let answers = futures_util::future::join_all(calls).await;
    for (n, answer) in (1..=5).zip(answers) {
        let answer = answer?;
        anyhow::ensure!(answer["sum"] == json!(f64::from(n * 2)), "{answer}");
    }
    println!("client: 5 concurrent calls, each answered to its own caller");

    let error = client.rpc("divide", json!({})).await.unwrap_err();
    println!("client: divide -> {error}");
    anyhow::ensure!(error.server_code() == Some(404));
    server.stop().await;
    Ok(())
}

//! What every example shares: a server to talk to (one started in this process on a free
//! loopback port, or the one at `--url`), the server API, and a bounded run that exits 0 only when
//! what the example shows did happen.
//!
//! Each example is a binary in `src/bin/`: `cargo run -p switchboard-examples --bin echo`.
//! Options every example takes:
//! - `--url ws://host:port/connection/websocket`: use that server instead of starting one;
//! - `--api-url http://host:port/api` (default: derived from `--url`) and `--api-key KEY`: its
//!   server API.
//!
//! Examples with a backend (`request_response`, `disconnects`, `backend_fanout`) start it in the
//! process on `--backend 127.0.0.1:PORT` (default: a free port) and print the flags a server
//! started separately needs to reach it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use switchboard_client::{Client, ClientBuilder, Events, Publication, SubscriptionEvent};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any one expected thing may take before the example fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The command line every example accepts.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// `--url`: the WebSocket endpoint of a running server.
    pub url: Option<String>,
    /// `--api-url`: its server API.
    pub api_url: Option<String>,
    /// `--api-key`: the key its server API wants.
    pub api_key: Option<String>,
    /// `--backend`: where an example's backend listens.
    pub backend: Option<SocketAddr>,
}

impl Args {
    /// Reads the process's arguments.
    pub fn parse() -> anyhow::Result<Args> {
        let mut args = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--url" => args.url = Some(value()?),
                "--api-url" => args.api_url = Some(value()?),
                "--api-key" => args.api_key = Some(value()?),
                "--backend" => args.backend = Some(value()?.parse().context("--backend")?),
                "-h" | "--help" => {
                    println!(
                        "options: [--url ws://host:port/connection/websocket] [--api-url http://host:port/api] [--api-key KEY] [--backend 127.0.0.1:PORT]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown option {other} (try --help)"),
            }
        }
        Ok(args)
    }
}

/// The server an example talks to.
pub struct Server {
    /// Its WebSocket endpoint.
    pub ws_url: String,
    /// Its server API.
    pub api: Api,
    /// Whether it runs in this process.
    pub in_process: bool,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), switchboard::server::ServerError>>>,
    data_dir: Option<PathBuf>,
}

impl Server {
    /// The server at `--url`, or a new one in this process (on a free loopback port, with its
    /// history in a temporary directory) configured by `configure`.
    pub async fn start(
        args: &Args,
        configure: impl FnOnce(&mut switchboard::Config),
    ) -> anyhow::Result<Server> {
        if let Some(url) = &args.url {
            let api_url = match &args.api_url {
                Some(api) => api.clone(),
                None => api_url_of(url)?,
            };
            return Ok(Server {
                ws_url: url.clone(),
                api: Api::new(api_url, args.api_key.clone())?,
                in_process: false,
                shutdown: CancellationToken::new(),
                task: None,
                data_dir: None,
            });
        }
        let data_dir =
            std::env::temp_dir().join(format!("switchboard-example-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&data_dir)?;
        let mut config = switchboard::Config {
            data_dir: data_dir.clone(),
            ..switchboard::Config::default()
        };
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(switchboard::run(config, listener, shutdown.clone()));
        Ok(Server {
            ws_url: format!("ws://{addr}/connection/websocket"),
            api: Api::new(format!("http://{addr}/api"), None)?,
            in_process: true,
            shutdown,
            task: Some(task),
            data_dir: Some(data_dir),
        })
    }

    /// A client builder for this server.
    pub fn client(&self) -> ClientBuilder {
        Client::builder(&self.ws_url).timeout(WAIT)
    }

    /// Stops an in-process server (a server at `--url` keeps running).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `ws://host:port/connection/websocket` → `http://host:port/api`.
fn api_url_of(ws_url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = ws_url
        .split_once("://")
        .context("--url must look like ws://host:port/connection/websocket")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let scheme = if scheme == "wss" { "https" } else { "http" };
    Ok(format!("{scheme}://{authority}/api"))
}

/// The server HTTP API (`POST /api/<method>`).
#[derive(Clone)]
pub struct Api {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(base: String, key: Option<String>) -> anyhow::Result<Api> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Api {
            base,
            key,
            http: reqwest::Client::builder().timeout(WAIT).build()?,
        })
    }

    /// Calls `method` with `body`; returns its `result`, or fails with its `error`.
    pub async fn call(&self, method: &str, body: Value) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(key) = &self.key {
            request = request.header("X-API-Key", key);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("server API {method}: HTTP {status}: {text}");
        }
        let mut reply: Value = serde_json::from_str(&text)?;
        if let Some(error) = reply.get("error") {
            bail!("server API {method}: {error}");
        }
        Ok(reply["result"].take())
    }
}

/// Runs an example: bounded in time, printing the error and exiting 1 if it failed.
pub async fn main(name: &str, example: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    match tokio::time::timeout(Duration::from_secs(60), example).await {
        Ok(Ok(())) => {
            println!("{name}: ok");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("{name}: FAILED: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{name}: FAILED: took more than a minute");
            ExitCode::FAILURE
        }
    }
}

/// Waits for `what`, within [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

/// The next publication among a subscription's events.
pub async fn next_publication(
    events: &mut Events<SubscriptionEvent>,
) -> anyhow::Result<Publication> {
    within("a publication", async {
        loop {
            match events.next().await {
                Some(SubscriptionEvent::Publication(p)) => return Ok(p),
                Some(_) => continue,
                None => bail!("the subscription ended"),
            }
        }
    })
    .await?
}

/// Milliseconds since `start`, for timelines.
pub fn ms_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// The address an example's backend listens on: `--backend`, or a free loopback port.
pub async fn backend_listener(args: &Args) -> anyhow::Result<TcpListener> {
    let addr = args
        .backend
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

//! The `switchboard` command line: parses flags and calls into the library.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use switchboard::config::{Durability, HistoryStorage};
use switchboard::Config;
use tokio_util::sync::CancellationToken;

/// `switchboard --version`: the version and the git commit it was built from.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SWITCHBOARD_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "switchboard",
    version = LONG_VERSION,
    about = "A real-time messaging server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print a HS256 connection token for a user.
    Token(TokenArgs),
    /// Write an annotated config file with fresh random secrets.
    Genconfig(GenconfigArgs),
    /// Load-test a server speaking the protocol (this one or any compatible one).
    Bench(Box<switchboard_bench::BenchArgs>),
    /// Check a config file as `serve --config FILE` would read it (with the same environment
    /// and flags), and print the effective settings, secrets masked. Exits non-zero on error.
    CheckConfig(Box<CheckConfigArgs>),
    /// Print a shell completion script: `source <(switchboard completions bash)`.
    Completions(CompletionsArgs),
}

#[derive(Args)]
struct CheckConfigArgs {
    /// The TOML config file.
    file: PathBuf,
    #[command(flatten)]
    settings: ServeArgs,
}

#[derive(Args)]
struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    shell: clap_complete::Shell,
}

/// How log lines are written.
#[derive(Clone, Copy, Default, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for journald, Loki, Elasticsearch …).
    Json,
}

#[derive(Args)]
struct GenconfigArgs {
    /// Where to write it (never overwrites an existing file).
    #[arg(long, short, default_value = "switchboard.toml")]
    output: PathBuf,
}

/// Flags win over `SWITCHBOARD_*` variables, which win over the config file.
#[derive(Args)]
struct ServeArgs {
    /// Log lines as text or as one JSON object per line [default: text]; the level comes from
    /// RUST_LOG (default info).
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// TOML config file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "SWITCHBOARD_ADDRESS")]
    address: Option<IpAddr>,
    /// Port to listen on [default: 8000].
    #[arg(long, env = "SWITCHBOARD_PORT")]
    port: Option<u16>,
    /// Key the server API requires (X-API-Key header).
    #[arg(long, env = "SWITCHBOARD_API_KEY")]
    api_key: Option<String>,
    /// Password of the web dashboard (/dashboard), which also accepts the API key.
    #[arg(long, env = "SWITCHBOARD_ADMIN_PASSWORD")]
    admin_password: Option<String>,
    /// HMAC secret of HS256 connection tokens.
    #[arg(long, env = "SWITCHBOARD_TOKEN_HMAC_SECRET")]
    token_hmac_secret: Option<String>,
    /// Accept anonymous clients and an open API even on a public address.
    #[arg(long, env = "SWITCHBOARD_INSECURE")]
    insecure: bool,
    /// Seconds between server pings [default: 25].
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL")]
    ping_interval: Option<u64>,
    /// Seconds a client has to answer a ping [default: 10].
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT")]
    pong_timeout: Option<u64>,
    /// Largest client message in bytes [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Bytes one client's outbound queue may hold before it is disconnected as slow [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_CLIENT_QUEUE_MAX_BYTES")]
    client_queue_max_bytes: Option<usize>,
    /// Send join/leave pushes (true/false) [default: true].
    #[arg(long, env = "SWITCHBOARD_JOIN_LEAVE")]
    join_leave: Option<bool>,
    /// Subscribe each user's connections to its personal channel `<namespace>:#<user>` at connect
    /// (true/false) [default: false].
    #[arg(long, env = "SWITCHBOARD_SUBSCRIBE_TO_USER_PERSONAL_CHANNEL")]
    subscribe_to_user_personal_channel: Option<bool>,
    /// Namespace of personal channels [default: none, `#<user>`].
    #[arg(long, env = "SWITCHBOARD_PERSONAL_CHANNEL_NAMESPACE")]
    personal_channel_namespace: Option<String>,
    /// One connection per user: a new one closes the user's others with 3504 (true/false; needs
    /// personal channels with presence) [default: false].
    #[arg(long, env = "SWITCHBOARD_PERSONAL_SINGLE_CONNECTION")]
    personal_single_connection: Option<bool>,
    /// Directory for durable state (the SQLite history) [default: ./switchboard-data].
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where history is kept [default: sqlite].
    #[arg(long, env = "SWITCHBOARD_HISTORY_STORAGE", value_enum)]
    history_storage: Option<StorageFlag>,
    /// `full`: fsync every history commit; `normal`: survive process crashes only [default: full].
    #[arg(long, env = "SWITCHBOARD_HISTORY_DURABILITY", value_enum)]
    history_durability: Option<DurabilityFlag>,
    /// Publications kept per channel; 0 turns history off [default: 1000].
    #[arg(long, env = "SWITCHBOARD_HISTORY_SIZE")]
    history_size: Option<usize>,
    /// Seconds publications are kept [default: 86400].
    #[arg(long, env = "SWITCHBOARD_HISTORY_TTL")]
    history_ttl: Option<u64>,
    /// Redis URL (repeat, or comma-separate, to shard channels over several): run several nodes
    /// sharing broker, history and presence.
    #[arg(long, env = "SWITCHBOARD_REDIS", value_delimiter = ',')]
    redis: Option<Vec<String>>,
    /// Redis Cluster instead of --redis: seed nodes (host:port, or redis://:password@host:port,
    /// rediss:// for TLS; repeat or comma-separate).
    #[arg(long, env = "SWITCHBOARD_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Redis Sentinels instead of --redis (host:port, or redis://:password@host:port with the
    /// Sentinels' own password, rediss:// for TLS; repeat or comma-separate): the nodes use the
    /// master they name and follow its failovers.
    #[arg(long, env = "SWITCHBOARD_REDIS_SENTINEL", value_delimiter = ',')]
    redis_sentinel: Option<Vec<String>>,
    /// The name the Sentinels monitor the master under.
    #[arg(long, env = "SWITCHBOARD_REDIS_SENTINEL_MASTER")]
    redis_sentinel_master: Option<String>,
    /// User of the master found through Sentinel [default: default].
    #[arg(long, env = "SWITCHBOARD_REDIS_MASTER_USERNAME")]
    redis_master_username: Option<String>,
    /// Password of the master found through Sentinel (the Sentinels' own goes in their URLs).
    #[arg(long, env = "SWITCHBOARD_REDIS_MASTER_PASSWORD")]
    redis_master_password: Option<String>,
    /// Connect to the master found through Sentinel over TLS.
    #[arg(long, env = "SWITCHBOARD_REDIS_MASTER_TLS")]
    redis_master_tls: bool,
    /// PEM file of the certificate authorities TLS connections to Redis trust (rediss://
    /// servers, Sentinels, masters, Cluster nodes) [default: the system's roots].
    #[arg(long, env = "SWITCHBOARD_REDIS_TLS_CA")]
    redis_tls_ca: Option<PathBuf>,
    /// Replicas that must hold a publication before it is acknowledged (Redis WAIT), so a
    /// failover keeps it [default: 0].
    #[arg(long, env = "SWITCHBOARD_REDIS_WAIT_REPLICAS")]
    redis_wait_replicas: Option<u32>,
    /// How long a publication waits for those replicas, such as 500ms [default: 1s].
    #[arg(long, env = "SWITCHBOARD_REDIS_WAIT_TIMEOUT", value_parser = switchboard::config::parse_duration)]
    redis_wait_timeout: Option<std::time::Duration>,
    /// Prefix of Redis keys [default: switchboard].
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// Seconds a presence entry lives in Redis without a refresh [default: 60].
    #[arg(long, env = "SWITCHBOARD_PRESENCE_TTL")]
    presence_ttl: Option<u64>,
    /// How long a server API publish's idempotency_key is remembered per channel, such as 30s or
    /// 5m [default: 5m].
    #[arg(long, env = "SWITCHBOARD_IDEMPOTENCY_WINDOW", value_parser = switchboard::config::parse_duration)]
    idempotency_window: Option<std::time::Duration>,
    /// Node name in /api/info [default: host name].
    #[arg(long, env = "SWITCHBOARD_NAME")]
    name: Option<String>,
    /// Serve the server API on this port instead of the main one.
    #[arg(long, env = "SWITCHBOARD_API_PORT")]
    api_port: Option<u16>,
    /// Address of the separate API listener [default: --address].
    #[arg(long, env = "SWITCHBOARD_API_ADDRESS")]
    api_address: Option<IpAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "SWITCHBOARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "SWITCHBOARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// RSA public key (PEM) for RS256 tokens.
    #[arg(long, env = "SWITCHBOARD_TOKEN_RSA_PUBLIC_KEY")]
    token_rsa_public_key: Option<PathBuf>,
    /// ECDSA public key (PEM) for ES256 tokens.
    #[arg(long, env = "SWITCHBOARD_TOKEN_ECDSA_PUBLIC_KEY")]
    token_ecdsa_public_key: Option<PathBuf>,
    /// JWKS URL for token keys.
    #[arg(long, env = "SWITCHBOARD_TOKEN_JWKS_URL")]
    token_jwks_url: Option<String>,
    /// Most connections per user, across every node on Redis (0: no limit) [default: 0].
    #[arg(long, env = "SWITCHBOARD_USER_CONNECTION_LIMIT")]
    user_connection_limit: Option<usize>,
    /// Most channels per client [default: 128].
    #[arg(long, env = "SWITCHBOARD_CLIENT_CHANNEL_LIMIT")]
    client_channel_limit: Option<usize>,
    /// Commands per second per connection (0: no limit) [default: 1000].
    #[arg(long, env = "SWITCHBOARD_CLIENT_COMMAND_RATE")]
    client_command_rate: Option<u32>,
    /// New connections per second per client address (0: no limit) [default: 0].
    #[arg(long, env = "SWITCHBOARD_CONNECTION_RATE_PER_IP")]
    connection_rate_per_ip: Option<u32>,
    /// Peers (CIDRs, comma-separated) whose X-Forwarded-For / X-Real-IP / Forwarded header names
    /// the client's address: the proxies in front of this node [default: none].
    #[arg(
        long,
        env = "SWITCHBOARD_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = switchboard::config::parse_cidr
    )]
    trusted_proxies: Option<Vec<switchboard::config::IpNet>>,
    /// Origins browsers may connect from, comma-separated, `*` wildcards.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Option<Vec<String>>,
    /// Client transports to serve, comma-separated, of websocket, http_stream, sse,
    /// uni_websocket, uni_sse, uni_http_stream [default: all].
    #[arg(long, env = "SWITCHBOARD_TRANSPORTS", value_delimiter = ',')]
    transports: Option<Vec<String>>,
    /// Most WebSocket connections at once; more are refused with HTTP 503 [default: the
    /// open-file limit minus 256].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Application backend URL deciding connects of clients without a token (connect proxy).
    #[arg(long, env = "SWITCHBOARD_PROXY_CONNECT_ENDPOINT")]
    proxy_connect_endpoint: Option<String>,
    /// Backend URL renewing the connections it let in when they expire (refresh proxy).
    #[arg(long, env = "SWITCHBOARD_PROXY_REFRESH_ENDPOINT")]
    proxy_refresh_endpoint: Option<String>,
    /// Backend URL deciding subscriptions (subscribe proxy).
    #[arg(long, env = "SWITCHBOARD_PROXY_SUBSCRIBE_ENDPOINT")]
    proxy_subscribe_endpoint: Option<String>,
    /// Backend URL deciding client publishes and what they publish (publish proxy).
    #[arg(long, env = "SWITCHBOARD_PROXY_PUBLISH_ENDPOINT")]
    proxy_publish_endpoint: Option<String>,
    /// Backend URL deciding subscription refreshes (sub_refresh proxy).
    #[arg(long, env = "SWITCHBOARD_PROXY_SUB_REFRESH_ENDPOINT")]
    proxy_sub_refresh_endpoint: Option<String>,
    /// Backend URL answering client RPCs (rpc proxy).
    #[arg(long, env = "SWITCHBOARD_PROXY_RPC_ENDPOINT")]
    proxy_rpc_endpoint: Option<String>,
    /// Longest a backend decision may take, such as 500ms or 1s; then error 100 [default: 1s].
    #[arg(long, env = "SWITCHBOARD_PROXY_TIMEOUT", value_parser = switchboard::config::parse_duration)]
    proxy_timeout: Option<std::time::Duration>,
    /// Backend requests in flight per endpoint; more wait [default: 64].
    #[arg(long, env = "SWITCHBOARD_PROXY_CONCURRENCY")]
    proxy_concurrency: Option<usize>,
    /// Client HTTP headers forwarded to the backend, comma-separated (e.g. Cookie,Authorization).
    #[arg(long, env = "SWITCHBOARD_PROXY_HTTP_HEADERS", value_delimiter = ',')]
    proxy_http_headers: Option<Vec<String>>,
    /// Headers the client SDK emulates in its connect command forwarded to the backend,
    /// comma-separated; client-chosen values, so only for what the backend verifies.
    #[arg(
        long,
        env = "SWITCHBOARD_PROXY_EMULATED_HEADERS",
        value_delimiter = ','
    )]
    proxy_emulated_headers: Option<Vec<String>>,
    /// Send every proxy request payload in base64 as `b64data` (true/false), as Centrifugo's
    /// `binary_encoding`; payloads that are not JSON always travel so [default: false].
    #[arg(long, env = "SWITCHBOARD_PROXY_BINARY_ENCODING")]
    proxy_binary_encoding: Option<bool>,
    /// Application backend URL receiving webhooks: lifecycle events, after the fact, at least
    /// once.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_ENDPOINT")]
    webhook_endpoint: Option<String>,
    /// Secret signing webhook bodies (header X-Switchboard-Signature: sha256=<hex HMAC>).
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Webhook events sent, comma-separated: connect, disconnect, subscribe, unsubscribe,
    /// channel_occupied, channel_vacated, publication [default: all].
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_EVENTS", value_delimiter = ',')]
    webhook_events: Option<Vec<String>>,
    /// Longest one webhook request may take before it is retried [default: 5s].
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_TIMEOUT", value_parser = switchboard::config::parse_duration)]
    webhook_timeout: Option<std::time::Duration>,
    /// Webhook requests in flight at most (ordered lanes) [default: 16].
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_CONCURRENCY")]
    webhook_concurrency: Option<usize>,
    /// Most events in one webhook request [default: 100].
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_BATCH_SIZE")]
    webhook_batch_size: Option<usize>,
    /// How long a lane waits to fill a webhook batch, such as 20ms; 0 sends at once [default:
    /// 20ms].
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_BATCH_DELAY", value_parser = switchboard::config::parse_duration)]
    webhook_batch_delay: Option<std::time::Duration>,
}

#[derive(Args)]
struct TokenArgs {
    /// User id (the `sub` claim).
    #[arg(long)]
    user: String,
    /// Lifetime, such as 3600, 90s, 30m, 1h or 7d; 0 for no expiry.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// HMAC secret [default: the server's SWITCHBOARD_TOKEN_HMAC_SECRET].
    #[arg(long, env = "SWITCHBOARD_TOKEN_HMAC_SECRET")]
    secret: String,
}

/// `--history-storage`, as [`HistoryStorage`] (the library's configuration knows no CLI types).
#[derive(Clone, Copy, ValueEnum)]
enum StorageFlag {
    /// An SQLite file in the data directory: survives restarts.
    Sqlite,
    /// Process memory: lost on restart.
    Memory,
}

/// `--history-durability`, as [`Durability`].
#[derive(Clone, Copy, ValueEnum)]
enum DurabilityFlag {
    /// `fsync` on every commit.
    Full,
    /// No `fsync` on commit.
    Normal,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        overlay!(
            address,
            port,
            ping_interval,
            pong_timeout,
            max_message_size,
            client_queue_max_bytes,
            join_leave,
            subscribe_to_user_personal_channel,
            personal_channel_namespace,
            personal_single_connection,
            history_size,
            history_ttl,
            data_dir,
            user_connection_limit,
            client_channel_limit,
            client_command_rate,
            connection_rate_per_ip,
            trusted_proxies,
            allowed_origins,
            transports,
            redis,
            redis_sentinel,
            redis_cluster,
            redis_wait_replicas,
            redis_wait_timeout,
            redis_prefix,
            presence_ttl,
            idempotency_window,
            proxy_timeout,
            proxy_concurrency,
            proxy_http_headers,
            proxy_emulated_headers,
            proxy_binary_encoding,
            webhook_events,
            webhook_timeout,
            webhook_concurrency,
            webhook_batch_size,
            webhook_batch_delay
        );
        if let Some(storage) = self.history_storage {
            config.history_storage = match storage {
                StorageFlag::Sqlite => HistoryStorage::Sqlite,
                StorageFlag::Memory => HistoryStorage::Memory,
            };
        }
        if let Some(durability) = self.history_durability {
            config.history_durability = match durability {
                DurabilityFlag::Full => Durability::Full,
                DurabilityFlag::Normal => Durability::Normal,
            };
        }
        macro_rules! overlay_option {
            ($($field:ident),*) => { $( if self.$field.is_some() { config.$field = self.$field; } )* };
        }
        overlay_option!(
            api_key,
            admin_password,
            token_hmac_secret,
            api_port,
            api_address,
            tls_cert,
            tls_key,
            redis_tls_ca,
            token_rsa_public_key,
            token_ecdsa_public_key,
            token_jwks_url,
            name,
            max_connections,
            proxy_connect_endpoint,
            proxy_refresh_endpoint,
            proxy_subscribe_endpoint,
            proxy_publish_endpoint,
            proxy_sub_refresh_endpoint,
            proxy_rpc_endpoint,
            webhook_endpoint,
            webhook_secret,
            redis_sentinel_master,
            redis_master_username,
            redis_master_password
        );
        config.insecure |= self.insecure;
        config.redis_master_tls |= self.redis_master_tls;
        Ok(config)
    }
}

/// Parses `3600`, `90s`, `30m`, `1h` or `7d` as seconds.
fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("bad duration unit in {text:?} (use s, m, h or d)"),
    };
    Ok(n * scale)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(args) => {
            let ttl = parse_duration(&args.ttl)?;
            println!(
                "{}",
                switchboard::auth::make_hmac_token(&args.secret, &args.user, ttl)?
            );
            Ok(())
        }
        Command::Genconfig(args) => {
            let text = switchboard::config::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&args.output)
                .with_context(|| format!("cannot create {}", args.output.display()))?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            println!("wrote {}", args.output.display());
            Ok(())
        }
        Command::Bench(args) => switchboard_bench::run(*args),
        Command::CheckConfig(args) => {
            let CheckConfigArgs { file, mut settings } = *args;
            settings.config = Some(file.clone());
            let config = settings.into_config()?;
            config
                .validate()
                .with_context(|| format!("{} is not a valid configuration", file.display()))?;
            let shown = switchboard::config::effective_settings(&config)
                .map_err(|e| anyhow::anyhow!("cannot show the settings: {e}"))?;
            println!(
                "# {} is valid. The settings `switchboard serve --config {}` runs with\n\
                 # (file, then SWITCHBOARD_* variables, then flags), secrets masked:\n",
                file.display(),
                file.display()
            );
            print!("{shown}");
            Ok(())
        }
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into memory first: writing to a closed pipe (`| head`) is an error, not a panic.
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, "switchboard", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("cannot write the completion script")
        }
        Command::Serve(args) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into());
            match args.log_format.unwrap_or_default() {
                LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
                LogFormat::Json => tracing_subscriber::fmt()
                    .json()
                    .with_env_filter(filter)
                    .init(),
            }
            let config = args.into_config()?;
            config.validate()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let address = (config.address, config.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {}:{}", address.0, address.1))?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    Ok(switchboard::run(config, listener, shutdown).await?)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

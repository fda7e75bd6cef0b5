//! A shard's way to its Redis: a fixed address, the master a set of Sentinels names (followed
//! through failovers), or a Redis Cluster (whose client routes each command to the master of its
//! key's slot, and learns the new slot map after a failover or resharding).
//!
//! [`Link`] is what every command of the engine goes through (it is a
//! [`ConnectionLike`](redis::aio::ConnectionLike), so scripts, pipelines and commands take it as
//! they took the connection manager). With Sentinel, one watcher task per link asks the Sentinels
//! for the master every second, and at once when a call fails (the master died, or was demoted and
//! refuses writes with `READONLY`): when the address changed, it connects to the new master, swaps
//! the connection every later call uses, and tells the pub/sub supervisor, which reconnects and
//! checks every listened channel for a gap, as after any outage. Calls made while no master is
//! reachable fail like any Redis outage ("not available", error 108 to clients).
//!
//! TLS (`rediss://` URLs, `master_tls`) checks the server's certificate against the system's
//! roots, or against the certificate authorities the operator gives (`tls_ca`, PEM), for every
//! connection of the link: commands, pub/sub, Sentinels, every Cluster node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisFuture, ServerErrorKind,
    TlsCertificates, Value,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::CALL_TIMEOUT;
use crate::engine::broker::BrokerError;

/// How often the watcher asks the Sentinels who the master is, failures or not.
const SENTINEL_POLL: Duration = Duration::from_secs(1);
/// Least time between two master look-ups, however many calls fail meanwhile.
const SENTINEL_MIN_GAP: Duration = Duration::from_millis(200);

/// Where the master of a Sentinel-managed Redis is found, and how to log in to it.
#[derive(Debug, Clone, Default)]
pub struct SentinelSettings {
    /// The Sentinels: `host:port`, or `redis://[[user]:password@]host:port` (`rediss://` for
    /// TLS) carrying the Sentinels' own credentials (the first one that has them applies to all).
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    /// The master's (and replicas') user, when it differs from `default`.
    pub master_username: Option<String>,
    /// The master's password (may differ from the Sentinels').
    pub master_password: Option<String>,
    /// Connect to the master over TLS.
    pub master_tls: bool,
}

/// How a link finds its server.
enum Source {
    Fixed(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// The cluster's seed nodes, as URLs, and the certificate authorities to trust (PEM).
    Cluster {
        urls: Vec<String>,
        tls_ca: Option<Vec<u8>>,
    },
}

/// A commands connection: to one server, or to a cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct LinkState {
    source: Source,
    /// The commands connection to the current server (swapped on a failover).
    current: Mutex<Connection>,
    /// The current server's address; changes when Sentinel names a new master.
    master: watch::Sender<String>,
    /// Woken by a failed call: look the master up now rather than at the next poll.
    suspect: Notify,
}

/// A shard's commands connection, following the master through failovers under Sentinel.
#[derive(Clone)]
pub(super) struct Link(Arc<LinkState>);

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

async fn connect_manager(client: &redis::Client) -> Result<ConnectionManager, BrokerError> {
    let address = client.get_connection_info().addr().to_string();
    tokio::time::timeout(
        CALL_TIMEOUT * 2,
        client.get_connection_manager_with_config(manager_config()),
    )
    .await
    .map_err(|_| BrokerError::Unavailable(format!("Redis {address} did not answer")))?
    .map_err(|e| BrokerError::Unavailable(format!("Redis {address}: {e}")))
}

impl Link {
    /// A link to the server at `url`; over TLS (`rediss://`), trusting `tls_ca` (PEM) if given.
    pub(super) async fn fixed(url: &str, tls_ca: Option<&[u8]>) -> Result<Link, BrokerError> {
        let client = client(url, tls_ca)
            .map_err(|e| BrokerError::Unavailable(format!("bad Redis URL {url}: {e}")))?;
        let manager = connect_manager(&client).await?;
        let address = client.get_connection_info().addr().to_string();
        Ok(Link::new(Source::Fixed(client), manager, address))
    }

    /// A link to the master `settings` name, found through its Sentinels. Following failovers
    /// needs [`Link::watch_master`] running. TLS connections trust `tls_ca` (PEM) if given.
    pub(super) async fn sentinel(
        settings: &SentinelSettings,
        tls_ca: Option<&[u8]>,
    ) -> Result<Link, BrokerError> {
        let mut sentinel = sentinel_client(settings, tls_ca)?;
        let client = tokio::time::timeout(CALL_TIMEOUT * 2, sentinel.async_get_client())
            .await
            .map_err(|_| BrokerError::Unavailable("no Sentinel answered".into()))?
            .map_err(|e| {
                BrokerError::Unavailable(format!(
                    "Sentinel found no master {:?}: {e}",
                    settings.master_name
                ))
            })?;
        let manager = connect_manager(&client).await?;
        let address = client.get_connection_info().addr().to_string();
        tracing::info!(master = %address, name = %settings.master_name, "Redis master found through Sentinel");
        Ok(Link::new(
            Source::Sentinel(tokio::sync::Mutex::new(sentinel)),
            manager,
            address,
        ))
    }

    /// A link to the Redis Cluster the seed `nodes` (`host:port` or URLs) belong to; over TLS
    /// (`rediss://`), trusting `tls_ca` (PEM) if given.
    pub(super) async fn cluster(
        nodes: &[String],
        tls_ca: Option<&[u8]>,
    ) -> Result<Link, BrokerError> {
        let urls = cluster_urls(nodes);
        let client = cluster_builder(&urls, tls_ca)
            .build()
            .map_err(|e| BrokerError::Unavailable(format!("Redis Cluster settings: {e}")))?;
        let connection = tokio::time::timeout(CALL_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| BrokerError::Unavailable("no Redis Cluster node answered".into()))?
            .map_err(|e| BrokerError::Unavailable(format!("Redis Cluster: {e}")))?;
        tracing::info!(nodes = urls.len(), "connected to Redis Cluster");
        Ok(Link(Arc::new(LinkState {
            source: Source::Cluster {
                urls,
                tls_ca: tls_ca.map(<[u8]>::to_vec),
            },
            current: Mutex::new(Connection::Cluster(connection)),
            master: watch::channel("cluster".to_string()).0,
            suspect: Notify::new(),
        })))
    }

    /// Whether the link is to a Redis Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.0.source, Source::Cluster { .. })
    }

    /// On Redis Cluster, the settings of a client to it (the pub/sub supervisor's own).
    pub(super) fn cluster_builder(&self) -> Option<ClusterClientBuilder> {
        self.0.source.cluster_builder()
    }

    fn new(source: Source, manager: ConnectionManager, address: String) -> Link {
        Link(Arc::new(LinkState {
            source,
            current: Mutex::new(Connection::Single(manager)),
            master: watch::channel(address).0,
            suspect: Notify::new(),
        }))
    }

    /// Whether the server is found through Sentinel (and may change).
    pub(super) fn follows_sentinel(&self) -> bool {
        matches!(self.0.source, Source::Sentinel(_))
    }

    /// A client for the current server, to open a pub/sub connection with: under Sentinel, the
    /// master as the Sentinels name it now.
    pub(super) async fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.0.source {
            Source::Fixed(client) => Ok(client.clone()),
            Source::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
            Source::Cluster { .. } => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster has no single server",
            ))),
        }
    }

    /// Changes of the current server's address.
    pub(super) fn master_changes(&self) -> watch::Receiver<String> {
        self.0.master.subscribe()
    }

    fn manager(&self) -> Connection {
        self.0
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed call: under Sentinel, the master may have moved.
    fn suspect(&self) {
        if self.follows_sentinel() {
            self.0.suspect.notify_one();
        }
    }

    /// Follows the master Sentinel names until `shutdown`: asks every second, and soon after a
    /// failed call; on a new address, connects to it and swaps the connection.
    pub(super) async fn watch_master(self, shutdown: CancellationToken) {
        let Source::Sentinel(sentinel) = &self.0.source else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SENTINEL_POLL) => {}
                _ = self.0.suspect.notified() => {}
            }
            let found = tokio::time::timeout(CALL_TIMEOUT, async {
                sentinel.lock().await.async_get_client().await
            })
            .await;
            let client = match found {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Sentinel names no reachable master yet");
                    tokio::time::sleep(SENTINEL_MIN_GAP).await;
                    continue;
                }
                Err(_) => {
                    tracing::debug!("no Sentinel answered in time");
                    continue;
                }
            };
            let address = client.get_connection_info().addr().to_string();
            if *self.0.master.borrow() != address {
                match connect_manager(&client).await {
                    Ok(manager) => {
                        *self.0.current.lock().unwrap_or_else(|e| e.into_inner()) =
                            Connection::Single(manager);
                        tracing::warn!(master = %address, "Redis master changed (Sentinel failover)");
                        self.0.master.send_replace(address);
                    }
                    Err(e) => tracing::debug!(error = %e, "new Redis master not reachable yet"),
                }
            }
            tokio::time::sleep(SENTINEL_MIN_GAP).await;
        }
    }
}

/// Whether a reply says the server is no longer the one to write to.
fn demoted(value: &Value) -> bool {
    match value {
        Value::ServerError(e) => matches!(e.code(), "READONLY" | "EXECABORT" | "MASTERDOWN"),
        Value::Array(items) => items.iter().any(demoted),
        _ => false,
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut manager = self.manager();
            let result = manager.req_packed_command(cmd).await;
            match &result {
                Ok(value) if demoted(value) => self.suspect(),
                Err(_) => self.suspect(),
                Ok(_) => {}
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut manager = self.manager();
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            match &result {
                Ok(values) if values.iter().any(demoted) => self.suspect(),
                Err(_) => self.suspect(),
                Ok(_) => {}
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => Box::pin(cluster_command(c, cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// How many times a single command the cluster did not run is sent again.
const CLUSTER_RESENDS: u32 = 4;

/// Sends one command to the cluster, and sends it again (up to [`CLUSTER_RESENDS`] times) while
/// the cluster answers that it did not run it: `MOVED` (straight to the node it names, since the
/// client's slot map, learnt from one node, may still be stale there), `ASK`, `TRYAGAIN`,
/// `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, a refused connection or no connection for the slot
/// (after a short pause, by the slot map the client refreshes meanwhile). A single command either
/// runs whole or not at all, so a resend never runs it twice; pipelines are not resent (some of
/// their commands may have run), their callers hear "not available" as in any outage.
async fn cluster_command(conn: &mut ClusterConnection, cmd: &Cmd) -> redis::RedisResult<Value> {
    let mut to: Option<(String, u16)> = None;
    let mut resends = 0;
    loop {
        let result = match to.take() {
            None => conn.req_packed_command(cmd).await,
            Some((host, port)) => {
                let node = SingleNodeRoutingInfo::ByAddress { host, port };
                conn.route_command(cmd.clone(), RoutingInfo::SingleNode(node))
                    .await
            }
        };
        let error = match result {
            Err(error) if resends < CLUSTER_RESENDS => error,
            done => return done,
        };
        resends += 1;
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::Moved) => {
                to = error.redirect_node().and_then(|(node, _slot)| {
                    let (host, port) = node.rsplit_once(':')?;
                    Some((host.to_string(), port.parse().ok()?))
                });
            }
            ErrorKind::Server(
                ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly,
            )
            | ErrorKind::ClusterConnectionNotFound => {}
            ErrorKind::Io if error.is_connection_refusal() => {}
            _ => return Err(error),
        }
        if to.is_none() {
            tokio::time::sleep(Duration::from_millis(25 << resends)).await;
        }
    }
}

/// `host:port` entries as URLs; URLs as given.
fn cluster_urls(nodes: &[String]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| {
            if n.contains("://") {
                n.clone()
            } else {
                format!("redis://{n}")
            }
        })
        .collect()
}

impl Source {
    /// The cluster client settings of a cluster source; `None` for any other.
    fn cluster_builder(&self) -> Option<ClusterClientBuilder> {
        match self {
            Source::Cluster { urls, tls_ca } => Some(cluster_builder(urls, tls_ca.as_deref())),
            _ => None,
        }
    }
}

/// A cluster client's settings: calls bounded like every Redis call, and no retry of a failed
/// call (a command is never sent twice, so a publication is never stored twice; the caller
/// hears "not available", as in any outage, and the client refreshes its slot map meanwhile).
/// TLS connections trust `tls_ca` (PEM) if given.
fn cluster_builder(urls: &[String], tls_ca: Option<&[u8]>) -> ClusterClientBuilder {
    let builder = ClusterClientBuilder::new(urls.to_vec())
        .retries(0)
        .connection_timeout(CALL_TIMEOUT)
        .response_timeout(CALL_TIMEOUT);
    match trusting(tls_ca) {
        Some(certificates) => builder.certs(certificates),
        None => builder,
    }
}

/// The TLS settings that trust the certificate authorities in `tls_ca` (PEM), if given.
fn trusting(tls_ca: Option<&[u8]>) -> Option<TlsCertificates> {
    tls_ca.map(|pem| TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    })
}

/// A client for the Redis server at `url`; over TLS (`rediss://`), trusting the certificate
/// authorities in `tls_ca` (PEM) if given, otherwise the system's roots.
pub fn client(url: &str, tls_ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    match trusting(tls_ca) {
        Some(certificates) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
            redis::Client::build_with_tls(info, certificates)
        }
        _ => redis::Client::open(info),
    }
}

/// Builds the Sentinel client of `settings`; TLS connections trust `tls_ca` (PEM) if given.
fn sentinel_client(
    settings: &SentinelSettings,
    tls_ca: Option<&[u8]>,
) -> Result<SentinelClient, BrokerError> {
    let bad = |what: String| BrokerError::Unavailable(format!("Sentinel settings: {what}"));
    if settings.sentinels.is_empty() {
        return Err(bad("no Sentinel address".into()));
    }
    if settings.master_name.is_empty() {
        return Err(bad("no master name (redis_sentinel_master)".into()));
    }
    let mut addresses = Vec::new();
    let mut credentials = None;
    let mut sentinel_tls = false;
    for entry in &settings.sentinels {
        let url = if entry.contains("://") {
            entry.clone()
        } else {
            format!("redis://{entry}")
        };
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(format!("{entry}: {e}")))?;
        let redis = info.redis_settings();
        if credentials.is_none() && redis.password().is_some() {
            credentials = Some((
                redis.username().map(str::to_string),
                redis.password().map(str::to_string),
            ));
        }
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            sentinel_tls = true;
        }
        addresses.push(info.addr().clone());
    }
    let mut builder =
        SentinelClientBuilder::new(addresses, &settings.master_name, SentinelServerType::Master)
            .map_err(|e| bad(e.to_string()))?;
    if let Some((username, password)) = credentials {
        if let Some(username) = username {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = password {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    if sentinel_tls {
        builder = builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = trusting(tls_ca) {
            builder = builder.set_client_to_sentinel_certificates(certificates);
        }
    }
    if let Some(username) = &settings.master_username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &settings.master_password {
        builder = builder.set_client_to_redis_password(password);
    }
    if settings.master_tls {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = trusting(tls_ca) {
            builder = builder.set_client_to_redis_certificates(certificates);
        }
    }
    builder.build().map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_settings_are_checked() {
        let settings = SentinelSettings {
            sentinels: vec![
                "127.0.0.1:26379".into(),
                "redis://:pw@127.0.0.1:26380".into(),
            ],
            master_name: "main".into(),
            ..SentinelSettings::default()
        };
        assert!(sentinel_client(&settings, None).is_ok());
        let unnamed = SentinelSettings {
            master_name: String::new(),
            ..settings.clone()
        };
        assert!(sentinel_client(&unnamed, None).is_err());
        let none = SentinelSettings {
            sentinels: Vec::new(),
            ..settings
        };
        assert!(sentinel_client(&none, None).is_err());
    }
}

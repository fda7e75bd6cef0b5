//! Decisions by the application backend over HTTP, asked the way Centrifugo's HTTP proxy asks
//! them, so a backend written for Centrifugo answers Switchboard unchanged.
//!
//! For each decision whose endpoint is configured, [`Proxy`] POSTs Centrifugo's JSON request
//! ([`wire`]) and maps the answer: a result becomes the decision, `{"error": …}` a
//! [`Refusal::Error`] the client receives as it is, `{"disconnect": …}` a
//! [`Refusal::Disconnect`]. Decisions without an endpoint, and those Centrifugo leaves to tokens
//! (a connect with a token, a subscription with a token or to a user-limited channel), go to the
//! built-in [`Rules`].
//!
//! Every request names the client's transport and protocol as they are ([`Link`]). A client's
//! payload travels as raw JSON in `data`, or in base64 as `b64data` when it is not JSON (a
//! Protobuf client's bytes) or when `proxy_binary_encoding` asks for base64 throughout; a
//! backend's `b64data` may likewise be any bytes where the server can carry them (publish and rpc
//! results).
//!
//! Channel decisions may be routed per namespace (a namespace turns a hook off or names its own
//! endpoint), and RPCs by method prefix.
//!
//! A call runs on the asking client's own task, so a slow backend delays that client only. Each
//! endpoint has its own bound on requests in flight (more wait) and every call, waiting
//! included, its time bound ([`endpoint`]); a backend that fails, answers late or not at all
//! costs the command the temporary error 100, and the client retries. All endpoints share one
//! HTTP client, whose connections are kept alive.

mod endpoint;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde::Serialize;

use self::endpoint::{Backend, Endpoint};
use self::wire::{Data, Origin, ResultError};
use super::decisions::{
    Client, ClientHeaders, ConnectDecision, Connecting, Content, Decisions, Link, PublishDecision,
    RefreshDecision, Refusal, RpcDecision, SubRefreshDecision, SubscribeDecision,
};
use super::rules::Rules;
use crate::auth::TokenVerifier;
use crate::channel::ChannelOptions;
use crate::config::Config;
use crate::metrics::{BackendCalls, Metrics, ProxyMetrics};
use crate::protocol::{
    error_code, ConnectRequest, Error, RefreshRequest, SubRefreshRequest, SubscribeRequest,
};

/// Why the proxy cannot be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy_{name}_endpoint {url:?}: {reason}")]
    Endpoint {
        name: &'static str,
        url: String,
        reason: String,
    },
    #[error("proxy_static_headers: {0:?} is not a valid header")]
    Header(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Decisions by the application backend, with the built-in rules for the rest.
pub struct Proxy {
    rules: Rules,
    backend: Backend,
    connect: Option<Endpoint>,
    refresh: Option<Endpoint>,
    /// Where channel decisions go, per namespace (`""`: channels outside namespaces).
    routes: HashMap<String, Routes>,
    /// The server-wide endpoints, for a namespace not configured (which the session refuses
    /// before asking anyway).
    default_routes: Routes,
    rpc: Option<Endpoint>,
    /// RPC endpoints by method prefix, longest prefix first.
    rpc_by_prefix: Vec<(String, Endpoint)>,
    /// Tokens can be verified here: a subscription token is then the rules' to check.
    verifies_tokens: bool,
    /// Every payload travels as base64 (`b64data`), not only those that are not JSON.
    binary_encoding: bool,
}

/// Where one namespace's channel decisions go; `None`: the rules decide.
#[derive(Clone, Default)]
struct Routes {
    subscribe: Option<Arc<Endpoint>>,
    publish: Option<Arc<Endpoint>>,
    sub_refresh: Option<Arc<Endpoint>>,
}

/// An endpoint's counters among the node's proxy metrics.
type Counters = fn(&ProxyMetrics) -> &BackendCalls;

impl Proxy {
    /// The proxy the configuration describes, falling back to rules verifying tokens with
    /// `verifier`, counting its calls in `metrics` (the node's).
    pub fn new(
        config: &Config,
        verifier: Option<TokenVerifier>,
        metrics: Arc<Metrics>,
    ) -> Result<Proxy, ProxyError> {
        // HTTPS uses the ring provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(config.proxy_timeout)
            .pool_max_idle_per_host(config.proxy_concurrency)
            .tcp_nodelay(true)
            // An answer is the endpoint's own; a redirect is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut static_headers = HeaderMap::new();
        for (name, value) in &config.proxy_static_headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .ok()
                .zip(HeaderValue::from_str(value).ok());
            let Some((name, value)) = header else {
                return Err(ProxyError::Header(name.clone()));
            };
            static_headers.insert(name, value);
        }
        let endpoint = |name: &'static str, url: &str, calls: Counters| -> Result<_, ProxyError> {
            let parsed = reqwest::Url::parse(url).map_err(|e| ProxyError::Endpoint {
                name,
                url: url.to_string(),
                reason: e.to_string(),
            })?;
            Ok(Endpoint::new(
                parsed,
                config.proxy_concurrency.max(1),
                calls,
                &metrics,
            ))
        };
        let optional = |name: &'static str,
                        url: &Option<String>,
                        calls: Counters|
         -> Result<Option<Endpoint>, ProxyError> {
            url.as_deref()
                .map(|url| endpoint(name, url, calls))
                .transpose()
        };
        let server_wide = Routes {
            subscribe: optional("subscribe", &config.proxy_subscribe_endpoint, |m| {
                &m.subscribe
            })?
            .map(Arc::new),
            publish: optional("publish", &config.proxy_publish_endpoint, |m| &m.publish)?
                .map(Arc::new),
            sub_refresh: optional("sub_refresh", &config.proxy_sub_refresh_endpoint, |m| {
                &m.sub_refresh
            })?
            .map(Arc::new),
        };
        // A namespace may turn a hook off, or point it at its own endpoint.
        let pick = |enabled: Option<bool>,
                    own: &Option<String>,
                    name: &'static str,
                    server_wide: &Option<Arc<Endpoint>>,
                    calls: Counters|
         -> Result<Option<Arc<Endpoint>>, ProxyError> {
            if enabled == Some(false) {
                return Ok(None);
            }
            match own {
                Some(url) => endpoint(name, url, calls).map(|e| Some(Arc::new(e))),
                None => Ok(server_wide.clone()),
            }
        };
        let mut routes = HashMap::new();
        for ns in std::iter::once(&config.channel).chain(&config.namespace) {
            let namespace_routes = Routes {
                subscribe: pick(
                    ns.proxy_subscribe,
                    &ns.proxy_subscribe_endpoint,
                    "subscribe",
                    &server_wide.subscribe,
                    |m| &m.subscribe,
                )?,
                publish: pick(
                    ns.proxy_publish,
                    &ns.proxy_publish_endpoint,
                    "publish",
                    &server_wide.publish,
                    |m| &m.publish,
                )?,
                sub_refresh: pick(
                    ns.proxy_sub_refresh,
                    &ns.proxy_sub_refresh_endpoint,
                    "sub_refresh",
                    &server_wide.sub_refresh,
                    |m| &m.sub_refresh,
                )?,
            };
            routes.insert(ns.name.clone(), namespace_routes);
        }
        let mut rpc_by_prefix = config
            .proxy_rpc_endpoints
            .iter()
            .map(|(prefix, url)| Ok((prefix.clone(), endpoint("rpc", url, |m| &m.rpc)?)))
            .collect::<Result<Vec<_>, ProxyError>>()?;
        rpc_by_prefix.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Proxy {
            rules: Rules::new(config, verifier.clone()),
            connect: optional("connect", &config.proxy_connect_endpoint, |m| &m.connect)?,
            refresh: optional("refresh", &config.proxy_refresh_endpoint, |m| &m.refresh)?,
            routes,
            default_routes: server_wide,
            rpc: optional("rpc", &config.proxy_rpc_endpoint, |m| &m.rpc)?,
            rpc_by_prefix,
            verifies_tokens: verifier.is_some(),
            binary_encoding: config.proxy_binary_encoding,
            backend: Backend {
                client,
                timeout: config.proxy_timeout,
                static_headers,
                metrics: metrics.clone(),
            },
        })
    }

    /// Where decisions about `channel` go: its namespace's routes.
    fn routes(&self, channel: &str) -> &Routes {
        let namespace = channel.split_once(':').map_or("", |(ns, _)| ns);
        self.routes.get(namespace).unwrap_or(&self.default_routes)
    }

    /// The endpoint answering RPCs of `method`: the longest matching prefix's, else the
    /// server-wide one.
    fn rpc_endpoint(&self, method: &str) -> Option<&Endpoint> {
        self.rpc_by_prefix
            .iter()
            .find(|(prefix, _)| method.starts_with(prefix.as_str()))
            .map(|(_, endpoint)| endpoint)
            .or(self.rpc.as_ref())
    }

    /// Asks `endpoint` with `body`; the answer's result, or its refusal. A call that fails is
    /// the temporary error 100 for the client.
    async fn ask<R: DeserializeOwned + Default>(
        &self,
        endpoint: &Endpoint,
        hook: &'static str,
        client: &str,
        body: &impl Serialize,
        headers: &ClientHeaders,
    ) -> Result<R, Refusal> {
        match endpoint.call::<R>(&self.backend, body, headers).await {
            Ok(answer) => answer.into_result(),
            Err(error) => {
                tracing::warn!(hook, client, %error, "backend proxy call failed");
                Err(Error::new(error_code::INTERNAL).into())
            }
        }
    }

    /// A result the backend gave that cannot be used: counted as the endpoint's error, and the
    /// temporary error 100 for the client.
    fn unusable(
        &self,
        endpoint: &Endpoint,
        hook: &'static str,
        client: &str,
        error: ResultError,
    ) -> Refusal {
        endpoint.bad_answer(&self.backend);
        tracing::warn!(hook, client, %error, "unusable backend proxy result");
        Error::new(error_code::INTERNAL).into()
    }

    /// How a request about `client` (connected by `link`) opens, and its payload `data` as it
    /// travels: in base64 when it is not JSON or in binary mode, which the opening then says.
    fn opening<'a>(
        &self,
        client: &'a str,
        link: Link,
        data: Option<&'a Content>,
    ) -> (Origin<'a>, Data<'a>) {
        let data = Data::new(data, self.binary_encoding);
        let base64 = self.binary_encoding || data.is_base64();
        (Origin::new(client, link, base64), data)
    }

    /// Whether a subscription (or its refresh) is the rules' to decide, as Centrifugo leaves
    /// subscriptions with a token and user-limited channels (`#`) to them.
    fn decided_by_rules(&self, channel: &str, token: &str) -> bool {
        (self.verifies_tokens && !token.is_empty()) || channel.contains('#')
    }
}

#[async_trait]
impl Decisions for Proxy {
    async fn connect(
        &self,
        client: Connecting<'_>,
        req: &ConnectRequest,
    ) -> Result<ConnectDecision, Refusal> {
        let Some(endpoint) = self.connect.as_ref().filter(|_| req.token.is_empty()) else {
            return self.rules.connect(client, req).await;
        };
        let content = req.data.clone().map(|payload| Content {
            payload,
            binary: req.binary,
        });
        let (origin, data) = self.opening(client.client, client.link, content.as_ref());
        let body = wire::ConnectRequest {
            origin,
            name: &req.name,
            version: &req.version,
            data,
        };
        let result: wire::ConnectResult = self
            .ask(endpoint, "connect", client.client, &body, client.headers)
            .await?;
        // With a refresh endpoint, the backend renews what it let in; without, the client does
        // (with a token).
        result
            .into_decision(self.refresh.is_some())
            .map_err(|e| self.unusable(endpoint, "connect", client.client, e))
    }

    async fn refresh(
        &self,
        client: Client<'_>,
        req: &RefreshRequest,
    ) -> Result<RefreshDecision, Refusal> {
        let Some(endpoint) = self.refresh.as_ref().filter(|_| req.token.is_empty()) else {
            return self.rules.refresh(client, req).await;
        };
        let body = wire::RefreshRequest {
            origin: self.opening(client.client, client.link, None).0,
            user: client.user,
            meta: client.meta,
        };
        let result: wire::RefreshResult = self
            .ask(endpoint, "refresh", client.client, &body, client.headers)
            .await?;
        result
            .into_decision()
            .map_err(|e| self.unusable(endpoint, "refresh", client.client, e))?
    }

    async fn subscribe(
        &self,
        client: Client<'_>,
        req: &SubscribeRequest,
        options: &ChannelOptions,
    ) -> Result<SubscribeDecision, Refusal> {
        let endpoint = self
            .routes(&req.channel)
            .subscribe
            .as_deref()
            .filter(|_| !self.decided_by_rules(&req.channel, &req.token));
        let Some(endpoint) = endpoint else {
            return self.rules.subscribe(client, req, options).await;
        };
        let content = req.data.clone().map(|payload| Content {
            payload,
            binary: req.binary,
        });
        let (origin, data) = self.opening(client.client, client.link, content.as_ref());
        let body = wire::SubscribeRequest {
            origin,
            user: client.user,
            channel: &req.channel,
            token: &req.token,
            data,
            meta: client.meta,
        };
        let result: wire::SubscribeResult = self
            .ask(endpoint, "subscribe", client.client, &body, client.headers)
            .await?;
        let mut decision = result
            .into_decision()
            .map_err(|e| self.unusable(endpoint, "subscribe", client.client, e))?;
        // With a sub_refresh endpoint for the channel, the backend renews what it granted; without,
        // the client does (with a subscription token).
        decision.refreshed_by_server =
            decision.expires_at.is_some() && self.routes(&req.channel).sub_refresh.is_some();
        Ok(decision)
    }

    async fn sub_refresh(
        &self,
        client: Client<'_>,
        req: &SubRefreshRequest,
    ) -> Result<SubRefreshDecision, Refusal> {
        let endpoint = self
            .routes(&req.channel)
            .sub_refresh
            .as_deref()
            .filter(|_| !self.decided_by_rules(&req.channel, &req.token));
        let Some(endpoint) = endpoint else {
            return self.rules.sub_refresh(client, req).await;
        };
        let body = wire::SubRefreshRequest {
            origin: self.opening(client.client, client.link, None).0,
            user: client.user,
            channel: &req.channel,
            meta: client.meta,
        };
        let result: wire::SubRefreshResult = self
            .ask(
                endpoint,
                "sub_refresh",
                client.client,
                &body,
                client.headers,
            )
            .await?;
        result.into_decision()
    }

    async fn publish(
        &self,
        client: Client<'_>,
        channel: &str,
        data: Option<Content>,
        options: &ChannelOptions,
        subscribed: bool,
    ) -> Result<PublishDecision, Refusal> {
        let Some(endpoint) = self.routes(channel).publish.as_deref() else {
            return self
                .rules
                .publish(client, channel, data, options, subscribed)
                .await;
        };
        let data = data.ok_or_else(|| Error::new(error_code::BAD_REQUEST))?;
        let (origin, wire_data) = self.opening(client.client, client.link, Some(&data));
        let body = wire::PublishRequest {
            origin,
            user: client.user,
            channel,
            data: wire_data,
            meta: client.meta,
        };
        let result: wire::PublishResult = self
            .ask(endpoint, "publish", client.client, &body, client.headers)
            .await?;
        result
            .into_decision(data)
            .map_err(|e| self.unusable(endpoint, "publish", client.client, e))
    }

    async fn rpc(
        &self,
        client: Client<'_>,
        method: &str,
        data: Option<Content>,
    ) -> Result<RpcDecision, Refusal> {
        let Some(endpoint) = self.rpc_endpoint(method) else {
            return self.rules.rpc(client, method, data).await;
        };
        let (origin, data) = self.opening(client.client, client.link, data.as_ref());
        let body = wire::RpcRequest {
            origin,
            user: client.user,
            method,
            data,
            meta: client.meta,
        };
        let result: wire::RpcResult = self
            .ask(endpoint, "rpc", client.client, &body, client.headers)
            .await?;
        result
            .into_decision()
            .map_err(|e| self.unusable(endpoint, "rpc", client.client, e))
    }
}

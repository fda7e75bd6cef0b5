//! Checking a configuration before a node runs on it: values in range, settings that exclude or
//! need each other, and the safety rule for public addresses.

use std::time::Duration;

use super::{Config, ConfigError, TRANSPORTS};

impl Config {
    /// Checks the values and the safety rule: a public address needs a token secret (clients) and an
    /// API key (backends), unless `insecure` says otherwise.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_known("transports", "transport", &self.transports, &TRANSPORTS)?;
        if self.ping_interval == 0 || self.pong_timeout == 0 {
            return Err(ConfigError::Invalid(
                "ping_interval and pong_timeout must be at least 1 second".into(),
            ));
        }
        if self.max_message_size < 128 {
            return Err(ConfigError::Invalid(
                "max_message_size must be at least 128 bytes".into(),
            ));
        }
        if self.client_queue_max_bytes < self.max_message_size {
            return Err(ConfigError::Invalid(
                "client_queue_max_bytes must be at least max_message_size".into(),
            ));
        }
        if !self.channel.name.is_empty() {
            return Err(ConfigError::Invalid(
                "[channel] takes no name; namespaces go in [[namespace]]".into(),
            ));
        }
        for (place, ns) in std::iter::once(("[channel]".to_string(), &self.channel)).chain(
            self.namespace
                .iter()
                .map(|ns| (format!("namespace {:?}", ns.name), ns)),
        ) {
            for kind in ns.allowed_delta_types.iter().flatten() {
                if kind != "fossil" {
                    return Err(ConfigError::Invalid(format!(
                        "allowed_delta_types of {place}: unknown delta type {kind:?} (only \"fossil\" exists)"
                    )));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        self.channel.validate_type("[channel]")?;
        self.channel
            .validate_presence_prefixes("[channel]", &self.namespace)?;
        for ns in &self.namespace {
            ns.validate_type(&ns.name)?;
            ns.validate_presence_prefixes(&ns.name, &self.namespace)?;
            if ns.name.is_empty() || ns.name.contains(':') {
                return Err(ConfigError::Invalid(format!(
                    "namespace name {:?} must be non-empty and contain no ':'",
                    ns.name
                )));
            }
            if !seen.insert(&ns.name) {
                return Err(ConfigError::Invalid(format!(
                    "namespace {:?} is defined twice",
                    ns.name
                )));
            }
        }
        if self.subscribe_to_user_personal_channel
            && !self.personal_channel_namespace.is_empty()
            && !self
                .namespace
                .iter()
                .any(|ns| ns.name == self.personal_channel_namespace)
        {
            return Err(ConfigError::Invalid(format!(
                "personal_channel_namespace {:?} is not a configured [[namespace]]",
                self.personal_channel_namespace
            )));
        }
        if self.personal_single_connection {
            let presence = if self.personal_channel_namespace.is_empty() {
                self.channel.presence.unwrap_or(self.presence)
            } else {
                self.namespace
                    .iter()
                    .find(|ns| ns.name == self.personal_channel_namespace)
                    .and_then(|ns| ns.presence)
                    .unwrap_or(self.presence)
            };
            if !self.subscribe_to_user_personal_channel || !presence {
                return Err(ConfigError::Invalid(
                    "personal_single_connection needs subscribe_to_user_personal_channel and \
                     presence in the personal channel's namespace"
                        .into(),
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "TLS needs both tls_cert and tls_key".into(),
            ));
        }
        if self.idempotency_window.is_zero() {
            return Err(ConfigError::Invalid(
                "idempotency_window must be more than zero".into(),
            ));
        }
        let targets = [
            !self.redis.is_empty(),
            !self.redis_sentinel.is_empty(),
            !self.redis_cluster.is_empty(),
        ];
        if targets.iter().filter(|t| **t).count() > 1 {
            return Err(ConfigError::Invalid(
                "redis, redis_sentinel and redis_cluster are exclusive: give one".into(),
            ));
        }
        if !self.redis_cluster.is_empty() && self.redis_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid(
                "with redis_cluster, redis_prefix may not hold braces (they make hash tags)".into(),
            ));
        }
        if !self.redis_sentinel.is_empty() && self.redis_sentinel_master.is_none() {
            return Err(ConfigError::Invalid(
                "redis_sentinel needs redis_sentinel_master, the name the Sentinels monitor".into(),
            ));
        }
        if self.redis_tls_ca.is_some() && !self.uses_redis() {
            return Err(ConfigError::Invalid(
                "redis_tls_ca is for TLS to Redis: give redis, redis_sentinel or redis_cluster"
                    .into(),
            ));
        }
        if self.redis_wait_replicas > 0
            && (self.redis_wait_timeout.is_zero()
                || self.redis_wait_timeout >= Duration::from_secs(3))
        {
            return Err(ConfigError::Invalid(
                "redis_wait_timeout must be more than zero and less than 3s".into(),
            ));
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        self.validate_proxy()?;
        self.validate_webhooks()?;
        if !self.address.is_loopback() && !self.insecure {
            if !self.verifies_tokens() && self.proxy_connect_endpoint.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "refusing to accept anonymous clients on public address {}: set --token-hmac-secret \
                     (or another token key, or --proxy-connect-endpoint), or pass --insecure to \
                     allow it explicitly",
                    self.address
                )));
            }
            if self.api_key.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "refusing to expose the server API without a key on public address {}: set \
                     --api-key (or SWITCHBOARD_API_KEY), or pass --insecure to allow it explicitly",
                    self.address
                )));
            }
        }
        Ok(())
    }

    /// Checks the proxy settings: URLs, header names and values, bounds.
    fn validate_proxy(&self) -> Result<(), ConfigError> {
        let check = |setting: String, endpoint: &str| check_url(&setting, endpoint);
        for (name, endpoint) in self.proxy_endpoints() {
            if let Some(endpoint) = endpoint {
                check(format!("proxy_{name}_endpoint"), endpoint)?;
            }
        }
        for ns in std::iter::once(&self.channel).chain(&self.namespace) {
            for (name, endpoint) in ns.proxy_endpoints() {
                if let Some(endpoint) = endpoint {
                    check(
                        format!("namespace {:?}: proxy_{name}_endpoint", ns.name),
                        endpoint,
                    )?;
                }
            }
        }
        for (prefix, endpoint) in &self.proxy_rpc_endpoints {
            check(format!("proxy_rpc_endpoints {prefix:?}"), endpoint)?;
        }
        if self.proxy_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "proxy_concurrency must be at least 1".into(),
            ));
        }
        if self.proxy_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "proxy_timeout must be more than zero".into(),
            ));
        }
        if self.proxy_binary_encoding && !self.uses_proxy() {
            return Err(ConfigError::Invalid(
                "proxy_binary_encoding changes proxy requests only: set a proxy endpoint, or \
                 leave it off"
                    .into(),
            ));
        }
        for name in self
            .proxy_http_headers
            .iter()
            .chain(&self.proxy_emulated_headers)
        {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "proxy_http_headers / proxy_emulated_headers: {name:?} is not a header name"
                )));
            }
        }
        for (name, value) in &self.proxy_static_headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(ConfigError::Invalid(format!(
                    "proxy_static_headers: {name:?} = {value:?} is not a valid header"
                )));
            }
        }
        Ok(())
    }
}

/// Checks that `endpoint`, the value of `setting`, is an http(s) URL.
/// Refuses the first of `values` (setting `setting`, each a `what`) that `known` does not hold,
/// naming the known ones.
pub(super) fn check_known(
    setting: &str,
    what: &str,
    values: &[String],
    known: &[&str],
) -> Result<(), ConfigError> {
    match values.iter().find(|v| !known.contains(&v.as_str())) {
        Some(unknown) => Err(ConfigError::Invalid(format!(
            "{setting}: unknown {what} {unknown:?} (known: {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

pub(super) fn check_url(setting: &str, endpoint: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| ConfigError::Invalid(format!("{setting} {endpoint:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::Invalid(format!(
            "{setting} {endpoint:?} must be an http:// or https:// URL"
        )));
    }
    Ok(())
}

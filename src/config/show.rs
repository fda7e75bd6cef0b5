//! The effective settings as TOML, for `switchboard check-config`: every value the server would
//! run with, secrets masked.

use std::time::Duration;

use serde::Serializer;

use super::Config;

/// What a masked secret shows: that it is set, never what it is.
const MASK: &str = "********";

/// Settings whose values are secrets.
const SECRET_KEYS: &[&str] = &[
    "api_key",
    "admin_password",
    "token_hmac_secret",
    "webhook_secret",
    "redis_master_password",
];

/// Settings holding URLs, whose password (`redis://:password@host`) is masked.
fn is_url_setting(key: &str) -> bool {
    key == "redis"
        || key == "redis_sentinel"
        || key == "redis_cluster"
        || key == "token_jwks_url"
        || key.ends_with("_endpoint")
        || key == "proxy_rpc_endpoints"
}

/// `config` as TOML with secrets masked: the API key, the admin password, the token secret, the
/// values of `proxy_static_headers` (internal keys, often) and the passwords inside URLs.
/// Settings left unset do not appear.
pub fn effective_settings(config: &Config) -> Result<String, String> {
    let mut table = toml::Table::try_from(config).map_err(|e| e.to_string())?;
    mask_table(&mut table);
    toml::to_string(&table).map_err(|e| e.to_string())
}

fn mask_table(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        if SECRET_KEYS.contains(&key.as_str()) {
            *value = toml::Value::String(MASK.into());
        } else if key == "proxy_static_headers" {
            if let toml::Value::Table(headers) = value {
                for (_, header) in headers.iter_mut() {
                    *header = toml::Value::String(MASK.into());
                }
            }
        } else if is_url_setting(key) {
            mask_urls(value);
        } else if let toml::Value::Table(inner) = value {
            mask_table(inner);
        } else if let toml::Value::Array(items) = value {
            for item in items {
                if let toml::Value::Table(inner) = item {
                    mask_table(inner);
                }
            }
        }
    }
}

/// Masks the password of every URL in `value` (a string, an array or a table of them).
fn mask_urls(value: &mut toml::Value) {
    match value {
        toml::Value::String(text) => {
            if let Ok(mut url) = reqwest::Url::parse(text) {
                if url.password().is_some() && url.set_password(Some(MASK)).is_ok() {
                    *text = url.to_string();
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_urls),
        toml::Value::Table(inner) => inner.iter_mut().for_each(|(_, v)| mask_urls(v)),
        _ => {}
    }
}

/// A duration as a file writes it: `1s`, `500ms`.
pub(super) fn serialize_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let millis = duration.as_millis();
    if millis % 1000 == 0 {
        serializer.serialize_str(&format!("{}s", millis / 1000))
    } else {
        serializer.serialize_str(&format!("{millis}ms"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Namespace;

    #[test]
    fn secrets_are_masked_and_the_rest_shown() {
        let config = Config {
            api_key: Some("the-api-key".into()),
            admin_password: Some("the-password".into()),
            token_hmac_secret: Some("the-secret".into()),
            redis: vec!["redis://:redis-pass@127.0.0.1:6379/0".into()],
            redis_sentinel: vec!["redis://:sentinel-pass@127.0.0.1:26379".into()],
            redis_master_password: Some("master-pass".into()),
            proxy_connect_endpoint: Some("http://user:endpoint-pass@127.0.0.1:3000/connect".into()),
            proxy_static_headers: [("X-Internal-Key".to_string(), "internal".to_string())].into(),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            namespace: vec![Namespace {
                name: "chat".into(),
                history_size: Some(100),
                ..Namespace::default()
            }],
            ..Config::default()
        };
        let shown = effective_settings(&config).unwrap();
        for secret in [
            "the-api-key",
            "the-password",
            "the-secret",
            "redis-pass",
            "sentinel-pass",
            "master-pass",
            "endpoint-pass",
            "internal",
        ] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
        for expected in [
            "api_key = \"********\"",
            "port = 8000",
            "proxy_timeout = \"1s\"",
            "proxy_binary_encoding = false",
            "trusted_proxies = [\"10.0.0.0/8\"]",
            "redis = [\"redis://:********@127.0.0.1:6379/0\"]",
            "redis_sentinel = [\"redis://:********@127.0.0.1:26379\"]",
            "redis_master_password = \"********\"",
            "redis_wait_timeout = \"1s\"",
            "name = \"chat\"",
            "history_size = 100",
        ] {
            assert!(shown.contains(expected), "no {expected:?} in:\n{shown}");
        }
        // What is shown reads back as the same settings.
        let back: Config = toml::from_str(&shown).unwrap();
        assert_eq!(back.port, config.port);
        assert_eq!(back.trusted_proxies, config.trusted_proxies);
        assert_eq!(back.namespace[0].history_size, Some(100));
    }
}

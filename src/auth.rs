//! Tokens: connection and subscription JWTs with Centrifugo's claims, verified with an HMAC secret,
//! RSA or ECDSA public keys, or a JSON Web Key Set fetched and refreshed in the background.
//!
//! The key is chosen from the token's `alg`, and each kind of key only ever verifies its own family
//! of algorithms, so a token cannot pick how it is checked (no `none`, no HS/RS confusion).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::config::Config;

/// The claims Switchboard reads from a connection token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectionClaims {
    /// User id; empty means anonymous.
    #[serde(default)]
    pub sub: String,
    /// Token expiry, seconds since the Unix epoch; also the connection's unless `expire_at` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Connection info, visible to other clients as `conn_info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// Connection info as base64 (used when `info` is absent and it decodes to JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    /// Channels to subscribe the connection to at connect (server-side subscriptions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Server-side subscriptions with options.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubOptions>,
    /// Server-only metadata; never shown to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RawValue>>,
    /// Connection expiry separate from `exp` (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
}

/// Options of one server-side subscription in a connection token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    /// Returned to the client in `ConnectResult.subs[channel].data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

/// The claims of a subscription token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscriptionClaims {
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    /// Channel info, visible to others as `chan_info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
}

impl ConnectionClaims {
    /// When the connection expires: `expire_at` if set (0 meaning never), else `exp`.
    pub fn expires_at(&self) -> Option<u64> {
        expiry(self.expire_at, self.exp)
    }

    /// Connection info: `info`, else `b64info` if it decodes to JSON.
    pub fn info(&self) -> Option<Box<RawValue>> {
        info_of(&self.info, &self.b64info)
    }
}

impl SubscriptionClaims {
    pub fn expires_at(&self) -> Option<u64> {
        expiry(self.expire_at, self.exp)
    }

    pub fn info(&self) -> Option<Box<RawValue>> {
        info_of(&self.info, &self.b64info)
    }
}

impl SubOptions {
    pub fn info(&self) -> Option<Box<RawValue>> {
        info_of(&self.info, &self.b64info)
    }
}

fn expiry(expire_at: Option<u64>, exp: Option<u64>) -> Option<u64> {
    match expire_at {
        Some(0) => None,
        Some(at) => Some(at),
        None => exp.filter(|e| *e > 0),
    }
}

fn info_of(info: &Option<Box<RawValue>>, b64info: &Option<String>) -> Option<Box<RawValue>> {
    if let Some(info) = info {
        return Some(info.clone());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64info.as_ref()?)
        .ok()?;
    // JSON clients can only carry JSON: binary info is dropped.
    let text = String::from_utf8(bytes).ok()?;
    RawValue::from_string(text).ok()
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Valid but expired: the client should get a new token.
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key it names is not known yet (a key set refresh is under way): try again shortly.
    #[error("token key not available yet")]
    KeyUnavailable,
}

/// Why the verifier could not be built.
#[derive(Debug, thiserror::Error)]
#[error("token key {path}: {reason}")]
pub struct KeyError {
    path: String,
    reason: String,
}

/// Verifies tokens with every key the configuration names.
#[derive(Clone)]
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl TokenVerifier {
    /// A verifier for HS256/384/512 tokens signed with `secret`.
    pub fn hmac(secret: &str) -> Self {
        TokenVerifier {
            hmac: Some(DecodingKey::from_secret(secret.as_bytes())),
            rsa: None,
            ecdsa: None,
            jwks: None,
            audience: None,
            issuer: None,
        }
    }

    /// The verifier the configuration asks for, or `None` if it names no key. A JWKS URL starts
    /// a background refresh task (so call this inside the runtime).
    /// The verifier the configuration asks for, if any; a JWKS URL starts its refresh task on
    /// `tracker`, ending at `shutdown`.
    pub fn from_config(
        config: &Config,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Option<TokenVerifier>, KeyError> {
        if !config.verifies_tokens() {
            return Ok(None);
        }
        let pem = |path: &Path, parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>| {
            let bytes = std::fs::read(path).map_err(|e| KeyError {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            parse(&bytes).map_err(|e| KeyError {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        Ok(Some(TokenVerifier {
            hmac: config
                .token_hmac_secret
                .as_deref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            rsa: config
                .token_rsa_public_key
                .as_deref()
                .map(|p| pem(p, DecodingKey::from_rsa_pem))
                .transpose()?,
            ecdsa: config
                .token_ecdsa_public_key
                .as_deref()
                .map(|p| pem(p, DecodingKey::from_ec_pem))
                .transpose()?,
            jwks: config
                .token_jwks_url
                .clone()
                .map(|url| Jwks::start(url, tracker, shutdown.clone())),
            audience: config.token_audience.clone(),
            issuer: config.token_issuer.clone(),
        }))
    }

    /// Checks a connection token.
    pub fn verify_connection(&self, token: &str) -> Result<ConnectionClaims, TokenError> {
        self.verify(token)
    }

    /// Checks a subscription token.
    pub fn verify_subscription(&self, token: &str) -> Result<SubscriptionClaims, TokenError> {
        self.verify(token)
    }

    /// Checks the signature, algorithm, time claims (`exp`, `nbf`), audience and issuer of
    /// `token`.
    fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let from_set;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA => {
                let static_key = match header.alg {
                    Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_ref(),
                    Algorithm::EdDSA => None,
                    _ => self.rsa.as_ref(),
                };
                match (static_key, &self.jwks) {
                    (Some(key), _) => Some(key),
                    (None, Some(jwks)) => {
                        from_set = jwks.key(header.kid.as_deref(), header.alg)?;
                        Some(&from_set)
                    }
                    (None, None) => None,
                }
            }
            _ => None,
        };
        let key = key.ok_or_else(|| {
            TokenError::Invalid(format!("no key configured for {:?}", header.alg))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_exp = true;
        // RFC 7519 §4.1.5: a token is not accepted before its `nbf`, with the same leeway as `exp`.
        validation.validate_nbf = true;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        jsonwebtoken::decode::<T>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

/// How often the key set is fetched again.
const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Fastest refetch when a token names an unknown key.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

/// A JSON Web Key Set kept fresh by a background task; lookups never wait on the network.
pub struct Jwks {
    keys: RwLock<HashMap<String, (Option<Algorithm>, DecodingKey)>>,
    refresh: Arc<Notify>,
}

impl Jwks {
    /// Starts fetching `url` now and every few minutes, in a task of `tracker` that ends at
    /// `shutdown`.
    pub fn start(url: String, tracker: &TaskTracker, shutdown: CancellationToken) -> Arc<Jwks> {
        let jwks = Arc::new(Jwks {
            keys: RwLock::new(HashMap::new()),
            refresh: Arc::new(Notify::new()),
        });
        let weak = Arc::downgrade(&jwks);
        let refresh = jwks.refresh.clone();
        tracker.spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build();
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the JWKS client");
                    return;
                }
            };
            loop {
                let Some(jwks) = weak.upgrade() else { return };
                match fetch_jwks(&client, &url).await {
                    Ok(keys) => {
                        tracing::debug!(count = keys.len(), "JWKS refreshed");
                        *jwks.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
                    }
                    Err(e) => tracing::warn!(%url, error = %e, "JWKS fetch failed"),
                }
                drop(jwks);
                let wake = async {
                    refresh.notified().await;
                    tokio::time::sleep(JWKS_MIN_REFETCH).await;
                };
                // Wait for the period, or an unknown-key request (rate-limited).
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::timeout(JWKS_REFRESH, wake) => {}
                }
            }
        });
        jwks
    }

    /// The key `kid` (or the only key, when the token names none), if it is known now. An unknown
    /// key asks the background task for a refresh.
    fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, TokenError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let found = match kid {
            Some(kid) => keys.get(kid),
            None if keys.len() == 1 => keys.values().next(),
            None => return Err(TokenError::Invalid("token names no key id".into())),
        };
        match found {
            Some((Some(key_alg), _)) if *key_alg != alg => Err(TokenError::Invalid(
                "algorithm does not match the key".into(),
            )),
            Some((_, key)) => Ok(key.clone()),
            None => {
                self.refresh.notify_one();
                Err(TokenError::KeyUnavailable)
            }
        }
    }
}

async fn fetch_jwks(
    client: &reqwest::Client,
    url: &str,
) -> Result<HashMap<String, (Option<Algorithm>, DecodingKey)>, String> {
    let body = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, (alg, key));
            }
            Err(e) => tracing::warn!(%kid, error = %e, "unusable JWK skipped"),
        }
    }
    Ok(keys)
}

/// Makes a HS256 connection token for `user`, valid for `ttl_secs` seconds (0: never expires).
pub fn make_hmac_token(
    secret: &str,
    user: &str,
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let claims = ConnectionClaims {
        sub: user.to_string(),
        exp: (ttl_secs > 0).then_some(now.saturating_add(ttl_secs)),
        iat: Some(now),
        ..Default::default()
    };
    sign_hmac(secret, &claims)
}

/// Signs any claims as HS256.
pub fn sign_hmac<T: Serialize>(
    secret: &str,
    claims: &T,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_expired_wrong_secret_and_none() {
        let v = TokenVerifier::hmac("s3cret");
        let t = make_hmac_token("s3cret", "42", 60).unwrap();
        assert_eq!(v.verify_connection(&t).unwrap().sub, "42");
        let forever = make_hmac_token("s3cret", "7", 0).unwrap();
        assert_eq!(v.verify_connection(&forever).unwrap().expires_at(), None);
        let wrong = make_hmac_token("other", "42", 60).unwrap();
        assert!(matches!(
            v.verify_connection(&wrong),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            v.verify_connection("not.a.jwt"),
            Err(TokenError::Invalid(_))
        ));
        let claims = ConnectionClaims {
            sub: "1".into(),
            exp: Some(unix_now() - 10),
            ..Default::default()
        };
        let expired = sign_hmac("s3cret", &claims).unwrap();
        assert_eq!(
            v.verify_connection(&expired).unwrap_err(),
            TokenError::Expired
        );
        // alg "none": header {"alg":"none"}, no signature.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64("{\"alg\":\"none\",\"typ\":\"JWT\"}"),
            b64("{\"sub\":\"x\"}")
        );
        assert!(matches!(
            v.verify_connection(&none),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn expire_at_overrides_exp_and_b64info_decodes() {
        let c = ConnectionClaims {
            exp: Some(100),
            expire_at: Some(0),
            b64info: Some(base64::engine::general_purpose::STANDARD.encode("{\"a\":1}")),
            ..Default::default()
        };
        assert_eq!(c.expires_at(), None);
        assert_eq!(c.info().unwrap().get(), "{\"a\":1}");
    }

    #[test]
    fn not_before_is_checked_and_huge_expiry_is_accepted() {
        let v = TokenVerifier::hmac("s3cret");
        let sign = |claims: serde_json::Value| sign_hmac("s3cret", &claims).unwrap();
        let early = sign(serde_json::json!({"sub": "1", "nbf": unix_now() + 3600}));
        assert!(matches!(
            v.verify_connection(&early),
            Err(TokenError::Invalid(_))
        ));
        let started = sign(serde_json::json!({"sub": "1", "nbf": unix_now() - 1}));
        assert_eq!(v.verify_connection(&started).unwrap().sub, "1");
        let far = sign(serde_json::json!({"sub": "1", "exp": u64::MAX}));
        assert_eq!(
            v.verify_connection(&far).unwrap().expires_at(),
            Some(u64::MAX)
        );
        let early_subscription = sign(serde_json::json!({
            "sub": "1", "channel": "$c", "nbf": unix_now() + 3600
        }));
        assert!(matches!(
            v.verify_subscription(&early_subscription),
            Err(TokenError::Invalid(_))
        ));
    }
}

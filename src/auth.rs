//! Connection tokens: JWTs whose claims follow Centrifugo's (`sub` is the user, `exp` the expiry,
//! `info` the connection info shown to others).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The claims Switchboard reads from a connection token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectionClaims {
    /// User id; empty means anonymous.
    #[serde(default)]
    pub sub: String,
    /// Expiry, seconds since the Unix epoch; absent means the connection never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Connection info, visible to other clients as `conn_info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// Why a token was refused. The session maps these to Centrifugo's codes: an expired token gets
/// error 109 (the client fetches a new one), anything else disconnects with 3500.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies connection tokens.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn hmac(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is optional in Centrifugo tokens; when present it is checked below, with no leeway.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.leeway = 0;
        TokenVerifier {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks the signature, algorithm and expiry of `token`.
    pub fn verify(&self, token: &str) -> Result<ConnectionClaims, TokenError> {
        let data = jsonwebtoken::decode::<ConnectionClaims>(token, &self.key, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if let Some(exp) = claims.exp {
            if exp > 0 && exp <= unix_now() {
                return Err(TokenError::Expired);
            }
        }
        Ok(claims)
    }
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
        exp: (ttl_secs > 0).then_some(now + ttl_secs),
        iat: Some(now),
        info: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
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
    fn round_trip_expired_and_wrong_secret() {
        let v = TokenVerifier::hmac("s3cret");
        let t = make_hmac_token("s3cret", "42", 60).unwrap();
        assert_eq!(v.verify(&t).unwrap().sub, "42");
        let forever = make_hmac_token("s3cret", "7", 0).unwrap();
        assert_eq!(v.verify(&forever).unwrap().exp, None);
        let wrong = make_hmac_token("other", "42", 60).unwrap();
        assert!(matches!(v.verify(&wrong), Err(TokenError::Invalid(_))));
        assert!(matches!(v.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
        let claims = ConnectionClaims {
            sub: "1".into(),
            exp: Some(unix_now() - 10),
            ..Default::default()
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(v.verify(&expired).unwrap_err(), TokenError::Expired);
    }
}

//! The built-in decisions: what Switchboard decides on its own, without an application backend.
//!
//! - Connect and refresh: a connection JWT names the user, the expiry, the connection info and
//!   the server-side subscriptions; without a token a client is anonymous, which only a server
//!   that verifies no token (or is told `insecure`) allows.
//! - Subscribe: a subscription JWT grants its channel; without one, private channels (`$` after
//!   the namespace) are closed, user-limited ones (`#user1,user2`) open to the users they list
//!   where the namespace turns them on (closed otherwise), and the rest as the namespace's
//!   permissions say.
//! - Publish: the namespace's permissions. RPC: the `echo` method; any other is "not available".

use async_trait::async_trait;

use super::decisions::{
    Client, ConnectDecision, Connecting, Content, Decisions, PublishDecision, RefreshDecision,
    Refusal, RpcDecision, ServerSubscription, SubRefreshDecision, SubscribeDecision,
};
use crate::auth::{ConnectionClaims, TokenError, TokenVerifier};
use crate::channel::ChannelOptions;
use crate::config::Config;
use crate::protocol::{
    error_code, ConnectRequest, Disconnect, Error, Payload, RefreshRequest, SubRefreshRequest,
    SubscribeRequest,
};

/// Decisions from tokens and configuration.
#[derive(Clone)]
pub struct Rules {
    verifier: Option<TokenVerifier>,
    anonymous_allowed: bool,
}

impl Rules {
    /// Rules verifying tokens with `verifier` (none: every token is refused), admitting anonymous
    /// clients if the configuration allows them.
    pub fn new(config: &Config, verifier: Option<TokenVerifier>) -> Rules {
        Rules {
            verifier,
            anonymous_allowed: config.anonymous_allowed(),
        }
    }
}

fn denied() -> Refusal {
    Error::new(error_code::PERMISSION_DENIED).into()
}

#[async_trait]
impl Decisions for Rules {
    async fn connect(
        &self,
        _client: Connecting<'_>,
        req: &ConnectRequest,
    ) -> Result<ConnectDecision, Refusal> {
        let claims = if req.token.is_empty() {
            if !self.anonymous_allowed {
                return Err(Disconnect::INVALID_TOKEN.into());
            }
            ConnectionClaims::default()
        } else {
            let Some(verifier) = &self.verifier else {
                tracing::debug!("token given but no token key configured");
                return Err(Disconnect::INVALID_TOKEN.into());
            };
            match verifier.verify_connection(&req.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => {
                    return Err(Error::new(error_code::TOKEN_EXPIRED).into())
                }
                Err(TokenError::KeyUnavailable) => {
                    return Err(Error::new(error_code::INTERNAL).into())
                }
                Err(TokenError::Invalid(reason)) => {
                    tracing::debug!(%reason, "invalid connection token");
                    return Err(Disconnect::INVALID_TOKEN.into());
                }
            }
        };
        // The token's `channels` first, then its `subs` (which carry info and data).
        let mut subscriptions: Vec<ServerSubscription> = claims
            .channels
            .iter()
            .map(|channel| ServerSubscription {
                channel: channel.clone(),
                ..Default::default()
            })
            .collect();
        for (channel, options) in &claims.subs {
            subscriptions.push(ServerSubscription {
                channel: channel.clone(),
                chan_info: options.info().map(Payload::from),
                data: options.data.clone().map(Payload::from),
            });
        }
        Ok(ConnectDecision {
            expires_at: claims.expires_at(),
            info: claims.info().map(Payload::from),
            meta: claims.meta.map(Payload::from),
            user: claims.sub,
            data: None,
            subscriptions,
            refreshed_by_server: false,
        })
    }

    async fn refresh(
        &self,
        client: Client<'_>,
        req: &RefreshRequest,
    ) -> Result<RefreshDecision, Refusal> {
        let Some(verifier) = &self.verifier else {
            return Err(Error::new(error_code::NOT_AVAILABLE).into());
        };
        let claims = match verifier.verify_connection(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(Disconnect::EXPIRED.into()),
            Err(TokenError::KeyUnavailable) => return Err(Error::new(error_code::INTERNAL).into()),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::INVALID_TOKEN.into()),
        };
        if claims.sub != client.user {
            return Err(Disconnect::INVALID_TOKEN.into());
        }
        Ok(RefreshDecision {
            expires_at: claims.expires_at(),
            info: None,
        })
    }

    async fn subscribe(
        &self,
        client: Client<'_>,
        req: &SubscribeRequest,
        options: &ChannelOptions,
    ) -> Result<SubscribeDecision, Refusal> {
        let channel = &req.channel;
        if !req.token.is_empty() {
            let Some(verifier) = &self.verifier else {
                return Err(denied());
            };
            let claims = match verifier.verify_subscription(&req.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => {
                    return Err(Error::new(error_code::TOKEN_EXPIRED).into())
                }
                Err(TokenError::KeyUnavailable) => {
                    return Err(Error::new(error_code::INTERNAL).into())
                }
                Err(TokenError::Invalid(reason)) => {
                    tracing::debug!(%reason, "invalid subscription token");
                    return Err(denied());
                }
            };
            // A valid token for another channel is not a mistake a client makes.
            if claims.channel != *channel {
                return Err(Disconnect::INVALID_TOKEN.into());
            }
            if claims.sub != client.user {
                return Err(denied());
            }
            return Ok(SubscribeDecision {
                chan_info: claims.info().map(Payload::from),
                expires_at: claims.expires_at(),
                ..Default::default()
            });
        }
        let name = channel.split_once(':').map_or(channel.as_str(), |(_, n)| n);
        if name.starts_with('$') {
            return Err(denied());
        }
        if let Some((_, users)) = channel.rsplit_once('#') {
            // Opt-in per namespace, as in Centrifugo: an operator who closed a namespace does not
            // find `name#user` channels open in it.
            if !options.allow_user_limited_channels
                || !users.split(',').any(|u| !u.is_empty() && u == client.user)
            {
                return Err(denied());
            }
            return Ok(SubscribeDecision::default());
        }
        let anonymous = client.user.is_empty();
        if !options.allow_subscribe_for_client
            || (anonymous && !options.allow_subscribe_for_anonymous)
        {
            return Err(denied());
        }
        Ok(SubscribeDecision::default())
    }

    async fn sub_refresh(
        &self,
        client: Client<'_>,
        req: &SubRefreshRequest,
    ) -> Result<SubRefreshDecision, Refusal> {
        let Some(verifier) = &self.verifier else {
            return Err(Error::new(error_code::NOT_AVAILABLE).into());
        };
        let claims = match verifier.verify_subscription(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(Error::new(error_code::EXPIRED).into()),
            Err(TokenError::KeyUnavailable) => return Err(Error::new(error_code::INTERNAL).into()),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::INVALID_TOKEN.into()),
        };
        if claims.channel != req.channel || claims.sub != client.user {
            return Err(Disconnect::INVALID_TOKEN.into());
        }
        Ok(SubRefreshDecision {
            expires_at: claims.expires_at(),
        })
    }

    async fn publish(
        &self,
        client: Client<'_>,
        _channel: &str,
        data: Option<Content>,
        options: &ChannelOptions,
        subscribed: bool,
    ) -> Result<PublishDecision, Refusal> {
        let permitted = options.allow_publish_for_client
            || (options.allow_publish_for_subscriber && subscribed);
        if !permitted || (client.user.is_empty() && !options.allow_publish_for_anonymous) {
            return Err(denied());
        }
        let data = data.ok_or_else(|| Error::new(error_code::BAD_REQUEST))?;
        Ok(PublishDecision {
            data,
            skip_history: false,
        })
    }

    async fn rpc(
        &self,
        _client: Client<'_>,
        method: &str,
        data: Option<Content>,
    ) -> Result<RpcDecision, Refusal> {
        // `echo` is built in; any other method has no handler here. Centrifugo answers "not
        // available" (108) when no RPC proxy is configured, and the SDKs' suites expect it.
        match method {
            "echo" => Ok(RpcDecision { data }),
            _ => Err(Error::new(error_code::NOT_AVAILABLE).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sign_hmac;
    use crate::hooks::decisions::{ClientHeaders, Link};
    use serde_json::json;

    const SECRET: &str = "rules-test-secret";

    fn rules() -> Rules {
        let config = Config {
            token_hmac_secret: Some(SECRET.into()),
            ..Config::default()
        };
        Rules::new(&config, Some(TokenVerifier::hmac(SECRET)))
    }

    fn token(claims: serde_json::Value) -> String {
        sign_hmac(SECRET, &claims).unwrap()
    }

    fn ann() -> Client<'static> {
        Client {
            client: "c1",
            link: Link::WEBSOCKET_JSON,
            user: "ann",
            conn_info: None,
            meta: None,
            headers: ClientHeaders::none(),
        }
    }

    fn connecting() -> Connecting<'static> {
        Connecting {
            client: "c1",
            link: Link::WEBSOCKET_JSON,
            headers: ClientHeaders::none(),
        }
    }

    /// Options that grant nothing.
    fn closed() -> ChannelOptions {
        ChannelOptions {
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            history: None,
            force_recovery: false,
            allow_subscribe_for_client: false,
            allow_subscribe_for_anonymous: false,
            allow_publish_for_client: false,
            allow_publish_for_subscriber: false,
            allow_publish_for_anonymous: false,
            allow_presence_for_client: false,
            allow_presence_for_subscriber: false,
            allow_history_for_client: false,
            allow_history_for_subscriber: false,
            allow_user_limited_channels: false,
            map: None,
            delta_fossil: false,
        }
    }

    #[tokio::test]
    async fn a_connection_token_names_user_expiry_and_server_subscriptions() {
        let req = ConnectRequest {
            token: token(json!({
                "sub": "ann", "exp": 4_000_000_000u64, "info": {"n": 1},
                "channels": ["a"], "subs": {"b": {"data": {"d": 2}}},
            })),
            ..Default::default()
        };
        let decision = rules().connect(connecting(), &req).await.unwrap();
        assert_eq!(decision.user, "ann");
        assert_eq!(decision.expires_at, Some(4_000_000_000));
        assert_eq!(decision.info.unwrap().get(), r#"{"n":1}"#);
        let channels: Vec<_> = decision.subscriptions.iter().map(|s| &*s.channel).collect();
        assert_eq!(channels, ["a", "b"]);
        assert_eq!(
            decision.subscriptions[1].data.as_ref().unwrap().get(),
            r#"{"d":2}"#
        );
    }

    #[tokio::test]
    async fn anonymous_and_forged_connections_are_disconnected() {
        let anonymous = ConnectRequest::default();
        let refusal = rules().connect(connecting(), &anonymous).await.unwrap_err();
        assert_eq!(refusal, Refusal::Disconnect(Disconnect::INVALID_TOKEN));
        let forged = ConnectRequest {
            token: sign_hmac("another secret", &json!({"sub": "ann"})).unwrap(),
            ..Default::default()
        };
        let refusal = rules().connect(connecting(), &forged).await.unwrap_err();
        assert_eq!(refusal, Refusal::Disconnect(Disconnect::INVALID_TOKEN));
    }

    #[tokio::test]
    async fn refresh_for_another_user_disconnects() {
        let req = RefreshRequest {
            token: token(json!({"sub": "bob"})),
        };
        let refusal = rules().refresh(ann(), &req).await.unwrap_err();
        assert_eq!(refusal, Refusal::Disconnect(Disconnect::INVALID_TOKEN));
    }

    #[tokio::test]
    async fn user_limited_channels_admit_the_users_they_list() {
        let subscribe = |channel: &str| SubscribeRequest {
            channel: channel.into(),
            ..Default::default()
        };
        let rules = rules();
        // Off by default: even a listed user is refused.
        let refusal = rules
            .subscribe(ann(), &subscribe("chat#ann,bob"), &closed())
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Error(Error::new(error_code::PERMISSION_DENIED))
        );
        let options = ChannelOptions {
            allow_user_limited_channels: true,
            ..closed()
        };
        assert!(rules
            .subscribe(ann(), &subscribe("chat#ann,bob"), &options)
            .await
            .is_ok());
        let refusal = rules
            .subscribe(ann(), &subscribe("chat#bob"), &options)
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Error(Error::new(error_code::PERMISSION_DENIED))
        );
        let refusal = rules
            .subscribe(ann(), &subscribe("$private"), &options)
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Error(Error::new(error_code::PERMISSION_DENIED))
        );
    }

    #[tokio::test]
    async fn publish_needs_permission_then_data() {
        let rules = rules();
        let mut options = closed();
        let publish = |data: Option<&str>| {
            data.map(|d| {
                Content::json(Payload::from(
                    serde_json::value::RawValue::from_string(d.into()).unwrap(),
                ))
            })
        };
        let refusal = rules
            .publish(ann(), "a", publish(Some("1")), &options, true)
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Error(Error::new(error_code::PERMISSION_DENIED))
        );
        options.allow_publish_for_subscriber = true;
        let refusal = rules
            .publish(ann(), "a", publish(Some("1")), &options, false)
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Error(Error::new(error_code::PERMISSION_DENIED))
        );
        let decision = rules
            .publish(ann(), "a", publish(Some("1")), &options, true)
            .await
            .unwrap();
        assert_eq!(decision.data.payload.get(), "1");
        let refusal = rules
            .publish(ann(), "a", publish(None), &options, true)
            .await
            .unwrap_err();
        assert_eq!(refusal, Refusal::Error(Error::new(error_code::BAD_REQUEST)));
    }

    #[tokio::test]
    async fn rpc_echoes_and_answers_not_available_for_other_methods() {
        assert!(rules().rpc(ann(), "echo", None).await.is_ok());
        let refusal = rules().rpc(ann(), "other", None).await.unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Error(Error::new(error_code::NOT_AVAILABLE))
        );
    }
}

//! What the node asks of a session (server-side subscribe and unsubscribe from the server API or
//! the broker), and the expiry of the connection and its subscriptions.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Identity, Outcome, Session};
use crate::auth::unix_now;
use crate::hooks::Refusal;
use crate::hub::Control;
use crate::metrics::Metrics;
use crate::protocol::{
    unsubscribe_code, Disconnect, Push, PushBody, RefreshRequest, Reply, SubscribeRequest,
};

/// How long a connection the server refreshes itself waits before asking again when a renewal
/// could not be decided.
const SERVER_REFRESH_RETRY: Duration = Duration::from_secs(10);

impl Session {
    /// Acts on a request from the node (server API actions on this client).
    pub async fn handle_control(&mut self, control: Control) {
        let Some(who) = self.identity.clone() else {
            return;
        };
        match control {
            Control::Subscribe {
                channel,
                chan_info,
                data,
            } => self.server_subscribe(&who, channel, chan_info, data).await,
            Control::Unsubscribe {
                channel,
                code,
                reason,
            } => self.server_unsubscribe(&channel, code, reason).await,
        }
    }

    /// A subscription made by the server API: no permission check, a `subscribe` push.
    async fn server_subscribe(
        &mut self,
        who: &Identity,
        channel: String,
        chan_info: Option<crate::protocol::Payload>,
        data: Option<crate::protocol::Payload>,
    ) {
        if self.subscriptions.contains_key(&channel)
            || self.node.check_channel_name(&channel).is_err()
        {
            return;
        }
        let Ok(options) = self.node.channel_options(&channel) else {
            return;
        };
        let req = SubscribeRequest {
            channel: channel.clone(),
            ..Default::default()
        };
        match self.join(&req, &options).await {
            Ok((mut result, after)) => {
                result.data = data;
                let push = Reply::push(Push {
                    channel: channel.clone(),
                    body: PushBody::Subscribe(result),
                })
                .encode();
                Metrics::inc(&self.node.metrics().messages_sent);
                self.node
                    .hub()
                    .activate(&channel, self.conn, Some(Bytes::from(push)), after);
                self.register(who, channel, chan_info, &options, None).await;
            }
            Err(error) => {
                tracing::warn!(
                    channel,
                    code = error.code,
                    "server-side subscription failed"
                )
            }
        }
    }

    /// Ends a subscription from the server side and tells the client with an `unsubscribe` push.
    async fn server_unsubscribe(&mut self, channel: &str, code: u32, reason: &str) {
        if self.subscriptions.contains_key(channel) {
            self.unsubscribe(channel).await;
            let push = Reply::push(Push {
                channel: channel.to_string(),
                body: PushBody::Unsubscribe {
                    code,
                    reason: reason.into(),
                },
            });
            self.send(push.encode());
        }
    }

    /// When the next expiry (connection or subscription, plus grace; a connection the server
    /// renews itself, without grace) needs checking.
    pub fn expiry_deadline(&self) -> Option<Instant> {
        let grace = self.node.config().expired_grace;
        let connection = self.expires_at.map(|at| {
            if self.refreshed_by_server {
                at
            } else {
                at + grace
            }
        });
        let earliest = self
            .subscriptions
            .values()
            .filter_map(|s| s.expires_at.map(|at| at + grace))
            .chain(connection)
            .min()?;
        let left = earliest.saturating_sub(unix_now());
        Some(Instant::now() + Duration::from_secs(left))
    }

    /// Acts on expiries that have passed (plus grace): the connection's (disconnect 3005, or a
    /// renewal when the server refreshes it) and subscriptions' (unsubscribe push 2501, so the
    /// client resubscribes with a fresh token).
    pub async fn check_expiry(&mut self) -> Outcome {
        let now = unix_now();
        let grace = self.node.config().expired_grace;
        if self.refreshed_by_server && self.expires_at.is_some_and(|at| at <= now) {
            if let Err(reason) = self.refresh_by_server().await {
                self.closing(&reason);
                return Err(reason);
            }
        }
        if self.expires_at.is_some_and(|at| at + grace <= now) {
            self.closing(&Disconnect::EXPIRED);
            return Err(Disconnect::EXPIRED);
        }
        let expired: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| at + grace <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expired {
            self.server_unsubscribe(&channel, unsubscribe_code::EXPIRED, "subscription expired")
                .await;
        }
        Ok(())
    }

    /// Renews, once it expired, a connection the server refreshes itself: the decisions say
    /// until when (or that it is over). When they cannot answer (the backend is down or slow),
    /// the connection stays and is asked again a little later, so an outage of the backend does
    /// not end live connections.
    async fn refresh_by_server(&mut self) -> Outcome {
        let Some(who) = self.identity.clone() else {
            return Ok(());
        };
        let req = RefreshRequest {
            token: String::new(),
        };
        match self.node.decisions().refresh(who.as_client(), &req).await {
            // A renewal into the past would only be asked again at once.
            Ok(decision) if decision.expires_at.is_some_and(|at| at <= unix_now()) => {
                Err(Disconnect::EXPIRED)
            }
            Ok(decision) => {
                self.expires_at = decision.expires_at;
                if let Some(info) = decision.info {
                    self.renew_info(info);
                }
                Ok(())
            }
            Err(Refusal::Disconnect(reason)) => Err(reason),
            Err(Refusal::Error(error)) => {
                tracing::warn!(
                    client = %who.client,
                    code = error.code,
                    "connection refresh failed; retrying later"
                );
                self.expires_at = Some(unix_now() + SERVER_REFRESH_RETRY.as_secs());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{node, secured, token, TestClient};
    use crate::auth::unix_now;
    use crate::hub::Control;

    #[tokio::test]
    async fn an_expired_subscription_is_ended_with_unsubscribe_2501() {
        let node = node(|config| {
            secured(config);
            config.expired_grace = 0;
        });
        let mut client = TestClient::connected_as(&node, "ann").await;
        // Valid token, subscription already over: `expire_at` bounds the subscription only.
        let grant = token(json!({
            "sub": "ann", "channel": "$mine", "exp": unix_now() + 3600, "expire_at": unix_now() - 1,
        }));
        let reply = client
            .call(2, "subscribe", json!({"channel": "$mine", "token": grant}))
            .await
            .unwrap();
        assert_eq!(reply["subscribe"]["expires"], true);
        assert!(client.session.expiry_deadline().is_some());
        client.session.check_expiry().await.unwrap();
        let push = client.messages().pop().unwrap();
        assert_eq!(push["push"]["channel"], "$mine");
        assert_eq!(push["push"]["unsubscribe"]["code"], 2501);
        assert_eq!(node.hub().num_subscribers("$mine"), 0);
        assert!(client.session.expiry_deadline().is_none());
    }

    #[tokio::test]
    async fn an_expired_connection_is_disconnected_with_3005() {
        let node = node(|config| {
            secured(config);
            config.expired_grace = 0;
        });
        let mut client = TestClient::new(&node);
        let connection =
            token(json!({"sub": "ann", "exp": unix_now() + 3600, "expire_at": unix_now() - 1}));
        client
            .call(1, "connect", json!({"token": connection}))
            .await
            .unwrap();
        assert_eq!(client.session.check_expiry().await.unwrap_err().code, 3005);
    }

    #[tokio::test]
    async fn the_server_subscribes_and_unsubscribes_a_client() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        client
            .session
            .handle_control(Control::Subscribe {
                channel: "news".into(),
                chan_info: None,
                data: None,
            })
            .await;
        let push = client.messages().pop().unwrap();
        assert!(push["push"]["subscribe"].is_object(), "{push}");
        assert_eq!(node.hub().num_subscribers("news"), 1);
        client
            .session
            .handle_control(Control::Unsubscribe {
                channel: "news".into(),
                code: crate::protocol::unsubscribe_code::SERVER,
                reason: "server unsubscribe",
            })
            .await;
        let push = client.messages().pop().unwrap();
        assert_eq!(push["push"]["unsubscribe"]["code"], 2000);
        assert_eq!(node.hub().num_subscribers("news"), 0);
    }
}

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
    error_code, unsubscribe_code, Disconnect, Push, PushBody, RefreshRequest, Reply,
    SubRefreshRequest, SubscribeRequest,
};

/// How long a connection the server refreshes itself waits before asking again when a renewal
/// could not be decided.
const SERVER_REFRESH_RETRY: Duration = Duration::from_secs(10);

/// The longest a connection sleeps before looking at expiries again; a far expiry (a token may
/// claim 2^64 − 1) is reached by waking up this often.
const MAX_EXPIRY_WAIT: Duration = Duration::from_secs(24 * 3600);

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
            Control::Refresh { expire_at, info } => self.server_refresh(expire_at, info),
        }
    }

    /// A refresh from the server API: the new expiry (the server decided it: no grace, no token
    /// to fetch), the new info; a unidirectional client is told in a `refresh` push.
    fn server_refresh(&mut self, expire_at: Option<u64>, info: Option<crate::protocol::Payload>) {
        self.expires_at = expire_at;
        if let Some(info) = info {
            self.renew_info(info);
        }
        if self.is_unidirectional() {
            let push = Reply::push(Push {
                channel: String::new(),
                body: PushBody::Refresh {
                    expires: expire_at.is_some(),
                    ttl: expire_at.map_or(0, super::ttl_from),
                },
            });
            self.send(push.encode_as(self.encoding()));
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
                .encode_as(self.encoding());
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
            self.send(push.encode_as(self.encoding()));
        }
    }

    /// When the next expiry (connection or subscription, plus grace; a connection the server
    /// renews itself, without grace) needs checking.
    pub fn expiry_deadline(&self) -> Option<Instant> {
        let grace = self.node.config().expired_grace;
        // Saturating all the way: a far expiry (a token may claim 2^64 - 1) must not overflow
        // the sum or the `Instant`.
        let due = |at: u64, by_server: bool| {
            if by_server {
                at
            } else {
                at.saturating_add(grace)
            }
        };
        let connection = self.expires_at.map(|at| due(at, self.refreshed_by_server));
        let earliest = self
            .subscriptions
            .values()
            .filter_map(|s| s.expires_at.map(|at| due(at, s.refreshed_by_server)))
            .chain(connection)
            .min()?;
        let left = earliest
            .saturating_sub(unix_now())
            .min(MAX_EXPIRY_WAIT.as_secs());
        let now = Instant::now();
        Some(
            now.checked_add(Duration::from_secs(left))
                .unwrap_or(now + MAX_EXPIRY_WAIT),
        )
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
        if self
            .expires_at
            .is_some_and(|at| at.saturating_add(grace) <= now)
        {
            self.closing(&Disconnect::EXPIRED);
            return Err(Disconnect::EXPIRED);
        }
        let due: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.refreshed_by_server && s.expires_at.is_some_and(|at| at <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in due {
            self.renew_subscription(channel).await?;
        }
        let expired: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| {
                s.expires_at
                    .is_some_and(|at| at.saturating_add(grace) <= now)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expired {
            self.server_unsubscribe(&channel, unsubscribe_code::EXPIRED, "subscription expired")
                .await;
        }
        Ok(())
    }

    /// Renews, once it expired, a subscription the server refreshes itself, as
    /// [`Session::refresh_by_server`] does a connection; one the decisions end (error 110
    /// "expired", or a renewal into the past) is unsubscribed with 2501.
    async fn renew_subscription(&mut self, channel: String) -> Outcome {
        let Some(who) = self.identity.clone() else {
            return Ok(());
        };
        let req = SubRefreshRequest {
            channel,
            token: String::new(),
        };
        let decision = self
            .node
            .decisions()
            .sub_refresh(who.as_client(self.link()), &req)
            .await;
        let channel = req.channel;
        let expires_at = match decision {
            Ok(decision) if decision.expires_at.is_none_or(|at| at > unix_now()) => {
                decision.expires_at
            }
            Err(Refusal::Error(error)) if error.code != error_code::EXPIRED => {
                tracing::warn!(
                    client = %who.client,
                    channel,
                    code = error.code,
                    "subscription refresh failed; retrying later"
                );
                Some(unix_now() + SERVER_REFRESH_RETRY.as_secs())
            }
            Err(Refusal::Disconnect(reason)) => {
                self.closing(&reason);
                return Err(reason);
            }
            // Over: expired, or renewed into the past.
            Ok(_) | Err(Refusal::Error(_)) => {
                self.server_unsubscribe(
                    &channel,
                    unsubscribe_code::EXPIRED,
                    "subscription expired",
                )
                .await;
                return Ok(());
            }
        };
        if let Some(subscription) = self.subscriptions.get_mut(&channel) {
            subscription.expires_at = expires_at;
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
        match self
            .node
            .decisions()
            .refresh(who.as_client(self.link()), &req)
            .await
        {
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
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use serde_json::json;

    use super::super::testing::{node, node_with, secured, token, TestClient};
    use crate::auth::unix_now;
    use crate::channel::ChannelOptions;
    use crate::config::Config;
    use crate::hooks::decisions::{
        Client, ConnectDecision, Connecting, Content, Decisions, PublishDecision, RefreshDecision,
        RpcDecision, SubRefreshDecision, SubscribeDecision,
    };
    use crate::hooks::rules::Rules;
    use crate::hooks::Refusal;
    use crate::hub::Control;
    use crate::node::NodeHooks;
    use crate::protocol::{
        error_code, ConnectRequest, Disconnect, Error, RefreshRequest, SubRefreshRequest,
        SubscribeRequest,
    };

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

    /// Decisions that let every client in until a second ago, renewed by the server, and
    /// answer renewals from a script.
    struct RenewedByServer {
        rules: Rules,
        renewals: Mutex<VecDeque<Result<RefreshDecision, Refusal>>>,
        asked: AtomicUsize,
    }

    #[async_trait]
    impl Decisions for RenewedByServer {
        async fn connect(
            &self,
            client: Connecting<'_>,
            req: &ConnectRequest,
        ) -> Result<ConnectDecision, Refusal> {
            let decision = self.rules.connect(client, req).await?;
            Ok(ConnectDecision {
                expires_at: Some(unix_now() - 1),
                refreshed_by_server: true,
                ..decision
            })
        }
        async fn refresh(
            &self,
            _client: Client<'_>,
            req: &RefreshRequest,
        ) -> Result<RefreshDecision, Refusal> {
            assert!(req.token.is_empty(), "the server asks without a token");
            self.asked.fetch_add(1, Ordering::SeqCst);
            let next = self.renewals.lock().unwrap().pop_front();
            next.expect("a scripted renewal")
        }
        async fn subscribe(
            &self,
            client: Client<'_>,
            req: &SubscribeRequest,
            options: &ChannelOptions,
        ) -> Result<SubscribeDecision, Refusal> {
            self.rules.subscribe(client, req, options).await
        }
        async fn sub_refresh(
            &self,
            client: Client<'_>,
            req: &SubRefreshRequest,
        ) -> Result<SubRefreshDecision, Refusal> {
            self.rules.sub_refresh(client, req).await
        }
        async fn publish(
            &self,
            client: Client<'_>,
            channel: &str,
            data: Option<Content>,
            options: &ChannelOptions,
            subscribed: bool,
        ) -> Result<PublishDecision, Refusal> {
            self.rules
                .publish(client, channel, data, options, subscribed)
                .await
        }
        async fn rpc(
            &self,
            client: Client<'_>,
            method: &str,
            data: Option<Content>,
        ) -> Result<RpcDecision, Refusal> {
            self.rules.rpc(client, method, data).await
        }
    }

    fn renewed_by_server(
        renewals: Vec<Result<RefreshDecision, Refusal>>,
    ) -> (crate::node::Node, Arc<RenewedByServer>) {
        let decisions = Arc::new(RenewedByServer {
            rules: Rules::new(&Config::default(), None),
            renewals: Mutex::new(renewals.into()),
            asked: AtomicUsize::new(0),
        });
        let hooks = NodeHooks {
            decisions: Some(decisions.clone()),
            ..Default::default()
        };
        (node_with(|c| c.expired_grace = 0, hooks), decisions)
    }

    #[tokio::test]
    async fn a_connection_the_server_renews_is_not_the_clients_to_refresh() {
        let renewed = RefreshDecision {
            expires_at: Some(unix_now() + 3600),
            info: None,
        };
        let (node, decisions) = renewed_by_server(vec![Ok(renewed)]);
        let mut client = TestClient::new(&node);
        let reply = client.call(1, "connect", json!({})).await.unwrap();
        assert!(reply["connect"].get("expires").is_none(), "{reply}");
        client.session.check_expiry().await.unwrap();
        assert_eq!(decisions.asked.load(Ordering::SeqCst), 1);
        // Renewed for an hour: nothing to do now.
        client.session.check_expiry().await.unwrap();
        assert_eq!(decisions.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_renewal_that_cannot_be_decided_keeps_the_connection_and_one_refused_ends_it() {
        let (node, decisions) = renewed_by_server(vec![
            Err(Error::new(error_code::INTERNAL).into()),
            Err(Disconnect::EXPIRED.into()),
        ]);
        let mut client = TestClient::new(&node);
        client.call(1, "connect", json!({})).await.unwrap();
        client.session.check_expiry().await.unwrap();
        let retry = client.session.expiry_deadline().unwrap();
        assert!(retry > tokio::time::Instant::now() + Duration::from_secs(5));
        // When the retry comes, the backend says it is over.
        client.session.expires_at = Some(unix_now() - 1);
        let ended = client.session.check_expiry().await.unwrap_err();
        assert_eq!(ended, Disconnect::EXPIRED);
        assert_eq!(decisions.asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_farthest_expiry_neither_overflows_nor_expires() {
        let node = node(secured);
        let mut client = TestClient::new(&node);
        let connection = token(json!({"sub": "ann", "exp": u64::MAX}));
        let reply = client
            .call(1, "connect", json!({"token": connection}))
            .await
            .unwrap();
        assert_eq!(reply["connect"]["expires"], true);
        assert_eq!(reply["connect"]["ttl"], u32::MAX);
        let deadline = client.session.expiry_deadline().expect("a deadline");
        assert!(deadline <= tokio::time::Instant::now() + super::MAX_EXPIRY_WAIT);
        client.session.check_expiry().await.unwrap();
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

//! Subscriptions: the client's `subscribe` (checks, join, recovery position, registration),
//! `sub_refresh`, `unsubscribe`, and releasing a subscription however it ends.

use bytes::Bytes;

use super::{ttl_from, Answer, Identity, Session, Subscription};
use crate::channel::ChannelOptions;
use crate::engine::history::HistoryFilter;
use crate::hooks::decisions::SubscribeDecision;
use crate::hooks::events::Event;
use crate::hooks::Refusal;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol::{
    error_code, flag, ClientInfo, Empty, Encoding, Error, Payload, Reply, ReplyResult,
    StreamPosition, SubRefreshRequest, SubRefreshResult, SubscribeRequest, SubscribeResult,
};

impl Session {
    /// `subscribe` from the client: checks, asks the node's decisions, then subscribes. The reply
    /// is queued by the hub before any publication that follows it, so this answers nothing
    /// itself on success.
    pub(super) async fn client_subscribe(
        &mut self,
        id: u32,
        who: &Identity,
        req: SubscribeRequest,
    ) -> Answer {
        let (options, decision) = self.check_subscribe(who, &req).await?;
        if options.map.is_some() || req.kind != 0 {
            return self.map_subscribe(id, who, req, options, decision).await;
        }
        self.subscribe_now(id, who, req, options, decision, |_| {})
            .await
    }

    /// Subscribes once the checks passed: joins (with recovery), queues the reply (`adjust`ed
    /// first) ahead of any publication, and registers the subscription.
    pub(super) async fn subscribe_now(
        &mut self,
        id: u32,
        who: &Identity,
        req: SubscribeRequest,
        options: ChannelOptions,
        decision: SubscribeDecision,
        adjust: impl FnOnce(&mut SubscribeResult),
    ) -> Answer {
        let (mut result, after) = self.join(&req, &options).await?;
        adjust(&mut result);
        let expires_at = decision.expires_at;
        // A subscription the server renews itself is not the client's to refresh.
        let client_expiry = expires_at.filter(|_| !decision.refreshed_by_server);
        result.expires = client_expiry.is_some();
        result.ttl = client_expiry.map_or(0, ttl_from);
        result.data = decision.data;
        let reply = Reply::ok(id, ReplyResult::Subscribe(result)).encode_as(self.encoding());
        Metrics::inc(&self.node.metrics().messages_sent);
        self.node
            .hub()
            .activate(&req.channel, self.conn, Some(Bytes::from(reply)), after);
        let renewed_by_server = decision.refreshed_by_server.then(|| req.channel.clone());
        self.register(who, req.channel, decision.chan_info, &options, expires_at)
            .await;
        if let Some(channel) = renewed_by_server {
            if let Some(subscription) = self.subscriptions.get_mut(&channel) {
                subscription.refreshed_by_server = true;
            }
        }
        Ok(None)
    }

    /// What this node decides alone (a valid name, not subscribed yet, under the channel limit, a
    /// known namespace), then whether the node's decisions grant the subscription; the options
    /// returned are the channel's with the decision's overrides.
    async fn check_subscribe(
        &self,
        who: &Identity,
        req: &SubscribeRequest,
    ) -> Result<(ChannelOptions, SubscribeDecision), Refusal> {
        let channel = &req.channel;
        self.node.check_channel_name(channel)?;
        if self.subscriptions.contains_key(channel) {
            return Err(Error::new(error_code::ALREADY_SUBSCRIBED).into());
        }
        if self.subscriptions.len() >= self.node.config().client_channel_limit {
            return Err(Error::new(error_code::LIMIT_EXCEEDED).into());
        }
        let options = self.node.channel_options(channel)?;
        let decision = self
            .node
            .decisions()
            .subscribe(who.as_client(self.link()), req, &options)
            .await?;
        Ok((decision.overrides.apply(options), decision))
    }

    /// `sub_refresh`: the node's decisions extend a subscription's life (the built-in rules want
    /// a new subscription token).
    pub(super) async fn sub_refresh(&mut self, who: &Identity, req: SubRefreshRequest) -> Answer {
        let decision = self
            .node
            .decisions()
            .sub_refresh(who.as_client(self.link()), &req)
            .await?;
        let Some(subscription) = self.subscriptions.get_mut(&req.channel) else {
            return Err(Error::new(error_code::PERMISSION_DENIED).into());
        };
        subscription.expires_at = decision.expires_at;
        Ok(Some(ReplyResult::SubRefresh(SubRefreshResult {
            expires: subscription.expires_at.is_some(),
            ttl: subscription.expires_at.map_or(0, ttl_from),
        })))
    }

    /// Adds this client to the channel in the hub with deliveries held, and computes the
    /// subscribe result (position, recovery). The caller queues its reply and then calls
    /// [`Hub::activate`](crate::hub::Hub::activate) with the returned offset; on error the hub
    /// entry is already removed.
    pub(super) async fn join(
        &mut self,
        req: &SubscribeRequest,
        options: &ChannelOptions,
    ) -> Result<(SubscribeResult, u64), Error> {
        let channel = &req.channel;
        // Deltas only where the namespace allows the kind asked for (Centrifugo: 107).
        let delta = match req.delta.as_str() {
            "" => false,
            // A map would need a chain of deltas per key: not negotiated there (the reply says
            // so, and the SDK takes whole payloads).
            _ if options.map.is_some() => false,
            "fossil" if options.delta_fossil => true,
            _ => return Err(Error::new(error_code::BAD_REQUEST)),
        };
        // As in Centrifugo: join/leave pushes only to subscribers that ask, unless forced.
        let wants_join_leave =
            options.join_leave && (req.join_leave || options.force_push_join_leave);
        self.node
            .join_channel_with(channel, self.conn, &self.queue, wants_join_leave, delta)
            .await;
        let result = if options.history.is_some()
            && (options.force_recovery || req.recover || req.recoverable || req.positioned)
        {
            self.position_and_recovery(channel, req).await
        } else {
            Ok(SubscribeResult::default())
        };
        match result {
            Ok(mut result) => {
                let after = result
                    .publications
                    .last()
                    .map_or(result.offset, |p| p.offset.max(result.offset));
                if delta {
                    result.delta = true;
                }
                if delta && self.encoding() == Encoding::Json {
                    // Over JSON, recovered publications come whole, as strings, like every
                    // publication of a delta subscription (Protobuf carries bytes as they are).
                    for publication in &mut result.publications {
                        *publication =
                            std::sync::Arc::new(crate::delta::with_string_data(publication));
                    }
                }
                Ok((result, after))
            }
            Err(error) => {
                self.node.leave_channel(channel, self.conn).await;
                Err(error)
            }
        }
    }

    /// Records a subscription once the client has its reply: presence, join notice.
    pub(super) async fn register(
        &mut self,
        who: &Identity,
        channel: String,
        chan_info: Option<Payload>,
        options: &ChannelOptions,
        expires_at: Option<u64>,
    ) {
        let info = ClientInfo {
            user: who.user.to_string(),
            client: who.client.to_string(),
            conn_info: who.conn_info.clone(),
            chan_info,
        };
        self.subscriptions.insert(
            channel.clone(),
            Subscription {
                info: info.clone(),
                presence: options.presence,
                join_leave: options.join_leave,
                expires_at,
                refreshed_by_server: false,
                remove_map_key: options.map.is_some_and(|m| m.remove_client_on_unsubscribe),
                map_presence: self.node.has_map_presence(&channel),
            },
        );
        if self.node.has_map_presence(&channel) {
            self.node.map_presence_join(&channel, &info).await;
        }
        if options.presence {
            self.node.add_presence(&channel, info.clone()).await;
        }
        if options.join_leave {
            self.node.publish_join(&channel, &info).await;
        }
        self.node.emit(Event::Subscribed {
            client: &who.client,
            user: &who.user,
            channel: &channel,
        });
    }

    /// The subscribe result's stream fields, recovering missed publications if asked.
    async fn position_and_recovery(
        &self,
        channel: &str,
        req: &SubscribeRequest,
    ) -> Result<SubscribeResult, Error> {
        let max = self.node.config().recovery_max_publications;
        let filter = if req.recover {
            HistoryFilter {
                since: Some(StreamPosition {
                    offset: req.offset,
                    epoch: String::new(),
                }),
                limit: Some(max),
                reverse: false,
                max_bytes: Some(self.max_answer_bytes()),
            }
        } else {
            HistoryFilter {
                limit: Some(0),
                ..Default::default()
            }
        };
        let page = match self.node.history(channel, filter).await {
            // More to recover than one answer holds: the position alone, and the subscription
            // is not recovered (as with more than `recovery_max_publications`).
            Err(error) if error.code == error_code::LIMIT_EXCEEDED => {
                let position_only = HistoryFilter {
                    limit: Some(0),
                    ..Default::default()
                };
                self.node.history(channel, position_only).await?
            }
            other => other?,
        };
        let top = page.position.offset;
        let mut result = SubscribeResult {
            recoverable: true,
            positioned: true,
            epoch: page.position.epoch.clone(),
            offset: top,
            ..Default::default()
        };
        if req.recover {
            result.was_recovering = true;
            let same_epoch = req.epoch.is_empty() || req.epoch == page.position.epoch;
            let complete = match (page.publications.first(), page.publications.last()) {
                (Some(first), Some(last)) => first.offset == req.offset + 1 && last.offset == top,
                _ => top == req.offset,
            };
            if same_epoch && complete {
                result.recovered = true;
                result.publications = page.publications;
            } else if req.flag & flag::REJECT_UNRECOVERED != 0 {
                return Err(Error::new(error_code::UNRECOVERABLE_POSITION));
            }
        }
        Ok(result)
    }

    /// `unsubscribe` from the client; not being subscribed is no error.
    pub(super) async fn client_unsubscribe(&mut self, channel: &str) -> Answer {
        self.unsubscribe(channel).await;
        Ok(Some(ReplyResult::Unsubscribe(Empty {})))
    }

    /// Leaves a channel; a no-op if not subscribed. Releases the hub entry (and the broker's
    /// interest, when last here), presence and the leave notice.
    pub(super) async fn unsubscribe(&mut self, channel: &str) {
        if let Some(subscription) = self.subscriptions.remove(channel) {
            emit_unsubscribed(&self.node, channel, &subscription);
            self.node.leave_channel(channel, self.conn).await;
            release_shared(&self.node, channel, &subscription).await;
        }
    }
}

/// Tells the node's event sinks that a subscription ended.
pub(super) fn emit_unsubscribed(node: &Node, channel: &str, subscription: &Subscription) {
    node.emit(Event::Unsubscribed {
        client: &subscription.info.client,
        user: &subscription.info.user,
        channel,
    });
}

/// The part of releasing a subscription that other nodes see: presence (and map presence), the
/// leave notice, and the client's own map key when the namespace removes it on unsubscribe.
pub(super) async fn release_shared(node: &Node, channel: &str, subscription: &Subscription) {
    if subscription.presence {
        node.remove_presence(channel, &subscription.info.client)
            .await;
    }
    if subscription.join_leave {
        node.publish_leave(channel, &subscription.info).await;
    }
    if subscription.map_presence {
        node.map_presence_leave(channel, &subscription.info).await;
    }
    if subscription.remove_map_key {
        if let Err(error) = node
            .map_remove(channel, &subscription.info.client, None)
            .await
        {
            tracing::warn!(channel, ?error, "removing a client's map key failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{node, secured, token, TestClient};

    #[tokio::test]
    async fn subscribe_replies_with_a_position_and_registers_presence() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        let reply = client
            .call(2, "subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        let result = &reply["subscribe"];
        assert_eq!(result["recoverable"], true);
        assert!(result["epoch"].is_string());
        assert_eq!(node.hub().num_subscribers("news"), 1);
        let presence = node.presence("news").await.unwrap();
        assert!(presence.contains_key(client.session.client_id().unwrap()));
    }

    #[tokio::test]
    async fn subscribing_twice_is_error_105() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        client
            .call(2, "subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        let reply = client
            .call(3, "subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        assert_eq!(reply["error"]["code"], 105);
    }

    #[tokio::test]
    async fn bad_names_unknown_namespaces_and_private_channels_are_refused() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        let cases = [
            ("", 107),
            ("nowhere:news", 102),
            ("$secret", 103),
            ("chat#bob", 103),
        ];
        for (i, (channel, code)) in cases.into_iter().enumerate() {
            let reply = client
                .call(10 + i as u32, "subscribe", json!({"channel": channel}))
                .await
                .unwrap();
            assert_eq!(reply["error"]["code"], code, "{channel:?}");
        }
    }

    #[tokio::test]
    async fn a_subscription_token_for_another_channel_disconnects() {
        let node = node(secured);
        let mut client = TestClient::connected_as(&node, "ann").await;
        let wrong = token(json!({"sub": "ann", "channel": "$other"}));
        let outcome = client
            .send(&[json!({"id": 2, "subscribe": {"channel": "$mine", "token": wrong}})])
            .await;
        assert_eq!(outcome.unwrap_err().code, 3500);
    }

    #[tokio::test]
    async fn a_subscription_token_opens_a_private_channel() {
        let node = node(secured);
        let mut client = TestClient::connected_as(&node, "ann").await;
        let grant = token(json!({"sub": "ann", "channel": "$mine", "info": {"role": "owner"}}));
        let reply = client
            .call(2, "subscribe", json!({"channel": "$mine", "token": grant}))
            .await
            .unwrap();
        assert!(reply["subscribe"].is_object(), "{reply}");
        let presence = node.presence("$mine").await.unwrap();
        let me = &presence[client.session.client_id().unwrap()];
        assert_eq!(me.chan_info.as_ref().unwrap().get(), r#"{"role":"owner"}"#);
    }

    #[tokio::test]
    async fn recovery_returns_what_was_missed() {
        let node = node(|_| {});
        let mut publisher = TestClient::connected(&node).await;
        let first = publisher
            .call(2, "subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        let epoch = first["subscribe"]["epoch"].as_str().unwrap().to_string();
        for id in 3..6 {
            publisher
                .call(id, "publish", json!({"channel": "news", "data": {"n": id}}))
                .await
                .unwrap();
        }
        let mut late = TestClient::connected(&node).await;
        let reply = late
            .call(
                2,
                "subscribe",
                json!({"channel": "news", "recover": true, "offset": 1, "epoch": epoch}),
            )
            .await
            .unwrap();
        let result = &reply["subscribe"];
        assert_eq!(result["recovered"], true);
        let recovered: Vec<_> = result["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(recovered, [4, 5]);
    }

    #[tokio::test]
    async fn unsubscribe_releases_hub_and_presence() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        client
            .call(2, "subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        let reply = client
            .call(3, "unsubscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        assert_eq!(reply["unsubscribe"], json!({}));
        assert_eq!(node.hub().num_subscribers("news"), 0);
        assert!(node.presence("news").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn dropping_the_session_releases_its_subscriptions() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        client
            .call(2, "subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        drop(client);
        assert_eq!(node.hub().num_subscribers("news"), 0);
        node.tracker().close();
        node.tracker().wait().await;
        assert!(node.presence("news").await.unwrap().is_empty());
    }
}

//! `connect` and `refresh`: who the client is, and for how long.

use std::collections::HashMap;
use std::sync::Arc;

use super::{ttl_from, Answer, Identity, Outcome, Session};
use crate::config::Config;
use crate::hooks::decisions::Connecting;
use crate::hooks::decisions::{ServerSubscription, Transport};
use crate::hooks::events::Event;
use crate::hooks::Refusal;
use crate::hub::ClientHandle;
use crate::node::VERSION;
use crate::protocol::{
    error_code, ConnectRequest, ConnectResult, Disconnect, Error, Payload, Push, PushBody,
    RefreshRequest, RefreshResult, Reply, ReplyResult, SubscribeRequest,
};

/// How the result of a connect reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectAnswer {
    /// A reply to the `connect` command with this id (bidirectional transports).
    Reply(u32),
    /// A `connect` push: a unidirectional client sends no command to reply to, and no pong.
    Push,
}

impl Session {
    /// `connect`: asks the node's decisions who the client is, registers it, replies, then makes
    /// the server-side subscriptions decided for it take effect. Replies itself.
    pub(super) async fn connect(&mut self, id: u32, req: ConnectRequest) -> Answer {
        self.connect_as(req, ConnectAnswer::Reply(id)).await
    }

    /// Connects the client of a unidirectional transport (Centrifugo's `uni_*`), whose only
    /// message is this request: the result goes out as a `connect` push, and the channels the
    /// client lists in `subs` are subscribed where the channel's permissions let it subscribe
    /// (as well as the server-side subscriptions decided for it). A refusal becomes the
    /// disconnect Centrifugo sends such clients, also recorded as the reason the connection ends.
    pub async fn connect_unidirectional(&mut self, req: ConnectRequest) -> Outcome {
        self.unidirectional = true;
        let outcome = match self.connect_as(req, ConnectAnswer::Push).await {
            Ok(_) => Ok(()),
            Err(Refusal::Disconnect(reason)) => Err(reason),
            Err(Refusal::Error(error)) => Err(unidirectional_disconnect(&error)),
        };
        if let Err(reason) = &outcome {
            self.closing(reason);
        }
        outcome
    }

    async fn connect_as(&mut self, req: ConnectRequest, answer: ConnectAnswer) -> Answer {
        let node = self.node.clone();
        let config = node.config();
        let client: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        // The real headers of the connection request, and those the SDK emulates in `connect`.
        let emulated = &config.proxy_emulated_headers;
        let headers = match &req.headers {
            Some(sent) if !emulated.is_empty() => self.headers.with_emulated(sent, emulated),
            _ => self.headers.clone(),
        };
        let connecting = Connecting {
            client: &client,
            link: self.link(),
            headers: &headers,
        };
        let decision = node.decisions().connect(connecting, &req).await?;
        let limit = config.user_connection_limit;
        if limit > 0 && !decision.user.is_empty() {
            // This node's count first (no I/O), then the count across nodes, which also
            // registers the connection (released by the session's drop).
            if node.hub().user_connection_count(&decision.user) >= limit {
                return Err(Disconnect::CONNECTION_LIMIT.into());
            }
            match node
                .presence_storage()
                .admit_user_connection(&decision.user, &client, limit)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(Disconnect::CONNECTION_LIMIT.into()),
                // A shared storage that is down does not refuse every connection: the limit
                // holds per node meanwhile.
                Err(e) => tracing::warn!(error = %e, "user connection limit counted per node only"),
            }
        }
        let identity = Identity {
            client,
            user: Arc::from(decision.user.as_str()),
            conn_info: decision.info,
            meta: decision.meta,
            headers,
        };
        node.hub().add_connection(
            self.conn,
            ClientHandle {
                client_id: identity.client.clone(),
                user: identity.user.clone(),
                queue: self.queue.clone(),
                control: self.control.clone(),
            },
        );
        self.expires_at = decision.expires_at;
        self.refreshed_by_server = decision.refreshed_by_server;
        tracing::debug!(client = %identity.client, user = %identity.user, "connected");
        self.identity = Some(identity.clone());

        // Server-side subscriptions; the client may ask to recover them. The user's personal
        // channel comes last, unless the decision named it already.
        let mut subscriptions = decision.subscriptions;
        if let Some(channel) = node.personal_channel(&identity.user) {
            if !subscriptions.iter().any(|s| s.channel == channel) {
                subscriptions.push(ServerSubscription {
                    channel,
                    ..Default::default()
                });
            }
        }
        if answer == ConnectAnswer::Push {
            self.permitted_client_channels(&identity, &req, &mut subscriptions)
                .await;
        }
        let mut subs = HashMap::new();
        let mut joined = Vec::new();
        for sub in subscriptions {
            let channel = sub.channel;
            if subs.contains_key(&channel) || node.check_channel_name(&channel).is_err() {
                continue;
            }
            let Ok(options) = node.channel_options(&channel) else {
                continue;
            };
            let mut req = req.subs.get(&channel).cloned().unwrap_or_default();
            req.channel = channel.clone();
            match self.join(&req, &options).await {
                Ok((mut result, after)) => {
                    result.data = sub.data;
                    subs.insert(channel.clone(), result);
                    joined.push((channel, sub.chan_info, options, after));
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
        // A connection the server renews itself is not the client's to refresh.
        let client_expiry = self.expires_at.filter(|_| !self.refreshed_by_server);
        // Only the emulated transports have an emulation session (and the registry's lock is
        // not every WebSocket connect's to take).
        let emulated = matches!(self.transport, Transport::HttpStream | Transport::Sse);
        let (session, node_uid) = match emulated
            .then(|| node.emulation().session_of(self.conn))
            .flatten()
        {
            Some(session) => (session.to_string(), node.uid().to_string()),
            None => (String::new(), String::new()),
        };
        let result = ConnectResult {
            session,
            node: node_uid,
            client: identity.client.to_string(),
            version: VERSION.to_string(),
            expires: client_expiry.is_some(),
            ttl: client_expiry.map_or(0, ttl_from),
            data: decision.data,
            ping: config.ping_interval as u32,
            pong: answer != ConnectAnswer::Push,
            subs,
            ..Default::default()
        };
        match answer {
            ConnectAnswer::Reply(id) => self.reply(id, Ok(ReplyResult::Connect(result))),
            ConnectAnswer::Push => self.send(
                Reply::push(Push {
                    channel: String::new(),
                    body: PushBody::Connect(result),
                })
                .encode_as(self.encoding()),
            ),
        }
        node.emit(Event::Connected {
            client: &identity.client,
            user: &identity.user,
        });
        for (channel, chan_info, options, after) in joined {
            node.hub().activate(&channel, self.conn, None, after);
            self.register(&identity, channel, chan_info, &options, None)
                .await;
        }
        if config.personal_single_connection {
            single_connection(&node, &identity).await;
        }
        Ok(None)
    }

    /// Adds to `subscriptions` the channels a unidirectional client lists in its `subs` that it
    /// may subscribe to as a bidirectional client could (public channels, namespaces that allow
    /// it), in name order. As in Centrifugo, channels that need a subscription token are left
    /// out, and so are channels whose subscriptions a backend decides (its subscribe proxy
    /// answers subscribe commands, which a unidirectional client never sends).
    async fn permitted_client_channels(
        &self,
        who: &Identity,
        req: &ConnectRequest,
        subscriptions: &mut Vec<ServerSubscription>,
    ) {
        let mut wanted: Vec<&String> = req
            .subs
            .keys()
            .filter(|channel| !subscriptions.iter().any(|s| &s.channel == *channel))
            .collect();
        wanted.sort();
        for channel in wanted {
            if subscribe_proxied(self.node.config(), channel)
                || self.node.check_channel_name(channel).is_err()
            {
                continue;
            }
            let Ok(options) = self.node.channel_options(channel) else {
                continue;
            };
            let request = SubscribeRequest {
                channel: channel.clone(),
                ..Default::default()
            };
            match self
                .node
                .decisions()
                .subscribe(who.as_client(self.link()), &request, &options)
                .await
            {
                Ok(decision) => subscriptions.push(ServerSubscription {
                    channel: channel.clone(),
                    chan_info: decision.chan_info,
                    data: decision.data,
                }),
                Err(_) => tracing::debug!(channel, "unidirectional client may not subscribe"),
            }
        }
    }

    /// `refresh`: the node's decisions extend the connection's life (the built-in rules want a
    /// new token for the same user).
    pub(super) async fn refresh(&mut self, who: &Identity, req: RefreshRequest) -> Answer {
        let decision = self
            .node
            .decisions()
            .refresh(who.as_client(self.link()), &req)
            .await?;
        self.expires_at = decision.expires_at;
        if let Some(info) = decision.info {
            self.renew_info(info);
        }
        Ok(Some(ReplyResult::Refresh(RefreshResult {
            client: who.client.to_string(),
            version: VERSION.to_string(),
            expires: self.expires_at.is_some(),
            ttl: self.expires_at.map_or(0, ttl_from),
        })))
    }

    /// The connection info a refresh decided, for what the connection does from now on
    /// (subscriptions already made keep the info they were made with).
    pub(super) fn renew_info(&mut self, info: Payload) {
        if let Some(identity) = &mut self.identity {
            identity.conn_info = Some(info);
        }
    }
}

/// Whether the application backend decides subscriptions to `channel`: a subscribe proxy
/// endpoint for its namespace (its own, or the server-wide one), not switched off there.
fn subscribe_proxied(config: &Config, channel: &str) -> bool {
    let namespace = match channel.split_once(':') {
        Some((name, _)) => config.namespace.iter().find(|ns| ns.name == name),
        None => Some(&config.channel),
    };
    match namespace {
        Some(ns) if ns.proxy_subscribe == Some(false) => false,
        Some(ns) if ns.proxy_subscribe_endpoint.is_some() => true,
        _ => config.proxy_subscribe_endpoint.is_some(),
    }
}

/// The disconnect a unidirectional client gets for a connect refused with `error` (it has no
/// command to get an error reply to), as Centrifugo maps them: an expired token is an expired
/// connection (reconnect with a new one), rate and permission refusals keep their meaning,
/// anything else is a server error.
fn unidirectional_disconnect(error: &Error) -> Disconnect {
    match error.code {
        error_code::TOKEN_EXPIRED | error_code::EXPIRED => Disconnect::EXPIRED,
        error_code::TOO_MANY_REQUESTS => Disconnect::TOO_MANY_REQUESTS,
        error_code::PERMISSION_DENIED => Disconnect::PERMISSION_DENIED,
        _ => Disconnect::INTERNAL,
    }
}

/// With `personal_single_connection`: a user's new connection closes the user's others, on every
/// node, with 3504 "connection limit" (Centrifugo's single-connection mode). Whether there are
/// others is read from the presence of the user's personal channel, which this connection has
/// just joined.
async fn single_connection(node: &crate::node::Node, identity: &Identity) {
    let Some(channel) = node.personal_channel(&identity.user) else {
        return;
    };
    match node.presence_storage().stats(&channel).await {
        Ok(stats) if stats.num_clients >= 2 => {
            let others = crate::engine::broker::NodeControl::Disconnect {
                user: identity.user.to_string(),
                client: None,
                whitelist: vec![identity.client.to_string()],
                reason: Disconnect::CONNECTION_LIMIT,
            };
            if node.control(others).await.is_err() {
                tracing::warn!(user = %identity.user, "single connection: others not disconnected");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(user = %identity.user, error = %e.0, "single connection: presence read failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{node, secured, token, TestClient};

    #[tokio::test]
    async fn anonymous_connect_replies_with_a_client_id() {
        let node = node(|_| {});
        let mut client = TestClient::new(&node);
        let reply = client.call(1, "connect", json!({})).await.unwrap();
        let result = &reply["connect"];
        assert!(!result["client"].as_str().unwrap().is_empty());
        assert_eq!(result["pong"], true);
        assert!(client.session.is_connected());
    }

    #[tokio::test]
    async fn anonymous_connect_is_refused_once_tokens_are_verified() {
        let node = node(secured);
        let mut client = TestClient::new(&node);
        let outcome = client.send(&[json!({"id": 1, "connect": {}})]).await;
        assert_eq!(outcome.unwrap_err().code, 3500);
        assert!(!client.session.is_connected());
    }

    #[tokio::test]
    async fn a_second_connect_is_a_bad_request() {
        let node = node(|_| {});
        let mut client = TestClient::new(&node);
        client.call(1, "connect", json!({})).await.unwrap();
        let outcome = client.send(&[json!({"id": 2, "connect": {}})]).await;
        assert_eq!(outcome.unwrap_err().code, 3501);
    }

    #[tokio::test]
    async fn commands_before_connect_are_bad_requests() {
        let node = node(|_| {});
        let mut client = TestClient::new(&node);
        let outcome = client.send(&[json!({"id": 1, "ping": {}})]).await;
        assert_eq!(outcome.unwrap_err().code, 3501);
    }

    #[tokio::test]
    async fn an_expired_token_is_an_error_reply_and_the_client_may_try_again() {
        let node = node(secured);
        let mut client = TestClient::new(&node);
        let expired = token(json!({"sub": "ann", "exp": 1}));
        let reply = client
            .call(1, "connect", json!({"token": expired}))
            .await
            .unwrap();
        assert_eq!(reply["error"]["code"], 109);
        let fresh = token(json!({"sub": "ann"}));
        let reply = client
            .call(2, "connect", json!({"token": fresh}))
            .await
            .unwrap();
        assert!(reply["connect"]["client"].is_string());
    }

    #[tokio::test]
    async fn refresh_extends_the_connection_for_the_same_user() {
        let node = node(secured);
        let mut client = TestClient::new(&node);
        let first = token(json!({"sub": "ann", "exp": crate::auth::unix_now() + 60}));
        client
            .call(1, "connect", json!({"token": first}))
            .await
            .unwrap();
        let later = token(json!({"sub": "ann", "exp": crate::auth::unix_now() + 3600}));
        let reply = client
            .call(2, "refresh", json!({"token": later}))
            .await
            .unwrap();
        assert_eq!(reply["refresh"]["expires"], true);
        assert!(reply["refresh"]["ttl"].as_u64().unwrap() > 3000);
    }

    #[tokio::test]
    async fn refresh_with_another_users_token_disconnects() {
        let node = node(secured);
        let mut client = TestClient::new(&node);
        client
            .call(1, "connect", json!({"token": token(json!({"sub": "ann"}))}))
            .await
            .unwrap();
        let outcome = client
            .send(&[json!({"id": 2, "refresh": {"token": token(json!({"sub": "bob"}))}})])
            .await;
        assert_eq!(outcome.unwrap_err().code, 3500);
    }

    #[tokio::test]
    async fn server_side_subscriptions_from_the_token_take_effect_after_the_reply() {
        let node = node(secured);
        let mut client = TestClient::new(&node);
        let with_channels = token(json!({"sub": "ann", "channels": ["news"]}));
        let reply = client
            .call(1, "connect", json!({"token": with_channels}))
            .await
            .unwrap();
        assert!(reply["connect"]["subs"]["news"].is_object());
        assert_eq!(node.hub().num_subscribers("news"), 1);
    }

    #[tokio::test]
    async fn a_known_user_is_subscribed_to_its_personal_channel_anonymous_clients_are_not() {
        let node = node(|c| {
            secured(c);
            c.insecure = true;
            c.subscribe_to_user_personal_channel = true;
            c.personal_channel_namespace = "personal".into();
            c.namespace = vec![crate::config::Namespace {
                name: "personal".into(),
                ..Default::default()
            }];
        });
        let mut ann = TestClient::new(&node);
        let reply = ann
            .call(1, "connect", json!({"token": token(json!({"sub": "ann"}))}))
            .await
            .unwrap();
        assert!(
            reply["connect"]["subs"]["personal:#ann"].is_object(),
            "{reply}"
        );
        assert_eq!(node.hub().num_subscribers("personal:#ann"), 1);
        let mut anonymous = TestClient::new(&node);
        let reply = anonymous.call(1, "connect", json!({})).await.unwrap();
        assert!(reply["connect"].get("subs").is_none(), "{reply}");
        // One publication reaches every connection of the user.
        let mut again = TestClient::new(&node);
        again
            .call(1, "connect", json!({"token": token(json!({"sub": "ann"}))}))
            .await
            .unwrap();
        assert_eq!(node.hub().num_subscribers("personal:#ann"), 2);
    }

    /// Connects `client` as a unidirectional transport does, with `request`.
    async fn connect_uni(
        client: &mut TestClient,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, crate::protocol::Disconnect> {
        let request = serde_json::from_value(request).unwrap();
        client.session.connect_unidirectional(request).await?;
        let messages = client.messages();
        Ok(messages.into_iter().next().expect("a connect push"))
    }

    #[tokio::test]
    async fn a_unidirectional_connect_is_pushed_and_expects_no_pong() {
        let node = node(|_| {});
        let mut client = TestClient::new(&node);
        let push = connect_uni(&mut client, json!({})).await.unwrap();
        let result = &push["push"]["connect"];
        assert!(result["client"].is_string(), "{push}");
        assert!(push.get("id").is_none(), "{push}");
        assert!(result.get("pong").is_none(), "{push}");
        assert!(client.session.is_connected());
    }

    #[tokio::test]
    async fn a_unidirectional_client_gets_the_channels_it_lists_that_it_may_subscribe_to() {
        let node = node(|c| {
            secured(c);
            c.channel.allow_subscribe_for_client = Some(true);
            c.namespace = vec![crate::config::Namespace {
                name: "closed".into(),
                ..Default::default()
            }];
        });
        let mut client = TestClient::new(&node);
        let request = json!({
            "token": token(json!({"sub": "ann", "channels": ["news"]})),
            "subs": {"sport": {}, "closed:room": {}, "$private": {}, "news": {}},
        });
        let push = connect_uni(&mut client, request).await.unwrap();
        let subs = push["push"]["connect"]["subs"].as_object().unwrap();
        let mut channels: Vec<&String> = subs.keys().collect();
        channels.sort();
        assert_eq!(channels, ["news", "sport"], "{push}");
        assert_eq!(node.hub().num_subscribers("sport"), 1);
        assert_eq!(node.hub().num_subscribers("closed:room"), 0);
    }

    #[tokio::test]
    async fn refused_unidirectional_connects_become_centrifugos_disconnects() {
        let node = node(secured);
        let mut client = TestClient::new(&node);
        let expired = token(json!({"sub": "ann", "exp": 1}));
        let outcome = connect_uni(&mut client, json!({"token": expired})).await;
        assert_eq!(outcome.unwrap_err().code, 3005);
        let mut client = TestClient::new(&node);
        let outcome = connect_uni(&mut client, json!({"token": "nonsense"})).await;
        assert_eq!(outcome.unwrap_err().code, 3500);
        let mut client = TestClient::new(&node);
        let outcome = connect_uni(&mut client, json!({})).await;
        assert_eq!(outcome.unwrap_err().code, 3500);
    }

    #[tokio::test]
    async fn channels_a_backend_decides_are_not_subscribed_from_the_connect_request() {
        let node = node(|c| {
            c.namespace = vec![crate::config::Namespace {
                name: "backend".into(),
                proxy_subscribe_endpoint: Some("http://127.0.0.1:9/subscribe".into()),
                ..Default::default()
            }];
        });
        let mut client = TestClient::new(&node);
        let request = json!({"subs": {"backend:room": {}, "news": {}}});
        let push = connect_uni(&mut client, request).await.unwrap();
        let subs = push["push"]["connect"]["subs"].as_object().unwrap();
        assert_eq!(subs.keys().collect::<Vec<_>>(), ["news"], "{push}");
    }
}

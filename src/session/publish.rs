//! The publish pipeline: a client's publishes run while its next frames are read, and their
//! replies still go out in command order.
//!
//! A publish whose place in the channel's order is fixed when it starts (see
//! [`Submitted`]) joins the session's pipeline and is answered later, oldest first, by
//! [`Session::finish_publish`] (which the connection task polls) or before anything else is
//! answered. One whose order is fixed only while it runs is awaited at once.

use std::collections::VecDeque;

use futures_util::future::BoxFuture;

use super::{Answer, Identity, Session};
use crate::hooks::decisions::Content;
use crate::hooks::Refusal;
use crate::node::Submitted;
use crate::protocol::{
    ClientInfo, Empty, Error, Publication, PublishRequest, ReplyResult, StreamPosition,
};

/// Publishes in flight, oldest first, with the ids of the commands they answer.
pub(super) type Pipeline = VecDeque<(u32, PublishFuture)>;

/// A client publish under way.
type PublishFuture = BoxFuture<'static, Result<Option<StreamPosition>, Error>>;

/// Most publishes one client may have in flight; beyond that its next frame waits (the client's
/// own backpressure). In flight, a durable history store commits them together.
const MAX_PUBLISHES_IN_FLIGHT: usize = 256;

impl Session {
    /// Whether publishes are in flight (see [`Session::finish_publish`]).
    pub fn has_publishes_in_flight(&mut self) -> bool {
        self.in_flight() > 0
    }

    fn in_flight(&mut self) -> usize {
        self.pipeline_mut().map_or(0, |p| p.len())
    }

    fn pipeline_mut(&mut self) -> Option<&mut Pipeline> {
        self.pipeline
            .as_mut()
            .map(|p| p.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits for the oldest publish in flight and replies to it; never resolves if none is.
    /// Cancel-safe: dropped before it resolves, it leaves the publish in flight.
    pub async fn finish_publish(&mut self) {
        let Some(front) = self.pipeline_mut().and_then(|p| p.front_mut()) else {
            return std::future::pending().await;
        };
        let result = (&mut front.1).await;
        let Some((id, _)) = self.pipeline_mut().and_then(|p| p.pop_front()) else {
            return;
        };
        self.reply(id, result.map(|_| ReplyResult::Publish(Empty {})));
    }

    /// Replies to every publish in flight, in order: whatever is answered next comes after them.
    pub(super) async fn finish_publishes(&mut self) {
        while self.has_publishes_in_flight() {
            self.finish_publish().await;
        }
    }

    /// `publish` from the client: checked and started; pipelined when its order is already
    /// fixed (answered later), else awaited.
    pub(super) async fn publish(&mut self, id: u32, who: &Identity, req: PublishRequest) -> Answer {
        match self.submit_publish(who, req).await {
            Ok(Submitted::InFlight(publishing)) => {
                if self.in_flight() >= MAX_PUBLISHES_IN_FLIGHT {
                    self.finish_publish().await;
                }
                let pipeline = self.pipeline.get_or_insert_default().get_mut();
                pipeline
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((id, publishing));
                Ok(None)
            }
            Ok(Submitted::Sequential(publishing)) => {
                self.finish_publishes().await;
                publishing.await?;
                Ok(Some(ReplyResult::Publish(Empty {})))
            }
            Err(refusal) => {
                self.finish_publishes().await;
                Err(refusal)
            }
        }
    }

    /// Checks a client publish, asks the node's decisions, and starts it. The built-in decision
    /// is ready at once, so a pipelined publish still starts within one poll.
    async fn submit_publish(
        &self,
        who: &Identity,
        req: PublishRequest,
    ) -> Result<Submitted, Refusal> {
        self.node.check_channel_name(&req.channel)?;
        let options = self.node.channel_options(&req.channel)?;
        if options.map.is_some() || req.kind != 0 {
            return Ok(Submitted::Sequential(self.map_publish(who, req, &options)?));
        }
        let PublishRequest {
            channel,
            data,
            binary,
            ..
        } = req;
        let channel = channel.as_str();
        let subscribed = self.subscriptions.contains_key(channel);
        let data = data.map(|payload| Content { payload, binary });
        let decision = self
            .node
            .decisions()
            .publish(
                who.as_client(self.link()),
                channel,
                data,
                &options,
                subscribed,
            )
            .await?;
        let info = ClientInfo {
            user: who.user.to_string(),
            client: who.client.to_string(),
            conn_info: who.conn_info.clone(),
            chan_info: self
                .subscriptions
                .get(channel)
                .and_then(|s| s.info.chan_info.clone()),
        };
        let publication = Publication {
            info: Some(info),
            binary: decision.data.binary,
            ..Publication::new(decision.data.payload)
        };
        Ok(self
            .node
            .submit_publish(channel, publication, decision.skip_history)?)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use std::sync::Arc;

    use async_trait::async_trait;
    use serde_json::value::RawValue;

    use super::super::testing::{node, node_with, TestClient};
    use crate::channel::ChannelOptions;
    use crate::hooks::decisions::{
        Client, ConnectDecision, Connecting, Content, Decisions, PublishDecision, RefreshDecision,
        RpcDecision, SubRefreshDecision, SubscribeDecision,
    };
    use crate::hooks::rules::Rules;
    use crate::hooks::Refusal;
    use crate::node::NodeHooks;
    use crate::protocol::{
        ConnectRequest, Payload, RefreshRequest, SubRefreshRequest, SubscribeRequest,
    };

    #[tokio::test]
    async fn connect_subscribe_publish_then_history_sees_it() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        client
            .call(2, "subscribe", json!({"channel": "news"}))
            .await
            .unwrap();
        let reply = client
            .call(
                3,
                "publish",
                json!({"channel": "news", "data": {"text": "hi"}}),
            )
            .await
            .unwrap();
        assert_eq!(reply["publish"], json!({}));
        let publication = client
            .messages()
            .into_iter()
            .find(|m| m["push"]["pub"].is_object())
            .expect("the subscriber gets its own publication");
        assert_eq!(publication["push"]["pub"]["data"]["text"], "hi");
        let reply = client
            .call(4, "history", json!({"channel": "news", "limit": -1}))
            .await
            .unwrap();
        assert_eq!(reply["history"]["publications"][0]["data"]["text"], "hi");
    }

    #[tokio::test]
    async fn replies_keep_command_order_with_publishes_in_flight() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        client
            .send(&[
                json!({"id": 2, "publish": {"channel": "a", "data": 1}}),
                json!({"id": 3, "publish": {"channel": "a", "data": 2}}),
            ])
            .await
            .unwrap();
        // Pipelined: started, not yet answered.
        assert!(client.session.has_publishes_in_flight());
        assert!(client.messages().is_empty());
        client
            .send(&[
                json!({"id": 4, "publish": {"channel": "a", "data": 3}}),
                json!({"id": 5, "history": {"channel": "a", "limit": -1}}),
            ])
            .await
            .unwrap();
        let messages = client.messages();
        let ids: Vec<_> = messages.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [2, 3, 4, 5]);
        let history = messages[3]["history"]["publications"].as_array().unwrap();
        assert_eq!(history.len(), 3, "history sees the publishes before it");
    }

    #[tokio::test]
    async fn a_refused_publish_is_answered_after_those_in_flight() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        client
            .send(&[
                json!({"id": 2, "publish": {"channel": "a", "data": 1}}),
                json!({"id": 3, "publish": {"channel": "a"}}),
            ])
            .await
            .unwrap();
        let messages = client.messages();
        let ids: Vec<_> = messages.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(messages[1]["error"]["code"], 107);
    }

    /// Decisions that stamp every publication, as a backend proxy may replace the data.
    struct Stamping(Rules);

    #[async_trait]
    impl Decisions for Stamping {
        async fn connect(
            &self,
            client: Connecting<'_>,
            req: &ConnectRequest,
        ) -> Result<ConnectDecision, Refusal> {
            self.0.connect(client, req).await
        }
        async fn refresh(
            &self,
            client: Client<'_>,
            req: &RefreshRequest,
        ) -> Result<RefreshDecision, Refusal> {
            self.0.refresh(client, req).await
        }
        async fn subscribe(
            &self,
            client: Client<'_>,
            req: &SubscribeRequest,
            options: &ChannelOptions,
        ) -> Result<SubscribeDecision, Refusal> {
            self.0.subscribe(client, req, options).await
        }
        async fn sub_refresh(
            &self,
            client: Client<'_>,
            req: &SubRefreshRequest,
        ) -> Result<SubRefreshDecision, Refusal> {
            self.0.sub_refresh(client, req).await
        }
        async fn publish(
            &self,
            client: Client<'_>,
            channel: &str,
            data: Option<Content>,
            options: &ChannelOptions,
            subscribed: bool,
        ) -> Result<PublishDecision, Refusal> {
            self.0
                .publish(client, channel, data, options, subscribed)
                .await?;
            let stamped = RawValue::from_string(format!(r#"{{"by":"{}"}}"#, client.client));
            Ok(PublishDecision {
                data: Content::json(Payload::from(stamped.unwrap())),
                skip_history: false,
            })
        }
        async fn rpc(
            &self,
            client: Client<'_>,
            method: &str,
            data: Option<Content>,
        ) -> Result<RpcDecision, Refusal> {
            self.0.rpc(client, method, data).await
        }
    }

    #[tokio::test]
    async fn what_is_published_is_what_the_decision_says() {
        let rules = Rules::new(&crate::config::Config::default(), None);
        let hooks = NodeHooks {
            decisions: Some(Arc::new(Stamping(rules))),
            ..Default::default()
        };
        let node = node_with(|_| {}, hooks);
        let mut client = TestClient::connected(&node).await;
        client
            .call(
                2,
                "publish",
                json!({"channel": "a", "data": {"text": "hi"}}),
            )
            .await
            .unwrap();
        let page = node
            .history("a", crate::engine::history::HistoryFilter::default())
            .await
            .unwrap();
        let me = client.session.client_id().unwrap();
        assert_eq!(
            page.publications[0].data.get(),
            format!(r#"{{"by":"{me}"}}"#)
        );
    }
}

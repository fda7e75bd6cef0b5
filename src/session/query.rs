//! Queries about a channel: `presence`, `presence_stats` and `history`.

use super::{Answer, Session};
use crate::channel::ChannelOptions;
use crate::engine::history::HistoryFilter;
use crate::protocol::{
    error_code, Error, HistoryRequest, HistoryResult, PresenceResult, PresenceStatsResult,
    ReplyResult,
};

impl Session {
    /// Checks that `channel` is a valid name and that this client may act on it: `grants` picks,
    /// from the channel's options, whether any client (first) or any subscriber (second) may.
    /// Returns the options; error 103 when neither applies.
    pub(super) fn permit(
        &self,
        channel: &str,
        grants: fn(&ChannelOptions) -> (bool, bool),
    ) -> Result<ChannelOptions, Error> {
        self.node.check_channel_name(channel)?;
        let options = self.node.channel_options(channel)?;
        let (for_client, for_subscriber) = grants(&options);
        if for_client || (for_subscriber && self.subscriptions.contains_key(channel)) {
            Ok(options)
        } else {
            Err(Error::new(error_code::PERMISSION_DENIED))
        }
    }

    fn check_presence(&self, channel: &str) -> Result<(), Error> {
        self.permit(channel, |o| {
            (o.allow_presence_for_client, o.allow_presence_for_subscriber)
        })
        .map(drop)
    }

    /// `presence`: who is subscribed to the channel.
    pub(super) async fn presence(&self, channel: &str) -> Answer {
        self.check_presence(channel)?;
        let presence = self.node.presence(channel).await?;
        Ok(Some(ReplyResult::Presence(PresenceResult { presence })))
    }

    /// `presence_stats`: how many clients and users are subscribed to the channel.
    pub(super) async fn presence_stats(&self, channel: &str) -> Answer {
        self.check_presence(channel)?;
        let stats = self.node.presence_stats(channel).await?;
        Ok(Some(ReplyResult::PresenceStats(PresenceStatsResult {
            num_clients: stats.num_clients,
            num_users: stats.num_users,
        })))
    }

    /// `history`: a page of the channel's stream.
    pub(super) async fn history(&self, req: HistoryRequest) -> Answer {
        self.permit(&req.channel, |o| {
            (o.allow_history_for_client, o.allow_history_for_subscriber)
        })?;
        let filter = HistoryFilter {
            max_bytes: Some(self.max_answer_bytes()),
            ..HistoryFilter::from_request(req.limit, req.since, req.reverse)?
        };
        let page = self.node.history(&req.channel, filter).await?;
        Ok(Some(ReplyResult::History(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        })))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{node, secured, TestClient};

    #[tokio::test]
    async fn presence_and_stats_count_subscribers() {
        let node = node(|_| {});
        let mut ann = TestClient::connected(&node).await;
        let mut bob = TestClient::connected(&node).await;
        for client in [&mut ann, &mut bob] {
            client
                .call(2, "subscribe", json!({"channel": "room"}))
                .await
                .unwrap();
        }
        let reply = ann
            .call(3, "presence", json!({"channel": "room"}))
            .await
            .unwrap();
        assert_eq!(reply["presence"]["presence"].as_object().unwrap().len(), 2);
        let reply = ann
            .call(4, "presence_stats", json!({"channel": "room"}))
            .await
            .unwrap();
        assert_eq!(reply["presence_stats"]["num_clients"], 2);
    }

    #[tokio::test]
    async fn history_of_an_empty_channel_has_a_position() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        let reply = client
            .call(2, "history", json!({"channel": "quiet", "limit": 10}))
            .await
            .unwrap();
        assert_eq!(reply["history"]["publications"], json!([]));
        assert!(reply["history"]["epoch"].is_string());
    }

    #[tokio::test]
    async fn reverse_history_from_offset_zero_is_a_bad_request() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        let reply = client
            .call(
                2,
                "history",
                json!({"channel": "a", "reverse": true, "since": {"offset": 0, "epoch": ""}}),
            )
            .await
            .unwrap();
        assert_eq!(reply["error"]["code"], 107);
    }

    #[tokio::test]
    async fn without_permissions_queries_are_denied_but_subscribers_may_be_allowed() {
        let node = node(|config| {
            secured(config);
            config.channel.allow_subscribe_for_client = Some(true);
            config.channel.allow_history_for_subscriber = Some(true);
        });
        let mut client = TestClient::connected_as(&node, "ann").await;
        let reply = client
            .call(2, "presence", json!({"channel": "room"}))
            .await
            .unwrap();
        assert_eq!(reply["error"]["code"], 103);
        let reply = client
            .call(3, "history", json!({"channel": "room"}))
            .await
            .unwrap();
        assert_eq!(reply["error"]["code"], 103);
        client
            .call(4, "subscribe", json!({"channel": "room"}))
            .await
            .unwrap();
        let reply = client
            .call(5, "history", json!({"channel": "room"}))
            .await
            .unwrap();
        assert!(reply["history"].is_object(), "{reply}");
    }

    #[tokio::test]
    async fn history_answers_with_data_deeper_than_a_json_value_may_be() {
        let node = node(|_| {});
        let mut client = TestClient::connected(&node).await;
        let data = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let publish = format!("{{\"id\":2,\"publish\":{{\"channel\":\"deep\",\"data\":{data}}}}}");
        client
            .session
            .handle_frame(publish.as_bytes())
            .await
            .unwrap();
        while client.session.has_publishes_in_flight() {
            client.session.finish_publish().await;
        }
        let history = "{\"id\":3,\"history\":{\"channel\":\"deep\",\"limit\":-1}}";
        client
            .session
            .handle_frame(history.as_bytes())
            .await
            .unwrap();
        let lines = client.raw_lines();
        let history = lines
            .iter()
            .find(|l| l.starts_with("{\"id\":3"))
            .unwrap_or_else(|| panic!("no history reply in {lines:?}"));
        assert!(history.contains(&format!("\"data\":{data}")), "{history}");
    }
}

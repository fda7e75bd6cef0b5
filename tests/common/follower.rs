//! A subscriber that follows the protocol through faults, for the chaos tests: it records the
//! offsets it receives and, when told its stream broke, resubscribes (or reconnects) from its
//! position and takes the recovered publications.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Client, Event};

/// A subscriber that follows the protocol: it records offsets and, when told its stream broke,
/// resubscribes (or reconnects) from its position and takes the recovered publications.
pub struct Follower {
    url: String,
    client: Client,
    epoch: String,
    /// The highest offset received.
    pub last: u64,
    /// Every offset received, in the order received.
    pub seen: Vec<u64>,
    /// Times it was told its stream broke and recovered.
    pub recoveries: usize,
    /// A socket that ends without a close frame is a network fault to reconnect after (when the
    /// network between it and the server is the thing under test).
    pub reconnects_on_drop: bool,
}

impl Follower {
    pub async fn start(url: &str, channel: &str) -> Follower {
        let mut client = Client::open(url).await;
        client.connect(json!({})).await;
        let r = client.subscribe(channel).await;
        Follower {
            url: url.to_string(),
            client,
            epoch: r["subscribe"]["epoch"].as_str().unwrap().to_string(),
            last: r["subscribe"]["offset"].as_u64().unwrap_or(0),
            seen: Vec::new(),
            recoveries: 0,
            reconnects_on_drop: false,
        }
    }

    pub fn take(&mut self, publication: &Value) {
        let offset = publication["offset"].as_u64().unwrap();
        self.seen.push(offset);
        self.last = self.last.max(offset);
    }

    /// Resubscribes from the position on the current connection; panics if the server cannot
    /// recover it.
    pub async fn resubscribe(&mut self, channel: &str) {
        match self.try_resubscribe(channel).await {
            Ok(()) => {}
            Err(ended) => panic!("resubscribe: the connection ended: {ended:?}"),
        }
    }

    async fn try_resubscribe(&mut self, channel: &str) -> Result<(), Event> {
        let r = self
            .client
            .try_call(
                "subscribe",
                json!({"channel": channel, "recover": true, "offset": self.last, "epoch": self.epoch}),
            )
            .await?;
        assert!(r.get("error").is_none(), "resubscribe: {r}");
        assert_eq!(r["subscribe"]["recovered"], true, "recovered: {r}");
        self.recoveries += 1;
        for p in r["subscribe"]["publications"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            self.take(&p);
        }
        Ok(())
    }

    /// Opens a new connection and resubscribes from the position (an SDK's reconnect), trying
    /// again (at most 50 times, 200 ms apart) while the network keeps cutting it.
    pub async fn reconnect(&mut self, channel: &str) {
        for _ in 0..50 {
            if let Ok((ws, _)) = tokio_tungstenite::connect_async(self.url.as_str()).await {
                self.client = Client::from_ws(ws);
                let connected = self.client.try_call("connect", json!({})).await;
                if connected.is_ok() && self.try_resubscribe(channel).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("could not reconnect to {} in 50 attempts", self.url);
    }

    /// Follows until it has seen offset `until`, answering the server's pings as an SDK does.
    pub async fn follow(&mut self, channel: &str, until: u64) {
        while self.last < until {
            match self.client.next_event().await {
                Event::Message(m) if m.as_object().is_some_and(|o| o.is_empty()) => {
                    // A ping; if the connection is gone, the next event says so.
                    self.client.pong().await;
                }
                Event::Message(m) => {
                    let push = &m["push"];
                    if push.get("pub").is_some() {
                        self.take(&push["pub"]);
                    } else if push["unsubscribe"]["code"] == 2500 {
                        self.resubscribe(channel).await;
                    }
                }
                Event::Closed(code, _) if code < 3500 => self.reconnect(channel).await,
                Event::Dropped if self.reconnects_on_drop => self.reconnect(channel).await,
                other => panic!("the subscriber was dropped: {other:?}"),
            }
        }
    }
}

/// **durable**: a channel's history (a `history` API answer) holds every acknowledged
/// publication (`offset` → the `n` of its data), once, in offset order.
pub fn assert_durable(history: &Value, acked: &BTreeMap<u64, u64>) {
    let stored: Vec<(u64, u64)> = history["result"]["publications"]
        .as_array()
        .expect("a history answer")
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64)> = acked.iter().map(|(o, n)| (*o, *n)).collect();
    assert_eq!(stored, expected, "durable");
}

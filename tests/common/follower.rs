//! A subscriber that follows the protocol through faults, for the chaos tests: it records the
//! offsets it receives and, when told its stream broke, resubscribes (or reconnects) from its
//! position and takes the recovered publications.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::task::AbortOnDropHandle;

use super::{api_call, eventually, Client, Event};

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

    /// Keeps the connection up on a task of its own, answering the server's pings as an idle
    /// SDK client does (a follower nobody reads from would be disconnected for not answering),
    /// until the returned handle is dropped.
    pub fn stay_connected(mut self) -> AbortOnDropHandle<()> {
        AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                match self.client.next_event().await {
                    Event::Message(m) if m.as_object().is_some_and(|o| o.is_empty()) => {
                        self.client.pong().await;
                    }
                    Event::Message(_) => {}
                    _ => return,
                }
            }
        }))
    }

    /// **told, not lost** and **ordered**: follows `channel` (at most 30 s) up to the highest
    /// acknowledged offset, then checks it received every acknowledged publication, none twice
    /// or out of order. `name` says which subscriber failed.
    pub async fn assert_followed(&mut self, name: &str, channel: &str, acked: &BTreeMap<u64, u64>) {
        let top = *acked.keys().last().expect("publications were acknowledged");
        tokio::time::timeout(Duration::from_secs(30), self.follow(channel, top))
            .await
            .unwrap_or_else(|_| panic!("{name}: reached offset {} of {top}", self.last));
        assert!(
            self.seen.windows(2).all(|w| w[0] < w[1]),
            "{name}: twice or out of order: {:?}",
            self.seen
        );
        let missing: Vec<_> = acked.keys().filter(|o| !self.seen.contains(o)).collect();
        assert!(
            missing.is_empty(),
            "{name}: missing {missing:?}; received first {:?}, recovered {} times",
            &self.seen[..self.seen.len().min(8)],
            self.recoveries
        );
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

/// Numbered publications (`{"n": 1}`, `{"n": 2}`, …) to one channel through a node's API, one
/// every 10 ms, from a task of their own; what the API acknowledged is recorded by offset.
pub struct Numbered {
    /// Acknowledged publications: offset → `n`.
    pub acked: Arc<Mutex<BTreeMap<u64, u64>>>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What to do with a publication the API refuses.
#[derive(Clone, Copy)]
pub enum Refused {
    /// The test fails: the fault under test must never refuse one.
    Fail,
    /// Sent again every 100 ms (at most 300 times) until acknowledged, as a client would.
    Resend,
}

impl Numbered {
    /// Starts publishing `total` numbered publications to `channel` through the API at `addr`.
    pub fn start(addr: SocketAddr, channel: &str, total: u64, refused: Refused) -> Numbered {
        let acked: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
        let refusals = Arc::new(AtomicUsize::new(0));
        let task = {
            let (acked, refusals, channel) = (acked.clone(), refusals.clone(), channel.to_string());
            tokio::spawn(async move {
                for n in 1..=total {
                    let body = json!({"channel": channel, "data": {"n": n}}).to_string();
                    for attempt in 1.. {
                        assert!(attempt < 300, "publication {n} never acknowledged");
                        let (status, reply) = api_call(addr, "publish", &body, None).await;
                        if status == 200 && reply.get("error").is_none() {
                            let offset = reply["result"]["offset"].as_u64().unwrap();
                            acked.lock().unwrap().insert(offset, n);
                            break;
                        }
                        match refused {
                            Refused::Fail => panic!("publication {n} refused: {status} {reply}"),
                            Refused::Resend => {
                                refusals.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        Numbered {
            acked,
            refused: refusals,
            task,
        }
    }

    /// Waits (boundedly) until `count` publications are acknowledged.
    pub async fn wait_for(&self, count: usize) {
        assert!(
            eventually(|| async { self.acked.lock().unwrap().len() >= count }).await,
            "publishing started"
        );
    }

    /// Waits (at most 90 s) for every publication to be acknowledged; returns them (offset →
    /// `n`) and how many times the API refused one.
    pub async fn finish(self) -> (BTreeMap<u64, u64>, usize) {
        tokio::time::timeout(Duration::from_secs(90), self.task)
            .await
            .expect("publishing ended")
            .unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.refused.load(Ordering::SeqCst))
    }
}

/// **durable** where a refused publication may still have been stored (an outage answers 108
/// without knowing): the history (a `history` API answer) holds every acknowledged publication
/// at its offset, with its data.
pub fn assert_kept(history: &Value, acked: &BTreeMap<u64, u64>) {
    let stored: BTreeMap<u64, u64> = history["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("a history: {history}"))
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    for (offset, n) in acked {
        assert_eq!(stored.get(offset), Some(n), "durable: offset {offset}");
    }
}

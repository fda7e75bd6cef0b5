//! The command rate limit: each client's commands pass a token bucket; a client refused a whole
//! burst's worth in a row is flooding and is disconnected.

use tokio::time::Instant;

use super::Session;
use crate::protocol::{error_code, Disconnect, Error};
use crate::ratelimit::TokenBucket;

/// Admits client commands through a token bucket, and spots clients that keep flooding.
#[derive(Debug)]
pub(super) struct RateLimiter {
    bucket: TokenBucket,
    /// Commands refused since the last one admitted.
    refused: u32,
}

/// What the limiter says of one command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    Admit,
    /// Refuse this command (error 111).
    Refuse,
    /// The client keeps flooding: disconnect it.
    Flooding,
}

impl RateLimiter {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            bucket: TokenBucket::new(rate, burst),
            refused: 0,
        }
    }

    pub(super) fn admit(&mut self) -> Admission {
        if self.bucket.take(Instant::now().into_std()) {
            self.refused = 0;
            return Admission::Admit;
        }
        self.refused += 1;
        // A client that goes on sending a full burst's worth after being refused is flooding.
        if f64::from(self.refused) > self.bucket.burst() {
            Admission::Flooding
        } else {
            Admission::Refuse
        }
    }
}

impl Session {
    /// Passes command `id` through the rate limit: whether it may run. A refused command is
    /// answered with error 111 (after the publishes in flight, to keep replies in order); a
    /// flooding client is disconnected.
    pub(super) async fn admit(&mut self, id: u32) -> Result<bool, Disconnect> {
        match self.limiter.admit() {
            Admission::Admit => Ok(true),
            Admission::Refuse => {
                self.finish_publishes().await;
                if id != 0 {
                    self.reply(id, Err(Error::new(error_code::TOO_MANY_REQUESTS)));
                }
                Ok(false)
            }
            Admission::Flooding => Err(Disconnect::TOO_MANY_REQUESTS),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{node, TestClient};
    use super::*;

    #[test]
    fn admits_a_burst_then_refuses_then_calls_it_flooding() {
        // One command a second refills nothing within the test's microseconds.
        let mut limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.admit(), Admission::Admit);
        }
        for _ in 0..3 {
            assert_eq!(limiter.admit(), Admission::Refuse);
        }
        assert_eq!(limiter.admit(), Admission::Flooding);
    }

    #[tokio::test]
    async fn a_session_over_its_rate_gets_111_then_is_disconnected() {
        let node = node(|config| {
            config.client_command_rate = 1;
            config.client_command_burst = 2;
        });
        // `connect` is not counted; the two pings are the burst.
        let mut client = TestClient::connected(&node).await;
        let pings: Vec<_> = (2..6).map(|id| json!({"id": id, "ping": {}})).collect();
        client.send(&pings).await.unwrap();
        let codes: Vec<_> = client
            .messages()
            .iter()
            .map(|m| m["error"]["code"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(codes, [0, 0, 111, 111]);
        let outcome = client.send(&[json!({"id": 6, "ping": {}})]).await;
        assert_eq!(outcome.unwrap_err().code, 3013);
    }
}

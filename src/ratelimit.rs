//! Rate limits: a token bucket, and per-IP buckets for new connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Admits events at `rate` per second with a burst of `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of 0 admits everything.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The burst size.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    fn idle_since(&self) -> Instant {
        self.last
    }
}

/// One bucket per client IP address, for new connections.
#[derive(Debug)]
pub struct PerIpLimiter {
    rate: u32,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

/// Buckets kept before idle ones are pruned.
const PRUNE_ABOVE: usize = 10_000;

impl PerIpLimiter {
    /// `rate` new connections per second per address, with a burst of twice that (0: no limit).
    pub fn new(rate: u32) -> Self {
        PerIpLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may open one more connection now.
    pub fn admit(&self, ip: IpAddr) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            // A bucket idle this long is full again: forgetting it changes nothing.
            let full_after = Duration::from_secs(2);
            buckets.retain(|_, b| now.saturating_duration_since(b.idle_since()) < full_after);
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.rate, self.rate.saturating_mul(2)))
            .take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_admits_burst_then_rate() {
        let mut b = TokenBucket::new(10, 3);
        let t = Instant::now();
        assert!(b.take(t) && b.take(t) && b.take(t));
        assert!(!b.take(t));
        assert!(b.take(t + Duration::from_millis(100)));
        assert!(!b.take(t + Duration::from_millis(100)));
    }

    #[test]
    fn per_ip_buckets_are_separate() {
        let l = PerIpLimiter::new(1);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(l.admit(a) && l.admit(a));
        assert!(!l.admit(a));
        assert!(l.admit(b));
    }
}

//! Recently sent idempotency keys, so a message re-delivered by Kafka (a
//! rebalance, a retry upstream) is not sent a second time by this instance.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// A bounded set of keys with a time to live; the oldest are forgotten first.
pub struct RecentSends {
    keys: DashMap<String, Instant>,
    order: Mutex<VecDeque<String>>,
    capacity: usize,
    ttl: Duration,
}

impl RecentSends {
    /// Holds at most `capacity` keys, each for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> RecentSends {
        RecentSends {
            keys: DashMap::new(),
            order: Mutex::new(VecDeque::new()),
            capacity,
            ttl,
        }
    }

    /// True the first time a key is seen (within its TTL); false for a repeat.
    pub fn first_time(&self, key: &str) -> bool {
        let now = Instant::now();
        if let Some(seen) = self.keys.get(key) {
            if now.duration_since(*seen) < self.ttl {
                return false;
            }
        }
        self.keys.insert(key.to_string(), now);
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        order.push_back(key.to_string());
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }

    /// Forgets a key whose send failed, so a later redelivery may try again.
    pub fn forget(&self, key: &str) {
        self.keys.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_caught_and_capacity_is_bounded() {
        let r = RecentSends::new(2, Duration::from_secs(60));
        assert!(r.first_time("a"));
        assert!(!r.first_time("a"));
        assert!(r.first_time("b"));
        assert!(r.first_time("c"));
        assert!(r.first_time("a"), "oldest key was evicted");
        r.forget("c");
        assert!(r.first_time("c"));
    }
}

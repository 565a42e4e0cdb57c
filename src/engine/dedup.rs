//! Recently sent idempotency keys, so a message re-delivered by Kafka (a
//! rebalance, a retry upstream, a restart after a crash) is not sent twice.
//!
//! At start the set is seeded from the tail of the outcomes topic, so the
//! events re-delivered after a crash (those past the last committed offset)
//! find their earlier sends.

use crate::util::FastDashMap;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded set of keys with a time to live; the oldest are forgotten first.
pub struct RecentSends {
    keys: FastDashMap<String, Instant>,
    order: Mutex<VecDeque<String>>,
    capacity: usize,
    ttl: Duration,
}

impl RecentSends {
    /// Holds at most `capacity` keys, each for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> RecentSends {
        RecentSends {
            keys: FastDashMap::default(),
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

    /// Seeds the set from the last `per_partition` records of each partition of
    /// the outcomes topic: every `sent` outcome's key. Returns how many were
    /// seeded. Blocking; run it off the async threads.
    pub fn seed_from_outcomes(
        &self,
        client: &rdkafka::ClientConfig,
        topic: &str,
        per_partition: i64,
    ) -> Result<usize, String> {
        #[derive(serde::Deserialize)]
        struct Seen<'a> {
            status: &'a str,
            idempotency_key: &'a str,
        }
        let records = crate::kafka::follow::read_back(
            client,
            topic,
            crate::kafka::follow::ReadFrom::Last(per_partition),
            i64::MAX,
            Duration::from_secs(30),
        )?;
        let mut seeded = 0;
        for r in &records {
            if let Ok(seen) = serde_json::from_slice::<Seen<'_>>(&r.payload) {
                if seen.status == "sent" && !seen.idempotency_key.is_empty() {
                    self.first_time(seen.idempotency_key);
                    seeded += 1;
                }
            }
        }
        Ok(seeded)
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

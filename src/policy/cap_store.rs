//! Frequency caps: per user, rolling windows, counted on sends actually made.
//!
//! A send reserves its place before the request and gives it back if the send
//! fails, so two lanes sending to one user at once cannot both slip past a cap.

use crate::util::FastDashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::policy::Cap;

/// Longest window any cap can have (a week); older sends are forgotten.
const HORIZON_MS: i64 = 604_800_000;
/// Most sends remembered per user; the oldest go first.
const PER_USER: usize = 512;

struct Sent {
    id: u64,
    at_ms: i64,
    category: Arc<str>,
    rule: Arc<str>,
}

/// Which cap stopped a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapHit {
    /// Across all categories.
    All(Cap),
    Category(String, Cap),
    Rule(String, Cap),
}

/// The caps that apply to one send.
pub struct Limits<'a> {
    pub global: &'a [Cap],
    pub category: &'a [Cap],
    pub rule: &'a [Cap],
}

/// A reserved place under the caps; give it back with [`FrequencyCaps::release`] if the send fails.
#[derive(Debug, Clone)]
pub struct Reservation {
    user: String,
    id: u64,
}

/// Recent sends per user.
#[derive(Default)]
pub struct FrequencyCaps {
    users: FastDashMap<String, VecDeque<Sent>>,
    next_id: AtomicU64,
}

impl FrequencyCaps {
    /// Checks every cap and, when all allow it, reserves a place for this send.
    pub fn reserve(
        &self,
        user: &str,
        category: &str,
        rule: &str,
        limits: &Limits<'_>,
        now_ms: i64,
    ) -> Result<Reservation, CapHit> {
        let mut sent = self.users.entry(user.to_string()).or_default();
        while sent.front().is_some_and(|s| s.at_ms <= now_ms - HORIZON_MS) {
            sent.pop_front();
        }
        let within = |cap: &Cap, keep: &dyn Fn(&Sent) -> bool| {
            let since = now_ms - (cap.window_s as i64) * 1000;
            sent.iter().filter(|s| s.at_ms > since && keep(s)).count() as u32
        };
        for cap in limits.global {
            if within(cap, &|_| true) >= cap.count {
                return Err(CapHit::All(*cap));
            }
        }
        for cap in limits.category {
            if within(cap, &|s| &*s.category == category) >= cap.count {
                return Err(CapHit::Category(category.to_string(), *cap));
            }
        }
        for cap in limits.rule {
            if within(cap, &|s| &*s.rule == rule) >= cap.count {
                return Err(CapHit::Rule(rule.to_string(), *cap));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        sent.push_back(Sent {
            id,
            at_ms: now_ms,
            category: Arc::from(category),
            rule: Arc::from(rule),
        });
        if sent.len() > PER_USER {
            sent.pop_front();
        }
        Ok(Reservation {
            user: user.to_string(),
            id,
        })
    }

    /// Counts a send made before this process knew the user (restored from
    /// the send ledger when the user's partition was assigned).
    pub fn remember(&self, user: &str, category: &str, rule: &str, at_ms: i64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sent = self.users.entry(user.to_string()).or_default();
        let at = sent.partition_point(|s| s.at_ms <= at_ms);
        sent.insert(
            at,
            Sent {
                id,
                at_ms,
                category: Arc::from(category),
                rule: Arc::from(rule),
            },
        );
        if sent.len() > PER_USER {
            sent.pop_front();
        }
    }

    /// Forgets a user whose partition moved to another instance.
    pub fn forget(&self, user: &str) {
        self.users.remove(user);
    }

    /// Gives back a reservation whose send did not happen.
    pub fn release(&self, reservation: &Reservation) {
        if let Some(mut sent) = self.users.get_mut(&reservation.user) {
            sent.retain(|s| s.id != reservation.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn caps(list: &[&str]) -> Vec<Cap> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn caps_hold_at_their_exact_boundary() {
        let f = FrequencyCaps::default();
        let (global, category) = (caps(&["20/day"]), caps(&["3/day", "1/hour"]));
        let limits = Limits {
            global: &global,
            category: &category,
            rule: &[],
        };
        let t0 = 1_795_514_400_000;
        assert!(f.reserve("u", "marketing", "r", &limits, t0).is_ok());
        // One an hour: refused until a whole hour has passed, allowed from then.
        assert_eq!(
            f.reserve("u", "marketing", "r", &limits, t0 + HOUR - 1)
                .unwrap_err(),
            CapHit::Category("marketing".into(), "1/hour".parse().unwrap())
        );
        assert!(f.reserve("u", "marketing", "r", &limits, t0 + HOUR).is_ok());
        assert!(f
            .reserve("u", "marketing", "r", &limits, t0 + 2 * HOUR + 2)
            .is_ok());
        // Three a day: the fourth within 24 h is refused, also after an hour.
        let hit = f
            .reserve("u", "marketing", "r", &limits, t0 + 3 * HOUR + 3)
            .unwrap_err();
        assert_eq!(
            hit,
            CapHit::Category("marketing".into(), "3/day".parse().unwrap())
        );
        // 24 h after the first send, one place is free again; a moment before, not.
        assert!(f
            .reserve("u", "marketing", "r", &limits, t0 + 24 * HOUR - 1)
            .is_err());
        assert!(f
            .reserve("u", "marketing", "r", &limits, t0 + 24 * HOUR)
            .is_ok());
        // Other users and other categories are not affected.
        assert!(f
            .reserve("v", "marketing", "r", &limits, t0 + 3 * HOUR)
            .is_ok());
        assert!(f
            .reserve(
                "u",
                "offers",
                "r",
                &Limits {
                    global: &global,
                    category: &[],
                    rule: &[]
                },
                t0 + 3 * HOUR
            )
            .is_ok());
    }

    #[test]
    fn remembered_sends_count_until_the_user_is_forgotten() {
        let f = FrequencyCaps::default();
        let daily = caps(&["2/day"]);
        let limits = Limits {
            global: &daily,
            category: &[],
            rule: &[],
        };
        let t0 = 1_795_514_400_000;
        f.remember("u", "marketing", "r", t0 + 10);
        f.remember("u", "marketing", "r", t0);
        assert_eq!(
            f.reserve("u", "marketing", "r", &limits, t0 + HOUR)
                .unwrap_err(),
            CapHit::All(daily[0]),
            "two sends restored from the ledger fill a 2/day cap"
        );
        f.forget("u");
        assert!(f.reserve("u", "marketing", "r", &limits, t0 + HOUR).is_ok());
    }

    #[test]
    fn global_and_rule_caps_and_release() {
        let f = FrequencyCaps::default();
        let (global, rule) = (caps(&["2/day"]), caps(&["1/week"]));
        let t0 = 1_795_514_400_000;
        let limits = Limits {
            global: &global,
            category: &[],
            rule: &rule,
        };
        let first = f.reserve("u", "a", "r1", &limits, t0).unwrap();
        assert_eq!(
            f.reserve("u", "b", "r1", &limits, t0 + 1).unwrap_err(),
            CapHit::Rule("r1".into(), rule[0])
        );
        f.release(&first);
        assert!(
            f.reserve("u", "b", "r1", &limits, t0 + 2).is_ok(),
            "a failed send does not count"
        );
        assert!(f.reserve("u", "b", "r2", &limits, t0 + 3).is_ok());
        assert_eq!(
            f.reserve("u", "c", "r3", &limits, t0 + 4).unwrap_err(),
            CapHit::All(global[0])
        );
    }
}

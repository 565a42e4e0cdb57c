//! Frequency caps: per user, rolling windows, counted on sends actually made.
//!
//! A send reserves its place before the request and gives it back if the send
//! fails, so two lanes sending to one user at once cannot both slip past a cap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::policy::Cap;
use crate::state::CountedSend;

/// Longest window any cap can have (a week); older sends are forgotten.
pub const HORIZON_MS: i64 = 604_800_000;
/// Most sends remembered per user; the oldest go first.
const PER_USER: usize = 512;

struct Sent {
    id: u64,
    at_ms: i64,
    category: Arc<str>,
    rule: Arc<str>,
    /// Whether the send ledger holds it yet (as `attempted`): until then
    /// the reservation lives here only, and the user's history stays in
    /// the cache.
    recorded: bool,
}

/// A user's recent sends.
type History = Arc<Mutex<VecDeque<Sent>>>;

/// Where a user's history comes from when the cache does not hold it:
/// the send ledger's sends since a time.
pub type Source = Arc<dyn Fn(&str, i64) -> Vec<CountedSend> + Send + Sync>;

/// Keeps a history with a reservation the ledger does not hold yet.
#[derive(Clone)]
struct PinUnrecorded;

impl quick_cache::Lifecycle<String, History> for PinUnrecorded {
    type RequestState = ();
    fn is_pinned(&self, _: &String, history: &History) -> bool {
        lock(history).iter().any(|s| !s.recorded)
    }
    fn on_evict(&self, _: &mut (), _: String, _: History) {}
}

fn lock(history: &History) -> std::sync::MutexGuard<'_, VecDeque<Sent>> {
    history.lock().unwrap_or_else(|p| p.into_inner())
}

type Cache = quick_cache::sync::Cache<
    String,
    History,
    quick_cache::UnitWeighter,
    quick_cache::DefaultHashBuilder,
    PinUnrecorded,
>;

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

/// The send a reservation is asked for.
#[derive(Clone, Copy)]
struct Asked<'a> {
    category: &'a str,
    rule: &'a str,
    limits: &'a Limits<'a>,
    now_ms: i64,
}

/// A reserved place under the caps; give it back with [`FrequencyCaps::release`] if the send fails.
#[derive(Debug, Clone)]
pub struct Reservation {
    user: String,
    id: u64,
}

/// Recent sends per user: a cache in front of the send ledger, bounded by
/// users (in service), or everything in memory (the offline tools).
pub struct FrequencyCaps {
    users: Cache,
    source: Option<Source>,
    next_id: AtomicU64,
}

impl Default for FrequencyCaps {
    /// Every user's history in memory, with nothing behind it.
    fn default() -> Self {
        FrequencyCaps::with(u64::MAX, None)
    }
}

impl FrequencyCaps {
    /// At most `users` histories in memory; a user's is read from `source`
    /// (the send ledger) when it is not.
    pub fn cached(users: usize, source: Source) -> FrequencyCaps {
        FrequencyCaps::with(users.max(1) as u64, Some(source))
    }

    fn with(capacity: u64, source: Option<Source>) -> FrequencyCaps {
        FrequencyCaps {
            users: Cache::with(
                capacity.min(65_536) as usize,
                capacity,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                PinUnrecorded,
            ),
            source,
            next_id: AtomicU64::new(0),
        }
    }

    /// A user's history as the ledger has it.
    fn load(&self, user: &str, now_ms: i64) -> VecDeque<Sent> {
        let sends = self
            .source
            .as_ref()
            .map(|source| source(user, now_ms - HORIZON_MS))
            .unwrap_or_default();
        let skip = sends.len().saturating_sub(PER_USER);
        sends
            .into_iter()
            .skip(skip)
            .map(|s| Sent {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                at_ms: s.at_ms,
                category: s.category,
                rule: s.rule,
                recorded: true,
            })
            .collect()
    }

    /// Checks every cap and, when all allow it, reserves a place for this send.
    pub fn reserve(
        &self,
        user: &str,
        category: &str,
        rule: &str,
        limits: &Limits<'_>,
        now_ms: i64,
    ) -> Result<Reservation, CapHit> {
        let send = Asked {
            category,
            rule,
            limits,
            now_ms,
        };
        match self.users.get_value_or_guard(user, None) {
            quick_cache::sync::GuardResult::Value(history) => {
                self.take(user, &mut lock(&history), &send)
            }
            quick_cache::sync::GuardResult::Guard(guard) => {
                // Reserved before the history is cached, so that it enters
                // the cache pinned by its reservation.
                let mut sent = self.load(user, now_ms);
                let taken = self.take(user, &mut sent, &send);
                let _ = guard.insert(Arc::new(Mutex::new(sent)));
                taken
            }
            quick_cache::sync::GuardResult::Timeout => unreachable!("no timeout given"),
        }
    }

    fn take(
        &self,
        user: &str,
        sent: &mut VecDeque<Sent>,
        send: &Asked<'_>,
    ) -> Result<Reservation, CapHit> {
        let Asked {
            category,
            rule,
            limits,
            now_ms,
        } = *send;
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
            recorded: self.source.is_none(),
        });
        if sent.len() > PER_USER {
            sent.pop_front();
        }
        Ok(Reservation {
            user: user.to_string(),
            id,
        })
    }

    /// Says that the send ledger now holds the reservation's send (as
    /// `attempted`): the user's history may leave the cache, to be read
    /// back from the ledger.
    pub fn recorded(&self, reservation: &Reservation) {
        if let Some(history) = self.users.get(&reservation.user) {
            if let Some(s) = lock(&history).iter_mut().find(|s| s.id == reservation.id) {
                s.recorded = true;
            }
        }
    }

    /// Forgets the users `moved` says moved to another instance.
    pub fn forget_where(&self, moved: impl Fn(&str) -> bool) {
        self.users.retain(|user, _| !moved(user));
    }

    /// Gives back a reservation whose send did not happen.
    pub fn release(&self, reservation: &Reservation) {
        if let Some(history) = self.users.get(&reservation.user) {
            lock(&history).retain(|s| s.id != reservation.id);
        }
    }

    /// Users whose history is in memory now.
    pub fn cached_users(&self) -> usize {
        self.users.len()
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
    fn a_history_is_read_from_the_ledger_and_a_reservation_stays_until_recorded() {
        let t0 = 1_795_514_400_000;
        let source: Source = Arc::new(move |user: &str, since: i64| {
            let send = |at_ms| CountedSend {
                at_ms,
                category: "marketing".into(),
                rule: "r".into(),
            };
            match user {
                "u" => vec![send(t0), send(t0 + 10)],
                _ => Vec::new(),
            }
            .into_iter()
            .filter(|s| s.at_ms >= since)
            .collect()
        });
        let f = FrequencyCaps::cached(1, source);
        let daily = caps(&["2/day"]);
        let limits = Limits {
            global: &daily,
            category: &[],
            rule: &[],
        };
        assert_eq!(
            f.reserve("u", "marketing", "r", &limits, t0 + HOUR)
                .unwrap_err(),
            CapHit::All(daily[0]),
            "two sends read from the ledger fill a 2/day cap"
        );
        // One user fits: v's reservation, not in the ledger yet, keeps v's
        // history in memory while u's is read again from the ledger.
        let first = f.reserve("v", "marketing", "r", &limits, t0).unwrap();
        assert!(f
            .reserve("u", "marketing", "r", &limits, t0 + HOUR)
            .is_err());
        assert!(f.reserve("v", "marketing", "r", &limits, t0 + 1).is_ok());
        assert!(
            f.reserve("v", "marketing", "r", &limits, t0 + 2).is_err(),
            "both of v's reservations still count"
        );
        f.recorded(&first);
        f.forget_where(|user| user == "v");
        assert!(
            f.reserve("v", "marketing", "r", &limits, t0 + 3).is_ok(),
            "forgotten, v's history is the ledger's (empty here)"
        );
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

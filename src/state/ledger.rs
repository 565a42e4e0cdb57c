//! The send ledger: every stage-2 decision by intent and channel, kept per
//! intents partition and written to its changelog, so a redelivered intent
//! is recognised by whoever owns its user now, a send in flight at a crash
//! is found, and frequency caps count the sends made before a restart.
//!
//! A send is recorded `attempted` (and that record acknowledged by the
//! broker) before the provider request, then `sent` or `failed`. An entry
//! still `attempted` when a new owner restores it is a request whose answer
//! nobody heard: the channel's `on_unknown` decides whether it is repeated.

use crate::util::FastDashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::changelog::{Changelog, RestoreError};
use crate::outcome::Pending;

/// Entries older than this are forgotten (the longest cap window is a week;
/// the changelog topic deletes what is older than this, too).
pub const HORIZON_MS: i64 = 8 * 24 * 3_600_000;

/// Where a decision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerStatus {
    /// The provider request is about to go out, or went out unanswered.
    Attempted,
    Sent,
    Failed,
    Suppressed,
    /// Held for quiet hours or a delivery receipt; its release decides again.
    Held,
}

/// One decision of one intent on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub user: Arc<str>,
    pub status: LedgerStatus,
    /// When it was decided (for `attempted`: when the request was made), epoch ms.
    pub at_ms: i64,
    pub category: Arc<str>,
    pub rule: Arc<str>,
    /// The decision's idempotency key (a hash; empty when it was suppressed
    /// before an address was chosen), for the outcome of a redelivery.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub idempotency_key: Arc<str>,
}

impl LedgerEntry {
    /// Whether frequency caps count it: a send made, or one that may have been.
    pub fn counts_for_caps(&self) -> bool {
        matches!(self.status, LedgerStatus::Sent | LedgerStatus::Attempted)
    }
}

/// What the ledger knows of an intent on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never decided: decide it.
    New,
    /// Decided already (sent, failed, suppressed): a redelivery.
    Decided(LedgerStatus),
    /// Held; only its release may decide it again.
    Held,
    /// Recorded `attempted` by an owner that never recorded the answer.
    InFlight,
}

/// The ledger of the intents partitions this instance owns.
pub struct SendLedger {
    partitions: i32,
    changelog: Changelog,
    entries: FastDashMap<String, LedgerEntry>,
    /// When `entries` may have passed `capacity`.
    size: crate::util::SizeWatch,
    /// Users per owned partition, to drop them on revoke.
    users: FastDashMap<i32, HashSet<String>>,
    /// Most entries held before the oldest are evicted.
    capacity: usize,
    /// Entries evicted so far (for `herald_ledger_evicted_total`).
    evicted: std::sync::atomic::AtomicU64,
}

impl SendLedger {
    /// A ledger over `partitions` intents partitions, written to `changelog`.
    pub fn new(partitions: i32, changelog: Changelog, capacity: usize) -> SendLedger {
        SendLedger {
            partitions: partitions.max(1),
            changelog,
            entries: FastDashMap::default(),
            size: crate::util::SizeWatch::default(),
            users: FastDashMap::default(),
            capacity,
            evicted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The intents partition (and changelog partition) of `user`.
    pub fn partition_of(&self, user: &str) -> i32 {
        super::partition_for(user.as_bytes(), self.partitions)
    }

    /// How many intents partitions there are.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The changelog topic ("" offline).
    pub fn topic(&self) -> &str {
        &self.changelog.topic
    }

    /// The idempotency key recorded for `key`, if any.
    pub fn idempotency_key(&self, key: &str) -> Option<Arc<str>> {
        self.entries
            .get(key)
            .map(|e| e.idempotency_key.clone())
            .filter(|k| !k.is_empty())
    }

    /// What is known of `key` (intent id and channel).
    pub fn seen(&self, key: &str) -> Seen {
        match self.entries.get(key).map(|e| e.status) {
            None => Seen::New,
            Some(LedgerStatus::Attempted) => Seen::InFlight,
            Some(LedgerStatus::Held) => Seen::Held,
            Some(s) => Seen::Decided(s),
        }
    }

    /// Records a decision; the returned write resolves once the changelog has
    /// it (`None` offline).
    pub fn record(&self, key: &str, entry: LedgerEntry) -> Option<Pending> {
        let partition = self.partition_of(&entry.user);
        // Offline (replays, rule tests) there is no changelog to write to.
        let value = self
            .changelog
            .is_durable()
            .then(|| crate::util::json_bytes(&entry));
        let mut users = self.users.entry(partition).or_default();
        if !users.contains(&*entry.user) {
            users.insert(entry.user.to_string());
        }
        drop(users);
        // A send's final entry replaces its `attempted` one under the same
        // key, which is then not copied again.
        match self.entries.get_mut(key) {
            Some(mut known) => *known = entry,
            None => {
                self.entries.insert(key.to_string(), entry);
                if self.size.grew_past(self.capacity) {
                    self.bound();
                }
            }
        }
        self.changelog.write(partition, key, value)
    }

    /// Evicts the oldest tenth when over capacity, with a log line; the
    /// caller counts it.
    fn bound(&self) -> usize {
        let len = self.entries.len();
        self.size.counted(len);
        if len <= self.capacity {
            return 0;
        }
        let mut ages: Vec<(i64, String)> = self
            .entries
            .iter()
            .map(|e| (e.at_ms, e.key().clone()))
            .collect();
        ages.sort_unstable();
        let n = (self.capacity / 10).max(1).min(ages.len());
        for (_, key) in &ages[..n] {
            self.entries.remove(key);
        }
        self.size.counted(self.entries.len());
        warn!(evicted = n, cap = self.capacity, "send ledger full; oldest entries evicted (a redelivery of those intents would be decided again)");
        self.evicted
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        n
    }

    /// Reads the changelog of `partitions` to its end. Returns, besides the
    /// counts, the entries caps must count (sends made or attempted), oldest
    /// first.
    pub fn restore(
        &self,
        partitions: &[i32],
        now_ms: i64,
        patience: Duration,
    ) -> Result<Restored, RestoreError> {
        let mut restored = Restored::default();
        let mut all_users = HashSet::new();
        for (partition, changes) in self.changelog.restore_all(partitions, patience)? {
            let users = self.apply(changes, now_ms, &mut restored);
            all_users.extend(users.iter().cloned());
            self.users.entry(partition).or_default().extend(users);
        }
        for e in self.entries.iter() {
            if all_users.contains(&*e.user) {
                if e.status == LedgerStatus::Attempted {
                    restored.in_flight += 1;
                }
                if e.counts_for_caps() {
                    restored.sends.push(e.value().clone());
                }
            }
        }
        restored.sends.sort_by_key(|e| e.at_ms);
        restored.users = all_users.len();
        self.size.counted(self.entries.len());
        Ok(restored)
    }

    /// Applies one partition's changelog records; returns its users.
    fn apply(
        &self,
        changes: Vec<super::Change>,
        now_ms: i64,
        restored: &mut Restored,
    ) -> HashSet<String> {
        let mut users = HashSet::new();
        for change in changes {
            restored.records += 1;
            let Some(value) = change.value else {
                self.entries.remove(&change.key);
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<LedgerEntry>(&value) else {
                restored.unreadable += 1;
                continue;
            };
            if now_ms - entry.at_ms > HORIZON_MS {
                continue;
            }
            users.insert(entry.user.to_string());
            self.entries.insert(change.key, entry);
        }
        users
    }

    /// Forgets a revoked partition; returns its users (for the caps).
    pub fn drop_partition(&self, partition: i32) -> HashSet<String> {
        let users = self
            .users
            .remove(&partition)
            .map(|(_, u)| u)
            .unwrap_or_default();
        self.entries.retain(|_, e| !users.contains(&*e.user));
        users
    }

    /// Forgets entries past the horizon.
    pub fn sweep(&self, now_ms: i64) {
        self.entries.retain(|_, e| now_ms - e.at_ms <= HORIZON_MS);
    }

    /// Entries evicted at the capacity since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a restore read.
#[derive(Debug, Default)]
pub struct Restored {
    /// Changelog records read.
    pub records: usize,
    /// Records that were not ledger entries (skipped, counted).
    pub unreadable: usize,
    /// Users with entries.
    pub users: usize,
    /// Entries left `attempted`: requests in flight when the last owner stopped.
    pub in_flight: usize,
    /// Sends the caps must count, oldest first.
    pub sends: Vec<LedgerEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, status: LedgerStatus, at_ms: i64) -> LedgerEntry {
        LedgerEntry {
            user: user.into(),
            status,
            at_ms,
            category: "marketing".into(),
            rule: "offer".into(),
            idempotency_key: "".into(),
        }
    }

    #[test]
    fn a_decision_is_seen_again_and_a_held_one_waits_for_its_release() {
        let l = SendLedger::new(4, Changelog::offline(), 100);
        assert_eq!(l.seen("i1/push"), Seen::New);
        assert!(l
            .record("i1/push", entry("u", LedgerStatus::Attempted, 1))
            .is_none());
        assert_eq!(l.seen("i1/push"), Seen::InFlight);
        l.record("i1/push", entry("u", LedgerStatus::Sent, 2));
        assert_eq!(l.seen("i1/push"), Seen::Decided(LedgerStatus::Sent));
        l.record("i2/sms", entry("u", LedgerStatus::Held, 3));
        assert_eq!(l.seen("i2/sms"), Seen::Held);
        assert_eq!(l.seen("i1/sms"), Seen::New, "per channel");
    }

    #[test]
    fn a_revoked_partition_is_forgotten_with_its_users_only() {
        let l = SendLedger::new(8, Changelog::offline(), 100);
        let (a, b) = ("alice", "bob");
        assert_ne!(
            l.partition_of(a),
            l.partition_of(b),
            "pick users on two partitions"
        );
        l.record("i1/push", entry(a, LedgerStatus::Sent, 1));
        l.record("i2/push", entry(b, LedgerStatus::Sent, 1));
        let gone = l.drop_partition(l.partition_of(a));
        assert_eq!(gone, HashSet::from([a.to_string()]));
        assert_eq!(l.seen("i1/push"), Seen::New);
        assert_eq!(l.seen("i2/push"), Seen::Decided(LedgerStatus::Sent));
    }

    #[test]
    fn bounded_and_swept() {
        let l = SendLedger::new(1, Changelog::offline(), 10);
        for i in 0..11 {
            l.record(&format!("i{i}/push"), entry("u", LedgerStatus::Sent, i));
        }
        assert_eq!(l.len(), 10, "the oldest was evicted");
        assert_eq!(l.seen("i0/push"), Seen::New);
        l.sweep(HORIZON_MS + 5);
        assert_eq!(
            l.len(),
            6,
            "entries at 1..=4 are past the horizon, 5..=10 not"
        );
    }
}

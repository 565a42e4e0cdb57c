//! The send ledger: every stage-2 decision by intent and channel, kept per
//! intents partition and written to its changelog, so a redelivered intent
//! is recognised by whoever owns its user now, a send in flight at a crash
//! is found, and frequency caps count the sends made before a restart.
//!
//! A send is recorded `attempted` (and that record acknowledged by the
//! broker) before the provider request, then `sent` or `failed`. An entry
//! still `attempted` when a new owner restores it is a request whose answer
//! nobody heard: the channel's `on_unknown` decides whether it is repeated.
//!
//! In service the entries are on local disk (`ledger_store.rs`), every one
//! kept for eight days whatever the volume; offline, in memory.

use crate::util::FastDashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::changelog::Changelog;
pub use super::ledger_entry::{LedgerEntry, LedgerStatus, Replacing, Restored, HORIZON_MS};
use super::ledger_store::{CountedSend, DiskLedger, LedgerRestoreError};
use crate::outcome::Pending;
use crate::store::Table;

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

impl Seen {
    /// What `entry` (the ledger's, if any) says of its intent.
    pub fn of(entry: Option<&LedgerEntry>) -> Seen {
        match entry.map(|e| e.status) {
            None => Seen::New,
            Some(LedgerStatus::Attempted) => Seen::InFlight,
            Some(LedgerStatus::Held) => Seen::Held,
            Some(s) => Seen::Decided(s),
        }
    }
}

/// The ledger of the intents partitions this instance owns.
pub struct SendLedger {
    partitions: i32,
    changelog: Changelog,
    rows: Rows,
    /// When the last sweep ran (epoch ms; `i64::MIN`: none yet).
    swept_ms: std::sync::atomic::AtomicI64,
}

/// How often the entries past the horizon are removed: a sweep reads the
/// whole table, and an entry a little past eight days harms nothing (caps
/// count by time).
pub const SWEEP_EVERY_MS: i64 = 3_600_000;

/// Where the entries are.
enum Rows {
    /// On local disk, mirrored from the changelog (in service).
    Disk(Arc<DiskLedger>),
    /// In memory, with no changelog (rule tests, replays): nothing to
    /// restore, nothing revoked.
    Memory(FastDashMap<String, LedgerEntry>),
}

impl SendLedger {
    /// A ledger over `partitions` intents partitions, written to
    /// `changelog` and kept in `table` on disk; in memory when there is no
    /// changelog (offline).
    pub fn new(partitions: i32, changelog: Changelog, table: Option<Table>) -> SendLedger {
        let rows = match table {
            Some(table) if changelog.is_durable() => Rows::Disk(Arc::new(DiskLedger::new(table))),
            _ => Rows::Memory(FastDashMap::default()),
        };
        SendLedger {
            partitions: partitions.max(1),
            changelog,
            rows,
            swept_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
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

    /// The entry of `key` (intent id and channel) of `user`, if any.
    pub fn entry(&self, user: &str, key: &str) -> Option<LedgerEntry> {
        match &self.rows {
            Rows::Disk(disk) => disk.get(self.partition_of(user), key),
            Rows::Memory(entries) => entries.get(key).map(|e| e.clone()),
        }
    }

    /// What is known of `key` (intent id and channel) of `user`.
    pub fn seen(&self, user: &str, key: &str) -> Seen {
        Seen::of(self.entry(user, key).as_ref())
    }

    /// Records a decision; the returned write resolves once the changelog has
    /// it and it is queued for the disk, which is written behind and read
    /// after the entries still in memory (`None` offline).
    pub fn record(&self, key: &str, entry: LedgerEntry) -> Option<Pending> {
        self.record_over(key, entry, Replacing::Unread)
    }

    /// [`SendLedger::record`], told what the entry replaces.
    pub fn record_over(
        &self,
        key: &str,
        entry: LedgerEntry,
        replacing: Replacing,
    ) -> Option<Pending> {
        let disk = match &self.rows {
            Rows::Memory(entries) => {
                entries.insert(key.to_string(), entry);
                return None;
            }
            Rows::Disk(disk) => Arc::clone(disk),
        };
        let partition = self.partition_of(&entry.user);
        let value = super::wire::encode_ledger(&entry);
        let seq = disk.begin(partition, key, entry.clone());
        let written = self.changelog.write_at(partition, key, Some(value))?;
        let key = key.to_string();
        Some(Box::pin(async move {
            let offset = written.await;
            disk.applied(partition, key, seq, entry, offset, replacing)
                .await;
        }))
    }

    /// Brings the ledger of `partitions` up to their changelog's end: only
    /// the tail past each one's checkpoint on disk.
    pub fn restore(
        &self,
        partitions: &[i32],
        now_ms: i64,
        patience: Duration,
    ) -> Result<Restored, LedgerRestoreError> {
        match &self.rows {
            Rows::Disk(disk) => disk.restore(&self.changelog, partitions, now_ms, patience),
            Rows::Memory(_) => Ok(Restored::default()),
        }
    }

    /// Stops deciding for a revoked partition.
    pub fn drop_partition(&self, partition: i32) {
        if let Rows::Disk(disk) = &self.rows {
            disk.forget(partition);
        }
    }

    /// The sends caps count for `user` since `since_ms`, oldest first.
    pub fn sends_of(&self, user: &str, since_ms: i64) -> Vec<CountedSend> {
        match &self.rows {
            Rows::Disk(disk) => disk.sends_of(self.partition_of(user), user, since_ms),
            Rows::Memory(entries) => {
                let mut sends: Vec<CountedSend> = entries
                    .iter()
                    .filter(|e| &*e.user == user && e.counts_for_caps() && e.at_ms >= since_ms)
                    .map(|e| CountedSend {
                        at_ms: e.at_ms,
                        category: e.category.clone(),
                        rule: e.rule.clone(),
                    })
                    .collect();
                sends.sort_by_key(|s| s.at_ms);
                sends
            }
        }
    }

    /// Forgets entries past the horizon, at most every [`SWEEP_EVERY_MS`]
    /// (the first call only starts the clock); returns how many.
    pub fn sweep(&self, now_ms: i64) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.swept_ms.load(Relaxed);
        if last == i64::MIN {
            self.swept_ms.store(now_ms, Relaxed);
            return 0;
        }
        if now_ms - last < SWEEP_EVERY_MS
            || self
                .swept_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_err()
        {
            return 0;
        }
        match &self.rows {
            Rows::Disk(disk) => disk.sweep(now_ms).unwrap_or_else(|e| {
                warn!(error = %e, "send-ledger sweep failed; retried at the next");
                0
            }),
            Rows::Memory(entries) => {
                let before = entries.len();
                entries.retain(|_, e| now_ms - e.at_ms <= HORIZON_MS);
                before - entries.len()
            }
        }
    }

    /// Rows held now (on disk: entries and their send rows, about).
    pub fn len(&self) -> usize {
        match &self.rows {
            Rows::Disk(disk) => disk.rows(),
            Rows::Memory(entries) => entries.len(),
        }
    }

    /// Whether the entries are on disk (in service) rather than in memory.
    pub fn is_on_disk(&self) -> bool {
        matches!(self.rows, Rows::Disk(_))
    }

    /// Bytes on disk (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        match &self.rows {
            Rows::Disk(disk) => disk.disk_bytes(),
            Rows::Memory(_) => 0,
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        let l = SendLedger::new(4, Changelog::offline(), None);
        assert_eq!(l.seen("u", "i1/push"), Seen::New);
        assert!(l
            .record("i1/push", entry("u", LedgerStatus::Attempted, 1))
            .is_none());
        assert_eq!(l.seen("u", "i1/push"), Seen::InFlight);
        l.record("i1/push", entry("u", LedgerStatus::Sent, 2));
        assert_eq!(l.seen("u", "i1/push"), Seen::Decided(LedgerStatus::Sent));
        l.record("i2/sms", entry("u", LedgerStatus::Held, 3));
        assert_eq!(l.seen("u", "i2/sms"), Seen::Held);
        assert_eq!(l.seen("u", "i1/sms"), Seen::New, "per channel");
    }

    #[test]
    fn caps_count_sends_made_or_attempted_and_the_horizon_sweeps() {
        let l = SendLedger::new(1, Changelog::offline(), None);
        for i in 0..6 {
            let status = [LedgerStatus::Sent, LedgerStatus::Failed][i % 2];
            l.record(&format!("i{i}/push"), entry("u", status, i as i64));
        }
        l.record("i9/push", entry("u", LedgerStatus::Attempted, 9));
        l.record("j/push", entry("v", LedgerStatus::Sent, 9));
        let at: Vec<i64> = l.sends_of("u", 1).iter().map(|s| s.at_ms).collect();
        assert_eq!(at, [2, 4, 9], "sent and attempted, since 1, oldest first");
        assert_eq!(l.sweep(0), 0, "the first call starts the clock");
        assert_eq!(
            l.sweep(HORIZON_MS + 5),
            5,
            "entries at 0..=4 are past the horizon"
        );
        assert_eq!(l.len(), 3);
        l.record("old/push", entry("w", LedgerStatus::Sent, 0));
        assert_eq!(l.sweep(HORIZON_MS + 6), 0, "not again within the hour");
    }
}

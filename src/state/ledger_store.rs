//! The send ledger on local disk: each intents partition's entries, and the sends caps count by user, mirrored from the changelog with a checkpoint, so a restart reads only the tail.
//!
//! A decision is first kept in memory (`pending`, read before the disk)
//! and written to its changelog; once the broker has it, it is queued for
//! the disk with its offset, and written behind, a round every few
//! milliseconds, each key once per round (an `attempted` entry and its
//! answer mostly share a round). So the disk never holds an entry the changelog lacks: a
//! crash can only leave it behind the changelog, and the tail past the
//! checkpoint catches it up. The checkpoint is an offset below which every
//! entry of the partition is on disk: writes acknowledged out of order (a
//! retried write lands after a later one) hold it back until the earlier
//! ones are applied.
//!
//! Rows, all in the table `ledger`, prefixed by the partition (4 bytes,
//! big-endian) and a kind byte:
//! - `e` + ledger key → the entry's time (8 bytes) and its changelog JSON;
//! - `s` + user + `\0` + time (8 bytes) + ledger key → `category\0rule`,
//!   for each entry caps count (`sent`, `attempted`): a user's sends are one
//!   prefix scan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::change::{Change, RestoreError};
use super::changelog::Changelog;
use super::group::WriteBehind;
use super::ledger_entry::{LedgerEntry, Replacing, Restored, HORIZON_MS};
use super::watermark::Watermarks;
use crate::store::{StoreError, Table, TableBatch};
use crate::util::FastDashMap;

/// The format of the ledger's rows; a table of another is rebuilt.
pub const FORMAT: u32 = 1;

/// Why a restore failed: the changelog, or the disk.
#[derive(Debug, thiserror::Error)]
pub enum LedgerRestoreError {
    #[error(transparent)]
    Changelog(#[from] RestoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One send a cap counts, as the ledger holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct CountedSend {
    pub at_ms: i64,
    pub category: Arc<str>,
    pub rule: Arc<str>,
}

/// The ledger of one instance on disk.
pub struct DiskLedger {
    table: Table,
    /// Entries written to the changelog and not yet on disk, by ledger key,
    /// with their sequence number.
    pending: FastDashMap<String, (u64, LedgerEntry)>,
    /// Per owned partition, what the checkpoint may advance to.
    marks: Watermarks,
    /// Entries the broker has, on their way to disk (written behind).
    behind: WriteBehind<Acked>,
}

/// How long a round of entries gathers before it goes to disk: a key's
/// `attempted` entry and its answer a few milliseconds later mostly share
/// one round, and are written as one row. Its cost is memory, not
/// latency: nobody waits for the disk, and `pending` holds the entries
/// meanwhile (~10,000 entries a second: ~200).
const LINGER: Duration = Duration::from_millis(20);

/// Entries queued or being written to disk at most; past it, recording
/// waits (a disk that fails, or falls behind, holds stage 2 back).
const ROOM: usize = 16_384;

/// An entry the changelog has, on its way to disk.
struct Acked {
    partition: i32,
    key: String,
    seq: u64,
    entry: LedgerEntry,
    offset: i64,
    /// What it replaces, when its decision read that.
    replacing: Replacing,
}

fn prefix(partition: i32, kind: u8) -> Vec<u8> {
    let mut row = partition.to_be_bytes().to_vec();
    row.push(kind);
    row
}

fn entry_row(partition: i32, key: &str) -> Vec<u8> {
    let mut row = prefix(partition, b'e');
    row.extend_from_slice(key.as_bytes());
    row
}

fn user_prefix(partition: i32, user: &str) -> Vec<u8> {
    let mut row = prefix(partition, b's');
    row.extend_from_slice(user.as_bytes());
    row.push(0);
    row
}

fn send_row(partition: i32, entry: &LedgerEntry, key: &str) -> Vec<u8> {
    let mut row = user_prefix(partition, &entry.user);
    row.extend_from_slice(&entry.at_ms.to_be_bytes());
    row.extend_from_slice(key.as_bytes());
    row
}

/// An entry row's value: its time, then the changelog record's bytes
/// (`record`, when it is at hand; else the entry encoded as on the topic).
/// Either is read by [`read_entry`]: the versioned encoding, or the JSON
/// that rows written before it hold.
fn entry_value(entry: &LedgerEntry, record: Option<&[u8]>) -> Vec<u8> {
    let mut value = entry.at_ms.to_be_bytes().to_vec();
    match record {
        Some(record) => value.extend_from_slice(record),
        None => value.extend_from_slice(&super::wire::encode_ledger(entry)),
    }
    value
}

fn read_entry(value: &[u8]) -> Option<LedgerEntry> {
    super::wire::decode_ledger(value.get(8..)?).ok()
}

/// Writes `entry` (or its absence) for `key`, replacing `old` and its send row.
fn put(
    batch: &mut TableBatch,
    partition: i32,
    key: &str,
    old: Option<&LedgerEntry>,
    new: Option<(&LedgerEntry, Option<&[u8]>)>,
) {
    if let Some(old) = old.filter(|o| o.counts_for_caps()) {
        batch.delete(&send_row(partition, old, key));
    }
    match new {
        Some((entry, json)) => {
            batch.put(&entry_row(partition, key), entry_value(entry, json));
            if entry.counts_for_caps() {
                let mut what = entry.category.as_bytes().to_vec();
                what.push(0);
                what.extend_from_slice(entry.rule.as_bytes());
                batch.put(&send_row(partition, entry, key), what);
            }
        }
        None => batch.delete(&entry_row(partition, key)),
    }
}

impl DiskLedger {
    pub fn new(table: Table) -> DiskLedger {
        DiskLedger {
            table,
            pending: FastDashMap::default(),
            marks: Watermarks::default(),
            behind: WriteBehind::new(ROOM),
        }
    }

    /// The entry of `key` on `partition`: the newest recorded, on disk or not.
    pub fn get(&self, partition: i32, key: &str) -> Option<LedgerEntry> {
        if let Some(p) = self.pending.get(key) {
            return Some(p.1.clone());
        }
        self.stored(partition, key)
    }

    fn stored(&self, partition: i32, key: &str) -> Option<LedgerEntry> {
        match self.table.get(&entry_row(partition, key)) {
            Ok(value) => value.and_then(|v| read_entry(&v)),
            Err(e) => {
                warn!(error = %e, "send-ledger entry cannot be read from the state store");
                None
            }
        }
    }

    /// Keeps `entry` in memory until its changelog write is acknowledged;
    /// returns its sequence number for [`DiskLedger::applied`].
    pub fn begin(&self, partition: i32, key: &str, entry: LedgerEntry) -> u64 {
        let seq = self.marks.begin(partition);
        self.pending.insert(key.to_string(), (seq, entry));
        seq
    }

    /// Queues `entry`, recorded as `seq`, for the disk now that the
    /// changelog has it at `offset`; a round of them is put on disk in one
    /// commit, with the checkpoint it allows, by one committer at a time
    /// ([`WriteBehind`]). Resolves once queued, not on disk: the changelog
    /// is the entry's durable copy (a crash before the disk has it reads it
    /// back from the tail past the checkpoint), and `pending` answers reads
    /// until the disk does. Waits only for room, when [`ROOM`] entries are
    /// not on disk yet (a failing disk is retried every second, and the
    /// store's fault is on `/readyz` meanwhile).
    ///
    /// One key's entries are queued in the order they were recorded: stage
    /// 2 records a key's next entry only after the previous one's write has
    /// resolved (`attempted` before the request, the answer after it).
    pub async fn applied(
        self: &Arc<Self>,
        partition: i32,
        key: String,
        seq: u64,
        entry: LedgerEntry,
        offset: i64,
        replacing: Replacing,
    ) {
        let acked = Acked {
            partition,
            key,
            seq,
            entry,
            offset,
            replacing,
        };
        if self.behind.queue(acked).await {
            let ledger = Arc::clone(self);
            tokio::spawn(async move { ledger.write_behind().await });
        }
    }

    /// The committer: a round every [`LINGER`], until nothing is queued.
    async fn write_behind(&self) {
        loop {
            tokio::time::sleep(LINGER).await;
            let Some(round) = self.behind.next_round() else {
                return;
            };
            Table::until_written("send-ledger entry", || self.apply(&round.writes)).await;
        }
    }

    /// Puts a group of acknowledged entries on disk, in one commit: each
    /// key once, its last entry of the group over what the disk held before
    /// the group (what its first entry replaces: one key's entries are
    /// recorded in order, and the rounds go to disk one after another).
    fn apply(&self, group: &[Acked]) -> Result<(), StoreError> {
        let mut batch = self.table.batch();
        // Per key: its first and last entry in the group.
        let mut keys: crate::util::FastMap<&str, (usize, usize)> = Default::default();
        keys.reserve(group.len());
        for (at, a) in group.iter().enumerate() {
            keys.entry(&a.key).or_insert((at, at)).1 = at;
        }
        for (key, (first, last)) in keys {
            let (first, last) = (&group[first], &group[last]);
            let old = match &first.replacing {
                Replacing::Read(old) => old.clone(),
                Replacing::Unread => self.stored(first.partition, key),
            };
            let new = Some((&last.entry, None));
            put(&mut batch, last.partition, key, old.as_ref(), new);
        }
        let settled: Vec<(i32, u64, i64)> = group
            .iter()
            .map(|a| (a.partition, a.seq, a.offset))
            .collect();
        self.marks.settle_all(&settled, batch)?;
        // A newer entry of a key, recorded since, stays until it is on disk.
        for a in group {
            self.pending.remove_if(&a.key, |_, p| p.0 == a.seq);
        }
        Ok(())
    }

    /// Brings `partitions` up to their changelog's end: from the checkpoint
    /// when it is within the changelog, else cleared and read from the start.
    pub fn restore(
        &self,
        changelog: &Changelog,
        partitions: &[i32],
        now_ms: i64,
        patience: Duration,
    ) -> Result<Restored, LedgerRestoreError> {
        let mut restored = Restored::default();
        // Not `fresh_checkpoint`: the ledger never deletes a key (entries
        // age out), so an old checkpoint misses no tombstone; one the
        // changelog has deleted past is outside it and rebuilds.
        let checkpoint = self.table.checkpoint()?;
        let watermarks = changelog.watermarks(partitions, patience)?;
        let mut ranges = Vec::new();
        for (&partition, &(low, high)) in &watermarks {
            let from = match checkpoint.get(&partition) {
                Some(&next) if (low..=high).contains(&next) => next,
                found => {
                    if found.is_some() {
                        warn!(
                            partition,
                            "send-ledger checkpoint outside its changelog; rebuilding the partition"
                        );
                    }
                    self.table.clear_partition(partition, low)?;
                    restored.rebuilt += 1;
                    low
                }
            };
            restored.skipped += (from - low).max(0) as usize;
            ranges.push((partition, from, high));
        }
        let mut tail = Tail::new(self);
        let mut failed = None;
        changelog.read_ranges(&ranges, patience, |partition, offset, change| {
            if failed.is_none() {
                if let Err(e) = tail.add(partition, offset, change, now_ms, &mut restored) {
                    failed = Some(e);
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        tail.commit()?;
        for (&partition, &(_, high)) in &watermarks {
            self.follow(partition, high);
        }
        Ok(restored)
    }

    fn follow(&self, partition: i32, end: i64) {
        self.marks.follow(partition, end);
    }

    /// Stops following a revoked partition (its rows stay, behind its
    /// checkpoint, for the day it comes back).
    pub fn forget(&self, partition: i32) {
        self.marks.forget(partition);
    }

    /// The sends caps count for `user` since `since_ms`, oldest first:
    /// those on disk and those recorded since.
    pub fn sends_of(&self, partition: i32, user: &str, since_ms: i64) -> Vec<CountedSend> {
        let mut newer: HashMap<String, LedgerEntry> = self
            .pending
            .iter()
            .filter(|p| &*p.value().1.user == user)
            .map(|p| (p.key().clone(), p.value().1.clone()))
            .collect();
        let prefix = user_prefix(partition, user);
        let mut sends = Vec::new();
        let rows = self.table.scan(&prefix).unwrap_or_else(|e| {
            warn!(error = %e, "sends of a user cannot be read from the state store");
            Vec::new()
        });
        for (row, what) in rows {
            let Some(at) = row.get(prefix.len()..prefix.len() + 8) else {
                continue;
            };
            let at_ms = i64::from_be_bytes(at.try_into().expect("8 bytes"));
            let key = String::from_utf8_lossy(&row[prefix.len() + 8..]);
            if newer.contains_key(&*key) || at_ms < since_ms {
                continue;
            }
            let mut parts = what.splitn(2, |&b| b == 0);
            let category = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let rule = String::from_utf8_lossy(parts.next().unwrap_or_default());
            sends.push(CountedSend {
                at_ms,
                category: category.into(),
                rule: rule.into(),
            });
        }
        sends.extend(
            newer
                .drain()
                .map(|(_, e)| e)
                .filter(|e| e.counts_for_caps() && e.at_ms >= since_ms)
                .map(|e| CountedSend {
                    at_ms: e.at_ms,
                    category: e.category,
                    rule: e.rule,
                }),
        );
        sends.sort_by_key(|s| s.at_ms);
        sends
    }

    /// Removes the entries past the horizon, with their send rows; returns
    /// how many.
    pub fn sweep(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mut gone = 0;
        let mut batch = self.table.batch();
        for (row, value) in self.table.scan_where(|row, value| {
            row.get(4) == Some(&b'e')
                && value.get(..8).is_some_and(|at| {
                    now_ms - i64::from_be_bytes(at.try_into().expect("8")) > HORIZON_MS
                })
        })? {
            let partition = i32::from_be_bytes(row[..4].try_into().expect("4 bytes"));
            let key = String::from_utf8_lossy(&row[5..]).into_owned();
            if self.pending.contains_key(&key) {
                continue;
            }
            put(
                &mut batch,
                partition,
                &key,
                read_entry(&value).as_ref(),
                None,
            );
            gone += 1;
            if batch.len() >= 4096 {
                std::mem::replace(&mut batch, self.table.batch()).commit()?;
            }
        }
        batch.commit()?;
        Ok(gone)
    }

    /// Rows on disk (entries and their send rows; about).
    pub fn rows(&self) -> usize {
        self.table.approximate_len()
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.table.disk_bytes()
    }
}

/// A changelog tail being applied in batches, each with the offsets it
/// brings its partitions to.
struct Tail<'a> {
    ledger: &'a DiskLedger,
    batch: TableBatch,
    /// What this batch wrote, by partition and key, for the next record of
    /// a key (the disk does not have it yet).
    written: HashMap<(i32, String), Option<LedgerEntry>>,
}

impl<'a> Tail<'a> {
    fn new(ledger: &'a DiskLedger) -> Tail<'a> {
        Tail {
            ledger,
            batch: ledger.table.batch(),
            written: HashMap::new(),
        }
    }

    fn add(
        &mut self,
        partition: i32,
        offset: i64,
        change: Change,
        now_ms: i64,
        restored: &mut Restored,
    ) -> Result<(), StoreError> {
        restored.records += 1;
        let new = match &change.value {
            None => None,
            Some(value) => match super::wire::decode_ledger(value) {
                Ok(entry) if now_ms - entry.at_ms <= HORIZON_MS => Some(entry),
                Ok(_) => None,
                Err(_) => {
                    restored.unreadable += 1;
                    None
                }
            },
        };
        let slot = (partition, change.key);
        let old = match self.written.get(&slot) {
            Some(known) => known.clone(),
            None => self.ledger.stored(partition, &slot.1),
        };
        let json = change.value.as_deref();
        put(
            &mut self.batch,
            partition,
            &slot.1,
            old.as_ref(),
            new.as_ref().map(|e| (e, json)),
        );
        self.batch.read_to(partition, offset + 1);
        self.written.insert(slot, new);
        if self.batch.len() >= 4096 {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.written.clear();
        std::mem::replace(&mut self.batch, self.ledger.table.batch()).commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LedgerStatus;

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

    fn acked(key: &str, seq: u64, entry: &LedgerEntry, offset: i64) -> Acked {
        Acked {
            partition: 0,
            key: key.into(),
            seq,
            entry: entry.clone(),
            offset,
            replacing: Replacing::Unread,
        }
    }

    /// One entry of partition 0, committed alone.
    fn apply(l: &DiskLedger, key: &str, seq: u64, entry: &LedgerEntry, offset: i64) {
        l.apply(&[acked(key, seq, entry, offset)]).unwrap();
    }

    fn ledger() -> (crate::store::Store, DiskLedger) {
        let store = crate::store::Store::temporary(8 << 20).unwrap();
        let table = store.table("ledger", FORMAT).unwrap();
        (store, DiskLedger::new(table))
    }

    #[test]
    fn the_checkpoint_waits_for_every_entry_written_before_it() {
        let (_store, l) = ledger();
        l.follow(0, 0);
        let now = crate::util::now_ms();
        let a = entry("u", LedgerStatus::Sent, now);
        let b = entry("u", LedgerStatus::Sent, now + 1);
        let c = entry("v", LedgerStatus::Attempted, now + 2);
        let sa = l.begin(0, "a/push", a.clone());
        let sb = l.begin(0, "b/push", b.clone());
        assert_eq!(
            l.get(0, "a/push"),
            Some(a.clone()),
            "read before it is on disk"
        );
        // a's first write failed and went again: b landed first, at 5.
        apply(&l, "b/push", sb, &b, 5);
        let sc = l.begin(0, "c/push", c.clone());
        apply(&l, "c/push", sc, &c, 7);
        assert!(
            l.table.checkpoint().unwrap().is_empty(),
            "a, written before b, is not on disk yet"
        );
        apply(&l, "a/push", sa, &a, 8);
        assert_eq!(
            l.table.checkpoint().unwrap().get(&0),
            Some(&6),
            "everything below 6 (b) is on disk; 7 and 8 are read again after a crash"
        );
        assert_eq!(l.stored(0, "a/push"), Some(a));
        let at: Vec<i64> = l.sends_of(0, "u", 0).iter().map(|s| s.at_ms).collect();
        assert_eq!(at, [now, now + 1]);
        assert_eq!(l.sends_of(0, "v", 0).len(), 1, "attempted counts");
        // c's answer replaces its attempted entry, and its send row with it.
        let failed = entry("v", LedgerStatus::Failed, now + 3);
        let sf = l.begin(0, "c/push", failed.clone());
        apply(&l, "c/push", sf, &failed, 9);
        assert!(
            l.sends_of(0, "v", 0).is_empty(),
            "a failed send does not count"
        );
        assert_eq!(l.table.checkpoint().unwrap().get(&0), Some(&9));
    }

    #[test]
    fn a_group_commit_holds_a_key_answered_within_it_once_with_its_answer() {
        let (_store, l) = ledger();
        l.follow(0, 0);
        let now = crate::util::now_ms();
        let tried = entry("u", LedgerStatus::Attempted, now);
        let sent = entry("u", LedgerStatus::Sent, now + 1);
        let other = entry("v", LedgerStatus::Attempted, now + 2);
        let st = l.begin(0, "a/push", tried.clone());
        let so = l.begin(0, "b/push", other.clone());
        let ss = l.begin(0, "a/push", sent.clone());
        let group = [
            acked("a/push", st, &tried, 0),
            acked("b/push", so, &other, 1),
            acked("a/push", ss, &sent, 2),
        ];
        l.apply(&group).unwrap();
        assert_eq!(
            l.stored(0, "a/push"),
            Some(sent),
            "the answer, not the attempt"
        );
        let at: Vec<i64> = l.sends_of(0, "u", 0).iter().map(|s| s.at_ms).collect();
        assert_eq!(
            at,
            [now + 1],
            "one send row for the key: the attempt's replaced"
        );
        assert_eq!(l.sends_of(0, "v", 0).len(), 1);
        // The checkpoint a commit allows is written with the next one.
        let later = entry("w", LedgerStatus::Sent, now + 3);
        let sl = l.begin(0, "c/push", later.clone());
        apply(&l, "c/push", sl, &later, 3);
        assert_eq!(
            l.table.checkpoint().unwrap().get(&0),
            Some(&3),
            "the group's three are on disk: read from 3 after a crash"
        );
    }

    #[test]
    fn an_answer_told_what_it_replaces_moves_the_send_row_without_reading() {
        let (_store, l) = ledger();
        l.follow(0, 0);
        let now = crate::util::now_ms();
        let tried = entry("u", LedgerStatus::Attempted, now);
        let st = l.begin(0, "a/push", tried.clone());
        let first = Acked {
            replacing: Replacing::Read(None),
            ..acked("a/push", st, &tried, 0)
        };
        l.apply(&[first]).unwrap();
        let sent = entry("u", LedgerStatus::Sent, now + 40);
        let ss = l.begin(0, "a/push", sent.clone());
        let answer = Acked {
            replacing: Replacing::Read(Some(tried)),
            ..acked("a/push", ss, &sent, 1)
        };
        l.apply(&[answer]).unwrap();
        let at: Vec<i64> = l.sends_of(0, "u", 0).iter().map(|s| s.at_ms).collect();
        assert_eq!(at, [now + 40], "the attempt's row replaced by the answer's");
        assert_eq!(l.stored(0, "a/push"), Some(sent));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_are_written_behind_and_read_from_memory_until_then() {
        let (_store, l) = ledger();
        let l = Arc::new(l);
        l.follow(0, 0);
        let now = crate::util::now_ms();
        let tried = entry("u", LedgerStatus::Attempted, now);
        let sent = entry("u", LedgerStatus::Sent, now + 1);
        let st = l.begin(0, "a/push", tried.clone());
        l.applied(0, "a/push".into(), st, tried, 0, Replacing::Read(None))
            .await;
        let ss = l.begin(0, "a/push", sent.clone());
        l.applied(0, "a/push".into(), ss, sent.clone(), 1, Replacing::Unread)
            .await;
        assert_eq!(l.get(0, "a/push"), Some(sent.clone()), "read at once");
        let mut waited = 0;
        while !l.pending.is_empty() && waited < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(l.stored(0, "a/push"), Some(sent), "on disk, behind");
        let at: Vec<i64> = l.sends_of(0, "u", 0).iter().map(|s| s.at_ms).collect();
        assert_eq!(at, [now + 1], "one send row, the answer's");
        // The checkpoint the round allowed is written with the next one.
        let later = entry("w", LedgerStatus::Sent, now + 2);
        let sl = l.begin(0, "c/push", later.clone());
        l.applied(0, "c/push".into(), sl, later, 2, Replacing::Unread)
            .await;
        while l.table.checkpoint().unwrap().get(&0) != Some(&2) && waited < 1000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(l.table.checkpoint().unwrap().get(&0), Some(&2));
    }

    #[test]
    fn the_sweep_removes_what_is_past_the_horizon() {
        let (_store, l) = ledger();
        l.follow(0, 0);
        let old = entry("u", LedgerStatus::Sent, 1_000);
        let new = entry("u", LedgerStatus::Sent, HORIZON_MS + 1_000);
        let so = l.begin(0, "old/push", old.clone());
        apply(&l, "old/push", so, &old, 0);
        let sn = l.begin(0, "new/push", new.clone());
        apply(&l, "new/push", sn, &new, 1);
        assert_eq!(l.sweep(HORIZON_MS + 2_000).unwrap(), 1);
        assert_eq!(l.get(0, "old/push"), None);
        assert_eq!(l.sends_of(0, "u", 0).len(), 1);
    }
}

//! A changelog's copy on local disk, per partition, with a checkpoint and a wake-up index: the store pattern state is read from, key by key (a restore reads only the changelog's tail past the checkpoint).
//!
//! Three kinds of row, each starting with the partition (4 bytes,
//! big-endian) so a partition is cleared by its prefix:
//!
//! - `partition · K · the changelog key blinded` → `due · expires · the
//!   key's length (4 bytes) · the key · the newest value`, sealed by the
//!   table (a pattern key may be a card number); a tombstone removes it.
//! - `partition · T · due · blinded key` (empty): the key's earliest timer,
//!   in event time, so a timer fires for a key that is not in memory.
//! - `partition · X · expires · blinded key` (empty): when the key's state
//!   runs out of time (wall clock), so it is swept from disk.
//!
//! `due` and `expires` are big-endian with the sign bit flipped (they sort
//! as numbers), [`NEVER`] when the key has none. An index row whose data
//! row says otherwise (overwritten meanwhile) is stale and is deleted when
//! read. A change goes to disk once the broker has it, with the checkpoint
//! [`Watermarks`] allows, so the disk is the changelog up to the
//! checkpoint, plus some of what follows it.

use std::collections::HashMap;

use tracing::warn;

use super::change::Change;
use super::group::GroupCommit;
use super::watermark::Watermarks;
use crate::store::{StoreError, Table, TableBatch};

/// The format of a mirror's rows (3: data rows with their wake-up times,
/// and the index rows; 4: the same, of a changelog whose keys may be
/// blinded, so that a table of 3 is read again from the topic and its
/// records in clear are moved to their blinded keys); a table of another
/// is rebuilt.
pub const FORMAT: u32 = 4;

/// A wake-up time a key does not have.
pub const NEVER: i64 = i64::MAX;

/// When a key's value asks to be looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// Its earliest timer, event time (ms), or [`NEVER`].
    pub due_ms: i64,
    /// When its state runs out of time, wall clock (ms), or [`NEVER`].
    pub expires_ms: i64,
}

impl Wake {
    pub const NONE: Wake = Wake {
        due_ms: NEVER,
        expires_ms: NEVER,
    };
}

const DATA: u8 = b'K';
const DUE: u8 = b'T';
const EXPIRES: u8 = b'X';
/// Rows a wake-up scan reads at most per partition and call.
const SCAN_LIMIT: usize = 4096;

/// One changelog's partitions on disk.
pub struct Mirror {
    table: Table,
    marks: Watermarks,
    /// Reads a value's wake-up times.
    wake: fn(&[u8]) -> Wake,
    /// Changes the changelog has, waiting for the next commit to disk.
    group: GroupCommit<Applied>,
}

/// A change the changelog has, on its way to disk. A key's changes are
/// written one after another (the next once the last is on disk), so a
/// group holds one change per key; were there two, the first's index rows
/// would be left stale, which readers already skip.
struct Applied {
    partition: i32,
    key: String,
    value: Option<Vec<u8>>,
    seq: u64,
    offset: i64,
}

/// A key's newest change in a tail: partition, changelog key, value.
type Newest = (i32, String, Option<Vec<u8>>);

/// A tail of the changelog on its way to disk: the newest value per key,
/// written in batches with the offsets they bring their partitions to.
pub struct Tail<'a> {
    mirror: &'a Mirror,
    /// Data row → (partition, changelog key, newest value).
    newest: HashMap<Vec<u8>, Newest>,
    offsets: HashMap<i32, i64>,
    read: usize,
    failed: Option<StoreError>,
}

impl Tail<'_> {
    /// Adds the record at `offset` of `partition`.
    pub fn add(&mut self, partition: i32, offset: i64, change: Change) {
        let row = self.mirror.data_row(partition, &change.key);
        self.newest
            .insert(row, (partition, change.key, change.value));
        self.offsets.insert(partition, offset + 1);
        self.read += 1;
        if self.newest.len() >= 4096 {
            if let Err(e) = self.flush() {
                self.failed.get_or_insert(e);
            }
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let mut batch = self.mirror.table.batch();
        for (row, (partition, key, value)) in self.newest.drain() {
            self.mirror
                .put_row(&mut batch, partition, &row, &key, value.as_deref());
        }
        for (partition, next) in self.offsets.drain() {
            batch.read_to(partition, next);
        }
        batch.commit()
    }

    /// Writes what is left; the records read, or the first failure.
    pub fn commit(mut self) -> Result<usize, StoreError> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => self.flush().map(|()| self.read),
        }
    }
}

fn ordered(at: i64) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(bytes: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(bytes.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// A data row's parts: wake-up times, changelog key, value.
fn unpack(stored: &[u8]) -> Option<(Wake, &str, &[u8])> {
    let due_ms = i64::from_be_bytes(stored.get(..8)?.try_into().ok()?);
    let expires_ms = i64::from_be_bytes(stored.get(8..16)?.try_into().ok()?);
    let len = u32::from_be_bytes(stored.get(16..20)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(stored.get(20..20 + len)?).ok()?;
    let value = &stored[20 + len..];
    Some((Wake { due_ms, expires_ms }, key, value))
}

fn index_row(partition: i32, kind: u8, at: i64, blind: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(13 + blind.len());
    row.extend_from_slice(&partition.to_be_bytes());
    row.push(kind);
    row.extend_from_slice(&ordered(at));
    row.extend_from_slice(blind);
    row
}

impl Mirror {
    /// A mirror in `table`, reading a value's wake-up times with `wake`.
    pub fn new(table: Table, wake: fn(&[u8]) -> Wake) -> Mirror {
        Mirror {
            table,
            marks: Watermarks::default(),
            wake,
            group: GroupCommit::default(),
        }
    }

    /// The name a mirror's table gets for `changelog` (a store's names are
    /// at most 255 bytes; a topic's at most 249, so only a prefix can make
    /// it longer).
    pub fn table_name(changelog: &str) -> String {
        let name = format!("mirror.{changelog}");
        match name.len() <= 255 {
            true => name,
            false => format!(
                "mirror.{}",
                crate::util::digest_hex(&crate::util::stable_digest(&[changelog.as_bytes()]))
            ),
        }
    }

    fn data_row(&self, partition: i32, key: &str) -> Vec<u8> {
        let mut row = partition.to_be_bytes().to_vec();
        row.push(DATA);
        row.extend_from_slice(&self.table.blind(key.as_bytes()));
        row
    }

    /// Puts `key`'s newest value (`None`: deleted) in `batch`, with its
    /// index rows, and deletes the index rows of the value it replaces.
    fn put_row(
        &self,
        batch: &mut TableBatch,
        partition: i32,
        row: &[u8],
        key: &str,
        value: Option<&[u8]>,
    ) {
        let blind = &row[5..];
        // An old value that cannot be read leaves stale index rows at worst,
        // deleted when they come up.
        if let Ok(Some(old)) = self.table.get(row) {
            if let Some((wake, _, _)) = unpack(&old) {
                self.index(partition, wake, blind, |r| batch.delete(r));
            }
        }
        let Some(value) = value else {
            batch.delete(row);
            return;
        };
        let wake = (self.wake)(value);
        let mut stored = Vec::with_capacity(20 + key.len() + value.len());
        stored.extend_from_slice(&wake.due_ms.to_be_bytes());
        stored.extend_from_slice(&wake.expires_ms.to_be_bytes());
        stored.extend_from_slice(&(key.len() as u32).to_be_bytes());
        stored.extend_from_slice(key.as_bytes());
        stored.extend_from_slice(value);
        batch.put(row, stored);
        self.index(partition, wake, blind, |r| batch.put_marker(r));
    }

    fn index(&self, partition: i32, wake: Wake, blind: &[u8], mut f: impl FnMut(&[u8])) {
        if wake.due_ms != NEVER {
            f(&index_row(partition, DUE, wake.due_ms, blind));
        }
        if wake.expires_ms != NEVER {
            f(&index_row(partition, EXPIRES, wake.expires_ms, blind));
        }
    }

    /// A change of `partition` is being written to the changelog.
    pub fn begin(&self, partition: i32) -> u64 {
        self.marks.begin(partition)
    }

    /// Puts change `seq` on disk now that the changelog has it at `offset`,
    /// in one commit with the changes acknowledged meanwhile (`group.rs`);
    /// retries a failing disk every second (the store's fault is on
    /// `/readyz` meanwhile), and the write's caller waits.
    pub async fn applied(
        &self,
        partition: i32,
        key: &str,
        value: Option<&[u8]>,
        seq: u64,
        offset: i64,
    ) {
        let change = Applied {
            partition,
            key: key.to_string(),
            value: value.map(<[u8]>::to_vec),
            seq,
            offset,
        };
        self.group
            .write(self.table.name(), change, |group| {
                let mut batch = self.table.batch();
                for c in group {
                    let row = self.data_row(c.partition, &c.key);
                    self.put_row(&mut batch, c.partition, &row, &c.key, c.value.as_deref());
                }
                let settled: Vec<(i32, u64, i64)> = group
                    .iter()
                    .map(|c| (c.partition, c.seq, c.offset))
                    .collect();
                self.marks.settle_all(&settled, batch)
            })
            .await;
    }

    /// The newest value of `key` on `partition` that is on disk.
    pub fn get(&self, partition: i32, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(stored) = self.table.get(&self.data_row(partition, key))? else {
            return Ok(None);
        };
        Ok(unpack(&stored).map(|(_, _, value)| value.to_vec()))
    }

    /// The keys of `partition` with a timer due at or before `upto` (event
    /// time), with their values: at most a few thousand, earliest first.
    pub fn due(&self, partition: i32, upto: i64) -> Result<Vec<Change>, StoreError> {
        self.woken(partition, DUE, upto, |w| w.due_ms)
    }

    /// The keys of `partition` whose state ran out of time at or before
    /// `now` (wall clock), with their values, as [`Mirror::due`].
    pub fn expired(&self, partition: i32, now: i64) -> Result<Vec<Change>, StoreError> {
        self.woken(partition, EXPIRES, now, |w| w.expires_ms)
    }

    fn woken(
        &self,
        partition: i32,
        kind: u8,
        upto: i64,
        time: fn(&Wake) -> i64,
    ) -> Result<Vec<Change>, StoreError> {
        let from = index_row(partition, kind, i64::MIN, &[]);
        let to = index_row(partition, kind, upto, &[0xFF; 17]);
        let rows = self.table.keys_between(&from, &to, SCAN_LIMIT)?;
        let mut out = Vec::new();
        let mut stale = self.table.batch();
        for index in rows {
            let at = unordered(&index[5..13]);
            let mut data = partition.to_be_bytes().to_vec();
            data.push(DATA);
            data.extend_from_slice(&index[13..]);
            let stored = self.table.get(&data)?;
            match stored.as_deref().and_then(unpack) {
                Some((wake, key, value)) if Some(time(&wake)) == at => out.push(Change {
                    key: key.to_string(),
                    value: Some(value.to_vec()),
                }),
                _ => stale.delete(&index),
            }
        }
        if !stale.is_empty() {
            stale.commit()?;
        }
        Ok(out)
    }

    /// Hands every key of `partition` on disk and its value to `f`.
    pub fn for_each(
        &self,
        partition: i32,
        mut f: impl FnMut(&str, &[u8]),
    ) -> Result<(), StoreError> {
        let mut prefix = partition.to_be_bytes().to_vec();
        prefix.push(DATA);
        self.table.for_each(&prefix, |_, stored| {
            if let Some((_, key, value)) = unpack(&stored) {
                f(key, value);
            }
        })
    }

    /// The checkpoint, without partitions too old to trust
    /// ([`Table::fresh_checkpoint`]).
    pub fn checkpoint(&self) -> Result<crate::store::Checkpoint, StoreError> {
        self.table.fresh_checkpoint()
    }

    /// Where to read `partition`'s changelog (whose records are `low..high`)
    /// from: from `checkpoint` when it is within the changelog (the rows on
    /// disk hold the rest); else from `low`, the partition cleared.
    pub fn start(
        &self,
        partition: i32,
        low: i64,
        high: i64,
        checkpoint: Option<i64>,
    ) -> Result<i64, StoreError> {
        match checkpoint {
            Some(next) if (low..=high).contains(&next) => Ok(next),
            found => {
                if found.is_some() {
                    warn!(
                        table = self.table.name(),
                        partition, "checkpoint outside its changelog; rebuilding the partition"
                    );
                }
                self.table.clear_partition(partition, low)?;
                Ok(low)
            }
        }
    }

    /// A changelog tail being written to disk, in batches with the offsets
    /// they bring their partitions to.
    pub fn tail(&self) -> Tail<'_> {
        Tail {
            mirror: self,
            newest: HashMap::new(),
            offsets: HashMap::new(),
            read: 0,
            failed: None,
        }
    }

    /// From now on, checkpoints `partition`, whose rows follow its
    /// changelog up to `end` (excluded).
    pub fn follow(&self, partition: i32, end: i64) {
        self.marks.follow(partition, end);
    }

    /// Stops following a revoked partition. Its rows and checkpoint stay:
    /// a restart takes it back from there; back after more than a day (a
    /// compacted topic's tombstones may be gone), it is rebuilt
    /// ([`Table::fresh_checkpoint`]).
    pub fn forget(&self, partition: i32) {
        self.marks.forget(partition);
    }

    /// The partitions followed (restored here and not revoked).
    pub fn partitions(&self) -> Vec<i32> {
        self.marks.followed()
    }

    /// The table on disk.
    pub fn table(&self) -> &Table {
        &self.table
    }
}

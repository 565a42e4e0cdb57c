//! A changelog's copy on local disk, per partition, with a checkpoint: a restore reads the rows from disk and only the tail of the changelog past the checkpoint (pattern state).
//!
//! Rows are `partition (4 bytes, big-endian) · the changelog key blinded`
//! → `the key's length (4 bytes) · the key · the newest value`, sealed by
//! the table (a pattern key may be a card number); a tombstone removes the
//! row. A change goes to disk once
//! the broker has it, with the checkpoint [`Watermarks`] allows, so the disk
//! is the changelog up to the checkpoint, plus some of what follows it.

use tracing::warn;

use super::change::Change;
use super::watermark::Watermarks;
use crate::store::{StoreError, Table, TableBatch};

/// The format of a mirror's rows (2: keys blinded); a table of another is
/// rebuilt.
pub const FORMAT: u32 = 2;

/// One changelog's partitions on disk.
pub struct Mirror {
    table: Table,
    marks: Watermarks,
}

/// A tail of the changelog on its way to disk.
pub struct Tail<'a> {
    mirror: &'a Mirror,
    batch: TableBatch,
    failed: Option<StoreError>,
}

impl Tail<'_> {
    /// Adds the record at `offset` of `partition`.
    pub fn add(&mut self, partition: i32, offset: i64, change: &Change) {
        let table = &self.mirror.table;
        put(
            &mut self.batch,
            table,
            partition,
            &change.key,
            change.value.as_deref(),
        );
        self.batch.read_to(partition, offset + 1);
        if self.batch.len() >= 4096 {
            let full = std::mem::replace(&mut self.batch, table.batch());
            if let Err(e) = full.commit() {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// Writes what is left; the first failure, if any.
    pub fn commit(self) -> Result<(), StoreError> {
        match self.failed {
            Some(e) => Err(e),
            None => self.batch.commit(),
        }
    }
}

fn row(table: &Table, partition: i32, key: &str) -> Vec<u8> {
    let mut row = partition.to_be_bytes().to_vec();
    row.extend_from_slice(&table.blind(key.as_bytes()));
    row
}

fn put(batch: &mut TableBatch, table: &Table, partition: i32, key: &str, value: Option<&[u8]>) {
    let row = row(table, partition, key);
    match value {
        Some(v) => {
            let mut stored = (key.len() as u32).to_be_bytes().to_vec();
            stored.extend_from_slice(key.as_bytes());
            stored.extend_from_slice(v);
            batch.put(&row, stored);
        }
        None => batch.delete(&row),
    }
}

/// The changelog key and value a row holds.
fn unpack(stored: &[u8]) -> Option<Change> {
    let len = u32::from_be_bytes(stored.get(..4)?.try_into().ok()?) as usize;
    let key = stored.get(4..4 + len)?;
    Some(Change {
        key: String::from_utf8_lossy(key).into_owned(),
        value: Some(stored[4 + len..].to_vec()),
    })
}

impl Mirror {
    pub fn new(table: Table) -> Mirror {
        Mirror {
            table,
            marks: Watermarks::default(),
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

    /// A change of `partition` is being written to the changelog.
    pub fn begin(&self, partition: i32) -> u64 {
        self.marks.begin(partition)
    }

    /// Puts change `seq` on disk now that the changelog has it at `offset`;
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
        Table::until_written(self.table.name(), || {
            let mut batch = self.table.batch();
            put(&mut batch, &self.table, partition, key, value);
            self.marks.settle(partition, seq, offset, batch)
        })
        .await;
    }

    /// The checkpoint, without partitions too old to trust
    /// ([`Table::fresh_checkpoint`]).
    pub fn checkpoint(&self) -> Result<crate::store::Checkpoint, StoreError> {
        self.table.fresh_checkpoint()
    }

    /// Where to read `partition`'s changelog (whose records are `low..high`)
    /// from, and its rows on disk: from `checkpoint` with the rows, when it
    /// is within the changelog; else from `low`, the partition cleared.
    pub fn start(
        &self,
        partition: i32,
        low: i64,
        high: i64,
        checkpoint: Option<i64>,
    ) -> Result<(i64, Vec<Change>), StoreError> {
        match checkpoint {
            Some(next) if (low..=high).contains(&next) => {
                let rows = self.table.scan(&partition.to_be_bytes())?;
                Ok((
                    next,
                    rows.iter()
                        .filter_map(|(_, stored)| unpack(stored))
                        .collect(),
                ))
            }
            found => {
                if found.is_some() {
                    warn!(
                        table = self.table.name(),
                        partition, "checkpoint outside its changelog; rebuilding the partition"
                    );
                }
                self.table.clear_partition(partition, low)?;
                Ok((low, Vec::new()))
            }
        }
    }

    /// A changelog tail being written to disk, in batches with the offsets
    /// they bring their partitions to.
    pub fn tail(&self) -> Tail<'_> {
        Tail {
            mirror: self,
            batch: self.table.batch(),
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

    /// The table on disk.
    pub fn table(&self) -> &Table {
        &self.table
    }
}

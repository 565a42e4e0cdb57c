//! A changelog's copy on local disk, per partition, with a checkpoint: a restore reads the rows from disk and only the tail of the changelog past the checkpoint (pattern state).
//!
//! Rows are `partition (4 bytes, big-endian) · changelog key` → the
//! newest value; a tombstone removes the row. A change goes to disk once
//! the broker has it, with the checkpoint [`Watermarks`] allows, so the disk
//! is the changelog up to the checkpoint, plus some of what follows it.

use std::collections::HashMap;
use std::time::Duration;

use tracing::warn;

use super::changelog::{Change, Changelog, RestoreError};
use super::watermark::Watermarks;
use crate::store::{StoreError, Table, TableBatch};

/// The format of a mirror's rows; a table of another is rebuilt.
pub const FORMAT: u32 = 1;

/// One changelog's partitions on disk.
pub struct Mirror {
    table: Table,
    marks: Watermarks,
}

/// What a restore read, besides the changes it returns.
#[derive(Debug, Default, Clone, Copy)]
pub struct MirrorRead {
    /// Rows read from disk.
    pub from_disk: usize,
    /// Changelog records read past the checkpoints.
    pub tail: usize,
    /// Partitions read from their changelog's start.
    pub rebuilt: usize,
}

fn row(partition: i32, key: &str) -> Vec<u8> {
    let mut row = partition.to_be_bytes().to_vec();
    row.extend_from_slice(key.as_bytes());
    row
}

fn put(batch: &mut TableBatch, partition: i32, key: &str, value: Option<&[u8]>) {
    match value {
        Some(v) => batch.put(&row(partition, key), v.to_vec()),
        None => batch.delete(&row(partition, key)),
    }
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
        loop {
            let mut batch = self.table.batch();
            put(&mut batch, partition, key, value);
            match self.marks.settle(partition, seq, offset, batch) {
                Ok(()) => return,
                Err(e) => {
                    warn!(table = self.table.name(), error = %e, "changelog copy cannot be written to the state store; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Every row of `partitions`, from disk and from the changelog past
    /// their checkpoints (the tail is written to disk as it is read), as
    /// changes: a key's newest last.
    pub fn restore(
        &self,
        changelog: &Changelog,
        partitions: &[i32],
        patience: Duration,
    ) -> Result<(HashMap<i32, Vec<Change>>, MirrorRead), RestoreError> {
        let disk = |source| RestoreError::Disk {
            topic: changelog.topic.clone(),
            source,
        };
        let mut out: HashMap<i32, Vec<Change>> = HashMap::new();
        let mut read = MirrorRead::default();
        let checkpoint = self.table.fresh_checkpoint().map_err(disk)?;
        let watermarks = changelog.watermarks(partitions, patience)?;
        let mut ranges = Vec::new();
        for (&partition, &(low, high)) in &watermarks {
            let changes = out.entry(partition).or_default();
            let from = match checkpoint.get(&partition) {
                Some(&next) if (low..=high).contains(&next) => {
                    let rows = self.table.scan(&partition.to_be_bytes()).map_err(disk)?;
                    for (key, value) in rows {
                        changes.push(Change {
                            key: String::from_utf8_lossy(&key[4..]).into_owned(),
                            value: Some(value.to_vec()),
                        });
                    }
                    read.from_disk += changes.len();
                    next
                }
                found => {
                    if found.is_some() {
                        warn!(
                            table = self.table.name(),
                            partition, "checkpoint outside its changelog; rebuilding the partition"
                        );
                    }
                    self.clear(partition, low).map_err(disk)?;
                    read.rebuilt += 1;
                    low
                }
            };
            ranges.push((partition, from, high));
        }
        let mut batch = self.table.batch();
        let mut failed = None;
        changelog.read_ranges(&ranges, patience, |partition, offset, change| {
            read.tail += 1;
            put(&mut batch, partition, &change.key, change.value.as_deref());
            batch.read_to(partition, offset + 1);
            if batch.len() >= 4096 {
                let full = std::mem::replace(&mut batch, self.table.batch());
                if let Err(e) = full.commit() {
                    failed.get_or_insert(e);
                }
            }
            out.entry(partition).or_default().push(change);
        })?;
        if let Some(e) = failed {
            return Err(disk(e));
        }
        batch.commit().map_err(disk)?;
        for (&partition, &(_, high)) in &watermarks {
            self.marks.follow(partition, high);
        }
        Ok((out, read))
    }

    /// Removes a partition's rows; its checkpoint becomes `next`.
    fn clear(&self, partition: i32, next: i64) -> Result<(), StoreError> {
        let mut batch = self.table.batch();
        for key in self.table.keys(&partition.to_be_bytes())? {
            batch.delete(&key);
            if batch.len() >= 4096 {
                std::mem::replace(&mut batch, self.table.batch()).commit()?;
            }
        }
        batch.read_to(partition, next);
        batch.commit()
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

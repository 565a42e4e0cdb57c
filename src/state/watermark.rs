//! Checkpoints of a store that mirrors a changelog on disk: the offset below which every change of a partition is on disk, held back while an earlier write is not.
//!
//! A change goes to disk only once the broker has it (so the disk is never
//! ahead of the changelog), and writes can be acknowledged out of order (a
//! retried write lands after a later one). Each change gets a sequence
//! number when it is written; a candidate checkpoint (the highest offset on
//! disk, plus one) becomes the checkpoint once every change numbered before
//! it was taken is on disk. Any change that landed below that offset had
//! been written by then, so it is on disk too.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::store::{StoreError, TableBatch};

/// The checkpoints of the partitions a store follows.
#[derive(Default)]
pub struct Watermarks {
    next_seq: AtomicU64,
    marks: Mutex<HashMap<i32, Mark>>,
}

/// How far a partition's disk rows are known to follow its changelog.
#[derive(Default)]
struct Mark {
    /// Sequence numbers written and not yet on disk.
    unapplied: BTreeSet<u64>,
    /// The highest changelog offset on disk.
    max_offset: i64,
    /// A checkpoint waiting to be written, with the sequence number before
    /// which every change must be on disk first.
    candidate: Option<(i64, u64)>,
}

impl Watermarks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Mark>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change of `partition` is being written: its sequence number.
    pub fn begin(&self, partition: i32) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if let Some(mark) = self.lock().get_mut(&partition) {
            mark.unapplied.insert(seq);
        }
        seq
    }

    /// From now on, checkpoints `partition`, whose rows follow its changelog
    /// up to `end` (excluded).
    pub fn follow(&self, partition: i32, end: i64) {
        self.lock().insert(
            partition,
            Mark {
                max_offset: end - 1,
                ..Mark::default()
            },
        );
    }

    /// The partitions followed, in order.
    pub fn followed(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.lock().keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Stops checkpointing a revoked partition.
    pub fn forget(&self, partition: i32) {
        self.lock().remove(&partition);
    }

    /// Commits `batch`, which puts change `seq` (at `offset` in the
    /// changelog) on disk, with the checkpoint this allows. A partition not
    /// followed (not restored here, or revoked meanwhile) gets no
    /// checkpoint: the tail past its old one is read at the next restore.
    pub fn settle(
        &self,
        partition: i32,
        seq: u64,
        offset: i64,
        mut batch: TableBatch,
    ) -> Result<(), StoreError> {
        let mut marks = self.lock();
        let Some(mark) = marks.get_mut(&partition) else {
            return batch.commit();
        };
        let max_offset = mark.max_offset.max(offset);
        let earliest = mark.unapplied.iter().find(|&&s| s != seq).copied();
        let reached = mark
            .candidate
            .filter(|&(_, below)| earliest.is_none_or(|e| e >= below));
        if let Some((next, _)) = reached {
            batch.read_to(partition, next);
        }
        batch.commit()?;
        mark.unapplied.remove(&seq);
        mark.max_offset = max_offset;
        if reached.is_some() || mark.candidate.is_none() {
            mark.candidate = Some((max_offset + 1, self.next_seq.load(Ordering::Relaxed)));
        }
        Ok(())
    }
}

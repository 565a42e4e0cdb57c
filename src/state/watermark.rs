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

    /// Commits `batch`, which puts a group of changes on disk, each
    /// `(partition, seq, offset)`: change `seq`, at `offset` in its
    /// partition's changelog; with the checkpoints this allows. A partition
    /// not followed (not restored here, or revoked meanwhile) gets no
    /// checkpoint: the tail past its old one is read at the next restore.
    pub fn settle_all(
        &self,
        changes: &[(i32, u64, i64)],
        mut batch: TableBatch,
    ) -> Result<(), StoreError> {
        let mut marks = self.lock();
        let mut seqs: Vec<u64> = changes.iter().map(|c| c.1).collect();
        seqs.sort_unstable();
        let mut partitions: Vec<i32> = changes.iter().map(|c| c.0).collect();
        partitions.sort_unstable();
        partitions.dedup();
        // Per followed partition: its highest offset on disk once this
        // commits, and the checkpoint reached with it, if one is.
        let mut settled = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let Some(mark) = marks.get(&partition) else {
                continue;
            };
            let max_offset = changes
                .iter()
                .filter(|c| c.0 == partition)
                .fold(mark.max_offset, |max, c| max.max(c.2));
            let earliest = mark
                .unapplied
                .iter()
                .find(|s| seqs.binary_search(s).is_err())
                .copied();
            let reached = mark
                .candidate
                .filter(|&(_, below)| earliest.is_none_or(|e| e >= below));
            if let Some((next, _)) = reached {
                batch.read_to(partition, next);
            }
            settled.push((partition, max_offset, reached.is_some()));
        }
        batch.commit()?;
        let next_seq = self.next_seq.load(Ordering::Relaxed);
        for (partition, max_offset, reached) in settled {
            let Some(mark) = marks.get_mut(&partition) else {
                continue;
            };
            for c in changes.iter().filter(|c| c.0 == partition) {
                mark.unapplied.remove(&c.1);
            }
            mark.max_offset = max_offset;
            if reached || mark.candidate.is_none() {
                mark.candidate = Some((max_offset + 1, next_seq));
            }
        }
        Ok(())
    }
}

//! Which offsets may be stored: per partition, the lowest offset still in flight.
//!
//! Lanes finish messages out of order across keys; an offset is stored only
//! when every earlier message of its partition is final, so a restart resumes
//! exactly after the last message whose decisions were all recorded.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Track {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: i64,
    /// The last offset handed out for storing.
    stored: i64,
    /// The lowest offset skipped unhandled (its partition was being revoked):
    /// nothing at or past it may be stored, so its next owner handles it.
    ceiling: Option<i64>,
}

/// In-flight offsets of every partition this instance is working on.
#[derive(Default)]
pub struct OffsetTracker {
    parts: Mutex<HashMap<(String, i32), Track>>,
    idle: Condvar,
}

impl OffsetTracker {
    /// Records that a message was taken for processing.
    pub fn begin(&self, topic: &str, partition: i32, offset: i64) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let track = parts
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Track {
                stored: offset,
                ..Track::default()
            });
        track.in_flight.insert(offset);
        track.next = track.next.max(offset + 1);
    }

    /// Records that a message is final. Returns the offset to store (the next
    /// one to consume) when it advanced.
    pub fn complete(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let track = parts.get_mut(&(topic.to_string(), partition))?;
        track.in_flight.remove(&offset);
        let mut committable = track.in_flight.first().copied().unwrap_or(track.next);
        if let Some(ceiling) = track.ceiling {
            committable = committable.min(ceiling);
        }
        let advanced = committable > track.stored;
        if advanced {
            track.stored = committable;
        }
        if track.in_flight.is_empty() {
            self.idle.notify_all();
        }
        advanced.then_some(committable)
    }

    /// Records that a message was dropped unhandled because its partition is
    /// being revoked: it is no longer in flight, and no offset at or past it
    /// will be stored, so the partition's next owner handles it.
    pub fn skip(&self, topic: &str, partition: i32, offset: i64) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(track) = parts.get_mut(&(topic.to_string(), partition)) else {
            return;
        };
        track.in_flight.remove(&offset);
        track.ceiling = Some(track.ceiling.map_or(offset, |c| c.min(offset)));
        if track.in_flight.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Messages in flight for the given partitions.
    pub fn in_flight(&self, partitions: &[(String, i32)]) -> usize {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        partitions
            .iter()
            .filter_map(|k| parts.get(k))
            .map(|t| t.in_flight.len())
            .sum()
    }

    /// Blocks until the given partitions have nothing in flight, or `limit`
    /// passes. Called from the rebalance callback before giving partitions up.
    pub fn wait_idle(&self, partitions: &[(String, i32)], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let busy = partitions
                .iter()
                .filter_map(|k| parts.get(k))
                .any(|t| !t.in_flight.is_empty());
            if !busy {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            parts = self
                .idle
                .wait_timeout(parts, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Forgets every message in flight, once every lane has stopped at
    /// shutdown: those left were never started and belong to the partition's
    /// next owner (their offsets were never stored), so the revocation that
    /// follows need not wait for them.
    pub fn abandon_in_flight(&self) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        for t in parts.values_mut() {
            t.in_flight.clear();
        }
        self.idle.notify_all();
    }

    /// Forgets partitions this instance no longer owns.
    pub fn forget(&self, partitions: &[(String, i32)]) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        for k in partitions {
            parts.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_past_the_lowest_in_flight() {
        let t = OffsetTracker::default();
        for o in 10..14 {
            t.begin("tx", 0, o);
        }
        assert_eq!(
            t.complete("tx", 0, 12),
            None,
            "10 and 11 are still in flight"
        );
        assert_eq!(t.complete("tx", 0, 10), Some(11));
        assert_eq!(t.complete("tx", 0, 13), None);
        assert_eq!(t.complete("tx", 0, 11), Some(14));
        assert!(t.wait_idle(&[("tx".into(), 0)], Duration::ZERO));
    }

    #[test]
    fn a_skipped_message_is_never_stored_past() {
        let t = OffsetTracker::default();
        for o in 0..4 {
            t.begin("tx", 0, o);
        }
        t.skip("tx", 0, 2);
        t.skip("tx", 0, 3);
        assert_eq!(t.complete("tx", 0, 1), None, "0 is still in flight");
        assert_eq!(
            t.complete("tx", 0, 0),
            Some(2),
            "stored up to the first skipped message, which the next owner handles"
        );
        assert!(t.wait_idle(&[("tx".into(), 0)], Duration::ZERO));
    }
}

//! Messages held through quiet hours, and fallback steps waiting for a
//! delivery receipt: ordered by release time, one per idempotency key, a newer
//! message with the same collapse key replacing an older one, and released by
//! `Decider::release_held` when due.
//!
//! The queue is this instance's share (with a state directory, only what is
//! due within a minute); the held topic ([`super::held_log`]) is the durable
//! copy that survives restarts and follows partition moves.

use crate::util::FastMap;
use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::job::Job;
use crate::outcome::{Hop, Outcome};

/// One held message and what it needs at release.
#[derive(Debug)]
pub struct Held<T> {
    pub release_ms: i64,
    /// One entry per idempotency key: a re-delivered event is not held twice.
    pub idempotency_key: String,
    /// `user` + rule collapse key: a newer message replaces the held one.
    pub collapse: Option<String>,
    pub item: T,
}

/// Held messages by release time.
pub struct HeldQueue<T> {
    inner: Mutex<Inner<T>>,
    wake: Notify,
}

struct Inner<T> {
    by_time: BTreeMap<(i64, u64), Held<T>>,
    by_key: FastMap<String, (i64, u64)>,
    by_collapse: FastMap<String, (i64, u64)>,
    seq: u64,
}

/// The same message is already held.
#[derive(Debug, PartialEq, Eq)]
pub struct AlreadyHeld;

impl<T> Default for HeldQueue<T> {
    fn default() -> Self {
        HeldQueue {
            inner: Mutex::new(Inner {
                by_time: BTreeMap::new(),
                by_key: FastMap::default(),
                by_collapse: FastMap::default(),
                seq: 0,
            }),
            wake: Notify::new(),
        }
    }
}

impl<T> HeldQueue<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a message. Returns the older message it replaces (same collapse
    /// key), which the caller records as collapsed.
    pub fn hold(&self, held: Held<T>) -> Result<Option<Held<T>>, AlreadyHeld> {
        let mut inner = self.lock();
        if inner.by_key.contains_key(&held.idempotency_key) {
            return Err(AlreadyHeld);
        }
        let replaced = held
            .collapse
            .as_ref()
            .and_then(|c| inner.by_collapse.remove(c))
            .and_then(|slot| inner.by_time.remove(&slot));
        if let Some(old) = &replaced {
            inner.by_key.remove(&old.idempotency_key);
        }
        inner.seq += 1;
        let slot = (held.release_ms, inner.seq);
        inner.by_key.insert(held.idempotency_key.clone(), slot);
        if let Some(c) = &held.collapse {
            inner.by_collapse.insert(c.clone(), slot);
        }
        inner.by_time.insert(slot, held);
        drop(inner);
        self.wake.notify_one();
        Ok(replaced)
    }

    /// Holds a message in place of the one of its key, if any (a digest's
    /// new version), in one step: no reader of the held topic can put an
    /// older version back in between.
    pub fn put(&self, held: Held<T>) {
        let mut inner = self.lock();
        if let Some(slot) = inner.by_key.remove(&held.idempotency_key) {
            if let Some(old) = inner.by_time.remove(&slot) {
                if let Some(c) = &old.collapse {
                    if inner.by_collapse.get(c) == Some(&slot) {
                        inner.by_collapse.remove(c);
                    }
                }
            }
        }
        inner.seq += 1;
        let slot = (held.release_ms, inner.seq);
        inner.by_key.insert(held.idempotency_key.clone(), slot);
        if let Some(c) = &held.collapse {
            if let Some(other) = inner.by_collapse.insert(c.clone(), slot) {
                // Another message had the collapse key: it stays, without it.
                if let Some(h) = inner.by_time.get_mut(&other) {
                    h.collapse = None;
                }
            }
        }
        inner.by_time.insert(slot, held);
        drop(inner);
        self.wake.notify_one();
    }

    /// Takes out the message holding collapse key `collapse`, if any.
    pub fn take_collapse(&self, collapse: &str) -> Option<Held<T>> {
        let mut inner = self.lock();
        let slot = inner.by_collapse.remove(collapse)?;
        let held = inner.by_time.remove(&slot)?;
        inner.by_key.remove(&held.idempotency_key);
        Some(held)
    }

    /// Reads the message holding collapse key `collapse`, if any, leaving it held.
    pub fn peek_collapse<R>(&self, collapse: &str, read: impl FnOnce(&Held<T>) -> R) -> Option<R> {
        let inner = self.lock();
        let slot = inner.by_collapse.get(collapse)?;
        inner.by_time.get(slot).map(read)
    }

    /// Wakes the release loop (a message was held elsewhere: on disk).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Takes every message due at `now_ms`.
    pub fn due(&self, now_ms: i64) -> Vec<Held<T>> {
        let mut inner = self.lock();
        // Taken from the front one by one: most ticks find nothing or a few
        // due, and a split would copy the tree's nodes past them.
        let mut due = Vec::new();
        while let Some(first) = inner.by_time.first_entry() {
            if first.key().0 > now_ms {
                break;
            }
            let held = first.remove();
            inner.by_key.remove(&held.idempotency_key);
            if let Some(c) = &held.collapse {
                inner.by_collapse.remove(c);
            }
            due.push(held);
        }
        due
    }

    /// When the next message is due.
    pub fn next_ms(&self) -> Option<i64> {
        self.lock().by_time.keys().next().map(|(at, _)| *at)
    }

    /// Takes every message (at shutdown).
    pub fn drain(&self) -> Vec<Held<T>> {
        self.due(i64::MAX - 1)
    }

    /// Whether a message with this key is held here.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().by_key.contains_key(key)
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        self.lock().by_time.len()
    }

    /// Resolves when a message is held (the release loop's wake-up).
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a held message carries: the decision's inputs, the rest of its
/// fallback chain and the `held` outcome (for the shutdown record).
pub struct HeldMessage {
    pub job: Job,
    pub chain: Vec<String>,
    pub hops: Vec<Hop>,
    pub outcome: Outcome,
    /// Waiting for a delivery receipt of this message (idempotency key): when
    /// one arrived by release time, the rest of the chain is not needed.
    pub unless_heard_of: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(key: &str, at: i64, collapse: Option<&str>) -> Held<&'static str> {
        Held {
            release_ms: at,
            idempotency_key: key.into(),
            collapse: collapse.map(str::to_string),
            item: "m",
        }
    }

    #[test]
    fn released_in_time_order_when_due() {
        let q = HeldQueue::default();
        q.hold(held("b", 200, None)).unwrap();
        q.hold(held("a", 100, None)).unwrap();
        assert_eq!(q.next_ms(), Some(100));
        assert!(q.due(99).is_empty(), "not before its time");
        let due: Vec<_> = q.due(100).into_iter().map(|h| h.idempotency_key).collect();
        assert_eq!(due, ["a"], "exactly at its time");
        assert_eq!(q.len(), 1);
        assert_eq!(q.drain().len(), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn a_new_version_takes_its_keys_place_and_another_holder_keeps_its_own() {
        let q = HeldQueue::default();
        q.hold(held("d1", 100, Some("u1/digest"))).unwrap();
        q.put(held("d1", 300, Some("u1/digest")));
        assert_eq!(q.len(), 1, "one version per key");
        assert_eq!(q.next_ms(), Some(300), "the new version's time");
        // A second digest under the same collapse key: the first stays held.
        q.put(held("d2", 200, Some("u1/digest")));
        assert_eq!(q.len(), 2);
        assert_eq!(q.take_collapse("u1/digest").unwrap().idempotency_key, "d2");
        assert_eq!(q.due(300).len(), 1, "d1 is released at its own time");
    }

    #[test]
    fn one_per_key_and_newest_per_collapse_key() {
        let q = HeldQueue::default();
        q.hold(held("a", 100, Some("u1/balance"))).unwrap();
        assert_eq!(q.hold(held("a", 100, None)).unwrap_err(), AlreadyHeld);
        let replaced = q.hold(held("b", 150, Some("u1/balance"))).unwrap();
        assert_eq!(replaced.unwrap().idempotency_key, "a");
        assert_eq!(q.len(), 1);
        q.hold(held("c", 150, Some("u2/balance"))).unwrap();
        assert_eq!(q.len(), 2, "other users are not collapsed");
        // The replaced key may be held again later.
        q.hold(held("a", 300, None)).unwrap();
        assert_eq!(q.len(), 3);
    }
}

//! Messages held through quiet hours, and fallback steps waiting for a
//! delivery receipt: ordered by release time, one per idempotency key, a newer
//! message with the same collapse key replacing an older one, and released by
//! [`Pipeline::release_held`] when due.
//!
//! The queue is this instance's share; the held topic ([`super::held_log`])
//! is the durable copy that survives restarts and follows partition moves.

use crate::util::FastMap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::job::Job;
use super::Pipeline;
use crate::ingest::ConsumerHealth;
use crate::outcome::{Hop, Outcome, Pending, Status};

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

    /// Takes every message due at `now_ms`.
    pub fn due(&self, now_ms: i64) -> Vec<Held<T>> {
        let mut inner = self.lock();
        // Most ticks find nothing due: no split (it copies tree nodes) then.
        if inner
            .by_time
            .keys()
            .next()
            .is_none_or(|(at, _)| *at > now_ms)
        {
            return Vec::new();
        }
        let later = inner.by_time.split_off(&(now_ms + 1, 0));
        let due = std::mem::replace(&mut inner.by_time, later);
        for held in due.values() {
            inner.by_key.remove(&held.idempotency_key);
            if let Some(c) = &held.collapse {
                inner.by_collapse.remove(c);
            }
        }
        due.into_values().collect()
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

impl Pipeline {
    /// Releases held messages when due, until `shutdown`: the ones this
    /// instance held, and the ones it adopts from the held topic for the
    /// users whose intents partitions it owns. What is still held at shutdown stays on the
    /// held topic for the next owner.
    pub async fn release_held(
        self: Arc<Self>,
        health: Arc<ConsumerHealth>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            self.adopt(&health);
            let wait = self.held.next_ms().map_or(Duration::from_secs(1), |at| {
                Duration::from_millis((at - self.clock.now_ms()).clamp(0, 1000) as u64)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.held.wake.notified() => continue,
                _ = shutdown.changed() => break,
            }
            for held in self.held.due(self.clock.now_ms()) {
                self.metrics.held.set(self.held.len() as i64);
                if !self.owns_user(&health, &held.item.job.event.user) {
                    // Its user's partition moved: the new owner adopts it from the held topic.
                    continue;
                }
                // Not to be adopted again from the held topic meanwhile.
                self.held_log.forget(&held.idempotency_key);
                let pipeline = Arc::clone(&self);
                tokio::spawn(async move { pipeline.release(held).await });
            }
        }
        if !self.held.is_empty() {
            info!(
                held = self.held.len(),
                "stopping with held messages; they stay on the held topic"
            );
        }
        self.metrics.held.set(0);
    }

    /// Whether this instance decides for `user` now: it owns the user's
    /// intents partition (offline, with no broker, it decides for everyone).
    fn owns_user(&self, health: &ConsumerHealth, user: &str) -> bool {
        match &self.intents_topic {
            Some(topic) => health.owns(topic, self.ledger.partition_of(user)),
            None => true,
        }
    }

    /// Takes over held records of owned partitions that are not queued here.
    fn adopt(&self, health: &ConsumerHealth) {
        let records = self.held_log.adoptable(
            |record| self.owns_user(health, &record.event.user),
            |key| self.held.contains(key),
        );
        if records.is_empty() {
            return;
        }
        let loaded = self.rules.current();
        for record in records {
            let Some(rule) = loaded.set.position(&record.rule) else {
                warn!(rule = %record.rule, "held message of a rule that no longer exists; dropped");
                self.held_log.forget(&record.key);
                self.metrics
                    .held_released
                    .with_label_values(&["rule_removed"])
                    .inc();
                tokio::spawn(self.recorder.tombstone(&self.held_log.topic, &record.key));
                continue;
            };
            let held = Held {
                release_ms: record.release_ms,
                idempotency_key: record.key.clone(),
                collapse: record.collapse.clone(),
                item: HeldMessage {
                    job: Job {
                        intent: record
                            .intent
                            .clone()
                            .unwrap_or_else(|| record.key.clone())
                            .into(),
                        release: true,
                        loaded: Arc::clone(&loaded),
                        rule,
                        event: Arc::new(record.event.to_event()),
                        profile: None,
                        matched_ms: record.outcome.timings.matched_ms,
                        pattern: record.pattern_context.as_ref().map(|context| {
                            let event = Arc::new(record.event.to_event());
                            Arc::new(crate::patterns::Fired {
                                event,
                                context: context.clone(),
                                summary: record.outcome.pattern.clone().unwrap_or_default(),
                            })
                        }),
                    },
                    chain: record.chain.clone(),
                    hops: record.hops.clone(),
                    outcome: record.outcome.clone(),
                    unless_heard_of: record.unless_heard_of.clone(),
                },
            };
            if self.held.hold(held).is_ok() {
                info!(rule = %record.rule, release_ms = record.release_ms, "adopted a held message");
            }
        }
        self.metrics.held.set(self.held.len() as i64);
    }

    /// Runs a held message's decision again, now that its quiet hours ended:
    /// consent, freshness and caps are checked anew with the current profile.
    pub(super) async fn release(&self, entry: Held<HeldMessage>) {
        let key = entry.idempotency_key;
        let mut writes = Vec::new();
        self.release_one(entry.item, &mut writes).await;
        // Re-held (quiet again): its new record replaced the old one.
        if !self.held.contains(&key) {
            writes.push(self.recorder.tombstone(&self.held_log.topic, &key));
        }
        futures::future::join_all(writes).await;
    }

    async fn release_one(&self, mut held: HeldMessage, writes: &mut Vec<Pending>) {
        if let Some(key) = &held.unless_heard_of {
            let wait = Duration::from_millis(self.feedback_config.consent_wait_ms);
            // Unsure (feedback unreadable) counts as not delivered: reach the user.
            let _ = self.feedback.consent_barrier(wait).await;
            if self.feedback.heard_of(&held.job.event.user, key) {
                self.metrics
                    .held_released
                    .with_label_values(&["delivered"])
                    .inc();
                return;
            }
        }
        held.job.profile = self.profiles.get(&held.job.event.user);
        let decided = self
            .run_chain(&held.job, &held.chain, held.hops.clone())
            .await;
        for d in decided {
            let result = match (d.outcome.status, d.outcome.reason_code) {
                (Status::Sent, _) => "sent",
                (Status::Held, _) => "held_again",
                (Status::Suppressed, Some("stale")) => "stale",
                (Status::Suppressed, _) => "suppressed",
                (Status::Failed, _) => "failed",
            };
            self.metrics
                .held_released
                .with_label_values(&[result])
                .inc();
            self.record(d, writes);
        }
    }
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

//! Stage 2's held messages: deferring a decision (quiet hours, a wait for a delivery receipt), replacing one by its collapse key, and releasing them when due — from memory, or, with a state directory, from the held table on disk a minute ahead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use super::decider::{Decided, Decider};
use super::held::{AlreadyHeld, Held, HeldMessage};
use super::held_log::HeldRecord;
use super::job::Job;
use super::order::Gate;
use crate::ingest::ConsumerHealth;
use crate::metrics::StageEvent;
use crate::outcome::{Pending, Status};
use crate::rules::Loaded;

/// With the held table on disk, messages due within this much are read into
/// memory ahead of their time; the rest stay on disk.
const AHEAD_MS: i64 = 60_000;
/// With the held table on disk, at most this many held messages in memory
/// (due ones first); more wait on disk for the next round.
const IN_MEMORY: usize = 20_000;
/// How often held messages are taken up from the table on disk.
const TAKE_UP_EVERY: Duration = Duration::from_secs(1);
/// How often the table is read again from its earliest due message, not
/// only past what was read: a message that reached the disk after its
/// partition was read (another owner's, written during a partition move).
const READ_AGAIN_EVERY: Duration = Duration::from_secs(10);

/// What the take-up has read of the held table already: per owned
/// partition, the release time up to which every message is in memory (or
/// known orphaned). Reading only past it keeps a take-up's cost to the
/// messages newly due, not all those due within [`AHEAD_MS`] (re-read and
/// skipped each time, that was a third of stage 2's CPU in a drain with
/// 2,000 messages awaiting delivery receipts).
#[derive(Default)]
pub(super) struct TakenUp {
    owned: Vec<i32>,
    after: std::collections::HashMap<i32, i64>,
    orphans: usize,
    last: Option<Instant>,
    read_all: Option<Instant>,
}

impl TakenUp {
    /// Whether it is time for the next take-up.
    fn is_due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= TAKE_UP_EVERY)
    }

    /// The partitions to read and from where; everything again when the
    /// partitions owned or the orphans changed, or every [`READ_AGAIN_EVERY`].
    fn from(&mut self, owned: Vec<i32>, orphans: usize) -> Vec<(i32, i64)> {
        let now = Instant::now();
        self.last = Some(now);
        let stale = self
            .read_all
            .is_none_or(|t| t.elapsed() >= READ_AGAIN_EVERY);
        if stale || owned != self.owned || orphans != self.orphans {
            self.after.clear();
            self.read_all = Some(now);
        }
        self.owned = owned;
        self.orphans = orphans;
        self.owned
            .iter()
            .map(|&p| (p, self.after.get(&p).copied().unwrap_or(i64::MIN)))
            .collect()
    }

    /// Every message of the owned partitions due by `upto` was taken up.
    fn read_to(&mut self, upto: i64) {
        for &p in &self.owned {
            self.after.insert(p, upto);
        }
    }

    /// Some were left for lack of room: read from the start next time.
    fn read_again(&mut self) {
        self.after.clear();
    }
}

impl Decider {
    /// Defers a decision: holds the message until its release time, when
    /// its chain runs again from the first policy step, and writes it to the
    /// held topic. The one mechanism behind every deferral (quiet hours, a
    /// wait for a delivery receipt). Returns the held topic's write and the
    /// message it replaced (same collapse key), or [`AlreadyHeld`].
    /// With the held table on disk, a message due later than
    /// [`AHEAD_MS`] is not kept in memory: it is read back when due.
    pub(super) fn defer(
        &self,
        held: Held<HeldMessage>,
    ) -> Result<(Pending, Option<Held<HeldMessage>>), AlreadyHeld> {
        self.hold_record(held, false)
    }

    /// [`Decider::defer`]; with `update`, the message may be held under its
    /// key already and is written again (a digest's new item: one key per
    /// digest, so every version lands on one partition of the held topic,
    /// in order, and a crash leaves the last version written).
    pub(super) fn hold_record(
        &self,
        held: Held<HeldMessage>,
        update: bool,
    ) -> Result<(Pending, Option<Held<HeldMessage>>), AlreadyHeld> {
        let key = held.idempotency_key.clone();
        // On disk the record is looked up before the topic gives it back;
        // in memory (offline tools, whose recorder keeps no held topic) it
        // is built only if it is written.
        let record = self
            .held_log
            .is_on_disk()
            .then(|| Arc::new(HeldRecord::of(&held)));
        let mut replaced = None;
        if record.is_some() {
            if !update && (self.held.contains(&key) || self.held_log.holds(&key)) {
                return Err(AlreadyHeld);
            }
            replaced = held.collapse.as_deref().and_then(|c| {
                self.held.take_collapse(c).or_else(|| {
                    let old = self.held_log.holder(c).filter(|r| r.key != key)?;
                    self.restore_held(&old, &self.cx.rules.current())
                })
            });
        }
        self.held_log.wrote_hold(&key, record.clone());
        let write = self.cx.recorder.publish_built(
            &self.held_log.topic,
            &self.held_log.topic_key(&key),
            || match &record {
                Some(r) => crate::util::json_bytes(&**r),
                None => crate::util::json_bytes(&HeldRecord::of(&held)),
            },
        );
        let replaced = match record {
            // A new version of a message held under its key: in memory now,
            // whenever it is due (an older one must not be released).
            _ if update => {
                self.held.put(held);
                replaced
            }
            // In memory every held message is queued.
            None => self.held.hold(held)?,
            // Nothing of its key or collapse key is queued now.
            Some(_) if held.release_ms <= self.cx.clock.now_ms() + AHEAD_MS => {
                let _ = self.held.hold(held);
                replaced
            }
            Some(_) => {
                self.held.wake();
                replaced
            }
        };
        self.cx.metrics.emit(StageEvent::HeldNow(self.held.len()));
        Ok((write, replaced))
    }

    /// Ends the hold of `key` (released, replaced, its rule gone): its
    /// tombstone on the held topic.
    pub(super) fn unhold(&self, key: &str) -> Pending {
        self.held_log.forget(key);
        self.held_log.wrote_tombstone(key);
        let current = self
            .cx
            .recorder
            .tombstone(&self.held_log.topic, &self.held_log.topic_key(key));
        if !self.held_log.is_on_disk() {
            return current;
        }
        // In service, also its key as written before keys carried the
        // deployment (a message held across the upgrade): it never comes back.
        let legacy = self.cx.recorder.tombstone(&self.held_log.topic, key);
        Box::pin(async move {
            futures::future::join(current, legacy).await;
        })
    }

    /// Waits (up to five seconds) until the held topic is read to its end,
    /// so that a digest written before a restart is found, not begun again.
    pub(super) async fn held_read(&self) {
        if !self.held_log.is_on_disk() || self.held_log.is_caught_up() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.held_log.wait_caught_up()).await;
    }

    /// Whether a message is held under `key`, in memory or on disk.
    fn is_held(&self, key: &str) -> bool {
        self.held.contains(key) || (self.held_log.is_on_disk() && self.held_log.holds(key))
    }

    /// The outcome of a held message replaced by a newer one with its collapse key.
    pub(super) fn collapsed(&self, old: HeldMessage) -> Decided {
        let mut outcome = old.outcome;
        outcome.status = Status::Suppressed;
        outcome.because("collapsed", "collapsed");
        outcome.release_ms = None;
        self.cx.metrics.emit(StageEvent::HeldEnded("collapsed"));
        let key = format!("{}/{}", old.job.intent, outcome.channel);
        Decided::new(&old.job, outcome, key)
    }

    /// Releases held messages when due, until `shutdown`: the ones this
    /// instance held, and the ones it takes up from the held topic (or its
    /// table on disk) for the users whose intents partitions it owns. What
    /// is still held at shutdown stays on the held topic for the next owner.
    pub(super) async fn release_held(
        self: Arc<Self>,
        health: Arc<ConsumerHealth>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut taken = TakenUp::default();
        loop {
            if taken.is_due() {
                self.take_up(&health, &mut taken);
            }
            let wait = self.held.next_ms().map_or(Duration::from_secs(1), |at| {
                Duration::from_millis((at - self.cx.clock.now_ms()).clamp(0, 1000) as u64)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.held.woken() => continue,
                _ = shutdown.changed() => break,
            }
            // No item joins a digest while it is taken for release.
            let _one = self.digesting.lock().unwrap_or_else(|p| p.into_inner());
            for held in self.held.due(self.cx.clock.now_ms()) {
                self.cx.metrics.emit(StageEvent::HeldNow(self.held.len()));
                if !self.owns_user(&health, &held.item.job.event.user) {
                    // Its user's partition moved: the new owner takes it up from the held topic.
                    continue;
                }
                // Not to be taken up again from the held topic meanwhile.
                self.held_log.forget(&held.idempotency_key);
                let decider = Arc::clone(&self);
                tokio::spawn(async move { decider.release(held).await });
            }
            drop(_one);
        }
        if !self.held.is_empty() {
            info!(
                held = self.held.len(),
                "stopping with held messages; they stay on the held topic"
            );
        }
        self.cx.metrics.emit(StageEvent::HeldNow(0));
    }

    /// Whether this instance decides for `user` now: it owns the user's
    /// intents partition (offline, with no broker, it decides for everyone).
    fn owns_user(&self, health: &ConsumerHealth, user: &str) -> bool {
        match &self.intents_topic {
            Some(topic) => health.owns(topic, self.ledger.partition_of(user)),
            None => true,
        }
    }

    /// Takes into memory the held messages of owned partitions that are not
    /// queued here: in memory, every one the held topic has; on disk, those
    /// due within [`AHEAD_MS`], up to [`IN_MEMORY`].
    fn take_up(&self, health: &ConsumerHealth, taken: &mut TakenUp) {
        let loaded = self.cx.rules.current();
        let orphans: std::collections::BTreeSet<String> = {
            let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            // A rule back: its messages are taken up again (late ones at once).
            orphans.retain(|_, rule| loaded.set.position(rule).is_none());
            orphans.keys().cloned().collect()
        };
        let skip = |key: &str| self.held.contains(key) || orphans.contains(key);
        let records = match self.held_log.is_on_disk() {
            false => self
                .held_log
                .adoptable(|record| self.owns_user(health, &record.event.user), skip),
            true => {
                let room = IN_MEMORY.saturating_sub(self.held.len());
                if room == 0 || !self.held_log.is_caught_up() {
                    return;
                }
                let owned: Vec<i32> = match &self.intents_topic {
                    Some(topic) => (0..self.ledger.partitions())
                        .filter(|&p| health.owns(topic, p))
                        .collect(),
                    None => (0..self.ledger.partitions()).collect(),
                };
                let upto = self.cx.clock.now_ms() + AHEAD_MS;
                let from = taken.from(owned, orphans.len());
                let (mut due, full) = self.held_log.due(&from, upto, room + orphans.len(), skip);
                match full || due.len() > room {
                    true => taken.read_again(),
                    false => taken.read_to(upto),
                }
                due.sort_by_key(|r| r.release_ms);
                due.truncate(room);
                due
            }
        };
        if records.is_empty() {
            return;
        }
        for record in records {
            let Some(held) = self.restore_held(&record, &loaded) else {
                self.orphaned(&record);
                continue;
            };
            if self.held.hold(held).is_ok() && !self.held_log.is_on_disk() {
                info!(rule = %record.rule, release_ms = record.release_ms, "adopted a held message");
            }
        }
        self.cx.metrics.emit(StageEvent::HeldNow(self.held.len()));
    }

    /// A held message whose rule is not loaded (removed, renamed, or a
    /// deployment with other rules on the same held topic): never dropped.
    /// It stays held on the topic, is counted (`herald_held_orphaned`, and a
    /// warning on `/readyz`), and a copy of its whole record goes to the
    /// dead-letter topic once, for an operator to re-publish or let go; it
    /// is released when its rule is back.
    fn orphaned(&self, record: &HeldRecord) {
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        if orphans
            .insert(record.key.clone(), record.rule.clone())
            .is_some()
        {
            return;
        }
        warn!(rule = %record.rule, "held message of a rule that is not loaded; kept held until the rule is back (dead-lettered as held_rule_removed for an operator)");
        self.cx
            .metrics
            .emit(StageEvent::HeldOrphaned(orphans.len()));
        let code = crate::outcome::DeadLetterCode::HeldRuleRemoved;
        self.cx.metrics.emit(StageEvent::DeadLettered {
            reason: code.as_str(),
        });
        let json = crate::util::json_bytes(record);
        tokio::spawn(self.cx.recorder.dead_letter(&crate::outcome::DeadLetter {
            reason: code.into(),
            detail: format!(
                "held message of rule `{}`, which is not loaded; it stays held and is released when the rule is back; the original is its held-topic record (key `{}`)",
                record.rule, record.key
            ),
            topic: self.held_log.topic.clone(),
            partition: -1,
            offset: -1,
            original: crate::outcome::Original::of(Some(record.key.as_bytes()), Some(&json)),
            rule: Some(record.rule.clone()),
            channel: None,
            at_ms: self.cx.clock.now_ms(),
        }));
    }

    /// A held message from its record, with the rules as `loaded` now
    /// (`None`: its rule no longer exists).
    pub(super) fn restore_held(
        &self,
        record: &HeldRecord,
        loaded: &Arc<Loaded>,
    ) -> Option<Held<HeldMessage>> {
        let rule = loaded.set.position(&record.rule)?;
        let event = Arc::new(record.event.to_event());
        Some(Held {
            release_ms: record.release_ms,
            idempotency_key: record.key.clone(),
            collapse: record.collapse.clone(),
            item: HeldMessage {
                job: Job {
                    release: true,
                    received_ms: record.outcome.timings.received_ms,
                    pattern: record.pattern_context.as_ref().map(|context| {
                        Arc::new(crate::patterns::Fired {
                            event: Arc::clone(&event),
                            context: context.clone(),
                            summary: record.outcome.pattern.clone().unwrap_or_default(),
                        })
                    }),
                    subscription: record
                        .outcome
                        .subscription
                        .as_ref()
                        .and_then(|s| serde_json::from_value(s.clone()).ok())
                        .map(Arc::new),
                    digest: record.digest.clone().map(Arc::new),
                    ..Job::matched(
                        record
                            .intent
                            .clone()
                            .unwrap_or_else(|| record.key.clone())
                            .into(),
                        loaded,
                        rule,
                        event,
                        None,
                        record.outcome.timings.matched_ms,
                    )
                },
                chain: record.chain.clone(),
                hops: record.hops.clone(),
                outcome: record.outcome.clone(),
                unless_heard_of: record.unless_heard_of.clone(),
            },
        })
    }

    /// Runs a held message's decision again, now that its quiet hours ended:
    /// consent, freshness and caps are checked anew with the current profile.
    pub(super) async fn release(&self, entry: Held<HeldMessage>) {
        let key = entry.idempotency_key;
        let mut writes = Vec::new();
        self.release_one(entry.item, &mut writes).await;
        // Re-held (quiet again): its new record replaced the old one.
        if !self.is_held(&key) {
            writes.push(self.unhold(&key));
        }
        futures::future::join_all(writes).await;
    }

    async fn release_one(&self, mut held: HeldMessage, writes: &mut Vec<Pending>) {
        if !self.close_digest(&mut held, writes) {
            return;
        }
        if let Some(key) = &held.unless_heard_of {
            let wait = Duration::from_millis(self.feedback_config.consent_wait_ms);
            // Unsure (feedback unreadable) counts as not delivered: reach the user.
            let _ = self.feedback.consent_barrier(wait).await;
            if self.feedback.heard_of(&held.job.event.user, key) {
                self.cx.metrics.emit(StageEvent::HeldEnded("delivered"));
                return;
            }
        }
        held.job.profile = self.cx.profiles.get(&held.job.event.user);
        let decided = self
            .run_chain(&held.job, &held.chain, held.hops.clone(), &Gate::none())
            .await;
        for d in decided {
            let result = match (d.outcome.status, d.outcome.reason_code) {
                (Status::Sent, _) => "sent",
                (Status::Held, _) => "held_again",
                (Status::Suppressed, Some("stale")) => "stale",
                (Status::Suppressed, _) => "suppressed",
                (Status::Failed, _) => "failed",
            };
            self.cx.metrics.emit(StageEvent::HeldEnded(result));
            self.record(d, writes);
        }
    }

    /// Releases the held messages due at the clock's time, one after the
    /// other (rule tests and replays, on a virtual clock).
    pub(super) async fn release_due(&self) {
        for held in self.held.due(self.cx.clock.now_ms()) {
            self.held_log.forget(&held.idempotency_key);
            self.release(held).await;
        }
    }

    /// Whether a message is held.
    pub(super) fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }
}

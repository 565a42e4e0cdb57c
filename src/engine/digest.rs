//! Stage 2's digests: a rule's items collected per recipient, group and channel into one held record (durable as every held message: the held topic, restored after a restart, a kill -9 or a partition move), closed when its window ends or it is full, and items withdrawn by a later event.
//!
//! A digest is a held message whose job carries its items
//! ([`DigestState`]), held under its id. Each new item writes the digest
//! again under the same key (so every version lands on one partition of the
//! held topic, in order, and a crash leaves the last one written); at its
//! release time the digest closes and its chain runs
//! once, from the first policy step, as one message. Its send is keyed in
//! the send ledger by `<digest id>/<channel>`, so a digest released twice (a
//! crash between its send and its tombstone) is sent once.

use std::sync::Arc;

use serde_json::json;
use tracing::warn;

use super::decider::{Decided, Decider};
use super::held::{Held, HeldMessage};
use super::job::{DigestItem, DigestKey, DigestState, Job};
use crate::metrics::StageEvent;
use crate::outcome::{Hop, Pending, Status};
use crate::policy::{DigestRole, Suppression};
use crate::rules::digest::Digest;
use crate::state::{LedgerEntry, LedgerStatus};

/// When a digest group that could not be computed was last logged (epoch s).
static GROUP_FAILED_SAID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

impl Decider {
    /// What this decision is to a digest, and the key of the digest an
    /// item goes to: the digest's send; an item; or, with `first_at_once`
    /// and no digest open, a message that goes at once (and opens one).
    pub(super) fn digest_role(&self, job: &Job, channel: &str) -> (DigestRole, Option<DigestKey>) {
        if job.digest.is_some() {
            return (DigestRole::Send, None);
        }
        let rule = job.rule();
        let Some(spec) = rule.digest.as_deref() else {
            return (DigestRole::None, None);
        };
        // Held by quiet hours after it went at once as a first item.
        if job.release {
            return (DigestRole::None, None);
        }
        let key = self.digest_key(job, spec.group_by.as_ref(), channel);
        if spec.first_at_once && self.open_digest(&key.collapse).is_none() {
            return (DigestRole::None, Some(key));
        }
        (DigestRole::Item, Some(key))
    }

    /// The group of `job`'s event (by `expression`) and the collapse key of
    /// its digest on `channel`. An event the expression fails on goes to
    /// the rule's digest without a group (logged at most once a second).
    fn digest_key(
        &self,
        job: &Job,
        expression: Option<&crate::expr::condition::Condition>,
        channel: &str,
    ) -> DigestKey {
        let rule = job.rule();
        let group = expression.and_then(|e| {
            let conditions = &job.loaded.set.conditions;
            let scope = conditions.scope(&job.event.fields, job.profile.as_deref());
            // Kept at rest (the held record, the outcome) and shown to
            // templates: a card number in it keeps only its last four
            // digits, as everywhere herald keeps an event. The recipient is
            // in the key too, so only one user's cards that share their
            // last four digits would share a group.
            let group = conditions
                .key(e, &scope)
                .map(|g| crate::outcome::redact::mask_text(&g).unwrap_or(g));
            if group.is_none() && crate::util::once_a_second(&GROUP_FAILED_SAID) {
                warn!(rule = %rule.id, "digest group could not be computed for an event; it joins the digest without a group");
            }
            group
        });
        let collapse = format!(
            "digest\u{0}{}\u{0}{}\u{0}{}\u{0}{channel}",
            job.event.user,
            rule.id,
            group.as_deref().unwrap_or("")
        );
        DigestKey { group, collapse }
    }

    /// The digest open (collecting) under `collapse`, in memory or on disk.
    /// One past its closing time still collects until its release takes it
    /// (under [`Decider::digesting`]): the release then sends the item too.
    fn open_digest(&self, collapse: &str) -> Option<Arc<DigestState>> {
        let held = self
            .held
            .peek_collapse(collapse, |h| h.item.job.digest.clone())
            .flatten()
            .or_else(|| {
                self.held_log
                    .is_on_disk()
                    .then(|| self.held_log.holder(collapse))
                    .flatten()
                    .and_then(|r| r.digest.clone().map(Arc::new))
            })?;
        // Closed (its send waits out quiet hours): a new one opens.
        (!held.closed).then_some(held)
    }

    /// Collects the item the chain said to digest: into the open digest, or
    /// a new one; the item's outcome is `held`, `digested:<id>`.
    pub(super) fn collect(
        &self,
        job: &Job,
        chain: &[String],
        hops: &[Hop],
        key: DigestKey,
        mut d: Decided,
    ) -> Decided {
        let Some(spec) = job.rule().digest.clone() else {
            return d;
        };
        let _one = self.digesting.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.cx.clock.now_ms();
        let mut state = match self.open_digest(&key.collapse) {
            Some(open) => (*open).clone(),
            None => DigestState::open(
                digest_id(&key.collapse, &job.intent),
                key.group.clone(),
                now,
            ),
        };
        if state.items.iter().any(|i| *i.intent == *job.intent) {
            // Its intent again (a redelivery whose ledger entry was not
            // written before a crash): it is in the digest already.
            d.ledger_key = None;
            self.suppressed(&mut d, Suppression::Duplicate);
            return d;
        }
        state.items.push(item_of(job, now));
        self.advance(&mut state, &spec, job, now);
        self.cx.metrics.emit(StageEvent::DigestItems {
            result: "collected",
            count: 1,
        });
        d.outcome.status = Status::Held;
        d.outcome
            .because("digested", format!("digested:{}", state.id));
        d.outcome.release_ms = Some(state.closes_ms);
        d.outcome.digest = Some(json!({"id": state.id, "closes_ms": state.closes_ms}));
        let outcome = (*d.outcome).clone();
        match self.hold_digest(job, chain, hops, key, state, outcome) {
            Some(writes) => {
                // The item's `held` ledger entry only once the digest that
                // holds it is on the held topic: a crash between the two
                // leaves the intent undecided (taken again), never decided
                // and in no digest.
                let entry = LedgerEntry {
                    user: job.event.user.clone(),
                    status: LedgerStatus::Held,
                    at_ms: now,
                    category: job.rule().category.clone(),
                    rule: job.rule().id.clone(),
                    idempotency_key: Arc::default(),
                };
                let ledger = Arc::clone(&self.ledger);
                let ledger_key = d.ledger_key.take();
                d.writes.push(Box::pin(async move {
                    futures::future::join_all(writes).await;
                    if let Some(write) = ledger_key.and_then(|k| ledger.record(&k, entry)) {
                        write.await;
                    }
                }));
            }
            None => {
                // Held already and not to be written again.
                d.ledger_key = None;
                self.suppressed(&mut d, Suppression::Duplicate);
            }
        }
        d
    }

    /// After the first item of a window went at once (`first_at_once`):
    /// opens an empty digest for the rest to collect in.
    pub(super) fn open_after_first(
        &self,
        job: &Job,
        chain: &[String],
        hops: &[Hop],
        key: DigestKey,
        sent: &crate::outcome::Outcome,
    ) -> Vec<Pending> {
        let Some(spec) = job.rule().digest.clone() else {
            return Vec::new();
        };
        let _one = self.digesting.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.cx.clock.now_ms();
        if self.open_digest(&key.collapse).is_some() {
            return Vec::new();
        }
        let mut state = DigestState::open(
            digest_id(&key.collapse, &job.intent),
            key.group.clone(),
            now,
        );
        self.advance(&mut state, &spec, job, now);
        let mut outcome = sent.clone();
        outcome.status = Status::Held;
        outcome.because("digest_window", "digest_window");
        self.hold_digest(job, chain, hops, key, state, outcome)
            .unwrap_or_default()
    }

    /// A new revision of `state`, closing at its window's end (now when full).
    fn advance(&self, state: &mut DigestState, spec: &Digest, job: &Job, now: i64) {
        let zone = job
            .profile
            .as_deref()
            .and_then(|p| p.time_zone.as_deref())
            .and_then(crate::util::time_zone)
            .unwrap_or(jiff::tz::TimeZone::UTC);
        state.last_ms = now;
        state.revision += 1;
        state.closes_ms = if state.items.len() >= spec.max_items {
            now
        } else {
            spec.closes_ms(state.opened_ms, now, &zone)
        };
    }

    /// Holds the digest's new version under its id, replacing the one
    /// before: the held topic's writes, or `None` when it cannot be held.
    fn hold_digest(
        &self,
        job: &Job,
        chain: &[String],
        hops: &[Hop],
        key: DigestKey,
        state: DigestState,
        outcome: crate::outcome::Outcome,
    ) -> Option<Vec<Pending>> {
        // Its version before leaves the queue here: the new one takes its key.
        let before = self
            .held
            .peek_collapse(&key.collapse, |h| h.idempotency_key == state.id)
            .unwrap_or(false);
        if before {
            self.held.take_collapse(&key.collapse);
        }
        let held = Held {
            release_ms: state.closes_ms,
            idempotency_key: state.id.clone(),
            collapse: Some(key.collapse),
            item: HeldMessage {
                job: Job {
                    intent: state.id.as_str().into(),
                    release: true,
                    pattern: None,
                    digest: Some(Arc::new(state)),
                    ..job.clone()
                },
                chain: chain.to_vec(),
                hops: hops.to_vec(),
                outcome,
                unless_heard_of: None,
            },
        };
        let id = held.idempotency_key.clone();
        let (write, replaced) = self.hold_record(held, true).ok()?;
        let writes = match replaced {
            // Its own version before (on disk): the new one, same key, replaces it.
            Some(old) if old.idempotency_key == id => vec![write],
            // Another digest under the same key, not seen as open when this
            // one began (the held topic not read to its end yet after a
            // start): never replaced; it goes at its own time.
            Some(other) => {
                let _ = self.held.hold(Held {
                    collapse: None,
                    ..other
                });
                vec![write]
            }
            None => vec![write],
        };
        Some(writes)
    }

    /// A later event that may take waiting items back (`digest.withdraw`):
    /// each item of the user's open digests of the rule (in the event's
    /// group) that the condition holds for is removed, with an outcome
    /// `withdrawn`; a digest left empty is let go and sends nothing.
    pub(super) fn withdraw(&self, job: &Job, writes: &mut Vec<Pending>) {
        let mut gone = Vec::new();
        self.withdraw_into(job, writes, &mut gone);
        for d in gone {
            self.record(d, writes);
        }
    }

    fn withdraw_into(&self, job: &Job, writes: &mut Vec<Pending>, gone: &mut Vec<Decided>) {
        let rule = job.rule();
        let Some(spec) = rule.digest.as_deref() else {
            return;
        };
        let Some(w) = spec.withdraw.as_ref() else {
            return;
        };
        let conditions = &job.loaded.set.conditions;
        let scope = conditions.scope(&job.event.fields, job.profile.as_deref());
        let _one = self.digesting.lock().unwrap_or_else(|p| p.into_inner());
        for channel in job.channels().iter() {
            let key = self.digest_key(job, w.group.as_ref().or(spec.group_by.as_ref()), channel);
            let Some(open) = self.open_digest(&key.collapse) else {
                continue;
            };
            let mut state = (*open).clone();
            let mut kept = Vec::with_capacity(state.items.len());
            for item in std::mem::take(&mut state.items) {
                let fields: crate::ingest::fields::Fields = item.event.fields.clone().into();
                let taken = conditions
                    .eval_with_steps(&w.condition, &scope, &[("item", &fields)])
                    .unwrap_or(false);
                match taken {
                    true => gone.push(self.withdrawn(job, channel, &state, &item)),
                    false => kept.push(item),
                }
            }
            if kept.len() == open.items.len() {
                continue;
            }
            state.items = kept;
            state.revision += 1;
            let held_key = open.id.clone();
            if state.items.is_empty() {
                // Nothing left to send: let the digest go.
                self.held.take_collapse(&key.collapse);
                writes.push(self.unhold(&held_key));
                self.cx
                    .metrics
                    .emit(StageEvent::HeldEnded("digest_withdrawn"));
                continue;
            }
            let outcome = crate::outcome::Outcome {
                status: Status::Held,
                ..self.digest_outcome(job, channel, &state)
            };
            let chain: Vec<String> = match rule.fallback {
                true => rule.channels.clone(),
                false => vec![channel.clone()],
            };
            writes.extend(
                self.hold_digest(job, &chain, &[], key, state, outcome)
                    .unwrap_or_default(),
            );
        }
    }

    /// The outcome of an item a later event withdrew.
    fn withdrawn(
        &self,
        job: &Job,
        channel: &str,
        state: &DigestState,
        item: &DigestItem,
    ) -> Decided {
        let mut outcome = self.digest_outcome(job, channel, state);
        let e = &job.event;
        outcome.source = crate::outcome::SourceRef {
            topic: Arc::from(item.event.source.as_str()),
            partition: item.event.partition,
            offset: item.event.offset,
        };
        outcome.key = item.event.key.clone();
        outcome.digest = Some(json!({"id": state.id, "item": item.intent}));
        self.cx.metrics.emit(StageEvent::DigestItems {
            result: "withdrawn",
            count: 1,
        });
        let mut d = Decided::new(job, outcome, String::new());
        d.ledger_key = None;
        self.suppressed(
            &mut d,
            Suppression::Withdrawn {
                by: format!("{}/{}/{}", e.source, e.partition, e.offset),
            },
        );
        d
    }

    /// A suppressed outcome of the rule for the user on `channel`, timed now.
    fn digest_outcome(
        &self,
        job: &Job,
        channel: &str,
        state: &DigestState,
    ) -> crate::outcome::Outcome {
        let channel: Arc<str> = channel.into();
        crate::outcome::Outcome {
            release_ms: Some(state.closes_ms),
            pattern: None,
            subscription: None,
            digest: Some(json!({"id": state.id, "closes_ms": state.closes_ms})),
            experiment: None,
            ..job.outcome(&channel, self.cx.clock.now_ms())
        }
    }

    /// At its release, a collecting digest closes: `false` when it holds
    /// no item (all withdrawn, or only a first that went at once), so
    /// nothing is sent. The items' missing ledger entries go into `writes`,
    /// awaited with the digest's own records.
    pub(super) fn close_digest(&self, held: &mut HeldMessage, writes: &mut Vec<Pending>) -> bool {
        let Some(state) = held.job.digest.as_ref().filter(|s| !s.closed) else {
            return true;
        };
        if state.items.is_empty() {
            self.cx.metrics.emit(StageEvent::HeldEnded("digest_empty"));
            return false;
        }
        // Each item's `held` entry, in case its own was lost with a crash:
        // its intent, delivered again, is then a duplicate, not a new item.
        if let Some(channel) = held.chain.first() {
            for item in &state.items {
                let key = crate::util::slash_joined(&[&item.intent, channel]);
                if self.ledger.entry(&held.job.event.user, &key).is_none() {
                    let entry = LedgerEntry {
                        user: held.job.event.user.clone(),
                        status: LedgerStatus::Held,
                        at_ms: self.cx.clock.now_ms(),
                        category: held.job.rule().category.clone(),
                        rule: held.job.rule().id.clone(),
                        idempotency_key: Arc::default(),
                    };
                    writes.extend(self.ledger.record(&key, entry));
                }
            }
        }
        let mut closed = (**state).clone();
        closed.closed = true;
        self.cx.metrics.emit(StageEvent::DigestItems {
            result: "closed",
            count: closed.items.len(),
        });
        held.job.digest = Some(Arc::new(closed));
        true
    }
}

/// A digest's id: from its collapse key and its first item's intent, so a
/// replay opens the same digest.
fn digest_id(collapse: &str, first: &str) -> String {
    let digest = crate::util::stable_digest(&[collapse.as_bytes(), first.as_bytes()]);
    format!("digest-{}", crate::util::digest_hex(&digest))
}

/// What a digest keeps of a job: its intent, its event (card numbers
/// masked), what completed its pattern.
fn item_of(job: &Job, now: i64) -> DigestItem {
    DigestItem {
        intent: job.intent.to_string(),
        at_ms: now,
        event: job.masked_event(),
        pattern: job.pattern.as_ref().map(|p| {
            let mut context = p.context.clone();
            crate::outcome::redact::mask_json(&mut context);
            context
        }),
    }
}

//! One rule's decision inputs for one event, owned so a held message can keep
//! them until its release, and the intent stage 1 writes for them.

use std::sync::Arc;

use crate::ingest::decode::Event;
use crate::outcome::{Outcome, SourceRef, Status, Timings};
use crate::profile::Profile;
use crate::rules::experiment::{Arm, Experiment};
use crate::rules::{Loaded, Rule};
use crate::state::intent::{EventRecord, FiredRecord, Purpose, SubscriptionUsed};

use crate::state::Intent;

/// The inputs of one rule's decision for one event, owned so a held message
/// can keep them until its release.
#[derive(Clone)]
pub struct Job {
    /// The intent's deterministic id: with the channel, its send-ledger key.
    pub intent: Arc<str>,
    pub loaded: Arc<Loaded>,
    pub rule: usize,
    pub event: Arc<Event>,
    pub profile: Option<Arc<Profile>>,
    pub matched_ms: i64,
    /// When stage 2 took its intent from the intents topic (`matched_ms`
    /// where both stages run in one process).
    pub received_ms: i64,
    /// For a rule with a pattern: what completed it.
    pub pattern: Option<Arc<crate::patterns::Fired>>,
    /// Decided again at the release of a hold (the ledger says `held`).
    pub release: bool,
    /// For a subscription rule: the user's values its match used.
    pub subscription: Option<Arc<SubscriptionUsed>>,
    /// A digest: collecting (its window open), or its send once closed.
    pub digest: Option<Arc<DigestState>>,
    /// A message; or a later event that may take waiting items out of the
    /// recipient's digests of this rule, or that meets its experiment's goal.
    pub purpose: Purpose,
    /// Its user's arm of the rule's experiment, once asked ([`Job::arm`]:
    /// asked once per channel and step, computed once).
    pub(super) arm: std::sync::OnceLock<usize>,
}

/// Where an item of a job goes: its group and the digest's collapse key.
#[derive(Debug, Clone)]
pub struct DigestKey {
    pub group: Option<String>,
    pub collapse: String,
}

/// A digest of one recipient, rule, group and channel chain: its items
/// while its window is open, kept in its held record (durable as every
/// held message), then the one message they go as.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DigestState {
    /// Deterministic: from the recipient, rule, group, chain and first item.
    pub id: String,
    #[serde(default)]
    pub group: Option<String>,
    pub opened_ms: i64,
    pub last_ms: i64,
    pub closes_ms: i64,
    /// Bumped at each change (items added or withdrawn).
    pub revision: u32,
    /// The window closed: this is the digest's send.
    #[serde(default)]
    pub closed: bool,
    pub items: Vec<DigestItem>,
}

/// One collected message: its intent and what templates may show of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DigestItem {
    pub intent: String,
    /// When it was collected, epoch ms.
    pub at_ms: i64,
    /// Its event, card numbers masked.
    pub event: EventRecord,
    /// What completed its pattern, masked.
    #[serde(default)]
    pub pattern: Option<serde_json::Value>,
}

impl DigestState {
    /// A digest opening now, with no item yet.
    pub fn open(id: String, group: Option<String>, now_ms: i64) -> DigestState {
        DigestState {
            id,
            group,
            opened_ms: now_ms,
            last_ms: now_ms,
            closes_ms: now_ms,
            revision: 0,
            closed: false,
            items: Vec::new(),
        }
    }

    /// What templates see as `digest`.
    pub fn view(&self, shown: std::ops::Range<usize>) -> serde_json::Value {
        let count = self.items.len();
        let items: Vec<serde_json::Value> = self.items
            [shown.start.min(count)..shown.end.min(count)]
            .iter()
            .map(|i| {
                serde_json::json!({
                    "event": serde_json::Value::Object(i.event.fields.clone()),
                    "pattern": i.pattern,
                    "at_ms": i.at_ms,
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "count": count,
            "more": count - items.len(),
            "items": items,
            "group": self.group,
            "first_ms": self.items.first().map(|i| i.at_ms),
            "last_ms": self.items.last().map(|i| i.at_ms),
        })
    }

    /// The outcome's `digest` for the digest's send.
    pub fn sent_record(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "count": self.items.len(),
            "items": self.items.iter().map(|i| i.intent.as_str()).collect::<Vec<_>>(),
            "group": self.group,
        })
    }
}

impl Job {
    /// A job of rule `rule` matched now (`matched_ms`) for `event`: a
    /// message, taken up where it was matched; the other fields set by
    /// the caller where they differ.
    pub(super) fn matched(
        intent: Arc<str>,
        loaded: &Arc<Loaded>,
        rule: usize,
        event: Arc<Event>,
        profile: Option<Arc<Profile>>,
        matched_ms: i64,
    ) -> Job {
        Job {
            intent,
            loaded: Arc::clone(loaded),
            rule,
            event,
            profile,
            matched_ms,
            received_ms: matched_ms,
            pattern: None,
            release: false,
            subscription: None,
            digest: None,
            purpose: Purpose::Message,
            arm: std::sync::OnceLock::new(),
        }
    }

    /// The outcome of a decision on `channel` not yet made: suppressed,
    /// with no reason yet, decided at `decided_ms`.
    pub(super) fn outcome(&self, channel: &Arc<str>, decided_ms: i64) -> Outcome {
        let (event, rule) = (&*self.event, self.rule());
        Outcome {
            rule: rule.id.clone(),
            rule_version: rule.version.clone(),
            category: rule.category.clone(),
            user: event.user.clone(),
            channel: Arc::clone(channel),
            status: Status::Suppressed,
            reason: None,
            reason_code: None,
            idempotency_key: Arc::default(),
            recipient: None,
            provider_message_id: None,
            attempts: 0,
            key: event.key.clone(),
            hops: Vec::new(),
            next_channel: None,
            release_ms: None,
            pattern: self.pattern.as_ref().map(|p| p.summary.clone()),
            sms: None,
            locale: None,
            subscription: self
                .subscription
                .as_ref()
                .and_then(|s| serde_json::to_value(&**s).ok()),
            digest: self.digest.as_ref().map(|s| s.sent_record()),
            experiment: self.arm().map(|(_, arm)| std::sync::Arc::clone(&arm.tag)),
            delivery: None,
            shadow: false,
            unknown_after_crash: false,
            source: SourceRef {
                topic: Arc::clone(&event.source),
                partition: event.partition,
                offset: event.offset,
            },
            timings: Timings {
                event_ms: event.time_ms,
                consumed_ms: event.consumed_ms,
                matched_ms: self.matched_ms,
                received_ms: self.received_ms,
                decided_ms,
                ..Timings::default()
            },
        }
    }

    pub(super) fn rule(&self) -> &Rule {
        &self.loaded.set.rules[self.rule]
    }

    /// The channels decided: the rule's, or those of them the user chose
    /// for a subscription (all of the rule's when none of the user's is
    /// still the rule's: the rule changed since they chose).
    pub(super) fn channels(&self) -> std::borrow::Cow<'_, [String]> {
        let rule = self.rule();
        let chosen = self
            .subscription
            .as_ref()
            .and_then(|s| s.channels.as_ref())
            .or_else(|| self.arm().and_then(|(_, arm)| arm.channels.as_ref()));
        match chosen {
            Some(chosen) => {
                let kept: Vec<String> = rule
                    .channels
                    .iter()
                    .filter(|c| chosen.contains(c))
                    .cloned()
                    .collect();
                if kept.is_empty() {
                    rule.channels.as_slice().into()
                } else {
                    kept.into()
                }
            }
            None => rule.channels.as_slice().into(),
        }
    }

    /// The experiment of its rule and the arm its user is in, when the rule
    /// runs one (the same arm on every instance, restart and replay).
    pub(super) fn arm(&self) -> Option<(&Experiment, &Arm)> {
        let experiment = self.rule().experiment.as_deref()?;
        let at = *self
            .arm
            .get_or_init(|| experiment.assign_index(&self.event.user));
        Some((experiment, &experiment.arms[at]))
    }

    /// Its event as records at rest keep it: card numbers masked in its
    /// fields, and in its key when events are keyed by card.
    pub(super) fn masked_event(&self) -> EventRecord {
        let mut event = EventRecord::of(&self.event);
        crate::outcome::redact::mask_fields(&mut event.fields);
        if let Some(masked) = event
            .key
            .as_deref()
            .and_then(crate::outcome::redact::mask_text)
        {
            event.key = Some(masked.into());
        }
        event
    }

    /// The job as a hold keeps it: decided again at its release.
    pub(super) fn for_release(&self) -> Job {
        Job {
            release: true,
            ..self.clone()
        }
    }

    /// The intent stage 1 writes for this job, card numbers masked (its
    /// fields, and its key when events are keyed by card): stage 2 only
    /// renders and sends, and a template shows a card as `mask_card`. So
    /// what stage 2 writes (outcomes, held messages, sent records, replies,
    /// a push's `data.key`) holds no card number either.
    pub fn intent(&self) -> Intent {
        let rule = self.rule();
        let event = self.masked_event();
        Intent {
            id: self.intent.to_string(),
            rule: rule.id.clone(),
            rule_version: rule.version.clone(),
            event,
            matched_ms: self.matched_ms,
            pattern: self.pattern.as_ref().map(|p| {
                let mut context = p.context.clone();
                crate::outcome::redact::mask_json(&mut context);
                FiredRecord {
                    context,
                    summary: p.summary.clone(),
                }
            }),
            subscription: self.subscription.as_deref().cloned(),
            purpose: self.purpose,
        }
    }
}

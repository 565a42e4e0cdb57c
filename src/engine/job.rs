//! One rule's decision inputs for one event, owned so a held message can keep
//! them until its release, and the intent stage 1 writes for them.

use std::sync::Arc;

use crate::ingest::decode::Event;
use crate::profile::Profile;
use crate::rules::{Loaded, Rule};
use crate::state::intent::{EventRecord, FiredRecord, SubscriptionUsed};
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
}

impl Job {
    pub(super) fn rule(&self) -> &Rule {
        &self.loaded.set.rules[self.rule]
    }

    /// The channels decided: the rule's, or those of them the user chose
    /// for a subscription (all of the rule's when none of the user's is
    /// still the rule's: the rule changed since they chose).
    pub(super) fn channels(&self) -> std::borrow::Cow<'_, [String]> {
        let rule = self.rule();
        let chosen = self.subscription.as_ref().and_then(|s| s.channels.as_ref());
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
        let mut event = EventRecord::of(&self.event);
        crate::outcome::redact::mask_fields(&mut event.fields);
        if let Some(masked) = event
            .key
            .as_deref()
            .and_then(crate::outcome::redact::mask_text)
        {
            event.key = Some(masked.into());
        }
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
        }
    }
}

//! One rule's decision inputs for one event, owned so a held message can keep
//! them until its release, and the intent stage 1 writes for them.

use std::sync::Arc;

use crate::ingest::decode::Event;
use crate::profile::Profile;
use crate::rules::{Loaded, Rule};
use crate::state::intent::{EventRecord, FiredRecord};
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
}

impl Job {
    pub(super) fn rule(&self) -> &Rule {
        &self.loaded.set.rules[self.rule]
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
        }
    }
}

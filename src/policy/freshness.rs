//! Policy step: the event is not too old to be worth a message (`max_age_s`, by event time); a digest's send is not checked (its items were, when collected).

use super::step::{Context, DigestRole, Draft, Step, Verdict};
use super::{PolicyConfig, Suppression};

/// A late contextual message is worse than none.
pub struct Freshness;

/// The freshness limit of a draft, in seconds: the rule's, else its
/// category's; `None` for no limit.
pub fn max_age_s(settings: &PolicyConfig, draft: &Draft<'_>) -> Option<u64> {
    draft
        .rule_policy
        .max_age_s
        .or(settings.category(draft.category).max_age_s)
}

impl Step for Freshness {
    fn name(&self) -> &'static str {
        "freshness"
    }

    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        // A digest is late by design: its items were fresh when collected.
        if draft.digest == DigestRole::Send {
            return Verdict::Continue;
        }
        let Some(max_s) = max_age_s(cx.settings, draft) else {
            return Verdict::Continue;
        };
        let age_ms = draft.now_ms - draft.event_ms;
        if age_ms > (max_s as i64) * 1000 {
            return Verdict::Suppress(Suppression::Stale {
                age_s: age_ms / 1000,
                max_s,
            });
        }
        Verdict::Continue
    }
}

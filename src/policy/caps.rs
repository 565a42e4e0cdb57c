//! Policy step: frequency caps, rolling, per user, counted on sends made (the send history is `cap_store.rs`).

use std::sync::Arc;

use super::cap_store::{FrequencyCaps, Limits};
use super::step::{Context, Draft, Step, Verdict};
use super::{Bypass, Cap, Suppression};

/// Policy step: a place under the frequency caps that apply (global,
/// category, rule), taken last so that only a send that will really be
/// attempted takes one. A user's own caps (`caps` in the profile) replace the
/// global and the category's caps for that user; a category that bypasses
/// caps keeps only the rule's own.
pub struct CapsStep {
    pub caps: Arc<FrequencyCaps>,
}

impl Step for CapsStep {
    fn name(&self) -> &'static str {
        "caps"
    }

    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        let Some(profile) = draft.profile else {
            return Verdict::Continue;
        };
        let category = cx.settings.category(draft.category);
        let bypass = category.bypass.contains(&Bypass::Caps);
        let (global, category_caps): (&[Cap], &[Cap]) = if bypass {
            (&[], &[])
        } else {
            (
                profile
                    .caps
                    .get("all")
                    .map_or(&cx.settings.caps[..], Vec::as_slice),
                profile
                    .caps
                    .get(draft.category)
                    .map_or(&category.caps[..], Vec::as_slice),
            )
        };
        let limits = Limits {
            global,
            category: category_caps,
            rule: &draft.rule_policy.caps,
        };
        if limits.global.is_empty() && limits.category.is_empty() && limits.rule.is_empty() {
            return Verdict::Continue;
        }
        match self.caps.reserve(
            &profile.user_id,
            draft.category,
            draft.rule,
            &limits,
            draft.now_ms,
        ) {
            Ok(r) => {
                draft.reservation = Some(r);
                Verdict::Continue
            }
            Err(hit) => Verdict::Suppress(Suppression::Capped(hit)),
        }
    }
}

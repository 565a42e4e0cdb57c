//! Policy step: cross-channel suppression — the user already engaged another way (`suppress_if`).

use super::step::{Context, Draft, Step, Unknown, Verdict};
use super::Suppression;

/// E.g. the user opened the campaign's email in the last two hours: the push
/// about it is not needed.
pub struct Engagement;

impl Step for Engagement {
    fn name(&self) -> &'static str {
        "engagement"
    }

    fn reads_feedback(&self, draft: &Draft<'_>) -> Option<Unknown> {
        // Engagement written before the trigger must be seen.
        (!draft.rule_policy.suppress_if.is_empty()).then_some(Unknown::Engagement)
    }

    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        for guard in &draft.rule_policy.suppress_if {
            let campaign = if guard.same_campaign {
                draft.campaign
            } else {
                None
            };
            let since = draft.now_ms - guard.within.ms();
            if cx
                .feedback
                .engaged(draft.user, &guard.engaged, campaign, since)
            {
                return Verdict::Suppress(Suppression::SuppressedBy {
                    engagement: guard.engaged.clone(),
                });
            }
        }
        Verdict::Continue
    }
}

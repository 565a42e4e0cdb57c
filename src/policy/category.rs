//! Policy step: the user has not turned the rule's category off.

use super::step::{Context, Draft, Step, Verdict};
use super::Suppression;

/// The profile's category preferences (`"preferences": {"marketing": false}`).
pub struct CategoryPreference;

impl Step for CategoryPreference {
    fn name(&self) -> &'static str {
        "category"
    }

    fn check(&self, draft: &mut Draft<'_>, _cx: &Context<'_>) -> Verdict {
        match draft.profile {
            Some(p) if !p.accepts_category(draft.category) => {
                Verdict::Suppress(Suppression::CategoryOff {
                    category: draft.category.into(),
                })
            }
            _ => Verdict::Continue,
        }
    }
}

//! Policy step: a rule that digests has its message collected into the recipient's digest instead of sent alone — after consent, category, pause and freshness (an item the user would not get alone is not collected), before quiet hours (which apply to the digest's send time) and caps (which count the digest once).

use super::step::{Context, DigestRole, Draft, Step, Verdict};
use super::Bypass;

/// Collects an item; a category that bypasses `digest` (fraud by default)
/// has its messages sent one by one.
pub struct Digesting;

impl Step for Digesting {
    fn name(&self) -> &'static str {
        "digest"
    }

    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        if draft.digest != DigestRole::Item
            || cx
                .settings
                .category(draft.category)
                .bypass
                .contains(&Bypass::Digest)
        {
            return Verdict::Continue;
        }
        Verdict::Digest
    }
}

//! Policy step: the user has not paused their messages (`paused_until`, "pause while I travel"), unless the category bypasses the pause.

use super::step::{Context, Draft, Step, Verdict};
use super::{Bypass, Suppression};

/// The profile's (or preferences') `paused_until`: until then, messages of
/// every category that does not bypass `pause` are suppressed `paused:<until>`.
/// Suppressed, not held: a paused user asked for silence, not for a backlog
/// when the pause ends.
pub struct Pause;

impl Step for Pause {
    fn name(&self) -> &'static str {
        "pause"
    }

    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        let Some(profile) = draft.profile else {
            return Verdict::Continue;
        };
        let paused = profile
            .paused_until_ms()
            .is_some_and(|until| draft.now_ms < until);
        if !paused
            || cx
                .settings
                .category(draft.category)
                .bypass
                .contains(&Bypass::Pause)
        {
            return Verdict::Continue;
        }
        Verdict::Suppress(Suppression::Paused {
            until: profile.paused_until.clone().unwrap_or_default(),
        })
    }
}

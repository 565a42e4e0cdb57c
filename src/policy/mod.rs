//! policy: whether a matched rule may message this user on this channel — an ordered chain of steps, each with its typed reason when it says no.
//!
//! The chain, in the order [`Policy::new`] lists it (and
//! `docs/analysts/policy.md` documents; a test holds the two together):
//! consent (a profile, the channel's consent, herald's STOP list) → the
//! category is not turned off → the user has not paused messages → freshness
//! → digest (collected, when the rule digests) → quiet hours (drop, or defer until
//! they end) → an address on the channel → cross-channel engagement →
//! frequency caps. Caps come last so that only a send that will really be
//! attempted takes a place under them.
//!
//! A step is one file and one [`Step`] impl; adding one is that file and one
//! line in [`Policy::new`]. The send ledger's de-duplication comes before the
//! chain (stage 2 checks it first: a redelivered intent needs no policy), and
//! rendering and sending after it.

use std::sync::Arc;

use crate::feedback::FeedbackState;

mod address;
mod cap_store;
mod caps;
mod category;
mod consent;
mod digest;
mod engagement;
mod freshness;
mod pause;
mod quiet_hours;
mod reason;
mod step;

pub use crate::config::policy::{
    Cap, CategoryPolicy, EngagementGuard, PolicyConfig, QuietAction, QuietHours, QuietHoursSetting,
    RulePolicy, Step as Bypass,
};
pub use address::address;
pub use cap_store::{CapHit, FrequencyCaps, Limits, Reservation};
pub use caps::CapsStep;
pub use reason::{Suppression, SuppressionCode};
pub use step::{Context, DigestRole, Draft, Step, Unknown, Verdict};

/// The policy stage: its settings, its chain of steps, and the per-user send
/// history the caps count.
pub struct Policy {
    pub settings: PolicyConfig,
    steps: Vec<Box<dyn Step>>,
    caps: Arc<FrequencyCaps>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(PolicyConfig::default())
    }
}

impl Policy {
    /// The chain with these settings. The order of the steps is here and
    /// nowhere else.
    pub fn new(settings: PolicyConfig) -> Policy {
        Policy::with_caps(settings, Arc::new(FrequencyCaps::default()))
    }

    /// The chain with these settings, counting caps in `caps`.
    pub fn with_caps(settings: PolicyConfig, caps: Arc<FrequencyCaps>) -> Policy {
        let steps: Vec<Box<dyn Step>> = vec![
            Box::new(consent::Consent),
            Box::new(category::CategoryPreference),
            Box::new(pause::Pause),
            Box::new(freshness::Freshness),
            Box::new(digest::Digesting),
            Box::new(quiet_hours::QuietHoursStep),
            Box::new(address::Reachable),
            Box::new(engagement::Engagement),
            Box::new(CapsStep {
                caps: Arc::clone(&caps),
            }),
        ];
        Policy {
            settings,
            steps,
            caps,
        }
    }

    /// The steps' names, in the order they run.
    pub fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name()).collect()
    }

    /// Runs the chain over a draft: the first verdict other than
    /// [`Verdict::Continue`], or `Continue` when every step let it through
    /// (the draft then has its address, and its place under the caps).
    /// A step that reads the feedback topic's state is asked only once that
    /// state has caught up with what was written before now.
    pub async fn run(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        for step in &self.steps {
            if let Some(unknown) = step.reads_feedback(draft) {
                if let Err(e) = cx.feedback.consent_barrier(cx.feedback_wait).await {
                    self.give_back(draft);
                    return Verdict::Fail(unknown, e.to_string());
                }
            }
            let verdict = step.check(draft, cx);
            if verdict != Verdict::Continue {
                self.give_back(draft);
                return verdict;
            }
        }
        Verdict::Continue
    }

    /// The context the steps read, over the shared state.
    pub fn context<'a>(
        &'a self,
        feedback: &'a FeedbackState,
        profiles: &'a crate::profile::ProfileTable,
        feedback_wait: std::time::Duration,
    ) -> Context<'a> {
        Context {
            settings: &self.settings,
            feedback,
            profiles,
            feedback_wait,
        }
    }

    /// The freshness limit of a draft, in seconds (rule over category).
    pub fn max_age_s(&self, draft: &Draft<'_>) -> Option<u64> {
        freshness::max_age_s(&self.settings, draft)
    }

    /// Gives back the draft's place under the caps: its send will not happen.
    pub fn give_back(&self, draft: &mut Draft<'_>) {
        if let Some(r) = draft.reservation.take() {
            self.caps.release(&r);
        }
    }

    /// Says that the send ledger holds the draft's send now (`attempted`).
    pub fn recorded(&self, draft: &Draft<'_>) {
        if let Some(r) = &draft.reservation {
            self.caps.recorded(r);
        }
    }

    /// The users' send histories the caps count, in front of the send ledger.
    pub fn caps(&self) -> &FrequencyCaps {
        &self.caps
    }
}

#[cfg(test)]
mod tests;

//! One policy step's contract: what it sees (the draft), what it may say (a verdict), and what it may ask the chain for.

use super::cap_store::Reservation;
use super::{PolicyConfig, RulePolicy, Suppression};
use crate::deliver::{Address, Channel};
use crate::feedback::FeedbackState;
use crate::profile::{Profile, ProfileTable};

/// A message on its way through the chain: what it is about, and what the
/// steps found so far (the address, the place under the caps).
pub struct Draft<'a> {
    pub rule: &'a str,
    pub category: &'a str,
    pub rule_policy: &'a RulePolicy,
    /// The rule's campaign, which `suppress_if` engagement can name.
    pub campaign: Option<&'a str>,
    pub user: &'a str,
    /// The triggering event's time, epoch ms.
    pub event_ms: i64,
    pub profile: Option<&'a Profile>,
    pub channel: &'a Channel,
    /// The time the decision is made at, epoch ms.
    pub now_ms: i64,
    /// Found by the address step.
    pub address: Option<Address>,
    /// Taken by the caps step; given back when the send does not happen.
    pub reservation: Option<Reservation>,
    /// What the draft is to a digest.
    pub digest: DigestRole,
}

/// What a draft is to a digest (a rule's `digest:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestRole {
    /// Its rule does not digest (or this message goes at once: the first
    /// of a window with `first_at_once`).
    None,
    /// An item its rule would collect into the recipient's digest.
    Item,
    /// The digest itself, sent when its window closed.
    Send,
}

/// What the steps read besides the draft: settings and the shared state.
pub struct Context<'a> {
    pub settings: &'a PolicyConfig,
    /// Opt-outs and engagement, fed by the feedback topic.
    pub feedback: &'a FeedbackState,
    /// Dead push tokens.
    pub profiles: &'a ProfileTable,
    /// How long a step that reads the feedback topic's state may wait for it
    /// to catch up (`feedback.consent_wait_ms`).
    pub feedback_wait: std::time::Duration,
}

/// What a step says about a draft.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// On to the next step (or, after the last, to rendering and sending).
    Continue,
    /// Not sent, for this reason.
    Suppress(Suppression),
    /// Not now: kept and decided again, from the first step, at `until_ms`.
    /// `because` is the outcome's reason meanwhile.
    Defer { until_ms: i64, because: Suppression },
    /// Not alone: collected into the recipient's digest, sent when its
    /// window closes (stage 2 keeps it).
    Digest,
    /// Cannot be decided: the message fails, dead-lettered with `detail`.
    Fail(Unknown, String),
}

/// State a step needed and could not read in time: the decision fails
/// rather than guess (a STOP or an engagement may be unread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// herald's own opt-out list (SMS STOP replies).
    Consent,
    /// Engagement for cross-channel suppression.
    Engagement,
}

impl Unknown {
    /// The outcome's reason code.
    pub fn code(self) -> &'static str {
        match self {
            Unknown::Consent => "consent_unknown",
            Unknown::Engagement => "engagement_unknown",
        }
    }
}

/// One link of the policy chain. A step is asked once per (message,
/// channel), in the order [`super::Policy::new`] lists; the first verdict
/// other than [`Verdict::Continue`] ends the chain.
pub trait Step: Send + Sync {
    /// The step's name, as the table in `docs/analysts/policy.md` gives it.
    fn name(&self) -> &'static str;

    /// Whether this draft's check reads state the feedback topic feeds; the
    /// chain then first waits until every record written so far is read,
    /// and fails the draft with this [`Unknown`] if that takes too long.
    fn reads_feedback(&self, _draft: &Draft<'_>) -> Option<Unknown> {
        None
    }

    /// The step's verdict on the draft; it may fill in what it found.
    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict;
}

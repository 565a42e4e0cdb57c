//! Policy step: the user has a profile and consents to the channel, and the number has not said STOP.

use super::step::{Context, Draft, Step, Unknown, Verdict};
use super::Suppression;
use crate::deliver::ChannelKind;
use crate::profile::Profile;

/// Consent is never off: it is the law. A user without a profile has given
/// none. For SMS, herald's own opt-out list (numbers that replied STOP) is
/// consent withdrawn, whatever the profile says.
pub struct Consent;

impl Consent {
    /// The number an SMS draft goes to: the one whose STOP replies count.
    fn sms_phone<'a>(draft: &Draft<'_>, profile: &'a Profile) -> Option<&'a str> {
        (draft.channel.kind() == ChannelKind::Sms)
            .then_some(profile.phone.as_deref())
            .flatten()
    }
}

impl Step for Consent {
    fn name(&self) -> &'static str {
        "consent"
    }

    fn reads_feedback(&self, draft: &Draft<'_>) -> Option<Unknown> {
        let profile = draft.profile?;
        if !profile.consents_to(&draft.channel.name) {
            return None;
        }
        Self::sms_phone(draft, profile).map(|_| Unknown::Consent)
    }

    fn check(&self, draft: &mut Draft<'_>, cx: &Context<'_>) -> Verdict {
        let Some(profile) = draft.profile else {
            return Verdict::Suppress(Suppression::NoProfile);
        };
        let channel = &draft.channel.name;
        if !profile.consents_to(channel) {
            return Verdict::Suppress(Suppression::NoConsent {
                channel: channel.clone(),
            });
        }
        // Consent is known here: only the number is left to look up.
        if Self::sms_phone(draft, profile).is_some_and(|phone| cx.feedback.opted_out(phone)) {
            return Verdict::Suppress(Suppression::OptedOut {
                channel: channel.clone(),
            });
        }
        Verdict::Continue
    }
}

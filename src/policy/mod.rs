//! policy: whether a matched rule may message this user on this channel, with the reason when not.
//!
//! The steps, always in this order: a profile exists → consent for the
//! channel → the category is not turned off → freshness → quiet hours → an
//! address on the channel → (rendering) → de-duplication → frequency caps.
//! De-duplication sits in the engine; caps come last so that only a send
//! that will really be attempted takes a place under them.
//! Each step that stops a message gives a [`Suppression`] with its reason.

use std::fmt;
use std::sync::Arc;

use crate::deliver::{Address, Channel, NoAddress};
use crate::profile::{Profile, ProfileTable};

mod caps;

pub use crate::config::policy::{
    Cap, CategoryPolicy, EngagementGuard, PolicyConfig, QuietAction, QuietHours, QuietHoursSetting,
    RulePolicy, Step,
};
pub use caps::{CapHit, FrequencyCaps, Limits, Reservation};

/// Why a message was not sent. `code()` is the bounded metric label; the
/// `Display` form is the outcome's reason (`no_consent:sms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppression {
    NoProfile,
    NoConsent {
        channel: Arc<str>,
    },
    /// The number replied STOP (herald's own opt-out list).
    OptedOut {
        channel: Arc<str>,
    },
    CategoryOff {
        category: Arc<str>,
    },
    NoAddress {
        channel: Arc<str>,
    },
    DeadTokens {
        channel: Arc<str>,
    },
    /// Quiet hours apply but the profile's time zone is not a valid IANA name.
    InvalidTimeZone,
    /// The profile's phone was given but is not a valid number.
    InvalidPhone {
        channel: Arc<str>,
    },
    Stale {
        age_s: i64,
        max_s: u64,
    },
    QuietHours {
        window: QuietHours,
        zone: String,
        /// When the window ends, epoch ms (a held message is released then).
        until_ms: i64,
    },
    Capped(CapHit),
    Duplicate,
    /// The last owner recorded the send as attempted and died before the
    /// answer; the channel's `on_unknown = "skip"` says not to repeat it.
    UnknownAfterCrash,
    /// The user engaged another way (e.g. opened the campaign's email).
    SuppressedBy {
        engagement: String,
    },
}

impl Suppression {
    /// Every code, so metric handles can be made once.
    pub const CODES: &'static [&'static str] = &[
        "no_profile",
        "no_consent",
        "category_off",
        "stale",
        "quiet_hours",
        "no_address",
        "dead_tokens",
        "invalid_phone",
        "cap",
        "duplicate",
        "unknown_after_crash",
        "suppressed_by",
        "invalid_time_zone",
    ];

    /// The reason code without detail.
    pub fn code(&self) -> &'static str {
        Self::CODES[self.code_index()]
    }

    /// The position of [`Suppression::code`] in [`Suppression::CODES`].
    pub fn code_index(&self) -> usize {
        match self {
            Suppression::NoProfile => 0,
            Suppression::NoConsent { .. } | Suppression::OptedOut { .. } => 1,
            Suppression::CategoryOff { .. } => 2,
            Suppression::Stale { .. } => 3,
            Suppression::QuietHours { .. } => 4,
            Suppression::NoAddress { .. } => 5,
            Suppression::DeadTokens { .. } => 6,
            Suppression::InvalidPhone { .. } => 7,
            Suppression::Capped(_) => 8,
            Suppression::Duplicate => 9,
            Suppression::UnknownAfterCrash => 10,
            Suppression::SuppressedBy { .. } => 11,
            Suppression::InvalidTimeZone => 12,
        }
    }

    /// Whether the next channel of a fallback chain may be tried: the reason
    /// is about this channel (no consent, no address, dead tokens), not about
    /// the message or the user (stale, quiet hours, caps, duplicate, …).
    pub fn is_channel_specific(&self) -> bool {
        matches!(
            self,
            Suppression::NoConsent { .. }
                | Suppression::OptedOut { .. }
                | Suppression::NoAddress { .. }
                | Suppression::DeadTokens { .. }
                | Suppression::InvalidPhone { .. }
        )
    }
}

impl Suppression {
    /// The outcome's `reason` text (`cap:rule:fraud:3/day`), written piece
    /// by piece: a suppressed outcome is the common case, and `format!`'s
    /// machinery cost more than the rest of the suppression.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(32);
        out.push_str(self.code());
        let part = |out: &mut String, text: &str| {
            out.push(':');
            out.push_str(text);
        };
        match self {
            Suppression::NoConsent { channel }
            | Suppression::NoAddress { channel }
            | Suppression::DeadTokens { channel }
            | Suppression::InvalidPhone { channel } => part(&mut out, channel),
            Suppression::OptedOut { channel } => {
                part(&mut out, channel);
                part(&mut out, "opted_out");
            }
            Suppression::CategoryOff { category } => part(&mut out, category),
            Suppression::SuppressedBy { engagement } => part(&mut out, engagement),
            Suppression::Stale { age_s, max_s } => {
                part(&mut out, itoa::Buffer::new().format(*age_s));
                out.push_str("s>");
                out.push_str(itoa::Buffer::new().format(*max_s));
                out.push('s');
            }
            Suppression::QuietHours { window, zone, .. } => {
                out.push(':');
                window.push_to(&mut out);
                out.push(' ');
                out.push_str(zone);
            }
            Suppression::Capped(hit) => {
                let cap = match hit {
                    CapHit::All(cap) => {
                        part(&mut out, "all");
                        cap
                    }
                    CapHit::Category(category, cap) => {
                        part(&mut out, category);
                        cap
                    }
                    CapHit::Rule(rule, cap) => {
                        part(&mut out, "rule");
                        part(&mut out, rule);
                        cap
                    }
                };
                out.push(':');
                cap.push_to(&mut out);
            }
            Suppression::NoProfile
            | Suppression::Duplicate
            | Suppression::UnknownAfterCrash
            | Suppression::InvalidTimeZone => {}
        }
        out
    }
}

impl fmt::Display for Suppression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The policy stage: settings and the per-user send history for caps.
#[derive(Default)]
pub struct Policy {
    pub settings: PolicyConfig,
    caps: FrequencyCaps,
}

/// What one decision is about, for the policy steps.
pub struct Subject<'a> {
    pub rule: &'a str,
    pub category: &'a str,
    pub rule_policy: &'a RulePolicy,
    /// The triggering event's time, epoch ms.
    pub event_ms: i64,
}

impl Policy {
    /// A policy with these settings.
    pub fn new(settings: PolicyConfig) -> Policy {
        Policy {
            settings,
            caps: FrequencyCaps::default(),
        }
    }

    /// Profile, consent and category preference, then freshness and quiet hours.
    pub fn admit<'p>(
        &self,
        profile: Option<&'p Profile>,
        subject: &Subject<'_>,
        channel: &Channel,
        now_ms: i64,
        opted_out: bool,
    ) -> Result<&'p Profile, Suppression> {
        let profile = profile.ok_or(Suppression::NoProfile)?;
        if !profile.consents_to(&channel.name) {
            return Err(Suppression::NoConsent {
                channel: channel.name.clone(),
            });
        }
        // The number said STOP (herald's own opt-out list): consent withdrawn.
        if opted_out {
            return Err(Suppression::OptedOut {
                channel: channel.name.clone(),
            });
        }
        if !profile.accepts_category(subject.category) {
            return Err(Suppression::CategoryOff {
                category: subject.category.into(),
            });
        }
        let category = self.settings.category(subject.category);
        if let Some(max_s) = self.max_age_s(subject) {
            let age_ms = now_ms - subject.event_ms;
            if age_ms > (max_s as i64) * 1000 {
                return Err(Suppression::Stale {
                    age_s: age_ms / 1000,
                    max_s,
                });
            }
        }
        let quiet = match &subject.rule_policy.quiet_hours {
            Some(QuietHoursSetting::Off) => None,
            None if category.bypass.contains(&Step::QuietHours) => None,
            Some(QuietHoursSetting::Window(w)) => Some(*w),
            None => category.quiet_hours,
        };
        // The user's own window replaces whichever applies, never adds one.
        if let Some(window) = quiet.map(|w| profile.quiet_hours.unwrap_or(w)) {
            if profile.time_zone_invalid {
                return Err(Suppression::InvalidTimeZone);
            }
            let zone = profile.time_zone.as_deref().unwrap_or("UTC");
            let tz = crate::util::time_zone(zone).unwrap_or(jiff::tz::TimeZone::UTC);
            let local = jiff::Timestamp::from_millisecond(now_ms)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                .to_zoned_datetime(tz);
            if window.contains(local.hour() as u16 * 60 + local.minute() as u16) {
                return Err(Suppression::QuietHours {
                    window,
                    zone: zone.to_string(),
                    until_ms: quiet_end_ms(&local, window),
                });
            }
        }
        Ok(profile)
    }

    /// Whether a message stopped by quiet hours is held rather than dropped.
    pub fn holds(&self, subject: &Subject<'_>) -> bool {
        let action = subject
            .rule_policy
            .on_quiet_hours
            .unwrap_or(self.settings.category(subject.category).on_quiet_hours);
        action == QuietAction::Hold
    }

    /// The freshness limit of a message, in seconds (rule over category).
    pub fn max_age_s(&self, subject: &Subject<'_>) -> Option<u64> {
        subject
            .rule_policy
            .max_age_s
            .or(self.settings.category(subject.category).max_age_s)
    }

    /// Reserves a place under the caps that apply (global, category, rule).
    /// `None` when the category bypasses caps and the rule sets none.
    /// A user's own caps (`caps` in the profile) replace the global and the
    /// category's caps for that user.
    pub fn reserve(
        &self,
        profile: &Profile,
        subject: &Subject<'_>,
        now_ms: i64,
    ) -> Result<Option<Reservation>, Suppression> {
        let category = self.settings.category(subject.category);
        let bypass = category.bypass.contains(&Step::Caps);
        fn own<'a>(profile: &'a Profile, key: &str, default: &'a [Cap]) -> &'a [Cap] {
            profile.caps.get(key).map_or(default, Vec::as_slice)
        }
        let limits = Limits {
            global: if bypass {
                &[]
            } else {
                own(profile, "all", &self.settings.caps)
            },
            category: if bypass {
                &[]
            } else {
                own(profile, subject.category, &category.caps)
            },
            rule: &subject.rule_policy.caps,
        };
        if limits.global.is_empty() && limits.category.is_empty() && limits.rule.is_empty() {
            return Ok(None);
        }
        self.caps
            .reserve(
                &profile.user_id,
                subject.category,
                subject.rule,
                &limits,
                now_ms,
            )
            .map(Some)
            .map_err(Suppression::Capped)
    }

    /// Cross-channel suppression: `Err` when the user engaged as a rule's
    /// `suppress_if` describes (e.g. opened the campaign's email in the last 2h).
    pub fn engaged_elsewhere(
        &self,
        feedback: &crate::feedback::FeedbackState,
        user: &str,
        rule_policy: &RulePolicy,
        campaign: Option<&str>,
        now_ms: i64,
    ) -> Result<(), Suppression> {
        for guard in &rule_policy.suppress_if {
            let campaign = if guard.same_campaign { campaign } else { None };
            if feedback.engaged(user, &guard.engaged, campaign, now_ms - guard.within.ms()) {
                return Err(Suppression::SuppressedBy {
                    engagement: guard.engaged.clone(),
                });
            }
        }
        Ok(())
    }

    /// Gives back a reservation whose send did not happen.
    pub fn release(&self, reservation: &Reservation) {
        self.caps.release(reservation);
    }

    /// The send history of a user's partition, restored from the send ledger.
    pub fn caps(&self) -> &FrequencyCaps {
        &self.caps
    }
}

/// The address to use for `profile` on `channel`.
pub fn address(
    profile: &Profile,
    channel: &Channel,
    table: &ProfileTable,
) -> Result<Address, Suppression> {
    channel.address(profile, table).map_err(|e| match e {
        NoAddress::Missing
            if profile.phone_invalid
                && channel.provider.kind() == crate::config::ProviderKind::Twilio =>
        {
            Suppression::InvalidPhone {
                channel: channel.name.clone(),
            }
        }
        NoAddress::Missing => Suppression::NoAddress {
            channel: channel.name.clone(),
        },
        NoAddress::AllTokensDead => Suppression::DeadTokens {
            channel: channel.name.clone(),
        },
    })
}

/// When the quiet window that `local` falls in ends: the next local `end`
/// time, in the same zone. A local time skipped by a daylight-saving change
/// resolves to the instant after the gap.
fn quiet_end_ms(local: &jiff::ZonedDateTime, window: QuietHours) -> i64 {
    let end = jiff::civil::time((window.end / 60) as i8, (window.end % 60) as i8, 0, 0);
    let at = |date: jiff::civil::Date| {
        date.to_datetime(end)
            .to_zoned_datetime(local.time_zone().clone())
            .map(|z| z.timestamp().as_millisecond())
    };
    let today = at(local.date()).unwrap_or(i64::MAX);
    if today > local.timestamp().as_millisecond() {
        return today;
    }
    local
        .date()
        .tomorrow()
        .ok()
        .and_then(|d| at(d).ok())
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;

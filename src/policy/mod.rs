//! policy: whether a matched rule may message this user on this channel, with the reason when not.
//!
//! The steps, always in this order: a profile exists → consent for the
//! channel → the category is not turned off → freshness → quiet hours → an
//! address on the channel → (rendering) → de-duplication → frequency caps.
//! De-duplication sits in the engine; caps come last so that only a send
//! that will really be attempted takes a place under them.
//! Each step that stops a message gives a [`Suppression`] with its reason.

use std::fmt;

use crate::deliver::{Address, Channel, NoAddress};
use crate::profile::{Profile, ProfileTable};

mod caps;
pub mod settings;

pub use caps::{CapHit, FrequencyCaps, Limits, Reservation};
pub use settings::{
    Cap, CategoryPolicy, PolicyConfig, QuietHours, QuietHoursSetting, RulePolicy, Step,
};

/// Why a message was not sent. `code()` is the bounded metric label; the
/// `Display` form is the outcome's reason (`no_consent:sms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppression {
    NoProfile,
    NoConsent {
        channel: String,
    },
    CategoryOff {
        category: String,
    },
    NoAddress {
        channel: String,
    },
    DeadTokens {
        channel: String,
    },
    /// The profile's phone was given but is not a valid number.
    InvalidPhone {
        channel: String,
    },
    Stale {
        age_s: i64,
        max_s: u64,
    },
    QuietHours {
        window: QuietHours,
        zone: String,
    },
    Capped(CapHit),
    Duplicate,
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
    ];

    /// The reason code without detail.
    pub fn code(&self) -> &'static str {
        match self {
            Suppression::NoProfile => "no_profile",
            Suppression::NoConsent { .. } => "no_consent",
            Suppression::CategoryOff { .. } => "category_off",
            Suppression::NoAddress { .. } => "no_address",
            Suppression::DeadTokens { .. } => "dead_tokens",
            Suppression::InvalidPhone { .. } => "invalid_phone",
            Suppression::Stale { .. } => "stale",
            Suppression::QuietHours { .. } => "quiet_hours",
            Suppression::Capped(_) => "cap",
            Suppression::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for Suppression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Suppression::NoProfile => f.write_str("no_profile"),
            Suppression::NoConsent { channel } => write!(f, "no_consent:{channel}"),
            Suppression::CategoryOff { category } => write!(f, "category_off:{category}"),
            Suppression::NoAddress { channel } => write!(f, "no_address:{channel}"),
            Suppression::DeadTokens { channel } => write!(f, "dead_tokens:{channel}"),
            Suppression::InvalidPhone { channel } => write!(f, "invalid_phone:{channel}"),
            Suppression::Stale { age_s, max_s } => write!(f, "stale:{age_s}s>{max_s}s"),
            Suppression::QuietHours { window, zone } => write!(f, "quiet_hours:{window} {zone}"),
            Suppression::Capped(CapHit::All(cap)) => write!(f, "cap:all:{cap}"),
            Suppression::Capped(CapHit::Category(category, cap)) => {
                write!(f, "cap:{category}:{cap}")
            }
            Suppression::Capped(CapHit::Rule(rule, cap)) => write!(f, "cap:rule:{rule}:{cap}"),
            Suppression::Duplicate => f.write_str("duplicate"),
        }
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
    ) -> Result<&'p Profile, Suppression> {
        let profile = profile.ok_or(Suppression::NoProfile)?;
        if !profile.consents_to(&channel.name) {
            return Err(Suppression::NoConsent {
                channel: channel.name.clone(),
            });
        }
        if !profile.accepts_category(subject.category) {
            return Err(Suppression::CategoryOff {
                category: subject.category.to_string(),
            });
        }
        let category = self.settings.category(subject.category);
        if let Some(max_s) = subject.rule_policy.max_age_s.or(category.max_age_s) {
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
            Some(QuietHoursSetting::Window(w)) => Some(*w),
            None if category.bypass.contains(&Step::QuietHours) => None,
            None => category.quiet_hours,
        };
        if let Some(window) = quiet {
            let zone = profile.time_zone.as_deref().unwrap_or("UTC");
            if window.contains(local_minute(now_ms, zone)) {
                return Err(Suppression::QuietHours {
                    window,
                    zone: zone.to_string(),
                });
            }
        }
        Ok(profile)
    }

    /// Reserves a place under the caps that apply (global, category, rule).
    /// `None` when the category bypasses caps and the rule sets none.
    pub fn reserve(
        &self,
        user: &str,
        subject: &Subject<'_>,
        now_ms: i64,
    ) -> Result<Option<Reservation>, Suppression> {
        let category = self.settings.category(subject.category);
        let bypass = category.bypass.contains(&Step::Caps);
        let limits = Limits {
            global: if bypass { &[] } else { &self.settings.caps },
            category: if bypass { &[] } else { &category.caps },
            rule: &subject.rule_policy.caps,
        };
        if limits.global.is_empty() && limits.category.is_empty() && limits.rule.is_empty() {
            return Ok(None);
        }
        self.caps
            .reserve(user, subject.category, subject.rule, &limits, now_ms)
            .map(Some)
            .map_err(Suppression::Capped)
    }

    /// Gives back a reservation whose send did not happen.
    pub fn release(&self, reservation: &Reservation) {
        self.caps.release(reservation);
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

/// Minutes after local midnight at `now_ms` in the IANA zone (UTC if unknown).
fn local_minute(now_ms: i64, zone: &str) -> u16 {
    let tz = jiff::tz::TimeZone::get(zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let local = jiff::Timestamp::from_millisecond(now_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned_datetime(tz);
    local.hour() as u16 * 60 + local.minute() as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelConfig;

    fn console(name: &str) -> Channel {
        Channel::from_config(name, &ChannelConfig::console(), reqwest::Client::new()).unwrap()
    }

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn subject<'a>(category: &'a str, rule_policy: &'a RulePolicy, event_ms: i64) -> Subject<'a> {
        Subject {
            rule: "r",
            category,
            rule_policy,
            event_ms,
        }
    }

    fn profile(zone: &str) -> Profile {
        let mut p = Profile {
            user_id: "u1".into(),
            time_zone: Some(zone.into()),
            ..Profile::default()
        };
        p.consent.insert("push".into(), true);
        p
    }

    #[test]
    fn every_reason_code_has_a_metric_handle() {
        let cap = "1/day".parse().unwrap();
        let all = [
            Suppression::NoProfile,
            Suppression::NoConsent {
                channel: "c".into(),
            },
            Suppression::CategoryOff {
                category: "c".into(),
            },
            Suppression::Stale { age_s: 1, max_s: 0 },
            Suppression::QuietHours {
                window: "21:00-08:00".parse().unwrap(),
                zone: "UTC".into(),
            },
            Suppression::NoAddress {
                channel: "c".into(),
            },
            Suppression::DeadTokens {
                channel: "c".into(),
            },
            Suppression::InvalidPhone {
                channel: "c".into(),
            },
            Suppression::Capped(CapHit::All(cap)),
            Suppression::Duplicate,
        ];
        for s in &all {
            assert!(
                Suppression::CODES.contains(&s.code()),
                "{} is missing from CODES",
                s.code()
            );
        }
        assert_eq!(all.len(), Suppression::CODES.len());
    }

    #[test]
    fn consent_and_preferences_come_first() {
        let policy = Policy::default();
        let ch = console("push");
        let none = RulePolicy::default();
        let now = ms("2026-07-01T15:00:00Z");
        let s = subject("fraud", &none, now);
        assert_eq!(
            policy.admit(None, &s, &ch, now).unwrap_err().to_string(),
            "no_profile"
        );
        let mut p = Profile {
            user_id: "u1".into(),
            ..Profile::default()
        };
        assert_eq!(
            policy
                .admit(Some(&p), &s, &ch, now)
                .unwrap_err()
                .to_string(),
            "no_consent:push"
        );
        p.consent.insert("push".into(), true);
        p.preferences.insert("marketing".into(), false);
        let m = subject("marketing", &none, now);
        assert_eq!(
            policy
                .admit(Some(&p), &m, &ch, now)
                .unwrap_err()
                .to_string(),
            "category_off:marketing"
        );
        assert!(policy.admit(Some(&p), &s, &ch, now).is_ok());
        assert_eq!(
            address(&p, &console("sms"), &ProfileTable::default())
                .unwrap()
                .masked()
                .len(),
            17
        );
    }

    #[test]
    fn stale_messages_are_dropped_by_event_age() {
        let policy = Policy::default();
        let ch = console("push");
        let p = profile("UTC");
        let event = ms("2026-07-01T15:00:00Z");
        let tight = RulePolicy {
            max_age_s: Some(30),
            ..RulePolicy::default()
        };
        let s = subject("transactional", &tight, event);
        assert!(
            policy.admit(Some(&p), &s, &ch, event + 30_000).is_ok(),
            "exactly at the limit is fresh"
        );
        let late = policy.admit(Some(&p), &s, &ch, event + 42_000).unwrap_err();
        assert_eq!(late.to_string(), "stale:42s>30s");
        // Without a rule override, the category's ten minutes apply.
        let none = RulePolicy::default();
        let s = subject("transactional", &none, event);
        assert!(policy.admit(Some(&p), &s, &ch, event + 599_000).is_ok());
        assert_eq!(
            policy
                .admit(Some(&p), &s, &ch, event + 601_000)
                .unwrap_err()
                .code(),
            "stale"
        );
    }

    #[test]
    fn quiet_hours_follow_the_recipient_zone_across_daylight_saving() {
        let policy = Policy::default();
        let ch = console("push");
        let p = profile("America/Chicago");
        let none = RulePolicy::default();
        let at = |t: &str| {
            let now = ms(t);
            policy
                .admit(Some(&p), &subject("marketing", &none, now), &ch, now)
                .map(|_| ())
        };
        // 02:30 UTC on 8 March 2026 is 20:30 CST (UTC-6) the evening before: allowed.
        assert!(at("2026-03-08T02:30:00Z").is_ok());
        // 02:30 UTC on 9 March is 21:30 CDT (UTC-5), after the spring change: quiet.
        assert_eq!(
            at("2026-03-09T02:30:00Z").unwrap_err().to_string(),
            "quiet_hours:21:00-08:00 America/Chicago"
        );
        // 13:30 UTC is 08:30 CDT in summer (sendable) but 07:30 CST in winter (quiet).
        assert!(at("2026-07-01T13:30:00Z").is_ok());
        assert_eq!(
            at("2026-12-01T13:30:00Z").unwrap_err().code(),
            "quiet_hours"
        );
        // Fraud bypasses quiet hours explicitly; a rule can turn them off.
        let now = ms("2026-12-01T13:30:00Z");
        assert!(policy
            .admit(Some(&p), &subject("fraud", &none, now), &ch, now)
            .is_ok());
        let off = RulePolicy {
            quiet_hours: Some(QuietHoursSetting::Off),
            ..RulePolicy::default()
        };
        assert!(policy
            .admit(Some(&p), &subject("marketing", &off, now), &ch, now)
            .is_ok());
    }

    #[test]
    fn caps_apply_unless_the_category_bypasses_them() {
        let policy = Policy::default();
        let none = RulePolicy::default();
        let t0 = ms("2026-07-01T15:00:00Z");
        let m = subject("marketing", &none, t0);
        assert!(policy.reserve("u", &m, t0).unwrap().is_some());
        assert_eq!(
            policy.reserve("u", &m, t0 + 1000).unwrap_err().to_string(),
            "cap:marketing:1/hour"
        );
        let f = subject("fraud", &none, t0);
        for i in 0..50 {
            assert!(
                policy.reserve("u", &f, t0 + i).unwrap().is_none(),
                "fraud is never capped"
            );
        }
        let once = RulePolicy {
            caps: vec!["1/day".parse().unwrap()],
            ..RulePolicy::default()
        };
        let r = Subject {
            rule: "once",
            category: "fraud",
            rule_policy: &once,
            event_ms: t0,
        };
        assert!(
            policy.reserve("u", &r, t0).unwrap().is_some(),
            "a rule's own cap applies even to fraud"
        );
        assert_eq!(
            policy.reserve("u", &r, t0 + 5).unwrap_err().to_string(),
            "cap:rule:once:1/day"
        );
    }
}

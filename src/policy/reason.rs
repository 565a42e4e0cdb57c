//! Why a message was not sent: the typed reason, its bounded code and the outcome's text.

use std::fmt;
use std::sync::Arc;

use super::cap_store::CapHit;
use super::QuietHours;

crate::reason_codes! {
    /// A suppression's reason code: the bounded label of
    /// `herald_suppressions_total{reason}` and the outcome's `reason_code`.
    pub enum SuppressionCode {
        NoProfile = "no_profile",
        NoConsent = "no_consent",
        CategoryOff = "category_off",
        Stale = "stale",
        QuietHours = "quiet_hours",
        NoAddress = "no_address",
        DeadTokens = "dead_tokens",
        InvalidPhone = "invalid_phone",
        Cap = "cap",
        Duplicate = "duplicate",
        UnknownAfterCrash = "unknown_after_crash",
        SuppressedBy = "suppressed_by",
        InvalidTimeZone = "invalid_time_zone",
        Paused = "paused",
        Withdrawn = "withdrawn",
        Holdout = "holdout",
    }
}

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
    /// The user paused their messages until this time (RFC 3339, as they gave it).
    Paused {
        until: String,
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
    /// A digest item a later event took back (`digest.withdraw`): that
    /// event, as `topic/partition/offset`.
    Withdrawn {
        by: String,
    },
    /// The user is in the control arm of the rule's experiment: the message
    /// passed every step and would have been sent.
    Holdout {
        experiment: String,
    },
}

impl Suppression {
    /// The reason code without detail.
    pub fn kind(&self) -> SuppressionCode {
        match self {
            Suppression::NoProfile => SuppressionCode::NoProfile,
            Suppression::NoConsent { .. } | Suppression::OptedOut { .. } => {
                SuppressionCode::NoConsent
            }
            Suppression::CategoryOff { .. } => SuppressionCode::CategoryOff,
            Suppression::Paused { .. } => SuppressionCode::Paused,
            Suppression::Stale { .. } => SuppressionCode::Stale,
            Suppression::QuietHours { .. } => SuppressionCode::QuietHours,
            Suppression::NoAddress { .. } => SuppressionCode::NoAddress,
            Suppression::DeadTokens { .. } => SuppressionCode::DeadTokens,
            Suppression::InvalidPhone { .. } => SuppressionCode::InvalidPhone,
            Suppression::Capped(_) => SuppressionCode::Cap,
            Suppression::Duplicate => SuppressionCode::Duplicate,
            Suppression::UnknownAfterCrash => SuppressionCode::UnknownAfterCrash,
            Suppression::SuppressedBy { .. } => SuppressionCode::SuppressedBy,
            Suppression::InvalidTimeZone => SuppressionCode::InvalidTimeZone,
            Suppression::Withdrawn { .. } => SuppressionCode::Withdrawn,
            Suppression::Holdout { .. } => SuppressionCode::Holdout,
        }
    }

    /// The reason code's text (`no_consent`), the metric label.
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The position of [`Suppression::kind`] in [`SuppressionCode::ALL`].
    pub fn code_index(&self) -> usize {
        self.kind().index()
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
            Suppression::Paused { until } => part(&mut out, until),
            Suppression::SuppressedBy { engagement } => part(&mut out, engagement),
            Suppression::Withdrawn { by } => part(&mut out, by),
            Suppression::Holdout { experiment } => part(&mut out, experiment),
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

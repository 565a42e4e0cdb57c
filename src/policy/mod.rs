//! policy: whether a matched rule may message this user on this channel, with the reason when not.
//!
//! The core checks, in order: a profile exists → consent for the channel →
//! the category is not turned off → the user has an address on the channel.
//! Frequency caps, quiet hours, freshness and fallback come in later stages.

use std::fmt;

use crate::deliver::{Address, Channel, NoAddress};
use crate::profile::{Profile, ProfileTable};

/// Why a message was not sent. `code()` is the bounded metric label; the
/// `Display` form is the outcome's reason (`no_consent:sms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppression {
    NoProfile,
    NoConsent { channel: String },
    CategoryOff { category: String },
    NoAddress { channel: String },
    DeadTokens { channel: String },
    Duplicate,
}

impl Suppression {
    /// Every code, so metric handles can be made once.
    pub const CODES: &'static [&'static str] = &[
        "no_profile",
        "no_consent",
        "category_off",
        "no_address",
        "dead_tokens",
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
            Suppression::Duplicate => f.write_str("duplicate"),
        }
    }
}

/// Applies the checks for one (rule category, channel) and returns the address to use.
pub fn admit(
    profile: Option<&Profile>,
    category: &str,
    channel: &Channel,
    table: &ProfileTable,
) -> Result<Address, Suppression> {
    let profile = profile.ok_or(Suppression::NoProfile)?;
    if !profile.consents_to(&channel.name) {
        return Err(Suppression::NoConsent {
            channel: channel.name.clone(),
        });
    }
    if !profile.accepts_category(category) {
        return Err(Suppression::CategoryOff {
            category: category.to_string(),
        });
    }
    channel.address(profile, table).map_err(|e| match e {
        NoAddress::Missing => Suppression::NoAddress {
            channel: channel.name.clone(),
        },
        NoAddress::AllTokensDead => Suppression::DeadTokens {
            channel: channel.name.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelConfig;
    use crate::profile::{Platform, PushToken};

    fn console(name: &str) -> Channel {
        Channel::from_config(name, &ChannelConfig::console(), reqwest::Client::new()).unwrap()
    }

    #[test]
    fn checks_run_in_order_with_reasons() {
        let table = ProfileTable::default();
        let ch = console("push");
        assert_eq!(
            admit(None, "fraud", &ch, &table).unwrap_err().to_string(),
            "no_profile"
        );
        let mut p = Profile {
            user_id: "u1".into(),
            ..Profile::default()
        };
        assert_eq!(
            admit(Some(&p), "fraud", &ch, &table)
                .unwrap_err()
                .to_string(),
            "no_consent:push"
        );
        p.consent.insert("push".into(), true);
        p.preferences.insert("marketing".into(), false);
        assert_eq!(
            admit(Some(&p), "marketing", &ch, &table)
                .unwrap_err()
                .to_string(),
            "category_off:marketing"
        );
        assert!(admit(Some(&p), "fraud", &ch, &table).is_ok());
        p.push_tokens.push(PushToken {
            token: "t".into(),
            platform: Platform::Android,
        });
    }
}

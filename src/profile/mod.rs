//! User profiles: addresses, time zone, consent and preferences, read from a compacted topic.
//!
//! A profile arrives as JSON keyed by user id; [`Profile::parse`] validates the
//! phone number (E.164) and the IANA time zone so that later stages can trust them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod table;
pub use table::{ProfileTable, TableStatus};

/// Push platform of one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Android,
    Ios,
    Web,
}

/// One push token of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushToken {
    /// The FCM registration token.
    pub token: String,
    /// Which platform the token belongs to.
    pub platform: Platform,
}

/// A user's profile as published by the CRM.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The user id; when absent, the Kafka key is used.
    #[serde(default)]
    pub user_id: String,
    /// Push tokens, newest first.
    #[serde(default)]
    pub push_tokens: Vec<PushToken>,
    /// Mobile number in E.164 (`+14155550100`).
    #[serde(default)]
    pub phone: Option<String>,
    /// IANA time zone, e.g. `America/Chicago`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// BCP 47 locale, e.g. `en-US`.
    #[serde(default)]
    pub locale: Option<String>,
    /// Consent per channel name (`push`, `sms`, …). A channel not listed has no consent.
    #[serde(default)]
    pub consent: BTreeMap<String, bool>,
    /// Category preferences (`marketing: false`). A category not listed is on.
    #[serde(default)]
    pub preferences: BTreeMap<String, bool>,
    /// Free-form attributes (name, tier, …) for conditions and templates.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Why a profile record was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile is not valid JSON for the profile shape: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("phone is not a valid E.164 number (expected e.g. +14155550100)")]
    Phone,
    #[error("time_zone {0:?} is not an IANA time zone name (e.g. America/Chicago)")]
    TimeZone(String),
}

impl Profile {
    /// Parses and validates one profile record.
    pub fn parse(user_id: &str, bytes: &[u8]) -> Result<Profile, ProfileError> {
        let mut profile: Profile = serde_json::from_slice(bytes)?;
        if profile.user_id.is_empty() {
            profile.user_id = user_id.to_string();
        }
        if let Some(phone) = &profile.phone {
            profile.phone = Some(normalize_e164(phone).ok_or(ProfileError::Phone)?);
        }
        if let Some(tz) = &profile.time_zone {
            if jiff::tz::TimeZone::get(tz).is_err() {
                return Err(ProfileError::TimeZone(tz.clone()));
            }
        }
        Ok(profile)
    }

    /// Whether the user consented to messages on `channel`.
    pub fn consents_to(&self, channel: &str) -> bool {
        self.consent.get(channel).copied().unwrap_or(false)
    }

    /// Whether the user accepts messages of `category` (on unless turned off).
    pub fn accepts_category(&self, category: &str) -> bool {
        self.preferences.get(category).copied().unwrap_or(true)
    }
}

/// Validates a phone number and returns it in E.164, or `None` when it is not a
/// valid number for its country.
pub fn normalize_e164(raw: &str) -> Option<String> {
    if !raw.starts_with('+') {
        return None;
    }
    let number = phonenumber::parse(None, raw).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    Some(number.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_profile() {
        let p = Profile::parse(
            "u1",
            br#"{"push_tokens":[{"token":"t1","platform":"android"}],"phone":"+1 415 555 2671",
                "time_zone":"America/Chicago","locale":"en-US","consent":{"push":true},
                "preferences":{"marketing":false},"attributes":{"first_name":"Ada"}}"#,
        )
        .unwrap();
        assert_eq!(p.user_id, "u1");
        assert_eq!(p.phone.as_deref(), Some("+14155552671"));
        assert!(p.consents_to("push"));
        assert!(!p.consents_to("sms"));
        assert!(!p.accepts_category("marketing"));
        assert!(p.accepts_category("fraud"));
    }

    #[test]
    fn refuses_invalid_phone_and_zone() {
        assert!(matches!(
            Profile::parse("u", br#"{"phone":"+1 555"}"#),
            Err(ProfileError::Phone)
        ));
        assert!(matches!(
            Profile::parse("u", br#"{"phone":"4155552671"}"#),
            Err(ProfileError::Phone)
        ));
        assert!(matches!(
            Profile::parse("u", br#"{"time_zone":"Mars/Olympus"}"#),
            Err(ProfileError::TimeZone(_))
        ));
        assert!(matches!(
            Profile::parse("u", br#"{"phon":"x"}"#),
            Err(ProfileError::Shape(_))
        ));
    }
}

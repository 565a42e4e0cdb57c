//! User profiles: addresses, time zone, consent and preferences, read from a compacted topic.
//!
//! A profile arrives as JSON keyed by user id; [`Profile::parse`] validates the
//! phone number (E.164) and the IANA time zone so that later stages can trust them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod preferences;
mod record;
mod table;
pub use preferences::Preferences;
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
    /// The user's own quiet hours (`"22:00-07:00"`): replace the category's
    /// window wherever quiet hours apply; they never add quiet hours to a
    /// category that bypasses them (fraud alerts still arrive).
    #[serde(default)]
    pub quiet_hours: Option<crate::config::policy::QuietHours>,
    /// The user's own caps per category (`{"marketing": ["1/day"]}`); the key
    /// `all` replaces the caps across all categories. Bypassed categories stay uncapped.
    #[serde(default)]
    pub caps: BTreeMap<String, Vec<crate::config::policy::Cap>>,
    /// Free-form attributes (name, tier, …) for conditions and templates.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The user's alert subscriptions, by rule id: on or off, their
    /// parameters, their channels (`rules::subscription`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subscriptions: BTreeMap<String, UserSubscription>,
    /// Until when (RFC 3339) the user paused their messages: the `pause`
    /// policy step suppresses them, but for categories that bypass it (fraud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    /// A phone was given but is not valid (so SMS is suppressed with that reason).
    #[serde(skip)]
    pub phone_invalid: bool,
    /// [`crate::util::phone_sha256`] of `phone`, made once, on the first SMS
    /// (every SMS sent records it); see [`Profile::phone_sha256_of`].
    #[serde(skip)]
    pub phone_sha256: std::sync::OnceLock<String>,
    /// A time zone was given but is not an IANA name (so messages under quiet
    /// hours are suppressed rather than timed by a guess).
    #[serde(skip)]
    pub time_zone_invalid: bool,
    /// The profile as conditions see it, converted on first use and kept
    /// with the profile (a cache, not part of the record).
    #[serde(skip)]
    pub view: ConditionView,
}

/// A user's own settings for one subscription, as preferences and profiles carry them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSubscription {
    /// Subscribed or not; absent: the rule's `on_by_default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// The rule's channels this user wants it on (a subset); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Values by parameter name.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// A profile's JSON view for conditions: built once per profile version, not
/// per event. A clone starts empty, so a changed copy never shows stale fields.
#[derive(Default)]
pub struct ConditionView(std::sync::OnceLock<serde_json::Map<String, serde_json::Value>>);

impl Clone for ConditionView {
    fn clone(&self) -> Self {
        ConditionView::default()
    }
}

impl std::fmt::Debug for ConditionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConditionView")
    }
}

/// Why a profile record was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile is not a JSON object: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("profile is JSON but not an object")]
    NotObject,
}

/// A part of an accepted profile that was left out; the rest is used. Never
/// carries the bad value itself (it may be a phone number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileProblem {
    /// The phone is not a valid E.164 number; SMS to this user is suppressed
    /// with `invalid_phone:<channel>`.
    Phone,
    /// The time zone is not an IANA name: messages under quiet hours are
    /// suppressed with `invalid_time_zone`; templates show UTC times.
    TimeZone,
    /// A field has the wrong shape (e.g. `consent: "yes"`), or is unknown.
    Field(String),
}

impl std::fmt::Display for ProfileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileProblem::Phone => {
                f.write_str("phone is not a valid E.164 number (e.g. +14155550100)")
            }
            ProfileProblem::TimeZone => {
                f.write_str("time_zone is not an IANA time zone name (e.g. America/Chicago)")
            }
            ProfileProblem::Field(name) => {
                write!(f, "field `{name}` is unknown or has the wrong shape")
            }
        }
    }
}

impl Profile {
    /// Parses one profile record, keeping every valid part: a bad phone, time
    /// zone or field is left out and reported, not fatal.
    pub fn parse(
        user_id: &str,
        bytes: &[u8],
    ) -> Result<(Profile, Vec<ProfileProblem>), ProfileError> {
        // Each field is read from its own raw JSON, so one of the wrong shape
        // is left out without building a JSON tree of the whole record.
        let fields: BTreeMap<String, &serde_json::value::RawValue> =
            match serde_json::from_slice(bytes) {
                Ok(fields) => fields,
                Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
                    return Err(ProfileError::NotObject);
                }
                Err(e) => return Err(ProfileError::NotJson(e)),
            };
        let mut profile = Profile::default();
        let mut problems = Vec::new();
        for (name, value) in fields {
            if let Err(()) = profile.set(&name, value) {
                problems.push(ProfileProblem::Field(name));
            }
        }
        if profile.user_id.is_empty() {
            profile.user_id = user_id.to_string();
        }
        if let Some(phone) = profile.phone.take() {
            match normalize_e164(&phone) {
                Some(valid) => profile.phone = Some(valid),
                None => {
                    profile.phone_invalid = true;
                    problems.push(ProfileProblem::Phone);
                }
            }
        }
        if profile
            .time_zone
            .as_deref()
            .is_some_and(|tz| crate::util::time_zone(tz).is_none())
        {
            profile.time_zone = None;
            profile.time_zone_invalid = true;
            problems.push(ProfileProblem::TimeZone);
        }
        Ok((profile, problems))
    }

    /// Sets one field from JSON; `Err` when the name is unknown or the shape wrong.
    fn set(&mut self, name: &str, value: &serde_json::value::RawValue) -> Result<(), ()> {
        fn take<T: serde::de::DeserializeOwned>(
            slot: &mut T,
            value: &serde_json::value::RawValue,
        ) -> Result<(), ()> {
            *slot = serde_json::from_str(value.get()).map_err(|_| ())?;
            Ok(())
        }
        match name {
            "user_id" => take(&mut self.user_id, value),
            "push_tokens" => take(&mut self.push_tokens, value),
            "phone" => take(&mut self.phone, value),
            "time_zone" => take(&mut self.time_zone, value),
            "locale" => take(&mut self.locale, value),
            "consent" => take(&mut self.consent, value),
            "preferences" => take(&mut self.preferences, value),
            "quiet_hours" => take(&mut self.quiet_hours, value),
            "caps" => take(&mut self.caps, value),
            "attributes" => take(&mut self.attributes, value),
            "subscriptions" => take(&mut self.subscriptions, value),
            "paused_until" => {
                let until: Option<String> = serde_json::from_str(value.get()).map_err(|_| ())?;
                if until
                    .as_deref()
                    .is_some_and(|t| paused_until_ms(t).is_none())
                {
                    return Err(());
                }
                self.paused_until = until;
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// The profile's fields as JSON, as conditions read them.
    pub fn condition_view(&self) -> &serde_json::Map<String, serde_json::Value> {
        self.view
            .0
            .get_or_init(|| match serde_json::to_value(self) {
                Ok(serde_json::Value::Object(fields)) => fields,
                _ => serde_json::Map::new(),
            })
    }

    /// The `herald_sent` digest of `phone`: made once for the profile's own
    /// number and kept with the profile, else made now.
    pub fn phone_sha256_of(&self, phone: &str) -> String {
        match &self.phone {
            Some(mine) if mine == phone => self
                .phone_sha256
                .get_or_init(|| crate::util::phone_sha256(mine))
                .clone(),
            _ => crate::util::phone_sha256(phone),
        }
    }

    /// Whether the user consented to messages on `channel`.
    pub fn consents_to(&self, channel: &str) -> bool {
        self.consent.get(channel).copied().unwrap_or(false)
    }

    /// Until when the user paused their messages, epoch ms.
    pub fn paused_until_ms(&self) -> Option<i64> {
        self.paused_until.as_deref().and_then(paused_until_ms)
    }

    /// Whether the user accepts messages of `category` (on unless turned off).
    pub fn accepts_category(&self, category: &str) -> bool {
        self.preferences.get(category).copied().unwrap_or(true)
    }
}

/// An RFC 3339 time (`2026-12-24T00:00:00Z`) as epoch ms.
pub fn paused_until_ms(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// Validates a phone number and returns it in E.164, or `None` when it is not a
/// valid number for its country. Google's libphonenumber metadata, through
/// `rlibphonenumber` (a port differential-fuzzed against the C++ library):
/// about 670,000 numbers a second on one core, where the `phonenumber` crate
/// managed 800 on numbers of many regions (its 100-entry regex cache
/// thrashes; BENCHMARKS.md, "State at scale").
pub fn normalize_e164(raw: &str) -> Option<String> {
    use rlibphonenumber::{PhoneNumberFormat, PHONE_NUMBER_UTIL};
    if !raw.starts_with('+') {
        return None;
    }
    let number = PHONE_NUMBER_UTIL.parse(raw, None).ok()?;
    if !number.is_valid() {
        return None;
    }
    Some(number.format_as(PhoneNumberFormat::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_profile() {
        let (p, problems) = Profile::parse(
            "u1",
            br#"{"push_tokens":[{"token":"t1","platform":"android"}],"phone":"+1 415 555 2671",
                "time_zone":"America/Chicago","locale":"en-US","consent":{"push":true},
                "preferences":{"marketing":false},"attributes":{"first_name":"Ada"},
                "quiet_hours":"22:00-07:00","caps":{"marketing":["1/day"],"all":["10/day"]}}"#,
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(p.user_id, "u1");
        assert_eq!(p.phone.as_deref(), Some("+14155552671"));
        // The digest every SMS records is made once, of the E.164 form.
        let digest = crate::util::phone_sha256("+14155552671");
        assert_eq!(p.phone_sha256_of("+14155552671"), digest);
        assert_eq!(
            p.phone_sha256_of("+14155550100"),
            crate::util::phone_sha256("+14155550100")
        );
        assert!(p.consents_to("push"));
        assert!(!p.consents_to("sms"));
        assert!(!p.accepts_category("marketing"));
        assert!(p.accepts_category("fraud"));
        assert_eq!(p.quiet_hours.unwrap().to_string(), "22:00-07:00");
        assert_eq!(p.caps["marketing"][0].to_string(), "1/day");
        let (p, problems) = Profile::parse(
            "u1",
            br#"{"quiet_hours":"late","caps":{"marketing":["3/fortnight"]},"consent":{"sms":true}}"#,
        )
        .unwrap();
        assert_eq!(
            problems,
            vec![
                ProfileProblem::Field("caps".into()),
                ProfileProblem::Field("quiet_hours".into())
            ],
            "a bad override is left out, the rest is kept"
        );
        assert!(p.quiet_hours.is_none() && p.caps.is_empty() && p.consents_to("sms"));
    }

    #[test]
    fn bad_parts_are_left_out_and_reported_not_fatal() {
        let (p, problems) = Profile::parse(
            "u",
            br#"{"phone":"+1 555","time_zone":"Mars/Olympus","consent":"yes","phon":"x","push_tokens":[{"token":"t","platform":"android"}]}"#,
        )
        .unwrap();
        assert_eq!(p.phone, None);
        assert!(p.phone_invalid);
        assert_eq!(p.time_zone, None);
        assert!(p.consent.is_empty());
        assert_eq!(p.push_tokens.len(), 1, "the valid parts are kept");
        assert_eq!(
            problems,
            vec![
                ProfileProblem::Field("consent".into()),
                ProfileProblem::Field("phon".into()),
                ProfileProblem::Phone,
                ProfileProblem::TimeZone
            ]
        );
        assert!(
            !problems.iter().any(|p| p.to_string().contains("+1 555")),
            "no phone in a problem"
        );
        let (p, problems) = Profile::parse("u", br#"{"phone":"4155552671"}"#).unwrap();
        assert!(
            p.phone_invalid && problems == vec![ProfileProblem::Phone],
            "E.164 needs the + and country code"
        );
        assert!(matches!(
            Profile::parse("u", b"[1]"),
            Err(ProfileError::NotObject)
        ));
        assert!(matches!(
            Profile::parse("u", b"{"),
            Err(ProfileError::NotJson(_))
        ));
    }
}

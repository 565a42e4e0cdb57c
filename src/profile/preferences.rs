//! A user's preferences as they set them through the preference API: kept on herald's compacted preferences topic, read whole by every instance, and laid over the profile's fields.
//!
//! The CRM owns the profile; the user owns their preferences. Where both say
//! something, the user's word wins: `categories`, `quiet_hours`, `locale`,
//! `time_zone`, `paused_until` and `subscriptions` replace the profile's
//! (per category and per subscription for the maps). `channels` can only
//! turn a channel off: consent to be messaged on a channel comes from the
//! CRM, where it was recorded with its legal basis, and a preference of
//! `true` leaves the profile's consent as it is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::Profile;
use super::UserSubscription;
use crate::config::policy::QuietHours;

/// One user's preferences: the document `GET` returns and `PUT` replaces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Categories turned on or off (`{"marketing": false}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, bool>,
    /// Channels turned off (`{"sms": false}`); `true` keeps the profile's consent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, bool>,
    /// The user's quiet hours, `"22:00-07:00"` in their time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// BCP 47 locale of their messages (`fr-BE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA time zone (`Europe/Paris`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// RFC 3339: no messages until then, but for categories that bypass the pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    /// Alert subscriptions by rule id: on/off, parameters, channels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subscriptions: BTreeMap<String, UserSubscription>,
}

impl Preferences {
    /// The profile as these preferences change it.
    pub fn lay_over(&self, base: &Profile) -> Profile {
        let mut p = base.clone();
        for (category, on) in &self.categories {
            p.preferences.insert(category.clone(), *on);
        }
        for (channel, on) in &self.channels {
            if !on {
                p.consent.insert(channel.clone(), false);
            }
        }
        if let Some(q) = self.quiet_hours {
            p.quiet_hours = Some(q);
        }
        if let Some(l) = &self.locale {
            p.locale = Some(l.clone());
        }
        if let Some(tz) = &self.time_zone {
            p.time_zone = Some(tz.clone());
            p.time_zone_invalid = false;
        }
        if let Some(until) = &self.paused_until {
            p.paused_until = Some(until.clone());
        }
        for (rule, sub) in &self.subscriptions {
            p.subscriptions.insert(rule.clone(), sub.clone());
        }
        p
    }
}

/// A user's preferences as a table keeps them, with the last profile they
/// were laid over: a lookup merges once per profile version, not per event.
pub struct Stored {
    pub preferences: Preferences,
    /// When the record was written, epoch ms (the topic's timestamp).
    pub written_ms: i64,
    merged: Mutex<Option<(Arc<Profile>, Arc<Profile>)>>,
}

impl Stored {
    pub fn new(preferences: Preferences, written_ms: i64) -> Stored {
        Stored {
            preferences,
            written_ms,
            merged: Mutex::new(None),
        }
    }

    /// `base` with these preferences laid over it, from the last merge when
    /// `base` is the same profile.
    pub fn over(&self, base: &Arc<Profile>) -> Arc<Profile> {
        let mut merged = self.merged.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((was, result)) = merged.as_ref() {
            if Arc::ptr_eq(was, base) {
                return Arc::clone(result);
            }
        }
        let result = Arc::new(self.preferences.lay_over(base));
        *merged = Some((Arc::clone(base), Arc::clone(&result)));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_word_wins_but_cannot_grant_consent() {
        let (base, _) = Profile::parse(
            "u1",
            br#"{"consent":{"push":true,"sms":true},"preferences":{"marketing":true},
                "locale":"en-US","time_zone":"America/Chicago"}"#,
        )
        .unwrap();
        let prefs: Preferences = serde_json::from_str(
            r#"{"categories":{"marketing":false},"channels":{"sms":false,"email":true},
                "locale":"fr-FR","time_zone":"Europe/Paris","quiet_hours":"22:00-07:00",
                "paused_until":"2026-12-24T00:00:00Z",
                "subscriptions":{"large-purchase":{"on":true,"parameters":{"threshold":"250 EUR"}}}}"#,
        )
        .unwrap();
        let p = prefs.lay_over(&base);
        assert!(!p.accepts_category("marketing"));
        assert!(p.consents_to("push") && !p.consents_to("sms"));
        assert!(
            !p.consents_to("email"),
            "a preference does not grant consent"
        );
        assert_eq!(p.locale.as_deref(), Some("fr-FR"));
        assert_eq!(p.time_zone.as_deref(), Some("Europe/Paris"));
        assert_eq!(p.quiet_hours.unwrap().to_string(), "22:00-07:00");
        assert_eq!(p.paused_until_ms(), Some(1_798_070_400_000));
        assert_eq!(p.subscriptions["large-purchase"].on, Some(true));
        assert_eq!(
            base.locale.as_deref(),
            Some("en-US"),
            "the profile is untouched"
        );
        let stored = Stored::new(prefs, 0);
        let base = Arc::new(base);
        assert!(
            Arc::ptr_eq(&stored.over(&base), &stored.over(&base)),
            "merged once"
        );
    }

    #[test]
    fn an_unknown_field_is_refused() {
        assert!(serde_json::from_str::<Preferences>(r#"{"categorys":{}}"#).is_err());
    }
}

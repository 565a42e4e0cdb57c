//! Delivery-policy settings, below the stages that read them: global defaults
//! and per-category settings from the config, per-rule overrides from rule
//! files, and the small value types profiles use too (`"3/day"` caps,
//! `"21:00-08:00"` quiet hours). `crate::policy` applies them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// `[policy]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Caps across every category, per user (e.g. `["20/day"]`).
    #[serde(default = "default_global_caps")]
    pub caps: Vec<Cap>,
    /// Settings per category; a category not listed gets `default`. A category
    /// listed in the config replaces herald's default for that category only.
    #[serde(default = "default_categories", deserialize_with = "over_defaults")]
    pub categories: BTreeMap<String, CategoryPolicy>,
    /// Settings for categories not listed.
    #[serde(default)]
    pub default: CategoryPolicy,
}

/// The policy of one category.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryPolicy {
    /// Older events (by event time) are not messaged: a late contextual
    /// message is worse than none. Seconds; absent = no limit.
    #[serde(default)]
    pub max_age_s: Option<u64>,
    /// Local-time window in which messages are not sent, in the recipient's
    /// time zone (UTC when the profile has none), e.g. `"21:00-08:00"`.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// Per user caps on this category's sends, e.g. `["3/day", "1/hour"]`.
    #[serde(default)]
    pub caps: Vec<Cap>,
    /// Steps this category skips: `quiet_hours`, `caps` (the global caps
    /// too), `pause`, `digest`.
    /// Explicit, so that e.g. fraud alerts reach people at night on purpose.
    #[serde(default)]
    pub bypass: Vec<Step>,
    /// What happens to a message that falls in quiet hours: `drop` it, or
    /// `hold` it and send it when they end (if still fresh).
    #[serde(default)]
    pub on_quiet_hours: QuietAction,
}

/// What quiet hours do to a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuietAction {
    /// Suppressed with `quiet_hours:…`.
    #[default]
    Drop,
    /// Held, then sent when the quiet hours end, unless stale by then.
    Hold,
}

/// "Not if the user already engaged": suppress when the user's feedback shows
/// an engagement of this type within the window (`suppressed_by:<type>`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngagementGuard {
    /// Engagement type from the feedback topic (`email_opened`, `push_opened`, `link_clicked`, …).
    pub engaged: String,
    /// How far back to look, e.g. `2h`.
    pub within: crate::util::Span,
    /// Count only engagements with the rule's `campaign` (when it has one).
    #[serde(default = "yes")]
    pub same_campaign: bool,
}

fn yes() -> bool {
    true
}

/// A step that a category may bypass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    QuietHours,
    Caps,
    /// The user's pause (`paused_until`).
    Pause,
    /// A rule's `digest:` (its messages sent one by one instead).
    Digest,
}

/// Per-rule overrides in a rule file (`policy:` of a rule).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulePolicy {
    /// Replaces the category's `max_age_s`.
    #[serde(default)]
    pub max_age_s: Option<u64>,
    /// Replaces the category's quiet hours; `off` turns them off for this rule.
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursSetting>,
    /// Caps on this rule's own sends, per user, on top of the category's.
    #[serde(default)]
    pub caps: Vec<Cap>,
    /// Replaces the category's `on_quiet_hours` (`drop` or `hold`).
    #[serde(default)]
    pub on_quiet_hours: Option<QuietAction>,
    /// Cross-channel suppression: skip the message when the user engaged
    /// with this campaign another way (e.g. opened the email) recently.
    #[serde(default)]
    pub suppress_if: Vec<EngagementGuard>,
}

/// A rule's quiet-hours setting: a window, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuietHoursSetting {
    Off,
    Window(QuietHours),
}

impl<'de> Deserialize<'de> for QuietHoursSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "off" {
            return Ok(QuietHoursSetting::Off);
        }
        text.parse()
            .map(QuietHoursSetting::Window)
            .map_err(serde::de::Error::custom)
    }
}

/// At most `count` sends per `window_s` seconds, rolling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub count: u32,
    pub window_s: u64,
    /// The unit as written, for reasons (`3/day`).
    unit: &'static str,
}

impl Cap {
    /// A cap of `count` per `unit` (`minute`, `hour`, `day`, `week`).
    pub fn new(count: u32, unit: &str) -> Result<Cap, String> {
        let (window_s, unit) = match unit {
            "minute" => (60, "minute"),
            "hour" => (3600, "hour"),
            "day" => (86_400, "day"),
            "week" => (604_800, "week"),
            other => {
                return Err(format!(
                    "cap unit `{other}` is not one of minute, hour, day, week"
                ))
            }
        };
        Ok(Cap {
            count,
            window_s,
            unit,
        })
    }
}

impl Cap {
    /// Appends the cap as written in a rule (`3/day`).
    pub fn push_to(&self, out: &mut String) {
        out.push_str(itoa::Buffer::new().format(self.count));
        out.push('/');
        out.push_str(self.unit);
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.push_to(&mut text);
        f.write_str(&text)
    }
}

impl FromStr for Cap {
    type Err = String;
    fn from_str(s: &str) -> Result<Cap, String> {
        let (count, unit) = s.split_once('/').ok_or_else(|| {
            format!("cap `{s}` must look like `3/day` (count/minute|hour|day|week)")
        })?;
        let count = count
            .trim()
            .parse()
            .map_err(|_| format!("cap `{s}`: `{count}` is not a whole number"))?;
        Cap::new(count, unit.trim())
    }
}

impl serde::Serialize for Cap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A daily window of local time, `start-end`, that may wrap midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Minutes after local midnight.
    pub start: u16,
    pub end: u16,
}

impl QuietHours {
    /// Whether a local time (minutes after midnight) falls inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl QuietHours {
    /// Appends the window as written in a rule (`21:00-08:00`).
    pub fn push_to(&self, out: &mut String) {
        let two = |out: &mut String, n: u16| {
            out.push(char::from(b'0' + (n / 10 % 10) as u8));
            out.push(char::from(b'0' + (n % 10) as u8));
        };
        two(out, self.start / 60);
        out.push(':');
        two(out, self.start % 60);
        out.push('-');
        two(out, self.end / 60);
        out.push(':');
        two(out, self.end % 60);
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.push_to(&mut text);
        f.write_str(&text)
    }
}

impl FromStr for QuietHours {
    type Err = String;
    fn from_str(s: &str) -> Result<QuietHours, String> {
        let bad = || {
            format!(
                "quiet hours `{s}` must look like `21:00-08:00` (local start-end, 24-hour clock)"
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("quiet hours `{s}` start and end at the same time"));
        }
        Ok(QuietHours { start, end })
    }
}

impl serde::Serialize for QuietHours {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QuietHours {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The configured categories laid over herald's defaults.
fn over_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, CategoryPolicy>, D::Error> {
    let mut categories = default_categories();
    categories.extend(BTreeMap::<String, CategoryPolicy>::deserialize(d)?);
    Ok(categories)
}

fn default_global_caps() -> Vec<Cap> {
    vec![Cap::new(20, "day").expect("valid unit")]
}

/// herald's defaults: marketing is quiet 21:00–08:00 local time (as US TCPA
/// rules require for marketing texts), at most 3 a day and 1 an hour, and
/// useless after an hour; transactional, fraud and operations (alerts such as
/// a warm freezer) bypass quiet hours and caps on purpose, and are useless
/// after ten minutes; fraud alone also bypasses a user's pause (a card used
/// while its holder travels is when the alert matters most).
fn default_categories() -> BTreeMap<String, CategoryPolicy> {
    let urgent = CategoryPolicy {
        max_age_s: Some(600),
        quiet_hours: None,
        caps: Vec::new(),
        bypass: vec![Step::QuietHours, Step::Caps],
        on_quiet_hours: QuietAction::Drop,
    };
    BTreeMap::from([
        (
            "marketing".to_string(),
            CategoryPolicy {
                max_age_s: Some(3600),
                quiet_hours: Some(QuietHours {
                    start: 21 * 60,
                    end: 8 * 60,
                }),
                caps: vec![
                    Cap::new(3, "day").expect("valid unit"),
                    Cap::new(1, "hour").expect("valid unit"),
                ],
                bypass: Vec::new(),
                on_quiet_hours: QuietAction::Drop,
            },
        ),
        ("transactional".to_string(), urgent.clone()),
        ("operations".to_string(), urgent.clone()),
        (
            "fraud".to_string(),
            CategoryPolicy {
                bypass: vec![Step::QuietHours, Step::Caps, Step::Pause, Step::Digest],
                ..urgent
            },
        ),
    ])
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            caps: default_global_caps(),
            categories: default_categories(),
            default: CategoryPolicy::default(),
        }
    }
}

impl PolicyConfig {
    /// The settings of a category.
    pub fn category(&self, name: &str) -> &CategoryPolicy {
        self.categories.get(name).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_categories_lay_over_the_defaults() {
        let p: PolicyConfig =
            toml::from_str("[categories.marketing]\ncaps = [\"1/day\"]\n").unwrap();
        assert_eq!(p.category("marketing").caps, vec!["1/day".parse().unwrap()]);
        assert_eq!(
            p.category("marketing").quiet_hours,
            None,
            "a listed category replaces the default whole"
        );
        assert_eq!(
            p.category("fraud").bypass,
            vec![Step::QuietHours, Step::Caps, Step::Pause, Step::Digest],
            "others keep their defaults"
        );
        assert_eq!(p.caps, vec!["20/day".parse().unwrap()]);
        assert!(
            toml::from_str::<PolicyConfig>("[categories.x]\nquiet_hours = \"9pm-8am\"\n").is_err()
        );
    }

    #[test]
    fn parses_caps_and_quiet_hours() {
        assert_eq!("3/day".parse::<Cap>().unwrap().window_s, 86_400);
        assert_eq!("1/hour".parse::<Cap>().unwrap().to_string(), "1/hour");
        assert!("3/fortnight"
            .parse::<Cap>()
            .unwrap_err()
            .contains("not one of"));
        assert!("three/day".parse::<Cap>().is_err());
        let q: QuietHours = "21:00-08:00".parse().unwrap();
        assert!(
            q.contains(21 * 60)
                && q.contains(23 * 60 + 59)
                && q.contains(0)
                && q.contains(7 * 60 + 59)
        );
        assert!(!q.contains(8 * 60) && !q.contains(20 * 60 + 59));
        let day: QuietHours = "12:00-13:30".parse().unwrap();
        assert!(day.contains(12 * 60 + 15) && !day.contains(13 * 60 + 30));
        assert!("25:00-08:00".parse::<QuietHours>().is_err());
        assert_eq!(q.to_string(), "21:00-08:00");
    }
}

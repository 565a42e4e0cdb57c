//! The rule file format as analysts write it: YAML, several rules per file, positions kept.
//!
//! ```yaml
//! rules:
//!   - id: purchase-notice
//!     description: Tell the cardholder about every approved swipe.
//!     sources: [transactions]
//!     match: { status: approved }
//!     condition: event.amount > 0
//!     channels: [push]
//!     category: transactional
//!     template:
//!       title: "Purchase at {{ event.merchant }}"
//!       body: "{{ event.amount | money(event.currency) }} on card {{ event.card_last4 | mask_card }}"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use crate::deliver::Priority;
pub use crate::expr::Scalar;

/// One rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// The rules in this file, evaluated in order.
    pub rules: Vec<RuleSpec>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique id across all files: lowercase letters, digits, `-`, `_`, `.`.
    pub id: Spanned<String>,
    /// What the rule is for, in one sentence.
    #[serde(default)]
    pub description: String,
    /// A disabled rule is loaded and checked but never matches.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A shadow rule runs on live traffic but never sends: its would-be
    /// outcomes are written marked `"shadow": true` and counted per rule.
    /// Promote it by removing the line (the file hot-reloads).
    #[serde(default)]
    pub shadow: bool,
    /// Source topics the rule listens to.
    pub sources: Spanned<Vec<String>>,
    /// Exact field values an event must have (`status: declined`); used by the
    /// rule index, so prefer it to a condition for equality tests.
    #[serde(default, rename = "match")]
    pub match_fields: BTreeMap<String, Scalar>,
    /// A CEL expression over `event` and `profile` that must be true.
    #[serde(default)]
    pub condition: Option<Spanned<String>>,
    /// Channels to send on, each of them (names of `[channels.*]` in the config).
    #[serde(default)]
    pub channels: Option<Spanned<Vec<String>>>,
    /// Instead of `channels`: one message, on the first channel of the chain
    /// that can take it (`[push, sms]`: SMS when there is no push token, no
    /// push consent, or the push fails). Each hop's reason is in the outcome.
    #[serde(default)]
    pub fallback: Option<Spanned<Vec<String>>>,
    /// With `fallback`: after a send, wait this long for a delivery receipt
    /// (any feedback naming the message: `push_delivered`, `push_opened`, …);
    /// without one, the next channel of the chain is tried (`not_delivered:push`).
    #[serde(default)]
    pub await_delivery: Option<Spanned<crate::util::Span>>,
    /// The campaign this rule's messages belong to, for `policy.suppress_if`
    /// and for engagement events that name a campaign.
    #[serde(default)]
    pub campaign: Option<String>,
    /// Buttons on the push notification; a press comes back on the feedback
    /// topic and is published on the replies topic.
    #[serde(default)]
    pub push_actions: Option<PushActionsSpec>,
    /// Message category (`transactional`, `fraud`, `marketing`, …), for preferences.
    pub category: Spanned<String>,
    /// Provider priority.
    #[serde(default)]
    pub priority: Priority,
    /// The message text.
    pub template: TemplateSpec,
    /// Messages with the same collapse key replace each other on the device.
    #[serde(default)]
    pub collapse_key: Option<String>,
    /// How long the provider may hold an undelivered push, in seconds.
    #[serde(default)]
    pub ttl_seconds: Option<u32>,
    /// The SMS segments a message may take: `rules check` warns about a
    /// text (in any locale) that takes more before any value is filled in.
    #[serde(default)]
    pub max_sms_segments: Option<u32>,
    /// Context over time: a window, run, sequence, absence, crossing or
    /// geofence that must complete before the rule sends (see `patterns::spec`).
    #[serde(default)]
    pub pattern: Option<crate::patterns::PatternSpec>,
    /// The pattern's key, a CEL expression over `event` giving text or a
    /// number (e.g. `event.card_id`); default: the source's state key.
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    /// Overrides of the category's delivery policy for this rule.
    #[serde(default)]
    pub policy: crate::policy::RulePolicy,
    /// Makes the rule an alert users subscribe to, with their own
    /// parameters (`sub.<name>` in the condition): see `subscription`.
    #[serde(default)]
    pub subscription: Option<super::subscription::SubscriptionSpec>,
    /// Collects the rule's messages to one recipient over a window and
    /// sends them as one (see `rules::digest`).
    #[serde(default)]
    pub digest: Option<super::digest::DigestSpec>,
    /// Arms with weights and a control group, and the goal that counts as a
    /// conversion (see `rules::experiment`).
    #[serde(default)]
    pub experiment: Option<super::experiment::ExperimentSpec>,
}

/// Interactive push: the notification category the app registered (APNs
/// `aps.category`, FCM `android.notification.click_action`) and its button ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushActionsSpec {
    /// The category identifier the app registered with its buttons, e.g. `FRAUD_CHECK`.
    pub category: String,
    /// The action ids of its buttons, e.g. `[confirm, deny]`; sent in the push `data`.
    #[serde(default)]
    pub buttons: Vec<String>,
}

/// Templates (minijinja) with `event`, `profile` and `rule` in scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Push notification title.
    #[serde(default)]
    pub title: Option<Spanned<String>>,
    /// Push notification body.
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    /// SMS text (and console/webhook text); defaults to the body.
    #[serde(default)]
    pub text: Option<Spanned<String>>,
    /// The locale of the texts above (BCP 47, `en` when not given).
    #[serde(default)]
    pub locale: Option<Spanned<String>>,
    /// The same texts in other locales (`fr`, `fr-BE`, `ja`), each part
    /// optional: a part a locale lacks comes from the next locale of the
    /// recipient's fallback chain, then from the texts above.
    #[serde(default)]
    pub locales: std::collections::BTreeMap<String, LocaleTextsSpec>,
}

/// One locale's texts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocaleTextsSpec {
    #[serde(default)]
    pub title: Option<Spanned<String>>,
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    #[serde(default)]
    pub text: Option<Spanned<String>>,
}

fn yes() -> bool {
    true
}

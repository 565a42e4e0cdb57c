//! `[feedback]`: how herald reads engagement and replies, and answers HELP.

use serde::Deserialize;

use crate::util::Span;

/// Settings for the feedback topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// How far back every instance reads the feedback topic at start, to
    /// rebuild engagement state. Must cover the longest `suppress_if.within`.
    #[serde(default = "default_lookback")]
    pub lookback: Span,
    /// The channel that answers HELP (a Twilio channel); none: no answer.
    #[serde(default)]
    pub help_channel: Option<String>,
    /// The answer to HELP.
    #[serde(default = "default_help_text")]
    pub help_text: String,
    /// Before each SMS, herald waits until it has read every STOP written to
    /// the feedback topic so far; longer than this and the SMS fails (and is
    /// dead-lettered) rather than risk texting someone who opted out.
    #[serde(default = "default_consent_wait_ms")]
    pub consent_wait_ms: u64,
}

fn default_lookback() -> Span {
    Span(86_400_000)
}

fn default_help_text() -> String {
    "Alerts from your bank. Reply STOP to unsubscribe, START to resubscribe. Msg&data rates may apply."
        .into()
}

fn default_consent_wait_ms() -> u64 {
    2_000
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            lookback: default_lookback(),
            help_channel: None,
            help_text: default_help_text(),
            consent_wait_ms: default_consent_wait_ms(),
        }
    }
}

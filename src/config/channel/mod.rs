//! Configuration of one delivery channel: a tagged enum of per-provider settings (one file per provider), each with the delivery bounds every channel has.
//!
//! `provider = "fcm"` picks the variant; the provider's own keys are checked
//! against its own type, so a Twilio key on an FCM channel is an unknown key
//! with the file's line and column, like any other.
//!
//! The provider types live here, in the config layer, not in
//! `deliver/<provider>/`: the file is parsed and every error collected
//! (`herald run`, `rules check`) before any client is built, and the config
//! layer sits below `deliver` (`src/lib.rs`). `deliver/<provider>/` builds its
//! client from the type defined here.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod apns;
mod fcm;
mod twilio;
mod webhook;

pub use apns::ApnsConfig;
pub use fcm::FcmConfig;
pub use twilio::TwilioConfig;
pub use webhook::WebhookConfig;

/// Which provider API a channel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Firebase Cloud Messaging HTTP v1 (push to android, ios and web tokens).
    Fcm,
    /// Apple Push Notification service, HTTP/2 with a `.p8` signing key (ios
    /// tokens). With an APNs channel configured, FCM channels hand their ios
    /// tokens to it.
    Apns,
    /// Twilio Programmable Messaging (SMS).
    Twilio,
    /// A JSON POST signed with HMAC-SHA256.
    Webhook,
    /// Prints the rendered message to standard output (demo, development).
    Console,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::Fcm => "fcm",
            ProviderKind::Apns => "apns",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Console => "console",
        })
    }
}

/// One channel, e.g. `[channels.push]`: its provider's settings, chosen by
/// `provider`. Credentials are named by environment variable, never written here.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum ChannelConfig {
    Fcm(FcmConfig),
    Apns(ApnsConfig),
    Twilio(TwilioConfig),
    Webhook(WebhookConfig),
    Console(ConsoleConfig),
}

/// How every channel sends, whatever its provider: concurrency, timeouts,
/// retries, the circuit breaker and sends nobody heard answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_attempts: Option<u32>,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub retry_for: Duration,
    pub breaker_failures: u32,
    pub on_unknown: OnUnknown,
}

/// Declares a provider's settings: its own keys, then the delivery keys every
/// channel has (so serde's unknown-key error lists them all, with position).
macro_rules! provider_config {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Most requests in flight at once on this channel.
            #[serde(default = "crate::config::channel::defaults::concurrency")]
            pub concurrency: usize,
            /// Time allowed for one request, in milliseconds.
            #[serde(default = "crate::config::channel::defaults::timeout_ms")]
            pub timeout_ms: u64,
            /// Attempts per message, the first included, for 429, 5xx and
            /// transport errors. Unset (the default): retried for as long as
            /// the message is fresh (its rule's or category's `max_age_s`,
            /// else `retry_for_ms`).
            #[serde(default)]
            pub max_attempts: Option<u32>,
            /// First retry delay in milliseconds; doubled per attempt, with jitter.
            #[serde(default = "crate::config::channel::defaults::backoff_ms")]
            pub backoff_ms: u64,
            /// Longest delay between attempts of herald's choosing, in
            /// milliseconds; also how often an open circuit sends a probe. A
            /// provider's `Retry-After` may ask for longer and is honoured.
            #[serde(default = "crate::config::channel::defaults::max_backoff_ms")]
            pub max_backoff_ms: u64,
            /// How long a message is retried when its rule and category set no
            /// `max_age_s`, in milliseconds; then it fails `stale_after_outage`.
            #[serde(default = "crate::config::channel::defaults::retry_for_ms")]
            pub retry_for_ms: u64,
            /// Retryable failures in a row that open the channel's circuit:
            /// sends then wait and one probe goes out every `max_backoff_ms`;
            /// 0 never opens it.
            #[serde(default = "crate::config::channel::defaults::breaker_failures")]
            pub breaker_failures: u32,
            /// A send found in the ledger as attempted with no answer (its
            /// request was in flight when the instance that made it died):
            /// `resend` repeats it (at least once: right for fraud alerts),
            /// `skip` does not (at most once: right for marketing). Either way
            /// the outcome says `unknown_after_crash`.
            #[serde(default)]
            pub on_unknown: crate::config::OnUnknown,
        }

        impl $name {
            /// The delivery bounds every channel has.
            pub fn delivery(&self) -> crate::config::Delivery {
                crate::config::Delivery {
                    concurrency: self.concurrency,
                    timeout: std::time::Duration::from_millis(self.timeout_ms),
                    max_attempts: self.max_attempts,
                    backoff: std::time::Duration::from_millis(self.backoff_ms),
                    max_backoff: std::time::Duration::from_millis(self.max_backoff_ms),
                    retry_for: std::time::Duration::from_millis(self.retry_for_ms),
                    breaker_failures: self.breaker_failures,
                    on_unknown: self.on_unknown,
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: Default::default(),)*
                    concurrency: crate::config::channel::defaults::concurrency(),
                    timeout_ms: crate::config::channel::defaults::timeout_ms(),
                    max_attempts: None,
                    backoff_ms: crate::config::channel::defaults::backoff_ms(),
                    max_backoff_ms: crate::config::channel::defaults::max_backoff_ms(),
                    retry_for_ms: crate::config::channel::defaults::retry_for_ms(),
                    breaker_failures: crate::config::channel::defaults::breaker_failures(),
                    on_unknown: crate::config::OnUnknown::default(),
                }
            }
        }
    };
}
pub(crate) use provider_config;

provider_config! {
    /// `provider = "console"`: prints each message (demo, development).
    pub struct ConsoleConfig {}
}

impl ProviderSettings for ConsoleConfig {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Console
    }
    fn delivery(&self) -> Delivery {
        ConsoleConfig::delivery(self)
    }
    fn check(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }
}

/// What to do with a send whose answer nobody heard (see `on_unknown`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnknown {
    /// Send it again: the user may get it twice, never not at all.
    #[default]
    Resend,
    /// Do not send it again: the user may not get it, never twice.
    Skip,
}

impl OnUnknown {
    /// As written in the config (and the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnknown::Resend => "resend",
            OnUnknown::Skip => "skip",
        }
    }
}

pub(crate) mod defaults {
    pub fn concurrency() -> usize {
        32
    }
    pub fn timeout_ms() -> u64 {
        5_000
    }
    pub fn retry_for_ms() -> u64 {
        600_000
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn backoff_ms() -> u64 {
        100
    }
    pub fn max_backoff_ms() -> u64 {
        5_000
    }
}

impl ChannelConfig {
    /// A channel that prints to the console, with defaults.
    pub fn console() -> ChannelConfig {
        ChannelConfig::Console(ConsoleConfig::default())
    }

    /// The provider's settings behind the one trait every provider's type has.
    fn settings(&self) -> &dyn ProviderSettings {
        match self {
            ChannelConfig::Fcm(c) => c,
            ChannelConfig::Apns(c) => c,
            ChannelConfig::Twilio(c) => c,
            ChannelConfig::Webhook(c) => c,
            ChannelConfig::Console(c) => c,
        }
    }

    fn settings_mut(&mut self) -> &mut dyn ProviderSettings {
        match self {
            ChannelConfig::Fcm(c) => c,
            ChannelConfig::Apns(c) => c,
            ChannelConfig::Twilio(c) => c,
            ChannelConfig::Webhook(c) => c,
            ChannelConfig::Console(c) => c,
        }
    }

    /// Which provider this channel speaks.
    pub fn kind(&self) -> ProviderKind {
        self.settings().kind()
    }

    /// Concurrency, timeouts, retries and the breaker, whatever the provider.
    pub fn delivery(&self) -> Delivery {
        self.settings().delivery()
    }

    /// Key files named in the channel, to resolve against the config's folder.
    pub(super) fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        self.settings_mut().paths_mut()
    }

    /// Problems with this channel's settings, each naming `channels.<name>`.
    pub fn validate(&self, name: &str) -> Vec<String> {
        let mut problems = self.settings().check(name);
        let delivery = self.delivery();
        if delivery.concurrency == 0 || delivery.max_attempts == Some(0) {
            problems.push(format!(
                "channels.{name}: concurrency and max_attempts must be at least 1"
            ));
        }
        problems
    }
}

/// What every provider's settings type gives (`provider_config!` writes
/// `delivery`; the provider's file writes the rest).
pub(crate) trait ProviderSettings {
    /// The provider these settings are for.
    fn kind(&self) -> ProviderKind;
    /// The delivery keys every channel has.
    fn delivery(&self) -> Delivery;
    /// Problems with the provider's own settings, each naming `channels.<name>`.
    fn check(&self, name: &str) -> Vec<String>;
    /// Files the settings name, resolved against the config file's folder.
    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        Vec::new()
    }
}

/// Collects a provider's setting problems, each naming `channels.<name>`.
pub(crate) struct Checks<'a> {
    name: &'a str,
    provider: &'static str,
    pub problems: Vec<String>,
}

impl<'a> Checks<'a> {
    pub fn new(name: &'a str, provider: &'static str) -> Checks<'a> {
        Checks {
            name,
            provider,
            problems: Vec::new(),
        }
    }

    /// Reports `problem` about this channel.
    pub fn problem(&mut self, problem: impl std::fmt::Display) {
        self.problems
            .push(format!("channels.{}: {problem}", self.name));
    }

    /// A setting the provider cannot do without.
    pub fn required(&mut self, field: &str, value: &str, example: &str) {
        if value.is_empty() {
            let provider = self.provider;
            self.problem(format_args!(
                "provider \"{provider}\" needs `{field}`, e.g. `{field} = \"{example}\"`"
            ));
        }
    }

    /// A URL with its scheme and host.
    pub fn url(&mut self, field: &str, value: &str, example: &str) {
        if !(value.is_empty() || value.starts_with("http://") || value.starts_with("https://")) {
            self.problem(format_args!(
                "{field} must include a scheme and host, e.g. `{example}`; got `{value}`"
            ));
        }
    }

    /// An environment variable that holds a credential, which must be set.
    pub fn secret_env(&mut self, var: &str) {
        if !var.is_empty() && std::env::var_os(var).is_none() {
            self.problem(format_args!(
                "environment variable {var} is not set (it holds this channel's credential)"
            ));
        }
    }
}

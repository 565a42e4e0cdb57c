//! Configuration of one delivery channel: its provider, endpoint, credentials and bounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which provider API a channel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// One channel, e.g. `[channels.push]`. Credentials are named by environment
/// variable, never written here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// `fcm`, `twilio`, `webhook` or `console`.
    pub provider: ProviderKind,
    /// Provider base URL (scheme and host), e.g. `https://fcm.googleapis.com`;
    /// tests point it at a local server. For `webhook`, the full URL to POST to.
    #[serde(default)]
    pub base_url: Option<String>,
    /// FCM: the Firebase project id.
    #[serde(default)]
    pub project_id: Option<String>,
    /// FCM: environment variable holding an OAuth 2.0 bearer access token
    /// (refreshed by your platform). Or use a service account:
    #[serde(default)]
    pub token_env: Option<String>,
    /// FCM: path of a Google service-account key file (JSON); herald mints and
    /// refreshes its own access tokens with it.
    #[serde(default)]
    pub service_account_file: Option<std::path::PathBuf>,
    /// FCM: environment variable holding the path of a service-account key
    /// file, e.g. `GOOGLE_APPLICATION_CREDENTIALS`.
    #[serde(default)]
    pub service_account_env: Option<String>,
    /// APNs: the `.p8` signing key Apple gives (relative to the config file).
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// APNs: the key's id (10 characters, shown beside the key at Apple).
    #[serde(default)]
    pub key_id: Option<String>,
    /// APNs: the developer team id.
    #[serde(default)]
    pub team_id: Option<String>,
    /// APNs: the app's bundle id (`apns-topic`), e.g. `com.example.bank`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Twilio: environment variable holding the Account SID.
    #[serde(default)]
    pub account_sid_env: Option<String>,
    /// Twilio: environment variable holding the Auth Token.
    #[serde(default)]
    pub auth_token_env: Option<String>,
    /// Twilio: sender number in E.164 (`From`); or use `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    /// Twilio: Messaging Service SID (`MessagingServiceSid`), instead of `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Twilio: the URL at which Twilio reaches herald's admin listener (your
    /// proxy's, e.g. `https://herald.example.com`). Turns on the webhooks
    /// `{public_url}/twilio/{channel}/inbound` and `…/status`, and sends carry
    /// `StatusCallback`. Signatures are checked against this URL.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Webhook: environment variable holding the HMAC-SHA256 signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Most requests in flight at once on this channel.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Time allowed for one request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per message, the first included, for 429, 5xx and transport
    /// errors. Unset (the default): retried for as long as the message is
    /// fresh (its rule's or category's `max_age_s`, else `retry_for_ms`).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// First retry delay in milliseconds; doubled per attempt, with jitter.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Longest delay between attempts of herald's choosing, in milliseconds;
    /// also how often an open circuit sends a probe. A provider's
    /// `Retry-After` may ask for longer and is honoured.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// How long a message is retried when its rule and category set no
    /// `max_age_s`, in milliseconds; then it fails `stale_after_outage`.
    #[serde(default = "default_retry_for_ms")]
    pub retry_for_ms: u64,
    /// Retryable failures in a row that open the channel's circuit: sends
    /// then wait and one probe goes out every `max_backoff_ms`; 0 never opens it.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// A send found in the ledger as attempted with no answer (its request
    /// was in flight when the instance that made it died): `resend` repeats
    /// it (at least once: right for fraud alerts), `skip` does not (at most
    /// once: right for marketing). Either way the outcome says
    /// `unknown_after_crash`.
    #[serde(default)]
    pub on_unknown: OnUnknown,
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

fn default_concurrency() -> usize {
    32
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retry_for_ms() -> u64 {
    600_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    5_000
}

impl ChannelConfig {
    /// A channel that prints to the console, with defaults.
    pub fn console() -> ChannelConfig {
        ChannelConfig {
            provider: ProviderKind::Console,
            base_url: None,
            project_id: None,
            token_env: None,
            service_account_file: None,
            service_account_env: None,
            key_file: None,
            key_id: None,
            team_id: None,
            topic: None,
            account_sid_env: None,
            auth_token_env: None,
            from: None,
            messaging_service_sid: None,
            public_url: None,
            secret_env: None,
            concurrency: default_concurrency(),
            timeout_ms: default_timeout_ms(),
            max_attempts: None,
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            retry_for_ms: default_retry_for_ms(),
            breaker_failures: default_breaker_failures(),
            on_unknown: OnUnknown::default(),
        }
    }

    /// FCM: the service-account key file, from `service_account_file` or
    /// the variable `service_account_env` names.
    pub fn service_account_path(&self) -> Option<std::path::PathBuf> {
        self.service_account_file.clone().or_else(|| {
            self.service_account_env
                .as_ref()
                .and_then(std::env::var_os)
                .map(std::path::PathBuf::from)
        })
    }

    /// Twilio: `{public_url}/twilio/{name}`, under which Twilio reaches this
    /// channel's webhooks (`/inbound`, `/status`), when `public_url` is set.
    pub fn webhook_base(&self, name: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{}/twilio/{name}", u.trim_end_matches('/')))
    }

    /// Request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Problems with this channel's settings, each naming `channels.<name>`.
    pub fn validate(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut need = |field: &str, value: &Option<String>, example: &str| {
            if value.as_deref().is_none_or(str::is_empty) {
                problems.push(format!(
                    "channels.{name}: provider \"{}\" needs `{field}`, e.g. `{field} = \"{example}\"`",
                    self.provider
                ));
            }
        };
        match self.provider {
            ProviderKind::Fcm => {
                need("base_url", &self.base_url, "https://fcm.googleapis.com");
                need("project_id", &self.project_id, "my-firebase-project");
                let credentials = [
                    self.token_env.is_some(),
                    self.service_account_file.is_some(),
                    self.service_account_env.is_some(),
                ];
                match credentials.iter().filter(|c| **c).count() {
                    0 => problems.push(format!(
                        "channels.{name}: provider \"fcm\" needs credentials: `service_account_file = \"/etc/herald/fcm-key.json\"`, `service_account_env = \"GOOGLE_APPLICATION_CREDENTIALS\"` or `token_env = \"HERALD_FCM_ACCESS_TOKEN\"`"
                    )),
                    1 => {}
                    _ => problems.push(format!(
                        "channels.{name}: give one of `service_account_file`, `service_account_env` and `token_env`, not several"
                    )),
                }
                if let Some(path) = self.service_account_path() {
                    if !path.is_file() {
                        problems.push(format!(
                            "channels.{name}: service-account key {} is not a readable file",
                            path.display()
                        ));
                    }
                }
            }
            ProviderKind::Apns => {
                need("base_url", &self.base_url, "https://api.push.apple.com");
                need("key_id", &self.key_id, "ABC123DEFG");
                need("team_id", &self.team_id, "DEF123GHIJ");
                need("topic", &self.topic, "com.example.bank");
                match &self.key_file {
                    None => problems.push(format!(
                        "channels.{name}: provider \"apns\" needs `key_file`, e.g. `key_file = \"AuthKey_ABC123DEFG.p8\"`"
                    )),
                    Some(path) if !path.is_file() => problems.push(format!(
                        "channels.{name}: APNs key {} is not a readable file",
                        path.display()
                    )),
                    Some(_) => {}
                }
            }
            ProviderKind::Twilio => {
                need("base_url", &self.base_url, "https://api.twilio.com");
                need(
                    "account_sid_env",
                    &self.account_sid_env,
                    "TWILIO_ACCOUNT_SID",
                );
                need("auth_token_env", &self.auth_token_env, "TWILIO_AUTH_TOKEN");
                if self.from.is_none() && self.messaging_service_sid.is_none() {
                    problems.push(format!(
                        "channels.{name}: provider \"twilio\" needs `from = \"+15005550006\"` or `messaging_service_sid = \"MG…\"`"
                    ));
                }
            }
            ProviderKind::Webhook => {
                need(
                    "base_url",
                    &self.base_url,
                    "https://hooks.example.com/herald",
                );
                need("secret_env", &self.secret_env, "HERALD_WEBHOOK_SECRET");
            }
            ProviderKind::Console => {}
        }
        if let Some(url) = &self.public_url {
            if self.provider != ProviderKind::Twilio {
                problems.push(format!(
                    "channels.{name}: `public_url` is for Twilio's webhooks; provider \"{}\" has none",
                    self.provider
                ));
            } else if !url.starts_with("https://") && !url.starts_with("http://") {
                problems.push(format!(
                    "channels.{name}: public_url must include a scheme and host, e.g. `https://herald.example.com`; got `{url}`"
                ));
            }
        }
        if let Some(url) = &self.base_url {
            if self.provider != ProviderKind::Console
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                problems.push(format!(
                    "channels.{name}: base_url must include a scheme and host, e.g. `https://fcm.googleapis.com`; got `{url}`"
                ));
            }
        }
        for var in [
            &self.token_env,
            &self.service_account_env,
            &self.account_sid_env,
            &self.auth_token_env,
            &self.secret_env,
        ]
        .into_iter()
        .flatten()
        {
            if std::env::var_os(var).is_none() {
                problems.push(format!(
                    "channels.{name}: environment variable {var} is not set (it holds this channel's credential)"
                ));
            }
        }
        if self.concurrency == 0 || self.max_attempts == Some(0) {
            problems.push(format!(
                "channels.{name}: concurrency and max_attempts must be at least 1"
            ));
        }
        problems
    }
}

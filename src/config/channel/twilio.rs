//! `provider = "twilio"`: Twilio Programmable Messaging settings (credentials, sender, webhooks) and their checks.

use super::{provider_config, Checks, Delivery, ProviderKind, ProviderSettings};

provider_config! {
    /// A Twilio SMS channel.
    pub struct TwilioConfig {
        /// Base URL, e.g. `https://api.twilio.com`.
        #[serde(default)]
        pub base_url: String,
        /// Environment variable holding the Account SID.
        #[serde(default)]
        pub account_sid_env: String,
        /// Environment variable holding the Auth Token.
        #[serde(default)]
        pub auth_token_env: String,
        /// Sender number in E.164 (`From`); or use `messaging_service_sid`.
        #[serde(default)]
        pub from: Option<String>,
        /// Messaging Service SID (`MessagingServiceSid`), instead of `from`.
        #[serde(default)]
        pub messaging_service_sid: Option<String>,
        /// The URL at which Twilio reaches herald's admin listener (your
        /// proxy's, e.g. `https://herald.example.com`). Turns on the webhooks
        /// `{public_url}/twilio/{channel}/inbound` and `…/status`, and sends
        /// carry `StatusCallback`. Signatures are checked against this URL.
        #[serde(default)]
        pub public_url: Option<String>,
    }
}

impl TwilioConfig {
    /// `{public_url}/twilio/{name}`, under which Twilio reaches this
    /// channel's webhooks (`/inbound`, `/status`), when `public_url` is set.
    pub fn webhook_base(&self, name: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{}/twilio/{name}", u.trim_end_matches('/')))
    }
}

impl ProviderSettings for TwilioConfig {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Twilio
    }

    fn delivery(&self) -> Delivery {
        TwilioConfig::delivery(self)
    }

    fn check(&self, name: &str) -> Vec<String> {
        let mut checks = Checks::new(name, "twilio");
        checks.required("base_url", &self.base_url, "https://api.twilio.com");
        checks.url("base_url", &self.base_url, "https://api.twilio.com");
        checks.required(
            "account_sid_env",
            &self.account_sid_env,
            "TWILIO_ACCOUNT_SID",
        );
        checks.required("auth_token_env", &self.auth_token_env, "TWILIO_AUTH_TOKEN");
        if self.from.is_none() && self.messaging_service_sid.is_none() {
            checks.problem(
                "provider \"twilio\" needs `from = \"+15005550006\"` or `messaging_service_sid = \"MG…\"`",
            );
        }
        if let Some(url) = &self.public_url {
            if url.is_empty() {
                checks.problem(
                    "public_url must include a scheme and host, e.g. `https://herald.example.com`",
                );
            }
            checks.url("public_url", url, "https://herald.example.com");
        }
        checks.secret_env(&self.account_sid_env);
        checks.secret_env(&self.auth_token_env);
        checks.problems
    }
}

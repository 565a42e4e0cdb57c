//! `provider = "webhook"`: a signed JSON POST to the deployment's own URL, and its checks.

use super::{provider_config, Checks, Delivery, ProviderKind, ProviderSettings};

provider_config! {
    /// A webhook channel: where to POST, and the signing secret.
    pub struct WebhookConfig {
        /// The full URL to POST to.
        #[serde(default)]
        pub base_url: String,
        /// Environment variable holding the HMAC-SHA256 signing secret.
        #[serde(default)]
        pub secret_env: String,
    }
}

impl ProviderSettings for WebhookConfig {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Webhook
    }

    fn delivery(&self) -> Delivery {
        WebhookConfig::delivery(self)
    }

    fn check(&self, name: &str) -> Vec<String> {
        let mut checks = Checks::new(name, "webhook");
        checks.required(
            "base_url",
            &self.base_url,
            "https://hooks.example.com/herald",
        );
        checks.url(
            "base_url",
            &self.base_url,
            "https://hooks.example.com/herald",
        );
        checks.required("secret_env", &self.secret_env, "HERALD_WEBHOOK_SECRET");
        checks.secret_env(&self.secret_env);
        checks.problems
    }
}

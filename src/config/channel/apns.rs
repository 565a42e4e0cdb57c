//! `provider = "apns"`: Apple Push Notification service settings (token-based, a `.p8` key) and their checks.

use std::path::PathBuf;

use super::{provider_config, Checks, Delivery, ProviderKind, ProviderSettings};

provider_config! {
    /// An APNs channel: the signing key, its ids, and the app it pushes to.
    pub struct ApnsConfig {
        /// Base URL, e.g. `https://api.push.apple.com` (or the sandbox's).
        #[serde(default)]
        pub base_url: String,
        /// The `.p8` signing key Apple gives (relative to the config file).
        #[serde(default)]
        pub key_file: PathBuf,
        /// The key's id (10 characters, shown beside the key at Apple).
        #[serde(default)]
        pub key_id: String,
        /// The developer team id.
        #[serde(default)]
        pub team_id: String,
        /// The app's bundle id (`apns-topic`), e.g. `com.example.bank`.
        #[serde(default)]
        pub topic: String,
    }
}

impl ProviderSettings for ApnsConfig {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Apns
    }

    fn delivery(&self) -> Delivery {
        ApnsConfig::delivery(self)
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        vec![&mut self.key_file]
    }

    fn check(&self, name: &str) -> Vec<String> {
        let mut checks = Checks::new(name, "apns");
        checks.required("base_url", &self.base_url, "https://api.push.apple.com");
        checks.url("base_url", &self.base_url, "https://api.push.apple.com");
        checks.required("key_id", &self.key_id, "ABC123DEFG");
        checks.required("team_id", &self.team_id, "DEF123GHIJ");
        checks.required("topic", &self.topic, "com.example.bank");
        if self.key_file.as_os_str().is_empty() {
            checks.problem(
                "provider \"apns\" needs `key_file`, e.g. `key_file = \"AuthKey_ABC123DEFG.p8\"`",
            );
        } else if !self.key_file.is_file() {
            checks.problem(format_args!(
                "APNs key {} is not a readable file",
                self.key_file.display()
            ));
        }
        checks.problems
    }
}

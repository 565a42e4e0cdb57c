//! `provider = "fcm"`: Firebase Cloud Messaging HTTP v1 settings and their checks.

use std::path::PathBuf;

use super::{provider_config, Checks, Delivery, ProviderKind, ProviderSettings};

provider_config! {
    /// An FCM channel: the project, and one kind of credential.
    pub struct FcmConfig {
        /// Base URL (scheme and host), e.g. `https://fcm.googleapis.com`;
        /// tests point it at a local server.
        #[serde(default)]
        pub base_url: String,
        /// The Firebase project id.
        #[serde(default)]
        pub project_id: String,
        /// Environment variable holding an OAuth 2.0 bearer access token
        /// (refreshed by your platform). Or use a service account:
        #[serde(default)]
        pub token_env: Option<String>,
        /// Path of a Google service-account key file (JSON); herald mints and
        /// refreshes its own access tokens with it.
        #[serde(default)]
        pub service_account_file: Option<PathBuf>,
        /// Environment variable holding the path of a service-account key
        /// file, e.g. `GOOGLE_APPLICATION_CREDENTIALS`.
        #[serde(default)]
        pub service_account_env: Option<String>,
    }
}

impl FcmConfig {
    /// The service-account key file, from `service_account_file` or the
    /// variable `service_account_env` names.
    pub fn service_account_path(&self) -> Option<PathBuf> {
        self.service_account_file.clone().or_else(|| {
            self.service_account_env
                .as_ref()
                .and_then(std::env::var_os)
                .map(PathBuf::from)
        })
    }
}

impl ProviderSettings for FcmConfig {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fcm
    }

    fn delivery(&self) -> Delivery {
        FcmConfig::delivery(self)
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        self.service_account_file.iter_mut().collect()
    }

    fn check(&self, name: &str) -> Vec<String> {
        let mut checks = Checks::new(name, "fcm");
        checks.required("base_url", &self.base_url, "https://fcm.googleapis.com");
        checks.url("base_url", &self.base_url, "https://fcm.googleapis.com");
        checks.required("project_id", &self.project_id, "my-firebase-project");
        let credentials = [
            self.token_env.is_some(),
            self.service_account_file.is_some(),
            self.service_account_env.is_some(),
        ];
        match credentials.iter().filter(|c| **c).count() {
            0 => checks.problem(
                "provider \"fcm\" needs credentials: `service_account_file = \"/etc/herald/fcm-key.json\"`, `service_account_env = \"GOOGLE_APPLICATION_CREDENTIALS\"` or `token_env = \"HERALD_FCM_ACCESS_TOKEN\"`",
            ),
            1 => {}
            _ => checks.problem(
                "give one of `service_account_file`, `service_account_env` and `token_env`, not several",
            ),
        }
        if let Some(path) = self.service_account_path() {
            if !path.is_file() {
                checks.problem(format_args!(
                    "service-account key {} is not a readable file",
                    path.display()
                ));
            }
        }
        for var in [&self.token_env, &self.service_account_env]
            .into_iter()
            .flatten()
        {
            checks.secret_env(var);
        }
        checks.problems
    }
}

//! Firebase Cloud Messaging: the HTTP v1 client (`client.rs`), its OAuth 2.0 tokens from a service-account key (`auth.rs`), built from an `FcmConfig`.

pub(super) mod auth;
mod client;

use std::sync::Arc;

pub(super) use client::Fcm;

use super::{secret, ChannelError, Provider};
use crate::config::FcmConfig;

/// The FCM client of channel `name`.
pub(super) fn build(
    name: &str,
    config: &FcmConfig,
    http: reqwest::Client,
) -> Result<Arc<dyn Provider>, ChannelError> {
    let timeout = config.delivery().timeout;
    let auth = match config.service_account_path() {
        Some(path) => auth::FcmAuth::ServiceAccount(
            auth::ServiceAccount::from_file(&path, http.clone(), timeout).map_err(|detail| {
                ChannelError::Key {
                    channel: name.into(),
                    detail,
                }
            })?,
        ),
        None => auth::FcmAuth::Static(secret(name, config.token_env.as_deref())?),
    };
    let url = format!(
        "{}/v1/projects/{}/messages:send",
        config.base_url.trim_end_matches('/'),
        config.project_id
    );
    let url = reqwest::Url::parse(&url).map_err(|e| ChannelError::Url {
        channel: name.into(),
        url,
        detail: e.to_string(),
    })?;
    Ok(Arc::new(Fcm {
        http,
        url,
        auth,
        timeout,
    }))
}

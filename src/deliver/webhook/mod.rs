//! A generic JSON webhook, signed with HMAC-SHA256 (`client.rs`), built from a `WebhookConfig`.

mod client;

use std::sync::Arc;

pub(super) use client::Webhook;

use super::{secret, ChannelError, Provider};
use crate::config::WebhookConfig;

/// The webhook client of channel `name`.
pub(super) fn build(
    name: &str,
    config: &WebhookConfig,
    http: reqwest::Client,
) -> Result<Arc<dyn Provider>, ChannelError> {
    Ok(Arc::new(Webhook {
        http,
        url: config.base_url.trim_end_matches('/').to_string(),
        secret: secret(name, Some(&config.secret_env))?,
        timeout: config.delivery().timeout,
    }))
}

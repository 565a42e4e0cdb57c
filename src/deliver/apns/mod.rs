//! Apple Push Notification service: the HTTP/2 client with token-based auth (`client.rs`), built from an `ApnsConfig`.

mod client;

use std::sync::Arc;

pub(super) use client::{Apns, ProviderToken};

use super::{ChannelError, Provider};
use crate::config::ApnsConfig;

/// The APNs client of channel `name`, on an HTTP/2-only connection.
pub(super) fn build(name: &str, config: &ApnsConfig) -> Result<Arc<dyn Provider>, ChannelError> {
    let token = ProviderToken::from_file(&config.key_file, &config.key_id, &config.team_id)
        .map_err(|detail| ChannelError::Key {
            channel: name.into(),
            detail,
        })?;
    Ok(Arc::new(Apns {
        http: super::http2_client(),
        base: config.base_url.trim_end_matches('/').to_string(),
        topic: config.topic.clone(),
        token,
        timeout: config.delivery().timeout,
    }))
}

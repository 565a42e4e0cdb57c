//! Twilio Programmable Messaging: the client that sends SMS and maps Twilio's error codes (`client.rs`), built from a `TwilioConfig`, and its webhooks — inbound SMS and status callbacks, signed with `X-Twilio-Signature` (`inbound.rs`).

mod client;
pub mod inbound;

use std::sync::Arc;

pub(super) use client::Twilio;

use super::{secret, ChannelError, Provider};
use crate::config::TwilioConfig;

/// The Twilio client of channel `name`.
pub(super) fn build(
    name: &str,
    config: &TwilioConfig,
    http: reqwest::Client,
) -> Result<Arc<dyn Provider>, ChannelError> {
    let sid = secret(name, Some(&config.account_sid_env))?;
    Ok(Arc::new(Twilio {
        http,
        url: format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.base_url.trim_end_matches('/'),
            secrecy::ExposeSecret::expose_secret(&sid)
        ),
        account_sid: sid,
        auth_token: secret(name, Some(&config.auth_token_env))?,
        from: config.from.clone(),
        messaging_service_sid: config.messaging_service_sid.clone(),
        status_callback: config.webhook_base(name).map(|b| format!("{b}/status")),
        timeout: config.delivery().timeout,
    }))
}

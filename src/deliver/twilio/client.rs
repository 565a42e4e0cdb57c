//! SMS through the Twilio Programmable Messaging API (`POST …/Messages.json`, form-encoded).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::ProviderKind;
use crate::deliver::{
    classify, transport, Address, Delivered, Message, Provider, SendError, SendFuture,
};

/// The Twilio adapter: HTTP basic auth with the Account SID and Auth Token.
pub struct Twilio {
    pub http: reqwest::Client,
    /// `{base}/2010-04-01/Accounts/{sid}/Messages.json`.
    pub url: String,
    pub account_sid: SecretString,
    pub auth_token: SecretString,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    /// `{public_url}/twilio/{channel}/status`, when the webhooks are on.
    pub status_callback: Option<String>,
    pub timeout: Duration,
}

impl Provider for Twilio {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Twilio
    }

    fn send<'a>(&'a self, message: &'a Message, to: &'a Address) -> SendFuture<'a> {
        Box::pin(async move {
            let Address::Phone(phone) = to else {
                return Err(SendError::Rejected {
                    status: 0,
                    detail: "twilio needs a phone number".into(),
                });
            };
            let mut form: Vec<(&str, &str)> =
                vec![("To", phone.as_str()), ("Body", message.body.as_str())];
            match (&self.messaging_service_sid, &self.from) {
                (Some(service), _) => form.push(("MessagingServiceSid", service)),
                (None, Some(from)) => form.push(("From", from)),
                (None, None) => {}
            }
            // The idempotency key in the callback URL: Twilio's receipts name
            // the message herald knows, whichever instance gets them.
            let callback = self
                .status_callback
                .as_ref()
                .map(|base| format!("{base}?message={}", message.idempotency_key));
            if let Some(url) = &callback {
                form.push(("StatusCallback", url));
            }
            let response = self
                .http
                .post(&self.url)
                .basic_auth(
                    self.account_sid.expose_secret(),
                    Some(self.auth_token.expose_secret()),
                )
                .timeout(self.timeout)
                .form(&form)
                .send()
                .await
                .map_err(transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(Delivered {
                    provider_message_id: body
                        .get("sid")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    delivery: body
                        .get("status")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
            let code = body.get("code").and_then(Value::as_i64).unwrap_or(0);
            if status.as_u16() == 400 {
                match code {
                    21211 => {
                        let provider_code = "twilio_error_21211";
                        return Err(SendError::InvalidPhone { provider_code });
                    }
                    21610 => {
                        let provider_code = "twilio_error_21610";
                        return Err(SendError::OptedOutAtProvider { provider_code });
                    }
                    _ => {}
                }
            }
            Err(classify(
                status,
                &headers,
                format!("twilio {}: error code {code}", status.as_u16()),
            ))
        })
    }
}

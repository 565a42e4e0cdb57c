//! A generic JSON webhook, signed with HMAC-SHA256 so the receiver can trust it.
//!
//! Headers: `X-Herald-Timestamp: <unix seconds>`, `X-Herald-Signature:
//! v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, `Idempotency-Key`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::ProviderKind;
use crate::deliver::{classify, transport, Address, Delivered, Message, Provider, SendFuture};

/// The webhook adapter.
pub struct Webhook {
    pub http: reqwest::Client,
    pub url: String,
    pub secret: SecretString,
    pub timeout: Duration,
}

/// `v1=<hex>` signature of `"<timestamp>.<body>"`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Provider for Webhook {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Webhook
    }

    fn send<'a>(&'a self, message: &'a Message, to: &'a Address) -> SendFuture<'a> {
        Box::pin(async move {
            let user = match to {
                Address::User(u) => u.as_str(),
                _ => &*message.user,
            };
            let body = serde_json::to_vec(&json!({
                "rule": message.rule_id,
                "category": message.category,
                "user": user,
                "title": message.title,
                "body": message.body,
                "data": message.data,
                "idempotency_key": message.idempotency_key,
            }))
            .unwrap_or_default();
            let timestamp = crate::util::now_ms() / 1000;
            let response = self
                .http
                .post(&self.url)
                .timeout(self.timeout)
                .header("content-type", "application/json")
                .header("x-herald-timestamp", timestamp.to_string())
                .header(
                    "x-herald-signature",
                    signature(self.secret.expose_secret(), timestamp, &body),
                )
                .header("idempotency-key", &*message.idempotency_key)
                .body(body)
                .send()
                .await
                .map_err(transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            if status.is_success() {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                return Ok(Delivered {
                    delivery: None,
                    provider_message_id: body.get("id").and_then(Value::as_str).map(str::to_string),
                });
            }
            Err(classify(
                status,
                &headers,
                format!("webhook {}", status.as_u16()),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference value computed with: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            super::signature("s3cret", 1_700_000_000, br#"{"a":1}"#),
            "v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }
}

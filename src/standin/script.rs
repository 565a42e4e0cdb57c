//! What tests ask of the stand-in beyond the demo's needs: every request kept
//! as it came (API, account, whether its auth was right, its JSON or form
//! fields), answers scripted in advance (a 503, a 404 `UNREGISTERED`, a Twilio
//! error code), a delay before each answer, and a signed webhook endpoint.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::Value;

/// One request as it came, recipient and all: for tests, which check what
/// herald sent. Kept only after [`super::StandIn::keep_requests`].
#[derive(Debug, Clone)]
pub struct Request {
    /// `fcm`, `twilio` or `webhook`.
    pub api: &'static str,
    /// The path's project id (FCM) or account SID (Twilio).
    pub account: String,
    /// Whether its credentials were the ones the stand-in accepts.
    pub auth_ok: bool,
    /// FCM and webhooks: the JSON body.
    pub json: Value,
    /// Twilio: the form fields.
    pub form: BTreeMap<String, String>,
    pub content_type: String,
}

/// The scripted part of the stand-in's behaviour.
#[derive(Default)]
pub(super) struct Script {
    /// Every request, once keeping is on.
    pub requests: Mutex<Option<Vec<Request>>>,
    /// Statuses to answer, in order; the normal answer once empty.
    pub plan: Mutex<VecDeque<u16>>,
    pub delay: Mutex<Duration>,
    /// The HMAC secret of `/hook`; none: webhooks are refused.
    pub webhook_secret: Mutex<Option<String>>,
}

impl Script {
    /// Keeps the request `made` describes, when keeping is on; built only then,
    /// so the demo and the load test pay nothing for it.
    pub fn keep(&self, made: impl FnOnce() -> Request) {
        if let Some(all) = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            all.push(made());
        }
    }

    /// The next planned status, if any.
    pub fn next(&self) -> Option<u16> {
        self.plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// Waits the configured delay.
    pub async fn pause(&self) {
        let d = *self.delay.lock().unwrap_or_else(|p| p.into_inner());
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// Whether a webhook call carries `X-Herald-Signature: v1=<hex
    /// HMAC-SHA256(secret, "<timestamp>.<body>")>` and an idempotency key.
    pub fn webhook_signed(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        use hmac::{Hmac, Mac};
        let Some(secret) = self
            .webhook_secret
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return false;
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(format!("{}.", header("x-herald-timestamp")).as_bytes());
        mac.update(body);
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        header("x-herald-signature") == expected && !header("idempotency-key").is_empty()
    }
}

/// The request's content type.
pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

//! Push straight to Apple (APNs), HTTP/2 with token-based auth: an ES256 JWT
//! signed with the team's `.p8` key, re-signed every 30 minutes (Apple refuses
//! tokens older than an hour and throttles re-signing more often than every
//! 20 minutes).
//!
//! `POST {base}/3/device/{token}` with `apns-push-type`, `apns-topic`,
//! `apns-priority`, `apns-expiration`, `apns-collapse-id` and `apns-id`; the
//! body is the `aps` dictionary (alert, sound, category) and herald's data.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::ProviderKind;
use crate::deliver::Priority;
use crate::deliver::{transport, Address, Delivered, Message, Provider, SendError, SendFuture};

/// How long a signed provider token is used before signing a new one.
const RESIGN_AFTER: Duration = Duration::from_secs(30 * 60);

/// Apple refuses (`TooManyProviderTokenUpdates`) tokens signed more often.
const RESIGN_FLOOR: Duration = Duration::from_secs(20 * 60);

/// APNs' limit on `apns-collapse-id`, in bytes.
const COLLAPSE_ID_BYTES: usize = 64;

/// The team's signing key and the token made from it.
pub struct ProviderToken {
    key: jsonwebtoken::EncodingKey,
    key_id: String,
    team_id: String,
    signed: Mutex<Option<(String, Instant)>>,
    /// When Apple last made herald sign early (`ExpiredProviderToken`).
    forced: Mutex<Option<Instant>>,
}

impl ProviderToken {
    /// Reads a `.p8` key (PKCS#8 PEM, P-256). Errors name the file, never the key.
    pub fn from_file(path: &std::path::Path, key_id: &str, team_id: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("APNs key {}: {e}", path.display()))?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).map_err(|_| {
            format!(
                "APNs key {}: not a P-256 private key in PEM (the .p8 file Apple gives)",
                path.display()
            )
        })?;
        Ok(ProviderToken {
            key,
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
            signed: Mutex::new(None),
            forced: Mutex::new(None),
        })
    }

    /// Apple called the token expired: sign a new one next, unless Apple
    /// already made herald do so in the last 20 minutes (then the clocks
    /// disagree, a new token would not help, and signing again would be
    /// refused as too frequent). Returns whether a new one will be signed.
    fn expire(&self) -> bool {
        let mut forced = self.forced.lock().unwrap_or_else(|p| p.into_inner());
        if forced.is_some_and(|at| at.elapsed() < RESIGN_FLOOR) {
            return false;
        }
        *forced = Some(Instant::now());
        *self.signed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        true
    }

    /// The current token, signed anew when it is 30 minutes old.
    fn bearer(&self) -> Result<String, SendError> {
        let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, at)) = signed.as_ref() {
            if at.elapsed() < RESIGN_AFTER {
                return Ok(token.clone());
            }
        }
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let token = jsonwebtoken::encode(
            &header,
            &json!({"iss": self.team_id, "iat": iat}),
            &self.key,
        )
        .map_err(|e| SendError::Auth {
            detail: format!("cannot sign the APNs provider token: {e}"),
        })?;
        *signed = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

/// The APNs adapter.
pub struct Apns {
    /// An HTTP/2-only client (APNs speaks nothing else).
    pub http: reqwest::Client,
    /// `https://api.push.apple.com` (or the sandbox, or a test server).
    pub base: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    pub token: ProviderToken,
    pub timeout: Duration,
}

/// `apns-collapse-id`: the collapse key, or its hash when longer than APNs takes.
fn collapse_id(key: &str) -> String {
    if key.len() <= COLLAPSE_ID_BYTES {
        return key.to_string();
    }
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// `apns-id`: a UUID made from the idempotency key, so a retry carries the same id.
fn apns_id(idempotency_key: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(idempotency_key.as_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The JSON body: `aps` and herald's data beside it.
pub fn payload(message: &Message) -> Value {
    let mut alert = serde_json::Map::new();
    if let Some(title) = &message.title {
        alert.insert("title".into(), json!(title));
    }
    alert.insert("body".into(), json!(message.body));
    let mut aps = json!({ "alert": alert, "sound": "default" });
    if let Some(category) = &message.action_category {
        aps["category"] = json!(category);
    }
    let mut body = json!({ "aps": aps });
    for (k, v) in message.data.entries() {
        body[k] = json!(v);
    }
    body["rule"] = json!(message.rule_id);
    body["idempotency_key"] = json!(message.idempotency_key);
    body
}

impl Provider for Apns {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Apns
    }

    fn send<'a>(&'a self, message: &'a Message, to: &'a Address) -> SendFuture<'a> {
        Box::pin(async move {
            let Address::Push(device) = to else {
                return Err(SendError::Rejected {
                    status: 0,
                    detail: "apns needs a device token".into(),
                });
            };
            let expiration = message.ttl_seconds.map_or(0, |ttl| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
                    + u64::from(ttl)
            });
            let priority = if message.priority == Priority::High {
                "10"
            } else {
                "5"
            };
            let mut request = self
                .http
                .post(format!("{}/3/device/{}", self.base, device.token))
                .bearer_auth(self.token.bearer()?)
                .header("apns-push-type", "alert")
                .header("apns-topic", &self.topic)
                .header("apns-priority", priority)
                .header("apns-expiration", expiration.to_string())
                .header("apns-id", apns_id(&message.idempotency_key))
                .timeout(self.timeout)
                .json(&payload(message));
            if let Some(key) = &message.collapse_key {
                request = request.header("apns-collapse-id", collapse_id(key));
            }
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            if status.is_success() {
                return Ok(Delivered {
                    delivery: None,
                    provider_message_id: headers
                        .get("apns-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                });
            }
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let reason = body["reason"].as_str().unwrap_or("").to_string();
            if status.as_u16() == 403 && reason == "ExpiredProviderToken" && self.token.expire() {
                return Err(SendError::Retryable {
                    status: Some(403),
                    retry_after: None,
                    detail: "apns 403: ExpiredProviderToken; signing a new one".into(),
                });
            }
            answer(status, &headers, reason)
        })
    }
}

/// What an APNs error means for the message and the token.
fn answer(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    reason: String,
) -> Result<Delivered, SendError> {
    match (status.as_u16(), reason.as_str()) {
        (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => {
            Err(SendError::Unregistered)
        }
        (429, _) | (500..=599, _) => Err(crate::deliver::classify(
            status,
            headers,
            format!("apns {}: {reason}", status.as_u16()),
        )),
        (s, _) => Err(SendError::Refused { status: s, reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use reqwest::StatusCode;

    #[test]
    fn ids_are_stable_and_within_apples_limits() {
        assert_eq!(apns_id("k1"), apns_id("k1"));
        assert_eq!(apns_id("k1").len(), 36);
        assert_eq!(collapse_id("purchase"), "purchase");
        let long = "x".repeat(80);
        assert_eq!(collapse_id(&long).len(), 64);
    }

    #[test]
    fn apple_reasons_decide_the_token_and_the_retry() {
        let none = HeaderMap::new();
        let at = |s: u16, r: &str| answer(StatusCode::from_u16(s).unwrap(), &none, r.into());
        assert!(matches!(
            at(410, "Unregistered"),
            Err(SendError::Unregistered)
        ));
        assert!(matches!(
            at(400, "BadDeviceToken"),
            Err(SendError::Unregistered)
        ));
        assert!(matches!(
            at(429, "TooManyRequests"),
            Err(SendError::Retryable { .. })
        ));
        assert!(matches!(
            at(503, "ServiceUnavailable"),
            Err(SendError::Retryable { .. })
        ));
        let refused = at(400, "BadCollapseId").unwrap_err();
        assert_eq!(refused.reason(), "provider_rejected:400:BadCollapseId");
    }
}

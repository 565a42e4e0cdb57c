//! Push through Firebase Cloud Messaging, HTTP v1 API (`projects.messages.send`).

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::auth::FcmAuth;
use crate::config::ProviderKind;
use crate::deliver::Priority;
use crate::deliver::{
    classify, retry_after, transport, Address, Delivered, Message, Provider, SendError, SendFuture,
};

/// The FCM v1 adapter, authenticated with an OAuth 2.0 access token: a
/// static one, or minted from a service-account key.
pub struct Fcm {
    pub http: reqwest::Client,
    /// `{base}/v1/projects/{project}/messages:send`.
    pub url: String,
    pub auth: FcmAuth,
    pub timeout: Duration,
}

/// The v1 request body for one message to one token.
pub fn request_body(message: &Message, token: &str) -> Value {
    let mut android = serde_json::Map::new();
    android.insert(
        "priority".into(),
        json!(if message.priority == Priority::High {
            "HIGH"
        } else {
            "NORMAL"
        }),
    );
    if let Some(ttl) = message.ttl_seconds {
        android.insert("ttl".into(), json!(format!("{ttl}s")));
    }
    if let Some(key) = &message.collapse_key {
        android.insert("collapse_key".into(), json!(key));
    }
    if let Some(category) = &message.action_category {
        android.insert("notification".into(), json!({ "click_action": category }));
    }
    let mut apns_headers = serde_json::Map::new();
    apns_headers.insert(
        "apns-priority".into(),
        json!(if message.priority == Priority::High {
            "10"
        } else {
            "5"
        }),
    );
    if let Some(key) = &message.collapse_key {
        apns_headers.insert("apns-collapse-id".into(), json!(key));
    }
    if let Some(ttl) = message.ttl_seconds {
        let expires = crate::util::now_ms() / 1000 + i64::from(ttl);
        apns_headers.insert("apns-expiration".into(), json!(expires.to_string()));
    }
    let mut notification = serde_json::Map::new();
    if let Some(title) = &message.title {
        notification.insert("title".into(), json!(title));
    }
    notification.insert("body".into(), json!(message.body));
    let mut data = serde_json::Map::new();
    for (k, v) in &message.data {
        data.insert(k.to_string(), json!(v));
    }
    data.insert("rule".into(), json!(message.rule_id));
    data.insert("idempotency_key".into(), json!(message.idempotency_key));
    let mut apns = json!({ "headers": apns_headers });
    if let Some(category) = &message.action_category {
        apns["payload"] = json!({ "aps": { "category": category } });
    }
    json!({
        "message": {
            "token": token,
            "notification": notification,
            "data": data,
            "android": android,
            "apns": apns,
        }
    })
}

impl Provider for Fcm {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fcm
    }

    fn send<'a>(&'a self, message: &'a Message, to: &'a Address) -> SendFuture<'a> {
        Box::pin(async move {
            let Address::Push(token) = to else {
                return Err(SendError::Rejected {
                    status: 0,
                    detail: "fcm needs a push token".into(),
                });
            };
            let request = request_body(message, &token.token);
            let bytes = payload_bytes(&request);
            if bytes > MAX_PAYLOAD_BYTES {
                return Err(SendError::TooLarge {
                    bytes,
                    limit: MAX_PAYLOAD_BYTES,
                });
            }
            let bearer = self.auth.bearer().await?;
            let response = self
                .http
                .post(&self.url)
                .bearer_auth(bearer.expose_secret())
                .timeout(self.timeout)
                .json(&request)
                .send()
                .await
                .map_err(transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status == reqwest::StatusCode::UNAUTHORIZED && self.auth.refused().await {
                // A minted token refused (revoked, or the clock was off):
                // the retry mints a new one.
                return Err(SendError::Retryable {
                    status: Some(401),
                    retry_after: None,
                    detail: "fcm 401: access token refused; minting a new one".into(),
                });
            }
            answer(status, &headers, &body)
        })
    }
}

/// What an FCM answer means: the message id, or why it failed and whether to
/// retry (and when).
fn answer(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
) -> Result<Delivered, SendError> {
    if status.is_success() {
        return Ok(Delivered {
            delivery: None,
            provider_message_id: body.get("name").and_then(Value::as_str).map(str::to_string),
        });
    }
    let code = fcm_error_code(body);
    // The token no longer belongs to an app of this project: never again.
    if matches!(code, Some("UNREGISTERED" | "SENDER_ID_MISMATCH")) {
        return Err(SendError::Unregistered);
    }
    if code == Some("QUOTA_EXCEEDED") {
        // FCM asks for at least 60 s before retrying an exceeded quota.
        let asked = retry_after(headers).unwrap_or_default();
        return Err(SendError::Retryable {
            status: Some(status.as_u16()),
            retry_after: Some(asked.max(QUOTA_BACKOFF)),
            detail: format!("fcm {}: QUOTA_EXCEEDED", status.as_u16()),
        });
    }
    let detail = body
        .pointer("/error/status")
        .and_then(Value::as_str)
        .unwrap_or("error")
        .to_string();
    Err(classify(
        status,
        headers,
        format!("fcm {}: {detail}", status.as_u16()),
    ))
}

/// FCM's limit on a message's payload (notification and data), in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// The bytes FCM counts against [`MAX_PAYLOAD_BYTES`]: the notification and
/// the data, as sent.
fn payload_bytes(request: &Value) -> usize {
    let message = &request["message"];
    ["notification", "data"]
        .iter()
        .map(|part| serde_json::to_vec(&message[*part]).map_or(0, |v| v.len()))
        .sum()
}

/// FCM's documented minimum wait after `QUOTA_EXCEEDED`.
const QUOTA_BACKOFF: Duration = Duration::from_secs(60);

/// The `errorCode` of an FCM v1 error (`UNREGISTERED`, `QUOTA_EXCEEDED`, …).
fn fcm_error_code(body: &Value) -> Option<&str> {
    body.pointer("/error/details")?
        .as_array()?
        .iter()
        .find_map(|d| d.get("errorCode").and_then(Value::as_str))
}

#[cfg(test)]
mod answer_tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
    use reqwest::StatusCode;
    use serde_json::json;

    fn error(status: u16, code: &str) -> Value {
        json!({"error": {"code": status, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
        ]}})
    }

    #[test]
    fn quota_exceeded_waits_at_least_sixty_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
        let got = answer(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            &error(429, "QUOTA_EXCEEDED"),
        );
        match got {
            Err(SendError::Retryable { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(60)))
            }
            other => panic!("{other:?}"),
        }
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        let got = answer(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            &error(429, "QUOTA_EXCEEDED"),
        );
        assert!(
            matches!(got, Err(SendError::Retryable { retry_after: Some(d), .. }) if d == Duration::from_secs(120)),
            "a longer Retry-After wins"
        );
    }

    #[test]
    fn unregistered_marks_the_token_and_other_4xx_are_final() {
        let none = HeaderMap::new();
        assert!(matches!(
            answer(StatusCode::NOT_FOUND, &none, &error(404, "UNREGISTERED")),
            Err(SendError::Unregistered)
        ));
        assert!(matches!(
            answer(
                StatusCode::FORBIDDEN,
                &none,
                &error(403, "SENDER_ID_MISMATCH")
            ),
            Err(SendError::Unregistered)
        ));
        assert!(matches!(
            answer(
                StatusCode::BAD_REQUEST,
                &none,
                &error(400, "INVALID_ARGUMENT")
            ),
            Err(SendError::Rejected { status: 400, .. })
        ));
        assert!(matches!(
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &none,
                &error(503, "UNAVAILABLE")
            ),
            Err(SendError::Retryable {
                status: Some(503),
                ..
            })
        ));
    }
}

//! Push through Firebase Cloud Messaging, HTTP v1 API (`projects.messages.send`).

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;

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
    /// `{base}/v1/projects/{project}/messages:send`, parsed once.
    pub url: reqwest::Url,
    pub auth: FcmAuth,
    pub timeout: Duration,
}

/// The v1 request body for one message to one token, borrowed from the
/// message and serialized once (`{"message": {token, notification, data,
/// android, apns}}`).
#[derive(Serialize)]
pub struct Request<'a> {
    message: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    token: &'a str,
    notification: Notification<'a>,
    data: Data<'a>,
    android: Android<'a>,
    apns: Apns<'a>,
}

#[derive(Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: &'a str,
}

/// The app's data: the message's own, then its rule and idempotency key
/// (which win over data of the same name).
struct Data<'a>(&'a Message);

impl Serialize for Data<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let m = self.0;
        let mut map = serializer.serialize_map(None)?;
        for (k, v) in m.data.entries() {
            map.serialize_entry(k, &v)?;
        }
        map.serialize_entry("rule", &*m.rule_id)?;
        map.serialize_entry("idempotency_key", &*m.idempotency_key)?;
        map.end()
    }
}

#[derive(Serialize)]
struct Android<'a> {
    priority: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<ClickAction<'a>>,
}

#[derive(Serialize)]
struct ClickAction<'a> {
    click_action: &'a str,
}

#[derive(Serialize)]
struct Apns<'a> {
    headers: ApnsHeaders<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<ApnsPayload<'a>>,
}

#[derive(Serialize)]
struct ApnsHeaders<'a> {
    #[serde(rename = "apns-priority")]
    priority: &'static str,
    #[serde(rename = "apns-collapse-id", skip_serializing_if = "Option::is_none")]
    collapse_id: Option<&'a str>,
    #[serde(rename = "apns-expiration", skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
}

#[derive(Serialize)]
struct ApnsPayload<'a> {
    aps: Aps<'a>,
}

#[derive(Serialize)]
struct Aps<'a> {
    category: &'a str,
}

/// The request for `message` to `token`.
pub fn request_body<'a>(message: &'a Message, token: &'a str) -> Request<'a> {
    let high = message.priority == Priority::High;
    let collapse_key = message.collapse_key.as_deref();
    let category = message.action_category.as_deref();
    Request {
        message: Body {
            token,
            notification: Notification {
                title: message.title.as_deref(),
                body: &message.body,
            },
            data: Data(message),
            android: Android {
                priority: if high { "HIGH" } else { "NORMAL" },
                ttl: message.ttl_seconds.map(|ttl| format!("{ttl}s")),
                collapse_key,
                notification: category.map(|c| ClickAction { click_action: c }),
            },
            apns: Apns {
                headers: ApnsHeaders {
                    priority: if high { "10" } else { "5" },
                    collapse_id: collapse_key,
                    expiration: message
                        .ttl_seconds
                        .map(|ttl| (crate::util::now_ms() / 1000 + i64::from(ttl)).to_string()),
                },
                payload: category.map(|category| ApnsPayload {
                    aps: Aps { category },
                }),
            },
        },
    }
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
            let body = serde_json::to_vec(&request).map_err(|e| SendError::Rejected {
                status: 0,
                detail: format!("fcm request not encoded: {e}"),
            })?;
            let bearer = self.auth.bearer().await?;
            let response = self
                .http
                .post(self.url.clone())
                .bearer_auth(bearer.expose_secret())
                .timeout(self.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
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
/// the data, as sent (counted, not copied).
fn payload_bytes(request: &Request<'_>) -> usize {
    let mut counted = Counted(0);
    let message = &request.message;
    let _ = serde_json::to_writer(&mut counted, &message.notification);
    let _ = serde_json::to_writer(&mut counted, &message.data);
    counted.0
}

/// A writer that only counts what it is given.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
mod request_tests {
    use super::*;
    use serde_json::json;

    fn message() -> Message {
        Message {
            rule_id: "purchase".into(),
            category: "transactional".into(),
            priority: Priority::High,
            title: Some("Card used".into()),
            body: "€12.50 at Café \"Zoë\"".into(),
            collapse_key: Some("purchase".into()),
            ttl_seconds: Some(600),
            action_category: Some("FRAUD".into()),
            idempotency_key: "tx/0/7/purchase/push".into(),
            data: crate::deliver::MessageData {
                event_ms: Some(1_795_514_400_000),
                key: Some("card-9".into()),
                actions: Some("confirm,deny".into()),
            },
            user: "u-1".into(),
        }
    }

    #[test]
    fn the_request_is_fcm_v1s_shape_with_every_option() {
        let m = message();
        let sent: Value = serde_json::to_value(request_body(&m, "tok-1")).unwrap();
        let expires = sent["message"]["apns"]["headers"]["apns-expiration"].clone();
        let expires: i64 = expires.as_str().unwrap().parse().unwrap();
        assert!((expires - crate::util::now_ms() / 1000 - 600).abs() <= 2);
        assert_eq!(
            sent,
            json!({"message": {
                "token": "tok-1",
                "notification": {"title": "Card used", "body": "€12.50 at Café \"Zoë\""},
                "data": {"actions": "confirm,deny", "event_ms": "1795514400000", "key": "card-9",
                         "rule": "purchase", "idempotency_key": "tx/0/7/purchase/push"},
                "android": {"priority": "HIGH", "ttl": "600s", "collapse_key": "purchase",
                            "notification": {"click_action": "FRAUD"}},
                "apns": {"headers": {"apns-priority": "10", "apns-collapse-id": "purchase",
                                     "apns-expiration": expires.to_string()},
                         "payload": {"aps": {"category": "FRAUD"}}},
            }})
        );
        let counted = payload_bytes(&request_body(&m, "tok-1"));
        let notification = serde_json::to_vec(&sent["message"]["notification"]).unwrap();
        assert_eq!(
            counted,
            notification.len()
                + r#"{"actions":"confirm,deny","event_ms":"1795514400000","key":"card-9","rule":"purchase","idempotency_key":"tx/0/7/purchase/push"}"#
                    .len(),
            "the notification and the data, as sent"
        );
    }

    #[test]
    fn a_plain_message_carries_only_what_it_has() {
        let m = Message {
            priority: Priority::Normal,
            title: None,
            collapse_key: None,
            ttl_seconds: None,
            action_category: None,
            data: Default::default(),
            ..message()
        };
        let sent: Value = serde_json::to_value(request_body(&m, "tok-1")).unwrap();
        assert_eq!(
            sent["message"],
            json!({
                "token": "tok-1",
                "notification": {"body": "€12.50 at Café \"Zoë\""},
                "data": {"rule": "purchase", "idempotency_key": "tx/0/7/purchase/push"},
                "android": {"priority": "NORMAL"},
                "apns": {"headers": {"apns-priority": "5"}},
            })
        );
    }
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

//! A local stand-in for FCM HTTP v1 and Twilio Messages: checks auth and request
//! shape, records every request, and answers from a scripted plan.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use super::{FCM_TOKEN, TWILIO_SID, TWILIO_TOKEN, WEBHOOK_SECRET};

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `fcm` or `twilio`.
    pub api: &'static str,
    /// The path's project id (FCM) or account SID (Twilio).
    pub account: String,
    pub auth_ok: bool,
    /// FCM: the JSON body.
    pub json: Value,
    /// Twilio: the form fields.
    pub form: BTreeMap<String, String>,
    pub content_type: String,
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    /// Statuses to answer, in order; 200/201 once empty.
    plan: Mutex<VecDeque<u16>>,
    delay: Mutex<Duration>,
}

/// A running stand-in.
#[derive(Clone)]
pub struct Provider {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Provider {
    /// Starts the stand-in on a free loopback port.
    pub async fn start() -> Provider {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/projects/{project}/messages:send", post(fcm))
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
            .route("/hook", post(webhook))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Provider { addr, inner }
    }

    /// The base URL to configure channels with.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next requests with these statuses, then succeeds. For
    /// Twilio, a value of 20000 or more is a Twilio error code, sent with 400.
    pub fn plan(&self, statuses: &[u16]) {
        self.inner
            .plan
            .lock()
            .unwrap()
            .extend(statuses.iter().copied());
    }

    /// Waits this long before answering each request.
    pub fn delay(&self, d: Duration) {
        *self.inner.delay.lock().unwrap() = d;
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// Requests to one API.
    pub fn received_by(&self, api: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.api == api)
            .collect()
    }
}

fn next_status(inner: &Inner, ok: u16) -> u16 {
    inner.plan.lock().unwrap().pop_front().unwrap_or(ok)
}

async fn pause(inner: &Inner) {
    let d = *inner.delay.lock().unwrap();
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn fcm(
    State(inner): State<Arc<Inner>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth_ok = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {FCM_TOKEN}"));
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = {
        let mut r = inner.received.lock().unwrap();
        r.push(Received {
            api: "fcm",
            account: project.clone(),
            auth_ok,
            json: json.clone(),
            form: BTreeMap::new(),
            content_type: content_type(&headers),
        });
        r.len()
    };
    pause(&inner).await;
    if !auth_ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}})),
        )
            .into_response();
    }
    if json
        .pointer("/message/token")
        .and_then(Value::as_str)
        .is_none()
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}})),
        )
            .into_response();
    }
    match next_status(&inner, 200) {
        200 => Json(json!({"name": format!("projects/{project}/messages/0:{n}")})).into_response(),
        404 => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}})),
        )
            .into_response(),
        s => {
            let status = StatusCode::from_u16(s).unwrap();
            let mut resp = (status, Json(json!({"error": {"code": s, "status": "UNAVAILABLE"}}))).into_response();
            if s == 429 || s == 503 {
                resp.headers_mut().insert("retry-after", "0".parse().unwrap());
            }
            resp
        }
    }
}

async fn twilio(
    State(inner): State<Arc<Inner>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_SID}:{TWILIO_TOKEN}"))
    );
    let auth_ok = sid == TWILIO_SID
        && headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
    let form: BTreeMap<String, String> = url_decode_form(&body);
    let n = {
        let mut r = inner.received.lock().unwrap();
        r.push(Received {
            api: "twilio",
            account: sid.clone(),
            auth_ok,
            json: Value::Null,
            form: form.clone(),
            content_type: content_type(&headers),
        });
        r.len()
    };
    pause(&inner).await;
    if !auth_ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": 20003, "message": "Authenticate", "status": 401})),
        )
            .into_response();
    }
    match next_status(&inner, 201) {
        201 => (
            StatusCode::CREATED,
            Json(json!({"sid": format!("SM{n:032}"), "status": "queued", "to": form.get("To"), "body": form.get("Body")})),
        )
            .into_response(),
        // A Twilio error code planned as the status: a 400 carrying it.
        code if code >= 20000 => (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": code, "message": "error", "status": 400})),
        )
            .into_response(),
        s => (
            StatusCode::from_u16(s).unwrap(),
            Json(json!({"code": 21211, "message": "error", "status": s})),
        )
            .into_response(),
    }
}

/// Checks `X-Herald-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
async fn webhook(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    use hmac::{Hmac, Mac};
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let timestamp = header("x-herald-timestamp");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    let auth_ok = header("x-herald-signature") == expected && !header("idempotency-key").is_empty();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner.received.lock().unwrap().push(Received {
        api: "webhook",
        account: String::new(),
        auth_ok,
        json,
        form: BTreeMap::new(),
        content_type: content_type(&headers),
    });
    if !auth_ok {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"id": "hook-1"})).into_response()
}

fn url_decode_form(body: &[u8]) -> BTreeMap<String, String> {
    herald::feedback::twilio::form_pairs(body)
        .into_iter()
        .collect()
}

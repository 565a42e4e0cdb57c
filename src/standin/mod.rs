//! A local stand-in for the push and SMS providers (FCM HTTP v1, Twilio Messages)
//! for the demo, the load bench and docker-compose: it checks auth and request
//! shape like the real APIs, answers like them, and records when each request
//! arrived, so latency can be measured at the provider's door. The fault
//! suite also makes it fail on demand (a share of requests answered 503, or
//! all of them: the provider down) and keeps every request it saw. The
//! integration tests use it too ([`script`]: requests kept as they came,
//! scripted answers, a delay, a signed webhook endpoint): one stand-in.

mod script;

pub use script::Request;
use script::{content_type, Script};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::util::{mask_phone, mask_token, now_ms};

/// Credentials the stand-in accepts.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub fcm_token: String,
    pub twilio_sid: String,
    pub twilio_token: String,
}

/// One request as the stand-in saw it; the recipient is masked.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// `fcm` or `twilio`.
    pub api: &'static str,
    /// When it arrived, epoch ms.
    pub at_ms: i64,
    /// The triggering event's time, when the request carries it (FCM `data.event_ms`).
    pub event_ms: Option<i64>,
    /// The rule that sent it (FCM `data.rule`).
    pub rule: Option<String>,
    /// The message's idempotency key (FCM `data.idempotency_key`): the same
    /// key twice is a message sent twice.
    pub key: Option<String>,
    pub recipient: String,
    pub title: Option<String>,
    pub text: String,
    /// The HTTP status the stand-in answered (200/201, or 503 when failing).
    pub status: u16,
}

struct Inner {
    credentials: Credentials,
    arrivals: broadcast::Sender<Arrival>,
    count: Mutex<u64>,
    /// Requests answered 503, per thousand (1000: the provider is down).
    fail_per_mille: AtomicU32,
    /// Every request since [`StandIn::record`], when recording.
    recorded: Mutex<Option<Vec<Arrival>>>,
    script: Script,
}

impl Inner {
    /// Whether to fail this request, by the configured share.
    fn fails(&self) -> bool {
        let share = self.fail_per_mille.load(Ordering::Relaxed);
        share > 0 && rand::random_range(0..1000) < share
    }

    fn arrived(&self, arrival: Arrival) {
        if let Some(all) = self
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            all.push(arrival.clone());
        }
        let _ = self.arrivals.send(arrival);
    }
}

/// A running stand-in.
pub struct StandIn {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl StandIn {
    /// Serves on `listen` (port 0 for any) until the process ends.
    pub async fn start(listen: SocketAddr, credentials: Credentials) -> std::io::Result<StandIn> {
        let (arrivals, _) = broadcast::channel(65_536);
        let inner = Arc::new(Inner {
            credentials,
            arrivals,
            count: Mutex::new(0),
            fail_per_mille: AtomicU32::new(0),
            recorded: Mutex::new(None),
            script: Script::default(),
        });
        let app = Router::new()
            .route("/v1/projects/{project}/messages:send", post(fcm))
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
            .route("/hook", post(webhook))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(StandIn { addr, inner })
    }

    /// Every request from now on.
    pub fn arrivals(&self) -> broadcast::Receiver<Arrival> {
        self.inner.arrivals.subscribe()
    }

    /// Answers this share of requests (per thousand) with 503, as a failing
    /// provider would; 1000 is a provider that is down, 0 a healthy one.
    pub fn fail_per_mille(&self, share: u32) {
        self.inner
            .fail_per_mille
            .store(share.min(1000), Ordering::Relaxed);
    }

    /// Keeps every request from now on, for [`StandIn::recorded`].
    pub fn record(&self) {
        *self
            .inner
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// Every request kept since [`StandIn::record`], in arrival order.
    pub fn recorded(&self) -> Vec<Arrival> {
        self.inner
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Base URL for channel configs.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Keeps every request from now on as it came, for [`StandIn::requests`].
    pub fn keep_requests(&self) {
        *self
            .inner
            .script
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// Every request kept since [`StandIn::keep_requests`], in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner
            .script
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Answers the next requests with these statuses, then normally. FCM
    /// 404 is `UNREGISTERED`, 429 and 503 come with `Retry-After: 0`; for
    /// Twilio a value of 20000 or more is a Twilio error code, sent with 400.
    pub fn plan(&self, statuses: &[u16]) {
        self.inner
            .script
            .plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(statuses.iter().copied());
    }

    /// Waits this long before answering each request.
    pub fn delay(&self, d: std::time::Duration) {
        *self
            .inner
            .script
            .delay
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// Accepts webhook calls (`POST /hook`) signed with this secret.
    pub fn accept_webhooks(&self, secret: &str) {
        *self
            .inner
            .script
            .webhook_secret
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(secret.to_string());
    }
}

fn next_id(inner: &Inner) -> u64 {
    let mut n = inner.count.lock().unwrap_or_else(|p| p.into_inner());
    *n += 1;
    *n
}

async fn fcm(
    State(inner): State<Arc<Inner>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at_ms = now_ms();
    let bearer = format!("Bearer {}", inner.credentials.fcm_token);
    let auth_ok =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(bearer.as_str());
    let parsed = serde_json::from_slice::<Value>(&body);
    inner.script.keep(|| Request {
        api: "fcm",
        account: project.clone(),
        auth_ok,
        json: parsed.as_ref().cloned().unwrap_or(Value::Null),
        form: Default::default(),
        content_type: content_type(&headers),
    });
    inner.script.pause().await;
    if !auth_ok {
        return fcm_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", None);
    }
    let Ok(request) = parsed else {
        return fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", None);
    };
    let message = &request["message"];
    let Some(token) = message["token"].as_str() else {
        return fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", None);
    };
    if token.starts_with("dead:") {
        return fcm_error(StatusCode::NOT_FOUND, "NOT_FOUND", Some("UNREGISTERED"));
    }
    if let Some(planned) = inner.script.next() {
        return planned_fcm(planned, &project, next_id(&inner));
    }
    let data = &message["data"];
    let fails = inner.fails();
    inner.arrived(Arrival {
        api: "fcm",
        at_ms,
        event_ms: data["event_ms"].as_str().and_then(|s| s.parse().ok()),
        rule: data["rule"].as_str().map(str::to_string),
        key: data["idempotency_key"].as_str().map(str::to_string),
        recipient: mask_token(token),
        title: message["notification"]["title"]
            .as_str()
            .map(str::to_string),
        text: message["notification"]["body"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        status: if fails { 503 } else { 200 },
    });
    if fails {
        return fcm_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", None);
    }
    let id = next_id(&inner);
    Json(json!({ "name": format!("projects/{project}/messages/0:{at_ms}{id:06}") })).into_response()
}

/// A planned FCM answer.
fn planned_fcm(status: u16, project: &str, id: u64) -> Response {
    match status {
        200 => Json(json!({"name": format!("projects/{project}/messages/0:{id}")})).into_response(),
        404 => fcm_error(StatusCode::NOT_FOUND, "NOT_FOUND", Some("UNREGISTERED")),
        s => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = fcm_error(status, "UNAVAILABLE", None);
            if s == 429 || s == 503 {
                resp.headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from_static("0"));
            }
            resp
        }
    }
}

fn fcm_error(status: StatusCode, name: &str, code: Option<&str>) -> Response {
    let mut error = json!({"code": status.as_u16(), "message": name, "status": name});
    if let Some(code) = code {
        error["details"] = json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]);
    }
    (status, Json(json!({ "error": error }))).into_response()
}

async fn twilio(
    State(inner): State<Arc<Inner>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at_ms = now_ms();
    let c = &inner.credentials;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.twilio_sid, c.twilio_token))
    );
    let auth_ok = sid == c.twilio_sid
        && headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
    let form: Vec<(String, String)> = crate::deliver::twilio::inbound::form_pairs(&body);
    inner.script.keep(|| Request {
        api: "twilio",
        account: sid.clone(),
        auth_ok,
        json: Value::Null,
        form: form.iter().cloned().collect(),
        content_type: content_type(&headers),
    });
    inner.script.pause().await;
    if !auth_ok {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Some(to), Some(text)) = (field("To"), field("Body")) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number and a 'Body' are required.",
        );
    };
    if field("From").is_none() && field("MessagingServiceSid").is_none() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required.",
        );
    }
    match inner.script.next() {
        None | Some(201) => {}
        // A Twilio error code planned as the status: a 400 carrying it.
        Some(code) if code >= 20000 => {
            return twilio_error(StatusCode::BAD_REQUEST, u32::from(code), "error")
        }
        Some(s) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return twilio_error(status, 21211, "error");
        }
    }
    let fails = inner.fails();
    inner.arrived(Arrival {
        api: "twilio",
        at_ms,
        event_ms: None,
        rule: None,
        key: None,
        recipient: mask_phone(&to),
        title: None,
        text: text.clone(),
        status: if fails { 503 } else { 201 },
    });
    if fails {
        return twilio_error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "Service unavailable",
        );
    }
    let id = next_id(&inner);
    (
        StatusCode::CREATED,
        Json(json!({"sid": format!("SM{id:032x}"), "account_sid": sid, "status": "queued", "num_segments": "1"})),
    )
        .into_response()
}

/// `POST /hook`: a signed webhook call (see [`Script::webhook_signed`]).
async fn webhook(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let auth_ok = inner.script.webhook_signed(&headers, &body);
    inner.script.keep(|| Request {
        api: "webhook",
        account: String::new(),
        auth_ok,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        form: Default::default(),
        content_type: content_type(&headers),
    });
    if !auth_ok {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"id": "hook-1"})).into_response()
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_forms() {
        let pairs = crate::deliver::twilio::inbound::form_pairs(
            b"To=%2B14155552671&Body=Hi+there%21&From=%2B1500",
        );
        assert_eq!(pairs[0], ("To".into(), "+14155552671".into()));
        assert_eq!(pairs[1], ("Body".into(), "Hi there!".into()));
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            fcm_token: "t".into(),
            twilio_sid: "AC1".into(),
            twilio_token: "s".into(),
        }
    }

    #[tokio::test]
    async fn checks_auth_and_shape_like_the_real_apis() {
        let standin = StandIn::start(([127, 0, 0, 1], 0).into(), creds())
            .await
            .unwrap();
        let mut arrivals = standin.arrivals();
        let http = reqwest::Client::new();
        let fcm = format!("{}/v1/projects/p/messages:send", standin.base_url());
        let body = json!({"message": {"token": "abc", "notification": {"title": "T", "body": "B"}, "data": {"event_ms": "5", "rule": "r"}}});
        let unauthorised = http
            .post(&fcm)
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(unauthorised.status(), 401);
        let ok = http
            .post(&fcm)
            .bearer_auth("t")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert!(ok.json::<Value>().await.unwrap()["name"]
            .as_str()
            .unwrap()
            .starts_with("projects/p/messages/"));
        let a = arrivals.recv().await.unwrap();
        assert_eq!(
            (a.api, a.event_ms, a.rule.as_deref(), a.text.as_str()),
            ("fcm", Some(5), Some("r"), "B")
        );
        let bad = http
            .post(&fcm)
            .bearer_auth("t")
            .json(&json!({"message": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);

        let twilio = format!(
            "{}/2010-04-01/Accounts/AC1/Messages.json",
            standin.base_url()
        );
        let sent = http
            .post(&twilio)
            .basic_auth("AC1", Some("s"))
            .form(&[
                ("To", "+14155552671"),
                ("From", "+15005550006"),
                ("Body", "hi"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 201);
        assert!(sent.json::<Value>().await.unwrap()["sid"]
            .as_str()
            .unwrap()
            .starts_with("SM"));
        let a = arrivals.recv().await.unwrap();
        assert_eq!(
            (a.api, a.recipient.as_str(), a.text.as_str()),
            ("twilio", "+141******71", "hi")
        );
        let no_from = http
            .post(&twilio)
            .basic_auth("AC1", Some("s"))
            .form(&[("To", "+1"), ("Body", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(no_from.status(), 400);
        let wrong = http
            .post(&twilio)
            .basic_auth("AC1", Some("x"))
            .form(&[("To", "+1")])
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
    }
}

//! APNs direct, on the real broker: one rule with `channels: [push]` sends ios
//! tokens to APNs over HTTP/2 and android tokens to FCM; the local APNs
//! stand-in checks the ES256 provider token with the key's public half and
//! every header as Apple does; Apple's reasons decide the token and the outcome.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

const PUBLIC: &str = include_str!("../fixtures/apns-test-key.pub.pem");
const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "DEF123GHIJ";
const TOPIC: &str = "com.example.bank";

/// What the APNs stand-in saw: per request, the problems found (none when
/// Apple would accept it) and the body.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, Vec<String>, Value)>,
}

async fn device(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    let mut problems = Vec::new();
    if request.version() != Version::HTTP_2 {
        problems.push(format!("HTTP version {:?}", request.version()));
    }
    let headers = request.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let jwt = header("authorization")
        .and_then(|a| {
            a.strip_prefix("bearer ")
                .or(a.strip_prefix("Bearer "))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let key = jsonwebtoken::DecodingKey::from_ec_pem(PUBLIC.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_required_spec_claims::<&str>(&[]);
    validation.validate_exp = false;
    validation.set_issuer(&[TEAM_ID]);
    match jsonwebtoken::decode::<Value>(&jwt, &key, &validation) {
        Ok(t) if t.header.kid.as_deref() == Some(KEY_ID) && t.claims["iat"].is_u64() => {}
        Ok(t) => problems.push(format!(
            "provider token header {:?} claims {}",
            t.header, t.claims
        )),
        Err(e) => problems.push(format!("provider token: {e}")),
    }
    if header("apns-push-type").as_deref() != Some("alert") {
        problems.push("apns-push-type".into());
    }
    if header("apns-topic").as_deref() != Some(TOPIC) {
        problems.push("apns-topic".into());
    }
    if !matches!(header("apns-priority").as_deref(), Some("10" | "5")) {
        problems.push("apns-priority".into());
    }
    if header("apns-expiration")
        .and_then(|e| e.parse::<u64>().ok())
        .is_none()
    {
        problems.push("apns-expiration".into());
    }
    let id = header("apns-id").unwrap_or_default();
    let uuid = id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4;
    if !uuid {
        problems.push(format!("apns-id {id}"));
    }
    if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        problems.push("apns-collapse-id over 64 bytes".into());
    }
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if body["aps"]["alert"]["body"].as_str().is_none() {
        problems.push("aps.alert.body".into());
    }
    let ok = problems.is_empty();
    let earlier = {
        let mut seen = seen.lock().unwrap();
        let earlier = seen.requests.iter().filter(|(t, _, _)| *t == token).count();
        seen.requests.push((token.clone(), problems, body));
        earlier
    };
    if token.starts_with("expire-once") && earlier == 0 {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"reason": "ExpiredProviderToken"})),
        )
            .into_response();
    }
    if !ok {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"reason": "InvalidProviderToken"})),
        )
            .into_response();
    }
    if token.starts_with("dead") {
        return (
            StatusCode::GONE,
            Json(json!({"reason": "Unregistered", "timestamp": 0})),
        )
            .into_response();
    }
    if token.starts_with("odd") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"reason": "PayloadEmpty"})),
        )
            .into_response();
    }
    ([("apns-id", id)], StatusCode::OK).into_response()
}

/// An h2c server speaking APNs' device endpoint.
async fn apns() -> (Arc<Mutex<Seen>>, String) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/3/device/{token}", post(device))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, base)
}

fn ios_profile(user: &str, token: &str) -> Vec<u8> {
    let mut p = profile_json(user, true, false);
    p["push_tokens"] = json!([{"token": token, "platform": "ios"}]);
    p.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_rule_reaches_ios_through_apns_and_android_through_fcm() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let (seen, base) = apns().await;
    let p = producer();
    publish(
        &p,
        &topics.profiles,
        "u-ios",
        &ios_profile("u-ios", "a1b2c3"),
    )
    .await;
    publish(
        &p,
        &topics.profiles,
        "u-android",
        &profile("u-android", true, false),
    )
    .await;
    publish(
        &p,
        &topics.profiles,
        "u-gone",
        &ios_profile("u-gone", "dead-token"),
    )
    .await;
    publish(
        &p,
        &topics.profiles,
        "u-odd",
        &ios_profile("u-odd", "odd-token"),
    )
    .await;
    publish(
        &p,
        &topics.profiles,
        "u-exp",
        &ios_profile("u-exp", "expire-once"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        every_swipe_rule(
            &topics.transactions,
            "collapse_key: purchase-notice-for-this-card-with-a-name-longer-than-sixty-four-bytes",
        ),
    )
    .unwrap();
    let key =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apns-test-key.p8");
    let extra = format!(
        "[channels.ios]\nprovider = \"apns\"\nbase_url = \"{base}\"\nkey_file = \"{}\"\nkey_id = \"{KEY_ID}\"\nteam_id = \"{TEAM_ID}\"\ntopic = \"{TOPIC}\"\n",
        key.display()
    );
    let text = config_text(&topics, dir.path(), &provider.base_url(), &extra);
    let (_, config) = load_config(dir.path(), &text);
    let running = herald::start(config).await.expect("herald starts");
    wait_ready(running.admin_addr()).await;
    for user in ["u-ios", "u-android", "u-gone", "u-odd", "u-exp"] {
        publish(
            &p,
            &topics.transactions,
            user,
            &swipe(user, 3.0, "approved", "US"),
        )
        .await;
    }
    let outcomes = read_json(&topics.outcomes, 5, Duration::from_secs(20), |_| true);
    let of = |user: &str| outcomes.iter().find(|o| o["user"] == user).unwrap().clone();
    assert_eq!(of("u-ios")["status"], "sent");
    assert_eq!(
        of("u-ios")["provider_message_id"].as_str().unwrap().len(),
        36,
        "Apple's apns-id"
    );
    assert_eq!(of("u-android")["status"], "sent");
    assert_eq!(
        of("u-gone")["reason"],
        "token_unregistered",
        "410 Unregistered marks the token dead"
    );
    assert_eq!(
        of("u-odd")["reason"],
        "provider_rejected:400:PayloadEmpty",
        "Apple's reason in the outcome"
    );
    assert_eq!(
        provider.received_by("fcm").len(),
        1,
        "only the android token went to FCM"
    );
    let requests = std::mem::take(&mut seen.lock().unwrap().requests);
    assert_eq!(
        (
            of("u-exp")["status"].as_str(),
            of("u-exp")["attempts"].as_u64()
        ),
        (Some("sent"), Some(2)),
        "ExpiredProviderToken: signed anew and sent"
    );
    assert_eq!(requests.len(), 5, "the ios tokens went to APNs (one twice)");
    for (token, problems, body) in &requests {
        assert!(problems.is_empty(), "{token}: {problems:?}");
        assert_eq!(body["aps"]["alert"]["body"], "3.0");
        assert_eq!(body["aps"]["sound"], "default");
        assert_eq!(body["rule"], "every-swipe");
    }
    running.stop().await;
}

//! FCM with a service account, on the real broker: herald signs a JWT with the
//! key, exchanges it at the key's `token_uri` (a local endpoint that verifies
//! the RS256 signature with the key's public half, as Google's does), sends
//! with the token, and mints a new one before it expires. A refused key fails
//! the message with `auth_failed`, recorded, and the stream goes on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::{json, Value};

const KEY: &str = include_str!("../fixtures/fcm-test-service-account.json");
const PUBLIC: &str = include_str!("../fixtures/fcm-test-service-account.pub.pem");

/// The token endpoint's state: whether it grants, and the claims it verified.
#[derive(Default)]
struct Endpoint {
    refuse: bool,
    /// `expires_in` of the tokens granted (0: 2 s, so tests see a refresh).
    lifetime: u64,
    uri: String,
    granted: Vec<Value>,
    refused: Vec<String>,
}

async fn token(
    State(endpoint): State<Arc<Mutex<Endpoint>>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let mut e = endpoint.lock().unwrap();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[e.uri.clone()]);
    validation.set_issuer(&["herald-test@herald-test.iam.gserviceaccount.com"]);
    let verified = jsonwebtoken::decode::<Value>(&assertion, &key, &validation);
    match verified {
        Ok(data) if !e.refuse => {
            let mut claims = data.claims;
            claims["kid"] = json!(data.header.kid);
            e.granted.push(claims);
            // Short-lived, so the test sees a refresh.
            let lifetime = if e.lifetime == 0 { 2 } else { e.lifetime };
            Json(json!({"access_token": FCM_TOKEN, "expires_in": lifetime, "token_type": "Bearer"}))
                .into_response()
        }
        Ok(_) => {
            e.refused.push("invalid_grant".into());
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})),
            )
                .into_response()
        }
        Err(err) => {
            e.refused.push(err.to_string());
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            )
                .into_response()
        }
    }
}

/// Starts the token endpoint; writes a key file pointing at it into `dir`.
async fn endpoint(
    dir: &std::path::Path,
    refuse: bool,
) -> (Arc<Mutex<Endpoint>>, std::path::PathBuf) {
    let state = Arc::new(Mutex::new(Endpoint {
        refuse,
        ..Endpoint::default()
    }));
    let app = Router::new()
        .route("/token", post(token))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    state.lock().unwrap().uri = uri.clone();
    let path = dir.join("fcm-key.json");
    std::fs::write(&path, KEY.replace("TOKEN_URI", &uri)).unwrap();
    (state, path)
}

async fn start(
    topics: &Topics,
    provider: &Provider,
    dir: &tempfile::TempDir,
    key: &std::path::Path,
) -> herald::Running {
    std::fs::write(
        dir.path().join("rules.yaml"),
        every_swipe_rule(&topics.transactions, ""),
    )
    .unwrap();
    let text = config_text(topics, dir.path(), &provider.base_url(), "").replace(
        "token_env = \"HERALD_TEST_FCM_TOKEN\"",
        &format!("service_account_file = \"{}\"", key.display()),
    );
    let (_, config) = load_config(dir.path(), &text);
    herald::start(config).await.expect("herald starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_mints_verified_tokens_and_refreshes_them_before_expiry() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, key) = endpoint(dir.path(), false).await;
    publish_profile(&topics, "u-1", true, false).await;
    let running = start(&topics, &provider, &dir, &key).await;
    wait_ready(running.admin_addr()).await;
    let p = producer();
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 1.0, "approved", "US"),
    )
    .await;
    read_json(&topics.outcomes, 1, Duration::from_secs(20), |_| true);
    // The token lives 2 s and is replaced half-way: the next send mints anew.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 2.0, "approved", "US"),
    )
    .await;
    let outcomes = read_json(&topics.outcomes, 2, Duration::from_secs(20), |_| true);
    assert!(
        outcomes.iter().all(|o| o["status"] == "sent"),
        "{outcomes:?}"
    );
    assert!(
        provider.received_by("fcm").iter().all(|r| r.auth_ok),
        "FCM got the minted token as the bearer"
    );
    {
        let e = state.lock().unwrap();
        assert_eq!(e.refused, Vec::<String>::new());
        assert_eq!(
            e.granted.len(),
            2,
            "one token per lifetime: {:?}",
            e.granted
        );
        let claims = &e.granted[0];
        assert_eq!(
            claims["scope"],
            "https://www.googleapis.com/auth/firebase.messaging"
        );
        assert_eq!(claims["kid"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600,
            "an assertion valid for one hour, as Google allows at most"
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_fails_the_message_with_auth_failed_and_the_stream_goes_on() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, key) = endpoint(dir.path(), true).await;
    publish_profile(&topics, "u-1", true, false).await;
    let running = start(&topics, &provider, &dir, &key).await;
    wait_ready(running.admin_addr()).await;
    publish(
        &producer(),
        &topics.transactions,
        "card",
        &swipe("u-1", 1.0, "approved", "US"),
    )
    .await;
    let outcome = read_json(&topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(outcome[0]["status"], "failed");
    assert_eq!(outcome[0]["reason"], "auth_failed");
    let dead = read_json(&topics.dlq, 1, Duration::from_secs(10), |_| true);
    assert_eq!(dead[0]["reason"], "send_failed:auth_failed");
    assert!(
        dead[0]["detail"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "the endpoint's answer is in the record: {}",
        dead[0]["detail"]
    );
    assert!(
        provider.received_by("fcm").is_empty(),
        "nothing sent without a token"
    );
    assert_eq!(state.lock().unwrap().refused.len(), 1);

    // The key is fixed (here: the endpoint grants again); the next event goes out.
    state.lock().unwrap().refuse = false;
    publish(
        &producer(),
        &topics.transactions,
        "card",
        &swipe("u-1", 2.0, "approved", "US"),
    )
    .await;
    let both = read_json(&topics.outcomes, 2, Duration::from_secs(20), |_| true);
    assert_eq!(both[1]["status"], "sent");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_fcm_refuses_is_replaced_and_the_message_still_goes_out() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, key) = endpoint(dir.path(), false).await;
    state.lock().unwrap().lifetime = 3600;
    publish_profile(&topics, "u-1", true, false).await;
    let running = start(&topics, &provider, &dir, &key).await;
    wait_ready(running.admin_addr()).await;
    let p = producer();
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 1.0, "approved", "US"),
    )
    .await;
    read_json(&topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(
        state.lock().unwrap().granted.len(),
        1,
        "an hour-long token is reused"
    );
    // FCM refuses the token (revoked, or the clocks disagree).
    provider.plan(&[401]);
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 2.0, "approved", "US"),
    )
    .await;
    let both = read_json(&topics.outcomes, 2, Duration::from_secs(20), |_| true);
    assert_eq!(both[1]["status"], "sent");
    assert_eq!(both[1]["attempts"], 2, "refused once, then sent");
    assert_eq!(
        state.lock().unwrap().granted.len(),
        2,
        "the refused token was dropped and a new one minted"
    );
    running.stop().await;
}

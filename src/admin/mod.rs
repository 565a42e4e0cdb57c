//! admin: the operator's HTTP endpoints — `/metrics`, `/livez` (and `/healthz`), `/readyz`, `GET /rules` — and the preference API under `/api/v1`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;

pub mod preferences;
pub mod twilio;

use crate::metrics::Metrics;

use crate::ingest::ConsumerHealth;
use crate::profile::ProfileTable;
use crate::rules::LiveRules;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub rules: Arc<LiveRules>,
    pub profiles: Arc<ProfileTable>,
    /// The state store on local disk (none in the offline tools).
    pub store: Option<crate::store::Store>,
    pub feedback: Arc<crate::feedback::FeedbackState>,
    /// The instance's config (channels, sources, policy) for evaluations.
    pub config: Arc<crate::config::Config>,
    pub consumer: Arc<ConsumerHealth>,
    /// Whether herald's own records (outcomes, dead letters) are being written.
    pub writes: Arc<crate::outcome::WriteHealth>,
    /// Each channel's circuit breaker.
    pub breakers: Vec<(String, Arc<crate::deliver::breaker::Breaker>)>,
    /// Twilio channels with webhooks (inbound SMS, status callbacks).
    pub twilio: Arc<twilio::TwilioHooks>,
    /// The preference API's producer, secrets and rate limits.
    pub api: Arc<preferences::Api>,
}

/// Binds the admin listener (so the port is known before serving).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves what an instance that cannot start yet can say: `/healthz` ok,
/// and `/readyz` (and every other path) 503 with the current `reason`, until
/// the task is aborted.
pub async fn serve_not_ready(listener: TcpListener, reason: Arc<std::sync::Mutex<String>>) {
    let answer = move || {
        let reason = reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
        async move {
            let body = json!({ "ready": false, "not_ready": [reason] });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/livez", get(|| async { "ok\n" }))
        .fallback(answer);
    let _ = axum::serve(listener, app).await;
}

/// Serves the admin endpoints until `shutdown` changes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(page))
        .route("/rules/live", get(live))
        .route("/rules", get(rules))
        .route("/rules/evaluate", post(evaluate))
        .route("/twilio/{channel}/{kind}", post(twilio::receive))
        .route(
            "/api/v1/users/{user}/preferences",
            get(preferences::get)
                .put(preferences::put)
                .delete(preferences::delete)
                .layer(axum::extract::DefaultBodyLimit::max(
                    state.config.admin.api_max_body_bytes,
                )),
        )
        .route("/api/v1/openapi.yaml", get(preferences::openapi))
        .with_state(state);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// 200 when herald can make progress: rules loaded, profiles and feedback
/// caught up, partitions assigned, the broker answering, its records being
/// written, and at least one channel's provider answering. Otherwise 503, with
/// every reason in `not_ready`.
async fn readyz(State(state): State<AdminState>) -> Response {
    let body = readiness(&state);
    let code = if body["ready"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Whether this instance can make progress, and every reason it cannot.
fn readiness(state: &AdminState) -> serde_json::Value {
    let profiles = state.profiles.profiles_caught_up();
    let feedback = state.feedback.is_caught_up();
    let assigned = state.consumer.assigned.load(Ordering::Acquire);
    let broker = state.consumer.broker_ok.load(Ordering::Acquire);
    let paused = state.metrics.fetch_paused.get() > 0;
    let open: Vec<String> = state
        .breakers
        .iter()
        .filter_map(|(name, b)| {
            b.open_for()
                .map(|d| format!("{name} (open {} s)", d.as_secs()))
        })
        .collect();
    let mut not_ready = Vec::new();
    let loading = state.profiles.progress();
    if !profiles {
        let mut reason = format!(
            "profiles are still loading: {} of {} records read",
            loading.read,
            loading.total()
        );
        if let Some(eta) = loading.eta_ms() {
            reason.push_str(&format!(", about {} s left", eta.div_ceil(1000)));
        }
        not_ready.push(reason);
    }
    if let Some(store) = &state.store {
        if let Some(fault) = store.fault() {
            not_ready.push(format!(
                "the state directory {} cannot be written: {fault}",
                store.dir().display()
            ));
        }
    }
    if !feedback {
        not_ready.push("the feedback topic is still being read".to_string());
    }
    if state.profiles.preferences_loading() {
        not_ready.push("the preferences topic is still being read".to_string());
    }
    if !assigned {
        not_ready.push("no source partition assigned".to_string());
    }
    if !broker {
        not_ready.push("the broker does not answer".to_string());
    }
    if let Some(problem) = state.writes.problem() {
        not_ready.push(problem);
    }
    // A channel's circuit opens only when its sends fail: messages wait on
    // it, whatever the other channels do.
    if !open.is_empty() {
        not_ready.push(format!(
            "messages wait on a failing provider; circuits open: {}",
            open.join(", ")
        ));
    }
    if let Some(e) = state.consumer.fatal() {
        not_ready.push(format!("the consumer failed fatally: {e}"));
    }
    if let Some(problem) = state.consumer.restore_problem() {
        not_ready.push(problem);
    }
    if let Some(lost) = state.consumer.lost_for() {
        not_ready.push(format!(
            "the assignment was lost {} s ago (group session timed out); rejoining",
            lost.as_secs()
        ));
    }
    // Not a reason to stop routing to this instance, but for an operator.
    let mut warnings = Vec::new();
    let orphaned = state.metrics.held_orphaned.get();
    if orphaned > 0 {
        warnings.push(format!(
            "{orphaned} held message(s) wait for a rule that is not loaded; kept held, each dead-lettered once as held_rule_removed: restore the rule, or re-publish or drop them"
        ));
    }
    json!({
        "ready": not_ready.is_empty(),
        "not_ready": not_ready,
        "warnings": warnings,
        "rules_loaded": true,
        "profiles_caught_up": profiles,
        "profiles_loading": {
            "read": loading.read,
            "total": loading.total(),
            "eta_ms": loading.eta_ms(),
        },
        "feedback_caught_up": feedback,
        "partitions_assigned": assigned,
        "partitions": state.consumer.owned_partitions(),
        "broker_reachable": broker,
        "writes_failing": state.metrics.writes_failing.get(),
        "circuits_open": open,
        "fetch_paused": paused,
    })
}

async fn rules(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let loaded = state.rules.current();
    let status = state.rules.status();
    let rules: Vec<_> = loaded
        .set
        .rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "description": r.description,
                "file": r.file,
                "version": r.version,
                "status": status_of(r),
                "sources": r.sources,
                "channels": r.channels,
                "fallback": r.fallback,
                "campaign": r.campaign,
                "category": r.category,
                "condition": r.condition.as_ref().map(|c| c.source.as_str()),
                "pattern": r.pattern.as_ref().map(|p| json!({
                    "kind": p.kind_name(),
                    "fingerprint": p.fingerprint,
                    "lateness_ms": p.lateness_ms,
                })),
            })
        })
        .collect();
    let last_error = status
        .last_error
        .as_ref()
        .map(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>());
    Json(json!({
        "dir": state.rules.dir().display().to_string(),
        "generation": loaded.generation,
        "loaded_ms": loaded.loaded_ms,
        "files": loaded.set.files,
        "rules": rules,
        "last_reload_error": last_error,
        "last_reload_error_ms": status.last_error_ms,
    }))
}

/// `POST /rules/evaluate`: one event (and optionally a profile; else the live
/// profile of its user) through the rules on disk, sending nothing and
/// touching no live state. 400 with `{"error": …}` on bad input.
async fn evaluate(
    State(state): State<AdminState>,
    Json(mut request): Json<crate::analyst::evaluate::Request>,
) -> Response {
    if request.profile.is_none() {
        let user = state
            .config
            .sources
            .get(&request.topic)
            .and_then(|m| {
                request
                    .event
                    .as_object()
                    .and_then(|f| crate::ingest::decode::lookup(f, &m.user_field))
            })
            .and_then(|v| v.as_str().map(str::to_string));
        if let Some(profile) = user.and_then(|u| state.profiles.get(&u)) {
            request.profile = serde_json::to_value(&*profile).ok();
        }
    }
    // The evaluation runs on its own thread and runtime, apart from the live
    // pipeline's, and answers within a bound: a slow one is a 503, never a
    // request left hanging.
    let config = Arc::clone(&state.config);
    let dir = state.rules.dir().to_path_buf();
    let work = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(crate::analyst::evaluate::evaluate(&config, &dir, &request)))
    });
    match tokio::time::timeout(EVALUATE_BOUND, work).await {
        Ok(Ok(Ok(answer))) => Json(answer).into_response(),
        Ok(Ok(Err(error))) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(
                bound_s = EVALUATE_BOUND.as_secs(),
                "an evaluation did not finish"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": format!(
                    "the evaluation did not finish within {} s", EVALUATE_BOUND.as_secs()
                ) })),
            )
                .into_response()
        }
    }
}

/// How long `POST /rules/evaluate` may take before it answers 503.
const EVALUATE_BOUND: std::time::Duration = std::time::Duration::from_secs(20);

/// `GET /`: the live rules page (one HTML file, no build step).
async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
        .into_response()
}

/// `GET /rules/live`: each rule with its status and its activity over the
/// last minute and hour; the last reload error in full; and beside them what
/// an operator looks at first: readiness with its reasons, dead letters by
/// reason, consumer lag per partition, messages held.
async fn live(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let loaded = state.rules.current();
    let status = state.rules.status();
    let now = crate::util::now_ms();
    let rules: Vec<_> = loaded
        .set
        .rules
        .iter()
        .map(|r| {
            let activity = state.metrics.activity.summary(&r.id, now);
            json!({
                "id": r.id,
                "file": r.file,
                "status": status_of(r),
                "pattern": r.pattern.as_ref().map(|p| p.kind_name()),
                "minute": activity["minute"],
                "hour": activity["hour"],
            })
        })
        .collect();
    Json(json!({
        "generated_ms": now,
        "dir": state.rules.dir().display().to_string(),
        "generation": loaded.generation,
        "rules": rules,
        "last_reload_error": status
            .last_error
            .as_ref()
            .map(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "last_reload_error_ms": status.last_error_ms,
        "readiness": readiness(&state),
        "dead_letters": Metrics::values_of(&state.metrics.dead_letters)
            .into_iter()
            .map(|(labels, n)| (labels["reason"].clone(), n as u64))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "consumer_lag": consumer_lag(&state),
        "held": state.metrics.held.get(),
    }))
}

/// Lag per owned partition, by topic then partition.
fn consumer_lag(state: &AdminState) -> Vec<serde_json::Value> {
    let mut lags: Vec<(String, i32, i64)> = Metrics::values_of(&state.metrics.consumer_lag)
        .into_iter()
        .map(|(labels, n)| {
            let partition = labels["partition"].parse().unwrap_or(-1);
            (labels["topic"].clone(), partition, n as i64)
        })
        .collect();
    lags.sort();
    lags.into_iter()
        .map(|(topic, partition, lag)| json!({"partition": format!("{topic}[{partition}]"), "lag": lag}))
        .collect()
}

/// A rule's status as the pages show it.
fn status_of(rule: &crate::rules::Rule) -> &'static str {
    match (rule.enabled, rule.shadow) {
        (false, _) => "disabled",
        (true, true) => "shadow",
        (true, false) => "active",
    }
}

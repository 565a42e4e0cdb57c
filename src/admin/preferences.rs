//! The preference API: `GET`, `PUT` and `DELETE /api/v1/users/{user}/preferences`, for a backend (a bearer secret) and for an app acting for one user (a per-user HMAC token), validated against the loaded rules and written to herald's compacted preferences topic, which every instance follows.
//!
//! Authentication, in the `Authorization` header:
//! - `Bearer <secret>`: a backend; the secret is the value of the
//!   environment variable `admin.api_token_env` names. Any user.
//! - `User <hex>`: an app for one user; `<hex>` is HMAC-SHA256 of the user
//!   id under the key in `admin.user_hmac_key_env` (as Novu's subscriber
//!   hash): the app's backend makes it once per user at login. Only that user.
//!
//! Limits: bodies over `admin.api_max_body_bytes` are refused 413; each caller
//! (the backend, or one user) may make `api_requests_per_s` (backend:
//! `api_backend_requests_per_s`) requests a second, else 429 with `Retry-After`.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use hmac::{Hmac, Mac};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::AdminState;
use crate::profile::Preferences;
use crate::rules::subscription::UserSubscription;

/// The OpenAPI document of this API (also `docs/engineers/preferences-api.yaml`).
pub const OPENAPI: &str = include_str!("../../docs/engineers/preferences-api.yaml");

/// What the API needs besides the admin state.
pub struct Api {
    producer: Option<FutureProducer>,
    topic: String,
    backend_token: Option<String>,
    user_key: Option<Vec<u8>>,
    per_user: f64,
    per_backend: f64,
    buckets: crate::util::FastDashMap<String, (f64, Instant)>,
}

/// Who is calling.
#[derive(Debug, PartialEq)]
enum Caller {
    Backend,
    User(String),
}

impl Api {
    /// The API of an instance: its producer, topic, secrets from the environment.
    pub fn from_config(config: &crate::config::Config) -> Api {
        let secret = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let backend_token = secret(&config.admin.api_token_env);
        let user_key = secret(&config.admin.user_hmac_key_env).map(String::into_bytes);
        // Without a secret every call is refused before it could write: no
        // producer (and its threads) for an API nobody may call.
        let producer = (backend_token.is_some() || user_key.is_some())
            .then(|| {
                crate::kafka::producer_config(&config.kafka)
                    .set("message.timeout.ms", "10000")
                    .create()
                    .map_err(
                        |e| tracing::warn!(error = %e, "preference API cannot write: no producer"),
                    )
                    .ok()
            })
            .flatten();
        Api {
            producer,
            topic: config.topics.preferences.clone(),
            backend_token,
            user_key,
            per_user: f64::from(config.admin.api_requests_per_s.max(1)),
            per_backend: f64::from(config.admin.api_backend_requests_per_s.max(1)),
            buckets: Default::default(),
        }
    }

    /// The caller, or the answer refusing them.
    fn caller(&self, headers: &HeaderMap, user: &str) -> Result<Caller, Refusal> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let (Some(token), Some(expected)) = (given.strip_prefix("Bearer "), &self.backend_token)
        {
            if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
                return Ok(Caller::Backend);
            }
        }
        if let (Some(hash), Some(key)) = (given.strip_prefix("User "), &self.user_key) {
            return match hex_decode(hash.trim()) {
                Some(tag) if user_hmac(key).chain_update(user).verify_slice(&tag).is_ok() => {
                    Ok(Caller::User(user.to_string()))
                }
                _ => Err(refuse(
                    StatusCode::FORBIDDEN,
                    "this user token is not for this user",
                    None,
                )),
            };
        }
        Err(refuse(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <backend secret>` or `Authorization: User <HMAC-SHA256 of the user id>`",
            None,
        ))
    }

    /// Takes one request from the caller's bucket; `Err` with the answer when empty.
    fn admit(&self, caller: &Caller) -> Result<(), Refusal> {
        let (key, rate) = match caller {
            Caller::Backend => ("\0backend".to_string(), self.per_backend),
            Caller::User(u) => (u.clone(), self.per_user),
        };
        let now = Instant::now();
        let mut entry = self.buckets.entry(key).or_insert((rate, now));
        let (tokens, at) = *entry;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate);
        if tokens < 1.0 {
            *entry = (tokens, now);
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests; retry in a second",
                None,
            ));
        }
        *entry = (tokens - 1.0, now);
        Ok(())
    }

    /// Writes a user's document (`None`: a tombstone) and waits for the broker.
    async fn write(&self, user: &str, document: Option<Vec<u8>>) -> Result<(), Refusal> {
        let Some(producer) = &self.producer else {
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "no producer", None));
        };
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic).key(user);
        if let Some(bytes) = &document {
            record = record.payload(bytes);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                tracing::warn!(error = %e, "preferences not written");
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the preferences topic cannot be written now; nothing was changed",
                    None,
                )
            })
    }
}

fn user_hmac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
}

/// The `User` token of `user` under `key`: what an app's backend gives the app.
pub fn user_token(key: &[u8], user: &str) -> String {
    let tag = user_hmac(key).chain_update(user).finalize().into_bytes();
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A refused request: its status, and what the body says (and which field).
pub struct Refusal {
    code: StatusCode,
    error: String,
    field: Option<String>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let mut r = (self.code, Json(body)).into_response();
        if self.code == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if self.code == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer, User"),
            );
        }
        r
    }
}

fn refuse(code: StatusCode, error: &str, field: Option<&str>) -> Refusal {
    Refusal {
        code,
        error: error.to_string(),
        field: field.map(str::to_string),
    }
}

/// Checks the path's user id: text a key can be, bounded.
fn user_id(user: &str) -> Result<(), Refusal> {
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the user id must be 1 to 256 characters, no control characters",
            Some("user"),
        ));
    }
    Ok(())
}

/// `GET`: the user's preferences as set, when, and the subscriptions the
/// loaded rules offer, with their parameters and defaults.
pub async fn get(
    State(state): State<AdminState>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, &headers, &user) {
        return r.into_response();
    }
    let stored = state.profiles.preferences_of(&user);
    let loaded = state.rules.current();
    let offered: Map<String, Value> = loaded
        .set
        .rules
        .iter()
        .filter_map(|r| {
            let sub = r.subscription.as_ref()?;
            Some((
                r.id.to_string(),
                json!({
                    "description": r.description,
                    "category": &*r.category,
                    "channels": r.channels,
                    "on_by_default": sub.on_by_default,
                    "parameters": sub.parameters,
                }),
            ))
        })
        .collect();
    let body = json!({
        "user_id": user,
        "preferences": stored.as_ref().map_or_else(Preferences::default, |s| s.preferences.clone()),
        "written_ms": stored.as_ref().map(|s| s.written_ms),
        "subscriptions_offered": offered,
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// `PUT`: replaces the user's preferences with the body, once valid.
pub async fn put(
    State(state): State<AdminState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = guard(&state, &headers, &user) {
        return r.into_response();
    }
    let preferences = match validate(&state, &body) {
        Ok(p) => p,
        Err((field, error)) => {
            return refuse(StatusCode::BAD_REQUEST, &error, Some(&field)).into_response()
        }
    };
    let bytes = serde_json::to_vec(&preferences).unwrap_or_default();
    if let Err(r) = state.api.write(&user, Some(bytes)).await {
        return r.into_response();
    }
    (
        StatusCode::OK,
        Json(json!({ "user_id": user, "preferences": preferences })),
    )
        .into_response()
}

/// `DELETE`: forgets the user's preferences (their profile alone applies).
pub async fn delete(
    State(state): State<AdminState>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, &headers, &user) {
        return r.into_response();
    }
    match state.api.write(&user, None).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r.into_response(),
    }
}

/// `GET /api/v1/openapi.yaml`: the API's description, for anyone.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

fn guard(state: &AdminState, headers: &HeaderMap, user: &str) -> Result<(), Refusal> {
    user_id(user)?;
    let caller = state.api.caller(headers, user)?;
    state.api.admit(&caller)
}

/// The body as preferences, each field checked against the config and the
/// loaded rules: `Err((field path, reason))`.
fn validate(state: &AdminState, body: &[u8]) -> Result<Preferences, (String, String)> {
    let fields: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(("".into(), "the body must be a JSON object".into())),
        Err(e) => return Err(("".into(), format!("the body is not JSON: {e}"))),
    };
    let mut p = Preferences::default();
    let config = &state.config;
    let loaded = state.rules.current();
    for (name, value) in fields {
        let bad = |reason: String| (name.clone(), reason);
        let typed = |e: serde_json::Error| (name.clone(), e.to_string());
        match name.as_str() {
            "categories" => {
                p.categories = serde_json::from_value(value).map_err(typed)?;
                for category in p.categories.keys() {
                    let known = config.policy.categories.contains_key(category)
                        || loaded.set.rules.iter().any(|r| &*r.category == category);
                    if !known {
                        return Err((
                            format!("categories.{category}"),
                            "no rule or policy has this category".into(),
                        ));
                    }
                }
            }
            "channels" => {
                p.channels = serde_json::from_value(value).map_err(typed)?;
                for channel in p.channels.keys() {
                    if !config.channels.contains_key(channel) {
                        return Err((format!("channels.{channel}"), "no such channel".into()));
                    }
                }
            }
            "quiet_hours" => p.quiet_hours = serde_json::from_value(value).map_err(typed)?,
            "locale" => {
                let tag: String = serde_json::from_value(value).map_err(typed)?;
                if crate::render::TextLocale::parse(&tag).is_none() {
                    return Err(bad("not a BCP 47 locale, e.g. fr-BE".into()));
                }
                p.locale = Some(tag);
            }
            "time_zone" => {
                let zone: String = serde_json::from_value(value).map_err(typed)?;
                if crate::util::time_zone(&zone).is_none() {
                    return Err(bad("not an IANA time zone, e.g. Europe/Paris".into()));
                }
                p.time_zone = Some(zone);
            }
            "paused_until" => {
                let until: Option<String> = serde_json::from_value(value).map_err(typed)?;
                if until.as_deref().is_some_and(|t| crate::profile::paused_until_ms(t).is_none()) {
                    return Err(bad("not an RFC 3339 time, e.g. 2026-12-24T00:00:00Z".into()));
                }
                p.paused_until = until;
            }
            "subscriptions" => {
                let Value::Object(subs) = value else {
                    return Err(bad("an object of rule ids".into()));
                };
                for (rule_id, given) in subs {
                    let at = format!("subscriptions.{rule_id}");
                    let Some(rule) = loaded.set.get(&rule_id) else {
                        return Err((at, "no rule with this id is loaded".into()));
                    };
                    let Some(declared) = &rule.subscription else {
                        return Err((at, "this rule is not a subscription".into()));
                    };
                    let mine: UserSubscription =
                        serde_json::from_value(given).map_err(|e| (at.clone(), e.to_string()))?;
                    declared
                        .validate(&mine, &rule.channels)
                        .map_err(|(field, reason)| (format!("{at}.{field}"), reason))?;
                    p.subscriptions.insert(rule_id, mine);
                }
            }
            _ => {
                return Err(bad(
                    "unknown field; known: categories, channels, quiet_hours, locale, time_zone, paused_until, subscriptions".into(),
                ))
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_token_verifies_only_for_its_user() {
        let key = b"k3y";
        let token = user_token(key, "u-1");
        assert_eq!(token.len(), 64);
        let tag = hex_decode(&token).unwrap();
        assert!(user_hmac(key)
            .chain_update("u-1")
            .verify_slice(&tag)
            .is_ok());
        assert!(user_hmac(key)
            .chain_update("u-2")
            .verify_slice(&tag)
            .is_err());
        assert!(hex_decode("zz").is_none() && hex_decode("abc").is_none());
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }
}

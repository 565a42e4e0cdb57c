//! One event by hand: which rules match, what each would send, and why any
//! would be suppressed — without sending and without touching live state
//! (`POST /rules/evaluate`, `herald rules eval`).

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use super::Offline;
use crate::config::Config;

/// What to evaluate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The source topic the event would come from.
    pub topic: String,
    /// The Kafka key (the state key, e.g. the card).
    #[serde(default)]
    pub key: Option<String>,
    /// The event as the source publishes it.
    pub event: Value,
    /// The recipient's profile; without it, none (or the live one, on the admin server).
    #[serde(default)]
    pub profile: Option<Value>,
    /// When it happens (RFC 3339); default now.
    #[serde(default)]
    pub at: Option<String>,
}

/// Evaluates one event against the rules of `rules_dir` with `config`'s
/// channels and policy. The answer lists the rules that matched and every
/// decision with its rendered text or reason.
pub async fn evaluate(
    config: &Config,
    rules_dir: &Path,
    request: &Request,
) -> Result<Value, String> {
    let offline = Offline::new(config, rules_dir).map_err(|e| e.to_string())?;
    let at_ms = match &request.at {
        Some(t) => t
            .parse::<jiff::Timestamp>()
            .map_err(|_| format!("`at: {t}` is not an RFC 3339 time"))?
            .as_millisecond(),
        None => crate::util::now_ms(),
    };
    let mapping = config
        .sources
        .get(&request.topic)
        .ok_or_else(|| format!("`{}` is not a configured source", request.topic))?;
    let mut event = request.event.clone();
    let fields = event
        .as_object_mut()
        .ok_or("`event` must be a JSON object")?;
    if let Some(field) = &mapping.time_field {
        fields
            .entry(field.clone())
            .or_insert_with(|| Value::from(at_ms));
    }
    let user = crate::ingest::decode::lookup(fields, &mapping.user_field)
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or_else(|| {
            format!(
                "the event has no `{}` (the source's user field)",
                mapping.user_field
            )
        })?;
    if let Some(profile) = &request.profile {
        offline.profile(&user, profile);
    }
    let payload = serde_json::to_vec(&event).unwrap_or_default();
    offline
        .event(&request.topic, request.key.as_deref(), &payload, at_ms)
        .await;
    let loaded = offline.rules.current();
    let matched: Vec<&str> = loaded
        .set
        .rules
        .iter()
        .enumerate()
        .filter(|(i, _)| loaded.matches[*i].get() > 0)
        .map(|(_, r)| &*r.id)
        .collect();
    let decisions: Vec<Value> = offline
        .take()
        .into_iter()
        .map(|s| {
            let o = &s.outcome;
            json!({
                "rule": o["rule"],
                "channel": o["channel"],
                "would": if o["status"] == "sent" { Value::from("send") } else { o["status"].clone() },
                "reason": o.get("reason"),
                "recipient": o.get("recipient"),
                "title": s.title,
                "text": s.text,
            })
        })
        .collect();
    let dead: Vec<Value> = offline
        .dead_letters()
        .into_iter()
        .map(|d| json!({ "reason": d["reason"], "detail": d["detail"], "rule": d.get("rule") }))
        .collect();
    Ok(json!({
        "user": user,
        "matched": matched,
        "decisions": decisions,
        "dead_letters": dead,
    }))
}

//! Twilio's webhooks on herald's HTTP server: `POST /twilio/{channel}/inbound`
//! (an SMS to the channel's number) and `POST /twilio/{channel}/status` (a
//! message's delivery status). Each is checked against `X-Twilio-Signature`
//! with the channel's Auth Token and the channel's `public_url`, then written
//! to the feedback topic, where STOP, HELP, replies and receipts are handled
//! once for every instance. Twilio is answered 200 only once the record is
//! written, so a failed write is retried by Twilio rather than lost.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::IntCounterVec;
use secrecy::{ExposeSecret, SecretString};

use super::AdminState;
use crate::deliver::twilio::inbound::{form_pairs, inbound_record, status_record, verify};
use crate::outcome::Recorder;

/// One Twilio channel's webhook settings.
pub struct Hook {
    pub auth_token: SecretString,
    /// `{public_url}/twilio/{channel}`: what Twilio calls, and signs.
    pub base: String,
}

/// Every Twilio channel with webhooks, and where their records go.
pub struct TwilioHooks {
    pub channels: HashMap<String, Hook>,
    pub recorder: Recorder,
    pub feedback_topic: String,
    /// Where delivery records go, beside the decisions.
    pub outcomes_topic: String,
    /// `herald_twilio_webhooks_total{channel,kind,result}`.
    pub counted: IntCounterVec,
}

impl TwilioHooks {
    /// The hooks of every Twilio channel of `config` with a public URL and
    /// its auth token in the environment (Twilio signs each request with it).
    pub fn from_config(
        config: &crate::config::Config,
        recorder: Recorder,
        counted: IntCounterVec,
    ) -> TwilioHooks {
        let channels = config
            .channels
            .iter()
            .filter_map(|(name, c)| {
                let crate::config::ChannelConfig::Twilio(c) = c else {
                    return None;
                };
                let base = c.webhook_base(name)?;
                let token = std::env::var(&c.auth_token_env).ok()?;
                let hook = Hook {
                    auth_token: token.into(),
                    base,
                };
                Some((name.clone(), hook))
            })
            .collect();
        TwilioHooks {
            channels,
            recorder,
            feedback_topic: config.topics.feedback.clone(),
            outcomes_topic: config.topics.outcomes.clone(),
            counted,
        }
    }
}

/// The delivery record of a status callback's feedback record.
fn delivery_record(
    channel: &str,
    message: &str,
    record: &serde_json::Value,
) -> crate::outcome::DeliveryRecord {
    let status = record["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("sms_"))
        .unwrap_or("")
        .to_string();
    crate::outcome::DeliveryRecord {
        record: "delivery".into(),
        channel: channel.to_string(),
        idempotency_key: message.to_string(),
        provider_message_id: record["provider_message_id"].as_str().map(str::to_string),
        is_final: matches!(
            status.as_str(),
            "delivered" | "undelivered" | "failed" | "canceled"
        ),
        delivery_status: status,
        error_code: record["error_code"].as_str().map(str::to_string),
        at_ms: crate::util::now_ms(),
    }
}

const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

/// `POST /twilio/{channel}/inbound` (an SMS to the channel's number) and
/// `POST /twilio/{channel}/status?message=<idempotency key>` (a status callback).
pub async fn receive(
    State(state): State<AdminState>,
    Path((channel, kind)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kind: &'static str = match kind.as_str() {
        "inbound" => "inbound",
        "status" => "status",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let channel = channel.as_str();
    let hooks = &state.twilio;
    let Some(hook) = hooks.channels.get(channel) else {
        return (
            StatusCode::NOT_FOUND,
            "no Twilio channel with webhooks by that name\n",
        )
            .into_response();
    };
    let count = |result: &str| {
        hooks
            .counted
            .with_label_values(&[channel, kind, result])
            .inc()
    };
    let url = match &query {
        Some(q) => format!("{}/{kind}?{q}", hook.base),
        None => format!("{}/{kind}", hook.base),
    };
    let params = form_pairs(&body);
    let signed = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| verify(hook.auth_token.expose_secret().as_bytes(), &url, &params, s));
    if !signed {
        count("bad_signature");
        tracing::warn!(%channel, kind, "Twilio webhook refused: X-Twilio-Signature does not match (check the channel's auth token and public_url)");
        return (StatusCode::FORBIDDEN, "signature does not match\n").into_response();
    }
    let mut delivery = None;
    let (key, record) = if kind == "inbound" {
        let from = params
            .iter()
            .find(|(k, _)| k == "From")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        (from, inbound_record(&params))
    } else {
        let message = query
            .as_deref()
            .and_then(|q| {
                form_pairs(q.as_bytes())
                    .into_iter()
                    .find(|(k, _)| k == "message")
            })
            .map(|(_, v)| v);
        let record = message.as_deref().and_then(|m| status_record(m, &params));
        match (message, record) {
            (Some(m), Some(r)) => {
                delivery = Some(delivery_record(channel, &m, &r));
                (m, r)
            }
            _ => {
                count("malformed");
                return (
                    StatusCode::BAD_REQUEST,
                    "a status callback needs ?message=<idempotency key> and MessageStatus\n",
                )
                    .into_response();
            }
        }
    };
    let payload = serde_json::to_vec(&record).unwrap_or_default();
    let written = hooks.recorder.publish(&hooks.feedback_topic, &key, payload);
    if let Some(d) = delivery {
        let payload = serde_json::to_vec(&d).unwrap_or_default();
        let beside = hooks.recorder.publish(&hooks.outcomes_topic, &key, payload);
        futures::future::join(written, beside).await;
    } else {
        written.await;
    }
    count("accepted");
    if kind == "inbound" {
        ([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

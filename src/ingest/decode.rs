//! decode: one Kafka message to an [`Event`], or a [`DecodeError`] with the reason it is unusable.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::fields::{Fields, Top};
use crate::config::SourceConfig;
use crate::outcome::DeadLetterCode;

/// One event from a source topic, with the fields herald needs pulled out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The source topic.
    pub source: Arc<str>,
    /// Kafka partition and offset it came from.
    pub partition: i32,
    pub offset: i64,
    /// State key: the mapped key field, else the Kafka message key.
    pub key: Option<Arc<str>>,
    /// The user to notify.
    pub user: Arc<str>,
    /// Event time, epoch milliseconds.
    pub time_ms: i64,
    /// Event type from the source's `type_field`, for the rule index.
    pub event_type: Option<String>,
    /// The whole JSON object.
    pub fields: Fields,
    /// When herald took it from Kafka, epoch milliseconds.
    pub consumed_ms: i64,
}

/// Why a message cannot become an event. `reason()` is the dead-letter reason code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message has no payload")]
    Empty,
    #[error("message is {size} bytes, above the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload is JSON but not an object")]
    NotObject,
    #[error("required field `{0}` is missing")]
    MissingField(String),
    #[error("field `{field}` is not a valid time (RFC 3339 or epoch milliseconds)")]
    BadTime { field: String },
}

impl DecodeError {
    /// The dead letter's reason code (and the metric label).
    pub fn reason(&self) -> DeadLetterCode {
        match self {
            DecodeError::Empty => DeadLetterCode::Empty,
            DecodeError::TooLarge { .. } => DeadLetterCode::TooLarge,
            DecodeError::NotJson(_) => DeadLetterCode::NotJson,
            DecodeError::NotObject => DeadLetterCode::NotObject,
            DecodeError::MissingField(_) => DeadLetterCode::MissingField,
            DecodeError::BadTime { .. } => DeadLetterCode::BadTime,
        }
    }
}

/// Where a message came from, as Kafka reported it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// Kafka timestamp in epoch ms, when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

/// Decodes a payload with the source's field mapping.
pub fn decode(
    source: &Arc<str>,
    mapping: &SourceConfig,
    origin: Origin<'_>,
    payload: Option<&[u8]>,
    max_bytes: usize,
    consumed_ms: i64,
) -> Result<Event, DecodeError> {
    let payload = payload.ok_or(DecodeError::Empty)?;
    if payload.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    // UTF-8 checked once for the whole payload (a few instructions per 16
    // bytes), not string by string as `from_slice` checks it; a payload that
    // is not UTF-8 is parsed as bytes for serde_json's own error and column.
    let parsed = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(payload),
    };
    let top: Top = parsed.map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Top::Object(fields) = top else {
        return Err(DecodeError::NotObject);
    };
    let user = scalar_text(lookup(&fields, &mapping.user_field))
        .ok_or_else(|| DecodeError::MissingField(mapping.user_field.clone()))?;
    let time_ms = match &mapping.time_field {
        Some(field) => {
            let v =
                lookup(&fields, field).ok_or_else(|| DecodeError::MissingField(field.clone()))?;
            parse_time(v)
                .filter(|&t| plausible_time(t, consumed_ms))
                .ok_or_else(|| DecodeError::BadTime {
                    field: field.clone(),
                })?
        }
        None => origin.timestamp_ms.unwrap_or(consumed_ms),
    };
    let key: Option<Arc<str>> = match &mapping.key_field {
        Some(field) => Some(
            scalar_text(lookup(&fields, field))
                .ok_or_else(|| DecodeError::MissingField(field.clone()))?,
        ),
        None => origin.key.map(|k| String::from_utf8_lossy(k).into()),
    };
    let event_type = mapping
        .type_field
        .as_ref()
        .and_then(|f| lookup(&fields, f))
        .and_then(scalar_string);
    Ok(Event {
        source: Arc::clone(source),
        partition: origin.partition,
        offset: origin.offset,
        key,
        user,
        time_ms,
        event_type,
        fields,
        consumed_ms,
    })
}

/// Follows a dotted path (`card.holder`) into a JSON object.
pub fn lookup<'a, O: Object + ?Sized>(fields: &'a O, path: &str) -> Option<&'a Value> {
    // A path is a handful of bytes: a loop here, not a call to `memchr`.
    if !path.bytes().any(|b| b == b'.') {
        return fields.field(path);
    }
    let mut parts = path.split('.');
    let mut current = fields.field(parts.next()?)?;
    for part in parts {
        current = field(current.as_object()?, part)?;
    }
    Some(current)
}

/// A JSON object's fields by name: an event's [`Fields`], or a `serde_json` map.
pub trait Object {
    fn field(&self, name: &str) -> Option<&Value>;
    /// The whole object as a `serde_json` map (a copy).
    fn to_map(&self) -> Map<String, Value>;
}

impl Object for Map<String, Value> {
    fn field(&self, name: &str) -> Option<&Value> {
        field(self, name)
    }

    fn to_map(&self) -> Map<String, Value> {
        self.clone()
    }
}

impl Object for Fields {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }

    fn to_map(&self) -> Map<String, Value> {
        Fields::to_map(self)
    }
}

/// Up to this many fields, an object is searched by walking its fields in
/// order, lengths compared first; above it, by the map's own search.
const WALKED: usize = 16;

/// One field of an object. An event's object has a dozen fields or so, and
/// most names differ in length from the one sought: walking them and
/// comparing lengths first takes a third of the instructions of the map's
/// ordered search, which compares every name it passes byte by byte.
pub fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if object.len() > WALKED {
        return object.get(name);
    }
    let name = name.as_bytes();
    object
        .iter()
        .find(|(k, _)| k.len() == name.len() && k.as_bytes() == name)
        .map(|(_, v)| v)
}

/// [`scalar_string`] as the shared text an event keeps (one allocation).
fn scalar_text(v: Option<&Value>) -> Option<Arc<str>> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.as_str().into()),
        other => scalar_string(other).map(Arc::from),
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The latest an event time may be ahead of the moment it is consumed: clocks
/// drift, but an event from tomorrow is a broken producer.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

/// Whether an event time can be real: not before 1970, not more than
/// [`MAX_FUTURE_MS`] ahead of `now_ms`. Times such as 1e300 or i64::MIN would
/// otherwise pass freshness checks (a negative age is never stale).
pub fn plausible_time(time_ms: i64, now_ms: i64) -> bool {
    time_ms >= 0 && time_ms <= now_ms.saturating_add(MAX_FUTURE_MS)
}

/// RFC 3339 text or epoch milliseconds to epoch milliseconds; `None` for a
/// number that is not finite or does not fit.
pub fn parse_time(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => parse_time_text(s),
        _ => None,
    }
}

/// A time given as text: RFC 3339, or epoch milliseconds in digits.
pub fn parse_time_text(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
        .or_else(|| s.parse::<i64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> SourceConfig {
        SourceConfig {
            user_field: "user_id".into(),
            time_field: Some("ts".into()),
            key_field: None,
            type_field: Some("status".into()),
        }
    }

    fn origin() -> Origin<'static> {
        Origin {
            topic: "transactions",
            partition: 1,
            offset: 7,
            key: Some(b"card-1"),
            timestamp_ms: Some(5),
        }
    }

    fn run(payload: &[u8]) -> Result<Event, DecodeError> {
        decode(
            &Arc::from("transactions"),
            &mapping(),
            origin(),
            Some(payload),
            200,
            1_795_514_400_000,
        )
    }

    #[test]
    fn decodes_a_swipe() {
        let e = run(
            br#"{"user_id":"u1","ts":"2026-11-24T10:00:00Z","status":"approved","amount":12.5}"#,
        )
        .unwrap();
        assert_eq!(&*e.user, "u1");
        assert_eq!(e.key.as_deref(), Some("card-1"));
        assert_eq!(e.time_ms, 1_795_514_400_000);
        assert_eq!(e.event_type.as_deref(), Some("approved"));
        assert_eq!(
            (e.partition, e.offset, e.consumed_ms),
            (1, 7, 1_795_514_400_000)
        );
    }

    #[test]
    fn epoch_millis_and_numeric_user() {
        let e = run(br#"{"user_id":42,"ts":1700000000123}"#).unwrap();
        assert_eq!(&*e.user, "42");
        assert_eq!(e.time_ms, 1_700_000_000_123);
    }

    #[test]
    fn bad_input_has_a_reason() {
        assert_eq!(run(b"not json").unwrap_err().reason().as_str(), "not_json");
        assert_eq!(run(b"[1,2]").unwrap_err().reason().as_str(), "not_object");
        assert_eq!(
            run(br#"{"ts":1}"#).unwrap_err(),
            DecodeError::MissingField("user_id".into())
        );
        assert_eq!(
            run(br#"{"user_id":"u","ts":true}"#)
                .unwrap_err()
                .reason()
                .as_str(),
            "bad_time"
        );
        assert_eq!(
            run(&[b' '; 300]).unwrap_err().reason().as_str(),
            "too_large"
        );
        // Not UTF-8 inside a string: serde_json's own reason, with its column.
        let latin1 = run(b"{\"user_id\":\"u\",\"ts\":1,\"merchant\":\"Caf\xe9\"}").unwrap_err();
        assert_eq!(
            latin1,
            DecodeError::NotJson("invalid unicode code point at line 1 column 38".into())
        );
    }

    #[test]
    fn impossible_event_times_are_bad_time() {
        for ts in [
            "1e300",
            "-9223372036854775808",
            "-1",
            "1e400",
            "\"9999999999999999\"",
        ] {
            let payload = format!(r#"{{"user_id":"u","ts":{ts}}}"#);
            let got = run(payload.as_bytes());
            let reason = got.as_ref().map_err(DecodeError::reason).err();
            assert!(
                matches!(
                    reason,
                    Some(DeadLetterCode::BadTime | DeadLetterCode::NotJson)
                ),
                "ts {ts}: {got:?}"
            );
        }
        // A day ahead of the consumer's clock is tolerated as drift; more is not.
        let consumed = 1_795_514_400_000_i64;
        assert!(plausible_time(consumed + MAX_FUTURE_MS, consumed));
        assert!(!plausible_time(consumed + MAX_FUTURE_MS + 1, consumed));
    }
}

//! parse: one feedback record's text to a [`Feedback`], reading only the fields herald uses, borrowed from the text where they have no escapes.
//!
//! Every instance reads every record of the feedback topic, most of them
//! `herald_sent` records that herald wrote itself (one per send), and reads
//! them again from disk to answer replies. Reading each into a
//! `serde_json::Value` built a map and a `String` per field, then copied the
//! fields it wanted out of it; here the fields are read by name straight
//! from the text, and the rest is skipped.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Engagement, Feedback, FeedbackError, InboundSms, PushAction, SentRecord, SentRef};

impl Feedback {
    /// Decodes one record; `fallback_ms` (the Kafka timestamp) is used when it has no `time`.
    pub fn parse(payload: &[u8], fallback_ms: i64) -> Result<Feedback, FeedbackError> {
        let Ok(fields) = serde_json::from_slice::<Fields<'_>>(payload) else {
            return Err(FeedbackError::NotObject);
        };
        let time_ms = match &fields.time {
            None => fallback_ms,
            Some(v) => crate::ingest::decode::parse_time(v).ok_or(FeedbackError::BadTime)?,
        };
        if let (Some(from), Some(body)) = (&fields.from, &fields.body) {
            let from = crate::profile::normalize_e164(from).ok_or(FeedbackError::BadPhone)?;
            return Ok(Feedback::Inbound(InboundSms {
                from,
                body: body.to_string(),
                sid: owned(&fields.message_sid),
                time_ms,
            }));
        }
        let kind = fields.kind.as_deref().ok_or(FeedbackError::NoType)?;
        if kind == "herald_sent" {
            let need = |field: &Option<Cow<'_, str>>, name: &'static str| {
                field
                    .as_deref()
                    .map(Arc::from)
                    .ok_or(FeedbackError::MissingField(name))
            };
            return Ok(Feedback::Sent(SentRecord {
                sent: SentRef {
                    user: need(&fields.user, "user")?,
                    rule: need(&fields.rule, "rule")?,
                    key: fields.key.as_deref().map(Arc::from),
                    idempotency_key: need(&fields.idempotency_key, "idempotency_key")?,
                    channel: need(&fields.channel, "channel")?,
                    sent_ms: time_ms,
                    deployment: fields.deployment.as_deref().map(Arc::from),
                },
                phone_sha256: owned(&fields.phone_sha256),
            }));
        }
        if kind == "push_action" {
            return Ok(Feedback::PushAction(PushAction {
                action: owned(&fields.action).ok_or(FeedbackError::MissingField("action"))?,
                idempotency_key: owned(&fields.idempotency_key)
                    .ok_or(FeedbackError::MissingField("idempotency_key"))?,
                rule: owned(&fields.rule),
                key: owned(&fields.key),
                user: owned(&fields.user),
                time_ms,
            }));
        }
        let engagement = Engagement {
            kind: kind.to_string(),
            user: owned(&fields.user),
            campaign: owned(&fields.campaign),
            message: owned(&fields.message),
            time_ms,
        };
        if engagement.user.is_none() && engagement.message.is_none() {
            return Err(FeedbackError::MissingField("user"));
        }
        Ok(Feedback::Engagement(engagement))
    }
}

fn owned(field: &Option<Cow<'_, str>>) -> Option<String> {
    field.as_deref().map(str::to_string)
}

/// The fields of a feedback record herald reads. A text field given as
/// anything but text counts as absent; a name given twice keeps its last
/// value (as a `serde_json` map does).
#[derive(Default)]
struct Fields<'a> {
    kind: Option<Cow<'a, str>>,
    from: Option<Cow<'a, str>>,
    body: Option<Cow<'a, str>>,
    message_sid: Option<Cow<'a, str>>,
    user: Option<Cow<'a, str>>,
    rule: Option<Cow<'a, str>>,
    key: Option<Cow<'a, str>>,
    idempotency_key: Option<Cow<'a, str>>,
    channel: Option<Cow<'a, str>>,
    deployment: Option<Cow<'a, str>>,
    phone_sha256: Option<Cow<'a, str>>,
    action: Option<Cow<'a, str>>,
    campaign: Option<Cow<'a, str>>,
    message: Option<Cow<'a, str>>,
    time: Option<Value>,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(Text(Some(name))) = map.next_key::<Text<'de>>()? {
            let slot = match &*name {
                "type" => &mut fields.kind,
                "From" => &mut fields.from,
                "Body" => &mut fields.body,
                "MessageSid" => &mut fields.message_sid,
                "user" => &mut fields.user,
                "rule" => &mut fields.rule,
                "key" => &mut fields.key,
                "idempotency_key" => &mut fields.idempotency_key,
                "channel" => &mut fields.channel,
                "deployment" => &mut fields.deployment,
                "phone_sha256" => &mut fields.phone_sha256,
                "action" => &mut fields.action,
                "campaign" => &mut fields.campaign,
                "message" => &mut fields.message,
                "time" => {
                    fields.time = Some(map.next_value()?);
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value::<Text<'de>>()?.0;
        }
        Ok(fields)
    }
}

/// A value read as text: borrowed when the text has no escapes, `None`
/// for any value that is not text (read and skipped).
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v.to_string()))))
    }

    fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_unit<E>(self) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_another_kind_count_as_absent_and_a_repeated_name_keeps_its_last() {
        let record = br#"{"type":"email_opened","user":7,"message":["k"],"campaign":{"a":1},"user":"u\u00e9","extra":[{"x":null}]}"#;
        let Feedback::Engagement(e) = Feedback::parse(record, 5).unwrap() else {
            panic!("an engagement");
        };
        assert_eq!(e.user.as_deref(), Some("ué"), "the last `user`, unescaped");
        assert_eq!((e.message, e.campaign, e.time_ms), (None, None, 5));
        assert_eq!(
            Feedback::parse(br#"{"type":"email_opened","user":"u"} x"#, 0),
            Err(FeedbackError::NotObject),
            "text after the object"
        );
        assert_eq!(
            Feedback::parse(br#"{"type":"email_opened","user":"u","time":true}"#, 0),
            Err(FeedbackError::BadTime)
        );
    }
}

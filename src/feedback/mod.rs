//! feedback: what comes back from users — engagement (opened, delivered,
//! clicked), inbound SMS with STOP/START/HELP, replies, push action presses.
//!
//! One record on the feedback topic is one of three shapes:
//! - an inbound SMS in the fields of Twilio's inbound webhook
//!   (`{"MessageSid": "SM…", "From": "+14155552671", "To": "+1…", "Body": "STOP"}`);
//! - a push action pressed in the app (`{"type": "push_action", "action": "deny",
//!   "idempotency_key": "…", "rule": "…", "key": "…", "user": "u1"}`), echoing
//!   the `data` herald put in the push;
//! - an engagement (`{"type": "email_opened", "user": "u1", "campaign": "spring",
//!   "time": "2026-11-24T10:00:00Z"}`), where `message` (an idempotency key)
//!   may stand in for `user`.

use serde_json::{Map, Value};

use crate::outcome::DeadLetterCode;

pub mod disk;
mod parse;
pub mod sent;
pub mod state;

pub use sent::{SentIndex, SentRef};
pub use state::FeedbackState;

/// One decoded feedback record.
#[derive(Debug, Clone, PartialEq)]
pub enum Feedback {
    Inbound(InboundSms),
    PushAction(PushAction),
    Engagement(Engagement),
    /// A message herald sent (`type: herald_sent`), written by the instance
    /// that sent it so that every instance can match replies and engagement
    /// to it.
    Sent(SentRecord),
}

/// What a `herald_sent` record says: the message, and for an SMS the
/// SHA-256 of the number (never the number itself).
#[derive(Debug, Clone, PartialEq)]
pub struct SentRecord {
    pub sent: SentRef,
    pub phone_sha256: Option<String>,
}

impl SentRecord {
    /// The feedback record of a send, as the bytes written to the feedback
    /// topic: `{"type": "herald_sent", "user", "rule", "key", "idempotency_key",
    /// "channel", "time", "phone_sha256"}` (`key` and `phone_sha256` may be null).
    pub fn to_bytes(&self) -> Vec<u8> {
        let s = &self.sent;
        let mut out = Vec::with_capacity(256);
        let mut o = crate::outcome::json::Obj::open(&mut out);
        o.str("type", "herald_sent")
            .str("user", &s.user)
            .str("rule", &s.rule)
            .str_or_null("key", s.key.as_deref())
            .str("idempotency_key", &s.idempotency_key)
            .str("channel", &s.channel)
            .int("time", s.sent_ms)
            .str_or_null("phone_sha256", self.phone_sha256.as_deref())
            .str_or_null("deployment", s.deployment.as_deref());
        o.close();
        out
    }
}

/// An SMS a user sent to one of our numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundSms {
    /// The sender, E.164.
    pub from: String,
    pub body: String,
    /// Twilio's message sid, when given.
    pub sid: Option<String>,
    pub time_ms: i64,
}

/// A button pressed on a push notification.
#[derive(Debug, Clone, PartialEq)]
pub struct PushAction {
    pub action: String,
    pub idempotency_key: String,
    pub rule: Option<String>,
    pub key: Option<String>,
    pub user: Option<String>,
    pub time_ms: i64,
}

/// The user engaged with a message or campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct Engagement {
    /// `email_opened`, `push_opened`, `push_delivered`, `sms_delivered`, `link_clicked`, …
    pub kind: String,
    pub user: Option<String>,
    pub campaign: Option<String>,
    /// The idempotency key of the message engaged with.
    pub message: Option<String>,
    pub time_ms: i64,
}

/// What an inbound SMS asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT: no more SMS to this number.
    OptOut,
    /// START, UNSTOP: SMS allowed again.
    OptIn,
    /// HELP, INFO: answer with the configured help text.
    Help,
}

impl Keyword {
    /// The keyword of a message body, matched as carriers do: the whole body,
    /// any case, surrounding spaces and a final `.` or `!` ignored.
    pub fn of(body: &str) -> Option<Keyword> {
        let word = body
            .trim()
            .trim_end_matches(['.', '!'])
            .trim()
            .to_ascii_uppercase();
        match word.as_str() {
            "STOP" | "STOPALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" => Some(Keyword::OptOut),
            "START" | "UNSTOP" => Some(Keyword::OptIn),
            "HELP" | "INFO" => Some(Keyword::Help),
            _ => None,
        }
    }
}

/// The feedback record of a number that said STOP at the SMS provider (a
/// send refused with `provider_code`): an inbound STOP as the feedback topic
/// takes it, marked with where it came from, so every instance and the
/// consent topic learn it as if the reply had come to herald.
pub fn stop_at_provider(phone: &str, provider_code: &str) -> Value {
    serde_json::json!({
        "From": phone,
        "Body": "STOP",
        "MessageSid": "",
        "herald_source": provider_code,
    })
}

/// Why a feedback record could not be used. `reason()` is the dead-letter code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    #[error("feedback is not a JSON object")]
    NotObject,
    #[error(
        "feedback needs `type` (an engagement or `push_action`) or Twilio's `From` and `Body`"
    )]
    NoType,
    #[error("feedback field `{0}` is missing or not text")]
    MissingField(&'static str),
    #[error("inbound SMS `From` is not a valid E.164 number")]
    BadPhone,
    #[error("field `time` is not a valid time (RFC 3339 or epoch milliseconds)")]
    BadTime,
}

impl FeedbackError {
    /// The dead letter's reason code (and the metric label).
    pub fn reason(&self) -> DeadLetterCode {
        match self {
            FeedbackError::NotObject => DeadLetterCode::FeedbackNotObject,
            FeedbackError::NoType => DeadLetterCode::FeedbackNoType,
            FeedbackError::MissingField(_) => DeadLetterCode::FeedbackMissingField,
            FeedbackError::BadPhone => DeadLetterCode::FeedbackBadPhone,
            FeedbackError::BadTime => DeadLetterCode::FeedbackBadTime,
        }
    }
}

/// The event herald publishes on the replies topic for a reply or a push action.
pub fn reply_event(kind: &str, original: &SentRef, extra: Map<String, Value>) -> Value {
    let mut record = Map::new();
    record.insert("type".into(), Value::from(kind));
    record.insert("user".into(), Value::from(&*original.user));
    record.insert("rule".into(), Value::from(&*original.rule));
    record.insert(
        "key".into(),
        original.key.as_deref().map_or(Value::Null, Value::from),
    );
    record.insert(
        "idempotency_key".into(),
        Value::from(&*original.idempotency_key),
    );
    record.insert("channel".into(), Value::from(&*original.channel));
    record.extend(extra);
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_match_the_whole_body_in_any_case() {
        for stop in [
            "STOP",
            "stop",
            " Stop. ",
            "STOPALL",
            "unsubscribe",
            "Cancel",
            "END",
            "quit!",
        ] {
            assert_eq!(Keyword::of(stop), Some(Keyword::OptOut), "{stop}");
        }
        assert_eq!(Keyword::of("start"), Some(Keyword::OptIn));
        assert_eq!(Keyword::of("UNSTOP"), Some(Keyword::OptIn));
        assert_eq!(Keyword::of("help"), Some(Keyword::Help));
        assert_eq!(Keyword::of("please stop"), None, "a sentence is a reply");
        assert_eq!(Keyword::of("YES"), None);
        assert_eq!(Keyword::of("NO"), None);
    }

    #[test]
    fn a_send_record_reads_back_as_it_was_written() {
        for (key, phone) in [(Some("card \"7\"\n"), Some("ab12")), (None, None)] {
            let record = SentRecord {
                sent: SentRef {
                    user: "u-é".into(),
                    rule: "r\\1".into(),
                    key: key.map(std::sync::Arc::from),
                    idempotency_key: "k1".into(),
                    channel: "sms".into(),
                    sent_ms: 1_795_514_400_123,
                    deployment: key.map(|_| "herald-prod".into()),
                },
                phone_sha256: phone.map(str::to_string),
            };
            let bytes = record.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(value["key"], key.map_or(Value::Null, Value::from));
            assert_eq!(Feedback::parse(&bytes, 0).unwrap(), Feedback::Sent(record));
        }
    }

    #[test]
    fn parses_each_shape() {
        let twilio = br#"{"MessageSid":"SM1","AccountSid":"AC1","From":"+1 415 555 2671","To":"+15005550006","Body":"STOP","NumMedia":"0"}"#;
        assert_eq!(
            Feedback::parse(twilio, 7).unwrap(),
            Feedback::Inbound(InboundSms {
                from: "+14155552671".into(),
                body: "STOP".into(),
                sid: Some("SM1".into()),
                time_ms: 7
            })
        );
        let opened = br#"{"type":"email_opened","user":"u1","campaign":"spring","time":"2026-11-24T10:00:00Z"}"#;
        let Feedback::Engagement(e) = Feedback::parse(opened, 0).unwrap() else {
            panic!("an engagement")
        };
        assert_eq!(e.kind, "email_opened");
        assert_eq!(
            e.time_ms,
            "2026-11-24T10:00:00Z"
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_millisecond()
        );
        let action = br#"{"type":"push_action","action":"deny","idempotency_key":"k1","rule":"r","key":"card-1","user":"u1"}"#;
        assert!(matches!(
            Feedback::parse(action, 0).unwrap(),
            Feedback::PushAction(PushAction { ref action, .. }) if action == "deny"
        ));
    }

    #[test]
    fn unusable_records_say_why() {
        assert_eq!(Feedback::parse(b"[1]", 0), Err(FeedbackError::NotObject));
        assert_eq!(Feedback::parse(b"{}", 0), Err(FeedbackError::NoType));
        assert_eq!(
            Feedback::parse(br#"{"From":"+1 555","Body":"STOP"}"#, 0),
            Err(FeedbackError::BadPhone)
        );
        assert_eq!(
            Feedback::parse(br#"{"type":"email_opened"}"#, 0),
            Err(FeedbackError::MissingField("user"))
        );
        assert_eq!(
            Feedback::parse(br#"{"type":"push_action","idempotency_key":"k"}"#, 0),
            Err(FeedbackError::MissingField("action"))
        );
        assert_eq!(
            Feedback::parse(
                br#"{"type":"email_opened","user":"u","time":"yesterday"}"#,
                0
            ),
            Err(FeedbackError::BadTime)
        );
    }
}

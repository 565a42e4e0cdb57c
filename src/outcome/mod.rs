//! outcomes: one JSON record per decision, and dead-letter records, written to Kafka.
//!
//! An outcome names the rule, user, channel, status and reason, the masked
//! recipient and the timings of every stage; never a phone number, token or
//! card number in clear.

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub mod json;
mod producer;
pub mod redact;
pub mod sms;
pub use producer::{KafkaWriter, WriteHealth};

/// What became of one (rule, channel) decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Sent,
    Suppressed,
    Failed,
    /// Held for the end of quiet hours; a later outcome with the same
    /// idempotency key tells how it ended.
    Held,
}

impl Status {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Suppressed => "suppressed",
            Status::Failed => "failed",
            Status::Held => "held",
        }
    }

    /// Index into per-status counter arrays: sent, suppressed, failed, held.
    pub fn index(self) -> usize {
        match self {
            Status::Sent => 0,
            Status::Suppressed => 1,
            Status::Failed => 2,
            Status::Held => 3,
        }
    }

    /// Every status, in [`Status::index`] order.
    pub const ALL: [Status; 4] = [
        Status::Sent,
        Status::Suppressed,
        Status::Failed,
        Status::Held,
    ];
}

/// Milliseconds since the epoch at each stage; 0 where a stage was not reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub event_ms: i64,
    pub consumed_ms: i64,
    pub matched_ms: i64,
    /// Stage 2 took the intent from the intents topic (the matched time
    /// where both stages run in one process, and for a held message).
    #[serde(default)]
    pub received_ms: i64,
    /// Stage 2 began the decision, after the user's earlier ones: from
    /// `received_ms`, the time the intent queued in stage 2.
    #[serde(default)]
    pub decided_ms: i64,
    pub request_sent_ms: i64,
    pub answered_ms: i64,
}

/// Where the triggering event came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceRef {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// One decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub rule: Arc<str>,
    pub rule_version: Arc<str>,
    pub category: Arc<str>,
    pub user: Arc<str>,
    pub channel: Arc<str>,
    pub status: Status,
    /// Why it was suppressed, failed or held (`no_consent:sms`,
    /// `provider_rejected:400`, `quiet_hours:22:00-07:00 Europe/Paris`,
    /// `awaiting_delivery:push:30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reason's bounded code (`no_consent`, `stale`, `provider_rejected`),
    /// carried beside its text for metrics, tallies and the held queue, which
    /// never parse the text. Not written: `reason` starts with it.
    #[serde(skip)]
    pub reason_code: Option<&'static str>,
    pub idempotency_key: Arc<str>,
    /// The recipient, masked (`+141******71`, `token:ab12…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    /// Provider requests made.
    pub attempts: u32,
    /// The triggering event's state key (e.g. a card id), for replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Arc<str>>,
    /// The channels of a fallback chain tried before this one, with why each was passed over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hops: Vec<Hop>,
    /// With a fallback chain: the channel tried next because this one could not take the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_channel: Option<String>,
    /// For `held`: when the message is due to be sent, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_ms: Option<i64>,
    /// For a rule with a pattern: its kind, counts and the events that
    /// completed it (topic, partition, offset, time; no event fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<serde_json::Value>,
    /// For an SMS rendered: its encoding and segments (what the carrier
    /// bills), see [`sms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<sms::SmsSize>,
    /// For a message rendered: the locale of its texts, the recipient's,
    /// and whether the rule had none in the recipient's language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<LocaleUsed>,
    /// For a subscription rule: the user's parameters the match used, and
    /// the channels they chose (`{"parameters": {...}, "channels": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<serde_json::Value>,
    /// For a rule that digests. An item's outcome (`held`, `digested:<id>`, or
    /// `withdrawn`): `{"id", "closes_ms"}`. The digest's own send:
    /// `{"id", "count", "items": [intent ids], "group"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<serde_json::Value>,
    /// For a rule that runs an experiment: `{"id", "arm"}`; a control arm's
    /// decision that passed the policy chain is `suppressed`, `holdout:<id>`
    /// (it would have been sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<std::sync::Arc<serde_json::Value>>,
    /// For `sent`: the delivery status when the provider accepted it
    /// (`accepted` for push and webhooks, Twilio's `queued`); later statuses
    /// arrive as delivery records (see [`DeliveryRecord`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// A shadow rule's would-be decision: nothing was sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// Sent again although the last owner may have sent it: its request was
    /// in flight when that instance died (the channel's `on_unknown = "resend"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown_after_crash: bool,
    pub source: SourceRef,
    pub timings: Timings,
}

/// The locale a message's texts were picked in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocaleUsed {
    /// The texts' locale (`fr` for a recipient in `fr-BE`).
    pub used: String,
    /// The recipient's locale, if their profile has one that parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted: Option<String>,
    /// No texts in the recipient's language: the rule's default was used.
    pub fell_back: bool,
}

impl Outcome {
    /// Says why: the bounded `code` and the outcome's `reason` text, made once here.
    pub fn because(&mut self, code: &'static str, text: impl Into<String>) {
        self.reason_code = Some(code);
        self.reason = Some(text.into());
    }
}

/// A provider's later word on a sent message (a Twilio status callback),
/// written to the outcomes topic keyed by the message's idempotency key.
/// Callbacks may come in any order: `final` marks the statuses after which
/// nothing changes (`delivered`, `undelivered`, `failed`), and a reader keeps
/// a final one over any other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Always `delivery`, to tell these apart from decisions.
    pub record: String,
    pub channel: String,
    pub idempotency_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    /// The provider's status word (`sent`, `delivered`, `undelivered`, `failed`).
    pub delivery_status: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub at_ms: i64,
}

/// One passed-over channel of a fallback chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub channel: String,
    pub reason: String,
}

crate::reason_codes! {
    /// Why a record went to the dead-letter topic: the bounded label of
    /// `herald_dead_letters_total{reason}`, and the start of the record's
    /// `reason`.
    pub enum DeadLetterCode {
        /// A source record with no payload.
        Empty = "empty",
        /// A source record over `limits.max_event_bytes`.
        TooLarge = "too_large",
        NotJson = "not_json",
        NotObject = "not_object",
        /// A field the source's mapping requires (the user, the time).
        MissingField = "missing_field",
        /// The event time is neither RFC 3339 nor epoch milliseconds.
        BadTime = "bad_time",
        /// A pattern's state key could not be computed for the event.
        KeyError = "key_error",
        /// An intent stage 2 cannot read (another herald version?).
        BadIntent = "bad_intent",
        /// An intent of a rule no longer loaded.
        RuleRemoved = "rule_removed",
        /// A held message whose rule is no longer loaded: kept held (a copy
        /// of its record here, to re-publish to the held topic if wanted).
        HeldRuleRemoved = "held_rule_removed",
        /// A message that failed: `send_failed:<the failure's reason>`.
        SendFailed = "send_failed",
        FeedbackEmpty = "feedback_empty",
        FeedbackNotObject = "feedback_not_object",
        FeedbackNoType = "feedback_no_type",
        FeedbackMissingField = "feedback_missing_field",
        FeedbackBadPhone = "feedback_bad_phone",
        FeedbackBadTime = "feedback_bad_time",
    }
}

/// A dead letter's reason as its record spells it: the code, and for a
/// failed message what failed (`send_failed:provider_status:503`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    pub code: DeadLetterCode,
    /// What failed, for [`DeadLetterCode::SendFailed`].
    pub cause: Option<String>,
}

impl From<DeadLetterCode> for DeadLetterReason {
    fn from(code: DeadLetterCode) -> Self {
        DeadLetterReason { code, cause: None }
    }
}

impl Serialize for DeadLetterReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.cause {
            Some(cause) => s.collect_str(&format_args!("{}:{cause}", self.code)),
            None => s.serialize_str(self.code.as_str()),
        }
    }
}

/// A message herald could not process, as written to the dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    /// Human-readable detail.
    pub detail: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original key and payload, bounded.
    #[serde(flatten)]
    pub original: Original,
    /// For failed sends: the rule and channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub at_ms: i64,
}

/// The original record's key and payload in a dead letter, base64. A payload
/// longer than [`Original::PAYLOAD_LIMIT`] bytes keeps only its first bytes,
/// with its whole length and SHA-256, so a dead letter always fits under the
/// broker's default record limit (1 MiB) however large the original was.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Original {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// The payload's length in bytes, before any truncation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<usize>,
    /// Hex SHA-256 of the whole payload, to find the original in the source topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
    /// Only the first [`Original::PAYLOAD_LIMIT`] bytes are in `payload_base64`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub payload_truncated: bool,
    /// Only the first [`Original::KEY_LIMIT`] bytes are in `key_base64`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub key_truncated: bool,
    /// Card numbers in the payload were masked to their last four digits.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub card_numbers_masked: bool,
}

impl Original {
    /// Bytes of the original payload kept in a dead letter.
    pub const PAYLOAD_LIMIT: usize = 64 * 1024;
    /// Bytes of the original key kept in a dead letter.
    pub const KEY_LIMIT: usize = 1024;

    /// The bounded copy of a record's key and payload, card numbers masked
    /// ([`redact`]); the SHA-256 is of the payload as it was, to find it in
    /// the source topic.
    pub fn of(key: Option<&[u8]>, payload: Option<&[u8]>) -> Original {
        use sha2::Digest;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let kept = payload.map(|p| &p[..p.len().min(Self::PAYLOAD_LIMIT)]);
        let masked = kept.and_then(redact::card_numbers);
        Original {
            key_base64: key.map(|k| b64(&k[..k.len().min(Self::KEY_LIMIT)])),
            key_truncated: key.is_some_and(|k| k.len() > Self::KEY_LIMIT),
            payload_base64: masked.as_deref().or(kept).map(b64),
            payload_bytes: payload.map(<[u8]>::len),
            payload_sha256: payload.map(|p| hex::encode(sha2::Sha256::digest(p))),
            payload_truncated: payload.is_some_and(|p| p.len() > Self::PAYLOAD_LIMIT),
            card_numbers_masked: masked.is_some(),
        }
    }
}

/// A write that has been handed to the producer; resolves once the broker
/// has acknowledged it. It retries until it succeeds: a decision is never dropped.
pub type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A write to a given partition that resolves to its offset once the broker
/// has it (`-1` when nothing was written: a record not kept offline).
pub type Written = std::pin::Pin<Box<dyn std::future::Future<Output = i64> + Send>>;

/// A write with nothing to wait for (a record not kept offline): a future
/// of no size, so boxing it allocates nothing.
pub fn done() -> Pending {
    struct Done;
    impl std::future::Future for Done {
        type Output = ();
        fn poll(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            std::task::Poll::Ready(())
        }
    }
    Box::pin(Done)
}

/// Writes outcomes and dead letters. Each write is enqueued at once (so writes
/// keep their order) and acknowledged later: the caller stores a message's
/// offset only after all of its writes resolved.
#[derive(Clone)]
pub struct Recorder {
    sink: Sink,
    outcomes_topic: String,
    dead_letter_topic: String,
    /// In memory, another topic kept besides the dead letters.
    also_kept: Option<String>,
}

/// Where records go: Kafka, or memory (rule tests, replays, evaluation).
#[derive(Clone)]
enum Sink {
    Kafka(std::sync::Arc<KafkaWriter>),
    Memory(Kept),
}

/// Records kept in memory, in write order: (topic, key, value; `None` a tombstone).
pub type Kept = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Option<Vec<u8>>)>>>;

impl Recorder {
    /// A recorder over a Kafka writer.
    pub fn new(
        writer: std::sync::Arc<KafkaWriter>,
        outcomes_topic: String,
        dead_letter_topic: String,
    ) -> Recorder {
        Recorder {
            sink: Sink::Kafka(writer),
            outcomes_topic,
            dead_letter_topic,
            also_kept: None,
        }
    }

    /// A recorder that sends nothing and keeps only the dead letters, in
    /// memory. The analyst tools take decisions from the pipeline itself and
    /// read only the dead letters back; keeping every outcome and feedback
    /// record of a month-long replay would cost memory and the time to
    /// write them, for nothing.
    pub fn in_memory(outcomes_topic: String, dead_letter_topic: String) -> (Recorder, Kept) {
        let written = Kept::default();
        let recorder = Recorder {
            sink: Sink::Memory(std::sync::Arc::clone(&written)),
            outcomes_topic,
            dead_letter_topic,
            also_kept: None,
        };
        (recorder, written)
    }

    /// In memory, also keeps what is written to `topic`.
    pub fn keeping(mut self, topic: String) -> Recorder {
        self.also_kept = Some(topic);
        self
    }

    /// Whether a record written to `topic` is kept (always, on Kafka).
    pub fn keeps(&self, topic: &str) -> bool {
        match &self.sink {
            Sink::Kafka(_) => true,
            Sink::Memory(_) => {
                topic == self.dead_letter_topic || self.also_kept.as_deref() == Some(topic)
            }
        }
    }

    /// Writes one outcome keyed by user, so a user's outcomes stay in order.
    pub fn outcome(&self, outcome: &Outcome) -> Pending {
        if !self.keeps(&self.outcomes_topic) {
            return done();
        }
        let payload = outcome.to_json();
        self.write(
            self.outcomes_topic.clone(),
            outcome.user.to_string(),
            Some(payload),
        )
    }

    /// Writes one dead-letter record keyed by source topic and partition.
    pub fn dead_letter(&self, record: &DeadLetter) -> Pending {
        let payload = crate::util::json_bytes(record);
        let key = format!("{}/{}", record.topic, record.partition);
        self.write(self.dead_letter_topic.clone(), key, Some(payload))
    }

    /// Writes one record to any topic (consent changes, reply events).
    pub fn publish(&self, topic: &str, key: &str, payload: Vec<u8>) -> Pending {
        self.write(topic.to_string(), key.to_string(), Some(payload))
    }

    /// [`Recorder::publish`], the payload built only when it is kept.
    pub fn publish_built(
        &self,
        topic: &str,
        key: &str,
        payload: impl FnOnce() -> Vec<u8>,
    ) -> Pending {
        match self.keeps(topic) {
            true => self.publish(topic, key, payload()),
            false => done(),
        }
    }

    /// Writes a tombstone (a key without a value) to a compacted topic.
    pub fn tombstone(&self, topic: &str, key: &str) -> Pending {
        self.write(topic.to_string(), key.to_string(), None)
    }

    /// Writes one record (or a tombstone) to a given partition: intents to
    /// their user's partition, state changes to their store's partition.
    pub fn publish_to(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: Option<Vec<u8>>,
    ) -> Pending {
        self.send(topic.to_string(), Some(partition), key.to_string(), payload)
    }

    /// [`Recorder::publish_to`], resolving to the record's offset.
    pub fn publish_at(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: Option<Vec<u8>>,
    ) -> Written {
        match &self.sink {
            Sink::Kafka(writer) => {
                writer.write_at(topic.to_string(), Some(partition), key.to_string(), payload)
            }
            Sink::Memory(_) => {
                let kept = self.publish_to(topic, partition, key, payload);
                Box::pin(async move {
                    kept.await;
                    -1
                })
            }
        }
    }

    /// Whether records leave the process (false for rule tests and replays).
    pub fn is_kafka(&self) -> bool {
        matches!(self.sink, Sink::Kafka(_))
    }

    fn write(&self, topic: String, key: String, payload: Option<Vec<u8>>) -> Pending {
        self.send(topic, None, key, payload)
    }

    fn send(
        &self,
        topic: String,
        partition: Option<i32>,
        key: String,
        payload: Option<Vec<u8>>,
    ) -> Pending {
        match &self.sink {
            Sink::Kafka(writer) => writer.write(topic, partition, key, payload),
            Sink::Memory(_) if !self.keeps(&topic) => done(),
            Sink::Memory(written) => {
                written
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((topic, key, payload));
                done()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letters_reason_is_its_code_and_for_a_failed_send_what_failed() {
        let plain = DeadLetterReason::from(DeadLetterCode::NotJson);
        assert_eq!(serde_json::to_value(&plain).unwrap(), "not_json");
        let failed = DeadLetterReason {
            code: DeadLetterCode::SendFailed,
            cause: Some("provider_status:503".into()),
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            "send_failed:provider_status:503"
        );
        // Every code is its own metric label, listed once, in order.
        let labels: Vec<&str> = DeadLetterCode::ALL.iter().map(|c| c.as_str()).collect();
        let unique: std::collections::BTreeSet<&str> = labels.iter().copied().collect();
        assert_eq!(unique.len(), labels.len());
        for (i, code) in DeadLetterCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
        }
        assert_eq!(labels[0], "empty");
        assert!(labels.contains(&"feedback_bad_phone"));
    }
}

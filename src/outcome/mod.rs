//! outcomes: one JSON record per decision, and dead-letter records, written to Kafka.
//!
//! An outcome names the rule, user, channel, status and reason, the masked
//! recipient and the timings of every stage; never a phone number, token or
//! card number in clear.

use std::time::Duration;

use base64::Engine;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

/// What became of one (rule, channel) decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Sent,
    Suppressed,
    Failed,
}

impl Status {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Suppressed => "suppressed",
            Status::Failed => "failed",
        }
    }
}

/// Milliseconds since the epoch at each stage; 0 where a stage was not reached.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub event_ms: i64,
    pub consumed_ms: i64,
    pub matched_ms: i64,
    pub request_sent_ms: i64,
    pub answered_ms: i64,
}

/// Where the triggering event came from.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One decision.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub rule: String,
    pub rule_version: String,
    pub category: String,
    pub user: String,
    pub channel: String,
    pub status: Status,
    /// Why it was suppressed or failed (`no_consent:sms`, `provider_rejected:400`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub idempotency_key: String,
    /// The recipient, masked (`+141******71`, `token:ab12…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    /// Provider requests made.
    pub attempts: u32,
    pub source: SourceRef,
    pub timings: Timings,
}

/// A message herald could not process, as written to the dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Reason code (`not_json`, `too_large`, `missing_field`, `send_failed`, …).
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original key and payload, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// For failed sends: the rule and channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub at_ms: i64,
}

impl DeadLetter {
    /// Base64 of raw bytes, for the record.
    pub fn encode(bytes: Option<&[u8]>) -> Option<String> {
        bytes.map(|b| base64::engine::general_purpose::STANDARD.encode(b))
    }
}

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to {topic}: {source}")]
pub struct PublishError {
    pub topic: String,
    #[source]
    pub source: rdkafka::error::KafkaError,
}

/// Writes outcomes and dead letters, waiting for the broker's acknowledgement
/// so a decision is durable before its offset is stored.
#[derive(Clone)]
pub struct Recorder {
    producer: FutureProducer,
    outcomes_topic: String,
    dead_letter_topic: String,
}

impl Recorder {
    /// A recorder over an existing producer.
    pub fn new(
        producer: FutureProducer,
        outcomes_topic: String,
        dead_letter_topic: String,
    ) -> Recorder {
        Recorder {
            producer,
            outcomes_topic,
            dead_letter_topic,
        }
    }

    /// Writes one outcome keyed by user, so a user's outcomes stay in order.
    pub async fn outcome(&self, outcome: &Outcome) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(outcome).unwrap_or_default();
        self.write(&self.outcomes_topic, &outcome.user, &payload)
            .await
    }

    /// Writes one dead-letter record keyed by source topic and partition.
    pub async fn dead_letter(&self, record: &DeadLetter) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(record).unwrap_or_default();
        let key = format!("{}/{}", record.topic, record.partition);
        self.write(&self.dead_letter_topic, &key, &payload).await
    }

    async fn write(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), PublishError> {
        // Retried by librdkafka up to message.timeout.ms; the queue timeout only
        // bounds waiting for room in the local queue.
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(5),
            )
            .await
            .map(|_| ())
            .map_err(|(source, _)| PublishError {
                topic: topic.to_string(),
                source,
            })
    }
}

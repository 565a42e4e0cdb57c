//! Intents: what stage 1 hands to stage 2 through the intents topic — one per
//! fired rule and recipient, keyed by user, with everything stage 2 needs to
//! decide without the source event's partition.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ingest::decode::Event;

/// The triggering event, enough to decide (again) in stage 2 or at release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub source: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default)]
    pub key: Option<Arc<str>>,
    pub user: Arc<str>,
    pub time_ms: i64,
    #[serde(default)]
    pub event_type: Option<String>,
    pub fields: Map<String, Value>,
    pub consumed_ms: i64,
}

impl EventRecord {
    /// The record of an event.
    pub fn of(e: &Event) -> EventRecord {
        EventRecord {
            source: e.source.to_string(),
            partition: e.partition,
            offset: e.offset,
            key: e.key.clone(),
            user: e.user.clone(),
            time_ms: e.time_ms,
            event_type: e.event_type.clone(),
            fields: e.fields.to_map(),
            consumed_ms: e.consumed_ms,
        }
    }

    /// The event as the pipeline saw it.
    pub fn to_event(&self) -> Event {
        Event {
            source: Arc::from(self.source.as_str()),
            partition: self.partition,
            offset: self.offset,
            key: self.key.clone(),
            user: self.user.clone(),
            time_ms: self.time_ms,
            event_type: self.event_type.clone(),
            fields: self.fields.clone().into(),
            consumed_ms: self.consumed_ms,
        }
    }
}

/// What completed a rule's pattern, as stage 2 needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FiredRecord {
    /// For templates (`pattern.*`).
    pub context: Value,
    /// For the outcome record (no event fields).
    pub summary: Value,
}

/// One fired rule for one user: the unit of stage 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    /// Deterministic: source topic, partition, offset and rule (marked
    /// `timer` for a firing a timer made, after that event), so a replayed event
    /// yields the same id and the send ledger recognises it.
    pub id: String,
    pub rule: Arc<str>,
    /// The rule's version when stage 1 matched it.
    pub rule_version: Arc<str>,
    pub event: EventRecord,
    /// When stage 1 matched it, epoch ms.
    pub matched_ms: i64,
    /// Always written (`null` when none): the binary encoding is positional.
    #[serde(default)]
    pub pattern: Option<FiredRecord>,
    /// For a subscription rule: the user's values the match used (from
    /// version 0x02 on; an 0x01 intent has none).
    #[serde(default)]
    pub subscription: Option<SubscriptionUsed>,
    /// What the intent asks of stage 2 (version 0x03; a message before).
    #[serde(default, skip_serializing_if = "Purpose::is_message")]
    pub purpose: Purpose,
}

/// What an intent asks of stage 2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A message of the rule, to decide.
    #[default]
    Message,
    /// A later event that may take waiting items out of the user's digests
    /// of the rule (`digest.withdraw`).
    Withdraw,
    /// A later event that meets the goal of the rule's experiment: a
    /// conversion, if the user got (or would have got) its message.
    Goal,
}

impl Purpose {
    pub fn is_message(&self) -> bool {
        *self == Purpose::Message
    }
}

/// What a subscription rule's match used of the user's settings: recorded in
/// the outcome, and the channels they chose are the ones decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionUsed {
    /// Every parameter's value (the user's, or the rule's default).
    pub parameters: Map<String, Value>,
    /// The rule's channels the user wants it on; `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

impl Intent {
    /// The id of a rule fired by the event at (topic, partition, offset);
    /// `timer` when a timer fired it (an absence after that event, a dwell
    /// since that ping), which can happen once per event and rule.
    pub fn id_of(event: &Event, rule: &str, timer: bool) -> String {
        let (mut partition, mut offset) = (itoa::Buffer::new(), itoa::Buffer::new());
        let mut id = crate::util::slash_joined(&[
            &event.source,
            partition.format(event.partition),
            offset.format(event.offset),
            rule,
        ]);
        if timer {
            id.push_str("/timer");
        }
        id
    }
}

//! The held topic: every held message is also a record on a compacted topic,
//! keyed by its hold key, and a tombstone once it is released or replaced.
//!
//! Every instance reads the whole topic. An instance releases only the held
//! messages of users whose intents partition it owns: after a restart, or when a
//! rebalance moves the partition, the next owner adopts them from here. The
//! event's offset is committed only after its hold record is written, so a
//! held message is never lost between the two.

use crate::util::FastDashMap;
use std::sync::Arc;

use dashmap::DashSet;
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use super::held::{Held, HeldMessage};
use crate::kafka::follow::{Follower, Start};
use crate::outcome::{Hop, Outcome};
pub use crate::state::intent::EventRecord;

/// One held message as written to the held topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldRecord {
    pub key: String,
    /// The intent held (its send-ledger key with the channel).
    #[serde(default)]
    pub intent: Option<String>,
    pub release_ms: i64,
    #[serde(default)]
    pub collapse: Option<String>,
    pub rule: String,
    pub event: EventRecord,
    pub chain: Vec<String>,
    #[serde(default)]
    pub hops: Vec<Hop>,
    pub outcome: Outcome,
    #[serde(default)]
    pub unless_heard_of: Option<String>,
    /// What completed the rule's pattern, for templates at release.
    #[serde(default)]
    pub pattern_context: Option<Value>,
}

impl HeldRecord {
    /// The record of a held message. Of the event and the pattern's context
    /// it keeps only what the rule's templates read, card numbers masked
    /// (see docs/engineers/topics.md): a message held overnight does not
    /// carry the whole transaction at rest.
    pub fn of(held: &Held<HeldMessage>) -> HeldRecord {
        let m = &held.item;
        let e = &m.job.event;
        let reads = &m.job.rule().reads;
        let mut event = EventRecord::of(e);
        event.fields = reads.event.keep(&e.fields);
        crate::outcome::redact::mask_fields(&mut event.fields);
        let pattern_context = m.job.pattern.as_ref().map(|p| {
            let mut context = match &p.context {
                Value::Object(fields) => Value::Object(reads.pattern.keep(fields)),
                other => other.clone(),
            };
            crate::outcome::redact::mask_json(&mut context);
            context
        });
        HeldRecord {
            key: held.idempotency_key.clone(),
            intent: Some(m.job.intent.to_string()),
            release_ms: held.release_ms,
            collapse: held.collapse.clone(),
            rule: m.job.loaded.set.rules[m.job.rule].id.to_string(),
            event,
            chain: m.chain.clone(),
            hops: m.hops.clone(),
            outcome: m.outcome.clone(),
            unless_heard_of: m.unless_heard_of.clone(),
            pattern_context,
        }
    }
}

/// What the held topic says is held, on every instance.
pub struct HeldLog {
    pub topic: String,
    /// Held records by key, whoever holds them.
    dormant: FastDashMap<String, Arc<HeldRecord>>,
    /// Keys this instance released or replaced whose tombstone it has not
    /// read back yet: a late copy of their record must not be adopted.
    gone: DashSet<String>,
    follower: Follower,
}

impl HeldLog {
    /// A log over `topic`.
    pub fn new(topic: String, client: ClientConfig) -> HeldLog {
        HeldLog {
            dormant: FastDashMap::default(),
            gone: DashSet::new(),
            follower: Follower::new(topic.clone(), client),
            topic,
        }
    }

    /// Reads the held topic from the start until `shutdown`.
    pub async fn follow(&self, shutdown: watch::Receiver<bool>) {
        self.follower
            .run(Start::Beginning, shutdown, |m| {
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    return;
                };
                match m.payload() {
                    None => {
                        self.dormant.remove(key);
                        self.gone.remove(key);
                    }
                    Some(p) => {
                        if self.gone.contains(key) {
                            return;
                        }
                        if let Ok(record) = serde_json::from_slice::<HeldRecord>(p) {
                            self.dormant.insert(key.to_string(), Arc::new(record));
                        }
                    }
                }
            })
            .await;
    }

    /// Whether the topic was read to its end once.
    pub fn is_caught_up(&self) -> bool {
        self.follower.is_caught_up()
    }

    /// This instance released or replaced `key`: not to be adopted again.
    pub fn forget(&self, key: &str) {
        self.gone.insert(key.to_string());
        self.dormant.remove(key);
    }

    /// Held records this instance should take over: their user's partition
    /// is owned here and they are not in its queue yet.
    pub fn adoptable(
        &self,
        owns: impl Fn(&HeldRecord) -> bool,
        queued: impl Fn(&str) -> bool,
    ) -> Vec<Arc<HeldRecord>> {
        self.dormant
            .iter()
            .filter(|r| owns(r.value()) && !queued(r.key()))
            .map(|r| Arc::clone(r.value()))
            .collect()
    }
}

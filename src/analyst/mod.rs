//! analyst: running the real pipeline without a broker and without sending —
//! rules, patterns, policy and templates on a virtual clock, with providers
//! replaced by a recorder. Rule tests ([`ruletest`]) and the evaluation of one
//! event by hand ([`evaluate`]) are built on it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::config::{Config, ProviderKind};
use crate::deliver::{Address, Channel, Delivered, Message, Provider, SendFuture};
use crate::engine::{ChannelRuntime, Decision, Engine, Parts, StageContext};
use crate::feedback::FeedbackState;
use crate::ingest::Incoming;
use crate::metrics::Metrics;
use crate::outcome::Recorder;
use crate::profile::ProfileTable;
use crate::rules::{LiveRules, RuleErrors};
use crate::util::ManualClock;

pub mod diff;
pub mod evaluate;
pub mod experiment;
pub mod parallel;
pub mod recorded;
pub mod replay;
pub mod ruletest;
pub mod scan;

/// A provider that sends nothing: it answers every request as delivered.
struct Recording {
    kind: ProviderKind,
    sent: Arc<Mutex<u64>>,
}

impl Provider for Recording {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    fn send<'a>(&'a self, _message: &'a Message, _to: &'a Address) -> SendFuture<'a> {
        Box::pin(async move {
            let mut n = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            Ok(Delivered {
                delivery: None,
                provider_message_id: Some(["recorded-", itoa::Buffer::new().format(*n)].concat()),
            })
        })
    }
}

/// One decision as seen offline: the outcome record and the rendered text.
#[derive(Debug, Clone)]
pub struct Seen {
    pub outcome: Value,
    pub title: Option<String>,
    pub text: Option<String>,
}

/// The pipeline on a virtual clock, recording instead of sending.
pub struct Offline {
    pub engine: Arc<Engine>,
    /// The rules the engine runs.
    pub rules: Arc<LiveRules>,
    feedback: Arc<FeedbackState>,
    pub clock: Arc<ManualClock>,
    pub profiles: Arc<ProfileTable>,
    metrics: Arc<Metrics>,
    decisions: Mutex<tokio::sync::broadcast::Receiver<Arc<Decision>>>,
    offsets: Mutex<HashMap<String, i64>>,
    feedback_topic: String,
    dead_letter_topic: String,
    conversions_topic: String,
    written: crate::outcome::Kept,
}

impl Offline {
    /// The rules of `rules_dir`, with the channels, sources and policy of
    /// `config` (its credentials are not needed: nothing is sent).
    pub fn new(config: &Config, rules_dir: &Path) -> Result<Offline, RuleErrors> {
        Offline::with_profiles(config, rules_dir, ProfileTable::new())
    }

    /// The same over a profile table filled beforehand (a replay's, on disk,
    /// shared by its shards).
    pub fn with_profiles(
        config: &Config,
        rules_dir: &Path,
        profiles: Arc<ProfileTable>,
    ) -> Result<Offline, RuleErrors> {
        let metrics = Arc::new(Metrics::new());
        let rules = LiveRules::load(
            rules_dir.to_path_buf(),
            config.channels.keys().cloned().collect(),
            config.sources.keys().cloned().collect(),
            Arc::clone(&metrics),
            // The analyst tools report what the rules do; none is an answer.
            true,
            config.rules.default_locale.clone(),
        )?;
        Ok(Offline::with_rules(config, rules, metrics, profiles))
    }

    /// The same over rules already loaded (with their own metrics registry).
    fn with_rules(
        config: &Config,
        rules: Arc<LiveRules>,
        metrics: Arc<Metrics>,
        profiles: Arc<ProfileTable>,
    ) -> Offline {
        let sent = Arc::new(Mutex::new(0));
        let channels = config
            .channels
            .iter()
            .map(|(name, c)| {
                let provider = Arc::new(Recording {
                    kind: c.kind(),
                    sent: Arc::clone(&sent),
                });
                // The recording provider never fails: no circuit to open.
                let delivery = crate::config::Delivery {
                    breaker_failures: 0,
                    ..c.delivery()
                };
                let circuit = metrics.circuit_open.with_label_values(&[name]);
                let channel = Channel::new(name, provider, delivery, circuit);
                (name.clone(), ChannelRuntime::new(channel, &metrics))
            })
            .collect();
        let (recorder, written) = Recorder::in_memory(
            config.topics.outcomes.clone(),
            config.topics.dead_letter.clone(),
        );
        let recorder = recorder.keeping(config.topics.conversions.clone());
        let feedback = FeedbackState::offline(config.feedback.lookback.ms());
        let clock = Arc::new(ManualClock::default());
        let parts = Parts {
            context: StageContext {
                rules: Arc::clone(&rules),
                profiles: Arc::clone(&profiles),
                recorder,
                metrics: Arc::clone(&metrics),
                clock: Arc::clone(&clock) as Arc<dyn crate::util::Clock>,
                deployment: config.kafka.group_id.as_str().into(),
            },
            feedback: Arc::clone(&feedback),
            channels,
            changelogs: None,
            ledger: None,
            store: None,
        };
        let engine = Engine::new(parts, config);
        let decisions = Mutex::new(engine.watch_decisions());
        Offline {
            engine: Arc::new(engine),
            rules,
            feedback,
            clock,
            profiles,
            metrics,
            decisions,
            offsets: Mutex::new(HashMap::new()),
            feedback_topic: config.topics.feedback.clone(),
            dead_letter_topic: config.topics.dead_letter.clone(),
            conversions_topic: config.topics.conversions.clone(),
            written,
        }
    }

    /// The dead-letter records written so far (as JSON).
    pub fn dead_letters(&self) -> Vec<Value> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(topic, _, _)| *topic == self.dead_letter_topic)
            .filter_map(|(_, _, v)| v.as_deref().and_then(|b| serde_json::from_slice(b).ok()))
            .collect()
    }

    /// The conversion records written so far (as JSON), taken: each is
    /// returned once.
    pub fn take_conversions(&self) -> Vec<Value> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let (conversions, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *written)
            .into_iter()
            .partition(|(topic, _, _)| *topic == self.conversions_topic);
        *written = rest;
        conversions
            .into_iter()
            .filter_map(|(_, _, v)| v.as_deref().and_then(|b| serde_json::from_slice(b).ok()))
            .collect()
    }

    /// Adds a profile (as the profiles topic would).
    pub fn profile(&self, user: &str, json: &Value) -> bool {
        let bytes = serde_json::to_vec(json).unwrap_or_default();
        self.profiles
            .apply(Some(user.as_bytes()), Some(&bytes), &self.metrics)
    }

    /// Moves the clock to `to_ms`, firing timers and releasing held messages
    /// on the way, each at its time (one-second steps while any is waiting).
    pub async fn advance(&self, to_ms: i64) {
        loop {
            let now = crate::util::Clock::now_ms(&*self.clock);
            if !self.engine.has_pending() || now + 1000 >= to_ms {
                self.clock.set(to_ms.max(now));
                self.engine.tick().await;
                return;
            }
            self.clock.set(now + 1000);
            self.engine.tick().await;
        }
    }

    /// One event arriving on `topic` at `at_ms` (virtual time), decided at once.
    /// A feedback record also updates the feedback state, as every instance's
    /// reader of the feedback topic would.
    pub async fn event(&self, topic: &str, key: Option<&str>, payload: &[u8], at_ms: i64) {
        let offset = {
            let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
            let next = offsets.entry(topic.to_string()).or_insert(0);
            *next += 1;
            *next - 1
        };
        self.event_at(topic, key, payload, at_ms, offset).await;
    }

    /// [`Offline::event`] at a given offset of its topic: a shard of a
    /// parallel replay gives each event the offset it has in the whole input,
    /// so intents and idempotency keys are those of a sequential run.
    pub async fn event_at(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        at_ms: i64,
        offset: i64,
    ) {
        self.advance(at_ms).await;
        if topic == self.feedback_topic {
            if let Ok(record) = crate::feedback::Feedback::parse(payload, at_ms) {
                self.feedback.apply(&record, at_ms);
            }
        }
        let writes = self
            .engine
            .handle(Incoming {
                topic: topic.to_string(),
                partition: 0,
                offset,
                key: key.map(|k| k.as_bytes().to_vec()),
                payload: Some(payload.to_vec()),
                timestamp_ms: Some(at_ms),
                consumed_ms: at_ms,
            })
            .await;
        futures::future::join_all(writes).await;
    }

    /// The decisions made since the last call, in order.
    pub fn take(&self) -> Vec<Seen> {
        self.take_decisions()
            .into_iter()
            .map(|d| Seen {
                outcome: serde_json::to_value(&d.outcome).unwrap_or(Value::Null),
                title: d.title.clone(),
                text: d.text.clone(),
            })
            .collect()
    }

    /// The decisions made since the last call, in order, as the pipeline made them.
    pub fn take_decisions(&self) -> Vec<Arc<crate::engine::Decision>> {
        let mut rx = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        while let Ok(d) = rx.try_recv() {
            out.push(d);
        }
        out
    }

    /// The dead-letter reasons counted so far.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

pub use crate::kafka::follow::{read_back, Read, ReadFrom};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[tokio::test]
    async fn a_capped_message_names_its_masked_recipient_and_key_and_is_not_rendered() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("config/herald.toml")).unwrap();
        let config = Config::parse(&text).unwrap();
        let offline = Offline::new(&config, &root.join("rules")).unwrap();
        assert!(offline.profile(
            "u-1",
            &json!({
                "push_tokens": [{ "token": "tok-4f1c9a7e2b", "platform": "android" }],
                "consent": { "push": true },
                "preferences": { "marketing": true },
                "time_zone": "UTC"
            })
        ));
        for at in ["2026-07-01T12:00:00Z", "2026-07-01T12:10:00Z"] {
            let coffee = json!({
                "user_id": "u-1", "ts": ms(at), "card_last4": "4242", "merchant": "Blue Bottle",
                "amount": 4.5, "currency": "USD", "status": "approved", "category": "coffee"
            });
            let bytes = serde_json::to_vec(&coffee).unwrap();
            offline
                .event("transactions", Some("card-1"), &bytes, ms(at))
                .await;
        }
        let seen: Vec<Seen> = offline
            .take()
            .into_iter()
            .filter(|s| s.outcome["rule"] == "coffee-offer")
            .collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let (first, capped) = (&seen[0].outcome, &seen[1].outcome);
        assert_eq!(first["status"], "sent");
        assert_eq!(capped["status"], "suppressed");
        assert_eq!(capped["reason"], "cap:marketing:1/hour");
        // The address was found before the cap stopped it: the outcome says
        // whom it was for (masked) and under which key, as a sent one does.
        assert_eq!(capped["recipient"], first["recipient"]);
        let recipient = capped["recipient"].as_str().unwrap();
        assert!(!recipient.contains("4f1c9a7e2b"), "masked: {recipient}");
        let key = capped["idempotency_key"].as_str().unwrap();
        assert_eq!(key.len(), 32, "{key}");
        assert_ne!(capped["idempotency_key"], first["idempotency_key"]);
        assert!(seen[0].text.is_some());
        assert_eq!(seen[1].text, None, "a capped message is not rendered");
    }
}

//! engine: the per-event path — decode, match, policy, render, deliver, record — for one message.
//!
//! [`Pipeline::handle`] returns only when every decision for the message is
//! final and recorded (or the message is dead-lettered), so the caller may then
//! store its offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use sha2::{Digest, Sha256};
use tracing::{trace, warn};

use crate::admin::Metrics;
use crate::config::{Config, ProviderKind, SourceConfig};
use crate::deliver::{send_with_retry, Address, Channel, Message, SendError};
use crate::ingest::decode::{decode, Event, Origin};
use crate::outcome::{DeadLetter, Outcome, Pending, Recorder, SourceRef, Status, Timings};
use crate::policy::{address, Policy, Subject, Suppression};
use crate::profile::ProfileTable;
use crate::render::RuleScope;
use crate::rules::{LiveRules, Rule, Verdict};
use crate::util::now_ms;

mod dedup;
pub use dedup::RecentSends;

/// A Kafka message handed to the pipeline, owned.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub consumed_ms: i64,
}

/// A decision with the rendered text, for watchers in the same process (the
/// demo prints them). Not written anywhere: outcomes never carry message text.
#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    pub title: Option<String>,
    pub text: Option<String>,
}

/// One (rule, channel) decision and what must be written for it.
struct Decided {
    outcome: Outcome,
    message: Option<Message>,
    dead_letter: Option<DeadLetter>,
}

impl Decided {
    fn new(outcome: Outcome, message: Option<Message>, dead_letter: Option<DeadLetter>) -> Decided {
        Decided {
            outcome,
            message,
            dead_letter,
        }
    }
}

/// A channel with its metric handles, made once.
pub struct ChannelRuntime {
    pub channel: Channel,
    sent: IntCounter,
    suppressed: IntCounter,
    failed: IntCounter,
    retries: IntCounter,
    latency: prometheus::Histogram,
}

impl ChannelRuntime {
    /// Wraps a channel and makes its metric handles.
    pub fn new(channel: Channel, metrics: &Metrics) -> ChannelRuntime {
        let name = channel.name.clone();
        ChannelRuntime {
            sent: metrics.decisions.with_label_values(&[&name, "sent"]),
            suppressed: metrics.decisions.with_label_values(&[&name, "suppressed"]),
            failed: metrics.decisions.with_label_values(&[&name, "failed"]),
            retries: metrics.retries.with_label_values(&[&name]),
            latency: metrics.provider_latency.with_label_values(&[&name]),
            channel,
        }
    }
}

/// Everything the per-event path needs, shared by all lanes.
pub struct Pipeline {
    pub rules: Arc<LiveRules>,
    pub profiles: Arc<ProfileTable>,
    pub channels: HashMap<String, ChannelRuntime>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Source topic → (interned name, field mapping, consumed counter).
    pub sources: HashMap<String, (Arc<str>, SourceConfig, IntCounter)>,
    pub max_event_bytes: usize,
    pub recent: RecentSends,
    pub policy: Policy,
    suppression_counters: HashMap<&'static str, IntCounter>,
    decisions: tokio::sync::broadcast::Sender<Arc<Decision>>,
}

impl Pipeline {
    /// Assembles a pipeline.
    pub fn new(
        rules: Arc<LiveRules>,
        profiles: Arc<ProfileTable>,
        channels: HashMap<String, ChannelRuntime>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        config: &Config,
    ) -> Pipeline {
        let sources = config
            .sources
            .iter()
            .map(|(topic, mapping)| {
                let counter = metrics.events_consumed.with_label_values(&[topic]);
                (
                    topic.clone(),
                    (Arc::from(topic.as_str()), mapping.clone(), counter),
                )
            })
            .collect();
        let suppression_counters = Suppression::CODES
            .iter()
            .map(|code| (*code, metrics.suppressions.with_label_values(&[code])))
            .collect();
        Pipeline {
            rules,
            profiles,
            channels,
            recorder,
            metrics,
            sources,
            max_event_bytes: config.limits.max_event_bytes,
            recent: RecentSends::new(100_000, Duration::from_secs(24 * 3600)),
            policy: Policy::new(config.policy.clone()),
            suppression_counters,
            decisions: tokio::sync::broadcast::channel(4096).0,
        }
    }

    /// Handles one message: matches, decides and sends, and hands every
    /// decision (or the dead letter) to the producer. The message is final once
    /// all returned writes have resolved.
    pub async fn handle(&self, msg: Incoming) -> Vec<Pending> {
        let Some((source, mapping, consumed)) = self.sources.get(&msg.topic) else {
            return Vec::new();
        };
        consumed.inc();
        let origin = Origin {
            topic: &msg.topic,
            partition: msg.partition,
            offset: msg.offset,
            key: msg.key.as_deref(),
            timestamp_ms: msg.timestamp_ms,
        };
        let event = match decode(
            source,
            mapping,
            origin,
            msg.payload.as_deref(),
            self.max_event_bytes,
            msg.consumed_ms,
        ) {
            Ok(e) => e,
            Err(e) => {
                self.metrics
                    .dead_letters
                    .with_label_values(&[e.reason()])
                    .inc();
                trace!(topic = %msg.topic, partition = msg.partition, offset = msg.offset, reason = e.reason(), "dead letter");
                let record = DeadLetter {
                    reason: e.reason().to_string(),
                    detail: e.to_string(),
                    topic: msg.topic.clone(),
                    partition: msg.partition,
                    offset: msg.offset,
                    key_base64: DeadLetter::encode(msg.key.as_deref()),
                    payload_base64: DeadLetter::encode(msg.payload.as_deref()),
                    rule: None,
                    channel: None,
                    at_ms: now_ms(),
                };
                return vec![self.recorder.dead_letter(&record)];
            }
        };
        let loaded = self.rules.current();
        let set = &loaded.set;
        let profile = self.profiles.get(&event.user);
        let candidates = set.candidates(&event.source, &event.fields);
        if candidates.is_empty() {
            return Vec::new();
        }
        let mut matched = Vec::new();
        {
            // Built only if a candidate has a condition; dropped before any await.
            let mut scope = None;
            for i in candidates {
                let scope = match (&set.rules[i].condition, &scope) {
                    (None, _) => None,
                    (Some(_), Some(s)) => Some(s),
                    (Some(_), None) => Some(
                        &*scope.insert(set.conditions.scope(&event.fields, profile.as_deref())),
                    ),
                };
                match set.check(i, &event.fields, scope) {
                    Verdict::Match => {
                        loaded.matches[i].inc();
                        matched.push(i);
                    }
                    Verdict::NoMatch => {}
                    Verdict::Error(_) => loaded.condition_errors[i].inc(),
                }
            }
        }
        let matched_ms = now_ms();
        let mut decisions = Vec::new();
        for &i in &matched {
            let rule = &set.rules[i];
            for channel_name in &rule.channels {
                if let Some(channel) = self.channels.get(channel_name) {
                    let decided = self.decide(
                        &event,
                        rule,
                        &set.templates,
                        channel,
                        profile.as_deref(),
                        matched_ms,
                    );
                    decisions.push(async move { (i, decided.await) });
                }
            }
        }
        // Decisions for one event run concurrently; the lane waits for all of
        // them, which keeps a key's events in order.
        let mut writes = Vec::with_capacity(decisions.len() + 1);
        for (rule, decided) in futures::future::join_all(decisions).await {
            let status = match decided.outcome.status {
                Status::Sent => 0,
                Status::Suppressed => 1,
                Status::Failed => 2,
            };
            loaded.decisions[rule][status].inc();
            if let Some(record) = &decided.dead_letter {
                writes.push(self.recorder.dead_letter(record));
            }
            writes.push(self.recorder.outcome(&decided.outcome));
            if self.decisions.receiver_count() > 0 {
                let (title, text) = decided
                    .message
                    .map_or((None, None), |m| (m.title, Some(m.body)));
                let _ = self.decisions.send(Arc::new(Decision {
                    outcome: decided.outcome,
                    title,
                    text,
                }));
            }
        }
        writes
    }

    /// Every decision from now on, with its text (for the demo).
    pub fn watch_decisions(&self) -> tokio::sync::broadcast::Receiver<Arc<Decision>> {
        self.decisions.subscribe()
    }

    /// One (rule, channel) decision for an event.
    async fn decide(
        &self,
        event: &Event,
        rule: &Rule,
        templates: &crate::render::Templates,
        channel: &ChannelRuntime,
        profile: Option<&crate::profile::Profile>,
        matched_ms: i64,
    ) -> Decided {
        let mut outcome = Outcome {
            rule: rule.id.clone(),
            rule_version: rule.version.clone(),
            category: rule.category.clone(),
            user: event.user.clone(),
            channel: channel.channel.name.clone(),
            status: Status::Suppressed,
            reason: None,
            idempotency_key: String::new(),
            recipient: None,
            provider_message_id: None,
            attempts: 0,
            source: SourceRef {
                topic: event.source.to_string(),
                partition: event.partition,
                offset: event.offset,
            },
            timings: Timings {
                event_ms: event.time_ms,
                consumed_ms: event.consumed_ms,
                matched_ms,
                ..Timings::default()
            },
        };
        let subject = Subject {
            rule: &rule.id,
            category: &rule.category,
            rule_policy: &rule.policy,
            event_ms: event.time_ms,
        };
        let now = now_ms();
        let admitted = self
            .policy
            .admit(profile, &subject, &channel.channel, now)
            .and_then(|p| address(p, &channel.channel, &self.profiles));
        let address = match admitted {
            Ok(a) => a,
            Err(s) => return Decided::new(self.suppress(outcome, channel, s), None, None),
        };
        outcome.recipient = Some(address.masked());
        outcome.idempotency_key = idempotency_key(rule, event, &channel.channel.name, &address);
        let message = match render(
            rule,
            templates,
            event,
            profile,
            channel,
            &outcome.idempotency_key,
        ) {
            Ok(m) => m,
            Err(detail) => {
                outcome.status = Status::Failed;
                outcome.reason = Some("render_error".into());
                channel.failed.inc();
                let record = self.failed_send_record(event, rule, channel, "render_error", detail);
                return Decided::new(outcome, None, Some(record));
            }
        };
        if !self.recent.first_time(&outcome.idempotency_key) {
            let outcome = self.suppress(outcome, channel, Suppression::Duplicate);
            return Decided::new(outcome, Some(message), None);
        }
        let reservation = match self.policy.reserve(&event.user, &subject, now) {
            Ok(r) => r,
            Err(s) => {
                self.recent.forget(&outcome.idempotency_key);
                return Decided::new(self.suppress(outcome, channel, s), Some(message), None);
            }
        };
        let attempted =
            send_with_retry(&channel.channel, &message, &address, &channel.retries).await;
        outcome.attempts = attempted.attempts;
        outcome.timings.request_sent_ms = attempted.request_sent_ms;
        outcome.timings.answered_ms = attempted.answered_ms;
        channel
            .latency
            .observe((attempted.answered_ms - attempted.request_sent_ms).max(0) as f64 / 1000.0);
        let mut dead_letter = None;
        match attempted.result {
            Ok(delivered) => {
                outcome.status = Status::Sent;
                outcome.provider_message_id = delivered.provider_message_id;
                channel.sent.inc();
                let sent = attempted.request_sent_ms;
                self.metrics
                    .event_to_send
                    .observe((sent - event.time_ms).max(0) as f64 / 1000.0);
                self.metrics
                    .consume_to_send
                    .observe((sent - event.consumed_ms).max(0) as f64 / 1000.0);
            }
            Err(e) => {
                let reason = e.reason();
                self.recent.forget(&outcome.idempotency_key);
                if let Some(r) = &reservation {
                    self.policy.release(r);
                }
                if let (SendError::Unregistered, Address::Push(token)) = (&e, &address) {
                    self.profiles.mark_token_dead(&token.token);
                }
                warn!(rule = %rule.id, channel = %channel.channel.name, %reason, attempts = attempted.attempts, "send failed");
                channel.failed.inc();
                dead_letter =
                    Some(self.failed_send_record(event, rule, channel, &reason, e.to_string()));
                outcome.status = Status::Failed;
                outcome.reason = Some(reason);
            }
        }
        Decided::new(outcome, Some(message), dead_letter)
    }

    fn suppress(
        &self,
        mut outcome: Outcome,
        channel: &ChannelRuntime,
        why: Suppression,
    ) -> Outcome {
        channel.suppressed.inc();
        if let Some(c) = self.suppression_counters.get(why.code()) {
            c.inc();
        }
        outcome.status = Status::Suppressed;
        outcome.reason = Some(why.to_string());
        outcome
    }

    fn failed_send_record(
        &self,
        event: &Event,
        rule: &Rule,
        channel: &ChannelRuntime,
        reason: &str,
        detail: String,
    ) -> DeadLetter {
        self.metrics
            .dead_letters
            .with_label_values(&["send_failed"])
            .inc();
        DeadLetter {
            reason: format!("send_failed:{reason}"),
            detail,
            topic: event.source.to_string(),
            partition: event.partition,
            offset: event.offset,
            key_base64: None,
            payload_base64: None,
            rule: Some(rule.id.clone()),
            channel: Some(channel.channel.name.clone()),
            at_ms: now_ms(),
        }
    }
}

/// Renders the rule's templates for a channel: push gets title and body, other
/// channels the SMS text (falling back to the body).
fn render(
    rule: &Rule,
    templates: &crate::render::Templates,
    event: &Event,
    profile: Option<&crate::profile::Profile>,
    channel: &ChannelRuntime,
    idempotency_key: &str,
) -> Result<Message, String> {
    let scope = RuleScope {
        id: &rule.id,
        category: &rule.category,
        description: &rule.description,
    };
    let part = |name: &str| {
        templates
            .render(
                &format!("{}/{name}", rule.id),
                &event.fields,
                profile,
                &scope,
            )
            .map_err(|e| format!("template.{name}: {e}"))
    };
    let push = channel.channel.provider.kind() == ProviderKind::Fcm;
    let body_part = match (push, rule.has_body, rule.has_text) {
        (true, true, _) | (false, true, false) => "body",
        _ => "text",
    };
    let title = if rule.has_title {
        Some(part("title")?)
    } else {
        None
    };
    Ok(Message {
        rule_id: rule.id.clone(),
        category: rule.category.clone(),
        priority: rule.priority,
        title,
        body: part(body_part)?,
        collapse_key: rule.collapse_key.clone(),
        ttl_seconds: rule.ttl_seconds,
        idempotency_key: idempotency_key.to_string(),
        // The event time travels with the message so the app (and the
        // stand-in provider) can tell how fresh it is.
        data: BTreeMap::from([("event_ms".to_string(), event.time_ms.to_string())]),
        user: event.user.clone(),
    })
}

/// Stable per (rule, triggering event, channel, recipient): a re-delivered
/// event yields the same key.
fn idempotency_key(rule: &Rule, event: &Event, channel: &str, to: &Address) -> String {
    let recipient = match to {
        Address::Push(t) => t.token.as_str(),
        Address::Phone(p) => p.as_str(),
        Address::User(u) => u.as_str(),
    };
    let mut h = Sha256::new();
    for part in [rule.id.as_str(), &event.source, channel, recipient] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(event.partition.to_be_bytes());
    h.update(event.offset.to_be_bytes());
    hex::encode(&h.finalize()[..16])
}

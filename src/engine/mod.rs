//! engine: the per-event path — decode, match, policy, render, deliver, record — for one message.
//!
//! [`Pipeline::handle`] returns only when every decision for the message is
//! final and recorded (or the message is dead-lettered), so the caller may then
//! store its offset.

use crate::util::FastMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tracing::trace;

use crate::config::{Config, FeedbackConfig, SourceConfig, TopicsConfig};
use crate::deliver::Channel;
use crate::feedback::FeedbackState;
use crate::ingest::decode::{decode, Origin};
use crate::ingest::Incoming;
use crate::metrics::activity::Happened;
use crate::metrics::Metrics;
use crate::outcome::{DeadLetter, Outcome, Pending, Recorder};
use crate::policy::{Policy, SuppressionCode};
use crate::profile::ProfileTable;
use crate::rules::{LiveRules, Verdict};
use crate::state::{Changelog, Intent, LedgerEntry, LedgerStatus, SendLedger};

mod decide;
mod dedup;
mod held;
mod held_log;
mod job;
mod patterns;
mod replies;
mod stores;
pub use decide::Decided;
pub use dedup::RecentSends;
pub use held::{AlreadyHeld, Held, HeldMessage, HeldQueue};
pub use held_log::{HeldLog, HeldRecord};
pub use job::Job;

/// A decision with the rendered text, for watchers in the same process (the
/// demo prints them). Not written anywhere: outcomes never carry message text.
#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    pub title: Option<String>,
    pub text: Option<String>,
}

/// A channel with its metric handles, made once.
pub struct ChannelRuntime {
    pub channel: Channel,
    sent: IntCounter,
    suppressed: IntCounter,
    failed: IntCounter,
    held: IntCounter,
    retries: IntCounter,
    latency: prometheus::Histogram,
}

impl ChannelRuntime {
    /// Counts one decision on this channel in `herald_decisions_total`.
    fn count(&self, status: crate::outcome::Status) {
        use crate::outcome::Status;
        match status {
            Status::Sent => &self.sent,
            Status::Suppressed => &self.suppressed,
            Status::Failed => &self.failed,
            Status::Held => &self.held,
        }
        .inc();
    }

    /// Wraps a channel and makes its metric handles.
    pub fn new(channel: Channel, metrics: &Metrics) -> ChannelRuntime {
        let name = channel.name.clone();
        ChannelRuntime {
            sent: metrics.decisions.with_label_values(&[&name, "sent"]),
            suppressed: metrics.decisions.with_label_values(&[&name, "suppressed"]),
            failed: metrics.decisions.with_label_values(&[&name, "failed"]),
            held: metrics.decisions.with_label_values(&[&name, "held"]),
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
    pub channels: FastMap<String, ChannelRuntime>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Source topic → (interned name, field mapping, consumed counter).
    pub sources: FastMap<String, (Arc<str>, SourceConfig, IntCounter)>,
    pub max_event_bytes: usize,
    pub recent: RecentSends,
    pub policy: Policy,
    /// Engagement, opt-outs and recent sends, fed by the feedback topic.
    pub feedback: Arc<FeedbackState>,
    feedback_config: FeedbackConfig,
    topics: TopicsConfig,
    held: HeldQueue<HeldMessage>,
    /// The durable copy of held messages, shared by all instances.
    pub held_log: HeldLog,
    /// Per (rule, key) state of rules with a pattern.
    pub patterns: crate::patterns::PatternStore,
    /// The time decisions are made at (the wall clock in service).
    pub clock: Arc<dyn crate::util::Clock>,
    /// `herald_suppressions_total{reason}`, by [`Suppression::code_index`].
    suppression_counters: Vec<IntCounter>,
    decisions: tokio::sync::broadcast::Sender<Arc<Decision>>,
    /// The topic between stage 1 and stage 2; `None` offline, where both
    /// stages run in one process with no broker.
    pub intents_topic: Option<String>,
    /// Every stage-2 decision by intent and channel, per intents partition.
    pub ledger: SendLedger,
    /// Stage-1 state changes, one changelog per source topic (none offline).
    pub pattern_changelogs: FastMap<String, Arc<Changelog>>,
}

impl Pipeline {
    /// Assembles a pipeline.
    pub fn new(
        rules: Arc<LiveRules>,
        profiles: Arc<ProfileTable>,
        feedback: Arc<FeedbackState>,
        channels: FastMap<String, ChannelRuntime>,
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
        // With Kafka behind the recorder, the two stages meet on the intents
        // topic and state goes to changelogs; without, all is in memory.
        let durable = recorder.is_kafka();
        let recorder_for_state = recorder.clone();
        let reader = crate::kafka::profile_reader_config(&config.kafka);
        let suppression_counters = SuppressionCode::ALL
            .iter()
            .map(|code| metrics.suppressions.with_label_values(&[code.as_str()]))
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
            feedback,
            feedback_config: config.feedback.clone(),
            topics: config.topics.clone(),
            held: HeldQueue::default(),
            held_log: HeldLog::new(
                config.topics.held.clone(),
                crate::kafka::profile_reader_config(&config.kafka),
            ),
            patterns: crate::patterns::PatternStore::new(config.limits.pattern_keys_per_rule),
            clock: Arc::new(crate::util::SystemClock),
            suppression_counters,
            decisions: tokio::sync::broadcast::channel(4096).0,
            intents_topic: durable.then(|| config.intents_topic()),
            ledger: SendLedger::new(
                config.topics.intents_partitions,
                if durable {
                    Changelog::new(
                        config.ledger_changelog(),
                        recorder_for_state.clone(),
                        reader.clone(),
                    )
                } else {
                    Changelog::offline()
                },
                config.limits.ledger_entries,
            ),
            pattern_changelogs: if durable {
                config
                    .sources
                    .keys()
                    .map(|s| {
                        (
                            s.clone(),
                            Arc::new(Changelog::new(
                                config.pattern_changelog(s),
                                recorder_for_state.clone(),
                                reader.clone(),
                            )),
                        )
                    })
                    .collect()
            } else {
                FastMap::default()
            },
        }
    }

    /// Handles one message: matches, decides and sends, and hands every
    /// decision (or the dead letter) to the producer. The message is final once
    /// all returned writes have resolved.
    pub async fn handle(&self, msg: Incoming) -> Vec<Pending> {
        if msg.topic == self.topics.feedback && !self.sources.contains_key(&msg.topic) {
            return self.handle_feedback(msg).await;
        }
        if self.intents_topic.as_deref() == Some(msg.topic.as_str()) {
            return self.handle_intent(msg).await;
        }
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
            Ok(e) => Arc::new(e),
            Err(e) => {
                trace!(topic = %msg.topic, partition = msg.partition, offset = msg.offset, reason = e.reason(), "dead letter");
                return vec![self.dead_letter(&msg, e.reason(), e.to_string())];
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
        let mut fired = Vec::new();
        let mut writes = Vec::new();
        let mut changes = Vec::new();
        {
            // Built only if a candidate needs it; dropped before any await.
            let mut built = None;
            for i in candidates {
                let rule = &set.rules[i];
                let needs = rule.condition.is_some()
                    || rule
                        .pattern
                        .as_ref()
                        .is_some_and(|p| p.key.is_some() || p.has_step_conditions());
                let scope = if needs {
                    Some(&*built.get_or_insert_with(|| {
                        set.conditions.scope(&event.fields, profile.as_deref())
                    }))
                } else {
                    None
                };
                let verdict = set.check(i, &event.fields, scope);
                if let Verdict::Error(_) = verdict {
                    loaded.condition_errors[i].inc();
                }
                let Some(pattern) = &rule.pattern else {
                    if verdict == Verdict::Match {
                        self.count_match(&loaded, i);
                        matched.push(i);
                    }
                    continue;
                };
                let is_match = verdict == Verdict::Match;
                match self.observe_pattern(
                    &loaded,
                    i,
                    pattern,
                    &event,
                    is_match,
                    profile.as_deref(),
                    scope,
                    &mut changes,
                ) {
                    Ok(done) => {
                        for f in done {
                            self.count_match(&loaded, i);
                            fired.push((i, f));
                        }
                    }
                    Err(dead_letter) => writes.push(dead_letter),
                }
            }
        }
        let matched_ms = self.clock.now_ms();
        let mut jobs: Vec<Job> = matched
            .iter()
            .map(|&rule| Job {
                intent: Intent::id_of(&event, &set.rules[rule].id, false).into(),
                loaded: Arc::clone(&loaded),
                rule,
                event: Arc::clone(&event),
                profile: profile.clone(),
                matched_ms,
                pattern: None,
                release: false,
            })
            .collect();
        jobs.extend(
            fired
                .into_iter()
                .map(|(i, f)| self.fired_job(&loaded, i, f, false)),
        );
        self.hand_over(jobs, &mut writes).await;
        Self::after_writes(&mut writes, changes);
        writes
    }

    /// The end of stage 1: in service, one intent per job on the intents
    /// topic (stage 2 decides it wherever its user's partition is owned);
    /// offline, stage 2 at once, in this process.
    pub(super) async fn hand_over(&self, jobs: Vec<Job>, writes: &mut Vec<Pending>) {
        if let Some(topic) = &self.intents_topic {
            for job in &jobs {
                let intent = job.intent();
                let partition = self.ledger.partition_of(&intent.event.user);
                let payload = Some(crate::util::json_bytes(&intent));
                writes.push(self.recorder.publish_to(
                    topic,
                    partition,
                    &intent.event.user,
                    payload,
                ));
            }
            return;
        }
        self.decide_jobs(&jobs, writes).await;
    }

    /// Stage 2 for jobs: every decision chain, concurrently; the lane waits
    /// for all of them, which keeps a user's intents in order.
    async fn decide_jobs(&self, jobs: &[Job], writes: &mut Vec<Pending>) {
        let mut chains = Vec::new();
        for job in jobs {
            chains.extend(self.chains(job));
        }
        // One chain (one rule, one channel) is awaited as it is, not moved
        // into a join of one.
        let all = match <[_; 1]>::try_from(chains) {
            Ok([only]) => vec![only.await],
            Err(chains) => futures::future::join_all(chains).await,
        };
        for decided in all {
            for d in decided {
                self.record(d, writes);
            }
        }
    }

    /// Stage 2 for one record of the intents topic.
    async fn handle_intent(&self, msg: Incoming) -> Vec<Pending> {
        let intent = match msg.payload.as_deref().map(serde_json::from_slice::<Intent>) {
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                return vec![self.dead_letter(
                    &msg,
                    "bad_intent",
                    format!("intent cannot be read (written by another herald version?): {e}"),
                )]
            }
            None => {
                return vec![self.dead_letter(&msg, "bad_intent", "intent has no payload".into())]
            }
        };
        let loaded = self.rules.current();
        let Some(rule) = loaded.set.position(&intent.rule) else {
            return vec![self.dead_letter(
                &msg,
                "rule_removed",
                format!(
                    "rule `{}` fired in stage 1 but is no longer loaded",
                    intent.rule
                ),
            )];
        };
        let event = Arc::new(intent.event.to_event());
        let job = Job {
            intent: intent.id.into(),
            profile: self.profiles.get(&event.user),
            pattern: intent.pattern.map(|p| {
                Arc::new(crate::patterns::Fired {
                    event: Arc::clone(&event),
                    context: p.context,
                    summary: p.summary,
                })
            }),
            loaded,
            rule,
            event,
            matched_ms: intent.matched_ms,
            release: false,
        };
        let mut writes = Vec::new();
        self.decide_jobs(std::slice::from_ref(&job), &mut writes)
            .await;
        writes
    }

    /// The decision chains of one job: one per channel, or one fallback chain.
    fn chains<'a>(
        &'a self,
        job: &'a Job,
    ) -> Vec<impl std::future::Future<Output = Vec<Decided>> + 'a> {
        let rule = &job.loaded.set.rules[job.rule];
        if rule.fallback {
            vec![self.run_chain(job, &rule.channels, Vec::new())]
        } else {
            rule.channels
                .iter()
                .map(|channel| self.run_chain(job, std::slice::from_ref(channel), Vec::new()))
                .collect()
        }
    }

    /// Counts a decision, in this one place for every decision of a rule
    /// (per rule, per channel, on the live page), and hands its records to
    /// the producer.
    fn record(&self, mut decided: Decided, writes: &mut Vec<Pending>) {
        decided.counters[decided.outcome.status.index()].inc();
        let o = &decided.outcome;
        if let (Some(channel), false) = (self.channels.get(&*o.channel), o.shadow) {
            channel.count(o.status);
        }
        let happened = match o.status {
            crate::outcome::Status::Sent => Happened::Sent {
                latency_ms: o.timings.request_sent_ms.max(o.timings.matched_ms)
                    - o.timings.event_ms,
            },
            crate::outcome::Status::Suppressed => Happened::Suppressed {
                code: o.reason_code.unwrap_or("unknown"),
            },
            crate::outcome::Status::Failed => Happened::Failed,
            crate::outcome::Status::Held => Happened::Held,
        };
        self.metrics
            .activity
            .decided(&o.rule, happened, self.clock.now_ms());
        writes.append(&mut decided.writes);
        if let Some(key) = decided.ledger_key.take() {
            let status = match o.status {
                crate::outcome::Status::Sent if !o.shadow => LedgerStatus::Sent,
                crate::outcome::Status::Sent | crate::outcome::Status::Suppressed => {
                    LedgerStatus::Suppressed
                }
                crate::outcome::Status::Failed => LedgerStatus::Failed,
                crate::outcome::Status::Held => LedgerStatus::Held,
            };
            let entry = LedgerEntry {
                user: o.user.clone(),
                status,
                at_ms: if status == LedgerStatus::Sent {
                    o.timings.request_sent_ms
                } else {
                    self.clock.now_ms()
                },
                category: o.category.clone(),
                rule: o.rule.clone(),
                idempotency_key: o.idempotency_key.clone(),
            };
            writes.extend(self.ledger.record(&key, entry));
        }
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

    /// Counts a match (or a pattern firing) of rule `i`.
    fn count_match(&self, loaded: &crate::rules::Loaded, i: usize) {
        loaded.matches[i].inc();
        self.metrics
            .activity
            .matched(&loaded.set.rules[i].id, self.clock.now_ms());
    }

    /// Dead-letters a message that cannot be used, with its reason.
    fn dead_letter(&self, msg: &Incoming, reason: &str, detail: String) -> Pending {
        self.metrics.dead_letters.with_label_values(&[reason]).inc();
        self.recorder.dead_letter(&DeadLetter {
            reason: reason.to_string(),
            detail,
            topic: msg.topic.clone(),
            partition: msg.partition,
            offset: msg.offset,
            original: crate::outcome::Original::of(msg.key.as_deref(), msg.payload.as_deref()),
            rule: None,
            channel: None,
            at_ms: self.clock.now_ms(),
        })
    }

    /// Every decision from now on, with its text (for the demo).
    pub fn watch_decisions(&self) -> tokio::sync::broadcast::Receiver<Arc<Decision>> {
        self.decisions.subscribe()
    }
}

/// The engine is what ingest hands each consumed record to.
impl crate::ingest::Handler for Pipeline {
    fn handle(&self, m: Incoming) -> impl std::future::Future<Output = Vec<Pending>> + Send {
        Pipeline::handle(self, m)
    }
}

//! Stage 2: an intent decided for each of its rule's channels — the send ledger, the policy chain, rendering, the send — recorded, and held when deferred.
//!
//! Stage 2 owns every user of its intents partitions. Its state: the send
//! ledger (every intent and channel decided, with its changelog), the caps'
//! send history it restores, and the messages held until later (the held
//! topic is their durable copy).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use super::held::{Held, HeldMessage, HeldQueue};
use super::held_log::HeldLog;
use super::job::Job;
use super::order::{Gate, UserSlots};
use super::{ChannelRuntime, Decision, StageContext};
use crate::config::{Config, FeedbackConfig};
use crate::deliver::Message;
use crate::feedback::FeedbackState;
use crate::ingest::{ConsumerHealth, Incoming, RestoreFailed};
use crate::metrics::activity::Happened;
use crate::metrics::StageEvent;
use crate::outcome::{DeadLetter, DeadLetterCode, Hop, Outcome, Pending, Status};
use crate::policy::{FrequencyCaps, Policy, Suppression, SuppressionCode};
use crate::rules::Loaded;
use crate::state::intent::Purpose;
use crate::state::{
    Changelog, Kept, LedgerEntry, LedgerStatus, Partitioning, SendLedger, StateTable,
};
use crate::util::FastMap;

/// How long a restore waits for a broker that stops answering.
const RESTORE_PATIENCE: Duration = Duration::from_secs(30);

/// One (rule, channel) decision and what must be written for it.
pub struct Decided {
    /// Boxed: a decision is moved many times on its way (out of its future,
    /// into its chain's list, into the record), and the outcome is half of it.
    pub outcome: Box<Outcome>,
    pub message: Option<Message>,
    pub dead_letter: Option<DeadLetter>,
    /// The rules the decision was made with, and its rule's place there
    /// (for its counters).
    loaded: Arc<Loaded>,
    rule: usize,
    /// The reason code of a suppressed decision.
    pub(super) suppression: Option<SuppressionCode>,
    /// A request went to the provider (its answer is timed).
    pub(super) requested: bool,
    /// A fallback chain may try its next channel after this decision.
    pub(super) may_hop: bool,
    /// Deferred: hold the message until then, epoch ms.
    pub(super) hold_until: Option<i64>,
    /// What the decision is to a digest, and the digest an item goes to.
    pub(super) digest_role: crate::policy::DigestRole,
    pub(super) digest_key: Option<super::job::DigestKey>,
    /// The chain said to collect it into its digest.
    pub(super) collect: bool,
    /// Writes besides the outcome and dead letter (the held topic).
    pub writes: Vec<Pending>,
    /// The send-ledger key to record this decision under; `None` for a
    /// redelivery the ledger already knew.
    pub ledger_key: Option<String>,
    /// What the ledger held for `ledger_key`, once the decision read it
    /// (the entry it records replaces it on disk).
    pub(super) ledger_before: crate::state::Replacing,
    /// Its key in the sends running here, from its `attempted` entry until
    /// the decision is recorded.
    pub(super) sending: Option<super::order::SendingKey>,
}

impl Decided {
    /// A decision not yet made, recorded under `ledger_key`.
    pub(super) fn new(job: &Job, outcome: Outcome, ledger_key: String) -> Decided {
        Decided {
            outcome: Box::new(outcome),
            message: None,
            dead_letter: None,
            loaded: Arc::clone(&job.loaded),
            rule: job.rule,
            suppression: None,
            requested: false,
            may_hop: false,
            hold_until: None,
            digest_role: crate::policy::DigestRole::None,
            digest_key: None,
            collect: false,
            writes: Vec::new(),
            ledger_key: Some(ledger_key),
            ledger_before: crate::state::Replacing::Unread,
            sending: None,
        }
    }
}

/// Stage 2.
pub struct Decider {
    pub(super) cx: StageContext,
    pub(super) channels: Arc<FastMap<String, ChannelRuntime>>,
    pub(super) policy: Policy,
    /// Engagement, opt-outs and recent sends, fed by the feedback topic.
    pub(super) feedback: Arc<FeedbackState>,
    pub(super) feedback_config: FeedbackConfig,
    /// Where every instance learns of a send (`herald_sent`) and of a STOP.
    pub(super) feedback_topic: String,
    /// Where experiments' conversions are written.
    pub(super) conversions_topic: String,
    pub(super) held: HeldQueue<HeldMessage>,
    /// The durable copy of held messages, shared by all instances.
    pub(super) held_log: Arc<HeldLog>,
    /// Held messages whose rule is not loaded, by hold key → rule: kept held,
    /// reported once, taken up again when the rule is back.
    pub(super) orphans: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Held while a digest is read and written again (an item, a
    /// withdrawal) and while due messages are taken for release: an item
    /// never joins a digest whose release has begun.
    pub(super) digesting: std::sync::Mutex<()>,
    /// Every decision by intent and channel, per intents partition.
    pub(super) ledger: Arc<SendLedger>,
    /// The intents topic, whose partitions say which users this instance
    /// decides for; `None` offline (all of them).
    pub(super) intents_topic: Option<String>,
    /// `herald_suppressions_total{reason}`, by [`Suppression::code_index`].
    pub(super) suppression_counters: Vec<IntCounter>,
    decisions: tokio::sync::broadcast::Sender<Arc<Decision>>,
    /// Per user, the messages between their decision and their record.
    slots: Arc<UserSlots>,
    /// The sends running in this process, by ledger key.
    pub(super) sending: Arc<super::order::Sending>,
}

impl Decider {
    /// Stage 2 for the configured channels and policy.
    pub fn new(
        cx: StageContext,
        feedback: Arc<FeedbackState>,
        channels: Arc<FastMap<String, ChannelRuntime>>,
        intents_topic: Option<String>,
        ledger_table: Option<crate::store::Table>,
        held_table: Option<crate::store::Table>,
        config: &Config,
    ) -> Decider {
        let reader = crate::kafka::profile_reader_config(&config.kafka);
        // The ledger's changelog, as its table declares it (offline, none).
        let ledger = Self::ledger_table(config);
        let changelog = match ledger.changelog() {
            Some((topic, _, _)) if intents_topic.is_some() => {
                Changelog::new(topic.to_string(), cx.recorder.clone(), reader.clone())
            }
            _ => Changelog::offline(),
        };
        let ledger = Arc::new(SendLedger::new(
            config.topics.intents_partitions,
            changelog,
            ledger_table,
        ));
        // On disk, the caps hold a bounded cache of users' histories in
        // front of the ledger; offline, every history in memory.
        let caps = match ledger.is_on_disk() {
            true => {
                let source = Arc::clone(&ledger);
                Arc::new(FrequencyCaps::cached(
                    config.state.caps_cache,
                    Arc::new(move |user: &str, since| source.sends_of(user, since)),
                ))
            }
            false => Arc::new(FrequencyCaps::default()),
        };
        let partitions = Arc::clone(&ledger);
        let held_log = HeldLog::new(
            config.topics.held.clone(),
            &config.kafka.group_id,
            reader,
            move |user| partitions.partition_of(user),
        );
        let held_log = match held_table {
            Some(table) => held_log.on_disk(table),
            None => held_log,
        };
        let suppression_counters = SuppressionCode::ALL
            .iter()
            .map(|code| cx.metrics.suppressions.with_label_values(&[code.as_str()]))
            .collect();
        Decider {
            channels,
            policy: Policy::with_caps(config.policy.clone(), caps),
            feedback,
            feedback_config: config.feedback.clone(),
            feedback_topic: config.topics.feedback.clone(),
            conversions_topic: config.topics.conversions.clone(),
            held: HeldQueue::default(),
            held_log: Arc::new(held_log),
            orphans: Default::default(),
            digesting: std::sync::Mutex::new(()),
            ledger,
            intents_topic,
            suppression_counters,
            decisions: tokio::sync::broadcast::channel(4096).0,
            slots: Arc::new(UserSlots::new(config.limits.sends_per_user)),
            sending: Arc::default(),
            cx,
        }
    }

    /// Stage 2's state: the send ledger, the caps' send history rebuilt from
    /// it, and the messages held for later.
    pub fn tables(config: &Config) -> Vec<StateTable> {
        vec![
            Self::ledger_table(config),
            StateTable {
                name: "frequency caps",
                stage: "2",
                key: "user",
                partitioning: Partitioning::IntentsPartition,
                kept: Kept::DerivedFrom("send ledger"),
                bound: "512 sends per user; a week; state.caps_cache users in memory",
            },
            StateTable {
                name: "held messages",
                stage: "2",
                key: "hold key",
                partitioning: Partitioning::IntentsPartition,
                kept: Kept::Topic(config.topics.held.clone()),
                bound: "one per idempotency key; the newest per collapse key; on disk, those due within a minute in memory",
            },
        ]
    }

    /// The send ledger: every decision by intent and channel.
    fn ledger_table(config: &Config) -> StateTable {
        StateTable {
            name: "send ledger",
            stage: "2",
            key: "intent id and channel",
            partitioning: Partitioning::IntentsPartition,
            kept: Kept::Changelog {
                topic: config.ledger_changelog(),
                // Entries matter for a week (the longest cap window):
                // compacted, and deleted after eight days.
                cleanup: "compact,delete",
                retention_ms: Some(crate::state::ledger::HORIZON_MS),
            },
            bound: "eight days, on disk",
        }
    }

    /// The intents partition of a user.
    pub fn partition_of(&self, user: &str) -> i32 {
        self.ledger.partition_of(user)
    }

    /// Every decision from now on, with its text (for the demo).
    pub fn watch_decisions(&self) -> tokio::sync::broadcast::Receiver<Arc<Decision>> {
        self.decisions.subscribe()
    }

    /// Stage 2 for jobs: every decision chain, concurrently; the caller
    /// waits for all of them (offline, where a lane's jobs are decided whole
    /// one after another, so a rule test or replay is deterministic).
    pub(super) async fn decide_jobs(&self, jobs: &[Job], writes: &mut Vec<Pending>) {
        for job in jobs {
            let gates: Vec<Gate> = (0..self.chain_count(job)).map(|_| Gate::none()).collect();
            self.decide_job(job, &gates, writes).await;
        }
    }

    /// One job's decision chains, concurrently, each opening its gate once
    /// the user's next decision may begin; their records into `writes`.
    async fn decide_job(&self, job: &Job, gates: &[Gate], writes: &mut Vec<Pending>) {
        match job.purpose {
            Purpose::Message => {}
            Purpose::Withdraw => {
                self.withdraw(job, writes);
                gates.iter().for_each(Gate::open);
                return;
            }
            Purpose::Goal => {
                self.convert(job, writes);
                gates.iter().for_each(Gate::open);
                return;
            }
        }
        // One chain (one rule, one channel: the common case) is awaited
        // where it is made, not put in a list and joined: a chain's future
        // is large, and this one's state then holds it once, not twice.
        let all = match (job.channels(), job.rule().fallback) {
            (channels, true) => vec![self.owned_chain(job, channels, &gates[0]).await],
            (Cow::Borrowed([only]), false) => {
                let only = Cow::Borrowed(std::slice::from_ref(only));
                vec![self.owned_chain(job, only, &gates[0]).await]
            }
            _ => futures::future::join_all(self.chains(job, gates)).await,
        };
        for decided in all {
            for d in decided {
                self.record(d, writes);
            }
        }
    }

    /// Stage 2 for one record of the intents topic: decided in order with
    /// the user's earlier intents, then sent and recorded while the lane
    /// goes on (see `order.rs`). The returned write resolves once the
    /// decision and all its records are written.
    pub async fn handle_intent(self: &Arc<Self>, msg: Incoming) -> Vec<Pending> {
        let job = match self.job_of(&msg) {
            Ok(job) => job,
            Err(dead_letter) => return vec![dead_letter],
        };
        let slot = self.slots.acquire(&job.event.user).await;
        let (gates, opened): (Vec<Gate>, Vec<_>) =
            (0..self.chain_count(&job)).map(|_| Gate::pair()).unzip();
        let decider = Arc::clone(self);
        let mut decision = Box::pin(async move {
            let mut writes = Vec::new();
            decider.decide_job(&job, &gates, &mut writes).await;
            drop(slot);
            writes
        });
        // Decided here, in the lane, up to every gate; then the rest (the
        // broker's acknowledgement, the request, the records) goes on by
        // itself while the lane takes its next record. A decision with no
        // request (suppressed, held) is over at once: its records are
        // awaited as any other record's.
        let all_open = futures::future::join_all(opened);
        tokio::select! {
            biased;
            writes = &mut decision => return writes,
            _ = all_open => {}
        }
        let rest = tokio::spawn(async move {
            futures::future::join_all(decision.await).await;
        });
        vec![Box::pin(async move {
            if let Err(e) = rest.await {
                tracing::error!(error = %e, "an intent's decision did not finish");
            }
        })]
    }

    /// The job an intent record asks for, or the dead letter saying why it
    /// cannot be decided.
    fn job_of(&self, msg: &Incoming) -> Result<Job, Pending> {
        let intent = match msg
            .payload
            .as_deref()
            .map(crate::state::wire::decode_intent)
        {
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                return Err(self.cx.dead_letter(
                    msg,
                    DeadLetterCode::BadIntent,
                    format!("intent cannot be read: {e}"),
                ))
            }
            None => {
                return Err(self.cx.dead_letter(
                    msg,
                    DeadLetterCode::BadIntent,
                    "intent has no payload".into(),
                ))
            }
        };
        let loaded = self.cx.rules.current();
        let Some(rule) = loaded.set.position(&intent.rule) else {
            return Err(self.cx.dead_letter(
                msg,
                DeadLetterCode::RuleRemoved,
                format!(
                    "rule `{}` fired in stage 1 but is no longer loaded",
                    intent.rule
                ),
            ));
        };
        let event = Arc::new(intent.event.to_event());
        let profile = self.cx.profiles.get(&event.user);
        let pattern = intent.pattern.map(|p| {
            Arc::new(crate::patterns::Fired {
                event: Arc::clone(&event),
                context: p.context,
                summary: p.summary,
            })
        });
        Ok(Job {
            received_ms: msg.consumed_ms,
            pattern,
            subscription: intent.subscription.map(Arc::new),
            purpose: intent.purpose,
            ..Job::matched(
                intent.id.into(),
                &loaded,
                rule,
                event,
                profile,
                intent.matched_ms,
            )
        })
    }

    /// How many decision chains a job has: one per channel, or one
    /// fallback chain.
    fn chain_count(&self, job: &Job) -> usize {
        if job.rule().fallback {
            1
        } else {
            job.channels().len()
        }
    }

    /// The decision chains of a job with more than one channel (a fallback
    /// rule's one chain is [`Self::decide_job`]'s), one per gate.
    fn chains<'a>(
        &'a self,
        job: &'a Job,
        gates: &'a [Gate],
    ) -> Vec<impl std::future::Future<Output = Vec<Decided>> + 'a> {
        match job.channels() {
            // The rule's own channels: each chain borrows its one channel.
            Cow::Borrowed(channels) => channels
                .iter()
                .zip(gates)
                .map(|(channel, gate)| {
                    self.owned_chain(job, Cow::Borrowed(std::slice::from_ref(channel)), gate)
                })
                .collect(),
            Cow::Owned(channels) => channels
                .into_iter()
                .zip(gates)
                .map(|(channel, gate)| self.owned_chain(job, Cow::Owned(vec![channel]), gate))
                .collect(),
        }
    }

    /// [`Self::run_chain`] over a chain it holds.
    async fn owned_chain(&self, job: &Job, chain: Cow<'_, [String]>, gate: &Gate) -> Vec<Decided> {
        self.run_chain(job, &chain, Vec::new(), gate).await
    }

    /// Counts a decision: in this one place for every decision of a rule
    /// (per rule, per channel, per reason, the provider's latency, on the
    /// live page).
    fn count(&self, d: &Decided) {
        let (o, loaded) = (&d.outcome, &d.loaded);
        loaded.decisions[d.rule][o.status.index()].inc();
        let channel = self.channels.get(&*o.channel);
        if let (Some(channel), false) = (channel, o.shadow) {
            channel.count(o.status);
        }
        if let Some(code) = d.suppression {
            self.suppression_counters[code.index()].inc();
            let rule = &loaded.set.rules[d.rule].id;
            loaded.suppressions[d.rule][code.index()]
                .get_or_init(|| {
                    let labels = [&**rule, code.as_str()];
                    self.cx.metrics.rule_suppressions.with_label_values(&labels)
                })
                .inc();
        }
        let t = &o.timings;
        let seconds = |from: i64, to: i64| (to - from).max(0) as f64 / 1000.0;
        if let (Some(channel), true) = (channel, d.requested) {
            self.cx.metrics.emit(StageEvent::ProviderAnswered {
                latency: &channel.latency,
                seconds: seconds(t.request_sent_ms, t.answered_ms),
            });
            if o.status == Status::Sent {
                self.cx.metrics.emit(StageEvent::Sent {
                    event_to_send_s: seconds(t.event_ms, t.request_sent_ms),
                    consume_to_send_s: seconds(t.consumed_ms, t.request_sent_ms),
                });
            }
        }
        let happened = match o.status {
            Status::Sent => Happened::Sent {
                latency_ms: t.request_sent_ms.max(t.matched_ms) - t.event_ms,
            },
            Status::Suppressed => Happened::Suppressed {
                code: o.reason_code.unwrap_or("unknown"),
            },
            Status::Failed => Happened::Failed,
            Status::Held => Happened::Held,
        };
        self.cx.metrics.emit(StageEvent::Decided {
            activity: &loaded.activity[d.rule],
            happened,
            at_ms: self.cx.clock.now_ms(),
        });
    }

    /// Counts a decision and hands its records to the producer.
    pub(super) fn record(&self, mut decided: Decided, writes: &mut Vec<Pending>) {
        self.count(&decided);
        let o = &decided.outcome;
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
                    self.cx.clock.now_ms()
                },
                category: o.category.clone(),
                rule: o.rule.clone(),
                idempotency_key: o.idempotency_key.clone(),
            };
            let before = std::mem::take(&mut decided.ledger_before);
            writes.extend(self.ledger.record_over(&key, entry, before));
        }
        if let Some(record) = &decided.dead_letter {
            writes.push(self.cx.recorder.dead_letter(record));
        }
        if let Some(write) = self.exposed(&decided) {
            writes.push(write);
        }
        writes.push(self.cx.recorder.outcome(&decided.outcome));
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

    /// Decides `chain` in order for one rule and event: each channel's decision,
    /// stopping at the first that is not passed over.
    ///
    /// `gate` opens at the first decision's send (see `order.rs`), or when
    /// the chain ends.
    pub(super) async fn run_chain(
        &self,
        job: &Job,
        chain: &[String],
        hops: Vec<Hop>,
        gate: &Gate,
    ) -> Vec<Decided> {
        let decided = self.run_chain_gated(job, chain, hops, gate).await;
        gate.open();
        decided
    }

    async fn run_chain_gated(
        &self,
        job: &Job,
        chain: &[String],
        mut hops: Vec<Hop>,
        gate: &Gate,
    ) -> Vec<Decided> {
        let mut decided = Vec::new();
        for (i, name) in chain.iter().enumerate() {
            let Some(channel) = self.channels.get(name) else {
                continue;
            };
            // Boxed: a decision holds much across its awaits, and a chain
            // future that held it inline would be copied whole each time it
            // moves (into the list of chains, into the join).
            let mut d = Box::pin(self.decide(job, channel, gate)).await;
            d.outcome.hops = hops.clone();
            if d.collect {
                self.held_read().await;
                if let Some(key) = d.digest_key.take() {
                    decided.push(self.collect(job, &chain[i..], &hops, key, d));
                    break;
                }
            }
            if let (Some(key), Status::Sent) = (d.digest_key.take(), d.outcome.status) {
                // The first of a window, gone at once: the rest collect.
                let opened = self.open_after_first(job, &chain[i..], &hops, key, &d.outcome);
                d.writes.extend(opened);
            }
            if let Some(release_ms) = d.hold_until {
                let held = Held {
                    release_ms,
                    idempotency_key: d.outcome.idempotency_key.to_string(),
                    // A digest's send waiting out quiet hours replaces nothing.
                    collapse: job
                        .rule()
                        .collapse_key
                        .as_ref()
                        .filter(|_| job.digest.is_none())
                        .map(|c| format!("{}\u{0}{}\u{0}{c}", job.event.user, job.rule().id)),
                    item: HeldMessage {
                        job: job.for_release(),
                        chain: chain[i..].to_vec(),
                        hops: hops.clone(),
                        outcome: (*d.outcome).clone(),
                        unless_heard_of: None,
                    },
                };
                match self.defer(held) {
                    Ok((record, replaced)) => {
                        d.writes.push(record);
                        if let Some(old) = replaced {
                            let mut gone = self.collapsed(old.item);
                            gone.writes.push(self.unhold(&old.idempotency_key));
                            decided.push(gone);
                        }
                        decided.push(d);
                    }
                    Err(_) => {
                        // Already held: the held one keeps the ledger's `held`.
                        d.hold_until = None;
                        d.ledger_key = None;
                        self.suppressed(&mut d, Suppression::Duplicate);
                        decided.push(d);
                    }
                }
                break;
            }
            let next = chain.get(i + 1);
            if let (Status::Sent, Some(next), Some(wait), false) = (
                d.outcome.status,
                next,
                job.rule().await_delivery_ms,
                d.outcome.shadow,
            ) {
                let record =
                    self.await_delivery(job, &d.outcome, &chain[i + 1..], hops, next, wait);
                d.writes.extend(record);
                decided.push(d);
                break;
            }
            let hop = d.may_hop && next.is_some();
            if hop {
                d.outcome.next_channel = next.cloned();
                hops.push(Hop {
                    channel: name.clone(),
                    reason: d.outcome.reason.clone().unwrap_or_default(),
                });
            }
            decided.push(d);
            if !hop {
                break;
            }
        }
        decided
    }

    /// After a send on a fallback chain with `await_delivery`: defers the
    /// rest of the chain, to run unless a delivery receipt arrives in time.
    fn await_delivery(
        &self,
        job: &Job,
        sent: &Outcome,
        rest: &[String],
        mut hops: Vec<Hop>,
        next: &str,
        wait_ms: i64,
    ) -> Option<Pending> {
        let what = format!("{}:{}", sent.channel, crate::util::Span(wait_ms as u64));
        hops.push(Hop {
            channel: sent.channel.to_string(),
            reason: format!("not_delivered:{what}"),
        });
        let mut outcome = sent.clone();
        outcome.channel = next.into();
        outcome.status = Status::Held;
        // Not an outcome (the held topic keeps it): no decision is counted.
        outcome.because("awaiting_delivery", format!("awaiting_delivery:{what}"));
        outcome.hops = hops.clone();
        let release_ms = self.cx.clock.now_ms() + wait_ms;
        outcome.release_ms = Some(release_ms);
        let held = Held {
            release_ms,
            idempotency_key: format!("{}/awaiting-delivery", sent.idempotency_key),
            collapse: None,
            item: HeldMessage {
                job: job.for_release(),
                chain: rest.to_vec(),
                hops,
                outcome,
                unless_heard_of: Some(sent.idempotency_key.to_string()),
            },
        };
        self.defer(held).ok().map(|(record, _)| record)
    }

    /// Starts stage 2's background tasks until `shutdown`: the held topic's
    /// reader, and the release of held messages when due.
    pub(super) fn spawn_tasks(
        self: &Arc<Self>,
        health: Arc<ConsumerHealth>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let log = Arc::clone(&self.held_log);
        let follow_shutdown = shutdown.clone();
        vec![
            tokio::spawn(async move { log.follow(follow_shutdown).await }),
            tokio::spawn(Arc::clone(self).release_held(health, shutdown)),
        ]
    }

    /// Brings the send ledger of intents partitions up to their
    /// changelog's end (the tail past its checkpoint on disk).
    pub(super) fn restore(&self, partitions: &[i32]) -> Result<(), RestoreFailed> {
        let started = Instant::now();
        let restored = self
            .ledger
            .restore(partitions, self.cx.clock.now_ms(), RESTORE_PATIENCE)
            .map_err(|e| RestoreFailed {
                store: "send ledger",
                cause: Box::new(e),
            })?;
        // Histories cached before this partition was taken away are stale.
        let ledger = &self.ledger;
        self.policy
            .caps()
            .forget_where(|user| partitions.contains(&ledger.partition_of(user)));
        self.cx.metrics.emit(StageEvent::Restored {
            store: "ledger",
            records: restored.records,
            seconds: started.elapsed().as_secs_f64(),
        });
        self.emit_ledger_size();
        info!(
            ?partitions,
            records = restored.records,
            from_checkpoint = restored.skipped,
            rebuilt = restored.rebuilt,
            unreadable = restored.unreadable,
            ms = started.elapsed().as_millis() as u64,
            "send ledger restored"
        );
        Ok(())
    }

    /// Stops deciding for an intents partition: another instance owns it.
    /// Its rows stay on disk, behind their checkpoint, for when it returns.
    pub(super) fn drop_partition(&self, partition: i32) {
        self.ledger.drop_partition(partition);
        let ledger = &self.ledger;
        self.policy
            .caps()
            .forget_where(|user| ledger.partition_of(user) == partition);
        self.emit_ledger_size();
    }

    /// Removes the ledger's entries past their horizon, hourly (a scan of
    /// the table, off the runtime's threads).
    pub(super) async fn sweep(self: &Arc<Self>) {
        let decider = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            let gone = decider.ledger.sweep(decider.cx.clock.now_ms());
            if gone > 0 {
                info!(
                    entries = gone,
                    "send-ledger entries past eight days removed"
                );
            }
        })
        .await;
        self.emit_ledger_size();
    }

    fn emit_ledger_size(&self) {
        self.cx.metrics.emit(StageEvent::LedgerSize {
            rows: self.ledger.len(),
            disk_bytes: self.ledger.disk_bytes(),
            cached_users: self.policy.caps().cached_users(),
        });
    }
}

//! engine: the stages between ingest and the providers, each a type that owns its state, and the router that hands each record to its stage.
//!
//! - [`Matcher`] (stage 1, `matcher.rs` and `patterns.rs`): decode, rule
//!   candidates, conditions, pattern state per source partition; an event
//!   in, the [`Job`]s of the rules it fired out.
//! - [`Decider`] (stage 2, `decider.rs` and `decide.rs`): the send ledger,
//!   the policy chain, rendering, the send, the outcome, and messages held
//!   for later (`held.rs`, `held_log.rs`); an intent in, decisions out.
//! - [`Replies`] (`replies.rs`): the feedback topic acted on — STOP and
//!   START, HELP, replies and push actions.
//!
//! [`Engine`] routes: a source topic's record to stage 1, whose jobs go on
//! the intents topic (in service) or straight to stage 2 (offline, where
//! both stages run in one process with in-memory stores); an intent to
//! stage 2; a feedback record to the replies. [`Engine::handle`] returns only
//! the writes that make the record final, so the caller may then store its
//! offset.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::feedback::FeedbackState;
use crate::ingest::{ConsumerHealth, Incoming, PartitionStores, RestoreFailed};
use crate::metrics::{Metrics, StageEvent};
use crate::outcome::{DeadLetter, DeadLetterCode, Outcome, Pending, Recorder};
use crate::profile::ProfileTable;
use crate::rules::LiveRules;
use crate::util::{Clock, FastMap};

mod channels;
mod decide;
mod decider;
mod dedup;
mod digest;
mod experiment;
mod held;
mod held_disk;
mod held_log;
mod holding;
mod job;
mod matcher;
mod order;
mod patterns;
mod replies;
mod stores;
pub use channels::ChannelRuntime;
pub use decider::Decider;
pub use dedup::RecentSends;
pub use held::{AlreadyHeld, Held, HeldMessage, HeldQueue};
pub use held_disk::{HeldTable, FORMAT as HELD_FORMAT};
pub use held_log::{HeldLog, HeldRecord};
pub use job::Job;
pub use matcher::{Matched, Matcher};
pub use replies::Replies;

/// A decision with the rendered text, for watchers in the same process (the
/// demo prints them). Not written anywhere: outcomes never carry message text.
#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Box<Outcome>,
    pub title: Option<String>,
    pub text: Option<String>,
}

/// What every stage reads and writes through: the rules, the profiles, the
/// producer, the metrics and the clock decisions are made at.
#[derive(Clone)]
pub struct StageContext {
    pub rules: Arc<LiveRules>,
    pub profiles: Arc<ProfileTable>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The wall clock in service; a virtual one in rule tests and replays.
    pub clock: Arc<dyn Clock>,
    /// The deployment (its `kafka.group_id`): carried by the records herald
    /// writes to topics several deployments may share (held, feedback), so
    /// that each acts only on its own.
    pub deployment: Arc<str>,
}

impl StageContext {
    /// Counts a dead letter by its reason code.
    pub(super) fn count_dead_letter(&self, reason: DeadLetterCode) {
        let reason = reason.as_str();
        self.metrics.emit(StageEvent::DeadLettered { reason });
    }

    /// Dead-letters a record that cannot be used, with its reason.
    pub(super) fn dead_letter(
        &self,
        msg: &Incoming,
        reason: DeadLetterCode,
        detail: String,
    ) -> Pending {
        self.count_dead_letter(reason);
        self.recorder.dead_letter(&DeadLetter {
            reason: reason.into(),
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
}

/// What an engine is built from.
pub struct Parts {
    pub context: StageContext,
    /// Engagement, opt-outs and recent sends, fed by the feedback topic.
    pub feedback: Arc<FeedbackState>,
    pub channels: FastMap<String, ChannelRuntime>,
    /// The source topics whose pattern state has a changelog (those that
    /// existed at start); `None` offline, where all state is in memory.
    pub changelogs: Option<BTreeSet<String>>,
    /// The send ledger's table on disk; `None` offline (in memory).
    pub ledger: Option<crate::store::Table>,
    /// The state directory, for the pattern state's copy on disk; `None`
    /// offline.
    pub store: Option<crate::store::Store>,
}

/// The router between ingest and the stages.
pub struct Engine {
    matcher: Matcher,
    decider: Arc<Decider>,
    replies: Replies,
    feedback_topic: String,
    /// The topic between stage 1 and stage 2; `None` offline.
    intents_topic: Option<String>,
    recorder: Recorder,
}

impl Engine {
    /// Builds the stages. With a Kafka recorder, the two stages meet on the
    /// intents topic and state goes to changelogs; without, all is in memory.
    pub fn new(parts: Parts, config: &Config) -> Engine {
        let Parts {
            context,
            feedback,
            channels,
            changelogs,
            ledger,
            store,
        } = parts;
        let durable = context.recorder.is_kafka();
        let intents_topic = durable.then(|| config.intents_topic());
        let channels = Arc::new(channels);
        // Held messages on disk (sealed: they carry the event's fields);
        // a table that will not open leaves them in memory, as before.
        let held = match (&store, durable) {
            (Some(store), true) => match store.sealed_table("held", held_disk::FORMAT) {
                Ok(table) => Some(table),
                Err(e) => {
                    tracing::error!(error = %e, "the held table cannot be opened; held messages are kept in memory");
                    None
                }
            },
            _ => None,
        };
        let decider = Arc::new(Decider::new(
            context.clone(),
            Arc::clone(&feedback),
            Arc::clone(&channels),
            intents_topic.clone(),
            ledger,
            held,
            config,
        ));
        let changelogs = if durable { changelogs } else { None };
        Engine {
            matcher: Matcher::new(context.clone(), changelogs.as_ref(), store.as_ref(), config),
            decider,
            replies: Replies::new(context.clone(), feedback, channels, config),
            feedback_topic: config.topics.feedback.clone(),
            intents_topic,
            recorder: context.recorder,
        }
    }

    /// Every stage's state tables, in pipeline order.
    pub fn tables(config: &Config) -> Vec<crate::state::StateTable> {
        let mut tables = Matcher::tables(config);
        tables.extend(Decider::tables(config));
        tables.extend(Replies::tables(config));
        tables
    }

    /// Handles one record: hands it to its stage. The record is final once
    /// all returned writes have resolved.
    pub async fn handle(&self, msg: Incoming) -> Vec<Pending> {
        let (mut writes, changes) = self.handle_deferring(msg).await;
        stores::after_writes(&mut writes, changes.0);
        writes
    }

    /// [`Engine::handle`], leaving the pattern-state changes to the end of
    /// the record's batch.
    async fn handle_deferring(&self, msg: Incoming) -> (Vec<Pending>, stores::StateChanges) {
        if msg.topic == self.feedback_topic && !self.matcher.reads(&msg.topic) {
            return (self.replies.handle(msg).await, Default::default());
        }
        if self.intents_topic.as_deref() == Some(msg.topic.as_str()) {
            return (self.decider.handle_intent(msg).await, Default::default());
        }
        let matched = self.matcher.observe(&msg);
        self.pass_on(matched).await
    }

    /// The end of stage 1: in service, one intent per job on the intents
    /// topic (stage 2 decides it wherever its user's partition is owned);
    /// offline, stage 2 at once, in this process. A pattern's state changes
    /// are written after the intents they caused.
    async fn hand_over(&self, matched: Matched) -> Vec<Pending> {
        let (mut writes, changes) = self.pass_on(matched).await;
        stores::after_writes(&mut writes, changes.0);
        writes
    }

    /// [`Engine::hand_over`], returning the state changes unwritten.
    async fn pass_on(&self, matched: Matched) -> (Vec<Pending>, stores::StateChanges) {
        let Matched {
            jobs,
            mut writes,
            changes,
        } = matched;
        match &self.intents_topic {
            Some(topic) => {
                for job in &jobs {
                    let intent = job.intent();
                    let user = &intent.event.user;
                    let partition = self.decider.partition_of(user);
                    let payload = Some(crate::state::wire::encode_intent(&intent));
                    writes.push(self.recorder.publish_to(topic, partition, user, payload));
                }
            }
            None if !jobs.is_empty() => self.decider.decide_jobs(&jobs, &mut writes).await,
            None => {}
        }
        (writes, stores::StateChanges(changes))
    }

    /// Fires the pattern timers due now (absences, dwell) and waits until
    /// their decisions or intents are written.
    pub async fn fire_due_patterns(&self) {
        let matched = self.matcher.due();
        if matched.jobs.is_empty() && matched.changes.is_empty() {
            return;
        }
        futures::future::join_all(self.hand_over(matched).await).await;
    }

    /// Runs what is due at the clock's time, in place of the background
    /// tasks (rule tests and replays, on a virtual clock): pattern timers,
    /// then held messages.
    pub async fn tick(&self) {
        self.fire_due_patterns().await;
        self.decider.release_due().await;
    }

    /// Whether a timer or a held message is waiting.
    pub fn has_pending(&self) -> bool {
        self.matcher.has_timers() || self.decider.holds_any()
    }

    /// Every decision from now on, with its text (for the demo).
    pub fn watch_decisions(&self) -> tokio::sync::broadcast::Receiver<Arc<Decision>> {
        self.decider.watch_decisions()
    }

    /// The replies' recent sends, read back from the tail of the outcomes
    /// topic (blocking): a HELP answered just before a crash is not answered
    /// twice.
    pub fn seed_recent_sends(
        &self,
        client: &rdkafka::ClientConfig,
        outcomes_topic: &str,
        per_partition: i64,
    ) -> Result<usize, String> {
        self.replies
            .seed_recent_sends(client, outcomes_topic, per_partition)
    }

    /// Starts the stages' background tasks until `shutdown`: the held
    /// topic's reader and the release of held messages (stage 2), the
    /// pattern timers and the sweep of expired state (both stages).
    pub fn spawn_tasks(
        self: &Arc<Self>,
        health: Arc<ConsumerHealth>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = self.decider.spawn_tasks(health, shutdown.clone());
        let engine = Arc::clone(self);
        tasks.push(tokio::spawn(
            async move { engine.run_timers(shutdown).await },
        ));
        tasks
    }

    /// Runs due timers (absences, dwell) every tick and sweeps expired state
    /// every [`patterns::SWEEP`], until `shutdown`.
    async fn run_timers(&self, mut shutdown: watch::Receiver<bool>) {
        let mut swept = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(patterns::TICK) => {}
                _ = shutdown.changed() => return,
            }
            self.fire_due_patterns().await;
            if swept.elapsed() >= patterns::SWEEP {
                swept = std::time::Instant::now();
                let mut writes = Vec::new();
                stores::after_writes(&mut writes, self.matcher.sweep());
                futures::future::join_all(writes).await;
                self.decider.sweep().await;
            }
        }
    }
}

/// The engine is what ingest hands each consumed record to.
impl crate::ingest::Handler for Engine {
    type Deferred = stores::StateChanges;

    fn handle(
        &self,
        m: Incoming,
    ) -> impl std::future::Future<Output = (Vec<Pending>, stores::StateChanges)> + Send {
        self.handle_deferring(m)
    }

    /// A batch's pattern-state changes, each key's last one only, after all
    /// the batch's intents.
    fn close_batch(&self, deferred: Vec<stores::StateChanges>, writes: &mut Vec<Pending>) {
        stores::after_writes(writes, stores::last_per_key(deferred));
    }

    fn first_topics(&self) -> Vec<String> {
        self.intents_topic.iter().cloned().collect()
    }
}

/// Each stage restores and drops the stores of its own partitions: stage 2
/// the intents topic's, stage 1 the source topics'.
impl PartitionStores for Engine {
    fn restore(&self, partitions: &[(String, i32)]) -> Result<(), RestoreFailed> {
        let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        for (topic, parts) in by_topic {
            if self.intents_topic.as_deref() == Some(topic) {
                self.decider.restore(&parts)?;
            } else {
                self.matcher.restore(topic, &parts)?;
            }
        }
        Ok(())
    }

    fn drop_partition(&self, topic: &str, partition: i32) {
        if self.intents_topic.as_deref() == Some(topic) {
            self.decider.drop_partition(partition);
        } else {
            self.matcher.drop_partition(topic, partition);
        }
    }
}

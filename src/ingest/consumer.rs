//! The source consumer: fetches from every source topic, routes each message to a
//! lane by (partition, key), and stores offsets as lanes finish.
//!
//! A lane is a tokio task that handles its messages one at a time, so a key's
//! events are handled in order while different keys proceed in parallel; it
//! takes what is queued as one batch, whose writes are awaited and whose
//! offsets are stored together.
//! Intents have lanes of their own and go ahead of source records
//! (`fetch.rs`). The lane queues are bounded: when they stay full (a
//! provider outage, a record that cannot be written), the consumer pauses
//! the partitions of that class of record and parks what it already
//! fetched, but keeps polling, so it stays in the group however long the
//! wait; it resumes once the parked messages have a place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::fetch::{partitions, Class, Fetch};
use super::offsets::OffsetTracker;
use super::{Handler, Incoming};
use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::outcome::Pending;
use crate::util::now_ms;

/// What the readiness check needs to know about the consumer.
#[derive(Default)]
pub struct ConsumerHealth {
    /// At least one partition is assigned.
    pub assigned: AtomicBool,
    /// The last broker call succeeded.
    pub broker_ok: AtomicBool,
    /// The partitions this instance owns now; held messages of a source
    /// partition are released by its owner only.
    owned: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
    /// The consumer's fatal error, once it had one: the instance must exit.
    fatal: std::sync::Mutex<Option<String>>,
    fatal_seen: tokio::sync::Notify,
    /// When shutdown must be over: every wait during shutdown (draining the
    /// lanes, the revoke callback) shares this one bound.
    deadline: std::sync::Mutex<Option<Instant>>,
    /// Why an assigned partition's state cannot be restored now (its
    /// changelog unreadable): the partition waits, and readiness says so.
    restoring: std::sync::Mutex<Option<String>>,
    /// Since when the assignment has been lost (a session that timed out,
    /// e.g. while the broker was frozen) without a new one.
    lost_since: std::sync::Mutex<Option<Instant>>,
}

/// State that belongs to partitions (pattern windows per source partition,
/// the send ledger per intents partition): restored before any record of a
/// newly assigned partition is handled, dropped when it is revoked.
pub trait PartitionStores: Send + Sync {
    /// Reads the stores of newly assigned partitions back from their
    /// changelogs, all at once. Blocking.
    fn restore(&self, partitions: &[(String, i32)]) -> Result<(), RestoreFailed>;
    /// Forgets the partition's stores: another instance owns them now.
    fn drop_partition(&self, topic: &str, partition: i32);
}

/// A store that could not be restored from its changelog, with the cause.
#[derive(Debug, thiserror::Error)]
#[error("{store}: {cause}")]
pub struct RestoreFailed {
    /// The state table, as its stage declares it (`send ledger`, …).
    pub store: &'static str,
    #[source]
    pub cause: Box<dyn std::error::Error + Send + Sync>,
}

impl ConsumerHealth {
    /// The consumer's fatal error, if it had one.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resolves with the consumer's fatal error, once it has one.
    pub async fn failed(&self) -> String {
        loop {
            let seen = self.fatal_seen.notified();
            if let Some(e) = self.fatal() {
                return e;
            }
            seen.await;
        }
    }

    /// Records why this instance cannot go on: `run` stops it and exits non-zero.
    pub fn set_fatal(&self, error: String) {
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        self.fatal_seen.notify_waiters();
    }

    /// Starts the shutdown clock: everything still to wait for shares `grace`.
    pub fn shutdown_within(&self, grace: Duration) -> Instant {
        let mut deadline = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        *deadline.get_or_insert_with(|| Instant::now() + grace)
    }

    /// How long a wait may take now: `limit`, or less once shutdown has begun.
    fn bounded(&self, limit: Duration) -> Duration {
        match *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(d) => limit.min(d.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }

    /// Whether this instance owns `topic`/`partition` now.
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(topic.to_string(), partition))
    }

    /// How long the assignment has been lost without a new one, if it is.
    pub fn lost_for(&self) -> Option<Duration> {
        self.lost_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// Marks the assignment lost from now (or found again, with `false`).
    pub fn set_lost(&self, lost: bool) {
        *self.lost_since.lock().unwrap_or_else(|p| p.into_inner()) = lost.then(Instant::now);
    }

    /// Why a partition's state cannot be restored now, if so.
    pub fn restore_problem(&self) -> Option<String> {
        self.restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_restore_problem(&self, problem: Option<String>) {
        *self.restoring.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    fn shutting_down(&self) -> bool {
        self.deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The partitions this instance owns now, as `topic[partition]`, sorted.
    pub fn owned_partitions(&self) -> Vec<String> {
        let mut parts: Vec<String> = self
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(t, p)| format!("{t}[{p}]"))
            .collect();
        parts.sort();
        parts
    }

    /// Adds newly assigned partitions; returns how many are owned now.
    fn add_owned(&self, parts: Vec<(String, i32)>) -> usize {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.extend(parts);
        owned.len()
    }

    /// How many partitions this instance owns now.
    fn owned_count(&self) -> usize {
        self.owned.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Removes revoked partitions; returns how many are owned now.
    fn remove_owned(&self, parts: &[(String, i32)]) -> usize {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        for p in parts {
            owned.remove(p);
        }
        owned.len()
    }
}

/// Consumer callbacks: before partitions are taken away, wait for their
/// in-flight messages and commit, so the next owner does not repeat them.
pub struct HeraldContext {
    pub tracker: Arc<OffsetTracker>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<ConsumerHealth>,
    pub revoke_wait: Duration,
    /// Set once the stages exist, before subscribing.
    pub stores: std::sync::OnceLock<Arc<dyn PartitionStores>>,
}

impl HeraldContext {
    /// Restores each newly assigned partition's state, retrying while its
    /// changelog cannot be read (readiness names the reason); the consumer
    /// hands out none of the partition's records meanwhile.
    fn restore(&self, partitions: &[(String, i32)]) {
        let Some(stores) = self.stores.get() else {
            return;
        };
        let mut wait = Duration::from_millis(200);
        loop {
            match stores.restore(partitions) {
                Ok(()) => break,
                Err(e) => {
                    error!(error = %e, "cannot restore the state of assigned partitions; their records wait");
                    self.health
                        .set_restore_problem(Some(format!("state cannot be restored: {e}")));
                    if self.health.shutting_down() {
                        break;
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.health.set_restore_problem(None);
    }
}

impl ClientContext for HeraldContext {
    /// Consumer lag per owned source partition, from librdkafka's statistics.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                // Before the first message of a partition librdkafka has no
                // application position; the fetch position stands in.
                let lag = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else if p.next_offset >= 0 && p.hi_offset >= 0 {
                    (p.hi_offset - p.next_offset).max(0)
                } else {
                    -1
                };
                let labels = [topic.as_str(), &partition.to_string()];
                if partition >= 0 && lag >= 0 && self.health.owns(topic, partition) {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&labels)
                        .set(lag);
                } else {
                    let _ = self.metrics.consumer_lag.remove_label_values(&labels);
                }
            }
        }
    }
}

impl ConsumerContext for HeraldContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if consumer.assignment_lost() {
                warn!("assignment lost (the group session timed out); rejoining");
                self.health.set_lost(true);
            }
            let parts = partitions(tpl);
            // No longer ours from here on: held messages stay for the next owner.
            self.health.remove_owned(&parts);
            // Lanes skip queued messages of these partitions (see `lane`), so
            // this waits only for the messages being handled right now.
            if !self
                .tracker
                .wait_idle(&parts, self.health.bounded(self.revoke_wait))
            {
                warn!(in_flight = self.tracker.in_flight(&parts), "partitions revoked with messages in flight; they will be handled again by the next owner");
            }
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                debug!(error = %e, "commit before revoke");
            }
            self.tracker.forget(&parts);
            // Fenced: from here on this instance neither reads nor writes
            // the partitions' state; the next owner restores it.
            if let Some(stores) = self.stores.get() {
                for (topic, partition) in &parts {
                    stores.drop_partition(topic, *partition);
                }
            }
        }
    }

    /// What this instance owns is kept from the callbacks' own lists, not
    /// asked of the consumer: `rd_kafka_assignment` called from the revoke
    /// that closing the consumer raises waits for ever (librdkafka#4041 is
    /// the same for the rebalance protocol), and it blocked a runtime thread
    /// at every such close (found in a hung integration run).
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let owned = match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions(tpl);
                self.restore(&parts);
                self.health.set_lost(false);
                self.health.add_owned(parts)
            }
            Rebalance::Revoke(tpl) => self.health.remove_owned(&partitions(tpl)),
            Rebalance::Error(_) => self.health.owned_count(),
        };
        self.metrics.partitions_assigned.set(owned as i64);
        self.health.assigned.store(owned > 0, Ordering::Release);
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// Consumes until `shutdown` changes, then drains the lanes (within the
/// shutdown bound), stores and commits offsets, and returns. A fatal consumer
/// error ends it early and is reported through `health`.
pub async fn consume<H: Handler>(
    consumer: Arc<StreamConsumer<HeraldContext>>,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    tracker: Arc<OffsetTracker>,
    health: Arc<ConsumerHealth>,
    limits: &LimitsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let lanes = limits.lanes;
    // Each class of record has `lanes` lanes of its own (fetch.rs).
    let mut senders = Vec::with_capacity(2 * lanes);
    let mut tasks = Vec::with_capacity(4 * lanes);
    for _ in 0..2 * lanes {
        let (tx, rx) = mpsc::channel::<Incoming>(limits.lane_queue);
        let (written_tx, written_rx) = mpsc::channel::<Handled>(limits.lane_queue);
        senders.push(tx);
        tasks.push(tokio::spawn(lane(
            rx,
            Arc::clone(&handler),
            Arc::clone(&health),
            written_tx,
            limits.lane_batch.max(1),
        )));
        tasks.push(tokio::spawn(acknowledge(
            written_rx,
            Arc::clone(&tracker),
            Arc::clone(&consumer),
        )));
    }
    let owns = |topic: &str, partition: i32| health.owns(topic, partition);
    let mut fetch = Fetch::new(
        &consumer,
        &tracker,
        &owns,
        &metrics,
        lanes,
        handler.first_topics(),
    );
    loop {
        let (first, rest) = (fetch.waiting(Class::First), fetch.waiting(Class::Rest));
        let received = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            permit = async { senders[first.unwrap_or(0)].reserve().await }, if first.is_some() => {
                let Ok(permit) = permit else { break };
                fetch.unpark(Class::First, permit);
                continue;
            }
            permit = async { senders[rest.unwrap_or(0)].reserve().await }, if rest.is_some() => {
                let Ok(permit) = permit else { break };
                fetch.unpark(Class::Rest, permit);
                continue;
            }
            m = consumer.recv() => m,
        };
        let m = match received {
            Ok(m) => m,
            Err(e) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    error!(?code, %reason, "consumer failed fatally; stopping so the instance is restarted");
                    health.set_fatal(format!("{code:?}: {reason}"));
                    break;
                }
                warn!(error = %e, "consumer error; retrying");
                health.broker_ok.store(false, Ordering::Release);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        health.broker_ok.store(true, Ordering::Release);
        let incoming = Incoming {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            consumed_ms: now_ms(),
        };
        drop(m);
        let (class, lane) = fetch.lane_of(&incoming);
        if fetch.has_parked(class) {
            // Fetched before the pause took effect, or from a partition
            // assigned since: behind the parked ones of its class, in order.
            fetch.park(class, lane, incoming);
            continue;
        }
        match senders[lane].try_reserve() {
            Ok(permit) => {
                tracker.begin(&incoming.topic, incoming.partition, incoming.offset);
                permit.send(incoming);
            }
            Err(mpsc::error::TrySendError::Full(())) => fetch.park(class, lane, incoming),
            Err(mpsc::error::TrySendError::Closed(())) => break,
        }
    }
    let deadline = health.shutdown_within(limits.shutdown_grace());
    info!("stopping: no more fetching; finishing the message each lane is handling (queued ones are left for the next owner)");
    drop(senders);
    let drain = futures::future::join_all(tasks.iter_mut());
    if tokio::time::timeout_at(deadline.into(), drain)
        .await
        .is_err()
    {
        warn!(
            grace_ms = limits.shutdown_grace_ms,
            "in-flight messages did not finish in time; they will be handled again after restart"
        );
        for t in &tasks {
            t.abort();
        }
    }
    tracker.abandon_in_flight();
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => info!("offsets committed"),
        Err(e) => debug!(error = %e, "final commit"),
    }
    consumer.unsubscribe();
}

/// A handled batch whose writes may still be in flight.
struct Handled {
    /// The batch's records, in the order they were taken.
    records: Vec<Taken>,
    /// Every write of the batch, its deferred ones last.
    writes: Vec<Pending>,
}

/// One record of a batch.
struct Taken {
    topic: String,
    partition: i32,
    offset: i64,
    /// Not handled: its partition was revoked while it waited in the lane.
    skipped: bool,
}

/// Handles a lane's records one at a time, in batches of what is queued
/// (up to `batch`): a key's sends happen in order. A batch's writes are
/// awaited by the lane's acknowledger, so the next batch does not wait for
/// the broker's acknowledgement of the last; what its records deferred
/// (pattern state, once per key) is written after all of them.
///
/// A record whose partition was revoked while it waited is skipped: its
/// partition's next owner handles it, so this instance must not (that would
/// be a duplicate), and no offset at or past it is stored.
///
/// Once shutdown begins, a lane starts no further record: the one it is
/// handling finishes (its requests answered and recorded within the grace),
/// the batch's records handled so far are written and acknowledged, and
/// those not started are left unhandled and uncommitted, for the
/// partition's next owner or the restart. Draining a long queue (one user's
/// backlog) used to run into the grace's end mid-request: that request went
/// out, was never recorded, and was repeated after the restart.
async fn lane<H: Handler>(
    mut rx: mpsc::Receiver<Incoming>,
    handler: Arc<H>,
    health: Arc<ConsumerHealth>,
    written: mpsc::Sender<Handled>,
    batch: usize,
) {
    let mut taken = Vec::with_capacity(batch);
    while rx.recv_many(&mut taken, batch).await > 0 {
        let mut handled = Handled {
            records: Vec::with_capacity(taken.len()),
            writes: Vec::new(),
        };
        let mut deferred = Vec::new();
        let mut left = 0;
        for m in taken.drain(..) {
            if left > 0 || health.shutting_down() {
                left += 1;
                continue;
            }
            let record = Taken {
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                skipped: !health.owns(&m.topic, m.partition),
            };
            if !record.skipped {
                let (writes, later) = handler.handle(m).await;
                handled.writes.extend(writes);
                deferred.push(later);
            }
            handled.records.push(record);
        }
        handler.close_batch(deferred, &mut handled.writes);
        if !handled.records.is_empty() && written.send(handled).await.is_err() {
            return;
        }
        if left > 0 {
            debug!(
                left = left + rx.len(),
                "stopping: queued messages left for the next owner"
            );
            return;
        }
    }
}

/// Waits for each handled batch's writes, in order, then marks its records
/// final and stores each partition's offset once, when it advanced.
async fn acknowledge(
    mut rx: mpsc::Receiver<Handled>,
    tracker: Arc<OffsetTracker>,
    consumer: Arc<StreamConsumer<HeraldContext>>,
) {
    while let Some(h) = rx.recv().await {
        for write in h.writes {
            write.await;
        }
        // The offset to store per partition: the last that advanced.
        let mut advanced: Vec<(String, i32, i64)> = Vec::new();
        for r in h.records {
            if r.skipped {
                tracker.skip(&r.topic, r.partition, r.offset);
                continue;
            }
            let Some(next) = tracker.complete(&r.topic, r.partition, r.offset) else {
                continue;
            };
            match advanced
                .iter_mut()
                .find(|(t, p, _)| *p == r.partition && *t == r.topic)
            {
                Some(at) => at.2 = at.2.max(next),
                None => advanced.push((r.topic, r.partition, next)),
            }
        }
        for (topic, partition, next) in advanced {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&topic, partition, Offset::Offset(next))
                .is_ok()
            {
                // Fails only for a partition no longer assigned; its next owner
                // resumes from the last commit.
                if let Err(e) = consumer.store_offsets(&tpl) {
                    debug!(error = %e, %topic, partition, "offset not stored");
                }
            }
        }
    }
}

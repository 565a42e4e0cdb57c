//! The source consumer: fetches from every source topic, routes each message to a
//! lane by (partition, key), and stores offsets as lanes finish.
//!
//! A lane is a tokio task that handles its messages one at a time, so a key's
//! events are handled in order while different keys proceed in parallel. The
//! lane queues are bounded: a slow provider slows fetching, never memory.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::offsets::OffsetTracker;
use crate::admin::Metrics;
use crate::config::LimitsConfig;
use crate::engine::{Incoming, Pipeline};
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
}

impl ConsumerHealth {
    /// Whether this instance owns `topic`/`partition` now.
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(topic.to_string(), partition))
    }

    fn set_owned(&self, parts: Vec<(String, i32)>) {
        *self.owned.lock().unwrap_or_else(|p| p.into_inner()) = parts.into_iter().collect();
    }
}

/// Consumer callbacks: before partitions are taken away, wait for their
/// in-flight messages and commit, so the next owner does not repeat them.
pub struct HeraldContext {
    pub tracker: Arc<OffsetTracker>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<ConsumerHealth>,
    pub revoke_wait: Duration,
}

impl ClientContext for HeraldContext {}

impl ConsumerContext for HeraldContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions(tpl);
            // No longer ours from here on: held messages stay for the next owner.
            let kept = consumer
                .assignment()
                .map(|a| partitions(&a))
                .unwrap_or_default()
                .into_iter()
                .filter(|p| !parts.contains(p))
                .collect();
            self.health.set_owned(kept);
            if !self.tracker.wait_idle(&parts, self.revoke_wait) {
                warn!(in_flight = self.tracker.in_flight(&parts), "partitions revoked with messages in flight; they will be handled again by the next owner");
            }
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                debug!(error = %e, "commit before revoke");
            }
            self.tracker.forget(&parts);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assignment = consumer
            .assignment()
            .map(|a| partitions(&a))
            .unwrap_or_default();
        let owned = assignment.len();
        self.health.set_owned(assignment);
        self.metrics.partitions_assigned.set(owned as i64);
        self.health.assigned.store(owned > 0, Ordering::Release);
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// Consumes until `shutdown` changes, then drains the lanes (up to `grace`),
/// stores and commits offsets, and returns.
pub async fn consume(
    consumer: Arc<StreamConsumer<HeraldContext>>,
    pipeline: Arc<Pipeline>,
    tracker: Arc<OffsetTracker>,
    health: Arc<ConsumerHealth>,
    limits: &LimitsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let (lanes, grace) = (limits.lanes, limits.shutdown_grace());
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = Vec::with_capacity(2 * lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<Incoming>(limits.lane_queue);
        let (written_tx, written_rx) = mpsc::channel::<Handled>(limits.lane_queue);
        senders.push(tx);
        tasks.push(tokio::spawn(lane(rx, Arc::clone(&pipeline), written_tx)));
        tasks.push(tokio::spawn(acknowledge(
            written_rx,
            Arc::clone(&tracker),
            Arc::clone(&consumer),
        )));
    }
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            m = consumer.recv() => m,
        };
        match next {
            Ok(m) => {
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
                tracker.begin(&incoming.topic, incoming.partition, incoming.offset);
                let lane = lane_of(&incoming, lanes);
                tokio::select! {
                    biased;
                    sent = senders[lane].send(incoming) => if sent.is_err() { break },
                    _ = shutdown.changed() => break,
                }
            }
            Err(e) => {
                warn!(error = %e, "consumer error; retrying");
                health.broker_ok.store(false, Ordering::Release);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    info!("stopping: no more fetching; draining in-flight messages");
    drop(senders);
    let drain = futures::future::join_all(tasks.iter_mut());
    if tokio::time::timeout(grace, drain).await.is_err() {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight messages did not finish in time; they will be handled again after restart"
        );
        for t in &tasks {
            t.abort();
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => info!("offsets committed"),
        Err(e) => debug!(error = %e, "final commit"),
    }
    consumer.unsubscribe();
}

/// Messages of one key (or, without a key, of one partition) share a lane.
fn lane_of(m: &Incoming, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    m.topic.hash(&mut h);
    m.partition.hash(&mut h);
    m.key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// A handled message whose outcome and dead-letter writes may still be in flight.
struct Handled {
    topic: String,
    partition: i32,
    offset: i64,
    writes: Vec<Pending>,
}

/// Handles a lane's messages one at a time: a key's sends happen in order.
/// The writes of each message are awaited by the lane's acknowledger, so the
/// next message does not wait for the broker's acknowledgement of the last.
async fn lane(
    mut rx: mpsc::Receiver<Incoming>,
    pipeline: Arc<Pipeline>,
    written: mpsc::Sender<Handled>,
) {
    while let Some(m) = rx.recv().await {
        let (topic, partition, offset) = (m.topic.clone(), m.partition, m.offset);
        let writes = pipeline.handle(m).await;
        let handled = Handled {
            topic,
            partition,
            offset,
            writes,
        };
        if written.send(handled).await.is_err() {
            return;
        }
    }
}

/// Waits for each handled message's writes, in order, then marks it final and
/// stores the partition's offset when it advanced.
async fn acknowledge(
    mut rx: mpsc::Receiver<Handled>,
    tracker: Arc<OffsetTracker>,
    consumer: Arc<StreamConsumer<HeraldContext>>,
) {
    while let Some(h) = rx.recv().await {
        for write in h.writes {
            write.await;
        }
        if let Some(next) = tracker.complete(&h.topic, h.partition, h.offset) {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&h.topic, h.partition, Offset::Offset(next))
                .is_ok()
            {
                // Fails only for a partition no longer assigned; its next owner
                // resumes from the last commit.
                if let Err(e) = consumer.store_offsets(&tpl) {
                    debug!(error = %e, topic = %h.topic, partition = h.partition, "offset not stored");
                }
            }
        }
    }
}

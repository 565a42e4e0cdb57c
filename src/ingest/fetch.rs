//! The fetching side of the consumer: which lane a record goes to, records parked while their lanes are full, and the pause that follows; intents ahead of source records.
//!
//! Records come in two classes. Those the handler says go first (stage 2's
//! intents: each is a decision already made, waiting to be sent) have lanes
//! of their own and a parked queue of their own, so a backlog of source
//! records never stands in front of them, and a full source lane pauses only
//! the source partitions. The others (source events, feedback) create work;
//! they wait.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::offsets::OffsetTracker;
use super::Incoming;

/// Messages of one class parked (their lanes full) before that class's
/// partitions are paused.
const PAUSE_AT: usize = 4096;

/// Which queue a record waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Handled ahead of the rest (intents).
    First = 0,
    /// Everything else (source events, feedback).
    Rest = 1,
}

/// Parked messages and paused partitions, per class.
pub(super) struct Fetch<'a, C: ConsumerContext + 'static> {
    pub consumer: &'a StreamConsumer<C>,
    pub tracker: &'a OffsetTracker,
    /// Whether this instance owns a partition now (a parked message of one
    /// revoked meanwhile is dropped unhandled).
    pub owns: &'a (dyn Fn(&str, i32) -> bool + Sync),
    pub metrics: &'a crate::metrics::Metrics,
    /// Lanes per class: class `c`'s lanes are `c * lanes .. (c + 1) * lanes`.
    pub lanes: usize,
    /// The topics whose records are [`Class::First`].
    pub first: Vec<String>,
    parked: [VecDeque<(usize, Incoming)>; 2],
    /// The partitions of each class paused now.
    paused: [Vec<(String, i32)>; 2],
}

impl<'a, C: ConsumerContext + 'static> Fetch<'a, C> {
    pub fn new(
        consumer: &'a StreamConsumer<C>,
        tracker: &'a OffsetTracker,
        owns: &'a (dyn Fn(&str, i32) -> bool + Sync),
        metrics: &'a crate::metrics::Metrics,
        lanes: usize,
        first: Vec<String>,
    ) -> Fetch<'a, C> {
        Fetch {
            consumer,
            tracker,
            owns,
            metrics,
            lanes,
            first,
            parked: [VecDeque::new(), VecDeque::new()],
            paused: [Vec::new(), Vec::new()],
        }
    }

    /// The class of a record of `topic`.
    pub fn class_of(&self, topic: &str) -> Class {
        match self.first.iter().any(|t| t == topic) {
            true => Class::First,
            false => Class::Rest,
        }
    }

    /// The lane of `m`: messages of one key (or, without a key, of one
    /// partition) share a lane, within their class's lanes.
    pub fn lane_of(&self, m: &Incoming) -> (Class, usize) {
        let class = self.class_of(&m.topic);
        let mut h = DefaultHasher::new();
        m.topic.hash(&mut h);
        m.partition.hash(&mut h);
        m.key.hash(&mut h);
        let lane = (h.finish() % self.lanes as u64) as usize;
        (class, class as usize * self.lanes + lane)
    }

    /// The lane the first parked message of `class` waits for.
    pub fn waiting(&self, class: Class) -> Option<usize> {
        self.parked[class as usize].front().map(|(lane, _)| *lane)
    }

    /// Whether messages of `class` are parked (a new one goes behind them).
    pub fn has_parked(&self, class: Class) -> bool {
        !self.parked[class as usize].is_empty()
    }

    /// Parks a message; once [`PAUSE_AT`] of its class are parked, pauses
    /// fetching from every assigned partition of that class (and from one
    /// assigned since).
    ///
    /// A lane full for a moment (one key's burst) is not a reason to pause:
    /// librdkafka drops what it prefetched for a paused partition and
    /// fetches it again on resume. Parking a bounded number first keeps the
    /// fetch flowing through short waits (a drain went from 3,400 to 4,600
    /// swipes/s, BENCHMARKS.md); a long one (a provider outage) still
    /// pauses, and the consumer keeps polling, so it stays in the group.
    pub fn park(&mut self, class: Class, lane: usize, m: Incoming) {
        let c = class as usize;
        let known = self.paused[c]
            .iter()
            .any(|(t, p)| *t == m.topic && *p == m.partition);
        let pause = !known && (!self.paused[c].is_empty() || self.parked[c].len() + 1 >= PAUSE_AT);
        if pause {
            if self.paused[c].is_empty() {
                debug!(
                    ?class,
                    parked = self.parked[c].len() + 1,
                    "lanes full; pausing fetch"
                );
            }
            if let Ok(assigned) = self.consumer.assignment() {
                let of_class = self.of_class(&assigned, class);
                if let Err(e) = self.consumer.pause(&of_class) {
                    warn!(error = %e, "cannot pause fetching");
                }
                self.paused[c] = partitions(&of_class);
            }
        }
        self.parked[c].push_back((lane, m));
        self.gauges();
    }

    /// Hands the first parked message of `class` to its lane (dropping it
    /// unhandled if its partition was revoked meanwhile: the next owner
    /// reads it from the committed offset); resumes fetching that class once
    /// none is left.
    pub fn unpark(&mut self, class: Class, permit: mpsc::Permit<'_, Incoming>) {
        let c = class as usize;
        let Some((_, m)) = self.parked[c].pop_front() else {
            return;
        };
        if (self.owns)(&m.topic, m.partition) {
            self.tracker.begin(&m.topic, m.partition, m.offset);
            permit.send(m);
        }
        if self.parked[c].is_empty() && !self.paused[c].is_empty() {
            debug!(?class, "lanes have room; resuming fetch");
            if let Ok(assigned) = self.consumer.assignment() {
                let of_class = self.of_class(&assigned, class);
                if let Err(e) = self.consumer.resume(&of_class) {
                    warn!(error = %e, "cannot resume fetching");
                }
            }
            self.paused[c].clear();
        }
        self.gauges();
    }

    /// The partitions of `assigned` whose records are of `class`.
    fn of_class(&self, assigned: &TopicPartitionList, class: Class) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for e in assigned.elements() {
            if self.class_of(e.topic()) == class {
                tpl.add_partition(e.topic(), e.partition());
            }
        }
        tpl
    }

    fn gauges(&self) {
        let parked = self.parked.iter().map(VecDeque::len).sum::<usize>();
        self.metrics.parked.set(parked as i64);
        let paused = self.paused.iter().any(|p| !p.is_empty());
        self.metrics.fetch_paused.set(i64::from(paused));
    }
}

/// The (topic, partition) pairs of a list.
pub(super) fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

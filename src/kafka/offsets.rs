//! Partition offsets asked of the broker for many partitions at once: one ListOffsets request per partition leader, not a round trip per partition.
//!
//! rdkafka's `fetch_watermarks` asks for one partition at a time. A state
//! restore, a follower's start and a STOP check each need every partition
//! of a topic, so they waited for as many round trips in a row as the topic
//! has partitions (48 on a bank's topic). `offsets_for_times` takes the
//! whole list: at timestamp -2 ("earliest") the broker answers each
//! partition's first kept offset, at -1 ("latest") its end (the next offset
//! to be written), the same two offsets `fetch_watermarks` returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A client for offsets and reads, built on first use and then kept: a new
/// librdkafka client waits for the partitions' leaders before its first
/// request, checking every 100 ms
/// (`rd_kafka_topic_partition_list_query_leaders`), and restores and
/// barriers run where 100 ms is a pause in sends (a rebalance, an SMS).
pub struct KeptClient {
    config: ClientConfig,
    kept: Mutex<Option<Arc<BaseConsumer>>>,
}

impl KeptClient {
    /// A client to be built from `config` when first asked for.
    pub fn new(config: ClientConfig) -> KeptClient {
        KeptClient {
            config,
            kept: Mutex::new(None),
        }
    }

    /// The client, built now if it was not yet.
    pub fn get(&self) -> Result<Arc<BaseConsumer>, KafkaError> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match &*kept {
            Some(c) => Ok(Arc::clone(c)),
            None => Ok(Arc::clone(kept.insert(Arc::new(self.config.create()?)))),
        }
    }
}

/// Whether a consumer's error ends a read of it: only when the client has
/// failed fatally.
/// The others (all brokers down, a transport failure, a leader moving) are
/// librdkafka saying what it is recovering from; a client kept between
/// reads queues them while nothing polls it, and hands them out at the
/// next read, long after the broker came back. Taken as failures, each
/// stopped a restore after a broker outage, to be retried seconds later,
/// once per queued error.
pub fn failed_fatally<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> bool {
    consumer.client().fatal_error().is_some()
}

/// Each of `partitions`' offset `at` [`Offset::Beginning`] (its first
/// kept record) or [`Offset::End`] (the next to be written). Blocking.
pub fn list_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partitions: &[i32],
    at: Offset,
    timeout: Duration,
) -> Result<HashMap<i32, i64>, KafkaError> {
    let mut asked = TopicPartitionList::new();
    for &p in partitions {
        asked.add_partition_offset(topic, p, at)?;
    }
    let found = consumer.offsets_for_times(asked, timeout)?;
    partitions
        .iter()
        .map(|&p| {
            let e = found
                .find_partition(topic, p)
                .ok_or(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition))?;
            e.error()?;
            match e.offset() {
                Offset::Offset(offset) => Ok((p, offset)),
                _ => Err(KafkaError::OffsetFetch(
                    RDKafkaErrorCode::OffsetNotAvailable,
                )),
            }
        })
        .collect()
}

/// Each of `partitions`' first kept offset and end: what `fetch_watermarks`
/// gives for one partition, for all of them in two requests. Blocking.
pub fn watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<HashMap<i32, (i64, i64)>, KafkaError> {
    let low = list_offsets(consumer, topic, partitions, Offset::Beginning, timeout)?;
    let high = list_offsets(consumer, topic, partitions, Offset::End, timeout)?;
    Ok(low
        .into_iter()
        .map(|(p, low)| (p, (low, high.get(&p).copied().unwrap_or(low))))
        .collect())
}

/// Assigns `consumer` each of `partitions` that has records from `start`
/// on (`start` picks the offset from a partition's first kept offset and
/// end) and returns those partitions' ends: a reader has read one when it
/// has taken the record before its end. Blocking.
pub fn assign_to_ends<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    mut start: impl FnMut(i32, i64, i64) -> i64,
) -> Result<HashMap<i32, i64>, KafkaError> {
    let mut assigned = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for (p, (low, high)) in watermarks(consumer, topic, partitions, timeout)? {
        let from = start(p, low, high).max(low);
        if from < high {
            assigned.add_partition_offset(topic, p, Offset::Offset(from))?;
            ends.insert(p, high);
        }
    }
    if !ends.is_empty() {
        consumer.assign(&assigned)?;
    }
    Ok(ends)
}

/// How long [`read_to_ends`] goes on.
#[derive(Debug, Clone, Copy)]
pub enum ReadLimit {
    /// At most this long in all.
    Total(Duration),
    /// Until no record has come for this long.
    Quiet(Duration),
}

/// Reads `consumer`, assigned by [`assign_to_ends`], handing `each` every
/// record, until each partition of `ends` has given the record before its
/// end or `limit` passes. Returns the partitions not read to their end
/// (empty when all were); a consumer error ends the read with that error.
/// Blocking.
pub fn read_to_ends<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    mut ends: HashMap<i32, i64>,
    limit: ReadLimit,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<HashMap<i32, i64>, KafkaError> {
    let started = Instant::now();
    let mut last = started;
    let over = |last: Instant| match limit {
        ReadLimit::Total(d) => started.elapsed() >= d,
        ReadLimit::Quiet(d) => last.elapsed() >= d,
    };
    while !ends.is_empty() && !over(last) {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) if failed_fatally(consumer) => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "read: the client is recovering");
                continue;
            }
        };
        last = Instant::now();
        each(&m);
        if ends
            .get(&m.partition())
            .is_some_and(|&end| m.offset() + 1 >= end)
        {
            ends.remove(&m.partition());
        }
    }
    Ok(ends)
}

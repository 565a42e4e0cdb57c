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
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

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

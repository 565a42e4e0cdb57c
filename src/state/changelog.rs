//! Changelog topics: compacted topics that hold every change of a store, one
//! partition per stage partition, read back to their end when a partition
//! is assigned; and the creation of herald's internal topics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::outcome::{Pending, Recorder};

pub use super::change::{Change, RestoreError};
use super::sealed::{ChangelogSeal, Opened};

/// What a restore read: each partition's changes, newest per key last
/// (none for a changelog with a copy on disk), and the records read.
pub struct Restored {
    pub changes: HashMap<i32, Vec<Change>>,
    pub read: usize,
}

/// A store's changelog: where its changes are written and read back from.
/// Offline (rule tests, replays) it has no topic and writes nothing.
#[derive(Clone)]
pub struct Changelog {
    pub topic: String,
    recorder: Option<Recorder>,
    /// The client its restores ask offsets of and read through, kept from
    /// one restore to the next (a rebalance restores each changelog inside
    /// the consumer's poll, where a new client's wait for the partitions'
    /// leaders, up to 100 ms, is a pause in sends).
    reader: Arc<crate::kafka::offsets::KeptClient>,
    /// Held while a restore reads through `reader` (it assigns partitions).
    reading: Arc<Mutex<()>>,
    /// Its copy on local disk, if it has one: then a restore reads the
    /// rows from disk and only the tail past the checkpoint.
    mirror: Option<std::sync::Arc<super::mirror::Mirror>>,
    /// Seals its records' values on the topic (keys are blinded by whoever
    /// makes them, with the same seal), if it is sealed.
    seal: Option<Arc<ChangelogSeal>>,
    /// Records a restore read in clear or under the previous key: to be
    /// written again under their current key ([`Changelog::take_moved`]).
    moved: Arc<Mutex<Vec<Moved>>>,
}

/// A restore's client settings on top of `reader`'s (brokers, security):
/// no group offsets, large fetches, a short fetch wait.
fn restore_client(mut reader: ClientConfig) -> ClientConfig {
    reader
        .set("group.id", format!("herald-restore-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760");
    reader
}

/// A record read under a key it no longer has: its partition, the key it
/// was read from, and its change under its current key.
pub type Moved = (i32, String, Change);

impl Changelog {
    /// A changelog on `topic`, written through `recorder`, read back with a
    /// consumer built from `reader` (brokers and security settings).
    pub fn new(topic: String, recorder: Recorder, reader: ClientConfig) -> Changelog {
        Changelog {
            topic,
            recorder: Some(recorder),
            reader: Arc::new(crate::kafka::offsets::KeptClient::new(restore_client(
                reader,
            ))),
            reading: Arc::default(),
            mirror: None,
            seal: None,
            moved: Arc::default(),
        }
    }

    /// This changelog with its records sealed by `seal`.
    pub fn sealed(mut self, seal: Arc<ChangelogSeal>) -> Changelog {
        self.seal = Some(seal);
        self
    }

    /// The records the restores so far read under a key they no longer
    /// have; each is to be written under its current key, and its old key
    /// deleted.
    pub fn take_moved(&self) -> Vec<Moved> {
        std::mem::take(&mut *self.moved.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// This changelog with a copy on local disk in `table`, whose values'
    /// wake-up times `wake` reads.
    pub fn mirrored(
        mut self,
        table: crate::store::Table,
        wake: fn(&[u8]) -> super::mirror::Wake,
    ) -> Changelog {
        self.mirror = Some(std::sync::Arc::new(super::mirror::Mirror::new(table, wake)));
        self
    }

    /// Its copy on local disk, if it has one.
    pub fn mirror(&self) -> Option<&std::sync::Arc<super::mirror::Mirror>> {
        self.mirror.as_ref()
    }

    /// No topic behind it: the store lives in memory only.
    pub fn offline() -> Changelog {
        Changelog {
            topic: String::new(),
            recorder: None,
            reader: Arc::new(crate::kafka::offsets::KeptClient::new(ClientConfig::new())),
            reading: Arc::default(),
            mirror: None,
            seal: None,
            moved: Arc::default(),
        }
    }

    /// Whether changes are written anywhere.
    pub fn is_durable(&self) -> bool {
        self.recorder.is_some()
    }

    /// Writes one change to `partition`; resolves once the broker has it
    /// (and, mirrored, once it is on disk too).
    pub fn write(&self, partition: i32, key: &str, value: Option<Vec<u8>>) -> Option<Pending> {
        let recorder = self.recorder.as_ref()?;
        let Some(mirror) = &self.mirror else {
            let value = self.on_topic(key, value);
            return Some(recorder.publish_to(&self.topic, partition, key, value));
        };
        let mirror = std::sync::Arc::clone(mirror);
        let seq = mirror.begin(partition);
        let written = recorder.publish_at(
            &self.topic,
            partition,
            key,
            self.on_topic(key, value.clone()),
        );
        let key = key.to_string();
        Some(Box::pin(async move {
            let offset = written.await;
            mirror
                .applied(partition, &key, value.as_deref(), seq, offset)
                .await;
        }))
    }

    /// A value as the topic keeps it: sealed, if this changelog is.
    fn on_topic(&self, key: &str, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match (&self.seal, value) {
            (Some(seal), Some(v)) => Some(seal.seal(key, &v)),
            (_, value) => value,
        }
    }

    /// Stops following a revoked partition's copy on disk.
    pub fn forget(&self, partition: i32) {
        if let Some(mirror) = &self.mirror {
            mirror.forget(partition);
        }
    }

    /// [`Changelog::write`], resolving to the record's offset.
    pub fn write_at(
        &self,
        partition: i32,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Option<crate::outcome::Written> {
        let recorder = self.recorder.as_ref()?;
        let value = self.on_topic(key, value);
        Some(recorder.publish_at(&self.topic, partition, key, value))
    }

    /// Reads `partitions` from their start to the end they have now, newest
    /// value per key last, with one consumer: an assignment of many
    /// partitions restores in about the time of its largest one. With a copy
    /// on disk, only the tail past its checkpoint is read, into the copy,
    /// and no change is returned: the copy is read key by key. Blocking:
    /// runs in the rebalance callback, before any record of the partitions is
    /// handed out. Gives up with an error when the broker stops answering for
    /// `patience`.
    pub fn restore_all(
        &self,
        partitions: &[i32],
        patience: Duration,
    ) -> Result<Restored, RestoreError> {
        let mut out: HashMap<i32, Vec<Change>> =
            partitions.iter().map(|&p| (p, Vec::new())).collect();
        if !self.is_durable() || partitions.is_empty() {
            return Ok(Restored {
                changes: out,
                read: 0,
            });
        }
        if let Some(mirror) = &self.mirror {
            let read = self.restore_mirrored(mirror, partitions, patience)?;
            return Ok(Restored { changes: out, read });
        }
        let mut read = 0;
        let ranges: Vec<(i32, i64, i64)> = self
            .watermarks(partitions, patience)?
            .into_iter()
            .map(|(p, (low, high))| (p, low, high))
            .collect();
        self.read_ranges(&ranges, patience, |partition, _, change| {
            read += 1;
            out.entry(partition).or_default().push(change)
        })?;
        Ok(Restored { changes: out, read })
    }

    /// [`Changelog::restore_all`] into the copy on disk: the tail past each
    /// partition's checkpoint; a partition without a usable checkpoint is
    /// cleared and read from the start. The records read.
    fn restore_mirrored(
        &self,
        mirror: &super::mirror::Mirror,
        partitions: &[i32],
        patience: Duration,
    ) -> Result<usize, RestoreError> {
        let disk = |source| RestoreError::Disk {
            topic: self.topic.clone(),
            source,
        };
        let watermarks = self.watermarks(partitions, patience)?;
        let checkpoint = mirror.checkpoint().map_err(disk)?;
        let mut ranges = Vec::new();
        for (&partition, &(low, high)) in &watermarks {
            let from = mirror
                .start(partition, low, high, checkpoint.get(&partition).copied())
                .map_err(disk)?;
            ranges.push((partition, from, high));
        }
        let mut tail = mirror.tail();
        self.read_ranges(&ranges, patience, |partition, offset, change| {
            tail.add(partition, offset, change);
        })?;
        let read = tail.commit().map_err(disk)?;
        for (&partition, &(_, high)) in &watermarks {
            mirror.follow(partition, high);
        }
        Ok(read)
    }

    fn reader(&self) -> Result<Arc<BaseConsumer>, RestoreError> {
        self.reader.get().map_err(|source| self.failed(source))
    }

    fn failed(&self, source: rdkafka::error::KafkaError) -> RestoreError {
        RestoreError::Kafka {
            topic: self.topic.clone(),
            source,
        }
    }

    /// The first offset and the end (next offset) of each of `partitions`.
    pub fn watermarks(
        &self,
        partitions: &[i32],
        patience: Duration,
    ) -> Result<HashMap<i32, (i64, i64)>, RestoreError> {
        let consumer = self.reader()?;
        crate::kafka::offsets::watermarks(&*consumer, &self.topic, partitions, patience)
            .map_err(|e| self.failed(e))
    }

    /// Reads each `(partition, from, to)` range (`to` excluded), handing
    /// every record to `apply` with its offset, in offset order per
    /// partition. Blocking; gives up when the broker stops answering for
    /// `patience`.
    pub fn read_ranges(
        &self,
        ranges: &[(i32, i64, i64)],
        patience: Duration,
        mut apply: impl FnMut(i32, i64, Change),
    ) -> Result<(), RestoreError> {
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for &(partition, from, to) in ranges {
            if to > from {
                ends.insert(partition, (from, to, 0i64));
                tpl.add_partition_offset(&self.topic, partition, Offset::Offset(from))
                    .map_err(|e| self.failed(e))?;
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        let _reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        let consumer = self.reader()?;
        consumer.assign(&tpl).map_err(|e| self.failed(e))?;
        let mut unreadable = 0usize;
        let read = self.read_assigned(&consumer, &mut ends, patience, &mut unreadable, &mut apply);
        // Kept for the next restore: it fetches nothing meanwhile.
        let unassigned = consumer.unassign().map_err(|e| self.failed(e));
        read.and(unassigned)?;
        if unreadable > 0 {
            tracing::warn!(topic = %self.topic, records = unreadable, "changelog records sealed under a key herald does not have (set HERALD_STATE_KEY_PREVIOUS to the key before a rotation) or altered; their state starts fresh");
        }
        Ok(())
    }

    /// Polls `consumer` (assigned each partition of `ends` from its
    /// `(from, to, read)`) until every partition was read up to `to`,
    /// handing each record to `apply`; counts in `unreadable` the records
    /// it could not open.
    fn read_assigned(
        &self,
        consumer: &BaseConsumer,
        ends: &mut HashMap<i32, (i64, i64, i64)>,
        patience: Duration,
        unreadable: &mut usize,
        apply: &mut impl FnMut(i32, i64, Change),
    ) -> Result<(), RestoreError> {
        let mut moved = HashMap::new();
        let mut last_progress = Instant::now();
        let started = Instant::now();
        let mut last_error = None;
        while !ends.is_empty() {
            if last_progress.elapsed() > patience {
                return Err(self.incomplete(ends, started, last_error));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    let Some((from, to, read)) = ends.get_mut(&m.partition()) else {
                        continue;
                    };
                    // Outside the range asked (the kept client read other
                    // ranges before): not this restore's.
                    if m.offset() < *from || m.offset() >= *to {
                        continue;
                    }
                    *read += 1;
                    let done = m.offset() + 1 >= *to;
                    let key = m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default();
                    let change = Change {
                        key,
                        value: m.payload().map(<[u8]>::to_vec),
                    };
                    match self.opened(m.partition(), change, &mut moved) {
                        Some(change) => apply(m.partition(), m.offset(), change),
                        None => *unreadable += 1,
                    }
                    if done {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(e)) if crate::kafka::offsets::failed_fatally(consumer) => {
                    return Err(self.failed(e))
                }
                // Queued while nothing polled this kept client (a broker
                // outage between restores), or said while it recovers: the
                // read goes on, within its patience.
                Some(Err(e)) => {
                    tracing::debug!(topic = %self.topic, error = %e, "changelog read: the client is recovering");
                    last_error = Some(e.to_string());
                }
                None => {}
            }
        }
        Ok(())
    }

    /// A read that gave up with `ends` still open: which partition, how far.
    fn incomplete(
        &self,
        ends: &HashMap<i32, (i64, i64, i64)>,
        started: Instant,
        last_error: Option<String>,
    ) -> RestoreError {
        let (&partition, &(from, to, read)) = ends.iter().next().expect("a partition still open");
        RestoreError::Incomplete {
            topic: self.topic.clone(),
            partition,
            read,
            expected: to - from,
            waited_s: started.elapsed().as_secs(),
            last_error,
        }
    }

    /// A record as read, opened if the changelog is sealed (`None`:
    /// unreadable); one read under a key it no longer has is noted to be
    /// written again.
    fn opened(
        &self,
        partition: i32,
        change: Change,
        moved: &mut HashMap<String, String>,
    ) -> Option<Change> {
        let Some(seal) = &self.seal else {
            return Some(change);
        };
        match seal.open(change, moved) {
            Opened::Current(change) => Some(change),
            Opened::Moved { from, change } => {
                self.moved.lock().unwrap_or_else(|p| p.into_inner()).push((
                    partition,
                    from,
                    change.clone(),
                ));
                Some(change)
            }
            Opened::Unreadable => None,
        }
    }
}

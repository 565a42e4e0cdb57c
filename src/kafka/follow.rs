//! Following a whole topic on every instance (profiles, consent, feedback state):
//! all partitions, from the start or from a point in time, with the read
//! position kept so a caller can wait until everything written so far was read.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Reader callbacks: reaching the end of a partition is how a follower knows
/// it caught up, not an error worth a log line.
struct EndIsNormal;

impl rdkafka::ClientContext for EndIsNormal {
    fn error(&self, error: KafkaError, reason: &str) {
        let at_end = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !at_end {
            warn!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsNormal {}

/// Where reading starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// Every record still on the topic (compacted state topics).
    Beginning,
    /// Records from this time on, epoch ms (event streams, with a look-back).
    Since(i64),
    /// From these next offsets per partition (a table's checkpoint); a
    /// partition not listed from its beginning. An offset past a partition's
    /// end (the topic was deleted and made again) is refused: see
    /// [`Follower::run_with`].
    Offsets(std::collections::BTreeMap<i32, i64>),
}

/// What [`Follower::run_with`] tells its caller besides the records.
pub enum Progress {
    /// Found once assigned: the records to read to reach every partition's end.
    ToRead(u64),
    /// A partition reached its end.
    PartitionEnd(i32),
}

/// Why a follower stopped before its shutdown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    #[error("`{topic}` partition {partition} ends at offset {end}, before the checkpoint's {checkpoint}: the topic was made again")]
    CheckpointPastEnd {
        topic: String,
        partition: i32,
        end: i64,
        checkpoint: i64,
    },
}

/// The most records [`Follower::run_batches`] hands over at once.
pub const FOLLOW_BATCH: usize = 256;

/// End offset per partition.
type Ends = Vec<(i32, i64)>;

/// The progress of one followed topic.
pub struct Follower {
    topic: String,
    /// Next offset to read, per partition.
    positions: Mutex<HashMap<i32, i64>>,
    /// True once every partition was read to its end once.
    caught_up: watch::Sender<bool>,
    /// For its consumer, and the kept client of its watermark queries
    /// (built on the first [`Follower::barrier`]).
    client: ClientConfig,
    watermarks: super::offsets::KeptClient,
    /// The last end offsets fetched and when the fetch began: callers that
    /// began waiting before it share it (one broker round trip for many SMS).
    last_ends: tokio::sync::Mutex<Option<(Instant, Ends)>>,
}

/// Why a barrier could not be passed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BarrierError {
    #[error("cannot read the end offsets of `{topic}`: {detail}")]
    Watermarks { topic: String, detail: String },
    #[error("`{topic}` was not read to its end within {waited_ms} ms")]
    Behind { topic: String, waited_ms: u64 },
}

impl Follower {
    /// A follower of `topic`; `client` is used for its consumer.
    pub fn new(topic: String, client: ClientConfig) -> Follower {
        Follower {
            topic,
            positions: Mutex::new(HashMap::new()),
            caught_up: watch::Sender::new(false),
            watermarks: super::offsets::KeptClient::new(client.clone()),
            client,
            last_ends: tokio::sync::Mutex::new(None),
        }
    }

    /// The followed topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether every partition was read to its end once.
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Waits until every partition was read to its end once.
    pub async fn wait_caught_up(&self) {
        let mut signal = self.caught_up.subscribe();
        let _ = signal.wait_for(|c| *c).await;
    }

    /// Waits until every record written to the topic before this call has been
    /// read (and applied) by [`Follower::run`]: asks the broker for each
    /// partition's end offset, then waits for the read position to reach it.
    pub async fn barrier(&self, timeout: Duration) -> Result<(), BarrierError> {
        let began = Instant::now();
        let consumer = self
            .watermarks
            .get()
            .map_err(|e| BarrierError::Watermarks {
                topic: self.topic.clone(),
                detail: e.to_string(),
            })?;
        let partitions: Vec<i32> = self.positions().keys().copied().collect();
        if partitions.is_empty() {
            return Err(BarrierError::Behind {
                topic: self.topic.clone(),
                waited_ms: 0,
            });
        }
        let ends = {
            let mut last = self.last_ends.lock().await;
            match &*last {
                // Fetched after this call began: it covers every record written before.
                Some((fetched, ends)) if *fetched >= began => ends.clone(),
                _ => {
                    let fetched = Instant::now();
                    let ends = self.fetch_ends(consumer, partitions, timeout).await?;
                    *last = Some((fetched, ends.clone()));
                    ends
                }
            }
        };
        loop {
            let reached = {
                let positions = self.positions();
                ends.iter()
                    .all(|(p, end)| positions.get(p).is_some_and(|at| at >= end))
            };
            if reached {
                return Ok(());
            }
            if began.elapsed() >= timeout {
                return Err(BarrierError::Behind {
                    topic: self.topic.clone(),
                    waited_ms: began.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Each partition's end offset, from the broker: one ListOffsets request
    /// per partition leader for all the partitions at once
    /// ([`super::offsets`]).
    async fn fetch_ends(
        &self,
        consumer: std::sync::Arc<BaseConsumer>,
        partitions: Vec<i32>,
        timeout: Duration,
    ) -> Result<Ends, BarrierError> {
        let topic = self.topic.clone();
        let failed = |detail: String| BarrierError::Watermarks {
            topic: self.topic.clone(),
            detail,
        };
        tokio::task::spawn_blocking(move || {
            super::offsets::list_offsets(&*consumer, &topic, &partitions, Offset::End, timeout)
                .map(|ends| ends.into_iter().collect())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, HashMap<i32, i64>> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn advance(&self, partition: i32, next: i64) {
        let mut positions = self.positions();
        let at = positions.entry(partition).or_insert(next);
        *at = (*at).max(next);
    }

    /// Reads every partition from `start`, handing each record to `apply`,
    /// until `shutdown`. Retries while the topic or the broker is missing.
    pub async fn run(
        &self,
        start: Start,
        shutdown: watch::Receiver<bool>,
        apply: impl FnMut(&BorrowedMessage<'_>),
    ) {
        let _ = self.run_with(start, shutdown, apply, |_| {}).await;
    }

    /// As [`Follower::run`], also telling `progress` how many records there
    /// are to read and when each partition reaches its end. Returns early
    /// with an error when a checkpoint in `start` is past its partition's end.
    pub async fn run_with(
        &self,
        start: Start,
        shutdown: watch::Receiver<bool>,
        mut apply: impl FnMut(&BorrowedMessage<'_>),
        progress: impl FnMut(Progress),
    ) -> Result<(), FollowError> {
        let each = |batch: &[BorrowedMessage<'_>]| batch.iter().for_each(&mut apply);
        self.run_batches(start, shutdown, each, progress).await
    }

    /// As [`Follower::run_with`], handing `apply` the records already
    /// fetched together, up to [`FOLLOW_BATCH`], in order: a caller that
    /// writes what it reads commits once per batch. A record counts as read
    /// (for [`Follower::barrier`]) once `apply` returns for its batch.
    pub async fn run_batches(
        &self,
        start: Start,
        mut shutdown: watch::Receiver<bool>,
        mut apply: impl FnMut(&[BorrowedMessage<'_>]),
        mut progress: impl FnMut(Progress),
    ) -> Result<(), FollowError> {
        let consumer: StreamConsumer<EndIsNormal> = match self
            .client
            .clone()
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(EndIsNormal)
        {
            Ok(c) => c,
            Err(e) => {
                warn!(topic = %self.topic, error = %e, "cannot create a topic reader");
                return Ok(());
            }
        };
        let topic = &self.topic;
        let mut attempts = 0u32;
        let partitions = loop {
            // Said once, then once a minute: a topic created later is normal.
            let say = attempts % 60 == 0;
            attempts += 1;
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(md) => {
                    let parts: Vec<i32> = md
                        .topics()
                        .iter()
                        .filter(|t| t.name() == topic && t.error().is_none())
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    if !parts.is_empty() {
                        break parts;
                    }
                    if say {
                        warn!(%topic, "topic not found yet; retrying every second");
                    }
                }
                Err(e) if say => {
                    warn!(%topic, error = %e, "cannot read topic metadata; retrying every second")
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        };
        // Where each partition starts and ends: the records there are to read.
        // Reaching those ends is being caught up (as Kafka Streams restores
        // to the end offsets it finds at the start): a topic written to all
        // the time may never show its end to a reader.
        let mut to_read = 0u64;
        let mut targets: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
        let mut tpl = TopicPartitionList::new();
        // Unknown watermarks (a slow broker) check nothing and count nothing.
        let all_marks =
            super::offsets::watermarks(&consumer, topic, &partitions, Duration::from_secs(10))
                .unwrap_or_default();
        for p in &partitions {
            let marks = all_marks.get(p).copied();
            let offset = match &start {
                Start::Beginning => Offset::Beginning,
                Start::Since(ms) => Offset::Offset(*ms),
                Start::Offsets(offsets) => match (offsets.get(p), marks) {
                    (Some(&next), Some((_, high))) if next > high => {
                        return Err(FollowError::CheckpointPastEnd {
                            topic: topic.clone(),
                            partition: *p,
                            end: high,
                            checkpoint: next,
                        });
                    }
                    (Some(&next), _) => Offset::Offset(next),
                    (None, _) => Offset::Beginning,
                },
            };
            if let Some((low, high)) = marks {
                let from = match (&start, offset) {
                    (Start::Offsets(_), Offset::Offset(next)) => next.max(low),
                    _ => low,
                };
                to_read += (high - from).max(0) as u64;
                targets.insert(*p, high.max(from));
            }
            let _ = tpl.add_partition_offset(topic, *p, offset);
        }
        progress(Progress::ToRead(to_read));
        if let Start::Since(_) = start {
            match consumer.offsets_for_times(tpl.clone(), Duration::from_secs(10)) {
                Ok(found) => tpl = found,
                Err(e) => {
                    warn!(%topic, error = %e, "cannot find offsets by time; reading from the start");
                    tpl = TopicPartitionList::new();
                    for p in &partitions {
                        let _ = tpl.add_partition_offset(topic, *p, Offset::Beginning);
                    }
                }
            }
        }
        for p in &partitions {
            self.advance(*p, 0);
        }
        if let Err(e) = consumer.assign(&tpl) {
            warn!(%topic, error = %e, "cannot assign the partitions");
            return Ok(());
        }
        let mut at_end: HashSet<i32> = HashSet::new();
        let mut applied = 0u64;
        info!(%topic, partitions = partitions.len(), "reading topic");
        let mut reached = |p: i32, at_end: &mut HashSet<i32>| {
            progress(Progress::PartitionEnd(p));
            if at_end.insert(p)
                && at_end.len() == partitions.len()
                && !self.caught_up.send_replace(true)
            {
                info!(%topic, "topic read to its end");
            }
        };
        // Partitions with nothing to read are at their end already.
        for p in &partitions {
            let from = tpl
                .find_partition(topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            if let (Some(&end), Some(from)) = (targets.get(p), from) {
                if from >= end {
                    // Read up to `from` already (a checkpoint at the end):
                    // a barrier needs no record to know it.
                    self.advance(*p, from);
                    reached(*p, &mut at_end);
                }
            }
        }
        let mut batch = Vec::with_capacity(FOLLOW_BATCH);
        loop {
            let next = tokio::select! {
                m = consumer.recv() => m,
                _ = shutdown.changed() => return Ok(()),
            };
            // What else is fetched already comes along, without waiting.
            let mut next = Some(next);
            while let Some(Ok(message)) = next {
                batch.push(message);
                next = match batch.len() < FOLLOW_BATCH {
                    true => consumer.recv().now_or_never(),
                    false => None,
                };
            }
            if !batch.is_empty() {
                apply(&batch);
                for message in batch.drain(..) {
                    let (p, next) = (
                        rdkafka::Message::partition(&message),
                        rdkafka::Message::offset(&message) + 1,
                    );
                    self.advance(p, next);
                    if !at_end.contains(&p) && targets.get(&p).is_some_and(|&end| next >= end) {
                        reached(p, &mut at_end);
                    }
                    // While records keep coming, `recv` is always ready and
                    // this loop would never give its task back: let whatever
                    // shares the task (a caller's watcher) run now and then.
                    applied += 1;
                    if applied % 256 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }
            match next {
                None | Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // At the end: the fetch position is the end offset.
                    if let Some(o) = position_of(&consumer, topic, p) {
                        self.advance(p, o);
                    }
                    reached(p, &mut at_end);
                }
                Some(Err(e)) => {
                    debug!(%topic, error = %e, "topic reader error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// The read position of one partition of `consumer`'s assignment: the
/// offset after the last record handed out (at a partition's end, its end
/// offset, past any control records), as librdkafka holds it in memory.
///
/// rdkafka's `Consumer::position` first asks the consumer's own thread for
/// the whole assignment and blocks until it answers. Called at every
/// partition end of a topic written while it is followed (the feedback
/// topic, ~240 times a second at 1,000 events/s), that wait held a runtime
/// worker each time. `rd_kafka_position` for the one partition reads the
/// same position without asking.
fn position_of<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    // SAFETY: the client pointer lives as long as `consumer` and the list's
    // as long as `tpl`, both borrowed for the call; `rd_kafka_position` only
    // sets the offsets of the list's own elements.
    let error =
        unsafe { rdkafka::bindings::rd_kafka_position(consumer.client().native_ptr(), tpl.ptr()) };
    if error != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return None;
    }
    match tpl.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// One record read back from a topic.
pub struct Read {
    pub key: Option<String>,
    /// The value; empty for a tombstone.
    pub payload: Vec<u8>,
    /// A record without a value (a deletion on a compacted topic).
    pub tombstone: bool,
    pub timestamp_ms: i64,
}

/// Where [`read_back`] starts in each partition.
#[derive(Debug, Clone, Copy)]
pub enum ReadFrom {
    /// At the first record with this timestamp or later, epoch ms.
    Time(i64),
    /// This many records before the end.
    Last(i64),
}

/// The records of every partition of `topic` from `from`, with a timestamp
/// before `until_ms`, read once with a fresh consumer that commits nothing,
/// up to the end of each partition — found by reaching it, not by the high
/// watermark, which some brokers under-report after batched writes — or until
/// `limit` has passed. Sorted by timestamp. Blocking.
pub fn read_back(
    client: &ClientConfig,
    topic: &str,
    from: ReadFrom,
    until_ms: i64,
    limit: Duration,
) -> Result<Vec<Read>, String> {
    use rdkafka::Message as _;
    let consumer: BaseConsumer<EndIsNormal> = client
        .clone()
        .set("group.id", format!("herald-read-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(EndIsNormal)
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(10);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let partitions = partition_ids(&md);
    if partitions.is_empty() {
        return Err(format!("topic `{topic}` does not exist"));
    }
    let mut tpl = TopicPartitionList::new();
    let marks = match from {
        ReadFrom::Last(_) => super::offsets::watermarks(&consumer, topic, &partitions, timeout)
            .map_err(|e| e.to_string())?,
        ReadFrom::Time(_) => HashMap::new(),
    };
    for p in &partitions {
        let offset = match (from, marks.get(p)) {
            (ReadFrom::Time(ms), _) => Offset::Offset(ms),
            (ReadFrom::Last(n), Some(&(low, high))) => Offset::Offset((high - n).max(low)),
            (ReadFrom::Last(_), None) => return Err(format!("no offsets for partition {p}")),
        };
        tpl.add_partition_offset(topic, *p, offset)
            .map_err(|e| e.to_string())?;
    }
    if let ReadFrom::Time(_) = from {
        // Partitions with nothing since then come back at their end.
        tpl = consumer
            .offsets_for_times(tpl, timeout)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let since_ms = match from {
        ReadFrom::Time(ms) => ms,
        ReadFrom::Last(_) => i64::MIN,
    };
    let mut open: HashSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    while !open.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let ts = m.timestamp().to_millis().unwrap_or(0);
                // Not every broker finds the offset by time exactly: check.
                if ts < since_ms {
                    continue;
                }
                if ts >= until_ms {
                    open.remove(&m.partition());
                    continue;
                }
                out.push(Read {
                    key: m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .map(str::to_string),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    tombstone: m.payload().is_none(),
                    timestamp_ms: ts,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    out.sort_by_key(|r| r.timestamp_ms);
    Ok(out)
}

/// The partitions of the topics a metadata answer describes without error
/// (none for a topic that does not exist).
pub fn partition_ids(metadata: &rdkafka::metadata::Metadata) -> Vec<i32> {
    metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

//! Writing herald's records to Kafka: each write retried until the broker has
//! it, the producer rebuilt after a fatal error, and what readiness reports.
//!
//! A record herald cannot write holds back its message's offset (the
//! acknowledger waits for it), so nothing is lost; but a write that keeps
//! failing stalls its partition, and that must never be silent. Every write
//! that has failed once counts in `herald_writes_failing` until it succeeds,
//! and readiness names the topic and the error. A fatal producer error
//! (librdkafka's idempotent producer fenced or out of sequence) ends that
//! producer for good: the first write to see it builds a new one, and every
//! write in flight retries on it.
//!
//! Each record is written once: librdkafka never times a record out
//! (`message.timeout.ms = 0`) and retries it itself, idempotently (sequence
//! numbers per partition), until the broker has it; a write not
//! acknowledged within [`SLOW`] counts as failing for readiness while it
//! still waits. herald sends a record again only after a definite error
//! (the record was refused, never written) or on a rebuilt producer; before,
//! it sent again after librdkafka's 30 s timeout, and a record that had
//! landed after all was written twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tracing::{error, warn};

/// How long a write may wait for its acknowledgement before it counts as
/// failing (readiness names it).
const SLOW: Duration = Duration::from_secs(30);

/// What the readiness check needs to know about writes.
pub struct WriteHealth {
    failing: AtomicUsize,
    /// The oldest write still failing: its topic, error and since when.
    stuck: Mutex<Option<(String, String, Instant)>>,
    /// The producer is fatally broken and could not be rebuilt.
    broken: Mutex<Option<String>>,
    failing_gauge: IntGauge,
    rebuilds: IntCounter,
}

impl WriteHealth {
    /// Health reported through the given metric handles.
    pub fn new(failing_gauge: IntGauge, rebuilds: IntCounter) -> WriteHealth {
        WriteHealth {
            failing: AtomicUsize::new(0),
            stuck: Mutex::new(None),
            broken: Mutex::new(None),
            failing_gauge,
            rebuilds,
        }
    }

    /// Why writes cannot make progress now, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if let Some(e) = self
            .broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Some(format!("producer fatally broken and not rebuilt: {e}"));
        }
        let failing = self.failing.load(Ordering::Acquire);
        if failing == 0 {
            return None;
        }
        let stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
        let (topic, error, since) = stuck.as_ref()?;
        Some(format!(
            "{failing} record(s) not written; the oldest to {topic} failing for {} s: {error}",
            since.elapsed().as_secs()
        ))
    }

    fn failed(&self, topic: &str, error: &KafkaError) {
        self.failing.fetch_add(1, Ordering::AcqRel);
        self.failing_gauge.inc();
        let mut stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
        if stuck.is_none() {
            *stuck = Some((topic.to_string(), error.to_string(), Instant::now()));
        }
    }

    fn recovered(&self) {
        if self.failing.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.stuck.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.failing_gauge.dec();
    }
}

/// The Kafka side of a recorder: one producer, replaced when it breaks.
pub struct KafkaWriter {
    config: ClientConfig,
    producer: ArcSwap<FutureProducer>,
    rebuilding: Mutex<()>,
    pub health: Arc<WriteHealth>,
}

impl KafkaWriter {
    /// A writer that builds its producer from `config` (and again after a fatal error).
    pub fn new(config: ClientConfig, health: Arc<WriteHealth>) -> Result<KafkaWriter, KafkaError> {
        let producer: FutureProducer = config.create()?;
        Ok(KafkaWriter {
            config,
            producer: ArcSwap::from_pointee(producer),
            rebuilding: Mutex::new(()),
            health,
        })
    }

    /// The producer in use now.
    pub fn producer(&self) -> Arc<FutureProducer> {
        self.producer.load_full()
    }

    /// Enqueues one record now (so records keep their order) and returns a
    /// future that resolves once the broker has it, retrying until then.
    pub fn write(
        self: &Arc<Self>,
        topic: String,
        partition: Option<i32>,
        key: String,
        payload: Option<Vec<u8>>,
    ) -> super::Pending {
        let written = self.write_at(topic, partition, key, payload);
        Box::pin(async move {
            written.await;
        })
    }

    /// [`KafkaWriter::write`], resolving to the offset the record was
    /// written at (a store that mirrors a changelog checkpoints by it).
    pub fn write_at(
        self: &Arc<Self>,
        topic: String,
        partition: Option<i32>,
        key: String,
        payload: Option<Vec<u8>>,
    ) -> super::Written {
        let writer = Arc::clone(self);
        let mut producer = writer.producer();
        let mut attempt = producer
            .send_result(record(&topic, partition, &key, &payload))
            .map_err(|(e, _)| e);
        Box::pin(async move {
            let mut wait = Duration::from_millis(100);
            let mut counted = false;
            let offset = loop {
                let error = match attempt {
                    Ok(delivery) => {
                        tokio::pin!(delivery);
                        // Not sent again while it waits: it may yet land.
                        let answered = tokio::select! {
                            answered = &mut delivery => answered,
                            _ = tokio::time::sleep(SLOW) => {
                                if !counted {
                                    counted = true;
                                    let slow = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
                                    writer.health.failed(&topic, &slow);
                                }
                                warn!(%topic, "record not acknowledged after 30 s; still waiting (its offset is held back)");
                                delivery.await
                            }
                        };
                        match answered {
                            Ok(Ok(delivered)) => break delivered.offset,
                            Ok(Err((e, _))) => e,
                            Err(_) => KafkaError::Canceled,
                        }
                    }
                    Err(e) => e,
                };
                // A full local queue is back-pressure, not a failure.
                let backpressure = matches!(
                    error,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                );
                if !backpressure && !counted {
                    counted = true;
                    writer.health.failed(&topic, &error);
                }
                if let Some((code, reason)) = producer.client().fatal_error() {
                    writer.rebuild(&producer, code, &reason);
                } else if !backpressure {
                    // Refused, not timed out (librdkafka does not time records out).
                    warn!(%topic, %error, "record not written; sending it again (its offset is held back)");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                producer = writer.producer();
                attempt = producer
                    .send_result(record(&topic, partition, &key, &payload))
                    .map_err(|(e, _)| e);
            };
            if counted {
                writer.health.recovered();
            }
            offset
        })
    }

    /// Replaces `broken` with a new producer, unless another write already did.
    fn rebuild(&self, broken: &Arc<FutureProducer>, code: RDKafkaErrorCode, reason: &str) {
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&self.producer.load(), broken) {
            return;
        }
        error!(?code, %reason, "producer fatally failed; building a new one");
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                self.producer.store(Arc::new(fresh));
                self.health.rebuilds.inc();
                *self.health.broken.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => {
                *self.health.broken.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{code:?} {reason}; rebuild failed: {e}"));
            }
        }
    }
}

fn record<'a>(
    topic: &'a str,
    partition: Option<i32>,
    key: &'a str,
    payload: &'a Option<Vec<u8>>,
) -> FutureRecord<'a, str, [u8]> {
    let mut r = FutureRecord::to(topic).key(key);
    if let Some(p) = partition {
        // State records go to the partition of the stage partition they belong to.
        r = r.partition(p);
    }
    match payload {
        Some(p) => r.payload(p.as_slice()),
        None => r,
    }
}

//! The suite's steady stream of swipes, paced, with a producer that is replaced when it stops getting acknowledgements.
//!
//! After several long broker freezes the suite's own producer has stalled
//! (full runs of 2026-12-05 and 2026-12-06: no acknowledgement for the rest
//! of the scenario, and ~52,000 swipes timed out after 10 minutes, never
//! produced and so not counted). herald was not at fault, but those swipes
//! tested nothing. Now, when no write has been acknowledged for [`stall()`] (90 s)
//! while some are waiting, the stream starts a new producer, takes the
//! records the old one never sent out of its queue and writes them with
//! the new one. Records already sent to the broker stay with the old
//! producer (sent again they could land twice); they are acknowledged or
//! time out as before.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer, PurgeConfig};
use tokio::sync::watch;

use super::load::{self, Ledger, Unsent};

/// How long without any acknowledgement, with writes waiting, before the
/// producer is taken as stalled: longer than the suite's longest freeze
/// (60 s) and the reconnect after it. `HERALD_FAULTS_STALL_S` sets another,
/// to check this mechanism itself (`HERALD_FAULTS_STALL_S=10
/// scripts/faults.sh --short --only freeze-group` replaces the producer
/// during the 20 s freeze).
pub fn stall() -> Duration {
    static STALL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *STALL.get_or_init(|| {
        let seconds = std::env::var("HERALD_FAULTS_STALL_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90);
        Duration::from_secs(seconds)
    })
}

/// The stream's producer, replaceable.
struct Source {
    bootstrap: String,
    current: RwLock<FutureProducer>,
    last_ack_ms: AtomicI64,
    replaced: AtomicUsize,
}

impl Source {
    fn producer(&self) -> FutureProducer {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes one swipe; one purged from a stalled producer's queue is
    /// written again with its replacement.
    async fn send(&self, topic: &str, ledger: &Ledger, eid: String, key: &str, payload: &[u8]) {
        loop {
            let producer = self.producer();
            let sent = load::send(
                &producer,
                topic,
                ledger,
                eid.clone(),
                Some(key),
                Some(payload),
                None,
            )
            .await;
            match sent {
                Ok(()) => {
                    self.last_ack_ms
                        .store(herald::util::now_ms(), Ordering::Relaxed);
                    return;
                }
                Err(Unsent::Purged) => continue,
                Err(Unsent::Failed(why)) => {
                    eprintln!("faults: {why}");
                    return;
                }
            }
        }
    }

    /// Whether nothing has been acknowledged for [`stall()`].
    fn stalled(&self) -> bool {
        let quiet = herald::util::now_ms() - self.last_ack_ms.load(Ordering::Relaxed);
        quiet > stall().as_millis() as i64
    }

    /// Replaces the producer when `waiting` writes have had no
    /// acknowledgement for [`stall()`].
    fn replace_if_stalled(&self, prefix: &str, waiting: usize) {
        if waiting == 0 || !self.stalled() {
            return;
        }
        eprintln!(
            "faults: {prefix}: no swipe acknowledged for {} s with {waiting} waiting; replacing the suite's producer",
            stall().as_secs(),
        );
        if let Err(e) = self.replace() {
            eprintln!("faults: {prefix}: a new producer: {e}");
        }
    }

    /// Starts a new producer and empties the old one's queue (its purged
    /// records fail with `PurgeQueue` and are written again by `send`).
    fn replace(&self) -> Result<(), String> {
        let fresh = load::producer_to(&self.bootstrap)?;
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        tokio::task::block_in_place(|| old.purge(PurgeConfig::default().queue()));
        self.replaced.fetch_add(1, Ordering::Relaxed);
        self.last_ack_ms
            .store(herald::util::now_ms(), Ordering::Relaxed);
        Ok(())
    }
}

/// What a stream wrote.
pub struct Fed {
    /// How many times its producer was replaced after [`stall()`].
    pub replaced: usize,
}

/// Produces swipes at `rate` per second until `stop` turns true; each write is
/// awaited in the background so a slow broker delays acknowledgements, not the pace.
pub async fn stream(
    producer: FutureProducer,
    bootstrap: String,
    topic: String,
    ledger: Ledger,
    prefix: String,
    rate: u32,
    mut stop: watch::Receiver<bool>,
) -> Fed {
    let source = Arc::new(Source {
        bootstrap,
        current: RwLock::new(producer),
        last_ack_ms: AtomicI64::new(herald::util::now_ms()),
        replaced: AtomicUsize::new(0),
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate as u64));
    let mut inflight = tokio::task::JoinSet::new();
    let mut n = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let eid = format!("{prefix}-{n}");
        let (key, payload) = load::swipe(&eid, n);
        let (writer, topic, ledger) = (Arc::clone(&source), topic.clone(), Arc::clone(&ledger));
        inflight.spawn(async move { writer.send(&topic, &ledger, eid, &key, &payload).await });
        n += 1;
        while inflight.try_join_next().is_some() {}
        source.replace_if_stalled(&prefix, inflight.len());
    }
    // The writes still waiting when the stream stops. A producer that stalls
    // now (a broker thawed a moment ago) is replaced as it is mid-stream:
    // a CI run's `sigterm-frozen` waited here for ever, its last swipes
    // never acknowledged by the old producer.
    loop {
        tokio::select! {
            joined = inflight.join_next() => if joined.is_none() { break },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                source.replace_if_stalled(&prefix, inflight.len());
            }
        }
    }
    Fed {
        replaced: source.replaced.load(Ordering::Relaxed),
    }
}

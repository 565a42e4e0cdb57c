//! `herald simulate`: publishes realistic transactions, sensor readings and
//! location pings at a fixed rate (open loop), and the profiles they need.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

pub mod generate;
pub use generate::{Generator, Record};

/// Topic names per stream.
#[derive(Debug, Clone)]
pub struct StreamTopics {
    pub transactions: String,
    pub sensors: String,
    pub locations: String,
}

impl Default for StreamTopics {
    fn default() -> Self {
        StreamTopics {
            transactions: generate::TRANSACTIONS.into(),
            sensors: generate::SENSORS.into(),
            locations: generate::LOCATIONS.into(),
        }
    }
}

impl StreamTopics {
    fn name(&self, stream: &str) -> &str {
        match stream {
            generate::SENSORS => &self.sensors,
            generate::LOCATIONS => &self.locations,
            _ => &self.transactions,
        }
    }
}

/// What was published.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Events acknowledged per topic.
    pub sent: BTreeMap<String, u64>,
    /// Events the broker did not take.
    pub failed: u64,
    pub elapsed: Duration,
}

impl Report {
    /// Events acknowledged in all.
    pub fn total(&self) -> u64 {
        self.sent.values().sum()
    }
}

/// A producer tuned for low latency (no batching delay).
pub fn producer(
    brokers: &str,
    properties: &[(String, String)],
) -> Result<FutureProducer, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in properties {
        config.set(k, v);
    }
    config.create()
}

/// Publishes every profile of the generator's population; returns how many.
pub async fn publish_profiles(
    producer: &FutureProducer,
    topic: &str,
    generator: &mut Generator,
) -> Result<u64, KafkaError> {
    // Many in flight at once (a million profiles would take minutes one
    // acknowledgement at a time), at most CHUNK generated ahead.
    const CHUNK: usize = 20_000;
    let total = generator.profile_count();
    let mut n = 0;
    while n < total {
        let chunk: Vec<(String, Vec<u8>)> = (n..(n + CHUNK).min(total))
            .map(|i| {
                let (user, profile) = generator.profile(i);
                (user, serde_json::to_vec(&profile).unwrap_or_default())
            })
            .collect();
        let sends = chunk.iter().map(|(user, payload)| {
            producer.send(
                FutureRecord::to(topic).key(user).payload(payload),
                Duration::from_secs(60),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        n += chunk.len();
    }
    Ok(n as u64)
}

/// How long and how fast to publish.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Events per second.
    pub rate: f64,
    /// Stop after this long…
    pub duration: Option<Duration>,
    /// …or after this many events, whichever comes first.
    pub count: Option<u64>,
}

/// Publishes events on a fixed schedule: event n is due at n / rate seconds,
/// whether or not earlier sends were acknowledged (open loop). Stops at the end
/// of the schedule or when `stop` resolves.
pub async fn run(
    producer: &FutureProducer,
    topics: &StreamTopics,
    mut next: impl FnMut(i64) -> Record,
    schedule: Schedule,
    stop: impl std::future::Future<Output = ()>,
) -> Report {
    let mut stop = std::pin::pin!(stop);
    let start = Instant::now();
    let mut report = Report::default();
    let mut due_sent: u64 = 0;
    let mut pending = FuturesUnordered::new();
    loop {
        let elapsed = start.elapsed();
        if schedule.duration.is_some_and(|d| elapsed >= d)
            || schedule.count.is_some_and(|c| due_sent >= c)
        {
            break;
        }
        let mut due = (elapsed.as_secs_f64() * schedule.rate) as u64 + 1;
        if let Some(c) = schedule.count {
            due = due.min(c);
        }
        while due_sent < due {
            let record = next(crate::util::now_ms());
            let topic = topics.name(record.topic).to_string();
            let payload = serde_json::to_vec(&record.value).unwrap_or_default();
            loop {
                match producer
                    .send_result(FutureRecord::to(&topic).key(&record.key).payload(&payload))
                {
                    Ok(delivery) => {
                        pending.push(delivery.map(move |r| (topic.clone(), r)));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        report.failed += 1;
                        break;
                    }
                }
            }
            due_sent += 1;
        }
        while let Some(Some((topic, result))) = pending.next().now_or_never() {
            count(&mut report, topic, result);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            _ = &mut stop => break,
        }
    }
    while let Some((topic, result)) = pending.next().await {
        count(&mut report, topic, result);
    }
    report.elapsed = start.elapsed();
    report
}

fn count<T, E>(
    report: &mut Report,
    topic: String,
    result: Result<Result<T, E>, futures::channel::oneshot::Canceled>,
) {
    match result {
        Ok(Ok(_)) => *report.sent.entry(topic).or_default() += 1,
        _ => report.failed += 1,
    }
}

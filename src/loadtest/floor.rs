//! The floor: a bare rdkafka consumer that only decodes the same events, with
//! the same client settings, measured under the same open-loop rate.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};

use crate::demo::stats::Latencies;
use crate::util::now_ms;

/// A subscribed consumer with herald's low-latency consumer settings.
pub fn consumer(brokers: &str, topic: &str) -> Result<StreamConsumer, String> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("floor-{:x}", rand::random::<u64>()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "50")
        .set("session.timeout.ms", "6000")
        .create()
        .map_err(|e| e.to_string())?;
    c.subscribe(&[topic]).map_err(|e| e.to_string())?;
    Ok(c)
}

/// Waits until the consumer owns partitions (the group join), up to 30 s.
pub async fn wait_assigned(c: &StreamConsumer) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // Polling drives the join; nothing is produced yet, so nothing is lost.
        let _ = tokio::time::timeout(Duration::from_millis(100), c.recv()).await;
        if c.assignment().map(|a| a.count()).unwrap_or(0) > 0 {
            return Ok(());
        }
    }
    Err("the floor consumer was not assigned partitions within 30 s".into())
}

/// Consumes until `want` events arrived or `limit` passes; each event's
/// latency is now − its `produced_ms`. Returns the samples and when the first
/// and last event arrived.
pub async fn measure(
    c: &StreamConsumer,
    want: u64,
    limit: Duration,
) -> (Latencies, Option<(Instant, Instant)>) {
    let mut latencies = Latencies::default();
    let deadline = Instant::now() + limit;
    let mut span: Option<(Instant, Instant)> = None;
    let mut seen = 0;
    while seen < want && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await else {
            continue;
        };
        let produced = m
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .and_then(|v| v.get("produced_ms").and_then(serde_json::Value::as_i64));
        if let Some(p) = produced {
            latencies.push((now_ms() - p) as f64);
        }
        let now = Instant::now();
        span = Some(span.map_or((now, now), |(first, _)| (first, now)));
        seen += 1;
    }
    (latencies, span)
}

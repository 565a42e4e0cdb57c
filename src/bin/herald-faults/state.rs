//! The state scenario's tools: profile rewrites at a high rate while herald is killed, and the comparison of its profile table on disk with a rebuild from the profiles topic.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use herald::profile::ProfileTable;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::load::{Topics, USERS};

/// Rewrites profiles of the scenario's users (and of as many again that
/// come and go) until `stop`: new consent, locale and attributes, some
/// invalid phone numbers, some deletions; 500 records in flight at a time.
/// Returns the records written.
pub async fn rewrite_profiles(
    producer: FutureProducer,
    topics: Topics,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let mut written = 0;
    let mut round = 0u64;
    while !*stop.borrow() {
        round += 1;
        let records: Vec<(String, Option<Vec<u8>>)> = {
            let mut rng = rand::rng();
            (0..500)
                .map(|_| {
                    let u = rng.random_range(0..USERS * 2);
                    let user = format!("u{u}");
                    // Users past USERS come and go; the scenario's own stay.
                    if u >= USERS && rng.random_bool(0.3) {
                        return (user, None);
                    }
                    let phone = if rng.random_bool(0.1) {
                        "+1 555".to_string()
                    } else {
                        format!("+3361234{:04}", rng.random_range(0..10_000))
                    };
                    let profile = serde_json::json!({
                        "user_id": user,
                        "push_tokens": [{"token": format!("fcm-token-{user}"), "platform": "android"}],
                        "phone": phone,
                        "time_zone": "Europe/Paris",
                        "locale": if rng.random_bool(0.5) { "fr-FR" } else { "en-GB" },
                        "consent": {"push": true, "sms": rng.random_bool(0.5)},
                        "attributes": {"round": round, "tier": rng.random_range(0..5)},
                    });
                    (user, Some(serde_json::to_vec(&profile).unwrap_or_default()))
                })
                .collect()
        };
        let sends = records.iter().map(|(user, payload)| {
            let mut record = FutureRecord::to(&topics.profiles).key(user);
            if let Some(p) = payload {
                record = record.payload(p);
            }
            producer.send(record, Duration::from_secs(30))
        });
        written += futures::future::join_all(sends)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => {}
        }
    }
    written
}

/// Every record of `topic` in partition order: (partition, offset, key, value).
type Records = Vec<(i32, i64, Option<Vec<u8>>, Option<Vec<u8>>)>;

fn read_topic(bootstrap: &str, topic: &str) -> Result<(Records, BTreeMap<i32, i64>), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "herald-faults-state")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    let mut open = BTreeMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        ends.insert(p.id(), high);
        if high > low {
            open.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .map_err(|e| e.to_string())?;
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return Ok((out, ends));
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !open.is_empty() && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.map_err(|e| e.to_string())?;
        out.push((
            m.partition(),
            m.offset(),
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
        ));
        if open
            .get(&m.partition())
            .is_some_and(|&end| m.offset() + 1 >= end)
        {
            open.remove(&m.partition());
        }
    }
    if !open.is_empty() {
        return Err(format!("{topic} not read to its end within 120 s"));
    }
    Ok((out, ends))
}

/// Compares the profile table herald left in `state_dir` (its first slot)
/// with one rebuilt from the whole profiles topic: every key of the topic,
/// its profile (or its absence) and the table's checkpoint. Returns the
/// users compared and every difference.
pub fn compare_profiles(
    state_dir: &Path,
    bootstrap: &str,
    topic: &str,
) -> Result<(usize, Vec<String>), String> {
    let store = herald::store::Store::open(state_dir, 16 << 20).map_err(|e| e.to_string())?;
    let table = store
        .table("profiles", ProfileTable::FORMAT)
        .map_err(|e| e.to_string())?;
    let checkpoint = table.checkpoint().map_err(|e| e.to_string())?;
    let disk = ProfileTable::on_disk(table, 1_000);
    let (records, ends) = read_topic(bootstrap, topic)?;
    let rebuilt = ProfileTable::new();
    let metrics = herald::metrics::Metrics::new();
    let mut users = std::collections::BTreeSet::new();
    for (_, _, key, value) in records {
        if let Some(key) = key {
            users.insert(String::from_utf8_lossy(&key).to_string());
            rebuilt.apply(Some(&key), value.as_deref(), &metrics);
        }
    }
    let mut differ = Vec::new();
    let shown = |p: Option<std::sync::Arc<herald::profile::Profile>>| {
        p.map(|p| {
            (
                serde_json::to_string(&*p).unwrap_or_default(),
                p.phone_invalid,
                p.time_zone_invalid,
            )
        })
    };
    for user in &users {
        let (a, b) = (shown(disk.get(user)), shown(rebuilt.get(user)));
        if a != b {
            differ.push(format!("{user}: on disk {a:?}, rebuilt {b:?}"));
        }
    }
    for (partition, end) in ends {
        let held = checkpoint.get(&partition).copied().unwrap_or(0);
        if held != end {
            differ.push(format!(
                "partition {partition}: checkpoint {held}, topic ends at {end}"
            ));
        }
    }
    Ok((users.len(), differ))
}

//! The state scenario's tools: profile rewrites at a high rate while herald is killed, and the comparison of its tables on disk (profiles, send ledger) with rebuilds from their topics.

use std::path::Path;
use std::time::Duration;

use herald::profile::ProfileTable;
use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use super::load::{Topics, USERS};
use super::tally;

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

/// Compares the profile table herald left in `state_dir` (its first slot)
/// with one rebuilt from the whole profiles topic: every key of the topic,
/// its profile (or its absence) and the table's checkpoint. Returns the
/// users compared and every difference.
pub fn compare_profiles(
    state_dir: &Path,
    bootstrap: &str,
    topic: &str,
) -> Result<(usize, Vec<String>), String> {
    let store = open_store(state_dir)?;
    let table = store
        .sealed_table("profiles", ProfileTable::FORMAT)
        .map_err(|e| e.to_string())?;
    let checkpoint = table.checkpoint().map_err(|e| e.to_string())?;
    let disk = ProfileTable::on_disk(table, 1_000);
    let read = read_whole(bootstrap, topic)?;
    let (records, ends) = (read.records, read.ends);
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

/// The store herald left in `state_dir` (its first slot, the one a lone
/// instance takes), opened as a restart would.
pub fn open_store(state_dir: &Path) -> Result<herald::store::Store, String> {
    herald::store::Store::open(state_dir, 16 << 20).map_err(|e| e.to_string())
}

/// The whole of `topic`, read to its end (an error when it cannot be).
pub fn read_whole(bootstrap: &str, topic: &str) -> Result<tally::ReadBack, String> {
    let read = tally::read_records(bootstrap, topic, Duration::from_secs(120))?;
    match read.complete {
        true => Ok(read),
        false => Err(format!("{topic} not read to its end within 120 s")),
    }
}

/// A changelog on `topic` as herald restores it, writing nowhere.
fn changelog_of(bootstrap: &str, topic: &str) -> herald::state::Changelog {
    let (recorder, _) = herald::outcome::Recorder::in_memory(String::new(), String::new());
    let reader = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .clone();
    herald::state::Changelog::new(topic.to_string(), recorder, reader)
}

/// Compares the send ledger herald left in `state_dir` (its first slot)
/// with one rebuilt from its whole changelog: the ledger on disk is first
/// brought up to the changelog's end from its checkpoint, as a restart
/// does, then every key's entry and every user's counted sends must be the
/// rebuild's. Returns the keys compared, the records the restart read past
/// the checkpoint, and every difference.
pub fn compare_ledger(
    state_dir: &Path,
    bootstrap: &str,
    topic: &str,
) -> Result<(usize, usize, Vec<String>), String> {
    use herald::state::SendLedger;
    let store = open_store(state_dir)?;
    let table = store
        .table("ledger", herald::state::ledger_store::FORMAT)
        .map_err(|e| e.to_string())?;
    let read = read_whole(bootstrap, topic)?;
    let partitions: Vec<i32> = read.ends.keys().copied().collect();
    let ledger = SendLedger::new(
        partitions.len() as i32,
        changelog_of(bootstrap, topic),
        Some(table.clone()),
    );
    let restored = ledger
        .restore(&partitions, herald::util::now_ms(), Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let mut newest = std::collections::BTreeMap::new();
    for (_, _, key, value) in read.records {
        let key = String::from_utf8_lossy(&key.unwrap_or_default()).to_string();
        let entry = value.and_then(|v| herald::state::wire::decode_ledger(&v).ok());
        newest.insert(key, entry);
    }
    let mut differ = Vec::new();
    let mut counted: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (key, entry) in &newest {
        let Some(entry) = entry else { continue };
        if entry.counts_for_caps() {
            counted
                .entry(entry.user.to_string())
                .or_default()
                .push(entry.at_ms);
        }
        let on_disk = ledger.entry(&entry.user, key);
        if on_disk.as_ref() != Some(entry) {
            differ.push(format!("{key}: on disk {on_disk:?}, rebuilt {entry:?}"));
        }
    }
    for (user, mut at) in counted {
        at.sort_unstable();
        let on_disk: Vec<i64> = ledger.sends_of(&user, 0).iter().map(|s| s.at_ms).collect();
        if on_disk != at {
            differ.push(format!(
                "sends of {user}: on disk {on_disk:?}, rebuilt {at:?}"
            ));
        }
    }
    // No entry on disk that the changelog never had.
    let rows = table.scan(&[]).map_err(|e| e.to_string())?;
    for (row, _) in rows.iter().filter(|(row, _)| row.get(4) == Some(&b'e')) {
        let key = String::from_utf8_lossy(&row[5..]).to_string();
        if !newest.contains_key(&key) {
            differ.push(format!("{key}: on disk, never in the changelog"));
        }
    }
    Ok((newest.len(), restored.records, differ))
}

/// Compares a changelog's copy on disk (pattern state) with a rebuild
/// from the whole changelog: brought up from its checkpoint as a restart
/// does, every key's newest value must be the changelog's, and no key the
/// changelog deleted may remain. Returns the keys compared, the records
/// read past the checkpoint, and every difference.
pub fn compare_mirror(
    state_dir: &Path,
    bootstrap: &str,
    topic: &str,
) -> Result<(usize, usize, Vec<String>), String> {
    use herald::state::mirror::{Mirror, FORMAT};
    let store = open_store(state_dir)?;
    let table = store
        .sealed_table(&Mirror::table_name(topic), FORMAT)
        .map_err(|e| e.to_string())?;
    let read = read_whole(bootstrap, topic)?;
    let partitions: Vec<i32> = read.ends.keys().copied().collect();
    // Its records are sealed under herald's state key, their keys blinded.
    let seal = std::sync::Arc::new(herald::state::sealed::ChangelogSeal::new(
        store.sealer().clone(),
        herald::store::Sealer::previous().ok().flatten(),
        herald::patterns::store::identity,
    ));
    let changelog = changelog_of(bootstrap, topic)
        .sealed(std::sync::Arc::clone(&seal))
        .mirrored(table.clone(), herald::patterns::on_disk::wake_of);
    let before = table.checkpoint().map_err(|e| e.to_string())?;
    let restored = changelog
        .restore_all(&partitions, Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let tail: i64 = read
        .ends
        .iter()
        .map(|(p, end)| end - before.get(p).copied().unwrap_or(0))
        .sum();
    let mirror = changelog.mirror().ok_or("no copy on disk")?;
    let mut on_disk = std::collections::BTreeMap::new();
    for &partition in restored.changes.keys() {
        mirror
            .for_each(partition, |key, value| {
                on_disk.insert((partition, key.to_string()), Some(value.to_vec()));
            })
            .map_err(|e| e.to_string())?;
    }
    let mut rebuilt = std::collections::BTreeMap::new();
    let mut moved = std::collections::HashMap::new();
    for (partition, _, key, value) in read.records {
        let key = String::from_utf8_lossy(&key.unwrap_or_default()).to_string();
        let change = herald::state::Change { key, value };
        match seal.open(change, &mut moved) {
            herald::state::sealed::Opened::Current(c)
            | herald::state::sealed::Opened::Moved { change: c, .. } => {
                rebuilt.insert((partition, c.key), c.value);
            }
            herald::state::sealed::Opened::Unreadable => {
                return Err(format!(
                    "{topic}[{partition}]: a record herald's key does not open"
                ))
            }
        }
    }
    on_disk.retain(|_, v| v.is_some());
    rebuilt.retain(|_, v| v.is_some());
    let mut differ = Vec::new();
    for (key, value) in &rebuilt {
        if on_disk.get(key) != Some(value) {
            differ.push(format!(
                "{key:?}: on disk differs from the changelog's newest"
            ));
        }
    }
    for key in on_disk.keys() {
        if !rebuilt.contains_key(key) {
            differ.push(format!(
                "{key:?}: on disk, deleted or never in the changelog"
            ));
        }
    }
    Ok((rebuilt.len(), tail.max(0) as usize, differ))
}

/// Compares the feedback table herald left in `state_dir` (its first slot)
/// with the feedback topic up to the table's checkpoint: every message the
/// topic says was sent (`herald_sent`) is on disk under its idempotency
/// key, as replies and engagement look it up. Returns the sends compared
/// and every one missing.
pub fn compare_feedback(
    state_dir: &Path,
    bootstrap: &str,
    topic: &str,
) -> Result<(usize, Vec<String>), String> {
    use herald::feedback::disk::{FeedbackDisk, FORMAT};
    let store = open_store(state_dir)?;
    let table = |name| store.sealed_table(name, FORMAT).map_err(|e| e.to_string());
    let feedback = table("feedback")?;
    let checkpoint = feedback.checkpoint().map_err(|e| e.to_string())?;
    let disk = FeedbackDisk::new(feedback, table("consent")?);
    let read = read_whole(bootstrap, topic)?;
    let (mut compared, mut missing) = (0, Vec::new());
    for (partition, offset, _, value) in read.records {
        if offset >= checkpoint.get(&partition).copied().unwrap_or(0) {
            continue;
        }
        let record: serde_json::Value = match value.map(|v| serde_json::from_slice(&v)) {
            Some(Ok(r)) => r,
            _ => continue,
        };
        if record["type"] != "herald_sent" {
            continue;
        }
        let key = record["idempotency_key"].as_str().unwrap_or_default();
        compared += 1;
        if disk.sent_by_key(key).is_none() {
            missing.push(format!(
                "feedback: herald_sent {key} (partition {partition}, offset {offset}) below the checkpoint, not on disk"
            ));
        }
    }
    Ok((compared, missing))
}

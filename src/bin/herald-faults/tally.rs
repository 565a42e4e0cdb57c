//! Counting what happened to every event: provider requests (from the
//! stand-in) and outcomes and dead letters (read back from Kafka), joined by
//! the event's unique id; then lost, duplicate, failed and recovery figures.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use herald::standin::Arrival;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use serde_json::Value;

use super::load::Produced;

/// A fault as it happened: what, and when it began and ended (epoch ms).
#[derive(Debug, Clone)]
pub struct Fault {
    pub what: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// One record as read back: partition, offset, key and value (`None` for a tombstone).
pub type Record = (i32, i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// What [`read_records`] found: the records in each partition's order, every
/// partition's end offset, and whether every end was reached within the limit.
pub struct ReadBack {
    pub records: Vec<Record>,
    pub ends: BTreeMap<i32, i64>,
    pub complete: bool,
}

/// Every record of a topic, from the start to its end as it was when called,
/// reading for at most `limit`.
pub fn read_records(bootstrap: &str, topic: &str, limit: Duration) -> Result<ReadBack, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "herald-faults-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| p.id())
        .collect();
    let mut ends = BTreeMap::new();
    let open = herald::kafka::offsets::assign_to_ends(
        &consumer,
        topic,
        &partitions,
        Duration::from_secs(10),
        |p, low, high| {
            ends.insert(p, high);
            low
        },
    )
    .map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let open = herald::kafka::offsets::read_to_ends(
        &consumer,
        open,
        herald::kafka::offsets::ReadLimit::Total(limit),
        |m| {
            records.push((
                m.partition(),
                m.offset(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            ))
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(ReadBack {
        records,
        ends,
        complete: open.is_empty(),
    })
}

/// Every record's value (empty for a tombstone) of a topic, from the start
/// to its current end, reading for at most a minute.
pub fn read_all(bootstrap: &str, topic: &str) -> Result<Vec<(i32, i64, Vec<u8>)>, String> {
    Ok(read_records(bootstrap, topic, Duration::from_secs(60))?
        .records
        .into_iter()
        .map(|(p, o, _, value)| (p, o, value.unwrap_or_default()))
        .collect())
}

/// The event id in a notice's text (`eid=<id> …`).
pub fn eid_of(arrival: &Arrival) -> Option<&str> {
    arrival
        .text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("eid="))
}

/// The figures of one scenario.
#[derive(Debug, Default)]
pub struct Figures {
    /// Valid events produced.
    pub events: usize,
    /// Valid events with exactly one successful provider request.
    pub sent_once: usize,
    /// Valid events with more than one successful request.
    pub duplicates: usize,
    /// Of those, how many had a fault between their first and second request.
    pub duplicates_across_fault: usize,
    /// Of those, how many herald itself reported: a later send's outcome says
    /// `unknown_after_crash` (the ledger found the first request unanswered).
    pub duplicates_reported: usize,
    /// Sends whose outcome says `unknown_after_crash` (repeated or skipped).
    pub unknown_after_crash: usize,
    /// For duplicates across a fault: the longest time from the first request to the fault, ms.
    pub duplicate_lead_ms: i64,
    /// Valid events never sent, with a final `failed` or `suppressed` outcome, by reason.
    pub failed: BTreeMap<String, usize>,
    /// Valid events with no successful request and no final outcome.
    pub lost: Vec<String>,
    /// Hostile records dead-lettered with the expected reason / any reason / not at all.
    pub dead_lettered_as_expected: usize,
    pub dead_letter_mismatch: Vec<String>,
    /// Provider requests answered 503 by the stand-in.
    pub refused_requests: usize,
    /// Per fault: ms from its end to the first successful request after it.
    pub recovery_ms: Vec<i64>,
}

/// Joins what was produced with what the provider saw and what herald recorded.
pub fn figures(
    produced: &[Produced],
    arrivals: &[Arrival],
    outcomes: &[(i32, i64, Vec<u8>)],
    dead_letters: &[(i32, i64, Vec<u8>)],
    source: &str,
    faults: &[Fault],
) -> Figures {
    let mut f = Figures::default();
    let mut ok: HashMap<&str, Vec<i64>> = HashMap::new();
    for a in arrivals {
        if a.status >= 300 {
            f.refused_requests += 1;
            continue;
        }
        if let Some(eid) = eid_of(a) {
            ok.entry(eid).or_default().push(a.at_ms);
        }
    }
    let by_offset: HashMap<(i32, i64), &Produced> = produced
        .iter()
        .map(|p| ((p.partition, p.offset), p))
        .collect();
    let mut final_reason: HashMap<&str, String> = HashMap::new();
    let mut reported: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (_, _, payload) in outcomes {
        let Ok(o) = serde_json::from_slice::<Value>(payload) else {
            continue;
        };
        // Only the counted rule's outcomes (a scenario may add others).
        if o["source"]["topic"] != source || o["rule"] != "purchase-notice" {
            continue;
        }
        let at = (
            o["source"]["partition"].as_i64().unwrap_or(-1) as i32,
            o["source"]["offset"].as_i64().unwrap_or(-1),
        );
        let status = o["status"].as_str().unwrap_or("");
        let reason = o["reason"].as_str().unwrap_or("");
        if o["unknown_after_crash"] == true || reason == "unknown_after_crash" {
            f.unknown_after_crash += 1;
            if let Some(p) = by_offset.get(&at) {
                reported.insert(&p.eid);
            }
        }
        // A `duplicate` suppression is final only if the first send happened.
        if (status == "failed" || status == "suppressed") && reason != "duplicate" {
            if let Some(p) = by_offset.get(&at) {
                final_reason.insert(&p.eid, format!("{status}:{reason}"));
            }
        }
    }
    let mut dead: HashMap<(i32, i64), String> = HashMap::new();
    for (_, _, payload) in dead_letters {
        let Ok(d) = serde_json::from_slice::<Value>(payload) else {
            continue;
        };
        if d["topic"] == source {
            let at = (
                d["partition"].as_i64().unwrap_or(-1) as i32,
                d["offset"].as_i64().unwrap_or(-1),
            );
            dead.insert(at, d["reason"].as_str().unwrap_or("").to_string());
        }
    }
    for p in produced {
        if let Some(expect) = p.expect {
            match dead.get(&(p.partition, p.offset)) {
                Some(reason) if reason == expect => f.dead_lettered_as_expected += 1,
                Some(reason) => f
                    .dead_letter_mismatch
                    .push(format!("{}: `{reason}`, expected `{expect}`", p.eid)),
                None => f
                    .dead_letter_mismatch
                    .push(format!("{}: no dead letter, expected `{expect}`", p.eid)),
            }
            continue;
        }
        f.events += 1;
        match ok.get(p.eid.as_str()) {
            Some(times) if times.len() == 1 => f.sent_once += 1,
            Some(times) => {
                f.duplicates += 1;
                if reported.contains(p.eid.as_str()) {
                    f.duplicates_reported += 1;
                }
                let (first, second) = (times[0], times[1]);
                if let Some(fault) = faults
                    .iter()
                    .find(|x| x.start_ms >= first && x.start_ms <= second)
                {
                    f.duplicates_across_fault += 1;
                    f.duplicate_lead_ms = f.duplicate_lead_ms.max(fault.start_ms - first);
                }
            }
            None => match final_reason.get(p.eid.as_str()) {
                Some(reason) => *f.failed.entry(reason.clone()).or_default() += 1,
                None => f.lost.push(p.eid.clone()),
            },
        }
    }
    let mut sends: Vec<i64> = ok.values().flatten().copied().collect();
    sends.sort_unstable();
    for fault in faults {
        let i = sends.partition_point(|&t| t < fault.end_ms);
        if let Some(&t) = sends.get(i) {
            f.recovery_ms.push(t - fault.end_ms);
        }
    }
    f
}

/// The longest gap between successful requests in `[from, from + window)`, ms:
/// how long sending stopped around a join or a leave.
pub fn longest_gap(arrivals: &[Arrival], from: i64, window: i64) -> i64 {
    let mut times: Vec<i64> = arrivals
        .iter()
        .filter(|a| a.status < 300 && a.at_ms >= from && a.at_ms < from + window)
        .map(|a| a.at_ms)
        .collect();
    times.sort_unstable();
    let first_gap = times.first().map_or(window, |t| t - from);
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
        .max(first_gap)
}

/// Events resolved so far (sent, or with a final reason), cheaply from the
/// stand-in alone: used to wait for herald to settle.
pub fn sent_count(arrivals: &[Arrival]) -> usize {
    let mut seen = std::collections::HashSet::new();
    for a in arrivals.iter().filter(|a| a.status < 300) {
        if let Some(e) = eid_of(a) {
            seen.insert(e.to_string());
        }
    }
    seen.len()
}

//! `herald rules diff`: over a window of the outcomes topic, who a new
//! (shadow) rule would reach that the old one does not, and the reverse.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

/// Messages per user of one rule (sent, or would be sent for a shadow rule).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reach {
    pub messages: usize,
    pub users: BTreeMap<String, usize>,
    pub shadow: bool,
}

/// Counts the sends of `rule` among `outcomes`.
pub fn reach<'a>(outcomes: impl IntoIterator<Item = &'a Value>, rule: &str) -> Reach {
    let mut r = Reach::default();
    for o in outcomes {
        if o["rule"] == rule && o["status"] == "sent" {
            r.messages += 1;
            r.shadow |= o["shadow"] == true;
            *r.users
                .entry(o["user"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    r
}

/// The report printed by `herald rules diff`.
pub fn report(old_rule: &str, old: &Reach, new_rule: &str, new: &Reach) -> String {
    let mut out = String::new();
    let line = |rule: &str, r: &Reach| {
        format!(
            "{rule}{}: {} messages to {} users",
            if r.shadow { " (shadow)" } else { "" },
            r.messages,
            r.users.len()
        )
    };
    let _ = writeln!(out, "old  {}", line(old_rule, old));
    let _ = writeln!(out, "new  {}", line(new_rule, new));
    let only = |a: &Reach, b: &Reach| -> Vec<String> {
        a.users
            .keys()
            .filter(|u| !b.users.contains_key(*u))
            .cloned()
            .collect()
    };
    let (gained, lost) = (only(new, old), only(old, new));
    let both = new
        .users
        .keys()
        .filter(|u| old.users.contains_key(*u))
        .count();
    let list = |users: &[String]| {
        let shown: Vec<&str> = users.iter().take(20).map(String::as_str).collect();
        let more = users.len().saturating_sub(20);
        format!(
            "{}{}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    let _ = writeln!(
        out,
        "would newly reach {} users: {}",
        gained.len(),
        list(&gained)
    );
    let _ = writeln!(
        out,
        "would no longer reach {} users: {}",
        lost.len(),
        list(&lost)
    );
    let _ = writeln!(out, "reached by both: {both} users");
    out
}

/// Every outcome written to `topic` since `since_ms`, read with a fresh
/// consumer that commits nothing, up to the end of each partition.
pub fn read_outcomes(
    client: &ClientConfig,
    topic: &str,
    since_ms: i64,
) -> Result<Vec<Value>, String> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", format!("herald-diff-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(10);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic `{topic}` not found"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(since_ms))
            .map_err(|e| e.to_string())?;
    }
    // Partitions with nothing since then come back as the end offset.
    let start = consumer
        .offsets_for_times(tpl, timeout)
        .map_err(|e| e.to_string())?;
    consumer.assign(&start).map_err(|e| e.to_string())?;
    let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !open.is_empty() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(v) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                    out.push(v);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_who_is_gained_and_lost() {
        let o = |rule: &str, user: &str, shadow: bool| json!({"rule": rule, "user": user, "status": "sent", "shadow": shadow});
        let outcomes = vec![
            o("v1", "u-1", false),
            o("v1", "u-2", false),
            o("v2", "u-2", true),
            o("v2", "u-3", true),
            o("v2", "u-3", true),
            json!({"rule": "v2", "user": "u-4", "status": "suppressed"}),
        ];
        let (old, new) = (reach(&outcomes, "v1"), reach(&outcomes, "v2"));
        assert_eq!(
            report("v1", &old, "v2", &new),
            "old  v1: 2 messages to 2 users\n\
             new  v2 (shadow): 3 messages to 2 users\n\
             would newly reach 1 users: u-3\n\
             would no longer reach 1 users: u-1\n\
             reached by both: 1 users\n"
        );
    }
}

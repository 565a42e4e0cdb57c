//! `herald rules diff`: over a window of the outcomes topic, who a new
//! (shadow) rule would reach that the old one does not, and the reverse.

use rdkafka::ClientConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

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

/// Every outcome written to `topic` since `since_ms`.
pub fn read_outcomes(
    client: &ClientConfig,
    topic: &str,
    since_ms: i64,
) -> Result<Vec<Value>, String> {
    Ok(super::read_back(
        client,
        topic,
        super::ReadFrom::Time(since_ms),
        i64::MAX,
        std::time::Duration::from_secs(600),
    )?
    .into_iter()
    .filter_map(|r| serde_json::from_slice(&r.payload).ok())
    .collect())
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

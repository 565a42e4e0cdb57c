//! Per-rule activity over the last minute and the last hour, for the live
//! rules page: matches, decisions by status, suppressions by reason, and
//! end-to-end latency (event time to provider request) as a histogram.
//!
//! Kept in rings of time buckets (60 one-second, 60 one-minute), allocated
//! only for rules that have activity.

use crate::util::FastDashMap;
use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

/// Upper bounds of the latency buckets, ms.
const LATENCY_MS: [i64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 30_000,
];

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Which second or minute this bucket holds (its start, in its unit).
    at: i64,
    matches: u64,
    sent: u64,
    failed: u64,
    held: u64,
    suppressed: BTreeMap<String, u64>,
    latency: [u64; LATENCY_MS.len() + 1],
}

#[derive(Debug)]
struct Rings {
    seconds: Vec<Bucket>,
    minutes: Vec<Bucket>,
}

impl Default for Rings {
    fn default() -> Self {
        Rings {
            seconds: vec![Bucket::default(); 60],
            minutes: vec![Bucket::default(); 60],
        }
    }
}

/// What happened to one decision, for [`Activity::decided`].
pub enum Happened<'a> {
    Sent { latency_ms: i64 },
    Suppressed { code: &'a str },
    Failed,
    Held,
}

/// Activity of every rule.
#[derive(Default)]
pub struct Activity {
    rules: FastDashMap<String, Mutex<Rings>>,
}

impl Activity {
    fn with(&self, rule: &str, now_ms: i64, apply: impl Fn(&mut Bucket)) {
        let entry = self.rules.entry(rule.to_string()).or_default();
        let mut guard = entry.lock().unwrap_or_else(|p| p.into_inner());
        let rings = &mut *guard;
        for (ring, unit) in [(&mut rings.seconds, 1_000), (&mut rings.minutes, 60_000)] {
            let at = now_ms.div_euclid(unit);
            let slot = &mut ring[at.rem_euclid(60) as usize];
            if slot.at != at {
                *slot = Bucket {
                    at,
                    ..Bucket::default()
                };
            }
            apply(slot);
        }
    }

    /// A rule matched (or its pattern fired).
    pub fn matched(&self, rule: &str, now_ms: i64) {
        self.with(rule, now_ms, |b| b.matches += 1);
    }

    /// A decision of a rule.
    pub fn decided(&self, rule: &str, happened: Happened<'_>, now_ms: i64) {
        self.with(rule, now_ms, |b| match &happened {
            Happened::Sent { latency_ms } => {
                b.sent += 1;
                let i = LATENCY_MS
                    .iter()
                    .position(|up| latency_ms <= up)
                    .unwrap_or(LATENCY_MS.len());
                b.latency[i] += 1;
            }
            Happened::Suppressed { code } => {
                *b.suppressed.entry(code.to_string()).or_default() += 1
            }
            Happened::Failed => b.failed += 1,
            Happened::Held => b.held += 1,
        });
    }

    /// One rule's totals over the last minute and the last hour.
    pub fn summary(&self, rule: &str, now_ms: i64) -> Value {
        let Some(entry) = self.rules.get(rule) else {
            return json!({ "minute": totals(&[]), "hour": totals(&[]) });
        };
        let rings = entry.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |ring: &[Bucket], unit: i64| -> Vec<Bucket> {
            let now = now_ms.div_euclid(unit);
            ring.iter()
                .filter(|b| b.at > now - 60 && b.at <= now)
                .cloned()
                .collect()
        };
        json!({
            "minute": totals(&recent(&rings.seconds, 1_000)),
            "hour": totals(&recent(&rings.minutes, 60_000)),
        })
    }
}

fn totals(buckets: &[Bucket]) -> Value {
    let mut suppressed: BTreeMap<String, u64> = BTreeMap::new();
    let mut latency = [0u64; LATENCY_MS.len() + 1];
    for b in buckets {
        for (k, v) in &b.suppressed {
            *suppressed.entry(k.clone()).or_default() += v;
        }
        for (i, n) in b.latency.iter().enumerate() {
            latency[i] += n;
        }
    }
    let sum = |f: fn(&Bucket) -> u64| buckets.iter().map(f).sum::<u64>();
    json!({
        "matches": sum(|b| b.matches),
        "sent": sum(|b| b.sent),
        "failed": sum(|b| b.failed),
        "held": sum(|b| b.held),
        "suppressed": suppressed,
        "p50_ms": percentile(&latency, 0.50),
        "p99_ms": percentile(&latency, 0.99),
    })
}

/// The upper bound (ms) of the bucket holding the `q` quantile; `None` without sends.
fn percentile(latency: &[u64], q: f64) -> Option<i64> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(LATENCY_MS.get(i).copied().unwrap_or(60_000));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_out_of_the_minute_and_the_hour() {
        let a = Activity::default();
        let t0 = 1_795_514_400_000;
        a.matched("r", t0);
        a.decided("r", Happened::Sent { latency_ms: 12 }, t0);
        a.decided("r", Happened::Sent { latency_ms: 180 }, t0 + 1_000);
        a.decided(
            "r",
            Happened::Suppressed {
                code: "quiet_hours",
            },
            t0 + 2_000,
        );
        let s = a.summary("r", t0 + 5_000);
        assert_eq!(s["minute"]["sent"], 2);
        assert_eq!(s["minute"]["matches"], 1);
        assert_eq!(s["minute"]["suppressed"]["quiet_hours"], 1);
        assert_eq!(s["minute"]["p50_ms"], 20);
        assert_eq!(s["minute"]["p99_ms"], 200);
        let later = a.summary("r", t0 + 120_000);
        assert_eq!(later["minute"]["sent"], 0, "out of the last minute");
        assert_eq!(later["hour"]["sent"], 2, "still in the last hour");
        assert_eq!(a.summary("r", t0 + 3_700_000)["hour"]["sent"], 0);
        assert_eq!(a.summary("nope", t0)["hour"]["p50_ms"], Value::Null);
    }
}

//! Per-rule activity over the last minute and the last hour, for the live
//! rules page: matches, decisions by status, suppressions by reason, and
//! end-to-end latency (event time to provider request) as measured
//! percentiles of the rule's last sends.
//!
//! Counts are kept in rings of time buckets (60 one-second, 60 one-minute),
//! latencies as the last [`SAMPLES`] sends, allocated only for rules that have
//! activity.

use crate::util::FastDashMap;
use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

/// Sends whose latency is kept per rule: p99 of the last minute or hour is
/// measured over at most this many of its latest sends.
pub const SAMPLES: usize = 512;

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Which second or minute this bucket holds (its start, in its unit).
    at: i64,
    matches: u64,
    sent: u64,
    failed: u64,
    held: u64,
    suppressed: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Rings {
    seconds: Vec<Bucket>,
    minutes: Vec<Bucket>,
    /// The latest sends: (when, latency ms), oldest first.
    sends: std::collections::VecDeque<(i64, i64)>,
}

impl Default for Rings {
    fn default() -> Self {
        Rings {
            seconds: vec![Bucket::default(); 60],
            minutes: vec![Bucket::default(); 60],
            sends: std::collections::VecDeque::with_capacity(16),
        }
    }
}

/// What happened to one decision, for [`Activity::decided`].
#[derive(Debug, Clone, Copy)]
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
        self.with_rings(rule, |rings| Self::count(rings, now_ms, &apply));
    }

    fn with_rings(&self, rule: &str, apply: impl FnOnce(&mut Rings)) {
        // The rule's name is copied only the first time it is seen.
        if let Some(entry) = self.rules.get(rule) {
            apply(&mut entry.lock().unwrap_or_else(|p| p.into_inner()));
            return;
        }
        let entry = self.rules.entry(rule.to_string()).or_default();
        let mut guard = entry.lock().unwrap_or_else(|p| p.into_inner());
        apply(&mut guard);
    }

    fn count(rings: &mut Rings, now_ms: i64, apply: &impl Fn(&mut Bucket)) {
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
        self.with_rings(rule, |rings| {
            if let Happened::Sent { latency_ms } = happened {
                if rings.sends.len() == SAMPLES {
                    rings.sends.pop_front();
                }
                rings.sends.push_back((now_ms, latency_ms));
            }
            Self::count(rings, now_ms, &|b: &mut Bucket| match &happened {
                Happened::Sent { .. } => b.sent += 1,
                Happened::Suppressed { code } => match b.suppressed.get_mut(*code) {
                    Some(n) => *n += 1,
                    None => {
                        b.suppressed.insert(code.to_string(), 1);
                    }
                },
                Happened::Failed => b.failed += 1,
                Happened::Held => b.held += 1,
            });
        });
    }

    /// One rule's totals over the last minute and the last hour.
    pub fn summary(&self, rule: &str, now_ms: i64) -> Value {
        let Some(entry) = self.rules.get(rule) else {
            return json!({ "minute": totals(&[], Vec::new()), "hour": totals(&[], Vec::new()) });
        };
        let rings = entry.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |ring: &[Bucket], unit: i64| -> Vec<Bucket> {
            let now = now_ms.div_euclid(unit);
            ring.iter()
                .filter(|b| b.at > now - 60 && b.at <= now)
                .cloned()
                .collect()
        };
        let since = |window_ms: i64| -> Vec<i64> {
            rings
                .sends
                .iter()
                .filter(|(at, _)| *at > now_ms - window_ms && *at <= now_ms)
                .map(|(_, latency)| *latency)
                .collect()
        };
        json!({
            "minute": totals(&recent(&rings.seconds, 1_000), since(60_000)),
            "hour": totals(&recent(&rings.minutes, 60_000), since(3_600_000)),
        })
    }
}

fn totals(buckets: &[Bucket], mut latencies: Vec<i64>) -> Value {
    let mut suppressed: BTreeMap<String, u64> = BTreeMap::new();
    for b in buckets {
        for (k, v) in &b.suppressed {
            *suppressed.entry(k.clone()).or_default() += v;
        }
    }
    latencies.sort_unstable();
    let sum = |f: fn(&Bucket) -> u64| buckets.iter().map(f).sum::<u64>();
    json!({
        "matches": sum(|b| b.matches),
        "sent": sum(|b| b.sent),
        "failed": sum(|b| b.failed),
        "held": sum(|b| b.held),
        "suppressed": suppressed,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "latency_samples": latencies.len(),
    })
}

/// The `q` quantile of sorted measurements (nearest rank); `None` without any.
fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
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
        assert_eq!(s["minute"]["p50_ms"], 12, "measured, not a bucket bound");
        assert_eq!(s["minute"]["p99_ms"], 180);
        let later = a.summary("r", t0 + 120_000);
        assert_eq!(later["minute"]["sent"], 0, "out of the last minute");
        assert_eq!(later["hour"]["sent"], 2, "still in the last hour");
        assert_eq!(a.summary("r", t0 + 3_700_000)["hour"]["sent"], 0);
        assert_eq!(a.summary("nope", t0)["hour"]["p50_ms"], Value::Null);
    }

    #[test]
    fn percentiles_are_of_the_latest_sends_in_the_window() {
        let a = Activity::default();
        let t0 = 1_795_514_400_000;
        for ms in 1..=100 {
            a.decided("r", Happened::Sent { latency_ms: ms }, t0);
        }
        let s = a.summary("r", t0 + 1_000);
        assert_eq!(
            (s["hour"]["p50_ms"].as_i64(), s["hour"]["p99_ms"].as_i64()),
            (Some(50), Some(99))
        );
        for _ in 0..SAMPLES {
            a.decided("r", Happened::Sent { latency_ms: 7 }, t0 + 2_000);
        }
        let s = a.summary("r", t0 + 3_000);
        assert_eq!(
            s["hour"]["p99_ms"], 7,
            "only the last {SAMPLES} sends are kept"
        );
        assert_eq!(s["hour"]["latency_samples"], SAMPLES);
        assert_eq!(s["hour"]["sent"], 100 + SAMPLES as u64);
    }
}

//! Per-rule activity over the last minute and the last hour, for the live
//! rules page: matches, decisions by status, suppressions by reason, and
//! end-to-end latency (event time to provider request) as measured
//! percentiles of the rule's last sends.
//!
//! Counts are kept in rings of time buckets (60 one-second, 60 one-minute),
//! latencies as the last [`SAMPLES`] sends, allocated only for rules that have
//! activity. Each loaded rule holds its own [`RuleActivity`] (made when the
//! rules are loaded, the same one across reloads), so counting a match or a
//! decision does not look the rule up by name.

use crate::util::FastDashMap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

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
    /// Suppressions by reason code; a handful of codes, so a short list.
    suppressed: Vec<(&'static str, u64)>,
}

impl Bucket {
    /// Empties the bucket for another second or minute, keeping its list's room.
    fn reset(&mut self, at: i64) {
        let mut suppressed = std::mem::take(&mut self.suppressed);
        suppressed.clear();
        *self = Bucket {
            at,
            suppressed,
            ..Bucket::default()
        };
    }
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

/// What happened to one decision, for [`RuleActivity::decided`].
#[derive(Debug, Clone, Copy)]
pub enum Happened {
    Sent { latency_ms: i64 },
    Suppressed { code: &'static str },
    Failed,
    Held,
}

/// Activity of every rule, by rule id.
#[derive(Default)]
pub struct Activity {
    rules: FastDashMap<String, Arc<RuleActivity>>,
}

/// One rule's activity: its rings, made at its first match or decision.
#[derive(Debug, Default)]
pub struct RuleActivity {
    rings: OnceLock<Mutex<Rings>>,
}

impl Activity {
    /// The activity of `rule`: the same one every time it is asked for, so a
    /// reloaded rule keeps its last minute and hour.
    pub fn of(&self, rule: &str) -> Arc<RuleActivity> {
        if let Some(kept) = self.rules.get(rule) {
            return Arc::clone(&kept);
        }
        Arc::clone(&self.rules.entry(rule.to_string()).or_default())
    }

    /// One rule's totals over the last minute and the last hour.
    pub fn summary(&self, rule: &str, now_ms: i64) -> Value {
        match self.rules.get(rule) {
            Some(kept) => kept.summary(now_ms),
            None => RuleActivity::default().summary(now_ms),
        }
    }
}

impl RuleActivity {
    fn with_rings(&self, apply: impl FnOnce(&mut Rings)) {
        let rings = self.rings.get_or_init(Mutex::default);
        apply(&mut rings.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn count(rings: &mut Rings, now_ms: i64, apply: &impl Fn(&mut Bucket)) {
        for (ring, unit) in [(&mut rings.seconds, 1_000), (&mut rings.minutes, 60_000)] {
            let at = now_ms.div_euclid(unit);
            let slot = &mut ring[at.rem_euclid(60) as usize];
            if slot.at != at {
                slot.reset(at);
            }
            apply(slot);
        }
    }

    /// The rule matched (or its pattern fired).
    pub fn matched(&self, now_ms: i64) {
        self.with_rings(|rings| Self::count(rings, now_ms, &|b: &mut Bucket| b.matches += 1));
    }

    /// A decision of the rule.
    pub fn decided(&self, happened: Happened, now_ms: i64) {
        self.with_rings(|rings| {
            if let Happened::Sent { latency_ms } = happened {
                if rings.sends.len() == SAMPLES {
                    rings.sends.pop_front();
                }
                rings.sends.push_back((now_ms, latency_ms));
            }
            Self::count(rings, now_ms, &|b: &mut Bucket| match &happened {
                Happened::Sent { .. } => b.sent += 1,
                Happened::Suppressed { code } => {
                    match b.suppressed.iter_mut().find(|(c, _)| c == code) {
                        Some((_, n)) => *n += 1,
                        None => b.suppressed.push((code, 1)),
                    }
                }
                Happened::Failed => b.failed += 1,
                Happened::Held => b.held += 1,
            });
        });
    }

    /// The rule's totals over the last minute and the last hour.
    fn summary(&self, now_ms: i64) -> Value {
        let Some(rings) = self.rings.get() else {
            return json!({ "minute": totals(&[], Vec::new()), "hour": totals(&[], Vec::new()) });
        };
        let rings = rings.lock().unwrap_or_else(|p| p.into_inner());
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
    let mut suppressed: BTreeMap<&str, u64> = BTreeMap::new();
    for b in buckets {
        for &(k, v) in &b.suppressed {
            *suppressed.entry(k).or_default() += v;
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
        let all = Activity::default();
        let a = all.of("r");
        let t0 = 1_795_514_400_000;
        a.matched(t0);
        a.decided(Happened::Sent { latency_ms: 12 }, t0);
        a.decided(Happened::Sent { latency_ms: 180 }, t0 + 1_000);
        a.decided(
            Happened::Suppressed {
                code: "quiet_hours",
            },
            t0 + 2_000,
        );
        let s = all.summary("r", t0 + 5_000);
        assert_eq!(s["minute"]["sent"], 2);
        assert_eq!(s["minute"]["matches"], 1);
        assert_eq!(s["minute"]["suppressed"]["quiet_hours"], 1);
        assert_eq!(s["minute"]["p50_ms"], 12, "measured, not a bucket bound");
        assert_eq!(s["minute"]["p99_ms"], 180);
        let later = all.summary("r", t0 + 120_000);
        assert_eq!(later["minute"]["sent"], 0, "out of the last minute");
        assert_eq!(later["hour"]["sent"], 2, "still in the last hour");
        assert_eq!(all.summary("r", t0 + 3_700_000)["hour"]["sent"], 0);
        assert_eq!(all.summary("nope", t0)["hour"]["p50_ms"], Value::Null);
        // A reloaded rule is handed the same activity, its history with it.
        assert!(Arc::ptr_eq(&a, &all.of("r")));
        // The second that held the suppression is used again a minute later,
        // emptied first.
        a.matched(t0 + 62_000);
        let reused = all.summary("r", t0 + 62_000);
        assert_eq!(reused["minute"]["matches"], 1);
        assert_eq!(reused["minute"]["suppressed"], serde_json::json!({}));
    }

    #[test]
    fn percentiles_are_of_the_latest_sends_in_the_window() {
        let all = Activity::default();
        let a = all.of("r");
        let t0 = 1_795_514_400_000;
        for ms in 1..=100 {
            a.decided(Happened::Sent { latency_ms: ms }, t0);
        }
        let s = all.summary("r", t0 + 1_000);
        assert_eq!(
            (s["hour"]["p50_ms"].as_i64(), s["hour"]["p99_ms"].as_i64()),
            (Some(50), Some(99))
        );
        for _ in 0..SAMPLES {
            a.decided(Happened::Sent { latency_ms: 7 }, t0 + 2_000);
        }
        let s = all.summary("r", t0 + 3_000);
        assert_eq!(
            s["hour"]["p99_ms"], 7,
            "only the last {SAMPLES} sends are kept"
        );
        assert_eq!(s["hour"]["latency_samples"], SAMPLES);
        assert_eq!(s["hour"]["sent"], 100 + SAMPLES as u64);
    }
}

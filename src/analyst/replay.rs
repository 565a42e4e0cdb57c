//! `herald replay`: a rule set over recorded events — a JSON-lines file or a
//! time range of a source topic — on a virtual clock, sending nothing; a
//! report per rule (matches, would-be sends, suppressions by reason, users
//! reached, the busiest users, messages per user per day, estimated cost) and
//! the would-be outcomes as JSON lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use std::sync::Arc;

use super::Offline;
use crate::config::Config;
use crate::engine::Decision;
use crate::outcome::{Outcome, Status};
use crate::profile::ProfileTable;

use super::recorded::event_times;
use super::recorded::Recorded;

/// Totals of one rule.
#[derive(Default)]
pub(super) struct RuleTotals {
    pub(super) matches: u64,
    sent: u64,
    suppressed: BTreeMap<&'static str, u64>,
    failed: u64,
    held: u64,
    /// Messages per user, and per day of each user's (day, messages).
    per_user: crate::util::FastMap<String, PerUser>,
    per_channel: BTreeMap<String, u64>,
}

/// One user's messages from one rule: in all, and per day (days in the
/// order first seen; events come in time order, so mostly the last).
#[derive(Default)]
struct PerUser {
    total: u64,
    days: Vec<(i64, u64)>,
}

impl PerUser {
    fn add(&mut self, day: i64) {
        self.total += 1;
        match self.days.iter_mut().rev().find(|(d, _)| *d == day) {
            Some((_, n)) => *n += 1,
            None => self.days.push((day, 1)),
        }
    }
}

/// The result of a replay.
pub struct Report {
    pub events: usize,
    pub text: String,
    /// Per rule: (would-be sends, suppressions by reason).
    pub totals: BTreeMap<String, (u64, BTreeMap<String, u64>)>,
}

/// Replays `events` (in order, each at its own event time) with the rules of
/// `rules_dir`; writes each would-be outcome to `out` as a JSON line;
/// `progress` is called with the number done. `prices` are per channel.
pub async fn replay(
    config: &Config,
    rules_dir: &std::path::Path,
    profiles: &Arc<ProfileTable>,
    events: &[Recorded],
    prices: &BTreeMap<String, f64>,
    mut out: Option<&mut dyn Write>,
    mut progress: impl FnMut(usize),
) -> Result<Report, String> {
    let offline = Offline::with_profiles(config, rules_dir, Arc::clone(profiles))
        .map_err(|e| e.to_string())?;
    let mut totals: BTreeMap<String, RuleTotals> = BTreeMap::new();
    let times = event_times(config, events);
    let offsets = offsets_of(events);
    drive(
        &offline,
        (events, &times, &offsets),
        |_| true,
        |_, d| tally(&mut totals, &d.outcome, &mut out),
        |i| {
            if i % 1000 == 0 {
                progress(i);
            }
        },
    )
    .await?;
    if let Some(w) = out.as_mut() {
        write_conversions(w, &offline.take_conversions())?;
    }
    progress(events.len());
    for (rule, n) in rule_matches(&offline) {
        totals.entry(rule).or_default().matches = n;
    }
    let mut report = render(events.len(), &totals, prices);
    add_dead_letters(&mut report, dead_letter_counts(&offline));
    Ok(report)
}

/// Writes experiments' conversion records after the outcomes, one JSON
/// line each (`"kind": "conversion"`; `herald experiment report` reads both).
pub(super) fn write_conversions(
    w: &mut dyn Write,
    conversions: &[serde_json::Value],
) -> Result<(), String> {
    for c in conversions {
        writeln!(w, "{c}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs `events` (with each one's time and offset) through `offline`:
/// those `owned` are decided, the others only move its clock to their time.
/// `decided` gets each decision with the index of the event after which it
/// was made (`events.len()` for those of the final day); `handled` each owned
/// event's index once it is decided.
pub(super) async fn drive(
    offline: &Offline,
    (events, times, offsets): (&[Recorded], &[i64], &[i64]),
    owned: impl Fn(usize) -> bool,
    mut decided: impl FnMut(usize, Arc<Decision>) -> Result<(), String>,
    mut handled: impl FnMut(usize),
) -> Result<(), String> {
    for (i, r) in events.iter().enumerate() {
        if owned(i) {
            offline
                .event_at(&r.topic, r.key.as_deref(), &r.payload, times[i], offsets[i])
                .await;
            handled(i);
        } else {
            offline.advance(times[i]).await;
        }
        for d in offline.take_decisions() {
            decided(i, d)?;
        }
    }
    // Let timers and held messages finish: a day past the last event.
    let last_ms = times.last().copied().unwrap_or(0);
    offline.advance(last_ms + 86_400_000).await;
    for d in offline.take_decisions() {
        decided(events.len(), d)?;
    }
    Ok(())
}

/// Each event's offset in its topic, counted over the whole input.
pub(super) fn offsets_of(events: &[Recorded]) -> Vec<i64> {
    let mut next: BTreeMap<&str, i64> = BTreeMap::new();
    events
        .iter()
        .map(|r| {
            let n = next.entry(r.topic.as_str()).or_insert(0);
            *n += 1;
            *n - 1
        })
        .collect()
}

/// Matches per rule so far.
pub(super) fn rule_matches(offline: &Offline) -> Vec<(String, u64)> {
    let loaded = offline.rules.current();
    loaded
        .set
        .rules
        .iter()
        .zip(&loaded.matches)
        .map(|(rule, n)| (rule.id.to_string(), n.get()))
        .collect()
}

/// Events that could not be used (or had no key for a pattern), by reason and rule.
pub(super) fn dead_letter_counts(offline: &Offline) -> BTreeMap<String, u64> {
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    for d in offline.dead_letters() {
        let reason = d["reason"].as_str().unwrap_or("").to_string();
        let label = match d["rule"].as_str() {
            Some(rule) => format!("{reason} ({rule})"),
            None => reason,
        };
        *dead.entry(label).or_default() += 1;
    }
    dead
}

pub(super) fn add_dead_letters(report: &mut Report, dead: BTreeMap<String, u64>) {
    if !dead.is_empty() {
        let _ = writeln!(report.text, "dead letters");
        for (label, n) in &dead {
            let _ = writeln!(report.text, "  {n} {label}");
        }
    }
}

pub(super) fn tally(
    totals: &mut BTreeMap<String, RuleTotals>,
    o: &Outcome,
    out: &mut Option<&mut dyn Write>,
) -> Result<(), String> {
    if let Some(w) = out.as_mut() {
        let mut line = o.to_json();
        line.push(b'\n');
        w.write_all(&line).map_err(|e| e.to_string())?;
    }
    // One search for a rule seen before (every outcome but its first).
    let t = match totals.get_mut(&*o.rule) {
        Some(t) => t,
        None => totals.entry(o.rule.to_string()).or_default(),
    };
    match o.status {
        Status::Sent => {
            t.sent += 1;
            let day = o.timings.event_ms.div_euclid(86_400_000);
            match t.per_user.get_mut(&*o.user) {
                Some(u) => u.add(day),
                None => t.per_user.entry(o.user.to_string()).or_default().add(day),
            }
            if let Some(n) = t.per_channel.get_mut(&*o.channel) {
                *n += 1;
            } else {
                t.per_channel.insert(o.channel.to_string(), 1);
            }
        }
        Status::Suppressed => {
            let code = o.reason_code.unwrap_or("unknown");
            *t.suppressed.entry(code).or_default() += 1;
        }
        Status::Held => t.held += 1,
        Status::Failed => t.failed += 1,
    }
    Ok(())
}

pub(super) fn render(
    events: usize,
    totals: &BTreeMap<String, RuleTotals>,
    prices: &BTreeMap<String, f64>,
) -> Report {
    let mut text = String::new();
    let _ = writeln!(text, "{events} events replayed\n");
    let mut summary = BTreeMap::new();
    for (rule, t) in totals {
        let _ = writeln!(text, "{rule}");
        let _ = writeln!(text, "  matches           {}", t.matches);
        let _ = writeln!(
            text,
            "  would send        {} to {} users",
            t.sent,
            t.per_user.len()
        );
        if t.held > 0 {
            let _ = writeln!(text, "  held (quiet hours, awaiting delivery) {}", t.held);
        }
        for (reason, n) in &t.suppressed {
            let _ = writeln!(text, "  suppressed        {n} {reason}");
        }
        if t.failed > 0 {
            let _ = writeln!(text, "  failed            {}", t.failed);
        }
        let mut busiest: Vec<(&String, &u64)> =
            t.per_user.iter().map(|(u, p)| (u, &p.total)).collect();
        busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        if !busiest.is_empty() {
            let top: Vec<String> = busiest
                .iter()
                .take(5)
                .map(|(u, n)| format!("{u} ({n})"))
                .collect();
            let _ = writeln!(text, "  busiest users     {}", top.join(", "));
            let mut spread = [0u64; 5];
            for (_, n) in t.per_user.values().flat_map(|p| &p.days) {
                let slot = match n {
                    1 => 0,
                    2 => 1,
                    3 => 2,
                    4..=5 => 3,
                    _ => 4,
                };
                spread[slot] += 1;
            }
            let _ = writeln!(
                text,
                "  per user per day  1: {}  2: {}  3: {}  4-5: {}  6+: {}",
                spread[0], spread[1], spread[2], spread[3], spread[4]
            );
        }
        let cost: f64 = t
            .per_channel
            .iter()
            .filter_map(|(c, n)| prices.get(c).map(|p| p * *n as f64))
            .sum();
        if !prices.is_empty() && t.sent > 0 {
            let _ = writeln!(text, "  estimated cost    {cost:.2}");
        }
        let suppressed = t.suppressed.iter().map(|(k, n)| (k.to_string(), *n));
        summary.insert(rule.clone(), (t.sent, suppressed.collect()));
    }
    Report {
        events,
        text,
        totals: summary,
    }
}

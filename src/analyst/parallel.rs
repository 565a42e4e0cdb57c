//! `herald replay --jobs N`: the replay split by user over N threads, each a
//! whole offline pipeline, with the results of the sequential run.
//!
//! Every user's events, profile and policy state (caps, held messages, the
//! ledger) live in one shard, chosen by the user id's murmur2 hash — the
//! intents topic's partitioner. Each shard moves its virtual clock through
//! every event's time, its own and the others', so timers and held messages
//! fire when they would in one run, and gives each event the offset it has
//! in the whole input, so intents and idempotency keys are the same. What
//! this assumes: a pattern's key (a card, a device) belongs to one user; the
//! sample rules' keys do. Input with records on a non-source topic (feedback
//! such as replies, read by every user's state) is replayed in one shard.
//! The shards' decisions are kept until all are done, then written in event
//! order: memory grows with the number of outcomes (about 1 KB each).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::recorded::{event_times, Recorded};
use super::replay::{
    add_dead_letters, dead_letter_counts, drive, offsets_of, render, rule_matches, tally, Report,
    RuleTotals,
};
use super::Offline;
use crate::config::Config;
use crate::engine::Decision;
use crate::profile::ProfileTable;

/// What one shard decided, by the index of the event after which it was
/// decided, and its counts.
struct Shard {
    decisions: Vec<(usize, Arc<Decision>)>,
    matches: Vec<(String, u64)>,
    dead: BTreeMap<String, u64>,
    /// Experiments' conversions (a user's are all in their shard).
    conversions: Vec<serde_json::Value>,
}

/// What a replay reads: config, rules, profiles, events, and prices per channel.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub rules_dir: &'a std::path::Path,
    /// Every user's profile, read by every shard.
    pub profiles: &'a Arc<ProfileTable>,
    pub events: &'a [Recorded],
    pub prices: &'a BTreeMap<String, f64>,
}

/// How many threads a replay of `events` asked to use `jobs` runs on: one
/// when any event is of a topic that is not a source (feedback records, which
/// every shard would need), else `jobs`.
pub fn threads_for(config: &Config, events: &[Recorded], jobs: usize) -> usize {
    let all_sources = events.iter().all(|r| config.sources.contains_key(&r.topic));
    if all_sources {
        jobs.max(1)
    } else {
        1
    }
}

/// Replays the events in `jobs` shards by user, in parallel; writes the
/// would-be outcomes to `out` in event order, and reports as the sequential
/// [`super::replay::replay`] does. `progress` gets the events done so far.
pub fn replay_parallel(
    inputs: Inputs<'_>,
    mut out: Option<&mut dyn Write>,
    jobs: usize,
    mut progress: impl FnMut(usize),
) -> Result<Report, String> {
    let Inputs {
        config,
        rules_dir,
        profiles,
        events,
        prices,
    } = inputs;
    let jobs = threads_for(config, events, jobs);
    let shard_of = |user: &str| crate::state::partition_for(user.as_bytes(), jobs as i32) as usize;
    let owners: Vec<usize> = events
        .iter()
        .map(|r| {
            let field = config.sources.get(&r.topic).map(|m| m.user_field.as_str());
            field
                .and_then(|f| r.field(f))
                .and_then(Value::as_str)
                .map_or(0, shard_of)
        })
        .collect();
    let times = event_times(config, events);
    let offsets = offsets_of(events);
    let done = AtomicUsize::new(0);
    // Each shard keeps its decisions until they are tallied, and frees them
    // on its own thread: freed on this one, each of their strings would take
    // the allocator's slow cross-thread path (a sixth of a replay's work).
    let tallied = std::sync::RwLock::new(());
    let (sent, results) = std::sync::mpsc::channel::<Result<Arc<Shard>, String>>();
    let totals = std::thread::scope(|scope| {
        let hold = tallied.write().unwrap_or_else(|p| p.into_inner());
        for shard in 0..jobs {
            let (owners, times, offsets, done) = (&owners, &times, &offsets, &done);
            let (tallied, sent) = (&tallied, sent.clone());
            scope.spawn(move || {
                let own = Own {
                    shard,
                    owners,
                    times,
                    offsets,
                    done,
                };
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|rt| rt.block_on(run_shard(config, rules_dir, profiles, events, own)))
                    .map(Arc::new);
                let kept = result.as_ref().ok().map(Arc::clone);
                let _ = sent.send(result);
                // Until every shard's decisions are tallied; then `kept` is
                // the last reference, dropped here.
                drop(tallied.read());
                drop(kept);
            });
        }
        drop(sent);
        let mut shards = Vec::with_capacity(jobs);
        while shards.len() < jobs {
            match results.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(result) => shards.push(result?),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    progress(done.load(Ordering::Relaxed))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("a replay shard panicked".to_string())
                }
            }
        }
        progress(events.len());
        let totals = tally_shards(&shards, &mut out);
        drop(shards);
        drop(hold);
        totals
    })?;
    let (totals, dead) = totals;
    let mut report = render(events.len(), &totals, prices);
    add_dead_letters(&mut report, dead);
    Ok(report)
}

/// Totals per rule, and dead letters by reason.
type Tallied = (BTreeMap<String, RuleTotals>, BTreeMap<String, u64>);

/// The shards' decisions tallied (and written) in event order, with their
/// matches and dead letters.
fn tally_shards(
    shards: &[Arc<Shard>],
    out: &mut Option<&mut dyn Write>,
) -> Result<Tallied, String> {
    let mut decisions: Vec<&(usize, Arc<Decision>)> =
        shards.iter().flat_map(|s| &s.decisions).collect();
    // Stable: within one event's index, each shard's own order is kept.
    decisions.sort_by_key(|(i, _)| *i);
    let mut totals: BTreeMap<String, RuleTotals> = BTreeMap::new();
    for (_, d) in decisions {
        tally(&mut totals, &d.outcome, out)?;
    }
    if let Some(w) = out.as_mut() {
        for shard in shards {
            super::replay::write_conversions(&mut **w, &shard.conversions)?;
        }
    }
    let mut dead = BTreeMap::new();
    for shard in shards {
        for (rule, n) in &shard.matches {
            totals.entry(rule.clone()).or_default().matches += n;
        }
        for (label, n) in &shard.dead {
            *dead.entry(label.clone()).or_default() += n;
        }
    }
    Ok((totals, dead))
}

/// Which events a shard owns, with every event's time and offset, and the
/// count of events done across shards.
struct Own<'a> {
    shard: usize,
    owners: &'a [usize],
    times: &'a [i64],
    offsets: &'a [i64],
    done: &'a AtomicUsize,
}

/// One shard: its users' events decided, every other event's time passed.
async fn run_shard(
    config: &Config,
    rules_dir: &std::path::Path,
    profiles: &Arc<ProfileTable>,
    events: &[Recorded],
    own: Own<'_>,
) -> Result<Shard, String> {
    let Own {
        shard,
        owners,
        times,
        offsets,
        done,
    } = own;
    let offline = Offline::with_profiles(config, rules_dir, Arc::clone(profiles))
        .map_err(|e| e.to_string())?;
    let mut decisions = Vec::new();
    drive(
        &offline,
        (events, times, offsets),
        |i| owners[i] == shard,
        |i, d| {
            decisions.push((i, d));
            Ok(())
        },
        |_| {
            done.fetch_add(1, Ordering::Relaxed);
        },
    )
    .await?;
    let matches = rule_matches(&offline);
    Ok(Shard {
        decisions,
        matches,
        dead: dead_letter_counts(&offline),
        conversions: offline.take_conversions(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::Generator;

    /// Generated events (cards, freezers, phones) with the sample rules and
    /// config: the parallel replay decides exactly what the sequential one
    /// does — the same report, the same outcomes. 20,000 events here (about
    /// a minute in a debug build); `HERALD_TEST_EVENTS=100000` runs the
    /// issue's 100,000 (about five minutes).
    #[test]
    fn a_parallel_replay_decides_what_the_sequential_one_does() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = Config::read(&root.join("config/herald.toml")).unwrap();
        let rules = root.join("rules");
        let mut generator = Generator::new(7, 400, 20);
        let profiles = crate::profile::ProfileTable::new();
        let metrics = crate::metrics::Metrics::new();
        for (user, p) in generator.profiles() {
            let bytes = serde_json::to_vec(&p).unwrap();
            assert!(profiles.apply(Some(user.as_bytes()), Some(&bytes), &metrics));
        }
        let start = 1_795_514_400_000;
        let events: Vec<Recorded> = (0..std::env::var("HERALD_TEST_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000))
            .map(|i| {
                let r = generator.next(start + i * 500);
                Recorded::new(r.topic.to_string(), Some(r.key), r.value)
            })
            .collect();
        let none = BTreeMap::new();
        let mut sequential_out = Vec::new();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let sequential = runtime
            .block_on(super::super::replay::replay(
                &config,
                &rules,
                &profiles,
                &events,
                &none,
                Some(&mut sequential_out),
                |_| {},
            ))
            .unwrap();
        let mut parallel_out = Vec::new();
        let inputs = Inputs {
            config: &config,
            rules_dir: &rules,
            profiles: &profiles,
            events: &events,
            prices: &none,
        };
        let parallel = replay_parallel(inputs, Some(&mut parallel_out), 3, |_| {}).unwrap();
        assert_eq!(parallel.text, sequential.text);
        let lines = |out: &[u8]| {
            let mut lines: Vec<Value> = out
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let mut v: Value = serde_json::from_slice(l).unwrap();
                    // The provider call's wall-clock times, and the recording
                    // provider's own message counter, differ run to run.
                    v["timings"]["request_sent_ms"] = Value::Null;
                    v["timings"]["answered_ms"] = Value::Null;
                    v["provider_message_id"] = Value::Null;
                    v
                })
                .collect();
            lines.sort_by_key(|v| v.to_string());
            lines
        };
        let (seq, par) = (lines(&sequential_out), lines(&parallel_out));
        assert!(seq.len() > events.len() / 20, "only {} outcomes", seq.len());
        assert_eq!(seq.len(), par.len());
        for (s, p) in seq.iter().zip(&par) {
            assert_eq!(s.to_string(), p.to_string());
        }
    }
}

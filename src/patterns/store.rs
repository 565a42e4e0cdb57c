//! The state of every (rule, key), in memory: bounded per rule, dropped as
//! soon as no pattern can complete with it, kept across reloads while a
//! rule's pattern is unchanged, with event-time timers (and a processing-time
//! fallback) for absences and dwell, and a per-partition take/restore
//! interface for snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tracing::{info, warn};

use super::detect::{self, Input, KeyState, Observed};
use super::{Fired, Kind, LateAction, Pattern};

/// The state of one key of one rule.
#[derive(Debug, Clone)]
pub struct Entry {
    pub state: KeyState,
    /// The newest event time seen for the key (its stream time), ms.
    pub newest_ms: i64,
    /// Wall clock of the last event, ms (for expiry and eviction).
    pub touched_ms: i64,
    /// The source partition of the last event: state moves with it.
    pub source: (Arc<str>, i32),
}

struct RuleState {
    fingerprint: String,
    keys: DashMap<String, Entry>,
}

/// Why an event was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// How far behind the key's newest event it was, ms.
    pub behind_ms: i64,
}

/// All pattern state of an instance.
pub struct PatternStore {
    rules: DashMap<String, Arc<RuleState>>,
    /// (deadline in event time, seq) → (rule, key).
    timers: Mutex<BTreeMap<(i64, u64), (String, String)>>,
    seq: AtomicU64,
    /// The newest event time seen by this instance.
    stream_ms: AtomicI64,
    /// Keys per rule before the least recently seen are evicted.
    pub max_keys_per_rule: usize,
}

impl PatternStore {
    /// A store holding at most `max_keys_per_rule` keys per rule.
    pub fn new(max_keys_per_rule: usize) -> PatternStore {
        PatternStore {
            rules: DashMap::new(),
            timers: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            stream_ms: AtomicI64::new(i64::MIN),
            max_keys_per_rule,
        }
    }

    fn rule(&self, rule: &str, pattern: &Pattern) -> Arc<RuleState> {
        if let Some(r) = self.rules.get(rule) {
            if r.fingerprint == pattern.fingerprint {
                return Arc::clone(&r);
            }
        }
        let mut slot = self.rules.entry(rule.to_string()).or_insert_with(|| {
            Arc::new(RuleState {
                fingerprint: pattern.fingerprint.clone(),
                keys: DashMap::new(),
            })
        });
        if slot.fingerprint != pattern.fingerprint {
            info!(%rule, keys = slot.keys.len(), "the rule's pattern changed; its state starts fresh");
            *slot = Arc::new(RuleState {
                fingerprint: pattern.fingerprint.clone(),
                keys: DashMap::new(),
            });
        }
        Arc::clone(&slot)
    }

    /// Applies one event to the state of (`rule`, `key`). `Err(Late)` when the
    /// event is later than the pattern allows and the rule ignores late events.
    /// Returns also how many keys were evicted to stay under the cap.
    pub fn observe(
        &self,
        rule: &str,
        pattern: &Pattern,
        key: &str,
        input: &Input<'_>,
        now_ms: i64,
    ) -> Result<(Observed, usize), Late> {
        let event = input.event;
        let state = self.rule(rule, pattern);
        let mut entry = state.keys.entry(key.to_string()).or_insert_with(|| Entry {
            state: KeyState::new(pattern),
            newest_ms: event.time_ms,
            touched_ms: now_ms,
            source: (Arc::clone(&event.source), event.partition),
        });
        let behind_ms = entry.newest_ms - event.time_ms;
        if behind_ms > pattern.lateness_ms && pattern.late == LateAction::Ignore {
            return Err(Late { behind_ms });
        }
        let observed = detect::observe(pattern, &mut entry.state, input);
        entry.newest_ms = entry.newest_ms.max(event.time_ms);
        entry.touched_ms = now_ms;
        entry.source = (Arc::clone(&event.source), event.partition);
        let idle = entry.state.is_idle();
        drop(entry);
        if idle {
            state.keys.remove_if(key, |_, e| e.state.is_idle());
        }
        if let Some(deadline) = observed.timer {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            self.timers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((deadline, seq), (rule.to_string(), key.to_string()));
        }
        self.stream_ms.fetch_max(event.time_ms, Ordering::Relaxed);
        let evicted = self.bound(rule, &state);
        Ok((observed, evicted))
    }

    /// Evicts the least recently seen keys (a tenth) when over the cap.
    fn bound(&self, rule: &str, state: &RuleState) -> usize {
        if state.keys.len() <= self.max_keys_per_rule {
            return 0;
        }
        let mut touched: Vec<(i64, String)> = state
            .keys
            .iter()
            .map(|e| (e.touched_ms, e.key().clone()))
            .collect();
        touched.sort_unstable();
        let excess = state.keys.len() - self.max_keys_per_rule;
        let n = (self.max_keys_per_rule / 10)
            .max(1)
            .max(excess)
            .min(touched.len());
        for (_, key) in &touched[..n] {
            state.keys.remove(key);
        }
        warn!(%rule, evicted = n, cap = self.max_keys_per_rule, "pattern key cap reached; least recently seen keys evicted");
        n
    }

    /// Fires the timers that are due: by event time (the newest event seen
    /// has passed the deadline) or, for a key gone silent, by processing time
    /// (the wall clock has passed the deadline plus the pattern's lateness).
    pub fn due(
        &self,
        now_ms: i64,
        pattern_of: impl Fn(&str) -> Option<Arc<Pattern>>,
    ) -> Vec<(String, Fired)> {
        let stream = self.stream_ms.load(Ordering::Relaxed);
        let mut fired = Vec::new();
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let candidates: Vec<((i64, u64), (String, String))> = timers
            .range(..(now_ms.max(stream) + 1, 0))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (slot, (rule, key)) in candidates {
            let Some(pattern) = pattern_of(&rule) else {
                timers.remove(&slot);
                continue;
            };
            let effective = stream.max(now_ms - pattern.lateness_ms);
            if slot.0 > effective {
                continue;
            }
            timers.remove(&slot);
            let Some(state) = self.rules.get(&rule).map(|r| Arc::clone(&r)) else {
                continue;
            };
            if state.fingerprint != pattern.fingerprint {
                continue;
            }
            let idle = match state.keys.get_mut(&key) {
                Some(mut entry) => {
                    for f in detect::expire(&pattern, &mut entry.state, effective) {
                        fired.push((rule.clone(), f));
                    }
                    entry.state.is_idle()
                }
                None => false,
            };
            if idle {
                state.keys.remove_if(&key, |_, e| e.state.is_idle());
            }
        }
        fired
    }

    /// Drops the state of rules no longer loaded (or changed), and keys whose
    /// patterns can no longer complete because their time ran out.
    pub fn sweep(&self, now_ms: i64, pattern_of: impl Fn(&str) -> Option<Arc<Pattern>>) {
        self.rules.retain(|rule, state| match pattern_of(rule) {
            Some(p) if p.fingerprint == state.fingerprint => {
                let horizon = match &p.kind {
                    Kind::Window { within_ms, .. } | Kind::Sequence { within_ms, .. } => {
                        Some(within_ms + p.lateness_ms)
                    }
                    _ => None,
                };
                if let Some(h) = horizon {
                    state
                        .keys
                        .retain(|_, e| now_ms - e.touched_ms <= h && !e.state.is_idle());
                }
                true
            }
            Some(_) => {
                info!(%rule, "the rule's pattern changed; its state starts fresh");
                false
            }
            None => false,
        });
    }

    /// Takes out the state of every key last seen on a source partition
    /// (for a snapshot, or when the partition leaves this instance).
    pub fn take_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Vec<(String, String, String, Entry)> {
        let mut out = Vec::new();
        for state in self.rules.iter() {
            let keys: Vec<String> = state
                .keys
                .iter()
                .filter(|e| &*e.source.0 == topic && e.source.1 == partition)
                .map(|e| e.key().clone())
                .collect();
            for key in keys {
                if let Some((key, entry)) = state.keys.remove(&key) {
                    out.push((state.key().clone(), state.fingerprint.clone(), key, entry));
                }
            }
        }
        out
    }

    /// Puts back state taken by [`PatternStore::take_partition`]; entries of a
    /// rule whose pattern changed meanwhile are dropped.
    pub fn restore(&self, entries: Vec<(String, String, String, Entry)>) {
        for (rule, fingerprint, key, entry) in entries {
            let state = self.rules.entry(rule).or_insert_with(|| {
                Arc::new(RuleState {
                    fingerprint: fingerprint.clone(),
                    keys: DashMap::new(),
                })
            });
            if state.fingerprint == fingerprint {
                state.keys.insert(key, entry);
            }
        }
    }

    /// Keys held and their approximate bytes, over all rules.
    pub fn size(&self) -> (usize, usize) {
        let mut keys = 0;
        let mut bytes = 0;
        for state in self.rules.iter() {
            for e in state.keys.iter() {
                keys += 1;
                bytes += e.key().len() + std::mem::size_of::<Entry>() + e.state.approx_bytes();
            }
        }
        (keys, bytes)
    }

    /// Whether any timer is waiting.
    pub fn has_timers(&self) -> bool {
        !self
            .timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Keys held for one rule.
    pub fn keys_of(&self, rule: &str) -> usize {
        self.rules.get(rule).map_or(0, |r| r.keys.len())
    }
}

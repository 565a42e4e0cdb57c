//! Pattern state on disk: a key is read from its topic's copy when memory does not hold it, timers and expiries come up through the copy's index, memory is a cache of recently seen keys, and an entry leaves memory only once its changes are on disk.

use std::sync::Arc;

use tracing::{error, info};

use crate::patterns::store::{Entry, KeyRef, PatternRecord, PatternStore, RuleState};
use crate::patterns::{Fired, Pattern};
use crate::state::mirror::{Mirror, Wake, NEVER};

/// What the timers due now did.
#[derive(Default)]
pub struct Due {
    /// Firings, each with its key.
    pub fired: Vec<(KeyRef, Fired)>,
    /// Keys whose state changed, once each: their records are to be written.
    pub changed: Vec<KeyRef>,
}

/// A record's wake-up times, for the disk's index ([`Mirror`]).
pub fn wake_of(value: &[u8]) -> Wake {
    #[derive(serde::Deserialize)]
    struct Times {
        due_ms: Option<i64>,
        expires_ms: Option<i64>,
    }
    match serde_json::from_slice::<Times>(value) {
        Ok(t) => Wake {
            due_ms: t.due_ms.unwrap_or(NEVER),
            expires_ms: t.expires_ms.unwrap_or(NEVER),
        },
        Err(_) => Wake::NONE,
    }
}

/// (rule, key) of a row: from its value, since its changelog key may not
/// show the key.
fn split(value: Option<&[u8]>) -> Option<(String, String)> {
    crate::patterns::store::identity(value?)
}

impl PatternStore {
    /// The entry of `key` from its record `value`, if the record is of
    /// `pattern` as it is now.
    fn entry_of(
        value: &[u8],
        pattern: &Pattern,
        source: &Arc<str>,
        partition: i32,
    ) -> Option<Entry> {
        let record: PatternRecord = serde_json::from_slice(value).ok()?;
        (record.fingerprint == pattern.fingerprint).then(|| Entry {
            state: record.state,
            newest_ms: record.newest_ms,
            touched_ms: record.touched_ms,
            source: (Arc::clone(source), partition),
            applied: record.applied,
            restored: true,
            unsaved: 0,
            gone: false,
            written: 0,
        })
    }

    /// The entry of (`rule`, `key`) on disk, if there is one of `pattern`
    /// as it is now. A read that fails is logged and the key starts fresh.
    pub(super) fn load(
        &self,
        mirror: &Mirror,
        partition: i32,
        rule: &str,
        pattern: &Pattern,
        key: &str,
        source: &Arc<str>,
    ) -> Option<Entry> {
        match mirror.get(partition, &self.changelog_key(rule, key)) {
            Ok(value) => Self::entry_of(&value?, pattern, source, partition),
            Err(e) => {
                error!(%rule, error = %e, "pattern state cannot be read from disk; the key starts fresh");
                None
            }
        }
    }

    /// Lets go of the least recently seen tenth of a rule's cached keys
    /// whose changes are all on disk, when it holds more than the cache's size.
    pub(super) fn shed(&self, rule: &str, state: &RuleState) {
        let len = state.keys.len();
        state.size.counted(len);
        if len <= self.cache_keys_per_rule {
            return;
        }
        let mut clean: Vec<(i64, String)> = state
            .keys
            .iter()
            .filter(|e| e.unsaved == 0 && !e.gone && self.disks.contains_key(&e.source.0))
            .map(|e| (e.touched_ms, e.key().clone()))
            .collect();
        clean.sort_unstable();
        let n = (self.cache_keys_per_rule / 10)
            .max(1)
            .max(len - self.cache_keys_per_rule)
            .min(clean.len());
        for (_, key) in &clean[..n] {
            state.keys.remove_if(key, |_, e| e.unsaved == 0 && !e.gone);
        }
        state.size.counted(state.keys.len());
        tracing::debug!(%rule, released = n, "pattern cache full; least recently seen keys left on disk");
    }

    /// A change of (`rule`, `key`) is on disk: the entry may leave memory
    /// once none is pending (a dropped key leaves at once).
    pub fn saved(&self, rule: &str, key: &str) {
        let Some(state) = self.rules.get(rule).map(|r| Arc::clone(&r)) else {
            return;
        };
        state.keys.remove_if_mut(key, |_, e| {
            e.unsaved = e.unsaved.saturating_sub(1);
            e.unsaved == 0 && e.gone
        });
    }

    /// The entry of a row woken on disk, brought into memory unless memory
    /// has it already (then memory's is the newer).
    #[allow(clippy::too_many_arguments)]
    fn woken(
        &self,
        rule: &str,
        state: &RuleState,
        key: &str,
        value: &[u8],
        pattern: &Pattern,
        source: &Arc<str>,
        partition: i32,
    ) -> bool {
        if state.keys.contains_key(key) {
            return true;
        }
        match Self::entry_of(value, pattern, source, partition) {
            Some(entry) => {
                state.keys.entry(key.to_string()).or_insert(entry);
                if state.size.grew_past(self.cache_keys_per_rule) {
                    self.shed(rule, state);
                }
                true
            }
            None => false,
        }
    }

    /// Fires the timers on disk that are due (as [`PatternStore::due`]).
    pub(super) fn due_on_disk(
        &self,
        now_ms: i64,
        pattern_of: &impl Fn(&str) -> Option<Arc<Pattern>>,
        due: &mut Due,
    ) {
        let stream = self.stream_ms.load(std::sync::atomic::Ordering::Relaxed);
        for (topic, mirror) in &self.disks {
            for partition in mirror.partitions() {
                let rows = match mirror.due(partition, now_ms.max(stream)) {
                    Ok(rows) => rows,
                    Err(e) => {
                        error!(%topic, partition, error = %e, "pattern timers cannot be read from disk");
                        continue;
                    }
                };
                for row in rows {
                    let Some((rule, key)) = split(row.value.as_deref()) else {
                        continue;
                    };
                    let (rule, key) = (rule.as_str(), key.as_str());
                    let (Some(pattern), Some(value)) = (pattern_of(rule), row.value.as_deref())
                    else {
                        continue;
                    };
                    let effective = stream.max(now_ms - pattern.lateness_ms);
                    let state = self.rule(rule, &pattern);
                    if !self.woken(rule, &state, key, value, &pattern, topic, partition) {
                        continue;
                    }
                    let Some(mut entry) = state.keys.get_mut(key) else {
                        continue;
                    };
                    let deadlines = entry.state.deadlines(&pattern);
                    if entry.gone || deadlines.iter().all(|&d| d > effective) {
                        continue;
                    }
                    let at = KeyRef {
                        rule: rule.to_string(),
                        key: key.to_string(),
                        source: entry.source.clone(),
                        held: true,
                    };
                    for fired in entry.state.expire(&pattern, effective) {
                        due.fired.push((at.clone(), fired));
                    }
                    entry.unsaved += 1;
                    entry.gone = entry.state.is_idle();
                    due.changed.push(at);
                }
            }
        }
    }

    /// Drops from disk the keys whose state ran out of time, and, when the
    /// rules changed since the last look (`rules`: their fingerprint), every
    /// key of a rule no longer loaded or whose pattern changed (a whole
    /// read of the disk's rows). Their records become tombstones.
    pub(super) fn sweep_disk(
        &self,
        now_ms: i64,
        rules: u64,
        pattern_of: &impl Fn(&str) -> Option<Arc<Pattern>>,
        gone: &mut Vec<KeyRef>,
    ) {
        for (topic, mirror) in &self.disks {
            for partition in mirror.partitions() {
                match mirror.expired(partition, now_ms) {
                    Ok(rows) => {
                        for row in rows {
                            self.expire_row(
                                topic,
                                partition,
                                row.value.as_deref(),
                                now_ms,
                                pattern_of,
                                gone,
                            );
                        }
                    }
                    Err(e) => {
                        error!(%topic, partition, error = %e, "expired pattern state cannot be read from disk")
                    }
                }
            }
        }
        let mut swept_for = self.swept_for.lock().unwrap_or_else(|p| p.into_inner());
        if *swept_for == rules {
            return;
        }
        *swept_for = rules;
        let before = gone.len();
        for (topic, mirror) in &self.disks {
            for partition in mirror.partitions() {
                let scanned = mirror.for_each(partition, |_, value| {
                    #[derive(serde::Deserialize)]
                    struct Head {
                        fingerprint: String,
                    }
                    let Some((rule, key)) = split(Some(value)) else {
                        return;
                    };
                    let current = pattern_of(&rule);
                    let head = serde_json::from_slice::<Head>(value).ok();
                    let fits = matches!((&current, &head), (Some(p), Some(h)) if p.fingerprint == h.fingerprint);
                    if !fits {
                        gone.push(KeyRef {
                            rule,
                            key,
                            source: (Arc::clone(topic), partition),
                            held: false,
                        });
                    }
                });
                if let Err(e) = scanned {
                    error!(%topic, partition, error = %e, "pattern state on disk cannot be read for its sweep");
                }
            }
        }
        if gone.len() > before {
            info!(
                keys = gone.len() - before,
                "pattern state of rules removed or changed dropped from disk"
            );
        }
    }

    /// One key woken by its expiry on disk: dropped if its state (memory's
    /// when memory has it) ran out of time, or its rule is gone.
    #[allow(clippy::too_many_arguments)]
    fn expire_row(
        &self,
        topic: &Arc<str>,
        partition: i32,
        value: Option<&[u8]>,
        now_ms: i64,
        pattern_of: &impl Fn(&str) -> Option<Arc<Pattern>>,
        gone: &mut Vec<KeyRef>,
    ) {
        let Some((rule, key)) = split(value) else {
            return;
        };
        let (rule, key) = (rule.as_str(), key.as_str());
        let mut at = KeyRef {
            rule: rule.to_string(),
            key: key.to_string(),
            source: (Arc::clone(topic), partition),
            held: false,
        };
        let (Some(pattern), Some(value)) = (pattern_of(rule), value) else {
            gone.push(at);
            return;
        };
        let state = self.rule(rule, &pattern);
        if !self.woken(rule, &state, key, value, &pattern, topic, partition) {
            // Of the rule's pattern before it changed.
            if !state.keys.contains_key(key) {
                gone.push(at);
            }
            return;
        }
        let horizon = pattern.kind.horizon_ms().map(|w| w + pattern.lateness_ms);
        let Some(mut entry) = state.keys.get_mut(key) else {
            return;
        };
        let expired = horizon.is_some_and(|h| now_ms - entry.touched_ms > h);
        if entry.gone || entry.unsaved > 0 || !(expired || entry.state.is_idle()) {
            return;
        }
        entry.unsaved += 1;
        entry.gone = true;
        at.held = true;
        gone.push(at);
    }
}

#[cfg(test)]
mod tests;

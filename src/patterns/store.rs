//! The state of every (rule, key): in memory, bounded per rule (on a source
//! topic with a copy on disk, a cache in front of it: [`super::on_disk`]),
//! dropped as soon as no pattern can complete with it, kept across reloads
//! while a rule's pattern is unchanged, with event-time timers (and a
//! processing-time fallback) for absences and dwell.

use crate::state::mirror::Mirror;
use crate::util::{FastDashMap, FastMap};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::detect::{Input, Observed};
use super::on_disk::Due;
use super::{KeyState, LateAction, Pattern};

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
    /// The offset of the last event applied, on that partition.
    pub applied: i64,
    /// Restored from the changelog: events of its partition up to `applied`
    /// were applied by the last owner, and are skipped when redelivered.
    pub restored: bool,
    /// Changes of the entry whose changelog record is not on disk yet (a
    /// topic with a copy on disk): until they are, the entry stays in memory,
    /// where a lookup finds it, and disk is not read for it.
    pub unsaved: u32,
    /// Dropped (idle, swept, its rule gone) with its tombstone on the way:
    /// a lookup finds a fresh state, not the disk's.
    pub gone: bool,
    /// A digest of the state as its changelog last had it (0: not known):
    /// an event that leaves the state as it was writes no record.
    pub written: u64,
}

/// One key's state as written to its source topic's changelog.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PatternRecord {
    pub rule: String,
    pub fingerprint: String,
    pub key: String,
    pub newest_ms: i64,
    pub touched_ms: i64,
    pub applied: i64,
    /// Its earliest timer, event time, if it has one (the disk's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
    /// When the state runs out of time, wall clock, if it can (the disk's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    pub state: KeyState,
}

/// A [`PatternRecord`] borrowed from the store, for writing without copying the state.
#[derive(serde::Serialize)]
struct PatternRecordRef<'a> {
    rule: &'a str,
    fingerprint: &'a str,
    key: &'a str,
    newest_ms: i64,
    touched_ms: i64,
    applied: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    due_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_ms: Option<i64>,
    state: &'a KeyState,
}

/// One rule's key and the source partition its state belongs to: a key
/// dropped (swept, evicted) or changed by a timer, whose changelog record
/// must be written.
#[derive(Debug, Clone)]
pub struct KeyRef {
    pub rule: String,
    pub key: String,
    pub source: (Arc<str>, i32),
    /// The entry counts this change as unsaved ([`Entry::unsaved`]): once
    /// its record is on disk, [`PatternStore::saved`] is to be called.
    pub held: bool,
}

/// The changelog key of (rule, key).
pub fn changelog_key(rule: &str, key: &str) -> String {
    format!("{rule}\u{0}{key}")
}

/// The rule and key a record's value is of (the changelog key may not show
/// the key: [`crate::state::sealed`]).
pub fn identity(value: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Identity {
        rule: String,
        key: String,
    }
    let id: Identity = serde_json::from_slice(value).ok()?;
    Some((id.rule, id.key))
}

pub(super) struct RuleState {
    pub(super) fingerprint: String,
    pub(super) keys: FastDashMap<String, Entry>,
    /// When `keys` may have passed the cap per rule.
    pub(super) size: crate::util::SizeWatch,
}

/// Why an event was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// How far behind the key's newest event it was, ms.
    pub behind_ms: i64,
}

/// All pattern state of an instance.
pub struct PatternStore {
    pub(super) rules: FastDashMap<String, Arc<RuleState>>,
    /// (deadline in event time, seq) → (rule, key).
    timers: Mutex<BTreeMap<(i64, u64), (String, String)>>,
    seq: AtomicU64,
    /// The newest event time seen by this instance.
    pub(super) stream_ms: AtomicI64,
    /// Keys per rule before the least recently seen are evicted.
    pub max_keys_per_rule: usize,
    /// Source topics whose state is on disk, and their copies: there
    /// memory is a cache of `cache_keys_per_rule` keys per rule.
    pub(super) disks: FastMap<Arc<str>, Arc<Mirror>>,
    pub(super) cache_keys_per_rule: usize,
    /// The rules (and fingerprints) whose keys the disk was last swept for.
    pub(super) swept_for: Mutex<u64>,
    /// Blinds the keys of the changelogs' records, when they are sealed.
    seal: Option<Arc<crate::state::sealed::ChangelogSeal>>,
    /// Changes go to changelogs: an event's [`Observed::changed`] is
    /// worked out (else every event counts as a change).
    logged: bool,
}

impl PatternStore {
    /// A store holding at most `max_keys_per_rule` keys per rule.
    pub fn new(max_keys_per_rule: usize) -> PatternStore {
        PatternStore {
            rules: FastDashMap::default(),
            timers: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            stream_ms: AtomicI64::new(i64::MIN),
            max_keys_per_rule,
            disks: FastMap::default(),
            cache_keys_per_rule: max_keys_per_rule,
            swept_for: Mutex::new(0),
            seal: None,
            logged: false,
        }
    }

    /// Changes are written to changelogs: [`Observed::changed`] tells an
    /// event that left its key's state as it was, whose record is skipped.
    pub fn logged(&mut self) {
        self.logged = true;
    }

    /// A digest of `state` as its record would carry it (never 0 in
    /// practice; 0 marks "not known").
    fn digest(&self, state: &KeyState) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        struct Sink<H>(H);
        impl<H: Hasher> std::io::Write for Sink<H> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.write(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        if !self.logged {
            return 0;
        }
        let mut sink = Sink(foldhash::fast::FixedState::default().build_hasher());
        // Serializing a state to a sink that cannot fail does not fail.
        let _ = serde_json::to_writer(&mut sink, state);
        sink.0.finish() | 1
    }

    /// Changelog keys blinded by `seal` (the changelogs' records are sealed
    /// with it).
    pub fn sealed(&mut self, seal: Arc<crate::state::sealed::ChangelogSeal>) {
        self.seal = Some(seal);
    }

    /// The changelog key of (`rule`, `key`): blinded when the changelogs
    /// are sealed, else [`changelog_key`].
    pub fn changelog_key(&self, rule: &str, key: &str) -> String {
        match &self.seal {
            Some(seal) => seal.key(rule, key),
            None => changelog_key(rule, key),
        }
    }

    /// Keeps the state of `topic` on disk in `mirror`, `cache_keys` keys per
    /// rule in memory.
    pub fn on_disk(&mut self, topic: &str, mirror: Arc<Mirror>, cache_keys: usize) {
        self.disks.insert(Arc::from(topic), mirror);
        self.cache_keys_per_rule = cache_keys;
    }

    pub(super) fn rule(&self, rule: &str, pattern: &Pattern) -> Arc<RuleState> {
        if let Some(r) = self.rules.get(rule) {
            if r.fingerprint == pattern.fingerprint {
                return Arc::clone(&r);
            }
        }
        let mut slot = self.rules.entry(rule.to_string()).or_insert_with(|| {
            Arc::new(RuleState {
                fingerprint: pattern.fingerprint.clone(),
                keys: FastDashMap::default(),
                size: crate::util::SizeWatch::default(),
            })
        });
        if slot.fingerprint != pattern.fingerprint {
            info!(%rule, keys = slot.keys.len(), "the rule's pattern changed; its state starts fresh");
            *slot = Arc::new(RuleState {
                fingerprint: pattern.fingerprint.clone(),
                keys: FastDashMap::default(),
                size: crate::util::SizeWatch::default(),
            });
        }
        Arc::clone(&slot)
    }

    /// Applies one event to the state of (`rule`, `key`). `Err(Late)` when the
    /// event is later than the pattern allows and the rule ignores late events.
    /// Returns also the keys evicted to stay under the cap, with their partitions.
    pub fn observe(
        &self,
        rule: &str,
        pattern: &Pattern,
        key: &str,
        input: &Input<'_>,
        now_ms: i64,
    ) -> Result<(Observed, Vec<KeyRef>), Late> {
        let event = input.event;
        let state = self.rule(rule, pattern);
        let disk = self.disks.get(&*event.source);
        let mut new_key = false;
        if let Some(mirror) = disk {
            if !state.keys.contains_key(key) {
                let loaded = self.load(mirror, event.partition, rule, pattern, key, &event.source);
                if let Some(entry) = loaded {
                    state.keys.entry(key.to_string()).or_insert(entry);
                    new_key = true;
                }
            }
        }
        // A key already followed is found without copying its name.
        let found = state.keys.get_mut(key);
        let mut entry = found.unwrap_or_else(|| {
            new_key = true;
            let fresh = pattern.kind.new_state();
            let written = self.digest(&fresh);
            state.keys.entry(key.to_string()).or_insert_with(|| Entry {
                state: fresh,
                newest_ms: event.time_ms,
                touched_ms: now_ms,
                source: (Arc::clone(&event.source), event.partition),
                applied: -1,
                restored: false,
                unsaved: 0,
                gone: false,
                written,
            })
        });
        let was_gone = entry.gone;
        if entry.gone {
            entry.gone = false;
            entry.state = pattern.kind.new_state();
            entry.newest_ms = event.time_ms;
            entry.applied = -1;
            entry.restored = false;
            // Its tombstone (a fresh state) is what the changelog will have.
            entry.written = self.digest(&entry.state);
        }
        if entry.restored
            && event.offset <= entry.applied
            && *entry.source.0 == *event.source
            && entry.source.1 == event.partition
        {
            // Redelivered after a restore: the last owner applied it already.
            return Ok((Observed::default(), Vec::new()));
        }
        let behind_ms = entry.newest_ms - event.time_ms;
        if behind_ms > pattern.lateness_ms && pattern.late == LateAction::Ignore {
            return Err(Late { behind_ms });
        }
        let mut observed = entry.state.observe(pattern, input);
        entry.newest_ms = entry.newest_ms.max(event.time_ms);
        entry.touched_ms = now_ms;
        entry.source = (Arc::clone(&event.source), event.partition);
        entry.applied = event.offset;
        entry.restored = false;
        observed.changed = match self.logged {
            true => {
                let digest = self.digest(&entry.state);
                std::mem::replace(&mut entry.written, digest) != digest
            }
            false => true,
        };
        let idle = entry.state.is_idle();
        if disk.is_some() {
            if observed.changed {
                // Its record is on its way; an idle key is dropped once it is.
                entry.unsaved += 1;
                entry.gone = idle;
            } else {
                // Nothing to write: a tombstone on its way stays so.
                entry.gone = was_gone && idle;
            }
            drop(entry);
            if idle && !observed.changed {
                // A key that came and went (nothing written) leaves memory now.
                state
                    .keys
                    .remove_if(key, |_, e| e.state.is_idle() && e.unsaved == 0);
            }
        } else {
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
        }
        self.stream_ms.fetch_max(event.time_ms, Ordering::Relaxed);
        let evicted = match (
            new_key && state.size.grew_past(self.cap(disk.is_some())),
            disk,
        ) {
            (false, _) => Vec::new(),
            (true, None) => self.bound(rule, &state),
            (true, Some(_)) => {
                self.shed(rule, &state);
                Vec::new()
            }
        };
        Ok((observed, evicted))
    }

    fn cap(&self, on_disk: bool) -> usize {
        match on_disk {
            true => self.cache_keys_per_rule,
            false => self.max_keys_per_rule,
        }
    }

    /// Evicts the least recently seen keys (a tenth) when over the cap.
    fn bound(&self, rule: &str, state: &RuleState) -> Vec<KeyRef> {
        let len = state.keys.len();
        state.size.counted(len);
        if len <= self.max_keys_per_rule {
            return Vec::new();
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
        let mut gone = Vec::with_capacity(n);
        for (_, key) in &touched[..n] {
            if let Some((key, e)) = state.keys.remove(key) {
                gone.push(KeyRef {
                    rule: rule.to_string(),
                    key,
                    source: e.source,
                    held: false,
                });
            }
        }
        state.size.counted(state.keys.len());
        warn!(%rule, evicted = n, cap = self.max_keys_per_rule, "pattern key cap reached; least recently seen keys evicted");
        gone
    }

    /// Fires the timers that are due: by event time (the newest event seen
    /// has passed the deadline) or, for a key gone silent, by processing time
    /// (the wall clock has passed the deadline plus the pattern's lateness);
    /// in memory, and on disk ([`super::on_disk`]).
    pub fn due(&self, now_ms: i64, pattern_of: impl Fn(&str) -> Option<Arc<Pattern>>) -> Due {
        let stream = self.stream_ms.load(Ordering::Relaxed);
        let mut due = Due::default();
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
                    let at = KeyRef {
                        rule: rule.clone(),
                        key: key.clone(),
                        source: entry.source.clone(),
                        held: false,
                    };
                    let fired = entry.state.expire(&pattern, effective);
                    if !fired.is_empty() {
                        due.changed.push(at.clone());
                    }
                    due.fired.extend(fired.into_iter().map(|f| (at.clone(), f)));
                    entry.state.is_idle()
                }
                None => false,
            };
            if idle {
                state.keys.remove_if(&key, |_, e| e.state.is_idle());
            }
        }
        drop(timers);
        self.due_on_disk(now_ms, &pattern_of, &mut due);
        due
    }

    /// Drops the state of rules no longer loaded (or changed), and keys whose
    /// patterns can no longer complete because their time ran out. Returns
    /// the keys dropped (their changelog records become tombstones).
    pub fn sweep(
        &self,
        now_ms: i64,
        rules: u64,
        pattern_of: impl Fn(&str) -> Option<Arc<Pattern>>,
    ) -> Vec<KeyRef> {
        let mut gone = Vec::new();
        let drop_all = |rule: &str, state: &RuleState, gone: &mut Vec<KeyRef>| {
            for e in state.keys.iter() {
                gone.push(KeyRef {
                    rule: rule.to_string(),
                    key: e.key().clone(),
                    source: e.source.clone(),
                    held: false,
                });
            }
        };
        self.rules.retain(|rule, state| match pattern_of(rule) {
            Some(p) if p.fingerprint == state.fingerprint => {
                let horizon = p.kind.horizon_ms().map(|w| w + p.lateness_ms);
                if let Some(h) = horizon {
                    state.keys.retain(|key, e| {
                        let on_disk = self.disks.contains_key(&e.source.0);
                        if on_disk && (e.gone || e.unsaved > 0) {
                            return true;
                        }
                        let keep = now_ms - e.touched_ms <= h && !e.state.is_idle();
                        if !keep {
                            gone.push(KeyRef {
                                rule: rule.clone(),
                                key: key.clone(),
                                source: e.source.clone(),
                                held: on_disk,
                            });
                        }
                        if on_disk && !keep {
                            // Leaves memory once its tombstone is on disk.
                            e.unsaved += 1;
                            e.gone = true;
                            return true;
                        }
                        keep
                    });
                }
                true
            }
            Some(_) => {
                info!(%rule, "the rule's pattern changed; its state starts fresh");
                drop_all(rule, state, &mut gone);
                false
            }
            None => {
                drop_all(rule, state, &mut gone);
                false
            }
        });
        self.sweep_disk(now_ms, rules, &pattern_of, &mut gone);
        // A key dropped from memory and found on disk too: one tombstone.
        let mut seen = std::collections::HashSet::new();
        gone.retain(|k| seen.insert((k.rule.clone(), k.key.clone(), k.source.1)));
        gone
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
                    keys: FastDashMap::default(),
                    size: crate::util::SizeWatch::default(),
                })
            });
            if state.fingerprint == fingerprint && state.keys.insert(key, entry).is_none() {
                state.size.inserted();
            }
        }
    }

    /// The changelog value of (rule, key) now: `None` when it holds no state
    /// (a tombstone). `pattern`: the rule's, for the times the disk indexes.
    pub fn snapshot(&self, rule: &str, key: &str, pattern: Option<&Pattern>) -> Option<Vec<u8>> {
        let state = self.rules.get(rule)?;
        let entry = state.keys.get(key)?;
        if entry.gone {
            return None;
        }
        let due_ms = pattern.and_then(|p| entry.state.deadlines(p).into_iter().min());
        let expires_ms = pattern
            .and_then(|p| p.kind.horizon_ms().map(|w| w + p.lateness_ms))
            .map(|h| entry.touched_ms.saturating_add(h));
        Some(crate::util::json_bytes(&PatternRecordRef {
            rule,
            fingerprint: &state.fingerprint,
            key,
            newest_ms: entry.newest_ms,
            touched_ms: entry.touched_ms,
            applied: entry.applied,
            due_ms,
            expires_ms,
            state: &entry.state,
        }))
    }

    /// Whether the state of `topic`'s events is on disk.
    pub fn is_on_disk(&self, topic: &str) -> bool {
        self.disks.contains_key(topic)
    }

    /// Puts back the state of one source partition read from its changelog
    /// (newest record per key last; `None` values delete), re-arming its
    /// timers. Keys of rules no longer loaded, or whose pattern changed, are
    /// left out. Returns (keys restored, records unreadable).
    pub fn restore_changelog(
        &self,
        topic: &str,
        partition: i32,
        changes: Vec<(String, Option<Vec<u8>>)>,
        pattern_of: impl Fn(&str) -> Option<Arc<Pattern>>,
    ) -> (usize, usize) {
        let mut latest: std::collections::HashMap<String, Option<PatternRecord>> =
            std::collections::HashMap::new();
        let mut unreadable = 0;
        for (key, value) in changes {
            match value.map(|v| serde_json::from_slice::<PatternRecord>(&v)) {
                None => {
                    latest.insert(key, None);
                }
                Some(Ok(r)) => {
                    latest.insert(key, Some(r));
                }
                Some(Err(_)) => unreadable += 1,
            }
        }
        let source: Arc<str> = Arc::from(topic);
        let mut restored = 0;
        for record in latest.into_values().flatten() {
            let Some(pattern) = pattern_of(&record.rule) else {
                continue;
            };
            if pattern.fingerprint != record.fingerprint {
                continue;
            }
            for deadline in record.state.deadlines(&pattern) {
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                self.timers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((deadline, seq), (record.rule.clone(), record.key.clone()));
            }
            let state = self.rule(&record.rule, &pattern);
            self.stream_ms
                .fetch_max(record.newest_ms, Ordering::Relaxed);
            let entry = Entry {
                state: record.state,
                newest_ms: record.newest_ms,
                touched_ms: record.touched_ms,
                source: (Arc::clone(&source), partition),
                applied: record.applied,
                restored: true,
                unsaved: 0,
                gone: false,
                written: 0,
            };
            if state.keys.insert(record.key, entry).is_none() {
                state.size.inserted();
            }
            restored += 1;
        }
        (restored, unreadable)
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

    /// Whether any timer is waiting (on disk, one may be).
    pub fn has_timers(&self) -> bool {
        !self.disks.is_empty()
            || !self
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

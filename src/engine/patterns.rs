//! Stage 1's rules with a pattern: the key, the state update, the firings; the timers (absence, dwell) and the sweep of expired state.

use std::sync::Arc;
use std::time::Duration;

use super::matcher::{Matched, Seen};
use super::stores::{Saved, StateChange};
use super::{Job, Matcher};
use crate::ingest::decode::Event;
use crate::metrics::StageEvent;
use crate::outcome::{DeadLetter, DeadLetterCode, Pending};
use crate::patterns::detect::Input;
use crate::patterns::store::KeyRef;
use crate::patterns::{Fired, Pattern};
use crate::rules::Loaded;

/// How often timers are checked.
pub(super) const TICK: Duration = Duration::from_millis(250);
/// How often expired state is swept.
pub(super) const SWEEP: Duration = Duration::from_secs(10);

impl Matcher {
    /// Applies an event to rule `i`'s pattern. `Err` is the dead letter of an
    /// event whose key cannot be computed.
    pub(super) fn observe_pattern(
        &self,
        loaded: &Loaded,
        i: usize,
        pattern: &Pattern,
        seen: &Seen<'_>,
        changes: &mut Vec<StateChange>,
    ) -> Result<Vec<Fired>, Pending> {
        if !seen.matched && !pattern.sees_all_events() {
            return Ok(Vec::new());
        }
        let (rule, event) = (&loaded.set.rules[i], seen.event);
        let key = match &pattern.key {
            None => event.key.as_deref().map(str::to_string).ok_or_else(|| {
                "the event has no state key: set `key:` on the rule, `key_field` on the source, or key the Kafka messages".to_string()
            }),
            Some(expression) => seen.scope
                .and_then(|s| loaded.set.conditions.key(expression, s))
                .ok_or_else(|| {
                    format!("key `{}` did not give text or a number for this event", expression.source)
                }),
        };
        let key = match key {
            Ok(k) => k,
            Err(detail) => return Err(self.key_error(event, &rule.id, detail)),
        };
        let input = Input {
            event,
            matched: seen.matched,
            profile: seen.profile,
            conditions: &loaded.set.conditions,
            scope: seen.scope,
        };
        let now = self.cx.clock.now_ms();
        match self.patterns.observe(&rule.id, pattern, &key, &input, now) {
            Ok((observed, evicted)) => {
                if !evicted.is_empty() {
                    self.cx.metrics.emit(StageEvent::PatternKeysEvicted {
                        rule: &rule.id,
                        keys: evicted.len() as u64,
                    });
                }
                if !self.changelogs.is_empty() {
                    let at = KeyRef {
                        rule: rule.id.to_string(),
                        key,
                        source: (Arc::clone(&event.source), event.partition),
                        held: self.patterns.is_on_disk(&event.source),
                    };
                    // An event that left the state as it was writes nothing.
                    let changed = observed.changed.then_some(&at);
                    for gone in evicted.iter().chain(changed) {
                        self.pattern_change(gone, Some(pattern), changes);
                    }
                }
                Ok(observed.fired)
            }
            Err(_late) => {
                let late = StageEvent::LateEvent { rule: &rule.id };
                self.cx.metrics.emit(late);
                Ok(Vec::new())
            }
        }
    }

    /// The dead letter of an event whose pattern key cannot be computed.
    fn key_error(&self, event: &Event, rule: &str, detail: String) -> Pending {
        self.cx.count_dead_letter(DeadLetterCode::KeyError);
        self.cx.recorder.dead_letter(&DeadLetter {
            reason: DeadLetterCode::KeyError.into(),
            detail,
            topic: event.source.to_string(),
            partition: event.partition,
            offset: event.offset,
            original: crate::outcome::Original::of(
                None,
                Some(&serde_json::to_vec(&event.fields).unwrap_or_default()),
            ),
            rule: Some(rule.to_string()),
            channel: None,
            at_ms: self.cx.clock.now_ms(),
        })
    }

    /// The job of a firing of rule `i`.
    /// `timer`: a timer fired it (absence, dwell), not an event.
    pub(super) fn fired_job(
        &self,
        loaded: &Arc<Loaded>,
        i: usize,
        fired: Fired,
        timer: bool,
        subscription: Option<Arc<crate::state::intent::SubscriptionUsed>>,
    ) -> Job {
        let now = self.cx.clock.now_ms();
        let intent = crate::state::Intent::id_of(&fired.event, &loaded.set.rules[i].id, timer);
        let event = Arc::clone(&fired.event);
        let profile = self.cx.profiles.get(&event.user);
        Job {
            subscription,
            pattern: Some(Arc::new(fired)),
            ..Job::matched(intent.into(), loaded, i, event, profile, now)
        }
    }

    /// The pattern timers due now (absences, dwell): their jobs, and the
    /// state changes they make.
    pub fn due(&self) -> Matched {
        let loaded = self.cx.rules.current();
        let pattern_of = |id: &str| loaded.set.get(id).and_then(|r| r.pattern.clone());
        let due = self.patterns.due(self.cx.clock.now_ms(), pattern_of);
        let mut out = Matched::default();
        for at in &due.changed {
            self.pattern_change(at, pattern_of(&at.rule).as_deref(), &mut out.changes);
        }
        for (at, fired) in due.fired {
            let Some(i) = loaded.set.position(&at.rule) else {
                continue;
            };
            // A timer's firing asks the user's subscription now.
            let rule = &loaded.set.rules[i];
            let sub = match &rule.subscription {
                None => None,
                Some(declared) => {
                    let profile = self.cx.profiles.get(&fired.event.user);
                    match self.subscribed(&loaded, i, declared, profile.as_deref()) {
                        Some(used) => Some(used),
                        None => continue,
                    }
                }
            };
            self.count_match(&loaded, i);
            out.jobs.push(self.fired_job(&loaded, i, fired, true, sub));
        }
        out
    }

    /// Sweeps expired pattern state; the changes to write for it.
    pub(super) fn sweep(&self) -> Vec<StateChange> {
        let loaded = self.cx.rules.current();
        let pattern_of = |id: &str| loaded.set.get(id).and_then(|r| r.pattern.clone());
        let rules = loaded.patterns_print;
        let now = self.cx.clock.now_ms();
        // A change of rules reads the whole disk once: off the runtime's
        // other work where it can.
        let gone = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.patterns.sweep(now, rules, pattern_of))
            }
            _ => self.patterns.sweep(now, rules, pattern_of),
        };
        let mut changes = Vec::new();
        for at in &gone {
            self.pattern_change(at, pattern_of(&at.rule).as_deref(), &mut changes);
        }
        let (keys, bytes) = self.patterns.size();
        self.cx
            .metrics
            .emit(StageEvent::PatternState { keys, bytes });
        changes
    }

    /// The change of (rule, key) now, if its source topic has a changelog;
    /// `pattern`: the rule's, for the times the disk indexes.
    fn pattern_change(
        &self,
        at: &KeyRef,
        pattern: Option<&crate::patterns::Pattern>,
        changes: &mut Vec<StateChange>,
    ) {
        let Some(changelog) = self.changelogs.get(&*at.source.0) else {
            return;
        };
        changes.push(StateChange {
            changelog: Arc::clone(changelog),
            partition: at.source.1,
            key: self.patterns.changelog_key(&at.rule, &at.key),
            value: self.patterns.snapshot(&at.rule, &at.key, pattern),
            saved: at
                .held
                .then(|| Saved {
                    patterns: Arc::clone(&self.patterns),
                    rule: at.rule.clone(),
                    key: at.key.clone(),
                })
                .into_iter()
                .collect(),
        });
    }
}

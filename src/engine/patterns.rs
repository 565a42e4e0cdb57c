//! Rules with a pattern in the per-event path: the key, the state update, the
//! firings; and the task that runs absence and dwell timers and expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::stores::StateChange;
use super::{Job, Pipeline};
use crate::expr::condition::Scope;
use crate::ingest::decode::Event;
use crate::outcome::{DeadLetter, Pending};
use crate::patterns::detect::Input;
use crate::patterns::store::KeyRef;
use crate::patterns::{Fired, Pattern};
use crate::profile::Profile;
use crate::rules::Loaded;

/// How often timers are checked.
const TICK: Duration = Duration::from_millis(250);
/// How often expired state is swept.
const SWEEP: Duration = Duration::from_secs(10);

impl Pipeline {
    /// Applies an event to rule `i`'s pattern. `Err` is the dead letter of an
    /// event whose key cannot be computed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn observe_pattern(
        &self,
        loaded: &Loaded,
        i: usize,
        pattern: &Pattern,
        event: &Arc<Event>,
        matched: bool,
        profile: Option<&Profile>,
        scope: Option<&Scope>,
        changes: &mut Vec<StateChange>,
    ) -> Result<Vec<Fired>, Pending> {
        if !matched && !pattern.sees_all_events() {
            return Ok(Vec::new());
        }
        let rule = &loaded.set.rules[i];
        let key = match &pattern.key {
            None => event.key.as_deref().map(str::to_string).ok_or_else(|| {
                "the event has no state key: set `key:` on the rule, `key_field` on the source, or key the Kafka messages".to_string()
            }),
            Some(expression) => scope
                .and_then(|s| loaded.set.conditions.key(expression, s))
                .ok_or_else(|| {
                    format!("key `{}` did not give text or a number for this event", expression.source)
                }),
        };
        let key = match key {
            Ok(k) => k,
            Err(detail) => {
                self.metrics
                    .dead_letters
                    .with_label_values(&["key_error"])
                    .inc();
                return Err(self.recorder.dead_letter(&DeadLetter {
                    reason: "key_error".into(),
                    detail,
                    topic: event.source.to_string(),
                    partition: event.partition,
                    offset: event.offset,
                    original: crate::outcome::Original::of(
                        None,
                        Some(&serde_json::to_vec(&event.fields).unwrap_or_default()),
                    ),
                    rule: Some(rule.id.to_string()),
                    channel: None,
                    at_ms: self.clock.now_ms(),
                }));
            }
        };
        let input = Input {
            event,
            matched,
            profile,
            conditions: &loaded.set.conditions,
            scope,
        };
        match self
            .patterns
            .observe(&rule.id, pattern, &key, &input, self.clock.now_ms())
        {
            Ok((observed, evicted)) => {
                if !evicted.is_empty() {
                    self.metrics
                        .pattern_evicted
                        .with_label_values(&[&*rule.id])
                        .inc_by(evicted.len() as u64);
                }
                if !self.pattern_changelogs.is_empty() {
                    let at = KeyRef {
                        rule: rule.id.to_string(),
                        key,
                        source: (Arc::clone(&event.source), event.partition),
                    };
                    for gone in evicted.iter().chain([&at]) {
                        self.pattern_change(gone, changes);
                    }
                }
                Ok(observed.fired)
            }
            Err(_late) => {
                self.metrics
                    .late_events
                    .with_label_values(&[&*rule.id])
                    .inc();
                Ok(Vec::new())
            }
        }
    }

    /// The job of a firing of rule `i`.
    /// `timer`: a timer fired it (absence, dwell), not an event.
    pub(super) fn fired_job(
        &self,
        loaded: &Arc<Loaded>,
        i: usize,
        fired: Fired,
        timer: bool,
    ) -> Job {
        Job {
            intent: crate::state::Intent::id_of(&fired.event, &loaded.set.rules[i].id, timer)
                .into(),
            release: false,
            loaded: Arc::clone(loaded),
            rule: i,
            profile: self.profiles.get(&fired.event.user),
            event: Arc::clone(&fired.event),
            matched_ms: self.clock.now_ms(),
            pattern: Some(Arc::new(fired)),
        }
    }

    /// Fires the pattern timers due now (absences, dwell) and records their decisions.
    pub async fn fire_due_patterns(&self) {
        let loaded = self.rules.current();
        let pattern_of = |id: &str| loaded.set.get(id).and_then(|r| r.pattern.clone());
        let due = self.patterns.due(self.clock.now_ms(), pattern_of);
        if due.is_empty() {
            return;
        }
        let mut changes = Vec::new();
        let jobs: Vec<Job> = due
            .into_iter()
            .filter_map(|(at, fired)| {
                self.pattern_change(&at, &mut changes);
                let i = loaded.set.position(&at.rule)?;
                self.count_match(&loaded, i);
                Some(self.fired_job(&loaded, i, fired, true))
            })
            .collect();
        let mut writes = Vec::new();
        self.hand_over(jobs, &mut writes).await;
        Self::after_writes(&mut writes, changes);
        futures::future::join_all(writes).await;
    }

    /// Runs what is due at the clock's time, in place of the background
    /// tasks (rule tests and replays, on a virtual clock): pattern timers, then
    /// held messages.
    pub async fn tick(&self) {
        self.fire_due_patterns().await;
        for held in self.held.due(self.clock.now_ms()) {
            self.held_log.forget(&held.idempotency_key);
            self.release(held).await;
        }
    }

    /// Whether a timer or a held message is waiting.
    pub fn has_pending(&self) -> bool {
        self.patterns.has_timers() || !self.held.is_empty()
    }

    /// Runs due timers (absences, dwell) and sweeps expired state, until `shutdown`.
    pub async fn run_patterns(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut swept = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            self.fire_due_patterns().await;
            if swept.elapsed() >= SWEEP {
                swept = Instant::now();
                let loaded = self.rules.current();
                let pattern_of = |id: &str| loaded.set.get(id).and_then(|r| r.pattern.clone());
                let gone = self.patterns.sweep(self.clock.now_ms(), pattern_of);
                let mut changes = Vec::new();
                for at in &gone {
                    self.pattern_change(at, &mut changes);
                }
                let mut writes = Vec::new();
                Self::after_writes(&mut writes, changes);
                futures::future::join_all(writes).await;
                self.ledger.sweep(self.clock.now_ms());
                self.metrics.ledger_entries.set(self.ledger.len() as i64);
                let evicted = self.ledger.evicted();
                let counted = self.metrics.ledger_evicted.get();
                self.metrics
                    .ledger_evicted
                    .inc_by(evicted.saturating_sub(counted));
                let (keys, bytes) = self.patterns.size();
                self.metrics.pattern_keys.set(keys as i64);
                self.metrics.pattern_state_bytes.set(bytes as i64);
            }
        }
    }
}

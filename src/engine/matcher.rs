//! Stage 1: a source record decoded, matched against the rules, its patterns' state updated; the jobs of the rules it fired.

use crate::state::intent::Purpose;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing::{error, info, trace};

use super::stores::StateChange;
use super::{Job, StageContext};
use crate::config::{Config, SourceConfig};
use crate::expr::condition::Scope;
use crate::ingest::decode::{decode, Event, Origin};
use crate::ingest::{Incoming, RestoreFailed};
use crate::metrics::StageEvent;
use crate::outcome::Pending;
use crate::patterns::PatternStore;
use crate::profile::Profile;
use crate::rules::Verdict;
use crate::state::sealed::ChangelogSeal;
use crate::state::{Changelog, Intent, Kept, Partitioning, StateTable};
use crate::util::FastMap;

/// How long a restore waits for a broker that stops answering.
const RESTORE_PATIENCE: Duration = Duration::from_secs(30);

/// Stage 1. Its state: pattern windows per (rule, key), one store per
/// source partition, each with its changelog topic.
pub struct Matcher {
    pub(super) cx: StageContext,
    /// Source topic → (interned name, field mapping, consumed counter).
    sources: FastMap<String, (Arc<str>, SourceConfig, IntCounter)>,
    max_event_bytes: usize,
    /// Per (rule, key) state of rules with a pattern.
    pub(super) patterns: Arc<PatternStore>,
    /// Pattern-state changes, one changelog per source topic (none offline).
    pub(super) changelogs: FastMap<String, Arc<Changelog>>,
}

/// An event as a pattern sees it.
pub(super) struct Seen<'a> {
    pub event: &'a Arc<Event>,
    /// Whether the rule's match and condition hold for it.
    pub matched: bool,
    pub profile: Option<&'a Profile>,
    pub scope: Option<&'a Scope<'a>>,
}

/// What stage 1 made of a record (or of the timers due): the jobs of the
/// rules it fired, the writes it needs (dead letters), and the pattern
/// state changes to write once those are written.
#[derive(Default)]
pub struct Matched {
    pub jobs: Vec<Job>,
    pub writes: Vec<Pending>,
    pub(super) changes: Vec<StateChange>,
}

impl Matcher {
    /// Stage 1 for the configured sources; `changelogs` names the source
    /// topics whose pattern state has a changelog (`None`: all in memory),
    /// each copied to a table of `store` when there is one.
    pub fn new(
        cx: StageContext,
        changelogs: Option<&BTreeSet<String>>,
        store: Option<&crate::store::Store>,
        config: &Config,
    ) -> Matcher {
        let sources = config
            .sources
            .iter()
            .map(|(topic, mapping)| {
                let counter = cx.metrics.events_consumed.with_label_values(&[topic]);
                let entry = (Arc::from(topic.as_str()), mapping.clone(), counter);
                (topic.clone(), entry)
            })
            .collect();
        let reader = crate::kafka::profile_reader_config(&config.kafka);
        let seal = store.map(Self::seal);
        let changelogs: FastMap<String, Arc<Changelog>> = Self::tables(config)
            .into_iter()
            .filter_map(|table| {
                let Partitioning::Source(source) = &table.partitioning else {
                    return None;
                };
                let (topic, _, _) = table.changelog()?;
                changelogs?.contains(source).then(|| {
                    let mut log =
                        Changelog::new(topic.to_string(), cx.recorder.clone(), reader.clone());
                    if let Some(seal) = &seal {
                        log = log.sealed(Arc::clone(seal));
                    }
                    (source.clone(), Arc::new(Self::mirrored(log, store)))
                })
            })
            .collect();
        let mut patterns = PatternStore::new(config.limits.pattern_keys_per_rule);
        if let Some(seal) = seal {
            patterns.sealed(seal);
        }
        if !changelogs.is_empty() {
            patterns.logged();
        }
        for (source, log) in &changelogs {
            if let Some(mirror) = log.mirror() {
                patterns.on_disk(source, Arc::clone(mirror), config.state.pattern_cache);
            }
        }
        Matcher {
            patterns: Arc::new(patterns),
            sources,
            max_event_bytes: config.limits.max_event_bytes,
            changelogs,
            cx,
        }
    }

    /// What seals the pattern changelogs' records and blinds their keys: the
    /// state key (a pattern key may be a card number, and open patterns
    /// hold their events), and the key before a rotation, if set.
    fn seal(store: &crate::store::Store) -> Arc<ChangelogSeal> {
        let previous = crate::store::Sealer::previous().unwrap_or_else(|e| {
            error!(error = %e, "HERALD_STATE_KEY_PREVIOUS is not a key; records sealed under the previous key cannot be read");
            None
        });
        Arc::new(ChangelogSeal::new(
            store.sealer().clone(),
            previous,
            crate::patterns::store::identity,
        ))
    }

    /// `log` with its copy on disk in `store`, sealed (open patterns hold
    /// their events, card numbers included); without one (offline, or a
    /// table that will not open: logged) it is restored from the changelog
    /// alone, as before the store.
    fn mirrored(log: Changelog, store: Option<&crate::store::Store>) -> Changelog {
        let Some(store) = store else {
            return log;
        };
        let name = crate::state::mirror::Mirror::table_name(&log.topic);
        match store.sealed_table(&name, crate::state::mirror::FORMAT) {
            Ok(table) => log.mirrored(table, crate::patterns::on_disk::wake_of),
            Err(e) => {
                error!(topic = %log.topic, error = %e, "pattern state's copy on disk cannot be opened; it is restored from its changelog alone");
                log
            }
        }
    }

    /// Stage 1's state: the pattern state of every (rule, key), one table
    /// per source topic, each with its changelog.
    pub fn tables(config: &Config) -> Vec<StateTable> {
        config
            .sources
            .keys()
            .map(|source| StateTable {
                name: "pattern state",
                stage: "1",
                key: "rule and pattern key",
                partitioning: Partitioning::Source(source.clone()),
                kept: Kept::Changelog {
                    topic: config.pattern_changelog(source),
                    cleanup: "compact",
                    retention_ms: None,
                },
                bound: "on disk, state.pattern_cache keys per rule in memory; idle and expired keys swept",
            })
            .collect()
    }

    /// Whether `topic` is one of the sources.
    pub fn reads(&self, topic: &str) -> bool {
        self.sources.contains_key(topic)
    }

    /// Decodes a source record and matches it: every candidate rule's
    /// condition, every pattern it moves. A record that cannot be decoded
    /// is dead-lettered with its reason.
    pub fn observe(&self, msg: &Incoming) -> Matched {
        let mut out = Matched::default();
        let Some((source, mapping, consumed)) = self.sources.get(&msg.topic) else {
            return out;
        };
        consumed.inc();
        let origin = Origin {
            topic: &msg.topic,
            partition: msg.partition,
            offset: msg.offset,
            key: msg.key.as_deref(),
            timestamp_ms: msg.timestamp_ms,
        };
        let decoded = decode(
            source,
            mapping,
            origin,
            msg.payload.as_deref(),
            self.max_event_bytes,
            msg.consumed_ms,
        );
        let event = match decoded {
            Ok(e) => Arc::new(e),
            Err(e) => {
                trace!(topic = %msg.topic, partition = msg.partition, offset = msg.offset, reason = e.reason().as_str(), "dead letter");
                out.writes
                    .push(self.cx.dead_letter(msg, e.reason(), e.to_string()));
                return out;
            }
        };
        let loaded = self.cx.rules.current();
        let set = &loaded.set;
        let profile = self.cx.profiles.get(&event.user);
        // The conditions' scope: built once, only if a goal or a candidate needs it.
        let mut built = None;
        let goals = set.goals(&event.source, &event.fields).filter(|&i| {
            let goal = set.rules[i]
                .experiment
                .as_ref()
                .and_then(|e| e.goal.as_ref());
            match goal.and_then(|g| g.condition.as_ref()) {
                None => true,
                Some(condition) => {
                    let scope = built.get_or_insert_with(|| {
                        set.conditions.scope(&event.fields, profile.as_deref())
                    });
                    set.conditions.eval(condition, scope).unwrap_or(false)
                }
            }
        });
        let purposes = set
            .withdrawals(&event.source, &event.fields)
            .map(|i| (i, Purpose::Withdraw, "/withdraw"))
            .chain(goals.map(|i| (i, Purpose::Goal, "/goal")))
            .collect::<Vec<_>>();
        for (rule, purpose, suffix) in purposes {
            let matched_ms = self.cx.clock.now_ms();
            let mut intent = Intent::id_of(&event, &set.rules[rule].id, false);
            intent.push_str(suffix);
            out.jobs.push(Job {
                purpose,
                ..Job::matched(
                    intent.into(),
                    &loaded,
                    rule,
                    Arc::clone(&event),
                    profile.clone(),
                    matched_ms,
                )
            });
        }
        let candidates = set.candidates(&event.source, &event.fields);
        if candidates.is_empty() {
            return out;
        }
        let mut matched = Vec::new();
        let mut fired = Vec::new();
        {
            for i in candidates {
                let rule = &set.rules[i];
                let sub = match &rule.subscription {
                    None => None,
                    Some(declared) => {
                        match self.subscribed(&loaded, i, declared, profile.as_deref()) {
                            Some(used) => Some(used),
                            None => continue,
                        }
                    }
                };
                let needs = rule.condition.is_some()
                    || rule
                        .pattern
                        .as_ref()
                        .is_some_and(|p| p.key.is_some() || p.has_step_conditions());
                let scope = if needs {
                    Some(&*built.get_or_insert_with(|| {
                        set.conditions.scope(&event.fields, profile.as_deref())
                    }))
                } else {
                    None
                };
                let verdict = set.check_with_sub(
                    i,
                    &event.fields,
                    scope,
                    sub.as_deref().map(|s| &s.parameters),
                );
                if let Verdict::Error(_) = verdict {
                    loaded.condition_errors[i].inc();
                }
                let is_match = verdict == Verdict::Match;
                let Some(pattern) = &rule.pattern else {
                    if is_match {
                        self.count_match(&loaded, i);
                        matched.push((i, sub));
                    }
                    continue;
                };
                let seen = Seen {
                    event: &event,
                    matched: is_match,
                    profile: profile.as_deref(),
                    scope,
                };
                match self.observe_pattern(&loaded, i, pattern, &seen, &mut out.changes) {
                    Ok(done) => {
                        for f in done {
                            self.count_match(&loaded, i);
                            fired.push((i, f, sub.clone()));
                        }
                    }
                    Err(dead_letter) => out.writes.push(dead_letter),
                }
            }
        }
        let matched_ms = self.cx.clock.now_ms();
        out.jobs
            .extend(matched.into_iter().map(|(rule, subscription)| Job {
                subscription,
                ..Job::matched(
                    Intent::id_of(&event, &set.rules[rule].id, false).into(),
                    &loaded,
                    rule,
                    Arc::clone(&event),
                    profile.clone(),
                    matched_ms,
                )
            }));
        out.jobs.extend(
            fired
                .into_iter()
                .map(|(i, f, sub)| self.fired_job(&loaded, i, f, false, sub)),
        );
        out
    }

    /// A subscription rule's values for this user, or `None` when the rule
    /// is skipped for them: not subscribed, or a value of theirs that is not
    /// of its parameter's type (counted, and logged at most once a second
    /// with the parameter and reason, never the value).
    pub(super) fn subscribed(
        &self,
        loaded: &crate::rules::Loaded,
        i: usize,
        declared: &crate::rules::subscription::Subscription,
        profile: Option<&crate::profile::Profile>,
    ) -> Option<Arc<crate::state::intent::SubscriptionUsed>> {
        use crate::rules::subscription::Resolved;
        let rule = &loaded.set.rules[i];
        let skipped = |reason: usize| {
            if let Some(counters) = &loaded.subscription_skips[i] {
                counters[reason].inc();
            }
        };
        let mine = profile.and_then(|p| p.subscriptions.get(&*rule.id));
        match declared.resolve(mine) {
            Resolved::On { values, channels } => {
                Some(Arc::new(crate::state::intent::SubscriptionUsed {
                    parameters: values,
                    channels,
                }))
            }
            Resolved::Off => {
                skipped(0);
                None
            }
            Resolved::Invalid { parameter, reason } => {
                skipped(1);
                if crate::util::once_a_second(&INVALID_SAID) {
                    tracing::warn!(
                        rule = %rule.id,
                        user = %crate::util::fingerprint(profile.map_or("", |p| &p.user_id)),
                        parameter = %parameter,
                        %reason,
                        "subscription skipped for a user: their value cannot be used"
                    );
                }
                None
            }
        }
    }

    /// Counts a match (or a pattern firing) of rule `i`.
    pub(super) fn count_match(&self, loaded: &crate::rules::Loaded, i: usize) {
        loaded.matches[i].inc();
        let at_ms = self.cx.clock.now_ms();
        self.cx.metrics.emit(StageEvent::Matched {
            activity: &loaded.activity[i],
            at_ms,
        });
    }

    /// Whether a pattern timer (absence, dwell) is waiting.
    pub fn has_timers(&self) -> bool {
        self.patterns.has_timers()
    }

    /// Restores the pattern state of source partitions of one topic from its
    /// changelog (a topic without one has nothing to restore).
    pub fn restore(&self, topic: &str, partitions: &[i32]) -> Result<(), RestoreFailed> {
        let Some(changelog) = self.changelogs.get(topic) else {
            return Ok(());
        };
        let started = Instant::now();
        let all = changelog
            .restore_all(partitions, RESTORE_PATIENCE)
            .map_err(|e| RestoreFailed {
                store: "pattern state",
                cause: Box::new(e),
            })?;
        self.write_moved(changelog);
        let loaded = self.cx.rules.current();
        let (records, mut keys, mut unreadable) = (all.read, 0, 0);
        // On disk, nothing comes back into memory: keys are read when needed.
        for (partition, changes) in all.changes {
            let (k, u) = self.patterns.restore_changelog(
                topic,
                partition,
                changes.into_iter().map(|c| (c.key, c.value)).collect(),
                |id| loaded.set.get(id).and_then(|r| r.pattern.clone()),
            );
            keys += k;
            unreadable += u;
        }
        self.cx.metrics.emit(StageEvent::Restored {
            store: "patterns",
            records,
            seconds: started.elapsed().as_secs_f64(),
        });
        info!(
            %topic,
            ?partitions,
            records,
            keys,
            unreadable,
            ms = started.elapsed().as_millis() as u64,
            "pattern state restored"
        );
        Ok(())
    }

    /// Writes again, under its current key, each record a restore read in
    /// clear or under the previous state key, and deletes it under the key
    /// it was read from: the topic keeps no card number in clear, and no
    /// record a rotated key would have to open. Queued before any event of
    /// the partitions is handled, so it comes before their changes.
    fn write_moved(&self, changelog: &Changelog) {
        let moved = changelog.take_moved();
        if moved.is_empty() {
            return;
        }
        info!(topic = %changelog.topic, records = moved.len(), "pattern changelog records written again under their current key (written in clear, or sealed under the previous key)");
        let mut writes = Vec::with_capacity(2 * moved.len());
        for (partition, from, change) in moved {
            writes.extend(changelog.write(partition, &change.key, change.value));
            writes.extend(changelog.write(partition, &from, None));
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(futures::future::join_all(writes));
        }
    }

    /// Forgets a source partition's pattern state: another instance owns it.
    pub fn drop_partition(&self, topic: &str, partition: i32) {
        if let Some(changelog) = self.changelogs.get(topic) {
            changelog.forget(partition);
            drop(self.patterns.take_partition(topic, partition));
        }
    }
}

/// When an unusable subscription value was last logged, epoch s.
static INVALID_SAID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);

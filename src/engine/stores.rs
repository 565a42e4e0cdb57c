//! The stages' state stores in the consumer's rebalances: stage 1's pattern
//! state per source partition and stage 2's send ledger (with the caps it
//! feeds) per intents partition, restored on assign and dropped on revoke;
//! and the ordering of pattern-state changes after the intents they caused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::Pipeline;
use crate::ingest::PartitionStores;
use crate::outcome::Pending;
use crate::patterns::store::{changelog_key, KeyRef};
use crate::state::Changelog;

/// How long a restore waits for a broker that stops answering.
const RESTORE_PATIENCE: Duration = Duration::from_secs(30);

/// A change of stage-1 state, to be written to its changelog.
pub(super) struct StateChange {
    changelog: Arc<Changelog>,
    partition: i32,
    key: String,
    value: Option<Vec<u8>>,
}

impl Pipeline {
    /// The change of (rule, key) now, if its source topic has a changelog.
    pub(super) fn pattern_change(&self, at: &KeyRef, changes: &mut Vec<StateChange>) {
        let Some(changelog) = self.pattern_changelogs.get(&*at.source.0) else {
            return;
        };
        changes.push(StateChange {
            changelog: Arc::clone(changelog),
            partition: at.source.1,
            key: changelog_key(&at.rule, &at.key),
            value: self.patterns.snapshot(&at.rule, &at.key),
        });
    }

    /// Writes `changes` once every write before them is acknowledged: a
    /// window's new count is durable only after the intent it fired is, so
    /// a crash between the two replays the event (its intent, same id, is
    /// recognised by the ledger) instead of losing the firing. The consumer
    /// awaits a lane's writes in order, so one key's changes stay in order.
    pub(super) fn after_writes(writes: &mut Vec<Pending>, changes: Vec<StateChange>) {
        if changes.is_empty() {
            return;
        }
        let before = std::mem::take(writes);
        writes.push(Box::pin(async move {
            futures::future::join_all(before).await;
            let written: Vec<Pending> = changes
                .into_iter()
                .filter_map(|c| c.changelog.write(c.partition, &c.key, c.value))
                .collect();
            futures::future::join_all(written).await;
        }));
    }

    /// Restores the send ledger of intents partitions, and the caps it feeds.
    fn restore_ledger(&self, partitions: &[i32]) -> Result<(), String> {
        let started = Instant::now();
        let restored = self
            .ledger
            .restore(partitions, self.clock.now_ms(), RESTORE_PATIENCE)
            .map_err(|e| e.to_string())?;
        // Forgotten first, so a restore retried after a failure counts once.
        let caps = self.policy.caps();
        let mut seen = std::collections::HashSet::new();
        for e in &restored.sends {
            if seen.insert(&*e.user) {
                caps.forget(&e.user);
            }
            caps.remember(&e.user, &e.category, &e.rule, e.at_ms);
        }
        self.count_restore("ledger", restored.records, started);
        self.metrics.ledger_entries.set(self.ledger.len() as i64);
        info!(
            ?partitions,
            records = restored.records,
            users = restored.users,
            in_flight = restored.in_flight,
            unreadable = restored.unreadable,
            ms = started.elapsed().as_millis() as u64,
            "send ledger restored"
        );
        Ok(())
    }

    /// Restores the pattern state of source partitions of one topic.
    fn restore_patterns(
        &self,
        topic: &str,
        partitions: &[i32],
        changelog: &Changelog,
    ) -> Result<(), String> {
        let started = Instant::now();
        let all = changelog
            .restore_all(partitions, RESTORE_PATIENCE)
            .map_err(|e| e.to_string())?;
        let loaded = self.rules.current();
        let (mut records, mut keys, mut unreadable) = (0, 0, 0);
        for (partition, changes) in all {
            records += changes.len();
            let (k, u) = self.patterns.restore_changelog(
                topic,
                partition,
                changes.into_iter().map(|c| (c.key, c.value)).collect(),
                |id| loaded.set.get(id).and_then(|r| r.pattern.clone()),
            );
            keys += k;
            unreadable += u;
        }
        self.count_restore("patterns", records, started);
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

    fn count_restore(&self, store: &str, records: usize, started: Instant) {
        self.metrics.restores.with_label_values(&[store]).inc();
        self.metrics
            .restored_records
            .with_label_values(&[store])
            .inc_by(records as u64);
        self.metrics
            .restore_seconds
            .with_label_values(&[store])
            .inc_by(started.elapsed().as_secs_f64());
    }
}

impl PartitionStores for Pipeline {
    fn restore(&self, partitions: &[(String, i32)]) -> Result<(), String> {
        let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        for (topic, parts) in by_topic {
            if self.intents_topic.as_deref() == Some(topic) {
                self.restore_ledger(&parts)?;
            } else if let Some(changelog) = self.pattern_changelogs.get(topic) {
                self.restore_patterns(topic, &parts, changelog)?;
            }
        }
        Ok(())
    }

    fn drop_partition(&self, topic: &str, partition: i32) {
        if self.intents_topic.as_deref() == Some(topic) {
            let caps = self.policy.caps();
            for user in self.ledger.drop_partition(partition) {
                caps.forget(&user);
            }
            self.metrics.ledger_entries.set(self.ledger.len() as i64);
        } else if self.pattern_changelogs.contains_key(topic) {
            drop(self.patterns.take_partition(topic, partition));
        }
    }
}

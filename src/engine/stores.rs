//! The stages' state changes on their way to the changelogs, ordered after the intents they caused.

use std::sync::Arc;

use crate::outcome::Pending;
use crate::state::Changelog;

/// A change of stage-1 state, to be written to its changelog.
pub(super) struct StateChange {
    pub changelog: Arc<Changelog>,
    pub partition: i32,
    pub key: String,
    pub value: Option<Vec<u8>>,
    /// Told once the change is on disk (an entry of pattern state kept in
    /// memory until then).
    pub saved: Option<Saved>,
}

/// Whom to tell that a pattern key's change is on disk.
pub(super) struct Saved {
    pub patterns: Arc<crate::patterns::PatternStore>,
    pub rule: String,
    pub key: String,
}

/// Writes `changes` once every write before them is acknowledged: a
/// window's new count is durable only after the intent it fired is, so a
/// crash between the two replays the event (its intent, same id, is
/// recognised by the ledger) instead of losing the firing. The consumer
/// awaits a lane's writes in order, so one key's changes stay in order.
pub(super) fn after_writes(writes: &mut Vec<Pending>, changes: Vec<StateChange>) {
    if changes.is_empty() {
        return;
    }
    let before = std::mem::take(writes);
    writes.push(Box::pin(async move {
        futures::future::join_all(before).await;
        let written = changes.into_iter().map(|c| {
            let write = c.changelog.write(c.partition, &c.key, c.value);
            async move {
                if let Some(write) = write {
                    write.await;
                }
                if let Some(s) = c.saved {
                    s.patterns.saved(&s.rule, &s.key);
                }
            }
        });
        futures::future::join_all(written).await;
    }));
}

//! The stages' state changes on their way to the changelogs, ordered after the intents they caused, one write per key per batch.

use std::collections::hash_map::Entry;
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
    /// memory until then): one per change this write stands for.
    pub saved: Vec<Saved>,
}

/// One record's state changes, left to the end of its batch.
#[derive(Default)]
pub struct StateChanges(pub(super) Vec<StateChange>);

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
                for s in c.saved {
                    s.patterns.saved(&s.rule, &s.key);
                }
            }
        });
        futures::future::join_all(written).await;
    }));
}

/// A batch's changes, in order, with each key's later changes folded into
/// its first place: the key's last value is written once, and it stands for
/// every change before it (each told when it is on disk). The changelog is
/// compacted and restored by key, so no reader needs the values between;
/// this is Kafka Streams' record cache in front of a store, one batch long.
pub(super) fn last_per_key(batch: Vec<StateChanges>) -> Vec<StateChange> {
    let mut out: Vec<StateChange> = Vec::new();
    let mut at: crate::util::FastMap<(*const crate::state::Changelog, i32, String), usize> =
        Default::default();
    for change in batch.into_iter().flat_map(|c| c.0) {
        let place = (
            Arc::as_ptr(&change.changelog),
            change.partition,
            change.key.clone(),
        );
        match at.entry(place) {
            Entry::Occupied(first) => {
                let kept = &mut out[*first.get()];
                kept.value = change.value;
                kept.saved.extend(change.saved);
            }
            Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.push(change);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Changelog;

    fn change(log: &Arc<Changelog>, partition: i32, key: &str, value: &str) -> StateChange {
        StateChange {
            changelog: Arc::clone(log),
            partition,
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            saved: Vec::new(),
        }
    }

    #[test]
    fn a_key_changed_by_several_records_of_a_batch_is_written_once_with_its_last_value() {
        let (declines, freezer) = (
            Arc::new(Changelog::offline()),
            Arc::new(Changelog::offline()),
        );
        let batch = vec![
            StateChanges(vec![change(&declines, 0, "card-1", "1 decline")]),
            StateChanges(vec![
                change(&declines, 0, "card-2", "1 decline"),
                change(&freezer, 0, "card-1", "warm once"),
            ]),
            StateChanges(Vec::new()),
            StateChanges(vec![change(&declines, 0, "card-1", "2 declines")]),
            StateChanges(vec![change(&declines, 1, "card-1", "other partition")]),
            StateChanges(vec![change(&declines, 0, "card-1", "3 declines")]),
        ];
        let written: Vec<(i32, String, String)> = last_per_key(batch)
            .into_iter()
            .map(|c| {
                let value = String::from_utf8(c.value.unwrap()).unwrap();
                (c.partition, c.key, value)
            })
            .collect();
        let expected = [
            (0, "card-1", "3 declines"),
            (0, "card-2", "1 decline"),
            (0, "card-1", "warm once"),
            (1, "card-1", "other partition"),
        ];
        let expected: Vec<(i32, String, String)> = expected
            .iter()
            .map(|(p, k, v)| (*p, k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            written, expected,
            "one write per changelog, partition and key, in first order"
        );
    }
}

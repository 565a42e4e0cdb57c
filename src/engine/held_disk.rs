//! A held message's record on the held topic, and the topic's copy on local disk with its checkpoint: every held message by its key, indexed by its user's intents partition and release time, and by its collapse key.
//!
//! Rows of the sealed table `held`:
//!
//! - `h · the hold key blinded` → `release (8 bytes) · partition (4) ·
//!   the collapse key's length (4) · the collapse key · the record's JSON`;
//! - `r · partition · release · blinded key` (empty): what is due when, per
//!   intents partition, so an instance reads only its own users' messages;
//! - `c · the collapse key blinded` → the hold key: which message holds it.
//!
//! Release times are big-endian with the sign bit flipped (they sort as
//! numbers). The table follows the topic only (the instance's own writes
//! reach it when they are read back), so it is never ahead of Kafka.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::held::{Held, HeldMessage};
use crate::outcome::{Hop, Outcome};
pub use crate::state::intent::EventRecord;
use crate::store::{StoreError, Table, TableBatch};

/// One held message as written to the held topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldRecord {
    pub key: String,
    /// The intent held (its send-ledger key with the channel).
    #[serde(default)]
    pub intent: Option<String>,
    pub release_ms: i64,
    #[serde(default)]
    pub collapse: Option<String>,
    pub rule: String,
    pub event: EventRecord,
    pub chain: Vec<String>,
    #[serde(default)]
    pub hops: Vec<Hop>,
    pub outcome: Outcome,
    #[serde(default)]
    pub unless_heard_of: Option<String>,
    /// What completed the rule's pattern, for templates at release.
    #[serde(default)]
    pub pattern_context: Option<Value>,
    /// A digest: its items (events masked), while its window is open or
    /// while its send waits (quiet hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<super::job::DigestState>,
}

impl HeldRecord {
    /// The record of a held message. Of the event and the pattern's context
    /// it keeps only what the rule's templates read, card numbers masked
    /// (see docs/engineers/topics.md): a message held overnight does not
    /// carry the whole transaction at rest.
    pub fn of(held: &Held<HeldMessage>) -> HeldRecord {
        let m = &held.item;
        let e = &m.job.event;
        let reads = &m.job.rule().reads;
        let mut event = EventRecord::of(e);
        event.fields = reads.event.keep(&e.fields);
        crate::outcome::redact::mask_fields(&mut event.fields);
        let pattern_context = m.job.pattern.as_ref().map(|p| {
            let mut context = match &p.context {
                Value::Object(fields) => Value::Object(reads.pattern.keep(fields)),
                other => other.clone(),
            };
            crate::outcome::redact::mask_json(&mut context);
            context
        });
        HeldRecord {
            key: held.idempotency_key.clone(),
            intent: Some(m.job.intent.to_string()),
            release_ms: held.release_ms,
            collapse: held.collapse.clone(),
            rule: m.job.loaded.set.rules[m.job.rule].id.to_string(),
            event,
            chain: m.chain.clone(),
            hops: m.hops.clone(),
            outcome: m.outcome.clone(),
            unless_heard_of: m.unless_heard_of.clone(),
            pattern_context,
            digest: m.job.digest.as_deref().cloned(),
        }
    }
}

/// The format of the table's rows; a table of another is rebuilt.
pub const FORMAT: u32 = 1;

const HELD: u8 = b'h';
const DUE: u8 = b'r';
const COLLAPSE: u8 = b'c';

/// Held messages on disk.
pub struct HeldTable {
    table: Table,
}

/// A data row's parts: release time, partition, collapse key, record.
fn unpack(stored: &[u8]) -> Option<(i64, i32, &str, &[u8])> {
    let release = i64::from_be_bytes(stored.get(..8)?.try_into().ok()?);
    let partition = i32::from_be_bytes(stored.get(8..12)?.try_into().ok()?);
    let len = u32::from_be_bytes(stored.get(12..16)?.try_into().ok()?) as usize;
    let collapse = std::str::from_utf8(stored.get(16..16 + len)?).ok()?;
    Some((release, partition, collapse, &stored[16 + len..]))
}

fn ordered(at: i64) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

impl HeldTable {
    pub fn new(table: Table) -> HeldTable {
        HeldTable { table }
    }

    /// The table on disk.
    pub fn table(&self) -> &Table {
        &self.table
    }

    fn row(&self, tag: u8, id: &str) -> Vec<u8> {
        let mut row = vec![tag];
        row.extend_from_slice(&self.table.blind(id.as_bytes()));
        row
    }

    fn due_row(partition: i32, release: i64, blind: &[u8]) -> Vec<u8> {
        let mut row = vec![DUE];
        row.extend_from_slice(&partition.to_be_bytes());
        row.extend_from_slice(&ordered(release));
        row.extend_from_slice(blind);
        row
    }

    /// Puts `record` (of a user of intents `partition`) in `batch`, in place
    /// of any older record of its key.
    pub fn put(&self, batch: &mut TableBatch, record: &HeldRecord, partition: i32) {
        let row = self.row(HELD, &record.key);
        let collapse = record.collapse.as_deref().unwrap_or("");
        let due = Self::due_row(partition, record.release_ms, &row[1..]);
        let collapse_row = (!collapse.is_empty()).then(|| self.row(COLLAPSE, collapse));
        // The older record's index rows, unless the new ones are the same
        // rows (a batch must not both delete and put one row).
        for gone in self.index_rows(&record.key, &row) {
            if gone != due && Some(&gone) != collapse_row.as_ref() {
                batch.delete(&gone);
            }
        }
        let json = crate::util::json_bytes(record);
        let mut stored = Vec::with_capacity(16 + collapse.len() + json.len());
        stored.extend_from_slice(&record.release_ms.to_be_bytes());
        stored.extend_from_slice(&partition.to_be_bytes());
        stored.extend_from_slice(&(collapse.len() as u32).to_be_bytes());
        stored.extend_from_slice(collapse.as_bytes());
        stored.extend_from_slice(&json);
        batch.put_marker(&due);
        if let Some(c) = collapse_row {
            batch.put(&c, record.key.as_bytes().to_vec());
        }
        batch.put(&row, stored);
    }

    /// Removes `key`'s record, if there is one, in `batch`.
    pub fn remove(&self, batch: &mut TableBatch, key: &str) {
        let row = self.row(HELD, key);
        for gone in self.index_rows(key, &row) {
            batch.delete(&gone);
        }
        batch.delete(&row);
    }

    /// The index rows of the record on disk under `key` (data row `row`):
    /// its due row, and its collapse row if that still names it. A row that
    /// cannot be read leaves a stale index row at worst, skipped and deleted
    /// when it comes up.
    fn index_rows(&self, key: &str, row: &[u8]) -> Vec<Vec<u8>> {
        let Ok(Some(old)) = self.table.get(row) else {
            return Vec::new();
        };
        let Some((release, partition, collapse, _)) = unpack(&old) else {
            return Vec::new();
        };
        let mut rows = vec![Self::due_row(partition, release, &row[1..])];
        if !collapse.is_empty() && self.holder_key(collapse).as_deref() == Some(key) {
            rows.push(self.row(COLLAPSE, collapse));
        }
        rows
    }

    /// The record held under `key`.
    pub fn get(&self, key: &str) -> Result<Option<HeldRecord>, StoreError> {
        Ok(self.table.get(&self.row(HELD, key))?.and_then(|stored| {
            unpack(&stored).and_then(|(_, _, _, json)| serde_json::from_slice(json).ok())
        }))
    }

    fn holder_key(&self, collapse: &str) -> Option<String> {
        let stored = self.table.get(&self.row(COLLAPSE, collapse)).ok()??;
        String::from_utf8(stored.to_vec()).ok()
    }

    /// The record holding collapse key `collapse`.
    pub fn holder(&self, collapse: &str) -> Result<Option<HeldRecord>, StoreError> {
        match self.holder_key(collapse) {
            Some(key) => self.get(&key),
            None => Ok(None),
        }
    }

    /// Hands every held record on disk to `f`.
    pub fn for_each(&self, mut f: impl FnMut(HeldRecord)) -> Result<(), StoreError> {
        self.table.for_each(&[HELD], |_, stored| {
            let record =
                unpack(&stored).and_then(|(_, _, _, json)| serde_json::from_slice(json).ok());
            if let Some(r) = record {
                f(r);
            }
        })
    }

    /// The records of intents `partition` due after `after` and at or
    /// before `upto`, earliest first, at most `limit`. Stale index rows are
    /// deleted.
    pub fn due(
        &self,
        partition: i32,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<HeldRecord>, StoreError> {
        let from = Self::due_row(partition, after.saturating_add(1), &[]);
        let to = Self::due_row(partition, upto, &[0xFF; 17]);
        let mut out = Vec::new();
        let mut stale = self.table.batch();
        for index in self.table.keys_between(&from, &to, limit)? {
            let mut row = vec![HELD];
            row.extend_from_slice(&index[13..]);
            let stored = self.table.get(&row)?;
            let record = stored
                .as_deref()
                .and_then(unpack)
                .and_then(|(release, p, _, json)| {
                    let fits = p == partition && ordered(release)[..] == index[5..13];
                    fits.then(|| serde_json::from_slice::<HeldRecord>(json).ok())
                        .flatten()
                });
            match record {
                Some(r) => out.push(r),
                None => stale.delete(&index),
            }
        }
        if !stale.is_empty() {
            stale.commit()?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, user: &str, release_ms: i64, collapse: Option<&str>) -> HeldRecord {
        serde_json::from_value(serde_json::json!({
            "key": key, "release_ms": release_ms, "collapse": collapse, "rule": "offer",
            "event": {"source": "tx", "partition": 0, "offset": 1, "user": user, "time_ms": 1,
                      "fields": {"merchant": "Cafe 21"}, "consumed_ms": 1},
            "chain": ["push"],
            "outcome": {"rule": "offer", "rule_version": "v1", "category": "marketing", "user": user,
                        "channel": "push", "status": "held", "idempotency_key": key, "attempts": 0,
                        "source": {"topic": "tx", "partition": 0, "offset": 1},
                        "timings": {"event_ms": 1, "consumed_ms": 1, "matched_ms": 1,
                                    "request_sent_ms": 0, "answered_ms": 0}},
        }))
        .unwrap()
    }

    fn put(held: &HeldTable, r: &HeldRecord, partition: i32) {
        let mut batch = held.table().batch();
        held.put(&mut batch, r, partition);
        batch.commit().unwrap();
    }

    fn keys(records: Vec<HeldRecord>) -> Vec<String> {
        records.into_iter().map(|r| r.key).collect()
    }

    #[test]
    fn due_messages_come_per_partition_in_release_order() {
        let store = crate::store::Store::temporary(8 << 20).unwrap();
        let held = HeldTable::new(store.sealed_table("held", FORMAT).unwrap());
        put(&held, &record("b", "u1", 200, None), 3);
        put(&held, &record("a", "u2", 100, None), 3);
        put(&held, &record("c", "u3", 150, None), 4);
        put(&held, &record("d", "u4", -5, None), 3);
        assert_eq!(keys(held.due(3, i64::MIN, 150, 100).unwrap()), ["d", "a"]);
        assert_eq!(
            keys(held.due(3, i64::MIN, 1_000, 1).unwrap()),
            ["d"],
            "at most the limit"
        );
        assert_eq!(
            keys(held.due(4, i64::MIN, 1_000, 100).unwrap()),
            ["c"],
            "only its partition"
        );
        // Moved later: found at its new time only.
        put(&held, &record("a", "u2", 500, None), 3);
        assert_eq!(keys(held.due(3, i64::MIN, 300, 100).unwrap()), ["d", "b"]);
        assert_eq!(
            keys(held.due(3, 150, 1_000, 100).unwrap()),
            ["b", "a"],
            "only those due after what was read before"
        );
        let mut batch = held.table().batch();
        held.remove(&mut batch, "d");
        batch.commit().unwrap();
        assert_eq!(keys(held.due(3, i64::MIN, 1_000, 100).unwrap()), ["b", "a"]);
        assert!(held.get("d").unwrap().is_none());
        assert_eq!(held.get("a").unwrap().unwrap().release_ms, 500);
    }

    #[test]
    fn a_collapse_key_names_its_newest_holder() {
        let store = crate::store::Store::temporary(8 << 20).unwrap();
        let held = HeldTable::new(store.sealed_table("held", FORMAT).unwrap());
        assert!(held.holder("u1/balance").unwrap().is_none());
        put(&held, &record("a", "u1", 100, Some("u1/balance")), 0);
        assert_eq!(held.holder("u1/balance").unwrap().unwrap().key, "a");
        put(&held, &record("b", "u1", 120, Some("u1/balance")), 0);
        // The replaced one's tombstone does not take the collapse key from
        // its replacement.
        let mut batch = held.table().batch();
        held.remove(&mut batch, "a");
        batch.commit().unwrap();
        assert_eq!(held.holder("u1/balance").unwrap().unwrap().key, "b");
        let mut batch = held.table().batch();
        held.remove(&mut batch, "b");
        batch.commit().unwrap();
        assert!(held.holder("u1/balance").unwrap().is_none());
    }
}

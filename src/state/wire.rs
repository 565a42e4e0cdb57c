//! The binary encoding of records only herald reads (the intents topic, the
//! send ledger's changelog): a schema-version byte, then MessagePack
//! (`rmp-serde`, structs as arrays).
//!
//! Why: an intent in JSON was 613 bytes and took 1.2 µs to write and 3.5 µs
//! to read; in MessagePack it is 377 bytes, 0.8 µs and 2.3 µs (BENCHMARKS.md,
//! issue 26). MessagePack over CBOR (`ciborium`: 494 bytes, slower both
//! ways) and over postcard or bincode (they cannot carry an event's
//! arbitrary JSON fields). Outcome and dead-letter records stay JSON:
//! people and other systems read them.
//!
//! Versions: the first byte says what the record is and how the rest is
//! written: [`INTENT_V2`] (`0x02`: an intent with the subscription values
//! its match used; [`INTENT_V1`], `0x01`, without, is still read),
//! [`INTENT_V3`] (`0x03`: version 2 and `purpose` after it, written only
//! for a digest's withdrawal or an experiment's goal, so an instance of the version before reads
//! every other intent during a rolling upgrade), [`LEDGER_V1`] (`0x21`: kind 2, version
//! 1); `{` is a record written as JSON by herald before this encoding,
//! still read, so an upgrade loses nothing in flight. Any other first byte
//! is refused with a reason naming it (a newer herald's intent is
//! dead-lettered, its ledger entry counted unreadable; never misread). A
//! change to a record's fields takes a new version number, and the reader
//! keeps reading the old one. `herald inspect` prints any of them as JSON.

use serde_json::Value;

use super::intent::Intent;
use super::ledger_entry::LedgerEntry;

/// An intent in MessagePack, its structs as arrays of their fields in
/// declaration order, up to `pattern`.
pub const INTENT_V1: u8 = 0x01;

/// [`INTENT_V1`] and the intent's `subscription` after it.
pub const INTENT_V2: u8 = 0x02;

/// A send-ledger entry in MessagePack, as an array of its fields.
pub const LEDGER_V1: u8 = 0x21;

/// Why a record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the record is empty")]
    Empty,
    #[error(
        "schema version {0:#04x} is not one this herald reads (0x01 to 0x03 intents, 0x21 ledger entries, or JSON): written by a newer herald?"
    )]
    UnknownVersion(u8),
    #[error("version {version} record cannot be read: {detail}")]
    Malformed { version: String, detail: String },
}

/// [`INTENT_V2`] and the intent's `purpose` after it.
pub const INTENT_V3: u8 = 0x03;

/// The bytes of an intent on the intents topic: version 2 (whose array
/// ends before `purpose`) unless it asks for more than a message.
pub fn encode_intent(intent: &Intent) -> Vec<u8> {
    if !intent.purpose.is_message() {
        return encode(INTENT_V3, intent, 384);
    }
    encode(INTENT_V2, &IntentV2(intent), 384)
}

/// An intent written as version 2: every field but `purpose`.
struct IntentV2<'a>(&'a Intent);

impl serde::Serialize for IntentV2<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let i = self.0;
        let mut st = s.serialize_struct("Intent", 7)?;
        st.serialize_field("id", &i.id)?;
        st.serialize_field("rule", &i.rule)?;
        st.serialize_field("rule_version", &i.rule_version)?;
        st.serialize_field("event", &i.event)?;
        st.serialize_field("matched_ms", &i.matched_ms)?;
        st.serialize_field("pattern", &i.pattern)?;
        st.serialize_field("subscription", &i.subscription)?;
        st.end()
    }
}

/// An intent from the intents topic, whichever version wrote it. Version
/// 1's array ends before `subscription`, which then reads as none.
pub fn decode_intent(bytes: &[u8]) -> Result<Intent, WireError> {
    match bytes.first() {
        Some(&INTENT_V1) => decode(INTENT_V1, bytes),
        Some(&INTENT_V3) => decode(INTENT_V3, bytes),
        _ => decode(INTENT_V2, bytes),
    }
}

/// The bytes of a send-ledger entry on its changelog.
pub fn encode_ledger(entry: &LedgerEntry) -> Vec<u8> {
    encode(LEDGER_V1, entry, 96)
}

/// A send-ledger entry from its changelog, whichever version wrote it.
pub fn decode_ledger(bytes: &[u8]) -> Result<LedgerEntry, WireError> {
    decode(LEDGER_V1, bytes)
}

fn encode<T: serde::Serialize>(version: u8, record: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.push(version);
    // Writing to a Vec fails only for a type serde cannot write: never
    // herald's records (their tests round-trip every field).
    rmp_serde::encode::write(&mut out, record).expect("herald's records encode");
    out
}

fn decode<T: serde::de::DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, WireError> {
    match bytes.first() {
        None => Err(WireError::Empty),
        Some(&v) if v == version => {
            rmp_serde::from_slice(&bytes[1..]).map_err(|e| WireError::Malformed {
                version: format!("{v:#04x}"),
                detail: e.to_string(),
            })
        }
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| WireError::Malformed {
            version: "JSON".into(),
            detail: e.to_string(),
        }),
        Some(&other) => Err(WireError::UnknownVersion(other)),
    }
}

/// Any record herald writes, as JSON for people: a versioned record
/// decoded, a JSON record as it is; `None` for neither.
pub fn to_json(bytes: &[u8]) -> Option<Value> {
    match bytes.first() {
        Some(&INTENT_V1 | &INTENT_V2 | &INTENT_V3) => decode_intent(bytes)
            .ok()
            .and_then(|i| serde_json::to_value(i).ok()),
        Some(&LEDGER_V1) => decode_ledger(bytes)
            .ok()
            .and_then(|e| serde_json::to_value(e).ok()),
        _ => serde_json::from_slice(bytes).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::intent::{EventRecord, FiredRecord};
    use serde_json::json;

    fn intent(pattern: bool) -> Intent {
        let fields = json!({"amount": 42.17, "merchant": "Blue Bottle", "tags": ["a", 1, null],
            "nested": {"x": -1, "big": 1795514400000i64}, "ok": true});
        Intent {
            id: "transactions/3/123456/purchase-notice".into(),
            rule: "purchase-notice".into(),
            rule_version: "a1b2c3".into(),
            event: EventRecord {
                source: "transactions".into(),
                partition: 3,
                offset: 123_456,
                key: Some("card-1".into()),
                user: "u-1".into(),
                time_ms: 1_795_514_400_000,
                event_type: None,
                fields: fields.as_object().unwrap().clone(),
                consumed_ms: 1_795_514_400_012,
            },
            matched_ms: 1_795_514_400_013,
            pattern: pattern.then(|| FiredRecord {
                context: json!({"count": 3, "first": {"ts": 1}}),
                summary: json!({"kind": "window", "count": 3}),
            }),
            subscription: pattern.then(|| crate::state::intent::SubscriptionUsed {
                parameters: json!({"threshold": {"amount": 250.0, "currency": "EUR"}})
                    .as_object()
                    .unwrap()
                    .clone(),
                channels: Some(vec!["push".into()]),
            }),
            purpose: crate::state::intent::Purpose::Message,
        }
    }

    #[test]
    fn a_withdrawal_or_a_goal_is_version_3_and_every_message_stays_version_2() {
        let mut i = intent(true);
        assert_eq!(encode_intent(&i)[0], INTENT_V2);
        i.purpose = crate::state::intent::Purpose::Withdraw;
        let bytes = encode_intent(&i);
        assert_eq!(bytes[0], INTENT_V3);
        let back = decode_intent(&bytes).unwrap();
        assert_eq!(back.purpose, crate::state::intent::Purpose::Withdraw);
        assert_eq!(back.subscription, i.subscription);
        i.purpose = crate::state::intent::Purpose::Goal;
        assert_eq!(
            decode_intent(&encode_intent(&i)).unwrap().purpose,
            crate::state::intent::Purpose::Goal
        );
        i.purpose = crate::state::intent::Purpose::Message;
        assert!(decode_intent(&encode_intent(&i))
            .unwrap()
            .purpose
            .is_message());
    }

    #[test]
    fn every_field_survives_and_the_record_is_smaller_than_json() {
        for pattern in [false, true] {
            let i = intent(pattern);
            let bytes = encode_intent(&i);
            assert_eq!(bytes[0], INTENT_V2);
            let back = decode_intent(&bytes).unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&i).unwrap()
            );
            let json = serde_json::to_vec(&i).unwrap();
            assert!(bytes.len() < json.len(), "{} < {}", bytes.len(), json.len());
            assert_eq!(to_json(&bytes), Some(serde_json::to_value(&i).unwrap()));
        }
    }

    #[test]
    fn a_version_1_intent_reads_with_no_subscription() {
        // Version 1 as an older herald wrote it: the same array, one field shorter.
        let i = intent(true);
        let mut v1 = vec![INTENT_V1];
        rmp_serde::encode::write(
            &mut v1,
            &(
                &i.id,
                &i.rule,
                &i.rule_version,
                &i.event,
                i.matched_ms,
                &i.pattern,
            ),
        )
        .unwrap();
        let back = decode_intent(&v1).unwrap();
        assert_eq!(back.id, i.id);
        assert_eq!(back.event.fields, i.event.fields);
        assert!(back.pattern.is_some() && back.subscription.is_none());
        assert_eq!(to_json(&v1).unwrap()["rule"], "purchase-notice");
    }

    #[test]
    fn an_intent_written_as_json_by_an_older_herald_is_read() {
        let i = intent(true);
        let json = serde_json::to_vec(&i).unwrap();
        let back = decode_intent(&json).unwrap();
        assert_eq!(back.id, i.id);
        assert_eq!(back.event.fields, i.event.fields);
    }

    #[test]
    fn an_unknown_version_or_a_broken_record_is_refused_with_its_reason() {
        let mut bytes = encode_intent(&intent(false));
        bytes[0] = 7;
        let e = decode_intent(&bytes).unwrap_err().to_string();
        assert!(e.contains("schema version 0x07"), "{e}");
        let mut cut = encode_intent(&intent(false));
        cut.truncate(cut.len() / 2);
        let e = decode_intent(&cut).unwrap_err().to_string();
        assert!(e.starts_with("version 0x02 record cannot be read"), "{e}");
        assert!(matches!(decode_intent(&[]), Err(WireError::Empty)));
        // A ledger entry is not an intent, and the reverse.
        let entry = ledger_entry("");
        assert!(decode_intent(&encode_ledger(&entry)).is_err());
        assert!(decode_ledger(&encode_intent(&intent(false))).is_err());
    }

    fn ledger_entry(key: &str) -> LedgerEntry {
        LedgerEntry {
            user: "u-1".into(),
            status: crate::state::LedgerStatus::Attempted,
            at_ms: 1_795_514_400_000,
            category: "transactional".into(),
            rule: "purchase-notice".into(),
            idempotency_key: key.into(),
        }
    }

    #[test]
    fn a_ledger_entry_survives_smaller_and_its_json_form_is_still_read() {
        for key in ["", "9c1e0f2a9c1e0f2a9c1e0f2a9c1e0f2a"] {
            let entry = ledger_entry(key);
            let bytes = encode_ledger(&entry);
            assert_eq!(bytes[0], LEDGER_V1);
            assert_eq!(decode_ledger(&bytes).unwrap(), entry);
            let json = serde_json::to_vec(&entry).unwrap();
            assert!(bytes.len() < json.len(), "{} < {}", bytes.len(), json.len());
            assert_eq!(decode_ledger(&json).unwrap(), entry);
            assert_eq!(to_json(&bytes), serde_json::to_value(&entry).ok());
        }
    }
}

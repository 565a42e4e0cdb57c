//! fields: an event's top-level fields as one flat list, found by a short walk.
//!
//! An event is read once and then only looked up: a dozen fields, each asked
//! for by name a few dozen times (rule index, match fields, conditions,
//! templates, patterns). A `serde_json::Map` (a `BTreeMap`) pays for ordered
//! inserts and for stepping its tree on every lookup; here the fields sit in
//! one vector in the order they came, a lookup compares lengths first, and
//! the list is written out in name order, as the map would write it. Nested
//! objects stay `serde_json` values.
//!
//! Field names are interned: a source sends the same dozen names in every
//! event, so each worker thread keeps one shared copy of each name it has
//! read (up to [`MAX_NAMES`], so a stream of made-up names cannot grow it
//! without bound) and an event's names point at those copies instead of
//! each being allocated, copied and freed again.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// The top-level fields of a JSON object. A name given twice keeps its last
/// value, as serde_json's map does.
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(Name, Value)>);

/// A field's name, shared by every event read on this thread that has it.
type Name = Arc<str>;

/// How many names one thread keeps; names past it are allocated per event,
/// as they were before names were shared.
pub const MAX_NAMES: usize = 4096;

/// The names this thread has read, and the names of the last object it read
/// by position: a source writes its fields in the same order event after
/// event, so most names are found by one comparison, without hashing.
#[derive(Default)]
struct Names {
    kept: HashSet<Name, foldhash::fast::RandomState>,
    last: Vec<Name>,
}

/// Positions remembered of the last object read.
const LAST_POSITIONS: usize = 64;

thread_local! {
    static NAMES: RefCell<Names> = RefCell::new(Names::default());
}

/// The shared copy of `name`, the `at`-th field of its object (a new copy,
/// kept while there is room).
fn intern_at(name: &str, at: usize) -> Name {
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some(last) = names.last.get(at) {
            if **last == *name {
                return Arc::clone(last);
            }
        }
        let found = match names.kept.get(name) {
            Some(kept) => Arc::clone(kept),
            None => {
                let made: Name = Arc::from(name);
                if names.kept.len() < MAX_NAMES {
                    names.kept.insert(Arc::clone(&made));
                }
                made
            }
        };
        if at < LAST_POSITIONS {
            names.last.truncate(at);
            names.last.push(Arc::clone(&found));
        }
        found
    })
}

/// The shared copy of `name`.
fn intern(name: &str) -> Name {
    intern_at(name, LAST_POSITIONS)
}

/// Whether two names are the same: length and first byte compared inline
/// (most names differ there), the rest by `memcmp` only when both agree.
#[inline]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.first() == b.first() && a == b
}

impl Fields {
    /// The field called `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let name = name.as_bytes();
        self.0
            .iter()
            .find(|(k, _)| same_name(k.as_bytes(), name))
            .map(|(_, v)| v)
    }

    /// The field called `name`, to change it.
    fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        let name = name.as_bytes();
        self.0
            .iter_mut()
            .find(|(k, _)| same_name(k.as_bytes(), name))
            .map(|(_, v)| v)
    }

    /// Sets a field, replacing the value of one already there.
    fn insert(&mut self, name: Name, value: Value) {
        match self.get_mut(&name) {
            Some(old) => *old = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every field, in the order they came.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// The fields as a `serde_json` map (a copy), for what needs one: a
    /// pattern's context, the cel interpreter.
    pub fn to_map(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|(k, v)| (String::from(&**k), v.clone()))
            .collect()
    }

    /// The fields in name order, as a map writes them.
    fn sorted(&self) -> Vec<&(Name, Value)> {
        let mut sorted: Vec<&(Name, Value)> = self.0.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        sorted
    }
}

impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Fields {
        Fields(map.into_iter().map(|(k, v)| (intern(&k), v)).collect())
    }
}

/// The same fields with the same values, whatever their order.
impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.sorted() {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        match Top::deserialize(deserializer)? {
            Top::Object(fields) => Ok(fields),
            Top::Other => Err(de::Error::custom("expected a JSON object")),
        }
    }
}

/// A JSON text's top value: an object's fields, or anything else (read
/// through, not kept), so a caller can tell "not JSON" from "not an object".
pub enum Top {
    Object(Fields),
    Other,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Top, D::Error> {
        deserializer.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Top, A::Error> {
        let mut fields = Fields(Vec::with_capacity(access.size_hint().unwrap_or(12)));
        let mut at = 0;
        while let Some(name) = access.next_key_seed(NameSeed(at))? {
            let value = access.next_value::<Value>()?;
            fields.insert(name, value);
            at += 1;
        }
        Ok(Top::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Top, A::Error> {
        // Read as values (not skipped), so broken text fails with the
        // words serde_json's own value reader gives.
        while access.next_element::<Value>()?.is_some() {}
        Ok(Top::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Other)
    }
}

/// Reads a field's name (the object's `.0`-th) as its shared copy, without
/// an owned string of its own when the text has no escapes.
struct NameSeed(usize);

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Name;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Name, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Name;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E>(self, name: &str) -> Result<Name, E> {
        Ok(intern_at(name, self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-c]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Two events of one shape share their names, whatever the order of
    /// their fields; a thread that has read more than [`MAX_NAMES`] names
    /// still reads every one right.
    #[test]
    fn names_are_shared_and_many_names_still_read_right() {
        let a: Fields = serde_json::from_str(r#"{"user_id": "u-1", "amount": 5}"#).unwrap();
        let b: Fields = serde_json::from_str(r#"{"amount": 7, "user_id": "u-2"}"#).unwrap();
        let name =
            |f: &Fields, n: &str| Arc::clone(&f.0.iter().find(|(k, _)| &**k == n).unwrap().0);
        assert!(Arc::ptr_eq(&name(&a, "user_id"), &name(&b, "user_id")));
        assert!(Arc::ptr_eq(&name(&a, "amount"), &name(&b, "amount")));
        for i in 0..MAX_NAMES + 50 {
            let text = format!(r#"{{"f{i}": {i}, "g{i}": "x", "f{i}": {}}}"#, i + 1);
            let fields: Fields = serde_json::from_str(&text).unwrap();
            assert_eq!(fields.len(), 2);
            assert_eq!(fields.get(&format!("f{i}")), Some(&Value::from(i + 1)));
            assert_eq!(fields.get(&format!("g{i}")), Some(&Value::from("x")));
        }
        let kept = NAMES.with(|n| n.borrow().kept.len());
        assert_eq!(kept, MAX_NAMES);
    }

    proptest! {
        /// Read from the same text, the fields are serde_json's map, field
        /// for field (repeated names included), and written back they are
        /// the map's text.
        #[test]
        fn read_and_written_as_serde_json_reads_and_writes_a_map(
            pairs in prop::collection::vec(("[a-e]{1,2}", json_value()), 0..8)
        ) {
            let body: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}: {v}", Value::from(k.as_str())))
                .collect();
            let text = format!("{{{}}}", body.join(", "));
            let map: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let fields: Fields = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(fields.len(), map.len());
            for (k, v) in &map {
                prop_assert_eq!(fields.get(k), Some(v));
            }
            prop_assert_eq!(fields.get("zz"), None);
            prop_assert_eq!(&fields.to_map(), &map);
            prop_assert_eq!(serde_json::to_string(&fields).unwrap(), serde_json::to_string(&map).unwrap());
        }

        /// Any other value is read through and told apart; broken text is
        /// refused as serde_json refuses it.
        #[test]
        fn other_values_and_broken_text_are_told_apart(value in json_value(), cut in 0usize..40) {
            let text = value.to_string();
            let top = serde_json::from_str::<Top>(&text).unwrap();
            prop_assert_eq!(matches!(top, Top::Object(_)), value.is_object());
            let broken = &text[..cut.min(text.len())];
            let ours = serde_json::from_str::<Top>(broken).err().map(|e| e.to_string());
            let theirs = serde_json::from_str::<Value>(broken).err().map(|e| e.to_string());
            prop_assert_eq!(ours, theirs);
        }
    }
}

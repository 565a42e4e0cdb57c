//! fields: an event's top-level fields as one flat list, found by a short walk.
//!
//! An event is read once and then only looked up: a dozen fields, each asked
//! for by name a few dozen times (rule index, match fields, conditions,
//! templates, patterns). A `serde_json::Map` (a `BTreeMap`) pays for ordered
//! inserts and for stepping its tree on every lookup; here the fields sit in
//! one vector in the order they came, a lookup compares lengths first, and
//! the list is written out in name order, as the map would write it. Nested
//! objects stay `serde_json` values.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// The top-level fields of a JSON object. A name given twice keeps its last
/// value, as serde_json's map does.
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(String, Value)>);

impl Fields {
    /// The field called `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let name = name.as_bytes();
        self.0
            .iter()
            .find(|(k, _)| k.len() == name.len() && k.as_bytes() == name)
            .map(|(_, v)| v)
    }

    /// The field called `name`, to change it.
    fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.0
            .iter_mut()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
    }

    /// Sets a field, replacing the value of one already there.
    pub fn insert(&mut self, name: String, value: Value) {
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
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The fields as a `serde_json` map (a copy), for what needs one: a
    /// pattern's context, the cel interpreter.
    pub fn to_map(&self) -> Map<String, Value> {
        self.0.iter().cloned().collect()
    }

    /// The fields in name order, as a map writes them.
    fn sorted(&self) -> Vec<&(String, Value)> {
        let mut sorted: Vec<&(String, Value)> = self.0.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        sorted
    }
}

impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Fields {
        Fields(map.into_iter().collect())
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
            map.serialize_entry(k, v)?;
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
        while let Some(name) = access.next_key::<String>()? {
            let value = access.next_value::<Value>()?;
            fields.insert(name, value);
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

//! What a rule's templates read of `event` and `pattern`, as dotted paths, so
//! a message kept at rest (the held topic) keeps only those fields.
//!
//! `{{ event.merchant }}` reads `event.merchant`; `{% for e in pattern.events %}`
//! reads `pattern.events` whole; `event[name]` or `{% for k in event %}` reads
//! `event` whole, and then every field is kept.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Templates;
use crate::ingest::decode::Object;

/// A tree of the paths read below one root; an empty tree where a path ends
/// means "all of it".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reads(BTreeMap<String, Reads>);

impl Reads {
    /// What the named templates read below `root` (`event`, `pattern`).
    pub fn of(templates: &Templates, names: &[String], root: &str) -> Reads {
        let mut reads = Reads::default();
        for name in names {
            let Ok(template) = templates.env.get_template(name) else {
                continue;
            };
            for path in template.undeclared_variables(true) {
                let mut parts = path.split('.');
                if parts.next() == Some(root) {
                    reads.add(&parts.collect::<Vec<_>>());
                }
            }
        }
        reads
    }

    /// The top-level fields read below the root (none when it is read whole).
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.0.keys().filter(|k| k.as_str() != WHOLE).cloned()
    }

    /// Whether everything is read (the root itself was read whole).
    pub fn keeps_everything(&self) -> bool {
        self.0.contains_key(WHOLE)
    }

    fn add(&mut self, path: &[&str]) {
        if self.keeps_everything() {
            return;
        }
        match path.split_first() {
            None => *self = Reads(BTreeMap::from([(WHOLE.to_string(), Reads::default())])),
            Some((first, rest)) => self.0.entry((*first).to_string()).or_default().add(rest),
        }
    }

    /// `fields` with only what is read.
    pub fn keep<O: Object + ?Sized>(&self, fields: &O) -> Map<String, Value> {
        if self.keeps_everything() {
            return fields.to_map();
        }
        self.0
            .iter()
            .filter_map(|(name, below)| {
                let kept = match fields.field(name)? {
                    Value::Object(inner) => Value::Object(below.keep(inner)),
                    other => other.clone(),
                };
                Some((name.clone(), kept))
            })
            .collect()
    }
}

/// Marks a path read to its end (a key no JSON field can have).
const WHOLE: &str = "\u{0}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fields_templates_read_are_kept() {
        let mut t = Templates::new();
        t.add(
            "r/body".into(),
            "{{ event.amount | money(event.currency) }} at {{ event.merchant.name }} {% for e in pattern.events %}{{ e.x }}{% endfor %}".into(),
        )
        .unwrap();
        t.add("r/text".into(), "{{ event.merchant }}".into())
            .unwrap();
        let names = ["r/body".to_string(), "r/text".to_string()];
        let event = Reads::of(&t, &names, "event");
        let fields = serde_json::json!({
            "amount": 12.5, "currency": "EUR", "pan": "4111111111111111",
            "merchant": {"name": "Cafe", "mcc": "5812"}
        });
        let kept = event.keep(fields.as_object().unwrap());
        assert_eq!(
            Value::Object(kept),
            serde_json::json!({"amount": 12.5, "currency": "EUR",
                               "merchant": {"name": "Cafe", "mcc": "5812"}}),
            "merchant is read whole by the text template; pan by none"
        );
        let pattern = Reads::of(&t, &names[..1], "pattern");
        let context =
            serde_json::json!({"count": 3, "events": [{"x": 1, "pan": "p"}], "first": {}});
        assert_eq!(
            Value::Object(pattern.keep(context.as_object().unwrap())),
            serde_json::json!({"events": [{"x": 1, "pan": "p"}]})
        );
        let mut whole = Templates::new();
        whole
            .add(
                "w/body".into(),
                "{% for k in event %}{{ k }}{% endfor %}".into(),
            )
            .unwrap();
        assert!(Reads::of(&whole, &["w/body".into()], "event").keeps_everything());
        assert_eq!(
            Reads::of(&t, &names, "profile"),
            Reads::default(),
            "nothing read"
        );
    }
}

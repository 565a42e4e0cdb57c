//! The compiled, immutable rule set and its index; swapped whole on reload.
//!
//! Matching an event: the index picks candidate rules by source topic and by
//! exact-match fields (`match:`), then each candidate's remaining match fields
//! and CEL condition are checked. Rules that match are returned in file order.

use crate::util::FastMap;
use serde_json::Value;

use super::compile::Rule;
use super::model::Scalar;
use crate::expr::condition::{Conditions, EvalError, Scope};
use crate::ingest::decode::{lookup, Object};
use crate::render::Templates;

/// One loaded file, for `rules check` and `GET /rules`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileSummary {
    pub path: String,
    pub rules: usize,
    pub enabled: usize,
}

/// All rules of one load, with their index, templates and condition environment.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub templates: Templates,
    pub conditions: Conditions,
    pub files: Vec<FileSummary>,
    index: FastMap<String, SourceIndex>,
    /// The enabled rules whose digest a later event can withdraw items from.
    withdrawing: Vec<usize>,
    /// The enabled rules whose experiment has a goal.
    with_goals: Vec<usize>,
}

/// Per source topic: rules with no `match:` (always candidates), and rules
/// indexed under the value of their first match field.
#[derive(Default)]
struct SourceIndex {
    always: Vec<usize>,
    by_field: Vec<(String, FastMap<String, Vec<usize>>)>,
    /// The most candidates one event can have: `always` and the longest
    /// list of each field. An event's list is made this long at once (up to
    /// [`ROOM`]: a set of thousands of rules grows it only when it must).
    most: usize,
}

/// The most room an event's list of candidates is given before it is filled.
const ROOM: usize = 64;

/// The outcome of checking one candidate rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// The condition could not be evaluated for this event.
    Error(EvalError),
}

impl RuleSet {
    /// Builds the index over compiled rules; disabled rules are left out of it.
    pub fn new(
        rules: Vec<Rule>,
        templates: Templates,
        conditions: Conditions,
        files: Vec<FileSummary>,
    ) -> RuleSet {
        let mut index: FastMap<String, SourceIndex> = FastMap::default();
        for (i, rule) in rules.iter().enumerate() {
            if !rule.enabled {
                continue;
            }
            let sees_all = rule.pattern.as_ref().is_some_and(|p| p.sees_all_events());
            for source in &rule.sources {
                let entry = index.entry(source.clone()).or_default();
                match rule.match_fields.first().filter(|_| !sees_all) {
                    None => entry.always.push(i),
                    Some((field, value)) => {
                        let slot = match entry.by_field.iter().position(|(f, _)| f == field) {
                            Some(p) => p,
                            None => {
                                entry.by_field.push((field.clone(), FastMap::default()));
                                entry.by_field.len() - 1
                            }
                        };
                        entry.by_field[slot]
                            .1
                            .entry(value.index_key())
                            .or_default()
                            .push(i);
                    }
                }
            }
        }
        for entry in index.values_mut() {
            let widest = |values: &FastMap<String, Vec<usize>>| values.values().map(Vec::len).max();
            entry.most = entry.always.len()
                + entry
                    .by_field
                    .iter()
                    .filter_map(|(_, values)| widest(values))
                    .sum::<usize>();
        }
        let withdrawing = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.enabled && r.digest.as_ref().is_some_and(|d| d.withdraw.is_some()))
            .map(|(i, _)| i)
            .collect();
        let with_goals = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.enabled && r.experiment.as_ref().is_some_and(|e| e.goal.is_some()))
            .map(|(i, _)| i)
            .collect();
        RuleSet {
            rules,
            templates,
            conditions,
            files,
            index,
            withdrawing,
            with_goals,
        }
    }

    /// An empty rule set (before the first load).
    pub fn empty() -> RuleSet {
        RuleSet::new(
            Vec::new(),
            Templates::new(),
            Conditions::default(),
            Vec::new(),
        )
    }

    /// The rules whose digest this event of `source` may withdraw items
    /// from: its `withdraw.sources` and `match` (the condition, which reads
    /// the waiting items, runs in stage 2).
    pub fn withdrawals<'a, O: Object + ?Sized>(
        &'a self,
        source: &'a str,
        fields: &'a O,
    ) -> impl Iterator<Item = usize> + 'a {
        self.later_events(&self.withdrawing, source, fields, |r| {
            let w = r.digest.as_ref()?.withdraw.as_ref()?;
            Some((&w.sources, &w.match_fields))
        })
    }

    /// The rules whose experiment goal this event of `source` may meet: its
    /// goal's `sources` and `match` (the caller evaluates the condition).
    pub fn goals<'a, O: Object + ?Sized>(
        &'a self,
        source: &'a str,
        fields: &'a O,
    ) -> impl Iterator<Item = usize> + 'a {
        self.later_events(&self.with_goals, source, fields, |r| {
            let g = r.experiment.as_ref()?.goal.as_ref()?;
            Some((&g.sources, &g.match_fields))
        })
    }

    /// Of `rules`, those whose later-event filter (`filter`: its sources and
    /// exact fields) this event of `source` passes.
    fn later_events<'a, O: Object + ?Sized>(
        &'a self,
        rules: &'a [usize],
        source: &'a str,
        fields: &'a O,
        filter: impl Fn(&'a Rule) -> Option<(&'a Vec<String>, &'a Vec<(String, Scalar)>)> + 'a,
    ) -> impl Iterator<Item = usize> + 'a {
        rules.iter().copied().filter(move |&i| {
            let Some((sources, match_fields)) = filter(&self.rules[i]) else {
                return false;
            };
            sources.iter().any(|s| s == source)
                && match_fields.iter().all(|(field, expected)| {
                    lookup(fields, field).is_some_and(|v| scalar_eq(expected, v))
                })
        })
    }

    /// Candidate rules for an event of `source`, in file order, without duplicates.
    pub fn candidates<O: Object + ?Sized>(&self, source: &str, fields: &O) -> Vec<usize> {
        let Some(index) = self.index.get(source) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(index.most.min(ROOM));
        out.extend_from_slice(&index.always);
        for (field, by_value) in &index.by_field {
            if let Some(key) = lookup(fields, field).and_then(index_key) {
                if let Some(rules) = by_value.get(&*key) {
                    out.extend_from_slice(rules);
                }
            }
        }
        if !index.by_field.is_empty() {
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    /// Checks one candidate: all its match fields, then its condition. The
    /// scope is needed only for a rule with a condition (a [`Scope`] is costly to build, so callers make one only when needed).
    pub fn check<O: Object + ?Sized>(
        &self,
        rule: usize,
        fields: &O,
        scope: Option<&Scope>,
    ) -> Verdict {
        self.check_with_sub(rule, fields, scope, None)
    }

    /// [`Self::check`] for a subscription rule: `sub` is the user's parameters.
    pub fn check_with_sub<O: Object + ?Sized>(
        &self,
        rule: usize,
        fields: &O,
        scope: Option<&Scope>,
        sub: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Verdict {
        let rule = &self.rules[rule];
        for (field, expected) in &rule.match_fields {
            if !lookup(fields, field).is_some_and(|v| scalar_eq(expected, v)) {
                return Verdict::NoMatch;
            }
        }
        match (&rule.condition, scope) {
            (None, _) => Verdict::Match,
            (Some(condition), Some(scope)) => {
                match self.conditions.eval_with_sub(condition, scope, sub) {
                    Ok(true) => Verdict::Match,
                    Ok(false) => Verdict::NoMatch,
                    Err(e) => Verdict::Error(e),
                }
            }
            (Some(_), None) => Verdict::Error(EvalError::Failed),
        }
    }

    /// Finds a rule by id.
    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.id == id)
    }

    /// The index of the rule with this id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|r| &*r.id == id)
    }
}

/// A field's value as the index keys it (a string as it is, borrowed).
fn index_key(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(b.to_string().into()),
        _ => None,
    }
}

fn scalar_eq(expected: &Scalar, v: &Value) -> bool {
    match (expected, v) {
        (Scalar::Text(a), Value::String(b)) => a == b,
        (Scalar::Bool(a), Value::Bool(b)) => a == b,
        (Scalar::Int(a), Value::Number(n)) => {
            n.as_i64() == Some(*a) || n.as_f64() == Some(*a as f64)
        }
        (Scalar::Float(a), Value::Number(n)) => n.as_f64() == Some(*a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use crate::rules::compile::Known;
    use crate::rules::load::load_texts;

    const FILE: &str = r#"
rules:
  - id: every-swipe
    sources: [transactions]
    channels: [push]
    category: transactional
    template: { body: "{{ event.amount }}" }
  - id: declined
    sources: [transactions]
    match: { status: declined }
    channels: [push]
    category: fraud
    template: { body: "declined" }
  - id: big-declined
    sources: [transactions]
    match: { status: declined }
    condition: event.amount >= 500.0
    channels: [sms]
    category: fraud
    template: { text: "big" }
  - id: off
    enabled: false
    sources: [transactions]
    channels: [push]
    category: fraud
    template: { body: "x" }
"#;

    fn set() -> super::RuleSet {
        let known = Known {
            channels: None,
            sources: None,
            default_locale: None,
        };
        load_texts(&[(PathBuf::from("rules/a.yaml"), FILE.to_string())], &known).unwrap()
    }

    fn matching(set: &super::RuleSet, event: serde_json::Value) -> Vec<&str> {
        let fields = event.as_object().unwrap();
        let scope = set.conditions.scope(fields, None);
        set.candidates("transactions", fields)
            .into_iter()
            .filter(|&i| set.check(i, fields, Some(&scope)) == super::Verdict::Match)
            .map(|i| &*set.rules[i].id)
            .collect()
    }

    #[test]
    fn index_picks_candidates_and_conditions_decide() {
        let set = set();
        assert_eq!(
            matching(&set, json!({"status": "approved", "amount": 10.0})),
            vec!["every-swipe"]
        );
        assert_eq!(
            matching(&set, json!({"status": "declined", "amount": 10.0})),
            vec!["every-swipe", "declined"]
        );
        assert_eq!(
            matching(&set, json!({"status": "declined", "amount": 900.0})),
            vec!["every-swipe", "declined", "big-declined"]
        );
        assert!(set
            .candidates("sensors", json!({}).as_object().unwrap())
            .is_empty());
    }
}

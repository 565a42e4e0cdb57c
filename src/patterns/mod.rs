//! patterns: context over time — sliding windows, runs of consecutive events,
//! sequences, absences, threshold crossings and geofences — per rule and key.
//!
//! [`spec`] is what analysts write; [`compile`] checks it at load with file
//! positions; each kind is a module of [`kinds`] implementing
//! [`detect::Detector`], registered in the `kinds!` list below; [`store`]
//! holds the state of every (rule, key), bounded, with expiry, timers for
//! absences and dwell, and a per-partition snapshot interface.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::expr::condition::{Condition, Conditions};
use crate::expr::Scalar;
use crate::ingest::decode::Event;

pub mod detect;
pub mod geofence;
/// The pattern kinds, one module each, each a [`detect::Detector`],
/// registered in the `kinds!` list below.
pub mod kinds {
    pub mod absence;
    pub mod consecutive;
    pub mod crossing;
    pub mod geofence;
    pub mod sequence;
    pub mod window;
}
pub mod on_disk;
pub mod spec;
pub mod store;
pub mod window;

#[cfg(test)]
mod tests;

pub use spec::{FenceEvent, LateAction, PatternSpec};
pub use store::PatternStore;

/// A compiled pattern of one rule.
pub struct Pattern {
    pub kind: Kind,
    /// CEL expression giving the key; `None`: the source's state key.
    pub key: Option<Condition>,
    pub lateness_ms: i64,
    pub late: LateAction,
    /// Changes when anything that decides what the pattern counts changes;
    /// a reload keeps the state of rules whose fingerprint is the same.
    pub fingerprint: String,
}

detect::kinds! {
    /// Count, sum or distinct count within a sliding window.
    Window(kinds::window::WindowKind),
    /// N matching events in a row.
    Consecutive(kinds::consecutive::ConsecutiveKind),
    /// Named steps in order within a time.
    Sequence(kinds::sequence::SequenceKind),
    /// A and no B within a time.
    Absence(kinds::absence::AbsenceKind),
    /// A value crossing a threshold.
    Crossing(kinds::crossing::CrossingKind),
    /// Entering, leaving or dwelling in a fence.
    Geofence(kinds::geofence::GeofenceKind),
}

/// A geofence watched by a pattern or a step.
pub struct Geo {
    pub fences: Arc<geofence::Fences>,
    /// Only this fence id, if set.
    pub fence: Option<String>,
    pub on: FenceEvent,
    pub tolerance: geofence::Tolerance,
    pub lat: String,
    pub lon: String,
    pub accuracy: String,
}

/// One step of a sequence or absence.
pub struct Step {
    pub name: String,
    pub sources: Option<Vec<String>>,
    pub match_fields: Vec<(String, Scalar)>,
    pub condition: Option<Condition>,
    pub geofence: Option<Geo>,
}

impl Pattern {
    /// Whether the rule must see every event of its sources (not only the
    /// ones its `match` selects): runs are broken by non-matching events, and
    /// steps carry their own match.
    pub fn sees_all_events(&self) -> bool {
        self.kind.sees_all_events()
    }

    /// Whether its steps have conditions (so the event's condition scope is needed).
    pub fn has_step_conditions(&self) -> bool {
        self.kind.has_step_conditions()
    }

    /// The kind's name, for outcomes and `/rules`.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

/// A pattern that completed: the event the message is about and what
/// templates (as `pattern`) and the outcome record see.
#[derive(Debug, Clone)]
pub struct Fired {
    pub event: Arc<Event>,
    /// For templates: counts, sums, the first and last events, named steps.
    pub context: Value,
    /// For the outcome record: the same without event fields (no personal data).
    pub summary: Value,
}

/// A problem in a pattern spec, at its position in the rule file.
pub type Problem = (serde_saphyr::Location, String);

/// Compiles a rule's pattern. `dir` is the rule file's folder (geofence files
/// are relative to it); `rule_sources` are the rule's sources. Problems are
/// returned with their YAML location.
pub fn compile(
    spec: &PatternSpec,
    key: Option<&serde_saphyr::Spanned<String>>,
    rule_sources: &[String],
    dir: &Path,
    conditions: &Conditions,
    at_rule: serde_saphyr::Location,
) -> Result<Pattern, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut canonical = String::new();
    let kinds = [
        spec.window.is_some(),
        spec.consecutive.is_some(),
        spec.sequence.is_some(),
        spec.absence.is_some(),
        spec.crossing.is_some(),
        spec.geofence.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        problems.push((
            at_rule,
            "pattern needs exactly one of window, consecutive, sequence, absence, crossing, geofence".into(),
        ));
        return Err(problems);
    }
    let cond = |c: &Option<serde_saphyr::Spanned<String>>, problems: &mut Vec<Problem>| {
        c.as_ref().and_then(|c| match conditions.compile(&c.value) {
            Ok(compiled) => Some(compiled),
            Err(e) => {
                problems.push((c.referenced, format!("condition: {}", e.message)));
                None
            }
        })
    };
    let geo = |g: &spec::GeofenceSpec, problems: &mut Vec<Problem>, canonical: &mut String| {
        let path = dir.join(&g.file.value);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push((
                    g.file.referenced,
                    format!("geofence file `{}`: {e}", path.display()),
                ));
                return None;
            }
        };
        let fences = match geofence::Fences::parse(&text, g.hysteresis_m) {
            Ok(f) => f,
            Err(e) => {
                problems.push((
                    g.file.referenced,
                    format!("geofence file `{}`: {e}", g.file.value),
                ));
                return None;
            }
        };
        if let Some(id) = &g.fence {
            if !(0..fences.len()).any(|i| &fences.get(i).id == id) {
                problems.push((
                    g.file.referenced,
                    format!("geofence file `{}` has no fence `{id}`", g.file.value),
                ));
            }
        }
        if g.on == FenceEvent::Dwell && g.dwell.is_none() {
            problems.push((
                g.file.referenced,
                "geofence `on: dwell` needs `dwell: 10m`".into(),
            ));
        }
        canonical.push_str(&format!(
            "geo {:x} {:?} {:?} {:?} {} {} {} {} {}|",
            Sha256::digest(text.as_bytes()),
            g.fence,
            g.on,
            g.dwell,
            g.lat,
            g.lon,
            g.accuracy,
            g.max_accuracy_m,
            g.hysteresis_m
        ));
        Some(Geo {
            fences: Arc::new(fences),
            fence: g.fence.clone(),
            on: g.on,
            tolerance: geofence::Tolerance {
                max_accuracy_m: g.max_accuracy_m,
                hysteresis_m: g.hysteresis_m,
                dwell_ms: g.dwell.map(|d| d.ms()),
            },
            lat: g.lat.clone(),
            lon: g.lon.clone(),
            accuracy: g.accuracy.clone(),
        })
    };
    let step = |s: &spec::StepSpec, problems: &mut Vec<Problem>, canonical: &mut String| {
        if let Some(sources) = &s.sources {
            for source in sources {
                if !rule_sources.contains(source) {
                    problems.push((
                        s.name.referenced,
                        format!(
                            "step `{}`: source `{source}` is not one of the rule's sources",
                            s.name.value
                        ),
                    ));
                }
            }
        }
        canonical.push_str(&format!(
            "step {} {:?} {:?} {:?}|",
            s.name.value,
            s.sources,
            s.match_fields,
            s.condition.as_ref().map(|c| &c.value)
        ));
        Step {
            name: s.name.value.clone(),
            sources: s.sources.clone(),
            match_fields: s.match_fields.clone().into_iter().collect(),
            condition: cond(&s.condition, problems),
            geofence: s.geofence.as_ref().and_then(|g| {
                if g.on == FenceEvent::Dwell {
                    problems.push((
                        g.file.referenced,
                        "a step can watch `enter` or `exit`; use a geofence pattern for dwell"
                            .into(),
                    ));
                }
                geo(g, problems, canonical)
            }),
        }
    };
    let kind = if let Some(w) = &spec.window {
        let within_ms = w.within.value.ms();
        canonical.push_str(&format!(
            "window {:?} {:?} {:?} {:?} {:?} {within_ms}|",
            w.count, w.sum, w.distinct, w.at_least, w.within.value
        ));
        let (measure, field, threshold) = match (&w.count, &w.sum, &w.distinct, w.at_least) {
            (Some(n), None, None, None) if *n > 0 => (window::Measure::Count, None, f64::from(*n)),
            (None, Some(f), None, Some(t)) => (window::Measure::Sum, Some(f.clone()), t),
            (None, None, Some(f), Some(t)) => (window::Measure::Distinct, Some(f.clone()), t),
            _ => {
                problems.push((
                    w.within.referenced,
                    "window needs `count: N` (N > 0), or `sum: <field>` or `distinct: <field>` with `at_least: <value>`".into(),
                ));
                (window::Measure::Count, None, 1.0)
            }
        };
        Kind::Window(kinds::window::WindowKind {
            measure,
            field,
            threshold,
            within_ms,
        })
    } else if let Some(n) = &spec.consecutive {
        if n.value < 2 {
            problems.push((
                n.referenced,
                "consecutive needs at least 2 (one event is not a run)".into(),
            ));
        }
        canonical.push_str(&format!("consecutive {}|", n.value));
        Kind::Consecutive(kinds::consecutive::ConsecutiveKind { count: n.value })
    } else if let Some(s) = &spec.sequence {
        if s.steps.value.len() < 2 {
            problems.push((
                s.steps.referenced,
                "sequence needs at least two steps".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for st in &s.steps.value {
            if !names.insert(&st.name.value) {
                problems.push((
                    st.name.referenced,
                    format!("step name `{}` is used twice", st.name.value),
                ));
            }
        }
        canonical.push_str(&format!("sequence {}|", s.within.value.ms()));
        let steps = s
            .steps
            .value
            .iter()
            .map(|st| step(st, &mut problems, &mut canonical))
            .collect();
        Kind::Sequence(kinds::sequence::SequenceKind::new(
            steps,
            s.within.value.ms(),
        ))
    } else if let Some(a) = &spec.absence {
        canonical.push_str(&format!("absence {}|", a.within.value.ms()));
        let after = step(&a.after, &mut problems, &mut canonical);
        let missing = step(&a.missing, &mut problems, &mut canonical);
        Kind::Absence(kinds::absence::AbsenceKind {
            after: Box::new(after),
            missing: Box::new(missing),
            within_ms: a.within.value.ms(),
        })
    } else if let Some(c) = &spec.crossing {
        canonical.push_str(&format!(
            "crossing {} {:?} {:?} {:?}|",
            c.value, c.below, c.above, c.rearm
        ));
        let (below, threshold) = match (c.below, c.above) {
            (Some(t), None) => (true, t),
            (None, Some(t)) => (false, t),
            _ => {
                problems.push((
                    at_rule,
                    "crossing needs exactly one of `below: <value>` or `above: <value>`".into(),
                ));
                (true, 0.0)
            }
        };
        let rearm = c.rearm.unwrap_or(0.0);
        if rearm < 0.0 {
            problems.push((at_rule, "crossing `rearm` must not be negative".into()));
        }
        Kind::Crossing(kinds::crossing::CrossingKind {
            field: c.value.clone(),
            below,
            threshold,
            rearm,
        })
    } else {
        let g = spec.geofence.as_ref().expect("one kind is set");
        match geo(g, &mut problems, &mut canonical) {
            Some(g) => Kind::Geofence(kinds::geofence::GeofenceKind(g)),
            None => return Err(problems),
        }
    };
    let key = key.and_then(|k| {
        canonical.push_str(&format!("key {}|", k.value));
        match conditions.compile(&k.value) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push((k.referenced, format!("key: {}", e.message)));
                None
            }
        }
    });
    let lateness_ms = spec.lateness.map_or(60_000, |l| l.ms());
    canonical.push_str(&format!("late {lateness_ms} {:?}", spec.late));
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Pattern {
        kind,
        key,
        lateness_ms,
        late: spec.late,
        fingerprint: hex::encode(&Sha256::digest(canonical.as_bytes())[..8]),
    })
}

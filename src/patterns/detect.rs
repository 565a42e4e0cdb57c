//! What every pattern kind shares: the event it is offered, what it reports, the [`Detector`] contract each kind's module (`kinds/`) implements, the one macro that registers them, and the steps and firings several kinds use.
//!
//! A kind's module implements every method of [`Detector`] (none has a
//! default), and one line in `patterns/mod.rs`'s `kinds!` list registers it:
//! the per-kind dispatch below is generated from that list, with no `_ =>`
//! arm, so a kind that forgets its timers or its expiry does not compile.

use std::sync::Arc;

use serde_json::{json, Value};

use super::geofence::{Crossing, Presence};
use super::{Fired, Geo, Step};
use crate::expr::condition::{Conditions, Scope};
use crate::expr::Scalar;
use crate::ingest::decode::{lookup, Event};
use crate::ingest::fields::Fields;
use crate::profile::Profile;

/// What observing one event did.
#[derive(Debug, Default)]
pub struct Observed {
    pub fired: Vec<Fired>,
    /// A deadline (event time, ms) at which the kind's `expire` must run for
    /// this key.
    pub timer: Option<i64>,
    /// Set by the store, not the kind: the key's state differs from what its
    /// changelog last had (an event that changed nothing writes no record).
    pub changed: bool,
}

/// What one event offers a pattern.
pub struct Input<'a> {
    pub event: &'a Arc<Event>,
    /// The event is of the rule's `match` and `condition` (the rule's own filter).
    pub matched: bool,
    pub profile: Option<&'a Profile>,
    pub conditions: &'a Conditions,
    /// The event's condition scope, when the caller built one (else built here if a step needs it).
    pub scope: Option<&'a Scope<'a>>,
}

/// One pattern kind: its compiled settings, and what it does to the state
/// of one (rule, key).
pub trait Detector {
    /// The state of one key. It is written to the changelog as
    /// `{"<Kind>": <state>}`: changing its shape needs a new name.
    type State: std::fmt::Debug + Clone + serde::Serialize + serde::de::DeserializeOwned;

    /// The kind's name, for outcomes and `/rules`.
    const NAME: &'static str;

    /// Whether the rule must see every event of its sources (not only the
    /// ones its `match` selects): runs are broken by non-matching events,
    /// and steps carry their own match.
    fn sees_all_events(&self) -> bool;

    /// Whether its steps have conditions (so the event's scope is needed).
    fn has_step_conditions(&self) -> bool;

    /// How long (event time, before lateness) an untouched key can still
    /// complete the pattern; `None`: until its state is idle.
    fn horizon_ms(&self) -> Option<i64>;

    /// A fresh state.
    fn new_state(&self) -> Self::State;

    /// Applies one event to a key's state (`lateness_ms`: how far behind
    /// the newest event one may still count).
    fn observe(&self, state: &mut Self::State, input: &Input<'_>, lateness_ms: i64) -> Observed;

    /// Runs the key's timers up to `now_ms` (event time).
    fn expire(&self, state: &mut Self::State, now_ms: i64) -> Vec<Fired>;

    /// The deadlines (event time, ms) at which `expire` must run for this
    /// state: re-armed when the state is restored from its changelog.
    fn deadlines(&self, state: &Self::State) -> Vec<i64>;

    /// Whether the state holds nothing the pattern could still complete with
    /// (so it can be dropped: a fresh state behaves the same).
    fn is_idle(state: &Self::State) -> bool;

    /// Rough bytes held, for the state-size figure.
    fn approx_bytes(state: &Self::State) -> usize;
}

/// Registers the pattern kinds: the compiled [`super::Kind`] and the
/// per-key [`KeyState`] enums, one variant per kind, and the dispatch
/// between them. A state of another kind than its pattern's cannot be seen
/// (a kind's change changes the rule's fingerprint, which drops its state);
/// it is left alone.
macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident($detector:ty),)+) => {
        /// The kinds, compiled.
        pub enum Kind {
            $($(#[$doc])* $variant($detector),)+
        }

        /// The state of one (rule, key), as its kind keeps it.
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        pub enum KeyState {
            $($variant(<$detector as $crate::patterns::detect::Detector>::State),)+
        }

        impl Kind {
            /// The kind's name, for outcomes and `/rules`.
            pub fn name(&self) -> &'static str {
                use $crate::patterns::detect::Detector;
                match self {
                    $(Kind::$variant(_) => <$detector>::NAME,)+
                }
            }

            /// See [`Detector::sees_all_events`].
            pub fn sees_all_events(&self) -> bool {
                use $crate::patterns::detect::Detector;
                match self {
                    $(Kind::$variant(d) => d.sees_all_events(),)+
                }
            }

            /// See [`Detector::has_step_conditions`].
            pub fn has_step_conditions(&self) -> bool {
                use $crate::patterns::detect::Detector;
                match self {
                    $(Kind::$variant(d) => d.has_step_conditions(),)+
                }
            }

            /// See [`Detector::horizon_ms`].
            pub fn horizon_ms(&self) -> Option<i64> {
                use $crate::patterns::detect::Detector;
                match self {
                    $(Kind::$variant(d) => d.horizon_ms(),)+
                }
            }

            /// A fresh state for this kind.
            pub fn new_state(&self) -> KeyState {
                use $crate::patterns::detect::Detector;
                match self {
                    $(Kind::$variant(d) => KeyState::$variant(d.new_state()),)+
                }
            }
        }

        impl KeyState {
            /// Applies one event to the state.
            pub fn observe(
                &mut self,
                pattern: &Pattern,
                input: &$crate::patterns::detect::Input<'_>,
            ) -> $crate::patterns::detect::Observed {
                use $crate::patterns::detect::Detector;
                #[allow(unreachable_patterns)]
                match (&pattern.kind, self) {
                    $((Kind::$variant(d), KeyState::$variant(s)) => {
                        d.observe(s, input, pattern.lateness_ms)
                    })+
                    _ => Default::default(),
                }
            }

            /// Runs the state's timers up to `now_ms` (event time).
            pub fn expire(&mut self, pattern: &Pattern, now_ms: i64) -> Vec<Fired> {
                use $crate::patterns::detect::Detector;
                #[allow(unreachable_patterns)]
                match (&pattern.kind, self) {
                    $((Kind::$variant(d), KeyState::$variant(s)) => d.expire(s, now_ms),)+
                    _ => Vec::new(),
                }
            }

            /// The deadlines at which [`KeyState::expire`] must run.
            pub fn deadlines(&self, pattern: &Pattern) -> Vec<i64> {
                use $crate::patterns::detect::Detector;
                #[allow(unreachable_patterns)]
                match (&pattern.kind, self) {
                    $((Kind::$variant(d), KeyState::$variant(s)) => d.deadlines(s),)+
                    _ => Vec::new(),
                }
            }

            /// See [`Detector::is_idle`].
            pub fn is_idle(&self) -> bool {
                use $crate::patterns::detect::Detector;
                match self {
                    $(KeyState::$variant(s) => <$detector>::is_idle(s),)+
                }
            }

            /// See [`Detector::approx_bytes`].
            pub fn approx_bytes(&self) -> usize {
                use $crate::patterns::detect::Detector;
                std::mem::size_of::<KeyState>()
                    + match self {
                        $(KeyState::$variant(s) => <$detector>::approx_bytes(s),)+
                    }
            }
        }
    };
}
pub(super) use kinds;

/// Rough bytes of an event held by a pattern (events are shared with the
/// pipeline and counted by their field count).
pub(super) fn event_bytes(e: &Arc<Event>) -> usize {
    64 + e.fields.len() * 48
}

/// Rough bytes of geofence presences.
pub(super) fn presence_bytes(p: &[Presence]) -> usize {
    p.iter().map(|p| 24 + p.inside.len() * 24).sum()
}

pub(super) fn ping(g: &Geo, presence: &mut Presence, event: &Event) -> Vec<Crossing> {
    let num = |f: &str| lookup(&event.fields, f).and_then(Value::as_f64);
    match (num(&g.lon), num(&g.lat)) {
        (Some(lon), Some(lat)) => presence.ping(
            &g.fences,
            &g.tolerance,
            lon,
            lat,
            num(&g.accuracy),
            event.time_ms,
        ),
        _ => Vec::new(),
    }
}

pub(super) fn fence_fired(g: &Geo, crossing: &Crossing, event: &Arc<Event>) -> Option<Fired> {
    let (on, id) = match crossing {
        Crossing::Enter(id) => (super::FenceEvent::Enter, id),
        Crossing::Exit(id) => (super::FenceEvent::Exit, id),
        Crossing::Dwell(id) => (super::FenceEvent::Dwell, id),
    };
    if on != g.on || g.fence.as_ref().is_some_and(|f| f != id) {
        return None;
    }
    let name = match on {
        super::FenceEvent::Enter => "enter",
        super::FenceEvent::Exit => "exit",
        super::FenceEvent::Dwell => "dwell",
    };
    Some(fired(
        "geofence",
        std::slice::from_ref(event),
        json!({ "fence": id, "on": name }),
    ))
}

/// Whether one step takes this event: its sources, match, geofence crossing
/// and condition (with the earlier steps' events as `steps`).
pub(super) fn step_matches(
    step: &Step,
    crossed: &[Crossing],
    input: &Input<'_>,
    earlier: &[Arc<Event>],
    steps: &[Step],
) -> bool {
    let event = input.event;
    if step
        .sources
        .as_ref()
        .is_some_and(|s| !s.iter().any(|s| **s == *event.source))
    {
        return false;
    }
    if !step
        .match_fields
        .iter()
        .all(|(f, v)| lookup(&event.fields, f).is_some_and(|x| scalar_is(v, x)))
    {
        return false;
    }
    if let Some(g) = &step.geofence {
        let want = |c: &Crossing| match (c, g.on) {
            (Crossing::Enter(id), super::FenceEvent::Enter)
            | (Crossing::Exit(id), super::FenceEvent::Exit) => {
                g.fence.as_ref().is_none_or(|f| f == id)
            }
            _ => false,
        };
        if !crossed.iter().any(want) {
            return false;
        }
    }
    let Some(condition) = &step.condition else {
        return true;
    };
    let named: Vec<(&str, &Fields)> = steps
        .iter()
        .zip(earlier)
        .map(|(s, e)| (s.name.as_str(), &e.fields))
        .collect();
    let built;
    let scope = match input.scope {
        Some(s) => s,
        None => {
            built = input.conditions.scope(&event.fields, input.profile);
            &built
        }
    };
    input.conditions.eval_with_steps(condition, scope, &named) == Ok(true)
}

fn scalar_is(expected: &Scalar, actual: &Value) -> bool {
    match (expected, actual) {
        (Scalar::Text(s), Value::String(a)) => s == a,
        (Scalar::Bool(b), Value::Bool(a)) => b == a,
        (Scalar::Int(i), Value::Number(n)) => n.as_f64() == Some(*i as f64),
        (Scalar::Float(f), Value::Number(n)) => n.as_f64() == Some(*f),
        _ => false,
    }
}

/// A firing over `events` (oldest first): the last is the one the message is about.
pub(super) fn fired(kind: &str, events: &[Arc<Event>], stats: Value) -> Fired {
    let first = events.first().expect("a firing has events");
    let last = events.last().expect("a firing has events");
    let mut stats = stats;
    if events.len() > 1 {
        // What the events actually spanned, beside the configured window
        // (`within_s`): "3 declines in 47 seconds".
        stats["span_s"] = Value::from((last.time_ms - first.time_ms) as f64 / 1000.0);
    }
    let mut context = stats.clone();
    context["kind"] = Value::from(kind);
    // Each event's fields made a map once (a copy in name order); `first`
    // and `last` are copies of those maps, not made and sorted again.
    let maps: Vec<Value> = events
        .iter()
        .map(|e| Value::Object(e.fields.to_map()))
        .collect();
    context["first"] = maps[0].clone();
    context["last"] = maps[maps.len() - 1].clone();
    context["events"] = Value::Array(maps);
    let mut summary = stats;
    summary["kind"] = Value::from(kind);
    summary["events"] = events
        .iter()
        .map(|e| json!({ "topic": &*e.source, "partition": e.partition, "offset": e.offset, "event_ms": e.time_ms }))
        .collect();
    Fired {
        event: Arc::clone(last),
        context,
        summary,
    }
}

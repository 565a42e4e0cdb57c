//! The per-key state machine of each pattern kind: what one event (or a timer)
//! does to a key's state, and when the pattern fires.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::geofence::{Crossing, Presence};
use super::window::{Entry, Measure, Window};
use super::{Fired, Geo, Kind, Pattern, Step};
use crate::expr::condition::{Conditions, Scope};
use crate::expr::Scalar;
use crate::ingest::decode::{lookup, Event};
use crate::ingest::fields::Fields;
use crate::profile::Profile;

/// The state of one (rule, key).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum KeyState {
    Window(Window<Arc<Event>>),
    Consecutive(Vec<Arc<Event>>),
    Crossing {
        armed: bool,
        last: Option<f64>,
    },
    Sequence {
        matched: Vec<Arc<Event>>,
        presence: Vec<Presence>,
    },
    Absence {
        /// Deadline (event time, ms) and the `after` event, oldest first.
        waiting: Vec<(i64, Arc<Event>)>,
        presence: Vec<Presence>,
    },
    Geofence {
        presence: Presence,
        /// The last ping, for a dwell that a timer fires.
        last: Option<Arc<Event>>,
    },
}

/// What observing one event did.
#[derive(Debug, Default)]
pub struct Observed {
    pub fired: Vec<Fired>,
    /// A deadline (event time, ms) at which [`expire`] must run for this key.
    pub timer: Option<i64>,
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

impl KeyState {
    /// A fresh state for a pattern.
    pub fn new(pattern: &Pattern) -> KeyState {
        match &pattern.kind {
            Kind::Window { .. } => KeyState::Window(Window::default()),
            Kind::Consecutive { .. } => KeyState::Consecutive(Vec::new()),
            Kind::Crossing { .. } => KeyState::Crossing {
                armed: true,
                last: None,
            },
            Kind::Sequence { steps, .. } => KeyState::Sequence {
                matched: Vec::new(),
                presence: vec![Presence::default(); steps.len()],
            },
            Kind::Absence { .. } => KeyState::Absence {
                waiting: Vec::new(),
                presence: vec![Presence::default(); 2],
            },
            Kind::Geofence(_) => KeyState::Geofence {
                presence: Presence::default(),
                last: None,
            },
        }
    }

    /// The deadlines (event time, ms) at which [`expire`] must run for this
    /// state: re-armed when the state is restored from its changelog.
    pub fn deadlines(&self, pattern: &Pattern) -> Vec<i64> {
        match (&pattern.kind, self) {
            (Kind::Absence { .. }, KeyState::Absence { waiting, .. }) => {
                waiting.iter().map(|(deadline, _)| *deadline).collect()
            }
            (Kind::Geofence(g), KeyState::Geofence { presence, .. }) => {
                match (g.tolerance.dwell_ms, presence.inside.last()) {
                    (Some(dwell), Some((_, since, false))) => vec![since + dwell],
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    /// Whether the state holds nothing a pattern could still complete with
    /// (so it can be dropped: a fresh state behaves the same).
    pub fn is_idle(&self) -> bool {
        let outside = |p: &[Presence]| p.iter().all(|p| p.inside.is_empty());
        match self {
            KeyState::Window(w) => w.is_empty(),
            KeyState::Consecutive(run) => run.is_empty(),
            KeyState::Crossing { armed, .. } => *armed,
            KeyState::Sequence { matched, presence } => matched.is_empty() && outside(presence),
            KeyState::Absence { waiting, presence } => waiting.is_empty() && outside(presence),
            KeyState::Geofence { presence, .. } => presence.inside.is_empty(),
        }
    }

    /// Rough bytes held, for the state-size figure (events are shared with the
    /// pipeline and counted by their field count).
    pub fn approx_bytes(&self) -> usize {
        let event = |e: &Arc<Event>| 64 + e.fields.len() * 48;
        let presence = |p: &[Presence]| p.iter().map(|p| 24 + p.inside.len() * 24).sum::<usize>();
        std::mem::size_of::<KeyState>()
            + match self {
                KeyState::Window(w) => w.entries().map(|e| 40 + event(&e.item)).sum(),
                KeyState::Consecutive(run) => run.iter().map(event).sum(),
                KeyState::Crossing { .. } => 0,
                KeyState::Sequence {
                    matched,
                    presence: p,
                } => matched.iter().map(event).sum::<usize>() + presence(p),
                KeyState::Absence {
                    waiting,
                    presence: p,
                } => waiting.iter().map(|(_, e)| 8 + event(e)).sum::<usize>() + presence(p),
                KeyState::Geofence { presence: p, .. } => presence(std::slice::from_ref(p)),
            }
    }
}

/// Applies one event to a key's state.
pub fn observe(pattern: &Pattern, state: &mut KeyState, input: &Input<'_>) -> Observed {
    let event = input.event;
    let t = event.time_ms;
    let mut out = Observed::default();
    match (&pattern.kind, state) {
        (
            Kind::Window {
                measure,
                field,
                threshold,
                within_ms,
            },
            KeyState::Window(w),
        ) => {
            if !input.matched {
                return out;
            }
            let (value, distinct) = match (measure, field) {
                (Measure::Sum, Some(f)) => match lookup(&event.fields, f).and_then(Value::as_f64) {
                    Some(v) => (v, None),
                    None => return out,
                },
                (Measure::Distinct, Some(f)) => match lookup(&event.fields, f) {
                    Some(v) => (
                        1.0,
                        Some(v.as_str().map_or_else(|| v.to_string(), str::to_string)),
                    ),
                    None => return out,
                },
                _ => (1.0, None),
            };
            w.insert(Entry {
                at_ms: t,
                value,
                distinct,
                item: Arc::clone(event),
            });
            if let Some(end) = w.reached(measure, *threshold, t, *within_ms) {
                let events: Vec<Arc<Event>> = w
                    .span(end, *within_ms)
                    .map(|e| Arc::clone(&e.item))
                    .collect();
                let stats = json!({
                    "count": events.len(),
                    "sum": w.measure(&Measure::Sum, end, *within_ms),
                    "distinct": w.measure(&Measure::Distinct, end, *within_ms),
                    "within_s": within_ms / 1000,
                });
                w.clear_through(end);
                out.fired.push(fired("window", &events, stats));
            }
            let newest = w.entries().last().map_or(t, |e| e.at_ms);
            w.evict_before(newest - within_ms - pattern.lateness_ms);
        }
        (Kind::Consecutive { count }, KeyState::Consecutive(run)) => {
            if !input.matched {
                run.clear();
                return out;
            }
            run.push(Arc::clone(event));
            if run.len() >= *count as usize {
                let events = std::mem::take(run);
                out.fired.push(fired(
                    "consecutive",
                    &events,
                    json!({ "count": events.len() }),
                ));
            }
        }
        (
            Kind::Crossing {
                field,
                below,
                threshold,
                rearm,
            },
            KeyState::Crossing { armed, last },
        ) => {
            if !input.matched {
                return out;
            }
            let Some(value) = lookup(&event.fields, field).and_then(Value::as_f64) else {
                return out;
            };
            let crossed = if *below {
                value < *threshold
            } else {
                value > *threshold
            };
            let back = if *below {
                value >= threshold + rearm
            } else {
                value <= threshold - rearm
            };
            if *armed && crossed {
                *armed = false;
                let stats = json!({ "value": value, "threshold": threshold, "previous": last });
                out.fired
                    .push(fired("crossing", std::slice::from_ref(event), stats));
            } else if !*armed && back {
                *armed = true;
            }
            *last = Some(value);
        }
        (Kind::Sequence { steps, within_ms }, KeyState::Sequence { matched, presence }) => {
            if matched
                .first()
                .is_some_and(|first| t - first.time_ms > *within_ms)
            {
                matched.clear();
            }
            // Geofence steps see every ping, so their presence stays current.
            let crossings: Vec<Vec<Crossing>> = steps
                .iter()
                .zip(presence.iter_mut())
                .map(|(s, p)| {
                    s.geofence
                        .as_ref()
                        .map_or_else(Vec::new, |g| ping(g, p, event))
                })
                .collect();
            let next = matched.len();
            if step_matches(&steps[next], &crossings[next], input, matched, steps) {
                matched.push(Arc::clone(event));
            } else if next > 0 && step_matches(&steps[0], &crossings[0], input, &[], steps) {
                // A newer first step: start again from it.
                *matched = vec![Arc::clone(event)];
            }
            if matched.len() == steps.len() {
                let events = std::mem::take(matched);
                let named: Map<String, Value> = steps
                    .iter()
                    .zip(&events)
                    .map(|(s, e)| (s.name.clone(), Value::Object(e.fields.to_map())))
                    .collect();
                let mut f = fired("sequence", &events, json!({ "within_s": within_ms / 1000 }));
                f.context["steps"] = Value::Object(named);
                f.summary["steps"] = steps.iter().map(|s| Value::from(s.name.as_str())).collect();
                out.fired.push(f);
            }
        }
        (
            Kind::Absence {
                after,
                missing,
                within_ms,
            },
            KeyState::Absence { waiting, presence },
        ) => {
            let (pa, pm) = presence.split_at_mut(1);
            let after_crossed = after
                .geofence
                .as_ref()
                .map_or_else(Vec::new, |g| ping(g, &mut pa[0], event));
            let missing_crossed = missing
                .geofence
                .as_ref()
                .map_or_else(Vec::new, |g| ping(g, &mut pm[0], event));
            if step_matches(missing, &missing_crossed, input, &[], &[]) {
                // B came: every A it follows within the time is answered.
                waiting.retain(|(deadline, a)| !(a.time_ms <= t && t <= *deadline));
            } else if step_matches(after, &after_crossed, input, &[], &[]) {
                let deadline = t + within_ms;
                waiting.push((deadline, Arc::clone(event)));
                out.timer = Some(deadline);
            }
        }
        (Kind::Geofence(g), KeyState::Geofence { presence: p, last }) => {
            *last = Some(Arc::clone(event));
            for crossing in ping(g, p, event) {
                if let Some(f) = fence_fired(g, &crossing, event) {
                    out.fired.push(f);
                }
            }
            if let (Some(dwell), Some((_, since, false))) = (g.tolerance.dwell_ms, p.inside.last())
            {
                out.timer = Some(since + dwell);
            }
        }
        _ => {}
    }
    out
}

/// Runs the key's timers up to `now_ms` (event time): absences whose time ran
/// out, dwell reached without a further ping.
pub fn expire(pattern: &Pattern, state: &mut KeyState, now_ms: i64) -> Vec<Fired> {
    match (&pattern.kind, state) {
        (
            Kind::Absence {
                missing, within_ms, ..
            },
            KeyState::Absence { waiting, .. },
        ) => {
            let due: Vec<_> = waiting
                .iter()
                .filter(|(d, _)| *d <= now_ms)
                .cloned()
                .collect();
            waiting.retain(|(d, _)| *d > now_ms);
            due.into_iter()
                .map(|(_, a)| {
                    let mut f = fired(
                        "absence",
                        std::slice::from_ref(&a),
                        json!({ "within_s": within_ms / 1000 }),
                    );
                    f.context["missing"] = Value::from(missing.name.as_str());
                    f.summary["missing"] = Value::from(missing.name.as_str());
                    f
                })
                .collect()
        }
        (
            Kind::Geofence(g),
            KeyState::Geofence {
                presence,
                last: Some(last),
            },
        ) => match g.tolerance.dwell_ms {
            Some(dwell) => presence
                .dwelled(&g.fences, dwell, now_ms)
                .iter()
                .filter_map(|c| fence_fired(g, c, last))
                .collect(),
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn ping(g: &Geo, presence: &mut Presence, event: &Event) -> Vec<Crossing> {
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

fn fence_fired(g: &Geo, crossing: &Crossing, event: &Arc<Event>) -> Option<Fired> {
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
fn step_matches(
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
fn fired(kind: &str, events: &[Arc<Event>], stats: Value) -> Fired {
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
    context["first"] = Value::Object(first.fields.to_map());
    context["last"] = Value::Object(last.fields.to_map());
    context["events"] = events
        .iter()
        .map(|e| Value::Object(e.fields.to_map()))
        .collect();
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

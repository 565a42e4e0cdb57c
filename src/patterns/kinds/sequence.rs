//! Pattern kind `sequence`: named steps in order (A then B then C) within a time, each with its own match, condition or geofence.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::ingest::decode::Event;
use crate::patterns::detect::{
    event_bytes, fired, ping, presence_bytes, step_matches, Detector, Input, Observed,
};
use crate::patterns::geofence::{Crossing, Presence};
use crate::patterns::{Fired, Step};

/// `sequence: { steps: [...], within: 10m }`.
pub struct SequenceKind {
    pub steps: Vec<Step>,
    pub within_ms: i64,
    /// Whether a step has a geofence (then every ping moves its presence).
    has_geofence: bool,
}

impl SequenceKind {
    pub fn new(steps: Vec<Step>, within_ms: i64) -> SequenceKind {
        let has_geofence = steps.iter().any(|s| s.geofence.is_some());
        SequenceKind {
            steps,
            within_ms,
            has_geofence,
        }
    }
}

/// The events of the steps matched so far, and each step's geofence presence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceState {
    pub matched: Vec<Arc<Event>>,
    pub presence: Vec<Presence>,
}

impl Detector for SequenceKind {
    type State = SequenceState;
    const NAME: &'static str = "sequence";

    fn sees_all_events(&self) -> bool {
        true
    }

    fn has_step_conditions(&self) -> bool {
        self.steps.iter().any(|s| s.condition.is_some())
    }

    fn horizon_ms(&self) -> Option<i64> {
        Some(self.within_ms)
    }

    fn new_state(&self) -> Self::State {
        SequenceState {
            matched: Vec::new(),
            presence: vec![Presence::default(); self.steps.len()],
        }
    }

    fn observe(&self, s: &mut Self::State, input: &Input<'_>, _lateness_ms: i64) -> Observed {
        let mut out = Observed::default();
        let (steps, event) = (&self.steps, input.event);
        let SequenceState { matched, presence } = s;
        if matched
            .first()
            .is_some_and(|first| event.time_ms - first.time_ms > self.within_ms)
        {
            matched.clear();
        }
        // Geofence steps see every ping, so their presence stays current
        // (nothing is gathered for a sequence without one).
        let crossings: Vec<Vec<Crossing>> = match self.has_geofence {
            true => steps
                .iter()
                .zip(presence.iter_mut())
                .map(|(s, p)| {
                    s.geofence
                        .as_ref()
                        .map_or_else(Vec::new, |g| ping(g, p, event))
                })
                .collect(),
            false => Vec::new(),
        };
        let crossed = |at: usize| crossings.get(at).map_or(&[][..], Vec::as_slice);
        let next = matched.len();
        if step_matches(&steps[next], crossed(next), input, matched, steps) {
            matched.push(Arc::clone(event));
        } else if next > 0 && step_matches(&steps[0], crossed(0), input, &[], steps) {
            // A newer first step: start again from it.
            *matched = vec![Arc::clone(event)];
        }
        if matched.len() == steps.len() {
            let events = std::mem::take(matched);
            let stats = json!({ "within_s": self.within_ms / 1000 });
            let mut f = fired(Self::NAME, &events, stats);
            // Each step's event: its map in `events`, copied.
            let named: Map<String, Value> = match &f.context["events"] {
                Value::Array(maps) => steps
                    .iter()
                    .zip(maps)
                    .map(|(s, m)| (s.name.clone(), m.clone()))
                    .collect(),
                _ => Map::new(),
            };
            f.context["steps"] = Value::Object(named);
            f.summary["steps"] = steps.iter().map(|s| Value::from(s.name.as_str())).collect();
            out.fired.push(f);
        }
        out
    }

    fn expire(&self, _s: &mut Self::State, _now_ms: i64) -> Vec<Fired> {
        Vec::new()
    }

    fn deadlines(&self, _s: &Self::State) -> Vec<i64> {
        Vec::new()
    }

    fn is_idle(s: &Self::State) -> bool {
        s.matched.is_empty() && s.presence.iter().all(|p| p.inside.is_empty())
    }

    fn approx_bytes(s: &Self::State) -> usize {
        s.matched.iter().map(event_bytes).sum::<usize>() + presence_bytes(&s.presence)
    }
}

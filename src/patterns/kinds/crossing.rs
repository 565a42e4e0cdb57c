//! Pattern kind `crossing`: a field's value crossing a threshold, firing once until it comes back past the re-arm margin.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ingest::decode::lookup;
use crate::patterns::detect::{fired, Detector, Input, Observed};
use crate::patterns::Fired;

/// `crossing: <field>` with `below:` or `above:` and an optional `rearm:`.
pub struct CrossingKind {
    pub field: String,
    pub below: bool,
    pub threshold: f64,
    pub rearm: f64,
}

/// Whether the next crossing fires, and the last value seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrossingState {
    pub armed: bool,
    pub last: Option<f64>,
}

impl Detector for CrossingKind {
    type State = CrossingState;
    const NAME: &'static str = "crossing";

    fn sees_all_events(&self) -> bool {
        false
    }

    fn has_step_conditions(&self) -> bool {
        false
    }

    fn horizon_ms(&self) -> Option<i64> {
        None
    }

    fn new_state(&self) -> Self::State {
        CrossingState {
            armed: true,
            last: None,
        }
    }

    fn observe(&self, s: &mut Self::State, input: &Input<'_>, _lateness_ms: i64) -> Observed {
        let mut out = Observed::default();
        let event = input.event;
        if !input.matched {
            return out;
        }
        let Some(value) = lookup(&event.fields, &self.field).and_then(Value::as_f64) else {
            return out;
        };
        let (threshold, rearm) = (self.threshold, self.rearm);
        let crossed = if self.below {
            value < threshold
        } else {
            value > threshold
        };
        let back = if self.below {
            value >= threshold + rearm
        } else {
            value <= threshold - rearm
        };
        if s.armed && crossed {
            s.armed = false;
            let stats = json!({ "value": value, "threshold": threshold, "previous": s.last });
            out.fired
                .push(fired(Self::NAME, std::slice::from_ref(event), stats));
        } else if !s.armed && back {
            s.armed = true;
        }
        s.last = Some(value);
        out
    }

    fn expire(&self, _s: &mut Self::State, _now_ms: i64) -> Vec<Fired> {
        Vec::new()
    }

    fn deadlines(&self, _s: &Self::State) -> Vec<i64> {
        Vec::new()
    }

    fn is_idle(s: &Self::State) -> bool {
        s.armed
    }

    fn approx_bytes(_s: &Self::State) -> usize {
        0
    }
}

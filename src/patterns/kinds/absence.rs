//! Pattern kind `absence`: A and no B within a time — a timer fires when B did not come.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ingest::decode::Event;
use crate::patterns::detect::{
    event_bytes, fired, ping, presence_bytes, step_matches, Detector, Input, Observed,
};
use crate::patterns::geofence::Presence;
use crate::patterns::{Fired, Step};

/// `absence: { after: <step>, missing: <step>, within: 30m }`.
pub struct AbsenceKind {
    pub after: Box<Step>,
    pub missing: Box<Step>,
    pub within_ms: i64,
}

/// The `after` events waiting for their `missing` one, and both steps'
/// geofence presence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbsenceState {
    /// Deadline (event time, ms) and the `after` event, oldest first.
    pub waiting: Vec<(i64, Arc<Event>)>,
    pub presence: Vec<Presence>,
}

impl Detector for AbsenceKind {
    type State = AbsenceState;
    const NAME: &'static str = "absence";

    fn sees_all_events(&self) -> bool {
        true
    }

    fn has_step_conditions(&self) -> bool {
        self.after.condition.is_some() || self.missing.condition.is_some()
    }

    fn horizon_ms(&self) -> Option<i64> {
        None
    }

    fn new_state(&self) -> Self::State {
        AbsenceState {
            waiting: Vec::new(),
            presence: vec![Presence::default(); 2],
        }
    }

    fn observe(&self, s: &mut Self::State, input: &Input<'_>, _lateness_ms: i64) -> Observed {
        let mut out = Observed::default();
        let (event, t) = (input.event, input.event.time_ms);
        let (pa, pm) = s.presence.split_at_mut(1);
        let after_crossed = self
            .after
            .geofence
            .as_ref()
            .map_or_else(Vec::new, |g| ping(g, &mut pa[0], event));
        let missing_crossed = self
            .missing
            .geofence
            .as_ref()
            .map_or_else(Vec::new, |g| ping(g, &mut pm[0], event));
        if step_matches(&self.missing, &missing_crossed, input, &[], &[]) {
            // B came: every A it follows within the time is answered.
            s.waiting
                .retain(|(deadline, a)| !(a.time_ms <= t && t <= *deadline));
        } else if step_matches(&self.after, &after_crossed, input, &[], &[]) {
            let deadline = t + self.within_ms;
            s.waiting.push((deadline, Arc::clone(event)));
            out.timer = Some(deadline);
        }
        out
    }

    fn expire(&self, s: &mut Self::State, now_ms: i64) -> Vec<Fired> {
        let due: Vec<_> = s
            .waiting
            .iter()
            .filter(|(d, _)| *d <= now_ms)
            .cloned()
            .collect();
        s.waiting.retain(|(d, _)| *d > now_ms);
        let missing = self.missing.name.as_str();
        due.into_iter()
            .map(|(_, a)| {
                let stats = json!({ "within_s": self.within_ms / 1000 });
                let mut f = fired(Self::NAME, std::slice::from_ref(&a), stats);
                f.context["missing"] = Value::from(missing);
                f.summary["missing"] = Value::from(missing);
                f
            })
            .collect()
    }

    fn deadlines(&self, s: &Self::State) -> Vec<i64> {
        s.waiting.iter().map(|(deadline, _)| *deadline).collect()
    }

    fn is_idle(s: &Self::State) -> bool {
        s.waiting.is_empty() && s.presence.iter().all(|p| p.inside.is_empty())
    }

    fn approx_bytes(s: &Self::State) -> usize {
        let waiting: usize = s.waiting.iter().map(|(_, e)| 8 + event_bytes(e)).sum();
        waiting + presence_bytes(&s.presence)
    }
}

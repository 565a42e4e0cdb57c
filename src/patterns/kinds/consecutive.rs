//! Pattern kind `consecutive`: N matching events in a row for a key, a non-matching one breaking the run.

use std::sync::Arc;

use serde_json::json;

use crate::ingest::decode::Event;
use crate::patterns::detect::{event_bytes, fired, Detector, Input, Observed};
use crate::patterns::Fired;

/// `consecutive: 3`.
pub struct ConsecutiveKind {
    pub count: u32,
}

impl Detector for ConsecutiveKind {
    type State = Vec<Arc<Event>>;
    const NAME: &'static str = "consecutive";

    fn sees_all_events(&self) -> bool {
        true
    }

    fn has_step_conditions(&self) -> bool {
        false
    }

    fn horizon_ms(&self) -> Option<i64> {
        None
    }

    fn new_state(&self) -> Self::State {
        Vec::new()
    }

    fn observe(&self, run: &mut Self::State, input: &Input<'_>, _lateness_ms: i64) -> Observed {
        let mut out = Observed::default();
        if !input.matched {
            run.clear();
            return out;
        }
        run.push(Arc::clone(input.event));
        if run.len() >= self.count as usize {
            let events = std::mem::take(run);
            let stats = json!({ "count": events.len() });
            out.fired.push(fired(Self::NAME, &events, stats));
        }
        out
    }

    fn expire(&self, _run: &mut Self::State, _now_ms: i64) -> Vec<Fired> {
        Vec::new()
    }

    fn deadlines(&self, _run: &Self::State) -> Vec<i64> {
        Vec::new()
    }

    fn is_idle(run: &Self::State) -> bool {
        run.is_empty()
    }

    fn approx_bytes(run: &Self::State) -> usize {
        run.iter().map(event_bytes).sum()
    }
}

//! Pattern kind `window`: a count, sum or distinct count of matching events reaching a threshold within a sliding window.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::ingest::decode::{lookup, Event};
use crate::patterns::detect::{event_bytes, fired, Detector, Input, Observed};
use crate::patterns::window::{Entry, Measure, Window};
use crate::patterns::Fired;

/// `window: { count: 3, within: 5m }`, or `sum:` / `distinct:` a field with `at_least:`.
pub struct WindowKind {
    pub measure: Measure,
    /// The summed or distinct field.
    pub field: Option<String>,
    pub threshold: f64,
    pub within_ms: i64,
}

impl Detector for WindowKind {
    type State = Window<Arc<Event>>;
    const NAME: &'static str = "window";

    fn sees_all_events(&self) -> bool {
        false
    }

    fn has_step_conditions(&self) -> bool {
        false
    }

    fn horizon_ms(&self) -> Option<i64> {
        Some(self.within_ms)
    }

    fn new_state(&self) -> Self::State {
        Window::default()
    }

    fn observe(&self, w: &mut Self::State, input: &Input<'_>, lateness_ms: i64) -> Observed {
        let mut out = Observed::default();
        let (event, within_ms) = (input.event, self.within_ms);
        let t = event.time_ms;
        if !input.matched {
            return out;
        }
        let (value, distinct) = match (&self.measure, &self.field) {
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
        if let Some(end) = w.reached(&self.measure, self.threshold, t, within_ms) {
            let events: Vec<Arc<Event>> = w
                .span(end, within_ms)
                .map(|e| Arc::clone(&e.item))
                .collect();
            let stats = json!({
                "count": events.len(),
                "sum": w.measure(&Measure::Sum, end, within_ms),
                "distinct": w.measure(&Measure::Distinct, end, within_ms),
                "within_s": within_ms / 1000,
            });
            w.clear_through(end);
            out.fired.push(fired(Self::NAME, &events, stats));
        }
        let newest = w.entries().last().map_or(t, |e| e.at_ms);
        w.evict_before(newest - within_ms - lateness_ms);
        out
    }

    fn expire(&self, _w: &mut Self::State, _now_ms: i64) -> Vec<Fired> {
        Vec::new()
    }

    fn deadlines(&self, _w: &Self::State) -> Vec<i64> {
        Vec::new()
    }

    fn is_idle(w: &Self::State) -> bool {
        w.is_empty()
    }

    fn approx_bytes(w: &Self::State) -> usize {
        w.entries().map(|e| 40 + event_bytes(&e.item)).sum()
    }
}

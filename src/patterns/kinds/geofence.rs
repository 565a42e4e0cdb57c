//! Pattern kind `geofence`: a device entering, leaving or dwelling in a fence of a GeoJSON file.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ingest::decode::Event;
use crate::patterns::detect::{fence_fired, ping, presence_bytes, Detector, Input, Observed};
use crate::patterns::geofence::Presence;
use crate::patterns::{Fired, Geo};

/// `geofence: { file: stores.geojson, on: enter }`.
pub struct GeofenceKind(pub Geo);

/// Where the key is, and its last ping (for a dwell that a timer fires).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeofenceState {
    pub presence: Presence,
    pub last: Option<Arc<Event>>,
}

impl Detector for GeofenceKind {
    type State = GeofenceState;
    const NAME: &'static str = "geofence";

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
        GeofenceState {
            presence: Presence::default(),
            last: None,
        }
    }

    fn observe(&self, s: &mut Self::State, input: &Input<'_>, _lateness_ms: i64) -> Observed {
        let mut out = Observed::default();
        let (g, event) = (&self.0, input.event);
        s.last = Some(Arc::clone(event));
        for crossing in ping(g, &mut s.presence, event) {
            out.fired.extend(fence_fired(g, &crossing, event));
        }
        if let (Some(dwell), Some((_, since, false))) =
            (g.tolerance.dwell_ms, s.presence.inside.last())
        {
            out.timer = Some(since + dwell);
        }
        out
    }

    fn expire(&self, s: &mut Self::State, now_ms: i64) -> Vec<Fired> {
        let g = &self.0;
        match (g.tolerance.dwell_ms, &s.last) {
            (Some(dwell), Some(last)) => s
                .presence
                .dwelled(&g.fences, dwell, now_ms)
                .iter()
                .filter_map(|c| fence_fired(g, c, last))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn deadlines(&self, s: &Self::State) -> Vec<i64> {
        match (self.0.tolerance.dwell_ms, s.presence.inside.last()) {
            (Some(dwell), Some((_, since, false))) => vec![since + dwell],
            _ => Vec::new(),
        }
    }

    fn is_idle(s: &Self::State) -> bool {
        s.presence.inside.is_empty()
    }

    fn approx_bytes(s: &Self::State) -> usize {
        presence_bytes(std::slice::from_ref(&s.presence))
    }
}

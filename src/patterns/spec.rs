//! Patterns as analysts write them in a rule's `pattern:`, one kind per rule.
//!
//! ```yaml
//! pattern: { window: { count: 3, within: 5m } }                    # three in five minutes
//! pattern: { window: { sum: amount, at_least: 1000, within: 1h } }  # spent 1,000 within an hour
//! pattern: { window: { distinct: merchant, at_least: 3, within: 10m } }
//! pattern: { consecutive: 3 }                                       # three readings in a row
//! pattern: { crossing: { value: balance_after, below: 100, rearm: 50 } }
//! pattern:
//!   sequence:
//!     within: 1h
//!     steps:
//!       - { name: home, match: { status: approved }, condition: "event.country == event.home_country" }
//!       - { name: abroad, match: { status: approved }, condition: "event.country != steps.home.country" }
//! pattern:
//!   absence:
//!     after: { name: entered, sources: [locations], geofence: { file: fences/mall.geojson, on: enter } }
//!     missing: { name: purchase, sources: [transactions], match: { status: approved } }
//!     within: 30m
//! pattern: { geofence: { file: fences/stores.geojson, on: dwell, dwell: 10m } }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::expr::Scalar;
use crate::util::Span;

/// `pattern:` of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternSpec {
    #[serde(default)]
    pub window: Option<WindowSpec>,
    #[serde(default)]
    pub consecutive: Option<Spanned<u32>>,
    #[serde(default)]
    pub sequence: Option<SequenceSpec>,
    #[serde(default)]
    pub absence: Option<AbsenceSpec>,
    #[serde(default)]
    pub crossing: Option<CrossingSpec>,
    #[serde(default)]
    pub geofence: Option<GeofenceSpec>,
    /// How late (by event time, behind the newest event of the key) an event
    /// may arrive and still count. Default 1m.
    #[serde(default)]
    pub lateness: Option<Span>,
    /// What a later event does: `ignore` (default; counted in
    /// `herald_late_events_total`) or `process` (counted, and used anyway).
    #[serde(default)]
    pub late: LateAction,
}

/// What an event later than the allowed lateness does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateAction {
    #[default]
    Ignore,
    Process,
}

/// Count, sum or distinct count over a sliding window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Fire when this many matching events fall within the window.
    #[serde(default)]
    pub count: Option<u32>,
    /// Fire when the sum of this field reaches `at_least`.
    #[serde(default)]
    pub sum: Option<String>,
    /// Fire when the distinct values of this field reach `at_least`.
    #[serde(default)]
    pub distinct: Option<String>,
    #[serde(default)]
    pub at_least: Option<f64>,
    pub within: Spanned<Span>,
}

/// A then B (then C …) for the same key within a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSpec {
    pub within: Spanned<Span>,
    pub steps: Spanned<Vec<StepSpec>>,
}

/// A and then no B for the same key within a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsenceSpec {
    pub after: StepSpec,
    pub missing: StepSpec,
    pub within: Spanned<Span>,
}

/// One step of a sequence or absence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The step's name; later steps and templates see its event as `steps.<name>`.
    pub name: Spanned<String>,
    /// Source topics of this step; default: all of the rule's.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    pub match_fields: BTreeMap<String, Scalar>,
    /// CEL over `event`, `profile` and `steps` (the earlier steps' events).
    #[serde(default)]
    pub condition: Option<Spanned<String>>,
    /// The step is entering (or leaving) a geofence.
    #[serde(default)]
    pub geofence: Option<GeofenceSpec>,
}

/// A value crossing a threshold, once, re-armed when it crosses back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossingSpec {
    /// The field (dotted path) holding the value.
    pub value: String,
    /// Fire when the value falls below this.
    #[serde(default)]
    pub below: Option<f64>,
    /// Fire when the value rises above this.
    #[serde(default)]
    pub above: Option<f64>,
    /// Hysteresis: re-arm only once the value is back past the threshold by
    /// this much (default 0: as soon as it is back).
    #[serde(default)]
    pub rearm: Option<f64>,
}

/// Geofence enter / exit / dwell.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeofenceSpec {
    /// GeoJSON file, relative to the rules directory.
    pub file: Spanned<String>,
    /// Only this fence of the file (by id); default: any.
    #[serde(default)]
    pub fence: Option<String>,
    pub on: FenceEvent,
    /// With `on: dwell`: how long inside.
    #[serde(default)]
    pub dwell: Option<Span>,
    /// Fields with the position; defaults `lat`, `lon`, `accuracy`.
    #[serde(default = "lat")]
    pub lat: String,
    #[serde(default = "lon")]
    pub lon: String,
    #[serde(default = "accuracy")]
    pub accuracy: String,
    /// Pings less accurate than this are ignored. Default 100 m.
    #[serde(default = "max_accuracy")]
    pub max_accuracy_m: f64,
    /// Leaving needs a ping this far outside. Default 25 m.
    #[serde(default = "hysteresis")]
    pub hysteresis_m: f64,
}

/// Which geofence crossing fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceEvent {
    Enter,
    Exit,
    Dwell,
}

fn lat() -> String {
    "lat".into()
}
fn lon() -> String {
    "lon".into()
}
fn accuracy() -> String {
    "accuracy".into()
}
fn max_accuracy() -> f64 {
    100.0
}
fn hysteresis() -> f64 {
    25.0
}

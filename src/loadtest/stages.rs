//! Where a load test's time goes: each sent push's outcome timings, split
//! into herald's stages, as percentiles per stage.
//!
//! The timings are the outcome's own (`timings` in docs/engineers/contracts.md),
//! read from the decisions herald makes in this process, so the split adds
//! no record and no broker read.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::demo::stats::{Latencies, Percentiles};
use crate::engine::Decision;
use crate::outcome::{Status, Timings};

/// One stage: its name and the two timings it lies between.
struct Stage {
    name: &'static str,
    what: &'static str,
    span: fn(&Timings) -> i64,
}

const STAGES: [Stage; 6] = [
    Stage {
        name: "source",
        what: "event time to herald's consumer (the broker and the fetch)",
        span: |t| t.consumed_ms - t.event_ms,
    },
    Stage {
        name: "stage1",
        what: "consumed to matched (decode, rules, patterns)",
        span: |t| t.matched_ms - t.consumed_ms,
    },
    Stage {
        name: "hop",
        what: "matched to stage 2 (the intent written and read back)",
        span: |t| t.received_ms - t.matched_ms,
    },
    Stage {
        name: "queued",
        what: "in stage 2 behind the user's earlier decisions",
        span: |t| t.decided_ms - t.received_ms,
    },
    Stage {
        name: "decide",
        what: "policy, render and the awaited `attempted` entry",
        span: |t| t.request_sent_ms - t.decided_ms,
    },
    Stage {
        name: "provider",
        what: "request to the provider's answer",
        span: |t| t.answered_ms - t.request_sent_ms,
    },
];

/// The samples of every stage, filled while a run lasts.
#[derive(Default)]
pub struct StageSamples(Vec<Latencies>);

/// One stage's percentiles, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct StageFigures {
    pub stage: &'static str,
    pub what: &'static str,
    pub ms: Percentiles,
}

impl StageSamples {
    /// Collects the timings of every sent decision from `decisions` whose
    /// event is from `since_ms` on, until the task is aborted.
    pub fn collect(
        mut decisions: tokio::sync::broadcast::Receiver<Arc<Decision>>,
        since_ms: i64,
    ) -> (Arc<Mutex<StageSamples>>, tokio::task::JoinHandle<()>) {
        let samples = Arc::new(Mutex::new(StageSamples::default()));
        let sink = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            loop {
                match decisions.recv().await {
                    Ok(d) if d.outcome.timings.event_ms < since_ms => continue,
                    Ok(d) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(&d.outcome.status, &d.outcome.timings),
                    // Fell behind: the split is of the decisions it kept up with.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        (samples, task)
    }

    fn add(&mut self, status: &Status, timings: &Timings) {
        if *status != Status::Sent {
            return;
        }
        if self.0.is_empty() {
            self.0 = STAGES.iter().map(|_| Latencies::default()).collect();
        }
        for (stage, samples) in STAGES.iter().zip(&mut self.0) {
            samples.push((stage.span)(timings) as f64);
        }
    }

    /// Each stage's percentiles (none when nothing was sent).
    pub fn figures(&self) -> Vec<StageFigures> {
        STAGES
            .iter()
            .zip(&self.0)
            .map(|(stage, samples)| StageFigures {
                stage: stage.name,
                what: stage.what,
                ms: samples.percentiles(),
            })
            .collect()
    }
}

/// Prints the split under the run's table.
pub fn print(figures: &[StageFigures]) {
    let Some(first) = figures.first() else {
        return;
    };
    println!(
        "\nwhere herald's time goes: {} sent pushes, ms per stage",
        first.ms.count
    );
    println!(
        "  {:<9} {:<60} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "stage", "from, to", "p50", "p90", "p99", "p99.9", "max"
    );
    for f in figures {
        let m = &f.ms;
        println!(
            "  {:<9} {:<60} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>6.0}",
            f.stage, f.what, m.p50, m.p90, m.p99, m.p999, m.max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_is_the_span_between_its_timings_of_sent_decisions_only() {
        let timings = Timings {
            event_ms: 100,
            consumed_ms: 101,
            matched_ms: 103,
            received_ms: 107,
            decided_ms: 108,
            request_sent_ms: 111,
            answered_ms: 151,
        };
        let mut samples = StageSamples::default();
        samples.add(&Status::Sent, &timings);
        samples.add(&Status::Suppressed, &Timings::default());
        let figures = samples.figures();
        let p50: Vec<(&str, f64)> = figures.iter().map(|f| (f.stage, f.ms.p50)).collect();
        assert_eq!(
            p50,
            [
                ("source", 1.0),
                ("stage1", 2.0),
                ("hop", 4.0),
                ("queued", 1.0),
                ("decide", 3.0),
                ("provider", 40.0)
            ]
        );
        assert_eq!(figures[0].ms.count, 1, "the suppressed one is not counted");
    }
}

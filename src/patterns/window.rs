//! A sliding window over one key's matching events, by event time: count,
//! sum of a field, or distinct values of a field, over the last `within`.
//!
//! The window is closed at both ends: an event exactly `within` before the
//! newest still counts. Events may arrive out of order (within the rule's
//! lateness); they are kept sorted by time.

use std::collections::VecDeque;

/// What a window measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    Count,
    Sum,
    Distinct,
}

/// One event in a window: its time, its value (for `sum`), its distinct key
/// (for `distinct`) and the event itself (`T`), for templates and outcomes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry<T> {
    pub at_ms: i64,
    pub value: f64,
    pub distinct: Option<String>,
    pub item: T,
}

/// The events of one key within the window, oldest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window<T> {
    entries: VecDeque<Entry<T>>,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Window {
            entries: VecDeque::new(),
        }
    }
}

impl<T> Window<T> {
    /// Inserts an event in time order.
    pub fn insert(&mut self, entry: Entry<T>) {
        let at = self.entries.partition_point(|e| e.at_ms <= entry.at_ms);
        self.entries.insert(at, entry);
    }

    /// Forgets events older than `oldest_ms` (they can no longer count).
    pub fn evict_before(&mut self, oldest_ms: i64) {
        while self.entries.front().is_some_and(|e| e.at_ms < oldest_ms) {
            self.entries.pop_front();
        }
    }

    /// The events in `[end_ms - within_ms, end_ms]`.
    pub fn span(&self, end_ms: i64, within_ms: i64) -> impl Iterator<Item = &Entry<T>> {
        self.entries
            .iter()
            .filter(move |e| e.at_ms >= end_ms - within_ms && e.at_ms <= end_ms)
    }

    /// The measure over `[end_ms - within_ms, end_ms]`.
    pub fn measure(&self, measure: &Measure, end_ms: i64, within_ms: i64) -> f64 {
        let span = self.span(end_ms, within_ms);
        match measure {
            Measure::Count => span.count() as f64,
            Measure::Sum => span.map(|e| e.value).sum(),
            Measure::Distinct => {
                let mut seen: Vec<&str> = span.filter_map(|e| e.distinct.as_deref()).collect();
                seen.sort_unstable();
                seen.dedup();
                seen.len() as f64
            }
        }
    }

    /// After inserting an event at `at_ms`: the first window end at which the
    /// measure reaches `threshold`, among the ends the new event can affect
    /// (its own time and the later events within `within_ms`).
    pub fn reached(
        &self,
        measure: &Measure,
        threshold: f64,
        at_ms: i64,
        within_ms: i64,
    ) -> Option<i64> {
        let mut ends: Vec<i64> = self
            .entries
            .iter()
            .map(|e| e.at_ms)
            .filter(|t| *t >= at_ms && *t <= at_ms + within_ms)
            .collect();
        ends.dedup();
        ends.into_iter()
            .find(|end| self.measure(measure, *end, within_ms) >= threshold)
    }

    /// Removes the events of a window that fired, so the next firing needs new ones.
    pub fn clear_through(&mut self, end_ms: i64) {
        self.entries.retain(|e| e.at_ms > end_ms);
    }

    /// The events held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<T>> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: i64) -> Entry<i64> {
        Entry {
            at_ms: ms,
            value: 1.0,
            distinct: None,
            item: ms,
        }
    }

    const FIVE_MIN: i64 = 300_000;

    #[test]
    fn three_within_five_minutes_counts_the_boundary_in() {
        let mut w = Window::default();
        w.insert(at(0));
        w.insert(at(120_000));
        assert_eq!(w.reached(&Measure::Count, 3.0, 120_000, FIVE_MIN), None);
        w.insert(at(FIVE_MIN));
        assert_eq!(
            w.reached(&Measure::Count, 3.0, FIVE_MIN, FIVE_MIN),
            Some(FIVE_MIN),
            "an event exactly five minutes before the newest still counts"
        );
        let mut w = Window::default();
        w.insert(at(0));
        w.insert(at(120_000));
        w.insert(at(FIVE_MIN + 1));
        assert_eq!(
            w.reached(&Measure::Count, 3.0, FIVE_MIN + 1, FIVE_MIN),
            None,
            "one millisecond more and the first falls out"
        );
    }

    #[test]
    fn a_late_event_completes_the_window_it_belongs_to() {
        let mut w = Window::default();
        w.insert(at(0));
        w.insert(at(200_000));
        // Arrives last, happened in between.
        w.insert(at(100_000));
        assert_eq!(
            w.reached(&Measure::Count, 3.0, 100_000, FIVE_MIN),
            Some(200_000)
        );
    }

    #[test]
    fn sum_and_distinct() {
        let mut w = Window::default();
        for (t, v, m) in [(0, 400.0, "a"), (10, 300.0, "b"), (20, 350.0, "a")] {
            w.insert(Entry {
                at_ms: t,
                value: v,
                distinct: Some(m.into()),
                item: t,
            });
        }
        assert_eq!(w.measure(&Measure::Sum, 20, 60_000), 1050.0);
        assert_eq!(w.measure(&Measure::Distinct, 20, 60_000), 2.0);
        assert_eq!(w.reached(&Measure::Sum, 1000.0, 20, 60_000), Some(20));
        w.clear_through(20);
        assert!(w.is_empty());
    }

    proptest! {
        /// The window's count equals a recount of the same events by brute
        /// force, whatever order they arrive in.
        #[test]
        fn count_equals_a_brute_force_recount(
            times in proptest::collection::vec(0i64..1_000_000, 1..60),
            within in 1i64..400_000,
            probe in 0i64..1_200_000,
        ) {
            let mut w = Window::default();
            for t in &times {
                w.insert(at(*t));
            }
            let brute = times.iter().filter(|t| **t >= probe - within && **t <= probe).count();
            prop_assert_eq!(w.measure(&Measure::Count, probe, within), brute as f64);
            let oldest = probe - within;
            w.evict_before(oldest);
            prop_assert_eq!(w.measure(&Measure::Count, probe, within), brute as f64);
            prop_assert!(w.entries().zip(w.entries().skip(1)).all(|(a, b)| a.at_ms <= b.at_ms));
        }
    }
}

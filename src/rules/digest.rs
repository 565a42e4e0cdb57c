//! Digests: a rule's messages to one recipient collected over a window and sent as one — the `digest:` an analyst writes, checked at load, and when a window closes in the recipient's own time zone.
//!
//! ```yaml
//! digest:
//!   window: { at: "08:00" }            # or { after_first: 1h } or { quiet_for: 15m, at_most: 2h }
//!   max_items: 20                      # closes early at 20 items
//!   first_at_once: false               # the first item goes at once, the rest collect
//!   group_by: event.merchant           # one digest per recipient, rule and merchant
//!   show: { last: 5 }                  # what templates see as digest.items
//!   withdraw:                          # a later event takes a waiting item back out
//!     match: { status: reversed }
//!     condition: event.reverses == item.txn_id
//! ```
//!
//! Stage 2 collects (`engine/digest.rs`); the `digest` policy step decides
//! where in the chain collecting happens (`policy/digest.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::expr::condition::{Condition, Conditions};
use crate::expr::Scalar;
use crate::util::Span;

/// Categories that must never wait for a digest, whatever the config says.
pub const NEVER_DIGESTED: [&str; 2] = ["fraud", "security"];
/// `max_items` when the rule gives none, and the most it may give: each
/// item's event is kept until the digest goes.
pub const DEFAULT_MAX_ITEMS: usize = 50;
pub const MOST_ITEMS: usize = 500;
/// How many items templates see when `show` is not given (the newest).
pub const DEFAULT_SHOWN: usize = 10;

/// A rule's `digest:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestSpec {
    pub window: Spanned<WindowSpec>,
    #[serde(default)]
    pub max_items: Option<Spanned<usize>>,
    #[serde(default)]
    pub first_at_once: bool,
    /// A CEL expression over `event` (and `profile`) naming the group: one
    /// digest per recipient, rule and group.
    #[serde(default)]
    pub group_by: Option<Spanned<String>>,
    #[serde(default)]
    pub show: Option<Spanned<ShowSpec>>,
    #[serde(default)]
    pub withdraw: Option<WithdrawSpec>,
}

/// One of three windows, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// A fixed time after the first item.
    #[serde(default)]
    pub after_first: Option<Span>,
    /// The next local time of day in the recipient's zone, `"08:00"`.
    #[serde(default)]
    pub at: Option<String>,
    /// Sliding: closes once no item came for this long …
    #[serde(default)]
    pub quiet_for: Option<Span>,
    /// … or this long after the first item, whichever is first.
    #[serde(default)]
    pub at_most: Option<Span>,
}

/// Which items templates see.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowSpec {
    #[serde(default)]
    pub first: Option<usize>,
    #[serde(default)]
    pub last: Option<usize>,
}

/// A withdrawal as written: which later events, and which waiting items they take back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawSpec {
    /// The later event's topics (default: the rule's sources).
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    pub match_fields: BTreeMap<String, Scalar>,
    /// Over `event` (the later event) and `item` (a waiting item's event).
    pub condition: Spanned<String>,
    /// The later event's group (default: `group_by` on the later event).
    #[serde(default)]
    pub group: Option<Spanned<String>>,
}

/// When a digest closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// This long after the first item, ms.
    AfterFirst(i64),
    /// The next time this local time of day comes in the recipient's zone.
    At { hour: i8, minute: i8 },
    /// Once no item came for `quiet_ms`, at most `at_most_ms` after the first.
    Sliding { quiet_ms: i64, at_most_ms: i64 },
}

/// Which items a digest's templates see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    First(usize),
    Last(usize),
}

/// A rule's digest, compiled.
pub struct Digest {
    pub window: Window,
    pub max_items: usize,
    pub first_at_once: bool,
    pub group_by: Option<Condition>,
    pub show: Show,
    pub withdraw: Option<Withdraw>,
}

/// A withdrawal, compiled.
pub struct Withdraw {
    pub sources: Vec<String>,
    pub match_fields: Vec<(String, Scalar)>,
    pub condition: Condition,
    pub group: Option<Condition>,
}

impl Digest {
    /// When a digest whose first item came at `opened_ms` and newest at
    /// `last_ms` closes, for a recipient in `zone` (DST-correct: a local
    /// time skipped by a change resolves to the instant after the gap, a
    /// repeated one to its first occurrence).
    pub fn closes_ms(&self, opened_ms: i64, last_ms: i64, zone: &jiff::tz::TimeZone) -> i64 {
        match self.window {
            Window::AfterFirst(ms) => opened_ms.saturating_add(ms),
            Window::At { hour, minute } => next_local(opened_ms, hour, minute, zone),
            Window::Sliding {
                quiet_ms,
                at_most_ms,
            } => last_ms
                .saturating_add(quiet_ms)
                .min(opened_ms.saturating_add(at_most_ms)),
        }
    }

    /// The items templates see, of `count`: their range.
    pub fn shown(&self, count: usize) -> std::ops::Range<usize> {
        match self.show {
            Show::First(n) => 0..n.min(count),
            Show::Last(n) => count.saturating_sub(n)..count,
        }
    }
}

/// The first instant after `after_ms` at local `hour:minute` in `zone`.
fn next_local(after_ms: i64, hour: i8, minute: i8, zone: &jiff::tz::TimeZone) -> i64 {
    let time = jiff::civil::time(hour, minute, 0, 0);
    let local = jiff::Timestamp::from_millisecond(after_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned_datetime(zone.clone());
    let mut date = local.date();
    for _ in 0..3 {
        if let Ok(at) = date.to_datetime(time).to_zoned_datetime(zone.clone()) {
            let ms = at.timestamp().as_millisecond();
            if ms > after_ms {
                return ms;
            }
        }
        match date.tomorrow() {
            Ok(next) => date = next,
            Err(_) => break,
        }
    }
    after_ms.saturating_add(86_400_000)
}

/// Compiles a rule's `digest:`, pushing each problem with its position.
pub fn compile(
    spec: Option<&DigestSpec>,
    category: &Spanned<String>,
    sources: &[String],
    conditions: &Conditions,
    mut problem: impl FnMut(&Location, String),
) -> Option<Digest> {
    let spec = spec?;
    if NEVER_DIGESTED.contains(&category.value.as_str()) {
        problem(
            &spec.window.referenced,
            format!(
                "a `{}` message must never wait: a digest is not allowed in this category",
                category.value
            ),
        );
    }
    let at = &spec.window.referenced;
    let w = &spec.window.value;
    let window = match (w.after_first, &w.at, w.quiet_for, w.at_most) {
        (Some(d), None, None, None) if d.ms() > 0 => Some(Window::AfterFirst(d.ms())),
        (None, Some(time), None, None) => match local_time(time) {
            Some((hour, minute)) => Some(Window::At { hour, minute }),
            None => {
                problem(
                    at,
                    format!("window.at `{time}` is not a time of day such as \"08:00\""),
                );
                None
            }
        },
        (None, None, Some(q), Some(m)) if q.ms() > 0 && m.ms() >= q.ms() => Some(Window::Sliding {
            quiet_ms: q.ms(),
            at_most_ms: m.ms(),
        }),
        (None, None, Some(_), None) => {
            problem(
                at,
                "a sliding window needs `at_most` too, e.g. { quiet_for: 15m, at_most: 2h }".into(),
            );
            None
        }
        _ => {
            problem(at, "window needs one of { after_first: 1h }, { at: \"08:00\" } or { quiet_for: 15m, at_most: 2h } (at_most not shorter than quiet_for)".into());
            None
        }
    };
    let max_items = match &spec.max_items {
        None => DEFAULT_MAX_ITEMS,
        Some(m) if (1..=MOST_ITEMS).contains(&m.value) => m.value,
        Some(m) => {
            problem(
                &m.referenced,
                format!("max_items must be 1 to {MOST_ITEMS}: each waiting item's event is kept until the digest goes"),
            );
            DEFAULT_MAX_ITEMS
        }
    };
    let show = match &spec.show {
        None => Show::Last(DEFAULT_SHOWN),
        Some(s) => match (s.value.first, s.value.last) {
            (Some(n), None) if n > 0 => Show::First(n),
            (None, Some(n)) if n > 0 => Show::Last(n),
            _ => {
                problem(
                    &s.referenced,
                    "show takes one of { first: N } or { last: N }, N at least 1".into(),
                );
                Show::Last(DEFAULT_SHOWN)
            }
        },
    };
    let mut expression =
        |source: &Spanned<String>, what: &str| match conditions.compile(&source.value) {
            Ok(c) => Some(c),
            Err(e) => {
                problem(&source.referenced, format!("{what}: {}", e.message));
                None
            }
        };
    let group_by = spec
        .group_by
        .as_ref()
        .and_then(|g| expression(g, "digest.group_by"));
    let withdraw = spec.withdraw.as_ref().and_then(|w| {
        let condition = expression(&w.condition, "digest.withdraw.condition")?;
        let group = w
            .group
            .as_ref()
            .and_then(|g| expression(g, "digest.withdraw.group"));
        Some(Withdraw {
            sources: w.sources.clone().unwrap_or_else(|| sources.to_vec()),
            match_fields: w.match_fields.clone().into_iter().collect(),
            condition,
            group,
        })
    });
    Some(Digest {
        window: window?,
        max_items,
        first_at_once: spec.first_at_once,
        group_by,
        show,
        withdraw,
    })
}

/// `"08:00"` as (hour, minute).
fn local_time(text: &str) -> Option<(i8, i8)> {
    let (h, m) = text.trim().split_once(':')?;
    let (hour, minute): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&hour) && (0..60).contains(&minute) && m.len() == 2).then_some((hour, minute))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn digest(window: Window) -> Digest {
        Digest {
            window,
            max_items: 50,
            first_at_once: false,
            group_by: None,
            show: Show::Last(10),
            withdraw: None,
        }
    }

    fn zone(name: &str) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(name).unwrap()
    }

    #[test]
    fn a_time_of_day_window_closes_at_that_local_time_in_each_recipients_zone() {
        let d = digest(Window::At { hour: 8, minute: 0 });
        let first = at("2026-11-24T13:00:00Z");
        // 13:00 UTC is 07:00 in Chicago's winter (CST): 08:00 the same day.
        assert_eq!(
            d.closes_ms(first, first, &zone("America/Chicago")),
            at("2026-11-24T14:00:00Z")
        );
        // … and 14:00 in Paris: 08:00 the next morning.
        assert_eq!(
            d.closes_ms(first, first, &zone("Europe/Paris")),
            at("2026-11-25T07:00:00Z")
        );
    }

    #[test]
    fn time_of_day_windows_follow_daylight_saving_changes() {
        let d = digest(Window::At { hour: 8, minute: 0 });
        let chicago = zone("America/Chicago");
        // The night of 7–8 March 2026 Chicago moves to CDT (UTC-5): the
        // 08:00 after a 22:00 CST item is 13:00 UTC, not 14:00.
        let night = at("2026-03-08T04:00:00Z");
        assert_eq!(
            d.closes_ms(night, night, &chicago),
            at("2026-03-08T13:00:00Z")
        );
        // A window at 02:30, skipped that night, closes just after the gap.
        let gap = digest(Window::At {
            hour: 2,
            minute: 30,
        });
        assert_eq!(
            gap.closes_ms(night, night, &chicago),
            at("2026-03-08T08:30:00Z")
        );
        // Back to CST on 1 November: 08:00 CST is 14:00 UTC again.
        let autumn = at("2026-11-01T04:00:00Z");
        assert_eq!(
            d.closes_ms(autumn, autumn, &chicago),
            at("2026-11-01T14:00:00Z")
        );
    }

    #[test]
    fn a_sliding_window_closes_after_quiet_or_at_its_longest() {
        let d = digest(Window::Sliding {
            quiet_ms: 15 * 60_000,
            at_most_ms: 60 * 60_000,
        });
        let utc = jiff::tz::TimeZone::UTC;
        let first = at("2026-11-24T10:00:00Z");
        assert_eq!(d.closes_ms(first, first, &utc), at("2026-11-24T10:15:00Z"));
        let later = at("2026-11-24T10:10:00Z");
        assert_eq!(d.closes_ms(first, later, &utc), at("2026-11-24T10:25:00Z"));
        let late = at("2026-11-24T10:55:00Z");
        assert_eq!(
            d.closes_ms(first, late, &utc),
            at("2026-11-24T11:00:00Z"),
            "never past at_most"
        );
    }

    #[test]
    fn shown_items_are_the_first_or_last_n() {
        let mut d = digest(Window::AfterFirst(1));
        assert_eq!(d.shown(25), 15..25);
        assert_eq!(d.shown(3), 0..3);
        d.show = Show::First(5);
        assert_eq!(d.shown(25), 0..5);
    }

    #[test]
    fn times_of_day_are_checked() {
        assert_eq!(local_time("08:00"), Some((8, 0)));
        assert_eq!(local_time("23:59"), Some((23, 59)));
        for bad in ["24:00", "8", "08:60", "08:0", "eight"] {
            assert_eq!(local_time(bad), None, "{bad}");
        }
    }
}

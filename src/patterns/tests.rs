//! Every pattern kind from YAML, through the store, with an injected clock.

use std::sync::Arc;

use serde_json::{json, Value};

use super::detect::Input;
use super::store::{Late, PatternStore};
use super::Fired;
use crate::ingest::decode::Event;
use crate::rules::compile::Known;
use crate::rules::load::load_texts;
use crate::rules::{RuleSet, Verdict};

pub(super) const MIN: i64 = 60_000;

/// Loads one rule file (written in `dir`, so geofence files resolve there).
fn rules_in(dir: &std::path::Path, yaml: &str) -> RuleSet {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, yaml).unwrap();
    let known = Known {
        channels: None,
        sources: None,
        default_locale: None,
    };
    load_texts(&[(path, yaml.to_string())], &known).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn rules(yaml: &str) -> RuleSet {
    let dir = tempfile::tempdir().unwrap();
    rules_in(dir.path(), yaml)
}

pub(super) fn event(n: i64, at_ms: i64, fields: Value) -> Arc<Event> {
    Arc::new(Event {
        source: Arc::from("tx"),
        partition: 0,
        offset: n,
        key: Some("card-1".into()),
        user: "u1".into(),
        time_ms: at_ms,
        event_type: None,
        fields: fields.as_object().unwrap().clone().into(),
        consumed_ms: at_ms,
    })
}

/// Feeds one event to rule 0 the way the engine does; `now_ms` is the wall clock.
fn feed(
    set: &RuleSet,
    store: &PatternStore,
    e: &Arc<Event>,
    now_ms: i64,
) -> Result<Vec<Fired>, Late> {
    feed_key(set, store, "card-1", e, now_ms)
}

/// [`feed`] for the state of `key`.
pub(super) fn feed_key(
    set: &RuleSet,
    store: &PatternStore,
    key: &str,
    e: &Arc<Event>,
    now_ms: i64,
) -> Result<Vec<Fired>, Late> {
    observe_key(set, store, key, e, now_ms).map(|o| o.fired)
}

/// What rule 0 made of event `e` of `key` at `now_ms`.
pub(super) fn observe_key(
    set: &RuleSet,
    store: &PatternStore,
    key: &str,
    e: &Arc<Event>,
    now_ms: i64,
) -> Result<crate::patterns::detect::Observed, Late> {
    let rule = &set.rules[0];
    let pattern = rule.pattern.as_ref().unwrap();
    let scope = set.conditions.scope(&e.fields, None);
    let matched = set.check(0, &e.fields, Some(&scope)) == Verdict::Match;
    let input = Input {
        event: e,
        matched,
        profile: None,
        conditions: &set.conditions,
        scope: None,
    };
    store
        .observe(&rule.id, pattern, key, &input, now_ms)
        .map(|(o, _)| o)
}

fn due(set: &RuleSet, store: &PatternStore, now_ms: i64) -> Vec<Fired> {
    let pattern = set.rules[0].pattern.clone();
    store
        .due(now_ms, |_| pattern.clone())
        .fired
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

pub(super) const VELOCITY: &str = r#"
rules:
  - id: declined-velocity
    sources: [tx]
    match: { status: declined }
    pattern: { window: { count: 3, within: 5m }, lateness: 2m }
    channels: [sms]
    category: fraud
    template: { text: "{{ pattern.count }} declines" }
"#;

#[test]
fn a_window_fires_at_its_boundary_and_counts_late_events_within_lateness() {
    let set = rules(VELOCITY);
    let store = PatternStore::new(1000);
    let declined = json!({"status": "declined"});
    assert!(feed(&set, &store, &event(1, 0, declined.clone()), 0)
        .unwrap()
        .is_empty());
    assert!(feed(
        &set,
        &store,
        &event(2, 2 * MIN, json!({"status": "approved"})),
        0
    )
    .unwrap()
    .is_empty());
    assert!(feed(&set, &store, &event(3, 2 * MIN, declined.clone()), 0)
        .unwrap()
        .is_empty());
    let fired = feed(&set, &store, &event(4, 5 * MIN, declined.clone()), 0).unwrap();
    assert_eq!(
        fired.len(),
        1,
        "the third decline exactly five minutes after the first"
    );
    assert_eq!(fired[0].context["count"], 3);
    assert_eq!(fired[0].context["within_s"], 300, "the configured window");
    assert_eq!(fired[0].context["span_s"], 300.0, "first to last decline");
    assert_eq!(fired[0].summary["span_s"], 300.0);
    assert_eq!(fired[0].context["first"], declined);
    assert_eq!(fired[0].summary["events"][0]["offset"], 1);
    assert_eq!(fired[0].event.offset, 4);
    assert_eq!(
        store.keys_of("declined-velocity"),
        0,
        "the window fired and emptied: no state left"
    );

    // Out of order, within lateness: 10:00, 10:04 arrive, then 10:02 (late by 2 min).
    let store = PatternStore::new(1000);
    feed(&set, &store, &event(1, 10 * MIN, declined.clone()), 0).unwrap();
    feed(&set, &store, &event(2, 14 * MIN, declined.clone()), 0).unwrap();
    let fired = feed(&set, &store, &event(3, 12 * MIN, declined.clone()), 0).unwrap();
    assert_eq!(
        fired.len(),
        1,
        "a late event inside the allowed lateness counts"
    );

    // Beyond lateness: ignored, and said so.
    let store = PatternStore::new(1000);
    feed(&set, &store, &event(1, 20 * MIN, declined.clone()), 0).unwrap();
    feed(&set, &store, &event(2, 24 * MIN, declined.clone()), 0).unwrap();
    assert_eq!(
        feed(&set, &store, &event(3, 21 * MIN, declined.clone()), 0).unwrap_err(),
        Late { behind_ms: 3 * MIN }
    );
    assert!(
        feed(&set, &store, &event(4, 30 * MIN, declined), 0)
            .unwrap()
            .is_empty(),
        "10:20 fell out"
    );
}

#[test]
fn a_run_of_consecutive_readings_is_broken_by_a_normal_one() {
    let set = rules(
        r#"
rules:
  - id: freezer-warm-3
    sources: [tx]
    match: { metric: temperature }
    condition: event.value > event.limit
    pattern: { consecutive: 3 }
    channels: [sms]
    category: operations
    template: { text: "{{ pattern.count }} readings above" }
"#,
    );
    let store = PatternStore::new(1000);
    let reading = |n, v: f64| {
        event(
            n,
            n * MIN,
            json!({"metric": "temperature", "value": v, "limit": -10.0}),
        )
    };
    assert!(feed(&set, &store, &reading(1, -5.0), 0).unwrap().is_empty());
    assert!(feed(&set, &store, &reading(2, -4.0), 0).unwrap().is_empty());
    assert!(
        feed(&set, &store, &reading(3, -18.0), 0)
            .unwrap()
            .is_empty(),
        "a normal reading breaks the run"
    );
    assert!(feed(&set, &store, &reading(4, -6.0), 0).unwrap().is_empty());
    assert!(feed(&set, &store, &reading(5, -6.0), 0).unwrap().is_empty());
    let fired = feed(&set, &store, &reading(6, -2.0), 0).unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].context["count"], 3);
    assert_eq!(fired[0].context["first"]["value"], -6.0);
}

#[test]
fn a_crossing_fires_once_and_rearms_only_past_the_band() {
    let set = rules(
        r#"
rules:
  - id: low-balance
    sources: [tx]
    match: { status: approved }
    pattern: { crossing: { value: balance_after, below: 100, rearm: 50 } }
    channels: [push]
    category: transactional
    template: { body: "{{ pattern.value }}" }
"#,
    );
    let store = PatternStore::new(1000);
    let mut fires = Vec::new();
    for (n, balance) in [150.0, 90.0, 80.0, 120.0, 95.0, 160.0, 90.0, 99.0]
        .iter()
        .enumerate()
    {
        let e = event(
            n as i64,
            n as i64 * MIN,
            json!({"status": "approved", "balance_after": balance}),
        );
        fires.push(!feed(&set, &store, &e, 0).unwrap().is_empty());
    }
    assert_eq!(
        fires,
        [false, true, false, false, false, false, true, false],
        "once on the way down; back above 100 but not 150 does not re-arm"
    );
}

#[test]
fn a_sequence_sees_its_earlier_steps_and_its_time_limit() {
    let set = rules(
        r#"
rules:
  - id: abroad-after-home
    sources: [tx]
    pattern:
      sequence:
        within: 1h
        steps:
          - { name: home, match: { status: approved }, condition: "event.country == event.home_country" }
          - { name: abroad, match: { status: approved }, condition: "event.country != steps.home.country" }
    channels: [sms]
    category: fraud
    template: { text: "{{ pattern.steps.home.country }} then {{ pattern.steps.abroad.country }}" }
"#,
    );
    let swipe = |n, at, country: &str| {
        event(
            n,
            at,
            json!({"status": "approved", "country": country, "home_country": "US"}),
        )
    };
    let store = PatternStore::new(1000);
    assert!(feed(&set, &store, &swipe(1, 0, "US"), 0)
        .unwrap()
        .is_empty());
    assert!(
        feed(&set, &store, &swipe(2, 10 * MIN, "US"), 0)
            .unwrap()
            .is_empty(),
        "home again: a newer start"
    );
    let fired = feed(&set, &store, &swipe(3, 65 * MIN, "FR"), 0).unwrap();
    assert_eq!(fired.len(), 1, "within an hour of the newer home swipe");
    assert_eq!(fired[0].context["steps"]["home"]["country"], "US");
    assert_eq!(fired[0].context["steps"]["abroad"]["country"], "FR");
    assert_eq!(fired[0].summary["steps"], json!(["home", "abroad"]));

    let store = PatternStore::new(1000);
    feed(&set, &store, &swipe(1, 0, "US"), 0).unwrap();
    assert!(
        feed(&set, &store, &swipe(2, 61 * MIN, "FR"), 0)
            .unwrap()
            .is_empty(),
        "more than an hour later"
    );
}

pub(super) const ABSENCE: &str = r#"
rules:
  - id: browsed-no-purchase
    sources: [tx]
    pattern:
      absence:
        after: { name: browsed, match: { type: browse } }
        missing: { name: purchase, match: { type: purchase } }
        within: 30m
      lateness: 1m
    channels: [push]
    category: marketing
    template: { body: "Still thinking about {{ event.item }}?" }
"#;

#[test]
fn an_absence_fires_by_event_time_or_when_the_key_goes_silent() {
    let set = rules(ABSENCE);
    let browse = |n, at| event(n, at, json!({"type": "browse", "item": "shoes"}));
    let buy = |n, at| event(n, at, json!({"type": "purchase"}));

    // The stream moves on past the deadline (another key's event would do the same).
    let store = PatternStore::new(1000);
    feed(&set, &store, &browse(1, 0), 0).unwrap();
    assert!(due(&set, &store, 0).is_empty());
    feed(
        &set,
        &store,
        &event(2, 31 * MIN, json!({"type": "other"})),
        0,
    )
    .unwrap();
    let fired = due(&set, &store, 0);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].context["first"]["item"], "shoes");
    assert_eq!(fired[0].context["missing"], "purchase");

    // The key goes silent: the wall clock passes deadline + lateness.
    let store = PatternStore::new(1000);
    feed(&set, &store, &browse(1, 0), 0).unwrap();
    assert!(
        due(&set, &store, 30 * MIN).is_empty(),
        "waiting out the lateness"
    );
    assert_eq!(
        due(&set, &store, 31 * MIN).len(),
        1,
        "fires with no further event at all"
    );
    assert!(due(&set, &store, 40 * MIN).is_empty(), "once");

    // A purchase in time: nothing.
    let store = PatternStore::new(1000);
    feed(&set, &store, &browse(1, 0), 0).unwrap();
    feed(&set, &store, &buy(2, 29 * MIN), 0).unwrap();
    assert!(due(&set, &store, 60 * MIN).is_empty());
    assert_eq!(store.keys_of("browsed-no-purchase"), 0);
}

const MALL: &str = r#"{"type":"FeatureCollection","features":[
  {"type":"Feature","id":"mall","properties":{},
   "geometry":{"type":"Polygon","coordinates":[[[0,0],[0.0018,0],[0.0018,0.0018],[0,0.0018],[0,0]]]}}]}"#;

#[test]
fn a_geofence_enters_once_through_border_jitter_and_dwells_by_timer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mall.geojson"), MALL).unwrap();
    let set = rules_in(
        dir.path(),
        r#"
rules:
  - id: mall-enter
    sources: [tx]
    pattern: { geofence: { file: mall.geojson, on: enter } }
    channels: [push]
    category: marketing
    template: { body: "Welcome to {{ pattern.fence }}" }
"#,
    );
    let store = PatternStore::new(1000);
    let deg = 1.0 / 111_320.0;
    let mut entered = 0;
    for (n, lon) in [5.0 * deg, -5.0 * deg, 5.0 * deg, -5.0 * deg, 50.0 * deg]
        .iter()
        .enumerate()
    {
        let ping = event(
            n as i64,
            n as i64 * 1000,
            json!({"lat": 0.0009, "lon": lon, "accuracy": 8.0}),
        );
        for f in feed(&set, &store, &ping, 0).unwrap() {
            assert_eq!(f.context["fence"], "mall");
            entered += 1;
        }
    }
    assert_eq!(entered, 1, "jitter at the border: one enter");

    // Dwell: one ping inside, then silence; the timer fires at ten minutes.
    let set = rules_in(
        dir.path(),
        r#"
rules:
  - id: mall-dwell
    sources: [tx]
    pattern: { geofence: { file: mall.geojson, on: dwell, dwell: 10m } }
    channels: [push]
    category: marketing
    template: { body: "x" }
"#,
    );
    let store = PatternStore::new(1000);
    let inside = event(1, 0, json!({"lat": 0.0009, "lon": 0.0009}));
    assert!(feed(&set, &store, &inside, 0).unwrap().is_empty());
    assert!(due(&set, &store, 9 * MIN).is_empty());
    let fired = due(&set, &store, 11 * MIN);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].context["on"], "dwell");
}

#[test]
fn reload_keeps_state_unless_the_pattern_changed() {
    let store = PatternStore::new(1000);
    let declined = json!({"status": "declined"});
    let set = rules(VELOCITY);
    feed(&set, &store, &event(1, 0, declined.clone()), 0).unwrap();
    feed(&set, &store, &event(2, MIN, declined.clone()), 0).unwrap();
    // Same pattern, new template: the two declines still count.
    let same = rules(&VELOCITY.replace("declines", "declined payments"));
    assert_eq!(
        same.rules[0].pattern.as_ref().unwrap().fingerprint,
        set.rules[0].pattern.as_ref().unwrap().fingerprint
    );
    assert_eq!(
        feed(&same, &store, &event(3, 2 * MIN, declined.clone()), 0)
            .unwrap()
            .len(),
        1
    );

    feed(&set, &store, &event(4, 3 * MIN, declined.clone()), 0).unwrap();
    feed(&set, &store, &event(5, 4 * MIN, declined.clone()), 0).unwrap();
    // Changed pattern (count 4): starts fresh, the two earlier declines are gone.
    let changed = rules(&VELOCITY.replace("count: 3", "count: 4"));
    assert!(
        feed(&changed, &store, &event(6, 5 * MIN, declined.clone()), 0)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.keys_of("declined-velocity"),
        1,
        "only the newest decline"
    );
}

#[test]
fn keys_are_capped_and_state_moves_out_and_back_by_partition() {
    let set = rules(VELOCITY);
    let store = PatternStore::new(10);
    let rule = &set.rules[0];
    let pattern = rule.pattern.as_ref().unwrap();
    let mut evicted = 0;
    for n in 0..25 {
        let e = event(n, 0, json!({"status": "declined"}));
        let input = Input {
            event: &e,
            matched: true,
            profile: None,
            conditions: &set.conditions,
            scope: None,
        };
        evicted += store
            .observe(&rule.id, pattern, &format!("card-{n}"), &input, n)
            .unwrap()
            .1
            .len();
    }
    assert!(store.keys_of("declined-velocity") <= 10);
    assert_eq!(evicted, 15, "the least recently seen went first");
    let (keys, bytes) = store.size();
    assert!(keys <= 10 && bytes > 0);
    let taken = store.take_partition("tx", 0);
    assert_eq!(taken.len(), keys);
    assert_eq!(store.keys_of("declined-velocity"), 0);
    store.restore(taken);
    assert_eq!(store.keys_of("declined-velocity"), keys);
}

#[test]
fn mistakes_in_patterns_point_at_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("open.geojson"), r#"{"type":"Feature","id":"x","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}}"#).unwrap();
    let check = |yaml: &str| {
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, yaml).unwrap();
        let known = Known {
            channels: None,
            sources: None,
            default_locale: None,
        };
        load_texts(&[(path, yaml.to_string())], &known)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let head = "rules:\n  - id: p\n    sources: [tx]\n    channels: [push]\n    category: fraud\n    template: { body: x }\n";
    assert!(check(&format!(
        "{head}    pattern: {{ window: {{ count: 3, within: 0s }} }}\n"
    ))
    .contains("r.yaml:7:44: rule \"p\": duration `0s` must be longer than zero"));
    assert!(check(&format!(
        "{head}    pattern: {{ sequence: {{ within: 1h, steps: [] }} }}\n"
    ))
    .contains("r.yaml:7:47: rule \"p\": sequence needs at least two steps"));
    // Geofence files are relative to the rule file.
    assert!(check(&format!(
        "{head}    pattern: {{ geofence: {{ file: open.geojson, on: enter }} }}\n"
    ))
    .contains(
        "r.yaml:7:34: rule \"p\": geofence file `open.geojson`: fence `x`: polygon is not closed"
    ));
    assert!(check(&format!(
        "{head}    pattern: {{ geofence: {{ file: nowhere.geojson, on: enter }} }}\n"
    ))
    .contains("nowhere.geojson"));
    assert!(check(&format!("{head}    key: event.card\n"))
        .contains("`key` belongs to a rule with a `pattern`"));
}

#[test]
fn a_sequence_of_a_geofence_enter_then_a_swipe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mall.geojson"), MALL).unwrap();
    let set = rules_in(
        dir.path(),
        r#"
rules:
  - id: swiped-after-entering
    sources: [loc, tx]
    key: event.user_id
    pattern:
      sequence:
        within: 10m
        steps:
          - { name: entered, sources: [loc], geofence: { file: mall.geojson, on: enter } }
          - { name: swiped, sources: [tx], match: { status: approved } }
    channels: [push]
    category: marketing
    template: { body: "{{ pattern.steps.swiped.merchant }}" }
"#,
    );
    let store = PatternStore::new(1000);
    let from = |source: &str, n: i64, at: i64, fields: Value| {
        let mut e = (*event(n, at, fields)).clone();
        e.source = Arc::from(source);
        Arc::new(e)
    };
    let ping = |n, at, lon: f64| {
        from(
            "loc",
            n,
            at,
            json!({"user_id": "u1", "lat": 0.0009, "lon": lon}),
        )
    };
    let swipe = |n, at| {
        from(
            "tx",
            n,
            at,
            json!({"user_id": "u1", "status": "approved", "merchant": "Gap"}),
        )
    };
    assert!(
        feed(&set, &store, &swipe(1, 0), 0).unwrap().is_empty(),
        "a swipe before entering"
    );
    assert!(
        feed(&set, &store, &ping(2, MIN, -0.001), 0)
            .unwrap()
            .is_empty(),
        "outside"
    );
    assert!(
        feed(&set, &store, &ping(3, 2 * MIN, 0.0009), 0)
            .unwrap()
            .is_empty(),
        "entered"
    );
    let fired = feed(&set, &store, &swipe(4, 9 * MIN), 0).unwrap();
    assert_eq!(fired.len(), 1, "swiped seven minutes after entering");
    assert_eq!(fired[0].context["steps"]["swiped"]["merchant"], "Gap");
    // Still inside, so no new enter: a later swipe does not fire again.
    assert!(feed(&set, &store, &swipe(5, 10 * MIN), 0)
        .unwrap()
        .is_empty());
}

#[test]
fn a_keys_state_is_written_to_its_changelog_as_before_the_kinds_had_modules() {
    use super::kinds::{crossing::CrossingState, sequence::SequenceState};
    use super::KeyState;
    // The shapes an earlier herald wrote (one enum of struct variants): a
    // changelog written by it is restored, not dropped as unreadable.
    let crossing = KeyState::Crossing(CrossingState {
        armed: false,
        last: Some(3.5),
    });
    let text = serde_json::to_string(&crossing).unwrap();
    assert_eq!(text, r#"{"Crossing":{"armed":false,"last":3.5}}"#);
    let back: KeyState = serde_json::from_str(&text).unwrap();
    assert!(!back.is_idle(), "a disarmed crossing is not idle");
    let consecutive = KeyState::Consecutive(Vec::new());
    assert_eq!(
        serde_json::to_string(&consecutive).unwrap(),
        r#"{"Consecutive":[]}"#
    );
    let sequence = KeyState::Sequence(SequenceState {
        matched: Vec::new(),
        presence: Vec::new(),
    });
    assert_eq!(
        serde_json::to_string(&sequence).unwrap(),
        r#"{"Sequence":{"matched":[],"presence":[]}}"#
    );
    let absence: KeyState =
        serde_json::from_str(r#"{"Absence":{"waiting":[],"presence":[]}}"#).unwrap();
    assert!(absence.is_idle());
    assert!(
        serde_json::from_str::<KeyState>(r#"{"Rocket":{}}"#).is_err(),
        "an unknown kind is unreadable, not guessed"
    );
}

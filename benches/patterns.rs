//! Benches of rules with patterns, per event, against a plain rule's check on
//! the same events in the same run: a velocity window, a sequence, and a
//! geofence over 10,000 fences. Prints the state held per key once.

use std::path::Path;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use herald::config::SourceConfig;
use herald::ingest::decode::{decode, Event, Origin};
use herald::patterns::detect::Input;
use herald::patterns::PatternStore;
use herald::rules::load::load_texts;
use herald::rules::{Known, RuleSet, Verdict};
use herald::simulate::Generator;

const T0: i64 = 1_795_514_400_000;

/// Transactions from the simulator, one every 50 ms of event time, decoded.
fn transactions(n: usize) -> Vec<Arc<Event>> {
    let mut g = Generator::new(7, 1000, 10);
    let mapping = SourceConfig {
        user_field: "user_id".into(),
        time_field: Some("ts".into()),
        key_field: None,
        type_field: Some("status".into()),
    };
    let source: Arc<str> = Arc::from("transactions");
    let mut out = Vec::new();
    while out.len() < n {
        let at = T0 + out.len() as i64 * 50;
        let r = g.next(at);
        if r.topic != "transactions" {
            continue;
        }
        let payload = serde_json::to_vec(&r.value).unwrap();
        let origin = Origin {
            topic: "transactions",
            partition: 0,
            offset: out.len() as i64,
            key: Some(r.key.as_bytes()),
            timestamp_ms: Some(at),
        };
        out.push(Arc::new(
            decode(&source, &mapping, origin, Some(&payload), 1 << 16, at).unwrap(),
        ));
    }
    out
}

fn rule_set(dir: &Path, yaml: &str) -> RuleSet {
    let path = dir.join("bench.yaml");
    std::fs::write(&path, yaml).unwrap();
    let known = Known {
        channels: None,
        sources: None,
        default_locale: None,
    };
    load_texts(&[(path, yaml.to_string())], &known).unwrap()
}

/// Feeds every event to rule 0 as the engine does; returns the firings.
fn run(set: &RuleSet, store: &PatternStore, events: &[Arc<Event>]) -> usize {
    let rule = &set.rules[0];
    let pattern = rule.pattern.as_ref().unwrap();
    let mut fired = 0;
    for e in events {
        let scope = (rule.condition.is_some() || pattern.has_step_conditions())
            .then(|| set.conditions.scope(&e.fields, None));
        let matched = set.check(0, &e.fields, scope.as_ref()) == Verdict::Match;
        if !matched && !pattern.sees_all_events() {
            continue;
        }
        let input = Input {
            event: e,
            matched,
            profile: None,
            conditions: &set.conditions,
            scope: scope.as_ref(),
        };
        let key = e.key.as_deref().unwrap_or("");
        if let Ok((o, _)) = store.observe(&rule.id, pattern, key, &input, e.time_ms) {
            fired += o.fired.len();
        }
    }
    fired
}

const PLAIN: &str = r#"
rules:
  - { id: plain, sources: [transactions], match: { status: declined }, channels: [push], category: fraud, template: { body: x } }
"#;
const WINDOW: &str = r#"
rules:
  - { id: velocity, sources: [transactions], match: { status: declined }, pattern: { window: { count: 3, within: 5m } }, channels: [push], category: fraud, template: { body: x } }
"#;
const SUM: &str = r#"
rules:
  - { id: spend, sources: [transactions], match: { status: approved }, pattern: { window: { sum: amount, at_least: 500, within: 1h } }, channels: [push], category: fraud, template: { body: x } }
"#;
const SEQUENCE: &str = r#"
rules:
  - id: abroad-after-home
    sources: [transactions]
    pattern:
      sequence:
        within: 1h
        steps:
          - { name: home, match: { status: approved }, condition: "event.country == event.home_country" }
          - { name: abroad, match: { status: approved }, condition: "event.country != steps.home.country" }
    channels: [push]
    category: fraud
    template: { body: x }
"#;

/// 10,000 fences on a 100 × 100 grid of 0.01° cells, each 0.005° square.
fn fences_file(dir: &Path) {
    let text = herald::patterns::geofence::grid_geojson(100);
    std::fs::write(dir.join("grid.geojson"), text).unwrap();
}

const GEOFENCE: &str = r#"
rules:
  - { id: enter, sources: [locations], pattern: { geofence: { file: grid.geojson, on: enter } }, channels: [push], category: marketing, template: { body: x } }
"#;

/// Pings of 1,000 phones wandering over the grid.
fn pings(n: usize) -> Vec<Arc<Event>> {
    let mut state: u64 = 42;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let fields = serde_json::json!({"lat": next(), "lon": next(), "accuracy": 10.0});
            Arc::new(Event {
                source: Arc::from("locations"),
                partition: 0,
                offset: i as i64,
                key: Some(format!("phone-{}", i % 1000).into()),
                user: format!("u-{}", i % 1000).into(),
                time_ms: T0 + i as i64 * 50,
                event_type: None,
                fields: fields.as_object().unwrap().clone().into(),
                consumed_ms: T0,
            })
        })
        .collect()
}

fn bench_patterns(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    fences_file(dir.path());
    let events = transactions(10_000);
    let located = pings(10_000);
    let sets = [
        (
            "plain rule (baseline)",
            rule_set(dir.path(), PLAIN),
            &events,
        ),
        ("window count", rule_set(dir.path(), WINDOW), &events),
        ("window sum", rule_set(dir.path(), SUM), &events),
        ("sequence", rule_set(dir.path(), SEQUENCE), &events),
        (
            "geofence 10k fences",
            rule_set(dir.path(), GEOFENCE),
            &located,
        ),
    ];
    for (name, set, input) in &sets[1..] {
        let store = PatternStore::new(1_000_000);
        run(set, &store, input);
        let (keys, bytes) = store.size();
        eprintln!(
            "state after 10,000 events, {name}: {keys} keys, {} bytes per key",
            bytes / keys.max(1)
        );
    }
    let mut group = c.benchmark_group("patterns");
    group.throughput(Throughput::Elements(10_000));
    let (_, plain, _) = &sets[0];
    group.bench_function("plain rule (baseline)", |b| {
        b.iter(|| {
            let mut n = 0;
            for e in &events {
                n += usize::from(plain.check(0, &e.fields, None) == Verdict::Match);
            }
            black_box(n)
        })
    });
    for (name, set, input) in &sets[1..] {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let store = PatternStore::new(1_000_000);
                black_box(run(set, &store, input))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_patterns);
criterion_main!(benches);

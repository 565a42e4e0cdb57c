//! Benches of the per-event path, each against a baseline measured in the same run:
//! decode against bare `serde_json` parsing; the indexed rule set against a plain
//! scan of every rule; rendering a push message.

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::config::SourceConfig;
use herald::ingest::decode::{decode, Origin};
use herald::render::{RuleScope, Scope};
use herald::rules::load::load_texts;
use herald::rules::{Known, RuleSet, Verdict};
use herald::simulate::Generator;

fn events(n: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(7, 1000, 10);
    let mut out = Vec::new();
    while out.len() < n {
        let r = g.next(1_795_514_400_000);
        if r.topic == "transactions" {
            out.push(serde_json::to_vec(&r.value).unwrap());
        }
    }
    out
}

/// `n` rules over the transactions topic: most keyed on a merchant that
/// rarely occurs, as a large real rule base is (each rule is about one thing).
fn rules(n: usize) -> RuleSet {
    let merchants = [
        "Blue Bottle",
        "Whole Foods",
        "Shell",
        "Apple Store",
        "Uber",
        "Amazon",
        "Chez Panisse",
        "Walgreens",
    ];
    let mut text = String::from("rules:\n");
    for i in 0..n {
        let merchant = merchants
            .get(i)
            .map_or_else(|| format!("Merchant {i}"), |m| m.to_string());
        text.push_str(&format!(
            "  - id: rule-{i}\n    sources: [transactions]\n    match: {{ merchant: \"{merchant}\" }}\n    condition: event.amount > {}.0\n    channels: [push]\n    category: transactional\n    template: {{ title: \"{{{{ event.merchant }}}}\", body: \"{{{{ event.amount | money(event.currency) }}}} on {{{{ event.card_last4 | mask_card }}}}\" }}\n",
            i % 50
        ));
    }
    let known = Known {
        channels: None,
        sources: None,
        default_locale: None,
    };
    load_texts(&[(PathBuf::from("bench.yaml"), text)], &known).unwrap()
}

fn bench_decode(c: &mut Criterion) {
    let payloads = events(1000);
    let mapping = SourceConfig {
        user_field: "user_id".into(),
        time_field: Some("ts".into()),
        key_field: None,
        type_field: Some("status".into()),
    };
    let source: Arc<str> = Arc::from("transactions");
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(payloads.len() as u64));
    group.bench_function("serde_json_only (baseline)", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(serde_json::from_slice::<serde_json::Value>(p).unwrap());
            }
        })
    });
    let now = herald::util::now_ms();
    group.bench_function("herald_decode", |b| {
        b.iter(|| {
            for (i, p) in payloads.iter().enumerate() {
                let origin = Origin {
                    topic: "transactions",
                    partition: 0,
                    offset: i as i64,
                    key: Some(b"card"),
                    timestamp_ms: None,
                };
                black_box(decode(&source, &mapping, origin, Some(p), 65536, now).unwrap());
            }
        })
    });
    group.finish();
}

fn bench_match(c: &mut Criterion) {
    let payloads = events(200);
    // Each event's fields as the pipeline holds them.
    let fields: Vec<herald::ingest::fields::Fields> = payloads
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(fields.len() as u64));
    for n in [10usize, 1_000, 10_000] {
        let set = rules(n);
        group.bench_with_input(BenchmarkId::new("plain_scan (baseline)", n), &n, |b, _| {
            b.iter(|| {
                let mut hits = 0;
                for f in &fields {
                    let scope = set.conditions.scope(f, None);
                    for i in 0..set.rules.len() {
                        hits += usize::from(set.check(i, f, Some(&scope)) == Verdict::Match);
                    }
                }
                black_box(hits)
            })
        });
        group.bench_with_input(BenchmarkId::new("indexed", n), &n, |b, _| {
            b.iter(|| {
                let mut hits = 0;
                for f in &fields {
                    let scope = set.conditions.scope(f, None);
                    for i in set.candidates("transactions", f) {
                        hits += usize::from(set.check(i, f, Some(&scope)) == Verdict::Match);
                    }
                }
                black_box(hits)
            })
        });
    }
    group.finish();
}

fn bench_render(c: &mut Criterion) {
    let set = rules(10);
    let payloads = events(100);
    // Each event's fields as the pipeline holds them.
    let fields: Vec<std::sync::Arc<herald::ingest::fields::Fields>> = payloads
        .iter()
        .map(|p| std::sync::Arc::new(serde_json::from_slice(p).unwrap()))
        .collect();
    let en = herald::render::TextLocale::default_locale();
    let scope = |f: &std::sync::Arc<herald::ingest::fields::Fields>| Scope {
        locale: &en,
        event: std::sync::Arc::clone(f) as _,
        profile: None,
        rule: RuleScope {
            id: "rule-0",
            category: "transactional",
            description: "",
        },
        pattern: None,
        digest: None,
    };
    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(fields.len() as u64));
    // minijinja's interpreter alone (the baseline), then herald's render: the
    // planned path for templates of its shape.
    group.bench_function("push_title_and_body_interpreted", |b| {
        b.iter(|| {
            for f in &fields {
                let seen = scope(f);
                black_box(set.templates.interpret("rule-0/title", &seen).unwrap());
                black_box(set.templates.interpret("rule-0/body", &seen).unwrap());
            }
        })
    });
    group.bench_function("push_title_and_body", |b| {
        b.iter(|| {
            for f in &fields {
                let seen = scope(f);
                black_box(set.templates.render("rule-0/title", &seen).unwrap());
                black_box(set.templates.render("rule-0/body", &seen).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_match, bench_render);
criterion_main!(benches);

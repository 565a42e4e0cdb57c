//! Profile ingest: records of the compacted profiles topic applied to the
//! profile table (parse, phone and time-zone validation, upsert), as at start-up.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::metrics::Metrics;
use herald::profile::ProfileTable;

fn records(n: usize, phones: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let user = format!("u-{i}");
            let phone = if phones {
                format!(r#""phone": "+1415555{:04}", "#, i % 10_000)
            } else {
                String::new()
            };
            let value = format!(
                r#"{{"user_id": "{user}", "push_tokens": [{{"token": "tok-{i:06}-abcdef", "platform": "android"}}], {phone}"time_zone": "America/New_York", "consent": {{"push": true, "sms": true}}, "preferences": {{"marketing": true}}}}"#
            );
            (user.into_bytes(), value.into_bytes())
        })
        .collect()
}

fn bench_ingest(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("profiles");
    group.sample_size(10);
    for (name, phones) in [("with_phone", true), ("without_phone (baseline)", false)] {
        let recs = records(20_000, phones);
        group.throughput(Throughput::Elements(recs.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let table = ProfileTable::new();
                for (k, v) in &recs {
                    table.apply(Some(k), Some(v), &metrics);
                }
                table
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_ingest);
criterion_main!(benches);

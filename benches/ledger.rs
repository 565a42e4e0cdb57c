//! The send ledger on disk, per decision: what stage 2 asks of it in service
//! — `seen` for a new intent (a key not on disk) and for a redelivery (one
//! that is), a user's counted sends when the caps' cache does not hold them,
//! and recording an entry (kept in memory, then on disk once its changelog
//! write resolves; here the changelog is in memory) — over 1,000,000 entries
//! of 200,000 users (`HERALD_BENCH_KEYS` to change it).

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use herald::outcome::Recorder;
use herald::state::{Changelog, LedgerEntry, LedgerStatus, SendLedger};

const USERS: usize = 200_000;

fn entry(i: usize, now: i64) -> LedgerEntry {
    LedgerEntry {
        user: format!("user-{}", i % USERS).into(),
        status: LedgerStatus::Sent,
        at_ms: now - (i as i64 % 86_400_000),
        category: "transactional".into(),
        rule: "purchase-notice".into(),
        idempotency_key: herald::util::digest_hex(&herald::util::stable_digest(
            &[&i.to_be_bytes()],
        )),
    }
}

fn key(i: usize) -> String {
    format!("transactions/0/{i}/purchase-notice/push")
}

fn bench_ledger(c: &mut Criterion) {
    // Under `cargo test` (no `--bench`), a quick pass over a small ledger.
    let benching = std::env::args().any(|a| a == "--bench");
    let keys: usize = std::env::var("HERALD_BENCH_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 2_000 });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = herald::store::Store::temporary(256 << 20).unwrap();
    let table = store
        .table("ledger", herald::state::ledger_store::FORMAT)
        .unwrap();
    let (recorder, _) = Recorder::in_memory("outcomes".into(), "dlq".into());
    let changelog = Changelog::new("ledger-changelog".into(), recorder, Default::default());
    let ledger = SendLedger::new(1, changelog, Some(table));
    let now = herald::util::now_ms();
    let filled = Instant::now();
    runtime.block_on(async {
        for chunk in (0..keys).collect::<Vec<_>>().chunks(10_000) {
            let writes: Vec<_> = chunk
                .iter()
                .filter_map(|&i| ledger.record(&key(i), entry(i, now)))
                .collect();
            futures::future::join_all(writes).await;
        }
    });
    println!(
        "filled {keys} entries in {:.1} s ({} rows on disk)",
        filled.elapsed().as_secs_f64(),
        ledger.len()
    );
    let mut g = c.benchmark_group("send ledger on disk");
    let mut i = 0usize;
    g.bench_function("seen, a new intent (not on disk)", |b| {
        b.iter(|| {
            i += 1;
            black_box(ledger.seen("user-7", &key(keys + i)))
        })
    });
    g.bench_function("seen, a redelivery (on disk)", |b| {
        b.iter(|| {
            i = (i + 7_919) % keys;
            black_box(ledger.seen(&format!("user-{}", i % USERS), &key(i)))
        })
    });
    g.bench_function("sends of a user (5 on disk), a caps cache miss", |b| {
        b.iter(|| {
            i = (i + 7_919) % USERS;
            black_box(ledger.sends_of(&format!("user-{i}"), now - 86_400_000))
        })
    });
    g.bench_function("record attempted then sent (to disk, 2 rows each)", |b| {
        b.iter(|| {
            i += 1;
            let k = key(keys + i);
            let mut e = entry(keys + i, now);
            e.status = LedgerStatus::Attempted;
            runtime.block_on(ledger.record(&k, e.clone()).unwrap());
            e.status = LedgerStatus::Sent;
            runtime.block_on(ledger.record(&k, e).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, bench_ledger);
criterion_main!(benches);

//! Restore time of the send ledger on disk: 1,000,000 keys written to one
//! changelog partition on a real broker, then read back by
//! `SendLedger::restore` into an empty state directory (a partition that
//! moves to an instance that never had it), beside the bare read of the same
//! records in the same run; then 10,000 more records and a restore by a new
//! ledger on the same directory (a restart: only the tail past the
//! checkpoint), and the bytes on disk per entry. Then the same for pattern
//! state's copy on disk. `HERALD_BENCH_ONLY=ledger` or `=patterns` runs one
//! part.
//!
//! Needs a broker: `HERALD_BENCH_BROKERS=127.0.0.1:19092 cargo bench --bench
//! restore` (`scripts/broker.sh start` runs one). Without it, it says so and
//! exits 0, so `cargo test --all-targets` passes by it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::outcome::{KafkaWriter, Recorder, WriteHealth};
use herald::state::{Changelog, LedgerEntry, LedgerStatus, SendLedger};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn main() {
    let Ok(brokers) = std::env::var("HERALD_BENCH_BROKERS") else {
        println!(
            "restore bench skipped: set HERALD_BENCH_BROKERS to a broker (scripts/broker.sh start)"
        );
        return;
    };
    let keys: usize = std::env::var("HERALD_BENCH_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = format!("bench-ledger-{}", std::process::id());
    let client = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .clone();
    let now = herald::util::now_ms();
    if std::env::var("HERALD_BENCH_ONLY").as_deref() == Ok("patterns") {
        let health = Arc::new(WriteHealth::new(
            prometheus::IntGauge::new("g", "g").unwrap(),
            prometheus::IntCounter::new("c", "c").unwrap(),
        ));
        let writer = Arc::new(KafkaWriter::new(client.clone(), health).unwrap());
        let recorder = Recorder::new(writer, "unused".into(), "unused".into());
        patterns(&runtime, &client, &recorder, keys);
        return;
    }

    runtime
        .block_on(herald::kafka::topics::create_with(
            &client,
            &[herald::kafka::topics::Need::compacted(&topic, 1)],
        ))
        .unwrap();
    let written = Instant::now();
    runtime.block_on(async {
        let producer: FutureProducer = client
            .clone()
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        let mut pending = Vec::with_capacity(50_000);
        for i in 0..keys {
            let entry = LedgerEntry {
                user: format!("user-{}", i % 200_000).into(),
                status: LedgerStatus::Sent,
                at_ms: now - (i as i64 % 86_400_000),
                category: "transactional".into(),
                rule: "purchase-notice".into(),
                idempotency_key: herald::util::digest_hex(&herald::util::stable_digest(&[
                    &i.to_be_bytes()
                ])),
            };
            let key = format!("transactions/0/{i}/purchase-notice/push");
            let value = herald::state::wire::encode_ledger(&entry);
            let record = FutureRecord::to(&topic)
                .partition(0)
                .key(&key)
                .payload(&value);
            match producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((e, _)) => panic!("produce: {e}"),
            }
            if pending.len() == 50_000 {
                for f in pending.drain(..) {
                    f.await.unwrap().unwrap();
                }
            }
        }
        for f in pending.drain(..) {
            f.await.unwrap().unwrap();
        }
    });
    let written = written.elapsed();

    // The floor: the same records read with a bare consumer, nothing parsed.
    let bare = Instant::now();
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "bench-restore")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut read = 0usize;
    while read < high as usize {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            read += m.payload().map_or(0, |_| 1);
        }
    }
    let bare = bare.elapsed();
    drop(consumer);

    let health = Arc::new(WriteHealth::new(
        prometheus::IntGauge::new("g", "g").unwrap(),
        prometheus::IntCounter::new("c", "c").unwrap(),
    ));
    let writer = Arc::new(KafkaWriter::new(client.clone(), health).unwrap());
    let recorder = Recorder::new(writer, "unused".into(), "unused".into());
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store = herald::store::Store::open(dir.path(), 256 << 20).unwrap();
        let table = store
            .table("ledger", herald::state::ledger_store::FORMAT)
            .unwrap();
        let changelog = Changelog::new(topic.clone(), recorder.clone(), client.clone());
        (store, SendLedger::new(1, changelog, Some(table)))
    };
    let (store, ledger) = open();
    let restore = Instant::now();
    let restored = ledger.restore(&[0], now, Duration::from_secs(30)).unwrap();
    let restore = restore.elapsed();
    assert_eq!(restored.records, keys);
    let sends = ledger.sends_of("user-7", now - 86_400_000).len();
    assert_eq!(sends, keys / 200_000, "every send of a user counted");

    // A restart: 10,000 more records, then a new ledger on the same directory.
    let tail = 10_000;
    runtime.block_on(async {
        let writes: Vec<_> = (0..tail)
            .map(|i| {
                let entry = LedgerEntry {
                    user: format!("user-{i}").into(),
                    status: LedgerStatus::Sent,
                    at_ms: now,
                    category: "transactional".into(),
                    rule: "purchase-notice".into(),
                    idempotency_key: "".into(),
                };
                recorder.publish_to(
                    &topic,
                    0,
                    &format!("transactions/0/tail-{i}/purchase-notice/push"),
                    Some(serde_json::to_vec(&entry).unwrap()),
                )
            })
            .collect();
        futures::future::join_all(writes).await;
    });
    let table = store
        .table("ledger", herald::state::ledger_store::FORMAT)
        .unwrap();
    table.settle().unwrap();
    let tables = table.disk_bytes();
    drop((ledger, store, table));
    let size = dir_bytes(dir.path());
    let (_store, ledger) = open();
    let again = Instant::now();
    let tail_read = ledger.restore(&[0], now, Duration::from_secs(30)).unwrap();
    let again = again.elapsed();
    assert_eq!(tail_read.records, tail, "only the tail past the checkpoint");

    let per_s = |d: Duration| keys as f64 / d.as_secs_f64();
    println!("send-ledger restore, {keys} keys on one changelog partition (200,000 users):");
    println!(
        "  written in          {:>7.2} s ({:>9.0} records/s)",
        written.as_secs_f64(),
        per_s(written)
    );
    println!(
        "  bare read (floor)   {:>7.2} s ({:>9.0} records/s)",
        bare.as_secs_f64(),
        per_s(bare)
    );
    println!(
        "  restore to disk     {:>7.2} s ({:>9.0} records/s): a partition new to this instance",
        restore.as_secs_f64(),
        per_s(restore)
    );
    println!(
        "  restart             {:>7.3} s: {} records past the checkpoint, {} skipped",
        again.as_secs_f64(),
        tail_read.records,
        tail_read.skipped
    );
    println!(
        "  on disk             {:>7.1} MB of table once compacted, {:.0} bytes per entry (entry and send row); {:.1} MB with the journal",
        tables as f64 / 1e6,
        tables as f64 / (keys + tail) as f64,
        size as f64 / 1e6
    );
    if std::env::var("HERALD_BENCH_ONLY").as_deref() != Ok("ledger") {
        patterns(&runtime, &client, &recorder, keys);
    }
}

/// Pattern state: `keys` window states (three events each, as the
/// changelog holds them: keys blinded, values sealed) on one changelog
/// partition, restored through its sealed copy on disk — first into an
/// empty directory, then, as a restart, from the disk and the checkpoint.
fn patterns(
    runtime: &tokio::runtime::Runtime,
    client: &ClientConfig,
    recorder: &Recorder,
    keys: usize,
) {
    let topic = format!("bench-patterns-{}", std::process::id());
    runtime
        .block_on(herald::kafka::topics::create_with(
            client,
            &[herald::kafka::topics::Need::compacted(&topic, 1)],
        ))
        .unwrap();
    let now = herald::util::now_ms();
    let dir = tempfile::tempdir().unwrap();
    // The state key the restores use (made in the directory by the first open).
    let sealer = herald::store::Store::open(dir.path(), 64 << 20)
        .unwrap()
        .sealer()
        .clone();
    let seal = std::sync::Arc::new(herald::state::sealed::ChangelogSeal::new(
        sealer,
        None,
        herald::patterns::store::identity,
    ));
    runtime.block_on(async {
        for chunk in (0..keys).collect::<Vec<_>>().chunks(50_000) {
            let writes: Vec<_> = chunk
                .iter()
                .map(|i| {
                    let events: Vec<_> = (0..3)
                        .map(|j| serde_json::json!({"at_ms": now - j * 60_000, "offset": i * 3 + j as usize, "fields": {"amount": 12.5, "merchant": "Cafe 21"}}))
                        .collect();
                    let record = serde_json::json!({
                        "rule": "declined-velocity", "fingerprint": "3f2a9c", "key": format!("card-{i}"),
                        "newest_ms": now, "touched_ms": now, "applied": i * 3 + 2,
                        "state": {"Window": {"events": events}},
                    });
                    let key = seal.key("declined-velocity", &format!("card-{i}"));
                    let value = seal.seal(&key, &serde_json::to_vec(&record).unwrap());
                    recorder.publish_to(&topic, 0, &key, Some(value))
                })
                .collect();
            futures::future::join_all(writes).await;
        }
    });
    let restore = || {
        let opened = Instant::now();
        let store = herald::store::Store::open(dir.path(), 256 << 20).unwrap();
        let opened = opened.elapsed();
        let name = herald::state::mirror::Mirror::table_name(&topic);
        let table = store
            .sealed_table(&name, herald::state::mirror::FORMAT)
            .unwrap();
        let changelog = Changelog::new(topic.clone(), recorder.clone(), client.clone())
            .sealed(std::sync::Arc::clone(&seal))
            .mirrored(table, herald::patterns::on_disk::wake_of);
        let started = Instant::now();
        let read = changelog
            .restore_all(&[0], Duration::from_secs(30))
            .unwrap();
        let took = started.elapsed();
        println!(
            "  (store opened in {:.2} s; {} records read)",
            opened.as_secs_f64(),
            read.read
        );
        // A key's first event after the restart reads its state from disk.
        let mirror = changelog.mirror().unwrap();
        let looked = Instant::now();
        let lookups = 20_000.min(keys);
        for i in 0..lookups {
            let key = seal.key("declined-velocity", &format!("card-{}", (i * 7919) % keys));
            assert!(mirror.get(0, &key).unwrap().is_some());
        }
        println!(
            "  (a key read from disk: {:.1} µs each, {lookups} keys)",
            looked.elapsed().as_secs_f64() * 1e6 / lookups as f64
        );
        took
    };
    let first = restore();
    let again = restore();
    println!("pattern-state restore, {keys} window keys on one changelog partition, sealed copy on disk:");
    println!(
        "  into an empty directory {:>7.2} s ({:>9.0} records/s)",
        first.as_secs_f64(),
        keys as f64 / first.as_secs_f64()
    );
    println!(
        "  restart, from disk      {:>7.2} s ({:>9.0} rows/s), 0 records past the checkpoint",
        again.as_secs_f64(),
        keys as f64 / again.as_secs_f64()
    );
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| match e.path().is_dir() {
            true => dir_bytes(&e.path()),
            false => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

//! store-bench: the measurements behind herald's choice of embedded store (BENCHMARKS.md, "State store").
//!
//! `store-bench load DIR N` writes N profile-sized records in atomic
//! batches of 10,000 (each batch also writes the checkpoint key, as herald
//! will), then reads 1,000,000 random keys; it prints write and read rates,
//! peak RSS and bytes on disk. `store-bench crash DIR ROUNDS` runs a
//! writer child, kills it with SIGKILL at a random moment, reopens the store
//! and checks that every batch up to the checkpoint is whole and nothing past
//! it is half there; it prints the reopen times. `store-bench commits DIR N`
//! makes N commits of 10 keys each, as herald's live path does.
//!
//! Every engine writes without fsync but crash-safe for a process crash
//! (RocksDB and fjall: write-ahead log flushed to the OS per batch), except
//! redb, whose only crash-safe commit is `Durability::Immediate` (fsync).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BATCH: u64 = 10_000;
const CACHE: usize = 256 << 20;
const CHECKPOINT: &[u8] = b"\x00checkpoint";

trait Store {
    /// Writes the batch and the checkpoint atomically.
    fn write(&mut self, items: &[(Vec<u8>, Vec<u8>)], checkpoint: u64);
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
}

#[cfg(feature = "rocksdb")]
mod engine {
    pub const NAME: &str = "rocksdb";
    pub struct Db(rocksdb::DB);
    pub fn open(dir: &std::path::Path) -> Db {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(super::CACHE));
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(64 << 20);
        opts.increase_parallelism(2);
        Db(rocksdb::DB::open(&opts, dir).unwrap())
    }
    impl super::Store for Db {
        fn write(&mut self, items: &[(Vec<u8>, Vec<u8>)], checkpoint: u64) {
            let mut batch = rocksdb::WriteBatch::default();
            for (k, v) in items {
                batch.put(k, v);
            }
            batch.put(super::CHECKPOINT, checkpoint.to_be_bytes());
            self.0.write(batch).unwrap();
        }
        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.0.get_pinned(key).unwrap().map(|v| v.to_vec())
        }
    }
}

#[cfg(feature = "fjall")]
mod engine {
    pub const NAME: &str = "fjall";
    pub struct Db(fjall::Database, fjall::Keyspace);
    pub fn open(dir: &std::path::Path) -> Db {
        let db = fjall::Database::builder(dir)
            .cache_size(super::CACHE as u64)
            .open()
            .unwrap();
        let ks = db
            .keyspace("profiles", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        Db(db, ks)
    }
    impl super::Store for Db {
        fn write(&mut self, items: &[(Vec<u8>, Vec<u8>)], checkpoint: u64) {
            let mut batch = self.0.batch();
            for (k, v) in items {
                batch.insert(&self.1, k.as_slice(), v.as_slice());
            }
            batch.insert(&self.1, super::CHECKPOINT, checkpoint.to_be_bytes().as_slice());
            batch.commit().unwrap();
        }
        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.1.get(key).unwrap().map(|v| v.to_vec())
        }
    }
}

#[cfg(feature = "redb")]
mod engine {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    pub const NAME: &str = "redb";
    const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("profiles");
    pub struct Db(redb::Database);
    pub fn open(dir: &std::path::Path) -> Db {
        std::fs::create_dir_all(dir).unwrap();
        let db = redb::Database::builder()
            .set_cache_size(super::CACHE)
            .create(dir.join("store.redb"))
            .unwrap();
        Db(db)
    }
    impl super::Store for Db {
        fn write(&mut self, items: &[(Vec<u8>, Vec<u8>)], checkpoint: u64) {
            let txn = self.0.begin_write().unwrap();
            {
                let mut t = txn.open_table(TABLE).unwrap();
                for (k, v) in items {
                    t.insert(k.as_slice(), v.as_slice()).unwrap();
                }
                t.insert(super::CHECKPOINT, checkpoint.to_be_bytes().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            let txn = self.0.begin_read().unwrap();
            let t = match txn.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return None,
                Err(e) => panic!("{e}"),
            };
            t.get(key).unwrap().map(|v| v.value().to_vec())
        }
    }
}

/// A small deterministic generator (xorshift), so runs are repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("user-{i:010}").into_bytes()
}

/// About the size and entropy of a compact profile: a phone number, a
/// locale and zone, a push token, preferences. `round` changes it.
fn value(i: u64, round: u64) -> Vec<u8> {
    let mut rng = Rng(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round ^ 1);
    let token: String = (0..8).map(|_| format!("{:016x}", rng.next())).collect();
    format!(
        "{{\"phone\":\"+1555{:07}\",\"locale\":\"en-US\",\"tz\":\"America/New_York\",\"round\":{round},\"token\":\"{}\"}}",
        i % 10_000_000,
        &token[..100]
    )
    .into_bytes()
}

fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn load(dir: &Path, n: u64) {
    let started = Instant::now();
    let mut db = engine::open(dir);
    let opened = started.elapsed();
    let started = Instant::now();
    let mut items = Vec::with_capacity(BATCH as usize);
    let mut next = 0;
    while next < n {
        items.clear();
        for i in next..(next + BATCH).min(n) {
            items.push((key(i), value(i, 0)));
        }
        next += items.len() as u64;
        db.write(&items, next);
    }
    let wrote = started.elapsed();
    let rss_after_write = peak_rss_mb();
    let reads = 1_000_000u64;
    let mut rng = Rng(42);
    let started = Instant::now();
    let mut found = 0;
    for _ in 0..reads {
        let i = rng.next() % n;
        if let Some(v) = db.get(&key(i)) {
            assert_eq!(v, value(i, 0));
            found += 1;
        }
    }
    let read = started.elapsed();
    assert_eq!(found, reads);
    drop(db);
    println!(
        "{} keys={n} open_ms={} write_per_s={:.0} read_per_s={:.0} peak_rss_mb={} (after writes {}) disk_mb={:.0} bytes_per_key={:.0}",
        engine::NAME,
        opened.as_millis(),
        n as f64 / wrote.as_secs_f64(),
        reads as f64 / read.as_secs_f64(),
        peak_rss_mb(),
        rss_after_write,
        disk_bytes(dir) as f64 / 1e6,
        disk_bytes(dir) as f64 / n as f64
    );
}

/// Small commits, as herald's live path makes them: `commits` batches of 10
/// keys each (and the checkpoint), into a store of 1,000,000 keys.
fn small_commits(dir: &Path, commits: u64) {
    let mut db = engine::open(dir);
    let mut items = Vec::with_capacity(10);
    let started = Instant::now();
    for c in 0..commits {
        items.clear();
        for k in 0..10 {
            let i = (c * 10 + k) % 1_000_000;
            items.push((key(i), value(i, c)));
        }
        db.write(&items, c + 1);
    }
    let took = started.elapsed();
    println!(
        "{} small commits={commits} (10 keys each) commits_per_s={:.0}",
        engine::NAME,
        commits as f64 / took.as_secs_f64()
    );
}

/// The child: rewrites keys 0..1,000,000 round after round, printing each
/// committed checkpoint, until killed. It goes on from the checkpoint it
/// finds, so every batch number (and every value) is new.
fn write_forever(dir: &Path) {
    let mut db = engine::open(dir);
    let mut out = std::io::stdout();
    let keys = 1_000_000;
    let mut items = Vec::with_capacity(BATCH as usize);
    let from = db
        .get(CHECKPOINT)
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
        .unwrap_or(0);
    for batch in from + 1.. {
        items.clear();
        let first = (batch - 1) * BATCH % keys;
        for i in first..first + BATCH {
            items.push((key(i), value(i, batch)));
        }
        db.write(&items, batch);
        writeln!(out, "{batch}").unwrap();
        out.flush().unwrap();
    }
}

/// Kills a writer at a random moment, reopens, and checks what is there.
fn crash(dir: &Path, rounds: u64) {
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(7);
    let mut opens = Vec::new();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["write-forever", &dir.display().to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wait = Duration::from_millis(1_000 + rng.next() % 3_000);
        let started = Instant::now();
        let mut acknowledged = 0u64;
        while started.elapsed() < wait {
            match lines.next() {
                Some(Ok(l)) => acknowledged = l.parse().unwrap(),
                _ => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let started = Instant::now();
        let db = engine::open(dir);
        let opened = started.elapsed();
        let checkpoint = db
            .get(CHECKPOINT)
            .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
            .unwrap_or(0);
        assert!(
            checkpoint >= acknowledged,
            "round {round}: checkpoint {checkpoint} behind acknowledged batch {acknowledged}"
        );
        // The checkpoint's batch is whole: every key holds its value.
        if checkpoint > 0 {
            let first = (checkpoint - 1) * BATCH % 1_000_000;
            for i in first..first + BATCH {
                assert_eq!(
                    db.get(&key(i)),
                    Some(value(i, checkpoint)),
                    "round {round}: key {i} of checkpoint batch {checkpoint}"
                );
            }
            // Nothing of the batch after it (it wrote the next keys).
            let next = checkpoint * BATCH % 1_000_000;
            for i in next..next + BATCH {
                assert_ne!(db.get(&key(i)), Some(value(i, checkpoint + 1)));
            }
        }
        opens.push(opened.as_millis());
        println!(
            "{} round {round}: killed after batch {acknowledged}, reopened at checkpoint {checkpoint} in {} ms, whole",
            engine::NAME,
            opened.as_millis()
        );
        drop(db);
    }
    opens.sort();
    println!(
        "{} crash rounds={rounds} all consistent; reopen ms median={} max={}",
        engine::NAME,
        opens[opens.len() / 2],
        opens[opens.len() - 1]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("load") => load(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("crash") => crash(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("commits") => small_commits(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("write-forever") => write_forever(Path::new(&args[2])),
        _ => {
            eprintln!("usage: store-bench load DIR N | crash DIR ROUNDS (built with one engine feature)");
            std::process::exit(2);
        }
    }
}

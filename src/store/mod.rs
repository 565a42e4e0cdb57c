//! store: herald's embedded key-value store on local disk (fjall), one per instance under `state.dir` — a cache of Kafka, with the offsets each table holds.
//!
//! Every table is filled from a Kafka topic and can be rebuilt from it, so
//! the directory needs no backup. A table's data and the topic offsets it
//! holds (its checkpoint) are written in one atomic batch: whatever a crash
//! leaves, the table is exactly its topic up to the checkpoint, and a restart
//! reads only the tail past it. A table written by another format, a store
//! that will not open, or a checkpoint past the topic's end (a topic deleted
//! and made again) is cleared and rebuilt from the topic, never used as is.
//!
//! Why fjall, and the measurements against RocksDB and redb: BENCHMARKS.md,
//! "State store".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::warn;

pub mod seal;
pub mod watch;

pub use seal::{KeySource, Sealer};

/// Why the store cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {dir}: {detail}")]
    Open { dir: PathBuf, detail: String },
    #[error("state table `{table}`: {detail}")]
    Io { table: String, detail: String },
}

/// The state directory's one store.
#[derive(Clone)]
pub struct Store {
    db: fjall::Database,
    meta: fjall::Keyspace,
    dir: PathBuf,
    slot: u32,
    /// What sealed tables' values are sealed with.
    sealer: Sealer,
    /// The last write error, until a write succeeds again: `/readyz` says it.
    fault: Arc<Mutex<Option<StoreError>>>,
    /// A temporary store's directory, removed with the last handle.
    removal: Option<Arc<Removal>>,
}

/// Removes a directory when dropped.
struct Removal(PathBuf);

impl Drop for Removal {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One table of the store, e.g. `profiles`.
#[derive(Clone)]
pub struct Table {
    store: Store,
    data: fjall::Keyspace,
    name: String,
    /// Whether values are sealed (`Store::sealed_table`).
    sealed: bool,
}

/// A value read from a table: as stored, or opened from its seal.
#[derive(Debug)]
pub enum Value {
    Plain(fjall::Slice),
    Opened(Vec<u8>),
}

impl std::ops::Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Value::Plain(slice) => slice,
            Value::Opened(bytes) => bytes,
        }
    }
}

/// The most journal the store keeps before it flushes memtables to its
/// files (fjall's default is 512 MiB): a start replays what is in the
/// journal, at ~60 MB/s here, so this bounds that part of a restart to
/// about a second (BENCHMARKS.md, "Feedback state on disk").
const JOURNAL_BYTES: u64 = 64 << 20;

/// The next offset to read per partition, for the topic a table is filled from.
pub type Checkpoint = BTreeMap<i32, i64>;

/// How long a compacted topic keeps a tombstone (Kafka's default
/// `delete.retention.ms`, a day). A table whose checkpoint is older may
/// have missed a deletion the topic no longer holds, so it is rebuilt.
pub const TOMBSTONES_KEPT_MS: i64 = 86_400_000;

impl Store {
    /// Opens (or creates) the store under `dir`, with `cache_bytes` of block
    /// cache. Each running instance takes the first free slot,
    /// `dir/instance-1`, `instance-2`, …: every table holds its own
    /// checkpoint, so any slot is a valid start for any instance of the
    /// deployment (a global table's rows are the same everywhere). A slot
    /// that will not open (damaged, or written by an incompatible version)
    /// is moved aside and started empty: its tables are rebuilt from Kafka.
    /// Sealed tables use the key of `HERALD_STATE_KEY`, or else one kept
    /// in `dir/state.key` ([`Sealer::for_dir`]).
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let failed = |e: &dyn std::fmt::Display| StoreError::Open {
            dir: dir.to_owned(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
        let sealer = Sealer::for_dir(dir).map_err(|e| failed(&e))?;
        Store::open_with(dir, cache_bytes, sealer)
    }

    fn open_with(dir: &Path, cache_bytes: u64, sealer: Sealer) -> Result<Store, StoreError> {
        const SLOTS: u32 = 16;
        let failed = |e: &fjall::Error| StoreError::Open {
            dir: dir.to_owned(),
            detail: explain(e),
        };
        let io_failed = |e: std::io::Error| StoreError::Open {
            dir: dir.to_owned(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io_failed)?;
        for slot in 1..=SLOTS {
            let path = dir.join(format!("instance-{slot}"));
            let open = || {
                fjall::Database::builder(&path)
                    .cache_size(cache_bytes)
                    .max_journaling_size(JOURNAL_BYTES)
                    .open()
            };
            let db = match open() {
                Ok(db) => db,
                Err(fjall::Error::Locked) => continue,
                // A full, read-only or missing disk: the store is not
                // damaged; opening it again later may succeed.
                Err(e) if is_io(&e) => return Err(failed(&e)),
                Err(e) => {
                    let aside =
                        dir.join(format!("instance-{slot}.unusable-{}", std::process::id()));
                    warn!(dir = %path.display(), error = %e, moved_to = %aside.display(), "state store will not open; starting it empty, to be rebuilt from Kafka");
                    std::fs::rename(&path, &aside).map_err(io_failed)?;
                    open().map_err(|e| failed(&e))?
                }
            };
            let meta = db
                .keyspace("meta", fjall::KeyspaceCreateOptions::default)
                .map_err(|e| failed(&e))?;
            return Ok(Store {
                db,
                meta,
                dir: path,
                slot,
                sealer,
                fault: Arc::new(Mutex::new(None)),
                removal: None,
            });
        }
        Err(StoreError::Open {
            dir: dir.to_owned(),
            detail: format!("all {SLOTS} instance slots are in use by running instances"),
        })
    }

    /// A store in a fresh temporary directory, removed when its last handle
    /// is dropped (the offline tools' profiles).
    pub fn temporary(cache_bytes: u64) -> Result<Store, StoreError> {
        let dir = std::env::temp_dir().join(format!(
            "herald-store-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut store = Store::open_with(&dir, cache_bytes, Sealer::ephemeral())?;
        store.removal = Some(Arc::new(Removal(dir)));
        Ok(store)
    }

    /// The number of this instance's slot (`instance-<n>`): the same for a
    /// restarted instance, different for each one running on the host.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// This instance's slot in the state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the state key came from.
    pub fn key_source(&self) -> &KeySource {
        &self.sealer.source
    }

    /// The state key (for what is sealed outside the store: the pattern
    /// changelogs' records).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The table `name`, holding records of `format`: a table written with
    /// another format (an older herald's) is cleared with its checkpoint.
    pub fn table(&self, name: &str, format: u32) -> Result<Table, StoreError> {
        self.open_table(name, format, false)
    }

    /// [`Store::table`] whose values are sealed under the state key (rows
    /// that hold phone numbers or push tokens). Sealed under another key
    /// (the key changed), the table is cleared and rebuilt from Kafka.
    pub fn sealed_table(&self, name: &str, format: u32) -> Result<Table, StoreError> {
        let table = self.open_table(name, format, true)?;
        let key = table.meta_key("seal");
        let io = |e: fjall::Error| table.io(e);
        let opens = self
            .meta
            .get(&key)
            .map_err(io)?
            .is_some_and(|check| self.sealer.open(&key, &check).is_some());
        if !opens {
            warn!(
                table = name,
                "state table sealed under another key (or not at all); rebuilding it from Kafka"
            );
            table.clear()?;
            self.meta
                .insert(&key, self.sealer.seal(&key, b"herald"))
                .map_err(io)?;
        }
        Ok(table)
    }

    fn open_table(&self, name: &str, format: u32, sealed: bool) -> Result<Table, StoreError> {
        let io = |e: fjall::Error| StoreError::Io {
            table: name.to_string(),
            detail: e.to_string(),
        };
        let data = self
            .db
            .keyspace(name, fjall::KeyspaceCreateOptions::default)
            .map_err(io)?;
        let table = Table {
            store: self.clone(),
            data,
            name: name.to_string(),
            sealed,
        };
        let key = table.meta_key("format");
        let found = self.meta.get(&key).map_err(io)?;
        let wanted = format.to_be_bytes();
        if found.as_deref() != Some(&wanted[..]) {
            if found.is_some() {
                warn!(
                    table = name,
                    "state table written by another format; rebuilding it from Kafka"
                );
            }
            table.clear()?;
            self.meta.insert(key, wanted).map_err(io)?;
        }
        Ok(table)
    }

    /// The last write error, if writes are failing now (a full or read-only disk).
    pub fn fault(&self) -> Option<StoreError> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note(&self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        let mut fault = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(()) => *fault = None,
            // fjall refuses every write after a failed one ("poisoned"):
            // the first error is the one that says why.
            Err(_) if fault.is_some() => {}
            Err(e) => *fault = Some(e.clone()),
        }
        result
    }
}

/// The file system's error under a fjall error (full, read-only, missing),
/// rather than one about what fjall found in its files.
fn io_error(e: &fjall::Error) -> Option<&std::io::Error> {
    match e {
        fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e)) => Some(e),
        _ => None,
    }
}

fn is_io(e: &fjall::Error) -> bool {
    io_error(e).is_some()
}

/// An error as an operator reads it: a fjall error that comes from the file
/// system as the system's own words ("No space left on device (os error
/// 28)"), not fjall's debug form.
fn explain<E: std::fmt::Display + 'static>(e: &E) -> String {
    let any: &dyn std::any::Any = e;
    match any.downcast_ref::<fjall::Error>().and_then(io_error) {
        Some(io) => io.to_string(),
        None if matches!(any.downcast_ref(), Some(fjall::Error::Poisoned)) => {
            "the store refuses writes after an earlier failed one".into()
        }
        None => e.to_string(),
    }
}

impl Table {
    fn meta_key(&self, what: &str) -> Vec<u8> {
        format!("{}\0{what}", self.name).into_bytes()
    }

    fn at_key(&self, partition: i32) -> Vec<u8> {
        let mut key = self.meta_key("at\0");
        key.extend_from_slice(&partition.to_be_bytes());
        key
    }

    fn checkpoint_key(&self, partition: i32) -> Vec<u8> {
        let mut key = self.meta_key("offset\0");
        key.extend_from_slice(&partition.to_be_bytes());
        key
    }

    fn io(&self, e: impl std::fmt::Display + 'static) -> StoreError {
        StoreError::Io {
            table: self.name.clone(),
            detail: explain(&e),
        }
    }

    /// `key` blinded under the state key ([`Sealer::blind`]).
    pub fn blind(&self, key: &[u8]) -> [u8; 16] {
        self.store.sealer.blind(key)
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `key`. A sealed value that does not open (altered on
    /// disk) is an error.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, StoreError> {
        match self.data.get(key).map_err(|e| self.io(e))? {
            Some(stored) => self.opened(key, stored).map(Some),
            None => Ok(None),
        }
    }

    /// The rows whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<(fjall::Slice, Value)>, StoreError> {
        let mut rows = Vec::new();
        self.for_each(prefix, |key, value| rows.push((key, value)))?;
        Ok(rows)
    }

    /// Hands each row whose key starts with `prefix` to `f`, in key order,
    /// without collecting them.
    pub fn for_each(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(fjall::Slice, Value),
    ) -> Result<(), StoreError> {
        for kv in self.data.prefix(prefix) {
            let (key, value) = kv.into_inner().map_err(|e| self.io(e))?;
            let value = self.opened(&key, value)?;
            f(key, value);
        }
        Ok(())
    }

    /// The keys that start with `prefix`.
    pub fn keys(&self, prefix: &[u8]) -> Result<Vec<fjall::Slice>, StoreError> {
        self.data
            .prefix(prefix)
            .map(|kv| kv.key().map_err(|e| self.io(e)))
            .collect()
    }

    /// The keys from `from` to `to` (both included), in key order, at most
    /// `limit` of them; values are not read (index rows).
    pub fn keys_between(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<fjall::Slice>, StoreError> {
        self.data
            .range(from..=to)
            .take(limit)
            .map(|kv| kv.key().map_err(|e| self.io(e)))
            .collect()
    }

    /// Every row `keep` keeps, reading the whole table (a sweep).
    pub fn scan_where(
        &self,
        keep: impl Fn(&[u8], &[u8]) -> bool,
    ) -> Result<Vec<(fjall::Slice, Value)>, StoreError> {
        let mut rows = Vec::new();
        for kv in self.data.iter() {
            let (key, value) = kv.into_inner().map_err(|e| self.io(e))?;
            let value = self.opened(&key, value)?;
            if keep(&key, &value) {
                rows.push((key, value));
            }
        }
        Ok(rows)
    }

    fn opened(&self, key: &[u8], stored: fjall::Slice) -> Result<Value, StoreError> {
        if !self.sealed {
            return Ok(Value::Plain(stored));
        }
        match self.store.sealer.open(key, &stored) {
            Some(plain) => Ok(Value::Opened(plain)),
            None => Err(self.io("a value does not open with the state key")),
        }
    }

    /// About how many keys the table holds (cheap; exact after compaction).
    pub fn approximate_len(&self) -> usize {
        self.data.approximate_len()
    }

    /// Writes what the table holds in memory to its files and compacts
    /// them into the last level, as a table running for a while would be
    /// (compressed there, not in the first levels); the benchmarks measure
    /// bytes on disk after it.
    pub fn settle(&self) -> Result<(), StoreError> {
        self.data
            .rotate_memtable_and_wait()
            .and_then(|()| self.data.major_compact())
            .map_err(|e| self.io(e))
    }

    /// Bytes the table takes on disk (its files; not what is still only in
    /// memory and the journal).
    pub fn disk_bytes(&self) -> u64 {
        self.data.disk_space()
    }

    /// The offsets the table holds: the next offset to read per partition.
    pub fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        let prefix = self.meta_key("offset\0");
        let mut offsets = Checkpoint::new();
        for kv in self.store.meta.prefix(&prefix) {
            let (key, value) = kv.into_inner().map_err(|e| self.io(e))?;
            let (Ok(p), Ok(o)) = (
                <[u8; 4]>::try_from(&key[prefix.len()..]),
                <[u8; 8]>::try_from(&value[..]),
            ) else {
                return Err(self.io("unreadable checkpoint"));
            };
            offsets.insert(i32::from_be_bytes(p), i64::from_be_bytes(o));
        }
        Ok(offsets)
    }

    /// [`Table::checkpoint`] without the partitions whose checkpoint was
    /// written longer than [`TOMBSTONES_KEPT_MS`] ago (logged), for a table
    /// filled from a compacted topic whose tombstones may be gone since:
    /// those partitions are to be rebuilt.
    pub fn fresh_checkpoint(&self) -> Result<Checkpoint, StoreError> {
        let now = crate::util::now_ms();
        let mut checkpoint = self.checkpoint()?;
        let mut stale = Vec::new();
        for &partition in checkpoint.keys() {
            let at = self
                .store
                .meta
                .get(self.at_key(partition))
                .map_err(|e| self.io(e))?
                .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
                .map(i64::from_be_bytes);
            if at.is_none_or(|at| now - at > TOMBSTONES_KEPT_MS) {
                stale.push(partition);
            }
        }
        if !stale.is_empty() {
            warn!(table = %self.name, partitions = ?stale, "checkpoint older than a compacted topic keeps its tombstones; those partitions are rebuilt from Kafka");
        }
        checkpoint.retain(|p, _| !stale.contains(p));
        Ok(checkpoint)
    }

    /// Removes the rows of `partition` (those whose key starts with its
    /// four big-endian bytes), in batches, and sets its checkpoint to `next`
    /// with the last: a partition read again from `next`.
    pub fn clear_partition(&self, partition: i32, next: i64) -> Result<(), StoreError> {
        let mut batch = self.batch();
        for key in self.keys(&partition.to_be_bytes())? {
            batch.delete(&key);
            if batch.len() >= 4096 {
                std::mem::replace(&mut batch, self.batch()).commit()?;
            }
        }
        batch.read_to(partition, next);
        batch.commit()
    }

    /// Runs `write` until it succeeds, every second, with a warning naming
    /// `what` (the store's fault is on `/readyz` meanwhile): its caller
    /// waits, so nothing after it is taken as done.
    pub async fn until_written(what: &str, mut write: impl FnMut() -> Result<(), StoreError>) {
        /// When the last warning was logged: one every ten seconds for all
        /// waiting writers together, not one per write.
        static WARNED_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        while let Err(e) = write() {
            let now = crate::util::now_ms();
            let last = WARNED_MS.load(std::sync::atomic::Ordering::Relaxed);
            if now - last >= 10_000
                && WARNED_MS
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                warn!(error = %e, "{what} cannot be written to the state store; every write retries each second (this warning repeats every 10 s)");
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Empties the table and forgets its checkpoint: it is read again from
    /// the topic's start.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.data.clear().map_err(|e| self.io(e))?;
        let prefix = self.meta_key("offset\0");
        for kv in self.store.meta.prefix(&prefix) {
            let key = kv.key().map_err(|e| self.io(e))?;
            self.store.meta.remove(key).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// A batch of writes to this table, committed atomically with its checkpoint.
    pub fn batch(&self) -> TableBatch {
        TableBatch {
            table: self.clone(),
            batch: self.store.db.batch(),
            offsets: BTreeMap::new(),
            len: 0,
        }
    }
}

/// Writes to one table and the offsets they bring it to, applied together or
/// not at all.
pub struct TableBatch {
    table: Table,
    batch: fjall::OwnedWriteBatch,
    offsets: BTreeMap<i32, i64>,
    len: usize,
}

impl TableBatch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        let value = match self.table.sealed {
            true => self.table.store.sealer.seal(key, &value),
            false => value,
        };
        self.batch.insert(&self.table.data, key, value);
        self.len += 1;
    }

    /// Sets `key` to an empty value, not sealed: a row of an index whose
    /// key says everything (read with [`Table::keys_between`], never opened).
    pub fn put_marker(&mut self, key: &[u8]) {
        self.batch.insert(&self.table.data, key, []);
        self.len += 1;
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) {
        self.batch.remove(&self.table.data, key);
        self.len += 1;
    }

    /// Records that the table now holds `partition` up to (not including) `next`.
    pub fn read_to(&mut self, partition: i32, next: i64) {
        self.offsets.insert(partition, next);
    }

    /// Writes in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no write and no offset.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.offsets.is_empty()
    }

    /// Applies the batch: the writes and the checkpoint, atomically. The
    /// write reaches the operating system before this returns, so it
    /// survives the process being killed (not a power cut: the table is
    /// then rebuilt from Kafka past what the disk kept).
    pub fn commit(self) -> Result<(), StoreError> {
        let TableBatch {
            table,
            mut batch,
            offsets,
            ..
        } = self;
        let now = crate::util::now_ms().to_be_bytes();
        for (partition, next) in offsets {
            batch.insert(
                &table.store.meta,
                table.checkpoint_key(partition),
                next.to_be_bytes(),
            );
            batch.insert(&table.store.meta, table.at_key(partition), now);
        }
        let result = batch.commit().map_err(|e| table.io(e));
        table.store.note(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_and_its_checkpoint_survive_a_reopen_together() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8 << 20).unwrap();
            let table = store.table("profiles", 1).unwrap();
            assert!(table.checkpoint().unwrap().is_empty());
            let mut batch = table.batch();
            batch.put(b"u-1", b"one".to_vec());
            batch.put(b"u-2", b"two".to_vec());
            batch.read_to(0, 2);
            batch.read_to(3, 7);
            batch.commit().unwrap();
            let mut batch = table.batch();
            batch.delete(b"u-2");
            batch.read_to(0, 3);
            batch.commit().unwrap();
        }
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        assert!(store.dir().ends_with("instance-1"), "{:?}", store.dir());
        let table = store.table("profiles", 1).unwrap();
        assert_eq!(table.get(b"u-1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(table.get(b"u-2").unwrap().as_deref(), None);
        assert_eq!(
            table.checkpoint().unwrap(),
            Checkpoint::from([(0, 3), (3, 7)])
        );
        assert!(store.fault().is_none());
    }

    #[test]
    fn a_table_of_another_format_is_cleared_with_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8 << 20).unwrap();
            let table = store.table("profiles", 1).unwrap();
            let mut batch = table.batch();
            batch.put(b"u-1", b"old".to_vec());
            batch.read_to(0, 1);
            batch.commit().unwrap();
            let other = store.table("ledger", 1).unwrap();
            let mut batch = other.batch();
            batch.put(b"k", b"v".to_vec());
            batch.commit().unwrap();
        }
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        let table = store.table("profiles", 2).unwrap();
        assert_eq!(
            table.get(b"u-1").unwrap().as_deref(),
            None,
            "rebuilt, not read as the new format"
        );
        assert!(table.checkpoint().unwrap().is_empty());
        let other = store.table("ledger", 1).unwrap();
        assert!(other.get(b"k").unwrap().is_some(), "other tables are kept");
    }

    #[test]
    fn a_sealed_table_keeps_no_clear_text_and_is_rebuilt_under_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let phone = b"+33612345678";
        {
            let store = Store::open(dir.path(), 8 << 20).unwrap();
            assert!(matches!(store.key_source(), KeySource::File(_)));
            let table = store.sealed_table("profiles", 2).unwrap();
            let mut batch = table.batch();
            batch.put(b"u-1", phone.to_vec());
            batch.read_to(0, 1);
            batch.commit().unwrap();
            assert_eq!(table.get(b"u-1").unwrap().as_deref(), Some(&phone[..]));
        }
        let clear_on_disk = walk(dir.path()).iter().any(|f| {
            std::fs::read(f)
                .unwrap()
                .windows(phone.len())
                .any(|w| w == phone)
        });
        assert!(
            !clear_on_disk,
            "the phone number is nowhere on disk in clear"
        );
        {
            let store = Store::open(dir.path(), 8 << 20).unwrap();
            let table = store.sealed_table("profiles", 2).unwrap();
            assert_eq!(table.get(b"u-1").unwrap().as_deref(), Some(&phone[..]));
            assert_eq!(table.checkpoint().unwrap(), Checkpoint::from([(0, 1)]));
        }
        std::fs::write(dir.path().join("state.key"), hex::encode([7u8; 32])).unwrap();
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        let table = store.sealed_table("profiles", 2).unwrap();
        assert_eq!(table.get(b"u-1").unwrap().as_deref(), None, "rebuilt");
        assert!(table.checkpoint().unwrap().is_empty());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            match path.is_dir() {
                true => files.extend(walk(&path)),
                false => files.push(path),
            }
        }
        files
    }

    #[test]
    fn a_second_instance_on_one_machine_takes_the_next_slot() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), 8 << 20).unwrap();
        let second = Store::open(dir.path(), 8 << 20).unwrap();
        assert_ne!(first.dir(), second.dir());
        assert!(second.dir().ends_with("instance-2"));
        drop(first);
        let third = Store::open(dir.path(), 8 << 20).unwrap();
        assert!(
            third.dir().ends_with("instance-1"),
            "a freed slot is taken again"
        );
    }

    #[test]
    fn a_store_that_will_not_open_is_moved_aside_and_started_empty() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("instance-1");
        std::fs::create_dir_all(&slot).unwrap();
        // Not a store: a version marker no fjall wrote.
        std::fs::write(slot.join("version"), b"garbage").unwrap();
        let store = Store::open(dir.path(), 8 << 20).unwrap();
        let table = store.table("profiles", 1).unwrap();
        assert!(table.checkpoint().unwrap().is_empty());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("unusable"));
        assert!(aside, "the unusable store is kept aside for a look");
    }
}

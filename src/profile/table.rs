//! The profile table: a global table every instance keeps (as Kafka Streams' GlobalKTable), on local disk with a bounded cache, filled from the compacted profiles topic from its checkpoint on.
//!
//! Every instance reads every partition of the profiles topic (every
//! instance may need any user). A profile is validated once, when its record
//! is read — the phone normalised to E.164 and its digest made — and kept on
//! disk in that form, so a restart reads only the records written since the
//! table's checkpoint and a lookup never parses a phone again. The instance
//! is ready only once each partition has reached its end once.
//!
//! The offline tools keep their few profiles in memory (`ProfileTable::new`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashSet;
use rdkafka::{ClientConfig, Message};
use tracing::{info, warn};

use super::Profile;
use crate::kafka::follow::{Follower, Progress as FollowProgress, Start};
use crate::metrics::Metrics;
use crate::store::{StoreError, Table, TableBatch};
use crate::util::{fingerprint, FastDashMap};

/// Records applied per atomic write while loading.
const BATCH: usize = 4_096;

/// All known profiles, by user id, and the push tokens found dead.
pub struct ProfileTable {
    backing: Backing,
    dead_tokens: DashSet<String>,
    /// True once every partition of the topic was read to its end once.
    caught_up: tokio::sync::watch::Sender<bool>,
    /// While loading: records read and the total to read.
    progress: Mutex<Progress>,
}

enum Backing {
    /// Every profile in memory (the offline tools).
    Memory(FastDashMap<String, Arc<Profile>>),
    /// On disk, with the most recently used profiles in memory.
    Disk {
        table: Table,
        cache: quick_cache::sync::Cache<String, Arc<Profile>>,
    },
}

/// How far the first load has come.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Records read since this start.
    pub read: u64,
    /// Records to read to reach the end of every partition, as found at the start.
    pub total: u64,
    /// Milliseconds since reading began.
    pub elapsed_ms: u64,
}

impl Progress {
    /// Estimated milliseconds left at the rate so far.
    pub fn eta_ms(&self) -> Option<u64> {
        (self.read > 0 && self.total > self.read)
            .then(|| (self.total - self.read) * self.elapsed_ms / self.read)
    }
}

/// Whether the table may be trusted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStatus {
    Loading,
    CaughtUp,
}

impl Default for ProfileTable {
    fn default() -> Self {
        ProfileTable::with(Backing::Memory(FastDashMap::default()))
    }
}

impl ProfileTable {
    /// The format of a profile on disk; a table of another format is rebuilt.
    pub const FORMAT: u32 = 1;

    /// An empty table in memory (the offline tools, tests).
    pub fn new() -> Arc<ProfileTable> {
        Arc::new(ProfileTable::default())
    }

    /// The table kept in `table` on disk, with at most `cache_entries`
    /// profiles in memory.
    pub fn on_disk(table: Table, cache_entries: usize) -> Arc<ProfileTable> {
        Arc::new(ProfileTable::with(Backing::Disk {
            table,
            cache: quick_cache::sync::Cache::new(cache_entries.max(1)),
        }))
    }

    fn with(backing: Backing) -> ProfileTable {
        ProfileTable {
            backing,
            dead_tokens: DashSet::new(),
            caught_up: tokio::sync::watch::Sender::new(false),
            progress: Mutex::new(Progress::default()),
        }
    }

    /// The profile of `user`, if any. A profile on disk that cannot be read
    /// is logged and treated as absent (the message is suppressed
    /// `no_profile`, never sent with a guess).
    pub fn get(&self, user: &str) -> Option<Arc<Profile>> {
        match &self.backing {
            Backing::Memory(map) => map.get(user).map(|p| Arc::clone(&p)),
            Backing::Disk { table, cache } => {
                if let Some(p) = cache.get(user) {
                    return Some(p);
                }
                let stored = match table.get(user.as_bytes()) {
                    Ok(stored) => stored?,
                    Err(e) => {
                        warn!(user = %fingerprint(user), error = %e, "profile cannot be read from the state store");
                        return None;
                    }
                };
                let profile = Arc::new(decode(user, &stored)?);
                cache.insert(user.to_string(), Arc::clone(&profile));
                Some(profile)
            }
        }
    }

    /// Number of profiles held (about, on disk).
    pub fn len(&self) -> usize {
        match &self.backing {
            Backing::Memory(map) => map.len(),
            Backing::Disk { table, .. } => table.approximate_len(),
        }
    }

    /// Whether the table holds no profile.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks a push token as no longer registered (FCM `UNREGISTERED`), so it is
    /// not used again. Only its fingerprint is kept.
    pub fn mark_token_dead(&self, token: &str) {
        self.dead_tokens.insert(fingerprint(token));
    }

    /// Whether a push token was found dead.
    pub fn is_token_dead(&self, token: &str) -> bool {
        !self.dead_tokens.is_empty() && self.dead_tokens.contains(&fingerprint(token))
    }

    /// Loading until every partition of the topic was read to its end once.
    pub fn status(&self) -> TableStatus {
        if *self.caught_up.borrow() {
            TableStatus::CaughtUp
        } else {
            TableStatus::Loading
        }
    }

    /// How far loading has come.
    pub fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the table has caught up with the topic.
    pub async fn wait_caught_up(&self) {
        let mut signal = self.caught_up.subscribe();
        let _ = signal.wait_for(|caught_up| *caught_up).await;
    }

    /// Applies one record of the profiles topic: a value upserts, a tombstone
    /// deletes. Returns false when the record was refused (counted and logged
    /// without content). On disk, the write goes into `batch`.
    fn apply_into(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        metrics: &Metrics,
        batch: Option<&mut TableBatch>,
    ) -> bool {
        let Some(user) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            metrics.profile_errors.inc();
            warn!("profile record without a UTF-8 key ignored");
            return false;
        };
        let profile = match value {
            None => None,
            Some(bytes) => match Profile::parse(user, bytes) {
                Ok((profile, problems)) => {
                    for problem in &problems {
                        metrics.profile_errors.inc();
                        warn!(user = %fingerprint(user), %problem, "profile part left out");
                    }
                    Some(profile)
                }
                Err(e) => {
                    metrics.profile_errors.inc();
                    warn!(user = %fingerprint(user), error = %e, "profile record refused");
                    return false;
                }
            },
        };
        match (&self.backing, profile) {
            (Backing::Memory(map), Some(p)) => {
                map.insert(user.to_string(), Arc::new(p));
            }
            (Backing::Memory(map), None) => {
                map.remove(user);
            }
            (Backing::Disk { .. }, profile) => {
                if let Some(batch) = batch {
                    match &profile {
                        Some(p) => batch.put(user.as_bytes(), encode(p)),
                        None => batch.delete(user.as_bytes()),
                    }
                }
            }
        }
        true
    }

    /// Applies one profile record (the offline tools' way in).
    pub fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>, metrics: &Metrics) -> bool {
        match &self.backing {
            Backing::Memory(_) => self.apply_into(key, value, metrics, None),
            Backing::Disk { table, .. } => {
                let mut pending = Pending {
                    batch: Some(table.batch()),
                    users: key
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .map(str::to_string)
                        .into_iter()
                        .collect(),
                    failed: None,
                };
                let applied = self.apply_into(key, value, metrics, pending.batch.as_mut());
                self.flush(&mut pending);
                applied
            }
        }
    }

    /// Reads the profiles topic into this table — on disk from the table's
    /// checkpoint, else from the beginning — marks the table caught up when
    /// every partition reached its end, then follows it until `shutdown`
    /// resolves. Retries while the topic or broker is missing; a checkpoint
    /// past the topic's end (the topic was made again) clears the table and
    /// reads the topic from its start.
    pub async fn follow(
        self: Arc<Self>,
        client: ClientConfig,
        topic: String,
        metrics: Arc<Metrics>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut start = self.start(&topic);
        loop {
            let follower = Follower::new(topic.clone(), client.clone());
            match self
                .read(&follower, start, &metrics, shutdown.clone())
                .await
            {
                Ok(()) => return,
                Err(ReadFailed::Store(e)) => {
                    // The disk is full or unwritable: `/readyz` says so; try
                    // again from what was written.
                    warn!(error = %e, "profile table not writable; reading again from its checkpoint in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    start = self.start(&topic);
                }
                Err(ReadFailed::Topic(e)) => {
                    warn!(error = %e, "profile table cleared; reading the topic from its start");
                    if let Backing::Disk { table, cache } = &self.backing {
                        if let Err(e) = table.clear() {
                            warn!(error = %e, "profile table cannot be cleared");
                        }
                        cache.clear();
                    }
                    start = Start::Beginning;
                }
            }
        }
    }

    /// Where to start reading: on disk, the table's checkpoint.
    fn start(&self, topic: &str) -> Start {
        let Backing::Disk { table, .. } = &self.backing else {
            return Start::Beginning;
        };
        match table.checkpoint() {
            Ok(offsets) if !offsets.is_empty() => {
                info!(%topic, profiles = table.approximate_len(), "profiles on disk; reading the topic from their checkpoint");
                Start::Offsets(offsets)
            }
            Ok(_) => Start::Beginning,
            Err(e) => {
                warn!(%topic, error = %e, "profile checkpoint unreadable; rebuilding the table from the topic");
                let _ = table.clear();
                Start::Beginning
            }
        }
    }

    /// One reading of the topic from `start`, until shutdown.
    async fn read(
        &self,
        follower: &Follower,
        start: Start,
        metrics: &Metrics,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ReadFailed> {
        let began = Instant::now();
        let pending = Mutex::new(Pending::default());
        let reading = follower.run_with(
            start,
            shutdown,
            |m| {
                let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                if let Backing::Disk { table, .. } = &self.backing {
                    let batch = pending.batch.get_or_insert_with(|| table.batch());
                    batch.read_to(m.partition(), m.offset() + 1);
                    if let Some(user) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        pending.users.push(user.to_string());
                    }
                }
                self.apply_into(m.key(), m.payload(), metrics, pending.batch.as_mut());
                // Once caught up, every record is written as it comes.
                if pending.len() >= BATCH || self.status() == TableStatus::CaughtUp {
                    self.flush(&mut pending);
                }
                let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
                progress.read += 1;
                progress.elapsed_ms = began.elapsed().as_millis() as u64;
            },
            |event| match event {
                FollowProgress::ToRead(n) => {
                    self.progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .total = n;
                }
                // What was read is written before the end counts as reached.
                FollowProgress::PartitionEnd(_) => {
                    self.flush(&mut pending.lock().unwrap_or_else(|p| p.into_inner()));
                }
            },
        );
        let watch = async {
            let mut said = Instant::now();
            loop {
                if let Some(e) = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failed
                    .take()
                {
                    return ReadFailed::Store(e);
                }
                if follower.is_caught_up() {
                    break;
                }
                if said.elapsed() >= Duration::from_secs(5) {
                    said = Instant::now();
                    let p = self.progress();
                    info!(
                        read = p.read,
                        total = p.total,
                        eta_s = p.eta_ms().map(|ms| ms / 1000),
                        "profiles loading"
                    );
                }
                metrics.profiles.set(self.len() as i64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.flush(&mut pending.lock().unwrap_or_else(|p| p.into_inner()));
            self.caught_up.send_replace(true);
            metrics.profiles.set(self.len() as i64);
            let p = self.progress();
            info!(
                profiles = self.len(),
                read = p.read,
                seconds = began.elapsed().as_secs_f64(),
                "profiles caught up"
            );
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(e) = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failed
                    .take()
                {
                    return ReadFailed::Store(e);
                }
            }
        };
        tokio::select! {
            result = reading => result.map_err(ReadFailed::Topic),
            failed = watch => Err(failed),
        }
    }

    /// Writes the pending batch with its checkpoint, then drops its users'
    /// cached profiles (after the write, so a lookup between cannot cache
    /// the old one again). A failed write is logged and counted against the
    /// store (`/readyz`); its records are read again from the checkpoint at
    /// the next start.
    fn flush(&self, pending: &mut Pending) {
        let Some(batch) = pending.batch.take() else {
            return;
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = batch.commit() {
            warn!(error = %e, "profiles not written to the state store; reading again from the checkpoint");
            pending.failed = Some(e);
        }
        if let Backing::Disk { cache, .. } = &self.backing {
            for user in pending.users.drain(..) {
                cache.remove(&user);
            }
        }
    }
}

/// Why one reading of the topic stopped.
enum ReadFailed {
    Topic(crate::kafka::follow::FollowError),
    Store(StoreError),
}

/// Profile writes not yet committed, and whose cached copies they replace.
#[derive(Default)]
struct Pending {
    batch: Option<TableBatch>,
    users: Vec<String>,
    /// A write failed: reading stops, to start again from the checkpoint.
    failed: Option<StoreError>,
}

impl Pending {
    fn len(&self) -> usize {
        self.batch.as_ref().map_or(0, TableBatch::len)
    }
}

/// A profile as kept on disk: a format byte, flags for what validation
/// found, then the validated profile's JSON (its phone already E.164).
fn encode(profile: &Profile) -> Vec<u8> {
    let flags = u8::from(profile.phone_invalid) | u8::from(profile.time_zone_invalid) << 1;
    let mut bytes = vec![ProfileTable::FORMAT as u8, flags];
    // A profile always serializes; its fields are plain data.
    serde_json::to_writer(&mut bytes, profile).expect("a profile serializes");
    bytes
}

/// The profile `encode` wrote; `None` (and a warning) when it cannot be read.
fn decode(user: &str, bytes: &[u8]) -> Option<Profile> {
    let [format, flags, json @ ..] = bytes else {
        warn!(user = %fingerprint(user), "profile on disk is truncated");
        return None;
    };
    if u32::from(*format) != ProfileTable::FORMAT {
        warn!(user = %fingerprint(user), "profile on disk has another format");
        return None;
    }
    let mut profile: Profile = match serde_json::from_slice(json) {
        Ok(p) => p,
        Err(e) => {
            warn!(user = %fingerprint(user), error = %e, "profile on disk cannot be read");
            return None;
        }
    };
    profile.phone_invalid = flags & 1 != 0;
    profile.time_zone_invalid = flags & 2 != 0;
    profile.phone_sha256 = profile.phone.as_deref().map(crate::util::phone_sha256);
    Some(profile)
}

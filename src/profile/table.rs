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

use super::record::{self, Change};
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
    /// Users' own preferences (the preference API's topic), laid over
    /// their profiles on lookup.
    pub(super) preferences: FastDashMap<String, Arc<super::preferences::Stored>>,
    /// False from the start of following the preferences topic until every
    /// partition was read once (true when it is not followed: the tools).
    pub(super) preferences_caught_up: tokio::sync::watch::Sender<bool>,
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
    /// Records to read: at least those read (records written while loading
    /// count too).
    pub fn total(&self) -> u64 {
        self.total.max(self.read)
    }

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
    pub const FORMAT: u32 = record::FORMAT;

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
            preferences: FastDashMap::default(),
            preferences_caught_up: tokio::sync::watch::Sender::new(true),
        }
    }

    /// The profile of `user`, if any. A profile on disk that cannot be read
    /// is logged and treated as absent (the message is suppressed
    /// `no_profile`, never sent with a guess).
    pub fn get(&self, user: &str) -> Option<Arc<Profile>> {
        let base = self.profile(user)?;
        // One shard's lock (`is_empty` would take every shard's).
        match self.preferences.get(user) {
            Some(stored) => Some(stored.over(&base)),
            None => Some(base),
        }
    }

    /// The profile as the CRM published it, without the user's preferences.
    fn profile(&self, user: &str) -> Option<Arc<Profile>> {
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
                let profile = Arc::new(record::decode(user, &stored)?);
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
        if *self.caught_up.borrow() && *self.preferences_caught_up.borrow() {
            TableStatus::CaughtUp
        } else {
            TableStatus::Loading
        }
    }

    /// Whether the profiles topic (not the preferences) was read to its end once.
    pub fn profiles_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// How far loading has come.
    pub fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the table has caught up with the topic.
    pub async fn wait_caught_up(&self) {
        let mut signal = self.caught_up.subscribe();
        let _ = signal.wait_for(|caught_up| *caught_up).await;
        let mut signal = self.preferences_caught_up.subscribe();
        let _ = signal.wait_for(|caught_up| *caught_up).await;
    }

    /// Applies one parsed record. In memory at once; on disk into `batch`.
    fn apply_change(&self, change: Change, batch: Option<&mut TableBatch>) -> bool {
        match (&self.backing, change) {
            (_, Change::Refused) => return false,
            (Backing::Memory(map), Change::Upsert { user, profile }) => {
                map.insert(user, Arc::from(profile));
            }
            (Backing::Memory(map), Change::Delete { user }) => {
                map.remove(&user);
            }
            (Backing::Disk { .. }, change) => {
                if let Some(batch) = batch {
                    match change {
                        Change::Upsert { user, profile } => {
                            batch.put(user.as_bytes(), record::encode(&profile))
                        }
                        Change::Delete { user } => batch.delete(user.as_bytes()),
                        Change::Refused => {}
                    }
                }
            }
        }
        true
    }

    /// Applies one profile record (the offline tools' way in).
    pub fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>, metrics: &Metrics) -> bool {
        let raw = Raw::copy(key, value, None);
        self.take(&mut Pending::default(), raw, true, metrics) == 1
    }

    /// Loads profile records — (key, value; `None` a tombstone) as the topic
    /// would bring them — in batches parsed on every core: the offline
    /// tools' profile files. Returns the records applied.
    pub fn load(
        &self,
        records: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
        metrics: &Metrics,
    ) -> usize {
        let mut pending = Pending::default();
        let mut applied = 0;
        for (key, value) in records {
            let raw = Raw {
                key: Some(key),
                value,
                read_to: None,
            };
            applied += self.take(&mut pending, raw, false, metrics);
        }
        applied + self.flush(&mut pending, metrics)
    }

    /// Takes one record: in memory, applied at once; on disk, added to
    /// `pending` and written with it when the batch is full, or at once with
    /// `now`. Returns the records applied.
    fn take(&self, pending: &mut Pending, raw: Raw, now: bool, metrics: &Metrics) -> usize {
        if let Backing::Memory(_) = &self.backing {
            let change = record::parse(raw.key.as_deref(), raw.value.as_deref(), metrics);
            return usize::from(self.apply_change(change, None));
        }
        pending.raw.push(raw);
        if now || pending.raw.len() >= BATCH {
            self.flush(pending, metrics)
        } else {
            0
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
        let fresh = table.fresh_checkpoint().and_then(|fresh| {
            // A stale partition: the table is read again whole (every
            // partition feeds one table).
            match fresh.len() == table.checkpoint()?.len() {
                true => Ok(fresh),
                false => table.clear().map(|()| Default::default()),
            }
        });
        match fresh {
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
        let said = Mutex::new(Instant::now());
        let pending = Mutex::new(Pending::default());
        let reading = follower.run_with(
            start,
            shutdown,
            |m| {
                let raw = Raw::copy(m.key(), m.payload(), Some((m.partition(), m.offset() + 1)));
                // Once caught up, every record is written as it comes.
                let now = self.status() == TableStatus::CaughtUp;
                let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                self.take(&mut pending, raw, now, metrics);
                drop(pending);
                let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
                progress.read += 1;
                // Said here, not by the watcher below: while records keep
                // coming, this callback is all its task runs.
                if progress.read % 4096 == 0 {
                    progress.elapsed_ms = began.elapsed().as_millis() as u64;
                    let mut said = said.lock().unwrap_or_else(|p| p.into_inner());
                    if said.elapsed() >= Duration::from_secs(5) {
                        *said = Instant::now();
                        let p = *progress;
                        drop(progress);
                        info!(
                            read = p.read,
                            total = p.total(),
                            eta_s = p.eta_ms().map(|ms| ms / 1000),
                            "profiles loading"
                        );
                        self.export(metrics);
                    }
                }
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
                    self.flush(
                        &mut pending.lock().unwrap_or_else(|p| p.into_inner()),
                        metrics,
                    );
                }
            },
        );
        let watch = async {
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
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.flush(
                &mut pending.lock().unwrap_or_else(|p| p.into_inner()),
                metrics,
            );
            self.caught_up.send_replace(true);
            self.export(metrics);
            let p = self.progress();
            info!(
                profiles = self.len(),
                read = p.read,
                seconds = began.elapsed().as_secs_f64(),
                "profiles caught up"
            );
            let mut exported = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if exported.elapsed() >= Duration::from_secs(5) {
                    exported = Instant::now();
                    self.export(metrics);
                }
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

    /// Sets the table's gauges.
    fn export(&self, metrics: &Metrics) {
        metrics.profiles.set(self.len() as i64);
        if let Backing::Disk { table, .. } = &self.backing {
            let p = self.progress();
            let set = |what: &str, v: u64| {
                metrics
                    .state_table
                    .with_label_values(&[table.name(), what])
                    .set(v as i64)
            };
            set("keys", table.approximate_len() as u64);
            set("disk_bytes", table.disk_bytes());
            set("loaded", p.read);
            set("to_load", p.total());
        }
    }

    /// Parses the pending records (on every core: validating a phone number
    /// is most of a profile's cost), writes them with their checkpoint in
    /// one batch, then drops their users' cached profiles (after the write,
    /// so a lookup between cannot cache the old one again). A failed write
    /// is logged and counted against the store (`/readyz`), and reading
    /// starts again from the checkpoint. Returns the records applied.
    fn flush(&self, pending: &mut Pending, metrics: &Metrics) -> usize {
        let Backing::Disk { table, cache } = &self.backing else {
            return 0;
        };
        if pending.raw.is_empty() {
            return 0;
        }
        let raw = std::mem::take(&mut pending.raw);
        let changes = parse_all(&raw, metrics);
        let mut batch = table.batch();
        let mut users = Vec::with_capacity(raw.len());
        let mut applied = 0;
        for (raw, change) in raw.iter().zip(changes) {
            if let Change::Upsert { user, .. } | Change::Delete { user } = &change {
                users.push(user.clone());
            }
            if self.apply_change(change, Some(&mut batch)) {
                applied += 1;
            }
            if let Some((partition, next)) = raw.read_to {
                batch.read_to(partition, next);
            }
        }
        if let Err(e) = batch.commit() {
            warn!(error = %e, "profiles not written to the state store; reading again from the checkpoint");
            pending.failed = Some(e);
            return 0;
        }
        for user in users {
            cache.remove(&user);
        }
        applied
    }
}

/// Parses records on up to four threads, in order.
fn parse_all(raw: &[Raw], metrics: &Metrics) -> Vec<Change> {
    let parse = |r: &Raw| record::parse(r.key.as_deref(), r.value.as_deref(), metrics);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if threads == 1 || raw.len() < 256 {
        return raw.iter().map(parse).collect();
    }
    let chunk = raw.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = raw
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(parse).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().expect("profile parsing does not panic"))
            .collect()
    })
}

/// Why one reading of the topic stopped.
enum ReadFailed {
    Topic(crate::kafka::follow::FollowError),
    Store(StoreError),
}

/// One record as read, not yet parsed.
struct Raw {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// The partition and next offset the table holds once it is applied.
    read_to: Option<(i32, i64)>,
}

/// Records read and not yet written.
#[derive(Default)]
struct Pending {
    raw: Vec<Raw>,
    /// A write failed: reading stops, to start again from the checkpoint.
    failed: Option<StoreError>,
}

impl Raw {
    /// A record read from the topic (or given to `apply`), copied.
    fn copy(key: Option<&[u8]>, value: Option<&[u8]>, read_to: Option<(i32, i64)>) -> Raw {
        Raw {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            read_to,
        }
    }
}

impl ProfileTable {
    /// The preferences `user` set, as stored (`None`: never set, or reset).
    pub fn preferences_of(&self, user: &str) -> Option<Arc<super::preferences::Stored>> {
        self.preferences.get(user).map(|s| Arc::clone(&s))
    }

    /// Applies one record of the preferences topic: a document, or a
    /// tombstone (back to the profile alone). A record that is not a
    /// preferences document (never written by herald's API) is counted,
    /// logged without content and skipped.
    pub fn apply_preferences(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        written_ms: i64,
        metrics: &crate::metrics::Metrics,
    ) {
        let Some(user) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            metrics.profile_errors.inc();
            return;
        };
        match value.map(serde_json::from_slice::<super::Preferences>) {
            None => {
                self.preferences.remove(user);
            }
            Some(Ok(preferences)) => {
                self.preferences.insert(
                    user.to_string(),
                    Arc::new(super::preferences::Stored::new(preferences, written_ms)),
                );
            }
            Some(Err(e)) => {
                metrics.profile_errors.inc();
                tracing::warn!(user = %crate::util::fingerprint(user), error = %e, "preferences record refused");
            }
        }
    }

    /// Whether the preferences topic is still being read for the first time.
    pub fn preferences_loading(&self) -> bool {
        !*self.preferences_caught_up.borrow()
    }

    /// Reads the whole preferences topic, then follows it until shutdown:
    /// a change made through any instance's API reaches every instance's
    /// table within the follower's poll. Kept in memory (a preferences
    /// document is ~200 bytes, and only users who set something have one).
    pub async fn follow_preferences(
        self: Arc<Self>,
        client: rdkafka::ClientConfig,
        topic: String,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        use rdkafka::Message;
        self.preferences_caught_up.send_replace(false);
        let follower = crate::kafka::follow::Follower::new(topic.clone(), client);
        let reading = follower.run_with(
            crate::kafka::follow::Start::Beginning,
            shutdown,
            |m| {
                let at = m
                    .timestamp()
                    .to_millis()
                    .unwrap_or_else(crate::util::now_ms);
                self.apply_preferences(m.key(), m.payload(), at, &metrics);
            },
            |_| {},
        );
        let caught_up = async {
            follower.wait_caught_up().await;
            self.preferences_caught_up.send_replace(true);
            tracing::info!(%topic, users = self.preferences.len(), "preferences read");
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = reading => {
                if let Err(e) = r {
                    tracing::error!(%topic, error = %e, "preferences topic cannot be followed");
                }
            }
            () = caught_up => {}
        }
    }
}

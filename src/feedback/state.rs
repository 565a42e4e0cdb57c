//! Per-instance feedback state: engagement per user, herald's own SMS opt-out
//! list, the messages sent (for replies), and the readers that keep them
//! current on every instance.
//!
//! Every instance reads the whole feedback topic (from `lookback` ago, or
//! its checkpoint) and the whole consent topic (from the start, or its
//! checkpoint). A STOP therefore takes effect on every instance as soon as
//! it is read, and [`FeedbackState::consent_barrier`] lets an SMS wait until
//! every STOP written so far has been read. The service keeps this state on
//! disk ([`FeedbackDisk`]); the offline tools keep it in memory.

use crate::util::FastDashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use super::disk::{Engaged, FeedbackDisk, OptOutChanges};
use super::{Feedback, Keyword, SentIndex, SentRecord, SentRef};
use crate::kafka::follow::{BarrierError, Follower, Start};
use crate::store::{Table, TableBatch};

/// Engagements kept per user in memory; the oldest go first.
const PER_USER: usize = 64;

/// How often the tables on disk are swept of what is past its age.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// A consent change herald made from an SMS keyword, as written to the consent topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentChange {
    /// E.164; also the record key.
    pub phone: String,
    pub channel: String,
    /// False after STOP, true after START.
    pub consent: bool,
    /// The keyword as the user wrote it, upper-cased.
    pub keyword: String,
    /// When the user sent it, epoch ms.
    pub at_ms: i64,
    /// The user of the last message to this number, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The deployment that wrote it (`kafka.group_id`). Every deployment
    /// applies every consent change: a STOP is the person's, whoever sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// Engagement, opt-outs and the messages sent, for the policy stage.
pub struct FeedbackState {
    backing: Backing,
    /// On disk: this instance's sends whose `herald_sent` record the
    /// feedback reader has not read back yet. A reply finds them here at
    /// once; their row is written once, by the reader, with the record's
    /// offset, so a crash before that reads the record, and writes the
    /// row, again. (Each send wrote its row twice before: here, then again
    /// when read back.)
    unread: SentIndex,
    lookback_ms: i64,
    feedback: Follower,
    consent: Follower,
    /// No topics behind it (rule tests, replays): nothing to wait for.
    offline: bool,
}

enum Backing {
    /// In memory: the offline tools, and tests.
    Memory {
        engagements: FastDashMap<String, VecDeque<Engaged>>,
        /// Phone (E.164) → (opted out, when).
        opt_outs: FastDashMap<String, (bool, i64)>,
        sent: SentIndex,
    },
    /// On local disk, with checkpoints.
    Disk(Box<FeedbackDisk>),
}

/// The feedback table's writes gathered for one commit (`table` is `None`
/// in memory), and the sends among them to drop from the unread index once
/// it is committed: (idempotency key, phone digest).
struct Rows {
    table: Option<TableBatch>,
    forget: Vec<(Arc<str>, Option<String>)>,
    opt_outs: OptOutChanges,
}

/// Which table a change goes to: the feedback topic's, or the consent topic's.
#[derive(Clone, Copy)]
enum Which {
    Feedback,
    Consent,
}

impl FeedbackState {
    /// State in memory fed from `feedback_topic` (from `lookback_ms` ago) and
    /// `consent_topic`.
    pub fn new(
        client: ClientConfig,
        feedback_topic: String,
        consent_topic: String,
        lookback_ms: i64,
    ) -> Arc<FeedbackState> {
        let backing = Self::memory();
        Self::build(
            client,
            feedback_topic,
            consent_topic,
            lookback_ms,
            backing,
            false,
        )
    }

    /// State kept in `disk`, fed from both topics from their checkpoints.
    pub fn on_disk(
        client: ClientConfig,
        feedback_topic: String,
        consent_topic: String,
        lookback_ms: i64,
        disk: FeedbackDisk,
    ) -> Arc<FeedbackState> {
        let backing = Backing::Disk(Box::new(disk));
        Self::build(
            client,
            feedback_topic,
            consent_topic,
            lookback_ms,
            backing,
            false,
        )
    }

    /// State with no topics behind it, fed only through [`FeedbackState::apply`]
    /// (rule tests, replays, evaluation).
    pub fn offline(lookback_ms: i64) -> Arc<FeedbackState> {
        let (client, none) = (ClientConfig::new(), String::new());
        Self::build(
            client,
            none.clone(),
            none,
            lookback_ms,
            Self::memory(),
            true,
        )
    }

    fn memory() -> Backing {
        Backing::Memory {
            engagements: FastDashMap::default(),
            opt_outs: FastDashMap::default(),
            sent: SentIndex::default(),
        }
    }

    fn build(
        client: ClientConfig,
        feedback_topic: String,
        consent_topic: String,
        lookback_ms: i64,
        backing: Backing,
        offline: bool,
    ) -> Arc<FeedbackState> {
        Arc::new(FeedbackState {
            backing,
            unread: SentIndex::default(),
            lookback_ms,
            feedback: Follower::new(feedback_topic, client.clone()),
            consent: Follower::new(consent_topic, client),
            offline,
        })
    }

    /// True once both topics were read to their end once.
    pub fn is_caught_up(&self) -> bool {
        self.offline || (self.feedback.is_caught_up() && self.consent.is_caught_up())
    }

    /// Waits until both topics were read to their end once.
    pub async fn wait_caught_up(&self) {
        self.feedback.wait_caught_up().await;
        self.consent.wait_caught_up().await;
    }

    /// Reads both topics until `shutdown`: on disk from the tables'
    /// checkpoints, and sweeping them hourly.
    pub async fn follow(self: Arc<Self>, shutdown: watch::Receiver<bool>, now_ms: i64) {
        let since = Start::Since(now_ms - self.lookback_ms);
        let feedback = self.read(Which::Feedback, since, shutdown.clone(), |batch| {
            self.apply_read(batch, now_ms)
        });
        let consent = self.read(Which::Consent, Start::Beginning, shutdown.clone(), |read| {
            // The batch goes to disk in one commit with its last offsets;
            // a number's newest change wins (equal times: the one read later).
            let mut changes = OptOutChanges::default();
            for m in read {
                let Some(c) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<ConsentChange>(p).ok())
                else {
                    continue;
                };
                match &self.backing {
                    Backing::Disk(_) => changes.add(&c.phone, !c.consent, c.at_ms),
                    Backing::Memory { .. } => self.set_opt_out(&c.phone, !c.consent, c.at_ms),
                }
            }
            self.write(Which::Consent, read, |batch, disk| {
                changes.write(disk, batch, &disk.consent)
            });
        });
        tokio::join!(feedback, consent, Arc::clone(&self).sweep(shutdown));
    }

    /// Reads one topic into its table from its checkpoint (else `fallback`);
    /// a checkpoint past the topic's end clears the table and reads again.
    async fn read(
        &self,
        into: Which,
        fallback: Start,
        shutdown: watch::Receiver<bool>,
        mut apply: impl FnMut(&[BorrowedMessage<'_>]),
    ) {
        let (follower, table) = match into {
            Which::Feedback => (&self.feedback, self.table(into)),
            Which::Consent => (&self.consent, self.table(into)),
        };
        loop {
            let start = match table {
                Some(table) => FeedbackDisk::start(table, fallback.clone()),
                None => fallback.clone(),
            };
            let read = follower
                .run_batches(start, shutdown.clone(), &mut apply, |_| {})
                .await;
            match (read, table) {
                (Err(e), Some(table)) => {
                    warn!(error = %e, "feedback table cleared; reading its topic again");
                    let _ = table.clear();
                }
                _ => return,
            }
        }
    }

    fn table(&self, into: Which) -> Option<&Table> {
        match (&self.backing, into) {
            (Backing::Disk(disk), Which::Feedback) => Some(&disk.feedback),
            (Backing::Disk(disk), Which::Consent) => Some(&disk.consent),
            (Backing::Memory { .. }, _) => None,
        }
    }

    /// On disk: runs `change` on a batch of `into`'s table, marks the
    /// `read` records as applied, and commits. In memory: nothing.
    fn write(
        &self,
        into: Which,
        read: &[BorrowedMessage<'_>],
        change: impl FnOnce(&mut TableBatch, &FeedbackDisk),
    ) {
        let (Backing::Disk(disk), Some(table)) = (&self.backing, self.table(into)) else {
            return;
        };
        let mut batch = table.batch();
        change(&mut batch, disk);
        for m in read {
            batch.read_to(m.partition(), m.offset() + 1);
        }
        if let Err(e) = batch.commit() {
            // `/readyz` says so; the store's watcher restarts herald once the
            // disk takes writes again, and the record is read again then.
            warn!(error = %e, "feedback state not written to the state store");
        }
    }

    /// Sweeps the tables on disk at start and hourly until `shutdown`.
    async fn sweep(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if !matches!(self.backing, Backing::Disk(_)) {
            return;
        }
        self.wait_caught_up().await;
        loop {
            let state = Arc::clone(&self);
            let swept = tokio::task::spawn_blocking(move || match &state.backing {
                Backing::Disk(disk) => disk.sweep(crate::util::now_ms(), state.lookback_ms),
                Backing::Memory { .. } => Ok(0),
            });
            match swept.await {
                Ok(Ok(removed)) => tracing::info!(
                    removed,
                    opted_out = self.opt_out_count(),
                    "feedback state swept"
                ),
                Ok(Err(e)) => warn!(error = %e, "feedback state sweep failed"),
                Err(e) => warn!(error = %e, "feedback state sweep failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Waits until every record written to the feedback topic before this
    /// call has been applied, so a STOP sent just before is honoured.
    pub async fn consent_barrier(&self, timeout: Duration) -> Result<(), BarrierError> {
        if self.offline {
            return Ok(());
        }
        self.feedback.barrier(timeout).await
    }

    /// Applies one feedback record to the state (on every instance).
    pub fn apply(&self, record: &Feedback, now_ms: i64) {
        let mut rows = self.rows();
        self.apply_into(record, now_ms, &mut rows);
        self.commit(rows);
    }

    /// Applies records read together from the feedback topic (those that
    /// are no feedback are only marked read): their rows, and the offsets
    /// they bring the table to, in one commit.
    fn apply_read(&self, batch: &[BorrowedMessage<'_>], now_ms: i64) {
        let mut rows = self.rows();
        let applied_ms = crate::util::now_ms();
        for m in batch {
            let fallback = m.timestamp().to_millis().unwrap_or(now_ms);
            if let Some(record) = m.payload().and_then(|p| Feedback::parse(p, fallback).ok()) {
                self.apply_into(&record, applied_ms, &mut rows);
            }
            if let Some(table) = &mut rows.table {
                table.read_to(m.partition(), m.offset() + 1);
            }
        }
        self.commit(rows);
    }

    /// The feedback table's writes to come, for one commit (none in memory).
    fn rows(&self) -> Rows {
        Rows {
            table: self.table(Which::Feedback).map(Table::batch),
            forget: Vec::new(),
            opt_outs: OptOutChanges::default(),
        }
    }

    /// Commits `rows`; the sends written are then looked up on disk, no
    /// longer in this instance's unread index.
    fn commit(&self, mut rows: Rows) {
        let Some(mut table) = rows.table else { return };
        if let Backing::Disk(disk) = &self.backing {
            rows.opt_outs.write(disk, &mut table, &disk.feedback);
        }
        if table.is_empty() {
            return;
        }
        if let Err(e) = table.commit() {
            // `/readyz` says so; the store's watcher restarts herald once the
            // disk takes writes again, and the records are read again then.
            warn!(error = %e, "feedback state not written to the state store");
            return;
        }
        for (key, phone) in rows.forget {
            self.unread.forget(&key, phone.as_deref());
        }
    }

    fn apply_into(&self, record: &Feedback, now_ms: i64, rows: &mut Rows) {
        let opt_out = |rows: &mut Rows, phone: &str, opted_out: bool, at_ms: i64| match (
            &self.backing,
            &rows.table,
        ) {
            (Backing::Disk(_), Some(_)) => rows.opt_outs.add(phone, opted_out, at_ms),
            _ => self.set_opt_out(phone, opted_out, at_ms),
        };
        match record {
            Feedback::Inbound(sms) => match Keyword::of(&sms.body) {
                Some(Keyword::OptOut) => opt_out(rows, &sms.from, true, sms.time_ms),
                Some(Keyword::OptIn) => opt_out(rows, &sms.from, false, sms.time_ms),
                _ => {}
            },
            Feedback::Engagement(e) => {
                let user = e.user.clone().or_else(|| {
                    let key = e.message.as_deref()?;
                    // A send read in this same batch is on disk only once
                    // the batch is: commit what came before, then look.
                    self.flush(rows);
                    Some(self.sent_by_key(key, now_ms)?.user.to_string())
                });
                let engaged = Engaged {
                    kind: e.kind.clone(),
                    campaign: e.campaign.clone(),
                    message: e.message.clone(),
                    at_ms: e.time_ms,
                };
                self.record(user.as_deref(), engaged, rows);
            }
            Feedback::Sent(s) => self.record_sent_into(s, rows),
            Feedback::PushAction(a) => {
                let engaged = Engaged {
                    kind: "push_action".into(),
                    campaign: None,
                    message: Some(a.idempotency_key.clone()),
                    at_ms: a.time_ms,
                };
                self.record(a.user.as_deref(), engaged, rows);
            }
        }
    }

    /// Commits the rows gathered so far and starts again.
    fn flush(&self, rows: &mut Rows) {
        let done = std::mem::replace(rows, self.rows());
        self.commit(done);
    }

    /// Remembers a message sent: by this instance at once, by every
    /// instance when its `herald_sent` record is read.
    pub fn record_sent(&self, record: &SentRecord) {
        let index = match &self.backing {
            Backing::Memory { sent, .. } => sent,
            Backing::Disk(_) => &self.unread,
        };
        index.record_digest(record.sent.clone(), record.phone_sha256.clone());
    }

    /// A `herald_sent` record read from the feedback topic, or applied
    /// offline: its row among `rows` (on disk), to be looked up there once
    /// they are committed.
    fn record_sent_into(&self, record: &SentRecord, rows: &mut Rows) {
        match (&self.backing, &mut rows.table) {
            (Backing::Memory { sent, .. }, _) => {
                sent.record_digest(record.sent.clone(), record.phone_sha256.clone())
            }
            (Backing::Disk(disk), Some(table)) => {
                disk.record_sent(table, record);
                let key = Arc::clone(&record.sent.idempotency_key);
                rows.forget.push((key, record.phone_sha256.clone()));
            }
            (Backing::Disk(_), None) => {}
        }
    }

    /// The message with this idempotency key, if sent within a week.
    pub fn sent_by_key(&self, key: &str, now_ms: i64) -> Option<Arc<SentRef>> {
        match &self.backing {
            Backing::Memory { sent, .. } => sent.by_key(key, now_ms),
            Backing::Disk(disk) => self
                .unread
                .by_key(key, now_ms)
                .or_else(|| fresh(disk.sent_by_key(key), now_ms)),
        }
    }

    /// The last SMS to this number, if sent within a week.
    pub fn last_sms_to(&self, phone: &str, now_ms: i64) -> Option<Arc<SentRef>> {
        match &self.backing {
            Backing::Memory { sent, .. } => sent.last_sms_to(phone, now_ms),
            Backing::Disk(disk) => {
                let digest = super::sent::phone_sha256(phone);
                let unread = self.unread.last_sms_by_digest(&digest, now_ms);
                let on_disk = fresh(disk.last_sms_by_digest(&digest), now_ms);
                // The later of the two: another instance's SMS to the number
                // may have been read after this one's own.
                match (unread, on_disk) {
                    (Some(a), Some(b)) => Some(if b.sent_ms > a.sent_ms { b } else { a }),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Records that `user` engaged (`kind`) at `at_ms`.
    pub fn engaged_now(&self, user: &str, kind: &str, campaign: Option<&str>, at_ms: i64) {
        let engaged = Engaged {
            kind: kind.into(),
            campaign: campaign.map(str::to_string),
            message: None,
            at_ms,
        };
        let mut rows = self.rows();
        self.record(Some(user), engaged, &mut rows);
        self.commit(rows);
    }

    fn record(&self, user: Option<&str>, engaged: Engaged, rows: &mut Rows) {
        let Some(user) = user else { return };
        match (&self.backing, &mut rows.table) {
            (Backing::Memory { engagements, .. }, _) => {
                let mut list = engagements.entry(user.to_string()).or_default();
                let horizon = engaged.at_ms - self.lookback_ms;
                while list.front().is_some_and(|e| e.at_ms < horizon) {
                    list.pop_front();
                }
                list.push_back(engaged);
                if list.len() > PER_USER {
                    list.pop_front();
                }
            }
            (Backing::Disk(disk), Some(table)) => disk.engage(table, user, &engaged),
            (Backing::Disk(_), None) => {}
        }
    }

    /// `user`'s engagements at or after `since_ms` that `keep` keeps: any?
    fn any_engagement(&self, user: &str, since_ms: i64, keep: impl Fn(&Engaged) -> bool) -> bool {
        match &self.backing {
            Backing::Memory { engagements, .. } => engagements
                .get(user)
                .is_some_and(|list| list.iter().any(|e| e.at_ms >= since_ms && keep(e))),
            Backing::Disk(disk) => disk.engagements(user, since_ms).iter().any(keep),
        }
    }

    /// Whether `user` engaged (`kind`, with `campaign` when given) at or after `since_ms`.
    pub fn engaged(&self, user: &str, kind: &str, campaign: Option<&str>, since_ms: i64) -> bool {
        self.any_engagement(user, since_ms, |e| {
            e.kind == kind && campaign.is_none_or(|c| e.campaign.as_deref() == Some(c))
        })
    }

    /// Whether any feedback named this message as having arrived (delivered,
    /// opened, clicked, …). Provider statuses that say it has not arrived yet
    /// or never will (Twilio's `sms_sent`, `sms_undelivered`, `sms_failed`, …)
    /// are not receipts.
    pub fn heard_of(&self, user: &str, message: &str) -> bool {
        self.any_engagement(user, i64::MIN, |e| {
            e.message.as_deref() == Some(message) && arrived(&e.kind)
        })
    }

    /// Sets a number's opt-out, unless a later change is already known
    /// (this instance's own STOP, at once; its record follows).
    pub fn set_opt_out(&self, phone: &str, opted_out: bool, at_ms: i64) {
        match &self.backing {
            Backing::Memory { opt_outs, .. } => {
                let mut entry = opt_outs
                    .entry(phone.to_string())
                    .or_insert((opted_out, at_ms));
                if at_ms >= entry.1 {
                    *entry = (opted_out, at_ms);
                }
            }
            Backing::Disk(_) => self.write(Which::Feedback, &[], |batch, disk| {
                disk.set_opt_out(batch, &disk.feedback, phone, opted_out, at_ms)
            }),
        }
    }

    /// Whether this number replied STOP (and not START since). A state that
    /// cannot be read counts as opted out: no SMS goes on a guess.
    pub fn opted_out(&self, phone: &str) -> bool {
        match &self.backing {
            Backing::Memory { opt_outs, .. } => opt_outs.get(phone).is_some_and(|e| e.0),
            Backing::Disk(disk) => match disk.opt_out(phone) {
                Ok(state) => state.is_some_and(|(opted, _)| opted),
                Err(e) => {
                    warn!(error = %e, "opt-out state unreadable; the SMS is not sent");
                    true
                }
            },
        }
    }

    /// This instance's sends not read back yet.
    #[cfg(test)]
    pub(crate) fn unread_for_tests(&self) -> usize {
        self.unread.len()
    }

    /// Applies `records` in one commit, as a batch read from the topic is.
    #[cfg(test)]
    pub(crate) fn apply_together_for_tests(&self, records: &[Feedback], now_ms: i64) {
        let mut rows = self.rows();
        for record in records {
            self.apply_into(record, now_ms, &mut rows);
        }
        self.commit(rows);
    }

    #[cfg(test)]
    pub(crate) fn disk_for_tests(&self) -> Option<&FeedbackDisk> {
        match &self.backing {
            Backing::Disk(disk) => Some(disk),
            Backing::Memory { .. } => None,
        }
    }

    /// Numbers currently opted out.
    pub fn opt_out_count(&self) -> usize {
        match &self.backing {
            Backing::Memory { opt_outs, .. } => opt_outs.iter().filter(|e| e.0).count(),
            Backing::Disk(disk) => disk.opt_out_count(),
        }
    }
}

/// A message sent within the week a reply can find it.
fn fresh(found: Option<SentRef>, now_ms: i64) -> Option<Arc<SentRef>> {
    found
        .filter(|s| now_ms - s.sent_ms <= super::disk::SENT_KEPT_MS)
        .map(Arc::new)
}

/// Statuses that say a message has not reached the device (yet).
const NOT_ARRIVED: [&str; 8] = [
    "_queued",
    "_accepted",
    "_scheduled",
    "_sending",
    "_sent",
    "_undelivered",
    "_failed",
    "_canceled",
];

/// Whether an engagement of this kind means the message reached the user.
fn arrived(kind: &str) -> bool {
    !NOT_ARRIVED.iter().any(|suffix| kind.ends_with(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{Engagement, InboundSms};

    fn state() -> Arc<FeedbackState> {
        FeedbackState::new(ClientConfig::new(), "f".into(), "c".into(), 86_400_000)
    }

    fn sms(body: &str, at: i64) -> Feedback {
        Feedback::Inbound(InboundSms {
            from: "+14155552671".into(),
            body: body.into(),
            sid: None,
            time_ms: at,
        })
    }

    #[test]
    fn stop_and_start_follow_the_time_they_were_sent() {
        let s = state();
        s.apply(&sms("STOP", 100), 100);
        assert!(s.opted_out("+14155552671"));
        assert!(!s.opted_out("+14155550000"), "per number");
        s.apply(&sms("start", 200), 200);
        assert!(!s.opted_out("+14155552671"));
        // A STOP read late (e.g. from the consent topic at start) does not
        // undo a later START.
        s.set_opt_out("+14155552671", true, 150);
        assert!(!s.opted_out("+14155552671"));
        s.apply(&sms("Thanks!", 300), 300);
        assert!(!s.opted_out("+14155552671"), "other text changes nothing");
    }

    #[test]
    fn engagement_is_found_by_kind_campaign_and_window() {
        let s = state();
        let opened = |user: Option<&str>, message: Option<&str>, at| {
            Feedback::Engagement(Engagement {
                kind: "email_opened".into(),
                user: user.map(str::to_string),
                campaign: Some("spring".into()),
                message: message.map(str::to_string),
                time_ms: at,
            })
        };
        s.apply(&opened(Some("u1"), None, 1_000), 1_000);
        assert!(s.engaged("u1", "email_opened", Some("spring"), 1_000));
        assert!(s.engaged("u1", "email_opened", None, 0));
        assert!(!s.engaged("u1", "email_opened", Some("autumn"), 0));
        assert!(
            !s.engaged("u1", "email_opened", None, 1_001),
            "before the window"
        );
        assert!(!s.engaged("u1", "push_opened", None, 0));
        // By message reference: known message → its user; unknown → dropped.
        s.record_sent(&SentRecord {
            sent: crate::feedback::SentRef {
                user: "u2".into(),
                rule: "r".into(),
                key: None,
                idempotency_key: "k2".into(),
                channel: "push".into(),
                sent_ms: 0,
                deployment: None,
            },
            phone_sha256: None,
        });
        s.apply(&opened(None, Some("k2"), 5), 5);
        assert!(s.engaged("u2", "email_opened", None, 0));
        s.apply(&opened(None, Some("nope"), 5), 5);
        assert!(!s.engaged("nope", "email_opened", None, 0));
    }

    #[test]
    fn only_statuses_of_arrival_count_as_receipts() {
        let s = state();
        let status = |kind: &str| {
            Feedback::Engagement(Engagement {
                kind: kind.into(),
                user: Some("u1".into()),
                campaign: None,
                message: Some("k1".into()),
                time_ms: 1_000,
            })
        };
        for kind in ["sms_queued", "sms_sent", "sms_undelivered", "sms_failed"] {
            s.apply(&status(kind), 1_000);
            assert!(!s.heard_of("u1", "k1"), "{kind} is not a receipt");
        }
        s.apply(&status("sms_delivered"), 1_000);
        assert!(s.heard_of("u1", "k1"));
        assert!(arrived("push_opened") && arrived("push_delivered"));
    }
}

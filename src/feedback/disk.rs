//! Feedback state on local disk: opt-outs, engagement and the index that lets a reply find its message, in two sealed tables filled from the feedback and consent topics from their checkpoints.
//!
//! Every instance keeps both tables whole (any instance may take a reply or
//! decide for any user), as the profile table. A restart reads only the
//! records past each table's checkpoint, and memory does not grow with users,
//! numbers or sends. Row keys are blinded (HMAC under the state key): a phone
//! number is never a key in clear. Rows, by their first byte:
//!
//! - `o` + number → opted out (1 byte) and when (i64, big-endian);
//! - `k` + idempotency key → the `herald_sent` record of the message;
//! - `p` + SHA-256 of the number → the `herald_sent` record of the last SMS to it;
//! - `g` + user + time (i64) + what → one engagement (`kind`, `campaign`, `message`).
//!
//! The consent table holds only `o` rows (from the consent topic); the
//! feedback table holds the rest, and the `o` rows of STOP and START read
//! from the feedback topic. A number's state is the later of the two.
//! Engagement older than the look-back and messages older than a week are
//! swept hourly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Feedback, SentRecord, SentRef};
use crate::kafka::follow::Start;
use crate::store::{StoreError, Table, TableBatch};

/// The format of both tables; a table of another format is rebuilt.
pub const FORMAT: u32 = 1;

/// How long a sent message can be found by a reply or an engagement.
pub const SENT_KEPT_MS: i64 = 7 * 86_400_000;

const OPT_OUT: u8 = b'o';
const SENT: u8 = b'k';
const LAST_SMS: u8 = b'p';
const ENGAGED: u8 = b'g';

/// One engagement as a row keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engaged {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip)]
    pub at_ms: i64,
}

/// Opt-out changes gathered for one commit: the newest per number (at
/// equal times, the one read later), which is what applying them one at a
/// time leaves. [`FeedbackDisk::set_opt_out`] compares a change with the
/// table as committed, so a batch holds at most one change per number.
#[derive(Default)]
pub struct OptOutChanges(HashMap<String, (bool, i64)>);

impl OptOutChanges {
    pub fn add(&mut self, phone: &str, opted_out: bool, at_ms: i64) {
        match self.0.get_mut(phone) {
            Some(newest) if newest.1 > at_ms => {}
            Some(newest) => *newest = (opted_out, at_ms),
            None => {
                self.0.insert(phone.to_string(), (opted_out, at_ms));
            }
        }
    }

    /// Puts each number's newest change into `batch`, for `table`.
    pub fn write(&mut self, disk: &FeedbackDisk, batch: &mut TableBatch, table: &Table) {
        for (phone, (opted_out, at_ms)) in self.0.drain() {
            disk.set_opt_out(batch, table, &phone, opted_out, at_ms);
        }
    }
}

/// The two tables.
pub struct FeedbackDisk {
    pub feedback: Table,
    pub consent: Table,
    /// Numbers opted out, as of the last sweep and the changes since.
    opted_out: AtomicUsize,
}

impl FeedbackDisk {
    pub fn new(feedback: Table, consent: Table) -> FeedbackDisk {
        FeedbackDisk {
            feedback,
            consent,
            opted_out: AtomicUsize::new(0),
        }
    }

    fn key(table: &Table, tag: u8, id: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(1 + 16 + 16);
        key.push(tag);
        key.extend_from_slice(&table.blind(id));
        key
    }

    /// Where to read `table`'s topic from: its checkpoint, else `fallback`.
    /// A checkpoint that cannot be trusted clears the table.
    pub fn start(table: &Table, fallback: Start) -> Start {
        let fresh = table.fresh_checkpoint().and_then(|fresh| {
            match fresh.len() == table.checkpoint()?.len() {
                true => Ok(fresh),
                false => table.clear().map(|()| Default::default()),
            }
        });
        match fresh {
            Ok(offsets) if !offsets.is_empty() => Start::Offsets(offsets),
            Ok(_) => fallback,
            Err(e) => {
                warn!(table = table.name(), error = %e, "feedback checkpoint unreadable; rebuilding the table from its topic");
                let _ = table.clear();
                fallback
            }
        }
    }

    /// A number's opt-out and when it was set: the later of both tables.
    pub fn opt_out(&self, phone: &str) -> Result<Option<(bool, i64)>, StoreError> {
        let mut found = None::<(bool, i64)>;
        for table in [&self.feedback, &self.consent] {
            let key = Self::key(table, OPT_OUT, phone.as_bytes());
            if let Some(state) = table.get(&key)?.as_deref().and_then(decode_opt_out) {
                if found.is_none_or(|(_, at)| state.1 > at) {
                    found = Some(state);
                }
            }
        }
        Ok(found)
    }

    /// Sets a number's opt-out in `batch` (of `table`), unless a later
    /// change is already known.
    pub fn set_opt_out(
        &self,
        batch: &mut TableBatch,
        table: &Table,
        phone: &str,
        opted_out: bool,
        at_ms: i64,
    ) {
        let before = logged(self.opt_out(phone)).flatten();
        if before.is_some_and(|(_, at)| at > at_ms) {
            return;
        }
        let mut value = vec![u8::from(opted_out)];
        value.extend_from_slice(&at_ms.to_be_bytes());
        batch.put(&Self::key(table, OPT_OUT, phone.as_bytes()), value);
        match (before.map(|(o, _)| o).unwrap_or(false), opted_out) {
            (false, true) => {
                self.opted_out.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                let _ = self
                    .opted_out
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            _ => {}
        }
    }

    /// Numbers opted out (counted by the last sweep, then kept up to date).
    pub fn opt_out_count(&self) -> usize {
        self.opted_out.load(Ordering::Relaxed)
    }

    /// Remembers a sent message in `batch`: by its idempotency key, and for
    /// an SMS as the last one to its number (unless a later one is known).
    pub fn record_sent(&self, batch: &mut TableBatch, record: &SentRecord) {
        let table = &self.feedback;
        let bytes = record.to_bytes();
        batch.put(
            &Self::key(table, SENT, record.sent.idempotency_key.as_bytes()),
            bytes.clone(),
        );
        if let Some(digest) = &record.phone_sha256 {
            let later = self
                .last_sms_by_digest(digest)
                .is_some_and(|known| known.sent_ms > record.sent.sent_ms);
            if !later {
                batch.put(&Self::key(table, LAST_SMS, digest.as_bytes()), bytes);
            }
        }
    }

    /// The message with this idempotency key.
    pub fn sent_by_key(&self, key: &str) -> Option<SentRef> {
        self.sent_row(&Self::key(&self.feedback, SENT, key.as_bytes()))
    }

    /// The last SMS to the number with this SHA-256.
    pub fn last_sms_by_digest(&self, digest: &str) -> Option<SentRef> {
        self.sent_row(&Self::key(&self.feedback, LAST_SMS, digest.as_bytes()))
    }

    fn sent_row(&self, key: &[u8]) -> Option<SentRef> {
        let value = logged(self.feedback.get(key))??;
        match Feedback::parse(&value, 0) {
            Ok(Feedback::Sent(record)) => Some(record.sent),
            _ => None,
        }
    }

    /// Records an engagement of `user` in `batch`.
    pub fn engage(&self, batch: &mut TableBatch, user: &str, engaged: &Engaged) {
        let table = &self.feedback;
        let mut key = Self::key(table, ENGAGED, user.as_bytes());
        key.extend_from_slice(&engaged.at_ms.to_be_bytes());
        let value = serde_json::to_vec(engaged).unwrap_or_default();
        // Two engagements at one millisecond stay two rows; the same one
        // read twice stays one.
        key.extend_from_slice(&table.blind(&value)[..8]);
        batch.put(&key, value);
    }

    /// `user`'s engagements at or after `since_ms`, oldest first.
    pub fn engagements(&self, user: &str, since_ms: i64) -> Vec<Engaged> {
        let prefix = Self::key(&self.feedback, ENGAGED, user.as_bytes());
        let Some(rows) = logged(self.feedback.scan(&prefix)) else {
            return Vec::new();
        };
        rows.into_iter()
            .filter_map(|(key, value)| {
                let at_ms = i64::from_be_bytes(key.get(17..25)?.try_into().ok()?);
                let mut engaged: Engaged = serde_json::from_slice(&value).ok()?;
                engaged.at_ms = at_ms;
                (at_ms >= since_ms).then_some(engaged)
            })
            .collect()
    }

    /// Removes engagement older than `lookback_ms` and messages older than
    /// a week, and counts the numbers opted out. Reads both tables whole:
    /// run it off the runtime's threads, hourly.
    pub fn sweep(&self, now_ms: i64, lookback_ms: i64) -> Result<usize, StoreError> {
        let mut batch = self.feedback.batch();
        let mut removed = 0;
        let old = self.feedback.scan_where(|key, value| match key.first() {
            Some(&ENGAGED) => key
                .get(17..25)
                .and_then(|at| at.try_into().ok())
                .is_some_and(|at| i64::from_be_bytes(at) < now_ms - lookback_ms),
            Some(&SENT | &LAST_SMS) => match Feedback::parse(value, 0) {
                Ok(Feedback::Sent(record)) => record.sent.sent_ms < now_ms - SENT_KEPT_MS,
                _ => true,
            },
            _ => false,
        })?;
        for (key, _) in old {
            batch.delete(&key);
            removed += 1;
        }
        batch.commit()?;
        let mut numbers = std::collections::HashMap::new();
        for table in [&self.feedback, &self.consent] {
            table.for_each(&[OPT_OUT], |key, value| {
                if let Some((opted, at)) = decode_opt_out(&value) {
                    let known = numbers.entry(key.to_vec()).or_insert((opted, at));
                    if at > known.1 {
                        *known = (opted, at);
                    }
                }
            })?;
        }
        // Both tables key a number alike (the same blinding key).
        let opted = numbers.values().filter(|(o, _)| *o).count();
        self.opted_out.store(opted, Ordering::Relaxed);
        Ok(removed)
    }
}

fn decode_opt_out(value: &[u8]) -> Option<(bool, i64)> {
    let at = i64::from_be_bytes(value.get(1..9)?.try_into().ok()?);
    Some((*value.first()? == 1, at))
}

/// A read that failed is logged and taken as absent: an unreadable opt-out
/// must not stop every decision (the store's fault is on `/readyz`).
fn logged<T>(result: Result<T, StoreError>) -> Option<T> {
    result
        .inspect_err(|e| warn!(error = %e, "feedback state unreadable; taken as absent"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::FeedbackState;
    use crate::feedback::{Engagement, InboundSms};
    use crate::store::Store;
    use rdkafka::ClientConfig;

    const DAY: i64 = 86_400_000;

    fn state(store: &Store) -> std::sync::Arc<FeedbackState> {
        let disk = FeedbackDisk::new(
            store.sealed_table("feedback", FORMAT).unwrap(),
            store.sealed_table("consent", FORMAT).unwrap(),
        );
        FeedbackState::on_disk(ClientConfig::new(), "f".into(), "c".into(), DAY, disk)
    }

    fn sent(key: &str, phone: Option<&str>, at: i64) -> SentRecord {
        SentRecord {
            sent: SentRef {
                user: "u1".into(),
                rule: "r".into(),
                key: Some("card-1".into()),
                idempotency_key: key.into(),
                channel: "sms".into(),
                sent_ms: at,
                deployment: None,
            },
            phone_sha256: phone.map(crate::util::phone_sha256),
        }
    }

    #[test]
    fn replies_find_their_message_and_stop_holds_on_disk_without_clear_text() {
        let store = Store::temporary(1 << 20).unwrap();
        let now = crate::util::now_ms();
        let s = state(&store);
        // This instance's sends are found at once, before their records
        // are read back from the feedback topic.
        s.record_sent(&sent("k1", Some("+14155552671"), now - 2_000));
        s.record_sent(&sent("k2", Some("+14155552671"), now - 1_000));
        assert_eq!(
            &*s.last_sms_to("+14155552671", now).unwrap().idempotency_key,
            "k2"
        );
        assert_eq!(&*s.sent_by_key("k1", now).unwrap().user, "u1");
        // Read back, each is written to disk once. An older record read
        // late (another instance's) does not replace the last SMS.
        for record in [
            sent("k1", Some("+14155552671"), now - 2_000),
            sent("k2", Some("+14155552671"), now - 1_000),
            sent("k0", Some("+14155552671"), now - 3_000),
        ] {
            s.apply(&Feedback::Sent(record), now);
        }
        assert_eq!(s.unread_for_tests(), 0, "read back: kept on disk only");
        assert_eq!(
            &*s.last_sms_to("+14155552671", now).unwrap().idempotency_key,
            "k2"
        );
        assert_eq!(&*s.sent_by_key("k1", now).unwrap().user, "u1");
        assert!(s.sent_by_key("k1", now + 8 * DAY).is_none(), "past a week");
        assert!(s.last_sms_to("+14155550000", now).is_none());

        let stop = |body: &str, at| {
            Feedback::Inbound(InboundSms {
                from: "+14155552671".into(),
                body: body.into(),
                sid: None,
                time_ms: at,
            })
        };
        s.apply(&stop("STOP", now - 500), now);
        assert!(s.opted_out("+14155552671"));
        assert_eq!(s.opt_out_count(), 1);
        // The consent topic's older START does not undo it; a later one does.
        if let Some(disk) = s.disk_for_tests() {
            let mut batch = disk.consent.batch();
            disk.set_opt_out(&mut batch, &disk.consent, "+14155552671", false, now - 600);
            batch.commit().unwrap();
            assert!(s.opted_out("+14155552671"));
            let mut batch = disk.consent.batch();
            disk.set_opt_out(&mut batch, &disk.consent, "+14155552671", false, now - 100);
            batch.commit().unwrap();
        }
        assert!(!s.opted_out("+14155552671"));
        assert_eq!(s.opt_out_count(), 0);

        // A new process on the same directory knows all of it.
        drop(s);
        let again = state(&store);
        assert_eq!(
            &*again
                .last_sms_to("+14155552671", now)
                .unwrap()
                .idempotency_key,
            "k2"
        );
        assert!(!again.opted_out("+14155552671"));
        let needle = b"4155552671";
        for file in walk(store.dir()) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the number in clear",
                file.display()
            );
        }
    }

    #[test]
    fn stop_and_start_read_in_one_batch_leave_the_newest() {
        let store = Store::temporary(1 << 20).unwrap();
        let now = crate::util::now_ms();
        let s = state(&store);
        let sms = |body: &str, at| {
            Feedback::Inbound(InboundSms {
                from: "+14155552671".into(),
                body: body.into(),
                sid: None,
                time_ms: at,
            })
        };
        // A START older than the STOP before it in the batch does not undo it.
        s.apply_together_for_tests(&[sms("STOP", now - 300), sms("START", now - 400)], now);
        assert!(s.opted_out("+14155552671"));
        assert_eq!(s.opt_out_count(), 1);
        // STOP then START at the same time: the one read later wins, once.
        s.apply_together_for_tests(
            &[
                sms("START", now - 100),
                sms("STOP", now - 50),
                sms("START", now - 50),
            ],
            now,
        );
        assert!(!s.opted_out("+14155552671"));
        assert_eq!(s.opt_out_count(), 0);
        // The consent topic's batch: the same rule.
        let disk = s.disk_for_tests().unwrap();
        let mut changes = OptOutChanges::default();
        changes.add("+14155552671", true, now - 10);
        changes.add("+14155552671", false, now - 20);
        let mut batch = disk.consent.batch();
        changes.write(disk, &mut batch, &disk.consent);
        batch.commit().unwrap();
        assert!(s.opted_out("+14155552671"));
        assert_eq!(s.opt_out_count(), 1);
    }

    #[test]
    fn engagement_is_found_by_window_and_swept_after_the_look_back() {
        let store = Store::temporary(1 << 20).unwrap();
        let now = crate::util::now_ms();
        let s = state(&store);
        let opened = |kind: &str, message: Option<&str>, at| {
            Feedback::Engagement(Engagement {
                kind: kind.into(),
                user: Some("u1".into()),
                campaign: Some("spring".into()),
                message: message.map(str::to_string),
                time_ms: at,
            })
        };
        s.apply(&opened("push_opened", Some("k1"), now - 2 * DAY), now);
        s.apply(&opened("push_opened", None, now - 1_000), now);
        s.apply(&opened("sms_failed", Some("k9"), now - 1_000), now);
        assert!(s.engaged("u1", "push_opened", Some("spring"), now - 2_000));
        assert!(!s.engaged("u1", "push_opened", Some("autumn"), 0));
        assert!(!s.engaged("u1", "push_opened", None, now));
        assert!(s.heard_of("u1", "k1"));
        assert!(!s.heard_of("u1", "k9"), "a failure is not a receipt");
        let disk = s.disk_for_tests().unwrap();
        assert_eq!(
            disk.sweep(now, DAY).unwrap(),
            1,
            "the engagement of two days ago"
        );
        assert!(!s.heard_of("u1", "k1"));
        assert!(s.engaged("u1", "push_opened", None, now - 2_000));
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}

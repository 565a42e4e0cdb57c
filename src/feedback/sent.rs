//! The messages herald sent recently — by this instance, and by every other
//! one through the `herald_sent` records of the feedback topic — so that
//! feedback naming a message (an engagement by idempotency key, an SMS reply
//! by phone number) finds it on whichever instance it arrives.

use crate::util::FastDashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// What a reply needs to know about the message it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRef {
    pub user: Arc<str>,
    pub rule: Arc<str>,
    /// The state key of the triggering event (e.g. the card id).
    pub key: Option<Arc<str>>,
    pub idempotency_key: Arc<str>,
    pub channel: Arc<str>,
    pub sent_ms: i64,
    /// The deployment that sent it (`kafka.group_id`); `None` in records
    /// written before deployments were told apart.
    pub deployment: Option<Arc<str>>,
}

impl SentRef {
    /// Whether `deployment` sent it (a record without a deployment counts
    /// as everyone's: it predates the field).
    pub fn sent_by(&self, deployment: &str) -> bool {
        self.deployment.as_deref().is_none_or(|d| d == deployment)
    }
}

pub use crate::util::phone_sha256;

/// Bounded by count and age; the oldest are forgotten first.
pub struct SentIndex {
    by_key: FastDashMap<Arc<str>, Arc<SentRef>>,
    /// The last SMS to each phone number, by the SHA-256 of its E.164 form.
    by_phone: FastDashMap<String, Arc<SentRef>>,
    order: Mutex<VecDeque<(Arc<str>, Option<String>)>>,
    capacity: usize,
    max_age_ms: i64,
}

impl Default for SentIndex {
    /// 200,000 messages, a week.
    fn default() -> Self {
        SentIndex::new(200_000, 7 * 86_400_000)
    }
}

impl SentIndex {
    /// Holds at most `capacity` messages, each at most `max_age_ms`.
    pub fn new(capacity: usize, max_age_ms: i64) -> SentIndex {
        SentIndex {
            by_key: FastDashMap::default(),
            by_phone: FastDashMap::default(),
            order: Mutex::new(VecDeque::new()),
            capacity,
            max_age_ms,
        }
    }

    /// Remembers a sent message; `phone` for SMS.
    pub fn record(&self, sent: SentRef, phone: Option<&str>) {
        self.record_digest(sent, phone.map(phone_sha256));
    }

    /// [`SentIndex::record`] with the number already digested (a
    /// `herald_sent` record from the feedback topic). Recording one message
    /// twice (its own send, then its record read back) keeps one entry.
    pub fn record_digest(&self, sent: SentRef, phone: Option<String>) {
        let sent = Arc::new(sent);
        let key = sent.idempotency_key.clone();
        if self.by_key.insert(key.clone(), Arc::clone(&sent)).is_some() {
            if let Some(phone) = phone {
                self.set_last_sms(phone, sent);
            }
            return;
        }
        if let Some(phone) = &phone {
            self.set_last_sms(phone.clone(), sent);
        }
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        order.push_back((key, phone));
        while order.len() > self.capacity {
            if let Some((old, phone)) = order.pop_front() {
                self.by_key.remove(&old);
                if let Some(phone) = phone {
                    self.by_phone
                        .remove_if(&phone, |_, s| s.idempotency_key == old);
                }
            }
        }
    }

    /// The last SMS to a number, unless one sent later is known.
    fn set_last_sms(&self, phone: String, sent: Arc<SentRef>) {
        self.by_phone
            .entry(phone)
            .and_modify(|known| {
                if known.sent_ms <= sent.sent_ms {
                    *known = Arc::clone(&sent);
                }
            })
            .or_insert_with(|| Arc::clone(&sent));
    }

    /// The message with this idempotency key, if sent within the age limit.
    pub fn by_key(&self, key: &str, now_ms: i64) -> Option<Arc<SentRef>> {
        let found = self.by_key.get(key).map(|s| Arc::clone(&s))?;
        (now_ms - found.sent_ms <= self.max_age_ms).then_some(found)
    }

    /// The last SMS to this number, if sent within the age limit.
    pub fn last_sms_to(&self, phone: &str, now_ms: i64) -> Option<Arc<SentRef>> {
        self.last_sms_by_digest(&phone_sha256(phone), now_ms)
    }

    /// [`SentIndex::last_sms_to`] by the number's SHA-256.
    pub fn last_sms_by_digest(&self, digest: &str, now_ms: i64) -> Option<Arc<SentRef>> {
        let found = self.by_phone.get(digest).map(|s| Arc::clone(&s))?;
        (now_ms - found.sent_ms <= self.max_age_ms).then_some(found)
    }

    /// Forgets a message (kept elsewhere now). Messages are forgotten
    /// about in the order they were recorded, so the order's front is
    /// dropped up to the first one still known.
    pub fn forget(&self, key: &str, phone: Option<&str>) {
        if self.by_key.remove(key).is_none() {
            return;
        }
        if let Some(phone) = phone {
            self.by_phone
                .remove_if(phone, |_, s| &*s.idempotency_key == key);
        }
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        while order
            .front()
            .is_some_and(|(k, _)| !self.by_key.contains_key(k))
        {
            order.pop_front();
        }
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(key: &str, at: i64) -> SentRef {
        SentRef {
            user: "u1".into(),
            rule: "r".into(),
            key: Some("card-1".into()),
            idempotency_key: key.into(),
            channel: "sms".into(),
            sent_ms: at,
            deployment: None,
        }
    }

    #[test]
    fn finds_by_key_and_by_phone_within_bounds() {
        let index = SentIndex::new(2, 1_000);
        index.record(sent("a", 0), Some("+14155552671"));
        index.record(sent("b", 10), Some("+14155552671"));
        assert_eq!(
            index
                .last_sms_to("+14155552671", 20)
                .unwrap()
                .idempotency_key,
            "b".into()
        );
        assert_eq!(index.by_key("a", 20).unwrap().idempotency_key, "a".into());
        assert!(index.by_key("a", 1_001).is_none(), "too old");
        index.record(sent("c", 30), None);
        assert!(index.by_key("a", 40).is_none(), "evicted by count");
        assert_eq!(
            index
                .last_sms_to("+14155552671", 40)
                .unwrap()
                .idempotency_key,
            "b".into(),
            "evicting an older message keeps the phone's newer one"
        );
    }

    #[test]
    fn forgotten_messages_are_not_found_and_leave_no_order_behind() {
        let index = SentIndex::new(100, 1_000);
        index.record(sent("a", 0), Some("+14155552671"));
        index.record(sent("b", 10), None);
        index.record(sent("c", 20), Some("+14155552672"));
        index.forget("a", Some(&phone_sha256("+14155552671")));
        assert!(index.by_key("a", 30).is_none());
        assert!(index.last_sms_to("+14155552671", 30).is_none());
        assert_eq!(index.by_key("b", 30).unwrap().idempotency_key, "b".into());
        // Out of order: c first, then b; the order empties once both are gone.
        index.forget("c", Some(&phone_sha256("+14155552672")));
        assert_eq!(index.order.lock().unwrap().len(), 2, "b still known");
        index.forget("b", None);
        assert_eq!(index.len(), 0);
        assert!(index.order.lock().unwrap().is_empty());
    }
}

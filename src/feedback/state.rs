//! Per-instance feedback state: engagement per user, herald's own SMS opt-out
//! list, and the readers that keep both current on every instance.
//!
//! Every instance reads the whole feedback topic (from `lookback` ago) and the
//! whole consent topic (from the start). A STOP therefore takes effect on every
//! instance as soon as it is read, and [`FeedbackState::consent_barrier`] lets
//! an SMS wait until every STOP written so far has been read.

use crate::util::FastDashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Feedback, Keyword, SentIndex};
use crate::kafka::follow::{BarrierError, Follower, Start};

/// Engagements kept per user; the oldest go first.
const PER_USER: usize = 64;

#[derive(Debug, Clone)]
struct Engaged {
    kind: Arc<str>,
    campaign: Option<Arc<str>>,
    /// The idempotency key of the message engaged with, when named.
    message: Option<Arc<str>>,
    at_ms: i64,
}

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
}

/// Engagement, opt-outs and the messages sent, for the policy stage.
pub struct FeedbackState {
    engagements: FastDashMap<String, VecDeque<Engaged>>,
    /// Phone (E.164) → (opted out, when).
    opt_outs: FastDashMap<String, (bool, i64)>,
    pub sent: SentIndex,
    lookback_ms: i64,
    feedback: Follower,
    consent: Follower,
    /// No topics behind it (rule tests, replays): nothing to wait for.
    offline: bool,
}

impl FeedbackState {
    /// State fed from `feedback_topic` (from `lookback_ms` ago) and `consent_topic`.
    pub fn new(
        client: ClientConfig,
        feedback_topic: String,
        consent_topic: String,
        lookback_ms: i64,
    ) -> Arc<FeedbackState> {
        Self::build(client, feedback_topic, consent_topic, lookback_ms, false)
    }

    /// State with no topics behind it, fed only through [`FeedbackState::apply`]
    /// (rule tests, replays, evaluation).
    pub fn offline(lookback_ms: i64) -> Arc<FeedbackState> {
        Self::build(
            ClientConfig::new(),
            String::new(),
            String::new(),
            lookback_ms,
            true,
        )
    }

    fn build(
        client: ClientConfig,
        feedback_topic: String,
        consent_topic: String,
        lookback_ms: i64,
        offline: bool,
    ) -> Arc<FeedbackState> {
        Arc::new(FeedbackState {
            engagements: FastDashMap::default(),
            opt_outs: FastDashMap::default(),
            sent: SentIndex::default(),
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

    /// Reads both topics until `shutdown`.
    pub async fn follow(self: Arc<Self>, shutdown: watch::Receiver<bool>, now_ms: i64) {
        let since = Start::Since(now_ms - self.lookback_ms);
        let feedback = self.feedback.run(since, shutdown.clone(), |m| {
            if let Some(payload) = m.payload() {
                let fallback = m.timestamp().to_millis().unwrap_or(now_ms);
                if let Ok(record) = Feedback::parse(payload, fallback) {
                    self.apply(&record, crate::util::now_ms());
                }
            }
        });
        let consent = self.consent.run(Start::Beginning, shutdown, |m| {
            if let Some(change) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<ConsentChange>(p).ok())
            {
                self.set_opt_out(&change.phone, !change.consent, change.at_ms);
            }
        });
        tokio::join!(feedback, consent);
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
        match record {
            Feedback::Inbound(sms) => match Keyword::of(&sms.body) {
                Some(Keyword::OptOut) => self.set_opt_out(&sms.from, true, sms.time_ms),
                Some(Keyword::OptIn) => self.set_opt_out(&sms.from, false, sms.time_ms),
                _ => {}
            },
            Feedback::Engagement(e) => {
                let user = e.user.clone().or_else(|| {
                    let key = e.message.as_deref()?;
                    Some(self.sent.by_key(key, now_ms)?.user.to_string())
                });
                if let Some(user) = user {
                    self.record(
                        &user,
                        &e.kind,
                        e.campaign.as_deref(),
                        e.message.as_deref(),
                        e.time_ms,
                    );
                }
            }
            Feedback::Sent(s) => self
                .sent
                .record_digest(s.sent.clone(), s.phone_sha256.clone()),
            Feedback::PushAction(a) => {
                if let Some(user) = &a.user {
                    self.record(
                        user,
                        "push_action",
                        None,
                        Some(&a.idempotency_key),
                        a.time_ms,
                    );
                }
            }
        }
    }

    /// Records that `user` engaged (`kind`) at `at_ms`.
    pub fn engaged_now(&self, user: &str, kind: &str, campaign: Option<&str>, at_ms: i64) {
        self.record(user, kind, campaign, None, at_ms);
    }

    fn record(
        &self,
        user: &str,
        kind: &str,
        campaign: Option<&str>,
        message: Option<&str>,
        at_ms: i64,
    ) {
        let mut list = self.engagements.entry(user.to_string()).or_default();
        let horizon = at_ms - self.lookback_ms;
        while list.front().is_some_and(|e| e.at_ms < horizon) {
            list.pop_front();
        }
        list.push_back(Engaged {
            kind: Arc::from(kind),
            campaign: campaign.map(Arc::from),
            message: message.map(Arc::from),
            at_ms,
        });
        if list.len() > PER_USER {
            list.pop_front();
        }
    }

    /// Whether `user` engaged (`kind`, with `campaign` when given) at or after `since_ms`.
    pub fn engaged(&self, user: &str, kind: &str, campaign: Option<&str>, since_ms: i64) -> bool {
        self.engagements.get(user).is_some_and(|list| {
            list.iter().any(|e| {
                &*e.kind == kind
                    && e.at_ms >= since_ms
                    && campaign.is_none_or(|c| e.campaign.as_deref() == Some(c))
            })
        })
    }

    /// Whether any feedback named this message as having arrived (delivered,
    /// opened, clicked, …). Provider statuses that say it has not arrived yet
    /// or never will (Twilio's `sms_sent`, `sms_undelivered`, `sms_failed`, …)
    /// are not receipts.
    pub fn heard_of(&self, user: &str, message: &str) -> bool {
        self.engagements.get(user).is_some_and(|list| {
            list.iter()
                .any(|e| e.message.as_deref() == Some(message) && arrived(&e.kind))
        })
    }

    /// Sets a number's opt-out, unless a later change is already known.
    pub fn set_opt_out(&self, phone: &str, opted_out: bool, at_ms: i64) {
        let mut entry = self
            .opt_outs
            .entry(phone.to_string())
            .or_insert((opted_out, at_ms));
        if at_ms >= entry.1 {
            *entry = (opted_out, at_ms);
        }
    }

    /// Whether this number replied STOP (and not START since).
    pub fn opted_out(&self, phone: &str) -> bool {
        self.opt_outs.get(phone).is_some_and(|e| e.0)
    }

    /// Numbers currently opted out.
    pub fn opt_out_count(&self) -> usize {
        self.opt_outs.iter().filter(|e| e.0).count()
    }
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
        s.sent.record(
            crate::feedback::SentRef {
                user: "u2".into(),
                rule: "r".into(),
                key: None,
                idempotency_key: "k2".into(),
                channel: "push".into(),
                sent_ms: 0,
            },
            None,
        );
        s.apply(&opened(None, Some("k2"), 5), 5);
        assert!(s.engaged("u2", "email_opened", None, 0));
        s.apply(&opened(None, Some("nope"), 5), 5);
        assert_eq!(s.engagements.len(), 2);
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

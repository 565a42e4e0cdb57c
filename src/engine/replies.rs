//! Acting on the feedback topic, once per record across the consumer group:
//! publishing consent changes (STOP/START), answering HELP, and turning
//! replies and push action presses into events on the replies topic.
//!
//! The state side (opt-out list, engagement) is applied on every instance by
//! [`crate::feedback::FeedbackState::follow`]; this side writes things out.

use serde_json::{Map, Value};
use std::sync::Arc;
use tracing::{info, warn};

use super::{ChannelRuntime, RecentSends, StageContext};
use crate::config::{Config, FeedbackConfig};
use crate::deliver::Priority;
use crate::deliver::{send_with_retry, Address, Message};
use crate::feedback::state::ConsentChange;
use crate::feedback::FeedbackState;
use crate::feedback::{reply_event, Feedback, InboundSms, Keyword, PushAction, SentRef};
use crate::ingest::Incoming;
use crate::metrics::StageEvent;
use crate::outcome::{DeadLetterCode, Outcome, Pending, SourceRef, Status, Timings};
use crate::state::{Kept, Partitioning, StateTable};
use crate::util::fingerprint;
use crate::util::FastMap;

/// The replies path. Its state: the HELP answers sent lately (one answer
/// per feedback record, also after a crash).
pub struct Replies {
    cx: StageContext,
    feedback: Arc<FeedbackState>,
    feedback_config: FeedbackConfig,
    channels: Arc<FastMap<String, ChannelRuntime>>,
    consent_topic: String,
    replies_topic: String,
    recent: RecentSends,
}

impl Replies {
    /// The replies path with the configured topics and HELP channel.
    pub fn new(
        cx: StageContext,
        feedback: Arc<FeedbackState>,
        channels: Arc<FastMap<String, ChannelRuntime>>,
        config: &Config,
    ) -> Replies {
        Replies {
            cx,
            feedback,
            feedback_config: config.feedback.clone(),
            channels,
            consent_topic: config.topics.consent.clone(),
            replies_topic: config.topics.replies.clone(),
            recent: RecentSends::new(100_000, std::time::Duration::from_secs(24 * 3600)),
        }
    }

    /// The replies' state: the HELP answers sent lately, and what every
    /// instance reads whole from the feedback and consent topics.
    pub fn tables(config: &Config) -> Vec<StateTable> {
        vec![
            StateTable {
                name: "HELP answers",
                stage: "replies",
                key: "feedback record",
                partitioning: Partitioning::Global,
                kept: Kept::Topic(config.topics.outcomes.clone()),
                bound: "100,000 keys; a day",
            },
            StateTable {
                name: "STOP list, engagement, sent messages",
                stage: "replies",
                key: "phone digest, user, idempotency key",
                partitioning: Partitioning::Global,
                kept: Kept::Topic(config.topics.feedback.clone()),
                bound: "feedback.lookback",
            },
        ]
    }

    /// The HELP answers sent lately, read back from the tail of the
    /// outcomes topic (blocking).
    pub fn seed_recent_sends(
        &self,
        client: &rdkafka::ClientConfig,
        outcomes_topic: &str,
        per_partition: i64,
    ) -> Result<usize, String> {
        self.recent
            .seed_from_outcomes(client, outcomes_topic, per_partition)
    }

    /// Handles one feedback record; the returned writes make it final.
    pub async fn handle(&self, msg: Incoming) -> Vec<Pending> {
        let fallback_ms = msg.timestamp_ms.unwrap_or(msg.consumed_ms);
        let record = match msg
            .payload
            .as_deref()
            .map(|p| Feedback::parse(p, fallback_ms))
        {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                self.count_feedback("invalid", "invalid");
                return vec![self.cx.dead_letter(&msg, e.reason(), e.to_string())];
            }
            None => {
                self.count_feedback("invalid", "invalid");
                return vec![self.cx.dead_letter(
                    &msg,
                    DeadLetterCode::FeedbackEmpty,
                    "feedback record has no payload".into(),
                )];
            }
        };
        let now = self.cx.clock.now_ms();
        match record {
            Feedback::Inbound(sms) => self.inbound_sms(&msg, sms, now).await,
            Feedback::PushAction(action) => self.push_action(action, now),
            // Applied by every instance's feedback reader; nothing to act on.
            Feedback::Sent(_) => Vec::new(),
            Feedback::Engagement(e) => {
                let known = e.user.is_some()
                    || e.message
                        .as_deref()
                        .is_some_and(|k| self.feedback.sent_by_key(k, now).is_some());
                self.count_feedback(
                    "engagement",
                    if known { "applied" } else { "unknown_message" },
                );
                Vec::new()
            }
        }
    }

    fn count_feedback(&self, kind: &'static str, result: &'static str) {
        self.cx.metrics.emit(StageEvent::Feedback { kind, result });
    }

    async fn inbound_sms(&self, msg: &Incoming, sms: InboundSms, now: i64) -> Vec<Pending> {
        // The SMS it answers may have been sent by another instance: its
        // `herald_sent` record is on this topic, before the reply. Unsure
        // (the topic unreadable for now) goes on with what is known.
        let wait = std::time::Duration::from_millis(self.feedback_config.consent_wait_ms);
        let _ = self.feedback.consent_barrier(wait).await;
        let original = self.feedback.last_sms_to(&sms.from, now);
        // Another deployment sent the SMS this answers: it acts (publishes
        // the consent change, answers HELP, publishes the reply); this one
        // only applies a STOP or START to its own opt-out list.
        let theirs = original
            .as_deref()
            .is_some_and(|o| !o.sent_by(&self.cx.deployment));
        match Keyword::of(&sms.body) {
            Some(keyword @ (Keyword::OptOut | Keyword::OptIn)) => {
                let consent = keyword == Keyword::OptIn;
                // At once here too: this instance may read the record before
                // its state reader does.
                self.feedback.set_opt_out(&sms.from, !consent, sms.time_ms);
                let opted_out = self.feedback.opt_out_count();
                self.cx.metrics.emit(StageEvent::SmsOptOuts(opted_out));
                self.count_feedback(if consent { "start" } else { "stop" }, "applied");
                info!(phone = %fingerprint(&sms.from), consent, "SMS consent changed by keyword");
                if theirs {
                    return Vec::new();
                }
                let change = ConsentChange {
                    phone: sms.from.clone(),
                    channel: "sms".into(),
                    consent,
                    keyword: sms.body.trim().to_ascii_uppercase(),
                    at_ms: sms.time_ms,
                    user: original.map(|o| o.user.to_string()),
                    deployment: Some(self.cx.deployment.to_string()),
                };
                let payload = serde_json::to_vec(&change).unwrap_or_default();
                vec![self
                    .cx
                    .recorder
                    .publish(&self.consent_topic, &sms.from, payload)]
            }
            Some(Keyword::Help) if theirs => {
                self.count_feedback("help", "other_deployment");
                Vec::new()
            }
            Some(Keyword::Help) => {
                self.count_feedback("help", "applied");
                self.answer_help(msg, &sms, original.as_deref()).await
            }
            None => {
                let Some(original) = original else {
                    self.count_feedback("reply", "unknown_message");
                    return Vec::new();
                };
                if theirs {
                    self.count_feedback("reply", "other_deployment");
                    return Vec::new();
                }
                self.count_feedback("reply", "applied");
                let mut extra = Map::new();
                extra.insert("text".into(), Value::from(sms.body.trim()));
                extra.insert("reply_ms".into(), Value::from(sms.time_ms));
                self.publish_reply("sms_reply", &original, extra)
            }
        }
    }

    fn push_action(&self, action: PushAction, now: i64) -> Vec<Pending> {
        // The app echoes the push's data; the message itself is looked up when
        // this instance sent it, else the echoed rule and user are used.
        let original = self
            .feedback
            .sent_by_key(&action.idempotency_key, now)
            .map(|s| (*s).clone())
            .or_else(|| {
                let rule = action.rule.clone()?;
                self.cx.rules.current().set.get(&rule)?;
                Some(SentRef {
                    user: action.user.as_deref()?.into(),
                    rule: rule.into(),
                    key: action.key.as_deref().map(Arc::from),
                    idempotency_key: action.idempotency_key.as_str().into(),
                    channel: "push".into(),
                    sent_ms: action.time_ms,
                    deployment: None,
                })
            });
        let Some(original) = original else {
            self.count_feedback("push_action", "unknown_message");
            return Vec::new();
        };
        if !original.sent_by(&self.cx.deployment) {
            self.count_feedback("push_action", "other_deployment");
            return Vec::new();
        }
        self.count_feedback("push_action", "applied");
        let mut extra = Map::new();
        extra.insert("action".into(), Value::from(action.action));
        extra.insert("reply_ms".into(), Value::from(action.time_ms));
        self.publish_reply("push_action", &original, extra)
    }

    fn publish_reply(
        &self,
        kind: &str,
        original: &SentRef,
        extra: Map<String, Value>,
    ) -> Vec<Pending> {
        let event = reply_event(kind, original, extra);
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        vec![self
            .cx
            .recorder
            .publish(&self.replies_topic, &original.user, payload)]
    }

    /// Answers HELP on the help channel, whatever the opt-out list says (as
    /// carriers require), once per feedback record, and records the outcome.
    async fn answer_help(
        &self,
        msg: &Incoming,
        sms: &InboundSms,
        original: Option<&SentRef>,
    ) -> Vec<Pending> {
        let Some(channel) = self
            .feedback_config
            .help_channel
            .as_ref()
            .and_then(|c| self.channels.get(c))
        else {
            return Vec::new();
        };
        let key = {
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest(
                format!(
                    "herald.help\0{}\0{}\0{}",
                    msg.topic, msg.partition, msg.offset
                )
                .as_bytes(),
            );
            hex::encode(&digest[..16])
        };
        let user = original.map_or_else(
            || format!("phone:{}", fingerprint(&sms.from)),
            |o| o.user.to_string(),
        );
        let user: Arc<str> = user.into();
        let key: Arc<str> = key.into();
        let mut outcome = Outcome {
            rule: "herald.help".into(),
            rule_version: "".into(),
            category: "transactional".into(),
            user: user.clone(),
            channel: channel.channel.name.clone(),
            status: Status::Suppressed,
            reason: None,
            reason_code: None,
            idempotency_key: key.clone(),
            recipient: Some(crate::util::mask_phone(&sms.from)),
            provider_message_id: None,
            attempts: 0,
            key: None,
            hops: Vec::new(),
            next_channel: None,
            release_ms: None,
            pattern: None,
            sms: None,
            locale: None,
            subscription: None,
            digest: None,
            experiment: None,
            delivery: None,
            shadow: false,
            unknown_after_crash: false,
            source: SourceRef {
                topic: msg.topic.as_str().into(),
                partition: msg.partition,
                offset: msg.offset,
            },
            timings: Timings {
                event_ms: sms.time_ms,
                consumed_ms: msg.consumed_ms,
                matched_ms: self.cx.clock.now_ms(),
                ..Timings::default()
            },
        };
        if !self.recent.first_time(&key) {
            outcome.because("duplicate", "duplicate");
            return vec![self.cx.recorder.outcome(&outcome)];
        }
        let message = Message {
            rule_id: "herald.help".into(),
            category: "transactional".into(),
            priority: Priority::High,
            title: None,
            body: self.feedback_config.help_text.clone(),
            collapse_key: None,
            ttl_seconds: None,
            action_category: None,
            idempotency_key: key.clone(),
            data: Default::default(),
            user,
        };
        let to = Address::Phone(sms.from.clone());
        let budget = channel.channel.policy.retry_for;
        let attempted =
            send_with_retry(&channel.channel, &message, &to, &channel.retries, budget).await;
        outcome.attempts = attempted.attempts;
        outcome.timings.request_sent_ms = attempted.request_sent_ms;
        outcome.timings.answered_ms = attempted.answered_ms;
        match attempted.result {
            Ok(d) => {
                outcome.status = Status::Sent;
                outcome.provider_message_id = d.provider_message_id;
                channel.sent.inc();
            }
            Err(e) => {
                self.recent.forget(&key);
                warn!(reason = %e.reason(), "HELP answer failed");
                outcome.status = Status::Failed;
                outcome.because(e.code(), e.reason());
                channel.failed.inc();
            }
        }
        vec![self.cx.recorder.outcome(&outcome)]
    }
}

//! One message's decision, in the documented policy order, and fallback chains.
//!
//! Order for each channel: consent (the profile's, then herald's own SMS
//! opt-out list) → category preference → freshness → quiet hours (drop, or
//! hold until they end) → an address on the channel → rendering →
//! cross-channel suppression (`suppress_if`) → de-duplication → frequency caps
//! → send. A fallback chain moves to its next channel only when the reason is
//! about the channel (no consent, no address, dead tokens, a failed send).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tracing::warn;

use super::held::{Held, HeldMessage};
use super::job::Job;
use super::{ChannelRuntime, Pipeline};
use crate::config::{OnUnknown, ProviderKind};
use crate::deliver::{send_with_retry, Address, Message, SendError};
use crate::feedback::{SentRecord, SentRef};
use crate::ingest::decode::Event;
use crate::outcome::{DeadLetter, Hop, Outcome, Pending, SourceRef, Status, Timings};
use crate::policy::{address, Subject, Suppression};
use crate::profile::Profile;
use crate::render::{JsonFields, RuleScope, Scope};
use crate::rules::Rule;
use crate::state::{LedgerEntry, LedgerStatus, Seen};

/// One (rule, channel) decision and what must be written for it.
pub struct Decided {
    pub outcome: Outcome,
    pub message: Option<Message>,
    pub dead_letter: Option<DeadLetter>,
    /// The rule's decision counters (sent, suppressed, failed, held).
    pub counters: [IntCounter; 4],
    /// A fallback chain may try its next channel after this decision.
    may_hop: bool,
    /// Quiet hours: hold the message until then, epoch ms.
    hold_until: Option<i64>,
    /// Writes besides the outcome and dead letter (the held topic).
    pub writes: Vec<Pending>,
    /// The send-ledger key to record this decision under; `None` for a
    /// redelivery the ledger already knew.
    pub ledger_key: Option<String>,
}

impl Pipeline {
    /// Decides `chain` in order for one rule and event: each channel's decision,
    /// stopping at the first that is not passed over.
    pub(super) async fn run_chain(
        &self,
        job: &Job,
        chain: &[String],
        mut hops: Vec<Hop>,
    ) -> Vec<Decided> {
        let mut decided = Vec::new();
        for (i, name) in chain.iter().enumerate() {
            let Some(channel) = self.channels.get(name) else {
                continue;
            };
            // Boxed: a decision holds much across its awaits, and a chain
            // future that held it inline would be copied whole each time it
            // moves (into the list of chains, into the join).
            let mut d = Box::pin(self.decide(job, channel)).await;
            d.outcome.hops = hops.clone();
            if let Some(release_ms) = d.hold_until {
                let held = Held {
                    release_ms,
                    idempotency_key: d.outcome.idempotency_key.to_string(),
                    collapse: job
                        .rule()
                        .collapse_key
                        .as_ref()
                        .map(|c| format!("{}\u{0}{}\u{0}{c}", job.event.user, job.rule().id)),
                    item: HeldMessage {
                        job: job.for_release(),
                        chain: chain[i..].to_vec(),
                        hops: hops.clone(),
                        outcome: d.outcome.clone(),
                        unless_heard_of: None,
                    },
                };
                let record = self.persist(&held);
                match self.held.hold(held) {
                    Ok(replaced) => {
                        self.metrics.held.set(self.held.len() as i64);
                        d.writes.push(record);
                        if let Some(old) = replaced {
                            let mut gone = self.collapsed(old.item);
                            self.held_log.forget(&old.idempotency_key);
                            gone.writes.push(
                                self.recorder
                                    .tombstone(&self.held_log.topic, &old.idempotency_key),
                            );
                            decided.push(gone);
                        }
                        decided.push(d);
                    }
                    Err(_) => {
                        let outcome = self.suppress(job, d.outcome, Suppression::Duplicate);
                        // Already held: the held one keeps the ledger's `held`.
                        decided.push(Decided {
                            outcome,
                            hold_until: None,
                            ledger_key: None,
                            ..d
                        });
                    }
                }
                break;
            }
            let next = chain.get(i + 1);
            if let (Status::Sent, Some(next), Some(wait), false) = (
                d.outcome.status,
                next,
                job.rule().await_delivery_ms,
                d.outcome.shadow,
            ) {
                let record =
                    self.await_delivery(job, &d.outcome, &chain[i + 1..], hops, next, wait);
                d.writes.extend(record);
                decided.push(d);
                break;
            }
            let hop = d.may_hop && next.is_some();
            if hop {
                d.outcome.next_channel = next.cloned();
                hops.push(Hop {
                    channel: name.clone(),
                    reason: d.outcome.reason.clone().unwrap_or_default(),
                });
            }
            decided.push(d);
            if !hop {
                break;
            }
        }
        decided
    }

    /// After a send on a fallback chain with `await_delivery`: schedules the
    /// rest of the chain, to run unless a delivery receipt arrives in time.
    fn await_delivery(
        &self,
        job: &Job,
        sent: &Outcome,
        rest: &[String],
        mut hops: Vec<Hop>,
        next: &str,
        wait_ms: i64,
    ) -> Option<Pending> {
        hops.push(Hop {
            channel: sent.channel.to_string(),
            reason: format!(
                "not_delivered:{}:{}",
                sent.channel,
                crate::util::Span(wait_ms as u64)
            ),
        });
        let mut outcome = sent.clone();
        outcome.channel = next.into();
        outcome.status = Status::Held;
        // Not an outcome (the held topic keeps it): no decision is counted.
        outcome.because(
            "awaiting_delivery",
            format!(
                "awaiting_delivery:{}:{}",
                sent.channel,
                crate::util::Span(wait_ms as u64)
            ),
        );
        outcome.hops = hops.clone();
        let release_ms = self.clock.now_ms() + wait_ms;
        outcome.release_ms = Some(release_ms);
        let held = Held {
            release_ms,
            idempotency_key: format!("{}/awaiting-delivery", sent.idempotency_key),
            collapse: None,
            item: HeldMessage {
                job: job.for_release(),
                chain: rest.to_vec(),
                hops,
                outcome,
                unless_heard_of: Some(sent.idempotency_key.to_string()),
            },
        };
        let record = self.persist(&held);
        self.held.hold(held).ok()?;
        self.metrics.held.set(self.held.len() as i64);
        Some(record)
    }

    /// Writes a held message to the held topic.
    fn persist(&self, held: &Held<HeldMessage>) -> Pending {
        self.recorder
            .publish_built(&self.held_log.topic, &held.idempotency_key, || {
                crate::util::json_bytes(&super::held_log::HeldRecord::of(held))
            })
    }

    /// The outcome of a held message replaced by a newer one with its collapse key.
    fn collapsed(&self, old: HeldMessage) -> Decided {
        let mut outcome = old.outcome;
        outcome.status = Status::Suppressed;
        outcome.because("collapsed", "collapsed");
        outcome.release_ms = None;
        self.metrics
            .held_released
            .with_label_values(&["collapsed"])
            .inc();
        Decided {
            message: None,
            dead_letter: None,
            counters: old.job.loaded.decisions[old.job.rule].clone(),
            may_hop: false,
            hold_until: None,
            writes: Vec::new(),
            ledger_key: Some(format!("{}/{}", old.job.intent, outcome.channel)),
            outcome,
        }
    }

    /// One (rule, channel) decision for an event.
    async fn decide(&self, job: &Job, channel: &ChannelRuntime) -> Decided {
        let (event, rule) = (&*job.event, job.rule());
        let counters = job.loaded.decisions[job.rule].clone();
        let mut outcome = Outcome {
            rule: rule.id.clone(),
            rule_version: rule.version.clone(),
            category: rule.category.clone(),
            user: event.user.clone(),
            channel: channel.channel.name.clone(),
            status: Status::Suppressed,
            reason: None,
            reason_code: None,
            idempotency_key: Arc::default(),
            recipient: None,
            provider_message_id: None,
            attempts: 0,
            key: event.key.clone(),
            hops: Vec::new(),
            next_channel: None,
            release_ms: None,
            pattern: job.pattern.as_ref().map(|p| p.summary.clone()),
            delivery: None,
            shadow: false,
            unknown_after_crash: false,
            source: SourceRef {
                topic: Arc::clone(&event.source),
                partition: event.partition,
                offset: event.offset,
            },
            timings: Timings {
                event_ms: event.time_ms,
                consumed_ms: event.consumed_ms,
                matched_ms: job.matched_ms,
                ..Timings::default()
            },
        };
        let ledger_key = crate::util::slash_joined(&[&job.intent, &channel.channel.name]);
        let mut after_crash = false;
        // Settled by the ledger alone: the outcome, and whether to record it.
        let settled = |mut outcome: Outcome, why: Suppression, record: bool| {
            outcome.idempotency_key = self.ledger.idempotency_key(&ledger_key).unwrap_or_default();
            Decided {
                outcome: self.suppress(job, outcome, why),
                message: None,
                dead_letter: None,
                counters: counters.clone(),
                may_hop: false,
                hold_until: None,
                writes: Vec::new(),
                ledger_key: record.then(|| ledger_key.clone()),
            }
        };
        match self.ledger.seen(&ledger_key) {
            Seen::New => {}
            Seen::Held if job.release => {}
            // A redelivered intent (a restart, a rebalance, a replayed
            // event): decided before, by this owner or the last one.
            Seen::Held | Seen::Decided(_) => {
                return settled(outcome, Suppression::Duplicate, false);
            }
            Seen::InFlight => {
                // Recorded attempted, never answered: the request was in
                // flight when its owner died. The channel decides.
                self.metrics
                    .unknown_after_crash
                    .with_label_values(&[
                        &*channel.channel.name,
                        channel.channel.on_unknown.as_str(),
                    ])
                    .inc();
                if channel.channel.on_unknown == OnUnknown::Skip {
                    return settled(outcome, Suppression::UnknownAfterCrash, true);
                }
                after_crash = true;
            }
        }
        outcome.unknown_after_crash = after_crash;
        let done = |outcome, message, dead_letter, may_hop| Decided {
            outcome,
            message,
            dead_letter,
            counters: counters.clone(),
            may_hop,
            hold_until: None,
            writes: Vec::new(),
            ledger_key: Some(ledger_key.clone()),
        };
        let subject = Subject {
            rule: &rule.id,
            category: &rule.category,
            rule_policy: &rule.policy,
            event_ms: event.time_ms,
        };
        let now = self.clock.now_ms();
        let profile = job.profile.as_deref();
        // herald's own opt-out list belongs with consent, before quiet hours
        // and caps: wait until every STOP written so far was read, then ask.
        let phone = profile
            .filter(|p| p.consents_to(&channel.channel.name))
            .and_then(|p| match address(p, &channel.channel, &self.profiles) {
                Ok(Address::Phone(phone)) => Some(phone),
                _ => None,
            });
        let mut opted_out = false;
        if let Some(phone) = &phone {
            let wait = std::time::Duration::from_millis(self.feedback_config.consent_wait_ms);
            if let Err(e) = self.feedback.consent_barrier(wait).await {
                self.metrics.consent_waits_failed.inc();
                outcome.status = Status::Failed;
                outcome.because("consent_unknown", "consent_unknown");
                let record =
                    self.failed_send_record(event, rule, channel, "consent_unknown", e.to_string());
                return done(outcome, None, Some(record), false);
            }
            opted_out = self.feedback.opted_out(phone);
        }
        let admitted = self
            .policy
            .admit(profile, &subject, &channel.channel, now, opted_out)
            .and_then(|p| Ok((p, address(p, &channel.channel, &self.profiles)?)));
        let (profile, address) = match admitted {
            Ok(found) => found,
            Err(quiet @ Suppression::QuietHours { until_ms, .. })
                if self.policy.holds(&subject)
                    && self
                        .policy
                        .max_age_s(&subject)
                        .is_none_or(|max| until_ms - event.time_ms <= max as i64 * 1000) =>
            {
                outcome.status = Status::Held;
                outcome.because(quiet.code(), quiet.to_string());
                outcome.release_ms = Some(until_ms);
                if let Some(p) = profile {
                    if let Ok(a) = address(p, &channel.channel, &self.profiles) {
                        outcome.recipient = Some(a.masked());
                        outcome.idempotency_key =
                            idempotency_key(rule, event, &channel.channel.name, &a);
                    }
                }
                if outcome.idempotency_key.is_empty() {
                    let to = Address::User(event.user.to_string());
                    outcome.idempotency_key =
                        idempotency_key(rule, event, &channel.channel.name, &to);
                }
                return Decided {
                    hold_until: Some(until_ms),
                    ..done(outcome, None, None, false)
                };
            }
            Err(s) => {
                let hop = s.is_channel_specific();
                return done(self.suppress(job, outcome, s), None, None, hop);
            }
        };
        outcome.recipient = Some(address.masked());
        outcome.idempotency_key = idempotency_key(rule, event, &channel.channel.name, &address);
        let message = match render(job, channel, &outcome.idempotency_key) {
            Ok(m) => m,
            Err(detail) => {
                outcome.status = Status::Failed;
                outcome.because("render_error", "render_error");
                let record = self.failed_send_record(event, rule, channel, "render_error", detail);
                return done(outcome, None, Some(record), false);
            }
        };
        if !rule.policy.suppress_if.is_empty() {
            // Engagement written before the trigger must be seen.
            let wait = std::time::Duration::from_millis(self.feedback_config.consent_wait_ms);
            if let Err(e) = self.feedback.consent_barrier(wait).await {
                outcome.status = Status::Failed;
                outcome.because("engagement_unknown", "engagement_unknown");
                let record = self.failed_send_record(
                    event,
                    rule,
                    channel,
                    "engagement_unknown",
                    e.to_string(),
                );
                return done(outcome, Some(message), Some(record), false);
            }
        }
        if let Err(s) = self.policy.engaged_elsewhere(
            &self.feedback,
            &event.user,
            &rule.policy,
            rule.campaign.as_deref(),
            now,
        ) {
            return done(self.suppress(job, outcome, s), Some(message), None, false);
        }
        let reservation = match self.policy.reserve(profile, &subject, now) {
            Ok(r) => r,
            Err(s) => {
                return done(self.suppress(job, outcome, s), Some(message), None, false);
            }
        };
        if rule.shadow {
            // Would be sent: recorded as such, marked shadow; nothing leaves,
            // and no place under the caps is kept.
            if let Some(r) = &reservation {
                self.policy.release(r);
            }
            outcome.status = Status::Sent;
            outcome.shadow = true;
            return done(outcome, Some(message), None, false);
        }
        // Retried while the message is fresh: its freshness limit by event
        // time, or the channel's retry window when it has none.
        // (on the pipeline's clock, so replays on a virtual clock agree).
        let budget = match self.policy.max_age_s(&subject) {
            Some(max) => {
                let fresh_until = event.time_ms.saturating_add(max as i64 * 1000);
                Duration::from_millis(fresh_until.saturating_sub(now).max(0) as u64)
            }
            None => channel.channel.policy.retry_for,
        };
        // The ledger hears of the request before the provider does: if this
        // instance dies with the request in flight, the next owner finds it.
        let attempt = LedgerEntry {
            user: event.user.clone(),
            status: LedgerStatus::Attempted,
            at_ms: now,
            category: rule.category.clone(),
            rule: rule.id.clone(),
            idempotency_key: outcome.idempotency_key.clone(),
        };
        if let Some(write) = self.ledger.record(&ledger_key, attempt) {
            write.await;
        }
        let attempted = send_with_retry(
            &channel.channel,
            &message,
            &address,
            &channel.retries,
            budget,
        )
        .await;
        outcome.attempts = attempted.attempts;
        outcome.timings.request_sent_ms = attempted.request_sent_ms;
        outcome.timings.answered_ms = attempted.answered_ms;
        channel
            .latency
            .observe((attempted.answered_ms - attempted.request_sent_ms).max(0) as f64 / 1000.0);
        match attempted.result {
            Ok(delivered) => {
                outcome.status = Status::Sent;
                outcome.provider_message_id = delivered.provider_message_id;
                outcome.delivery = Some(delivered.delivery.unwrap_or_else(|| "accepted".into()));
                let sent = attempted.request_sent_ms;
                self.metrics
                    .event_to_send
                    .observe((sent - event.time_ms).max(0) as f64 / 1000.0);
                self.metrics
                    .consume_to_send
                    .observe((sent - event.consumed_ms).max(0) as f64 / 1000.0);
                let phone = match &address {
                    Address::Phone(p) => Some(p.as_str()),
                    _ => None,
                };
                let sent_ref = SentRef {
                    user: event.user.clone(),
                    rule: rule.id.clone(),
                    key: event.key.clone(),
                    idempotency_key: outcome.idempotency_key.clone(),
                    channel: channel.channel.name.clone(),
                    sent_ms: sent,
                };
                // Every instance learns of the send from the feedback topic,
                // so a reply or an engagement finds it wherever it arrives.
                let record = SentRecord {
                    sent: sent_ref,
                    phone_sha256: phone.map(|p| profile.phone_sha256_of(p)),
                };
                let shared =
                    self.recorder
                        .publish_built(&self.topics.feedback, &event.user, || record.to_bytes());
                self.feedback
                    .sent
                    .record_digest(record.sent, record.phone_sha256);
                Decided {
                    writes: vec![shared],
                    ..done(outcome, Some(message), None, false)
                }
            }
            Err(e) => {
                let reason = e.reason();
                if let Some(r) = &reservation {
                    self.policy.release(r);
                }
                if let (SendError::Unregistered, Address::Push(token)) = (&e, &address) {
                    self.profiles.mark_token_dead(&token.token);
                }
                let mut writes = Vec::new();
                if let (SendError::OptedOutAtProvider, Address::Phone(phone)) = (&e, &address) {
                    // The number said STOP at Twilio: record it as the STOP it
                    // was, so every instance and the consent topic learn it.
                    self.feedback.set_opt_out(phone, true, now);
                    let field = |k: &str, v: &str| (k.to_string(), v.to_string());
                    let stop = crate::feedback::twilio::inbound_record(&[
                        field("From", phone),
                        field("Body", "STOP"),
                        field("MessageSid", ""),
                        field("herald_source", "twilio_error_21610"),
                    ]);
                    writes.push(self.recorder.publish(
                        &self.topics.feedback,
                        phone,
                        serde_json::to_vec(&stop).unwrap_or_default(),
                    ));
                }
                warn!(rule = %rule.id, channel = %channel.channel.name, %reason, attempts = attempted.attempts, "send failed");
                let record = self.failed_send_record(event, rule, channel, &reason, e.to_string());
                outcome.status = Status::Failed;
                outcome.because(e.code(), reason);
                Decided {
                    writes,
                    ..done(outcome, Some(message), Some(record), true)
                }
            }
        }
    }

    pub(super) fn suppress(&self, job: &Job, mut outcome: Outcome, why: Suppression) -> Outcome {
        let code = why.code_index();
        self.suppression_counters[code].inc();
        job.loaded.suppressions[job.rule][code]
            .get_or_init(|| {
                self.metrics
                    .rule_suppressions
                    .with_label_values(&[&*job.rule().id, why.code()])
            })
            .inc();
        outcome.status = Status::Suppressed;
        outcome.because(why.code(), why.text());
        outcome
    }

    pub(super) fn failed_send_record(
        &self,
        event: &Event,
        rule: &Rule,
        channel: &ChannelRuntime,
        reason: &str,
        detail: String,
    ) -> DeadLetter {
        self.metrics
            .dead_letters
            .with_label_values(&["send_failed"])
            .inc();
        DeadLetter {
            reason: format!("send_failed:{reason}"),
            detail,
            topic: event.source.to_string(),
            partition: event.partition,
            offset: event.offset,
            original: crate::outcome::Original::default(),
            rule: Some(rule.id.to_string()),
            channel: Some(channel.channel.name.to_string()),
            at_ms: self.clock.now_ms(),
        }
    }
}

/// Renders the rule's templates for a channel: push gets title and body, other
/// channels the SMS text (falling back to the body).
fn render(
    job: &Job,
    channel: &ChannelRuntime,
    idempotency_key: &Arc<str>,
) -> Result<Message, String> {
    let (rule, event, templates) = (job.rule(), &*job.event, &job.loaded.set.templates);
    let seen = Scope {
        event: Arc::clone(&job.event) as _,
        profile: job.profile.clone().map(|p| p as _),
        rule: RuleScope {
            id: &rule.id,
            category: &rule.category,
            description: &rule.description,
        },
        pattern: job.pattern.as_ref().map(|p| &p.context),
    };
    let names = &rule.template_names;
    let part = |name: &str| {
        let full = match name {
            "title" => &names.title,
            "body" => &names.body,
            _ => &names.text,
        };
        templates
            .render(full, &seen)
            .map_err(|e| format!("template.{name}: {e}"))
    };
    let push = matches!(
        channel.channel.provider.kind(),
        ProviderKind::Fcm | ProviderKind::Apns
    );
    let body_part = match (push, rule.has_body, rule.has_text) {
        (true, true, _) | (false, true, false) => "body",
        _ => "text",
    };
    let title = if rule.has_title {
        Some(part("title")?)
    } else {
        None
    };
    // The event time travels with the message so the app (and the stand-in
    // provider) can tell how fresh it is; rule and key let a push action or
    // reply name the message it answers.
    let mut data = BTreeMap::from([("event_ms", event.time_ms.to_string())]);
    if let Some(key) = &event.key {
        data.insert("key", key.to_string());
    }
    if let Some(actions) = &rule.push_actions {
        data.insert("actions", actions.buttons.join(","));
    }
    Ok(Message {
        rule_id: rule.id.clone(),
        category: rule.category.clone(),
        priority: rule.priority,
        title,
        body: part(body_part)?,
        collapse_key: rule.collapse_key.clone(),
        ttl_seconds: rule.ttl_seconds,
        action_category: rule.push_actions.as_ref().map(|a| a.category.clone()),
        idempotency_key: Arc::clone(idempotency_key),
        data,
        user: event.user.clone(),
    })
}

/// Stable per (rule, triggering event, channel, recipient): a re-delivered
/// event yields the same key.
fn idempotency_key(rule: &Rule, event: &Event, channel: &str, to: &Address) -> Arc<str> {
    let recipient = match to {
        Address::Push(t) => t.token.as_str(),
        Address::Phone(p) => p.as_str(),
        Address::User(u) => u.as_str(),
    };
    let digest = crate::util::stable_digest(&[
        rule.id.as_bytes(),
        event.source.as_bytes(),
        channel.as_bytes(),
        recipient.as_bytes(),
        &event.partition.to_be_bytes(),
        &event.offset.to_be_bytes(),
    ]);
    crate::util::digest_hex(&digest)
}

impl JsonFields for Event {
    fn json_field(&self, name: &str) -> Option<&serde_json::Value> {
        self.fields.get(name)
    }

    fn json_entries(&self) -> Vec<(&str, &serde_json::Value)> {
        self.fields.iter().collect()
    }
}

impl JsonFields for Profile {
    fn json_field(&self, name: &str) -> Option<&serde_json::Value> {
        self.condition_view().json_field(name)
    }

    fn json_entries(&self) -> Vec<(&str, &serde_json::Value)> {
        self.condition_view().json_entries()
    }
}

//! Stage 2's decision for one rule and event: per channel the send ledger,
//! the policy chain (`crate::policy`), rendering and the send; and fallback
//! chains, which move to their next channel only when the reason is about
//! the channel (no consent, no address, dead tokens, a failed send).

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::decider::Decided;
use super::job::Job;
use super::order::Gate;
use super::{ChannelRuntime, Decider};
use crate::config::OnUnknown;
use crate::deliver::{send_with_retry, Address, ChannelKind, Message, SendError};
use crate::feedback::{SentRecord, SentRef};
use crate::ingest::decode::Event;
use crate::metrics::StageEvent;
use crate::outcome::{DeadLetter, DeadLetterCode, DeadLetterReason, Status};
use crate::policy::{Draft, Suppression, Unknown, Verdict};
use crate::profile::Profile;
use crate::render::{JsonFields, RuleScope, Scope};
use crate::rules::texts::Picked;
use crate::rules::Rule;
use crate::state::{LedgerEntry, LedgerStatus, Seen};

impl Decider {
    /// One (rule, channel) decision for an event: the send ledger, the
    /// policy chain, rendering, the send.
    pub(super) async fn decide(&self, job: &Job, channel: &ChannelRuntime, gate: &Gate) -> Decided {
        let ledger_key = crate::util::slash_joined(&[&job.intent, &channel.channel.name]);
        let decided_ms = self.cx.clock.now_ms();
        let mut d = Decided::new(
            job,
            job.outcome(&channel.channel.name, decided_ms),
            ledger_key,
        );
        (d.digest_role, d.digest_key) = self.digest_role(job, &channel.channel.name);
        self.decide_into(job, channel, &mut d, gate).await;
        d
    }

    /// [`Decider::decide`] into a decision made in one place and filled in
    /// where it is (a decision is large: moving it costs more than most steps).
    async fn decide_into(&self, job: &Job, channel: &ChannelRuntime, d: &mut Decided, gate: &Gate) {
        if let Some(why) = self.settled_by_ledger(job, channel, d) {
            return self.suppressed(d, why);
        }
        let (event, rule) = (&*job.event, job.rule());
        let mut draft = Draft {
            rule: &rule.id,
            category: &rule.category,
            rule_policy: &rule.policy,
            campaign: rule.campaign.as_deref(),
            user: &event.user,
            event_ms: event.time_ms,
            profile: job.profile.as_deref(),
            channel: &channel.channel,
            now_ms: self.cx.clock.now_ms(),
            address: None,
            reservation: None,
            digest: d.digest_role,
        };
        let wait = Duration::from_millis(self.feedback_config.consent_wait_ms);
        let cx = self.policy.context(&self.feedback, &self.cx.profiles, wait);
        let verdict = self.policy.run(&mut draft, &cx).await;
        // Once the address is known, the outcome names the (masked)
        // recipient and the key, whatever later steps say.
        if let Some(address) = &draft.address {
            d.outcome.recipient = Some(address.masked());
            d.outcome.idempotency_key = idempotency_key_of(
                rule,
                event,
                &channel.channel.name,
                address,
                job.digest.as_ref().map(|s| s.id.as_str()),
            );
        }
        if verdict != Verdict::Continue {
            return self.stopped(job, channel, d, verdict);
        }
        let Some(address) = draft.address.take() else {
            // A chain without the address step: nowhere to send.
            let s = Suppression::NoAddress {
                channel: channel.channel.name.clone(),
            };
            self.policy.give_back(&mut draft);
            return self.suppressed(d, s);
        };
        let wanted = job.profile.as_ref().and_then(|p| p.locale.as_deref());
        let picked = rule.texts.pick(wanted);
        d.outcome.locale = Some(crate::outcome::LocaleUsed {
            used: picked.used.clone(),
            wanted: picked.wanted.clone(),
            fell_back: picked.fell_back,
        });
        let message = match render(job, channel, &d.outcome.idempotency_key, &picked) {
            Ok(m) => m,
            Err(detail) => {
                self.policy.give_back(&mut draft);
                return self.failed(job, channel, d, "render_error", detail);
            }
        };
        if channel.channel.kind() == ChannelKind::Sms {
            d.outcome.sms = Some(crate::outcome::sms::measure(&message.body));
        }
        d.message = Some(message);
        if let Some((experiment, arm)) = job.arm().filter(|(_, arm)| arm.control) {
            // The control arm: it would have been sent; nothing leaves, and
            // no place under the caps is kept.
            let _ = arm;
            self.policy.give_back(&mut draft);
            return self.suppressed(
                d,
                Suppression::Holdout {
                    experiment: experiment.id.clone(),
                },
            );
        }
        if rule.shadow {
            // Would be sent: recorded as such, marked shadow; nothing leaves,
            // and no place under the caps is kept.
            self.policy.give_back(&mut draft);
            d.outcome.status = Status::Sent;
            d.outcome.shadow = true;
            d.ledger_key = None;
            return;
        }
        self.send(job, channel, d, &mut draft, address, gate).await;
    }

    /// The send ledger's word: the reason when it settles the decision (a
    /// redelivered intent, not recorded again; a send in flight at a crash
    /// that the channel says not to repeat, recorded), `None` to go on.
    fn settled_by_ledger(
        &self,
        job: &Job,
        channel: &ChannelRuntime,
        d: &mut Decided,
    ) -> Option<Suppression> {
        let key = d.ledger_key.as_deref().unwrap_or_default();
        // One read of the ledger (on disk in service) for both questions.
        let known = self.ledger.entry(&job.event.user, key);
        d.ledger_before = crate::state::Replacing::Read(known.clone());
        let settled = match Seen::of(known.as_ref()) {
            Seen::New => return None,
            Seen::Held if job.release => return None,
            // A redelivered intent (a restart, a rebalance, a replayed
            // event): decided before, by this owner or the last one.
            Seen::Held | Seen::Decided(_) => Suppression::Duplicate,
            // This process is sending it now: the same intent delivered
            // twice (its event replayed by stage 1), not a crash.
            Seen::InFlight if self.sending.contains(key) => Suppression::Duplicate,
            Seen::InFlight => {
                // Recorded attempted, never answered: the request was in
                // flight when its owner died. The channel decides.
                let on_unknown = channel.channel.on_unknown;
                self.cx.metrics.emit(StageEvent::UnknownAfterCrash {
                    channel: &channel.channel.name,
                    action: on_unknown.as_str(),
                });
                if on_unknown != OnUnknown::Skip {
                    d.outcome.unknown_after_crash = true;
                    return None;
                }
                Suppression::UnknownAfterCrash
            }
        };
        d.outcome.idempotency_key = known
            .map(|e| e.idempotency_key)
            .filter(|k| !k.is_empty())
            .unwrap_or_default();
        if settled == Suppression::Duplicate {
            d.ledger_key = None;
        }
        Some(settled)
    }

    /// The decision when the policy chain stopped the message.
    fn stopped(&self, job: &Job, channel: &ChannelRuntime, d: &mut Decided, verdict: Verdict) {
        match verdict {
            Verdict::Continue => {}
            Verdict::Suppress(s) => {
                d.may_hop = s.is_channel_specific();
                self.suppressed(d, s);
            }
            Verdict::Defer { until_ms, because } => {
                self.deferred(job, channel, d, until_ms, because)
            }
            // Collected by the chain's caller, which knows the rest of the chain.
            Verdict::Digest => d.collect = true,
            Verdict::Fail(unknown, detail) => {
                if unknown == Unknown::Consent {
                    self.cx.metrics.emit(StageEvent::ConsentWaitFailed);
                }
                self.failed(job, channel, d, unknown.code(), detail)
            }
        }
    }

    /// A decision the chain deferred (quiet hours with `hold`): recorded
    /// `held` until `until_ms`, when [`Decider::run_chain`] holds it. Its
    /// idempotency key names the recipient when one is known.
    fn deferred(
        &self,
        job: &Job,
        channel: &ChannelRuntime,
        d: &mut Decided,
        until_ms: i64,
        because: Suppression,
    ) {
        let (rule, event) = (job.rule(), &*job.event);
        d.outcome.status = Status::Held;
        d.outcome.because(because.code(), because.text());
        d.outcome.release_ms = Some(until_ms);
        let to = job
            .profile
            .as_deref()
            .and_then(|p| crate::policy::address(p, &channel.channel, &self.cx.profiles).ok());
        if let Some(a) = &to {
            d.outcome.recipient = Some(a.masked());
        }
        let to = to.unwrap_or_else(|| Address::User(event.user.to_string()));
        d.outcome.idempotency_key = idempotency_key_of(
            rule,
            event,
            &channel.channel.name,
            &to,
            job.digest.as_ref().map(|s| s.id.as_str()),
        );
        d.hold_until = Some(until_ms);
    }

    /// Sends: the ledger hears of the request before the provider does, so
    /// that if this instance dies with the request in flight, the next owner
    /// finds it. Retried while the message is fresh (its freshness limit by
    /// event time, on the pipeline's clock so replays agree), or for the
    /// channel's retry window when it has none.
    ///
    /// The `attempted` entry and the caps' place are in memory before the
    /// gate opens: the user's next decision sees them while this one waits
    /// for the broker and the provider.
    async fn send(
        &self,
        job: &Job,
        channel: &ChannelRuntime,
        d: &mut Decided,
        draft: &mut Draft<'_>,
        address: Address,
        gate: &Gate,
    ) {
        let (event, rule, now) = (&*job.event, job.rule(), draft.now_ms);
        let budget = match self.policy.max_age_s(draft) {
            Some(max) => {
                let fresh_until = event.time_ms.saturating_add(max as i64 * 1000);
                Duration::from_millis(fresh_until.saturating_sub(now).max(0) as u64)
            }
            None => channel.channel.policy.retry_for,
        };
        let attempt = LedgerEntry {
            user: event.user.clone(),
            status: LedgerStatus::Attempted,
            at_ms: now,
            category: rule.category.clone(),
            rule: rule.id.clone(),
            idempotency_key: d.outcome.idempotency_key.clone(),
        };
        let key = d.ledger_key.as_deref().unwrap_or_default();
        d.sending = Some(self.sending.begin(key));
        let before = std::mem::replace(
            &mut d.ledger_before,
            crate::state::Replacing::Read(Some(attempt.clone())),
        );
        let write = self.ledger.record_over(key, attempt, before);
        self.policy.recorded(draft);
        gate.open();
        if let Some(write) = write {
            write.await;
        }
        let Some(message) = &d.message else {
            return;
        };
        let attempted = send_with_retry(
            &channel.channel,
            message,
            &address,
            &channel.retries,
            budget,
        )
        .await;
        d.outcome.attempts = attempted.attempts;
        d.outcome.timings.request_sent_ms = attempted.request_sent_ms;
        d.outcome.timings.answered_ms = attempted.answered_ms;
        d.requested = true;
        match attempted.result {
            Ok(delivered) => {
                d.outcome.status = Status::Sent;
                d.outcome.provider_message_id = delivered.provider_message_id;
                d.outcome.delivery = Some(delivered.delivery.unwrap_or_else(|| "accepted".into()));
                self.sent(job, d, &address, attempted.request_sent_ms)
            }
            Err(e) => {
                self.policy.give_back(draft);
                warn!(rule = %rule.id, channel = %channel.channel.name, reason = %e.reason(), attempts = attempted.attempts, "send failed");
                self.send_failed(job, channel, d, &address, e, now)
            }
        }
    }

    /// A send the provider took: timed, and shared on the feedback topic, so
    /// that every instance learns of it and a reply or an engagement finds
    /// it wherever it arrives.
    fn sent(&self, job: &Job, d: &mut Decided, address: &Address, sent_ms: i64) {
        let event = &*job.event;
        let phone = match address {
            Address::Phone(p) => Some(p.as_str()),
            _ => None,
        };
        let o = &d.outcome;
        let sent_ref = SentRef {
            user: event.user.clone(),
            rule: o.rule.clone(),
            key: event.key.clone(),
            idempotency_key: o.idempotency_key.clone(),
            channel: o.channel.clone(),
            sent_ms,
            deployment: Some(self.cx.deployment.clone()),
        };
        let record = SentRecord {
            sent: sent_ref,
            phone_sha256: phone
                .zip(job.profile.as_deref())
                .map(|(p, profile)| profile.phone_sha256_of(p)),
        };
        let shared = self
            .cx
            .recorder
            .publish_built(&self.feedback_topic, &event.user, || record.to_bytes());
        self.feedback.record_sent(&record);
        d.writes.push(shared);
    }

    /// A send that failed after its retries: a dead token is marked dead, a
    /// number that said STOP at the provider is recorded as the STOP it was.
    fn send_failed(
        &self,
        job: &Job,
        channel: &ChannelRuntime,
        d: &mut Decided,
        address: &Address,
        e: SendError,
        now: i64,
    ) {
        if let (SendError::Unregistered, Address::Push(token)) = (&e, address) {
            self.cx.profiles.mark_token_dead(&token.token);
        }
        if let (SendError::OptedOutAtProvider { provider_code }, Address::Phone(phone)) =
            (&e, address)
        {
            // So every instance and the consent topic learn it.
            self.feedback.set_opt_out(phone, true, now);
            let stop = crate::feedback::stop_at_provider(phone, provider_code);
            d.writes.push(self.cx.recorder.publish(
                &self.feedback_topic,
                phone,
                serde_json::to_vec(&stop).unwrap_or_default(),
            ));
        }
        let reason = e.reason();
        let record =
            self.failed_send_record(&job.event, job.rule(), channel, &reason, e.to_string());
        d.outcome.status = Status::Failed;
        d.outcome.because(e.code(), reason);
        d.dead_letter = Some(record);
        d.may_hop = true;
    }

    /// A decision that fails before the send (rendering, unreadable
    /// feedback state): `failed`, dead-lettered with the detail.
    fn failed(
        &self,
        job: &Job,
        channel: &ChannelRuntime,
        d: &mut Decided,
        code: &'static str,
        detail: String,
    ) {
        d.outcome.status = Status::Failed;
        d.outcome.because(code, code);
        d.dead_letter =
            Some(self.failed_send_record(&job.event, job.rule(), channel, code, detail));
    }

    /// A suppressed decision, with its reason.
    pub(super) fn suppressed(&self, d: &mut Decided, why: Suppression) {
        d.suppression = Some(why.kind());
        d.outcome.status = Status::Suppressed;
        d.outcome.because(why.code(), why.text());
    }

    pub(super) fn failed_send_record(
        &self,
        event: &Event,
        rule: &Rule,
        channel: &ChannelRuntime,
        reason: &str,
        detail: String,
    ) -> DeadLetter {
        self.cx.count_dead_letter(DeadLetterCode::SendFailed);
        DeadLetter {
            reason: DeadLetterReason {
                code: DeadLetterCode::SendFailed,
                cause: Some(reason.to_string()),
            },
            detail,
            topic: event.source.to_string(),
            partition: event.partition,
            offset: event.offset,
            original: crate::outcome::Original::default(),
            rule: Some(rule.id.to_string()),
            channel: Some(channel.channel.name.to_string()),
            at_ms: self.cx.clock.now_ms(),
        }
    }
}

/// Renders the rule's templates for a channel: push gets title and body, other
/// channels the SMS text (falling back to the body).
fn render(
    job: &Job,
    channel: &ChannelRuntime,
    idempotency_key: &Arc<str>,
    picked: &Picked,
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
        digest: None,
        locale: &picked.locale,
    };
    let digest = job.digest.as_ref().map(|s| {
        let shown = rule
            .digest
            .as_ref()
            .map_or(0..s.items.len(), |d| d.shown(s.items.len()));
        s.view(shown)
    });
    let seen = Scope {
        digest: digest.as_ref(),
        ..seen
    };
    let names = &rule.template_names;
    let arm = job.arm();
    let part = |name: &str| {
        let own = arm.filter(|(_, arm)| match name {
            "title" => arm.texts[0],
            "body" => arm.texts[1],
            _ => arm.texts[2],
        });
        let template = match own {
            Some((_, arm)) => {
                crate::rules::experiment::Experiment::template_name(&rule.id, &arm.name, name)
                    .into()
            }
            None => picked.name(names, name),
        };
        templates
            .render(&template, &seen)
            .map_err(|e| format!("template.{name}: {e}"))
    };
    let push = channel.channel.kind() == ChannelKind::Push;
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
    let data = crate::deliver::MessageData {
        event_ms: Some(event.time_ms),
        key: event.key.clone(),
        actions: rule
            .push_actions
            .as_ref()
            .map(|a| a.buttons.join(",").into()),
    };
    let mut body = part(body_part)?;
    if channel.channel.kind() == ChannelKind::Sms {
        body = crate::outcome::sms::for_sms(body);
    }
    Ok(Message {
        rule_id: rule.id.clone(),
        category: rule.category.clone(),
        priority: rule.priority,
        title,
        body,
        collapse_key: rule.collapse_key.clone(),
        ttl_seconds: rule.ttl_seconds,
        action_category: rule.push_actions.as_ref().map(|a| a.category.clone()),
        idempotency_key: Arc::clone(idempotency_key),
        data,
        user: event.user.clone(),
    })
}

/// Stable per (rule, triggering event, channel, recipient): a re-delivered
/// event yields the same key. A digest's send adds its id (its last item's event is no message of its own).
fn idempotency_key_of(
    rule: &Rule,
    event: &Event,
    channel: &str,
    to: &Address,
    digest: Option<&str>,
) -> Arc<str> {
    let recipient = match to {
        Address::Push(t) => t.token.as_str(),
        Address::Phone(p) => p.as_str(),
        Address::User(u) => u.as_str(),
    };
    let (partition, offset) = (event.partition.to_be_bytes(), event.offset.to_be_bytes());
    let parts: [&[u8]; 7] = [
        rule.id.as_bytes(),
        event.source.as_bytes(),
        channel.as_bytes(),
        recipient.as_bytes(),
        &partition,
        &offset,
        digest.unwrap_or("").as_bytes(),
    ];
    let digest = crate::util::stable_digest(&parts[..6 + usize::from(digest.is_some())]);
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

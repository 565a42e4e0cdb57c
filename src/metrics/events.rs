//! What the stages report, as typed events (as Vector's `internal_events`): a stage says what happened, and [`Metrics::emit`] alone turns it into Prometheus series and the live page's activity.

use super::activity::{Happened, RuleActivity};
use super::Metrics;

/// One thing a stage reports. Labels are bounded: topics, channels, rule
/// ids, reason codes — never a user, phone, token or card.
#[derive(Debug, Clone, Copy)]
pub enum StageEvent<'a> {
    /// A record went to the dead-letter topic.
    DeadLettered { reason: &'static str },
    /// A rule matched, or its pattern fired: the rule's activity (from its
    /// loaded set, `Loaded::activity`).
    Matched {
        activity: &'a RuleActivity,
        at_ms: i64,
    },
    /// A rule's decision, for the live page.
    Decided {
        activity: &'a RuleActivity,
        happened: Happened,
        at_ms: i64,
    },
    /// Pattern keys evicted at the per-rule cap.
    PatternKeysEvicted { rule: &'a str, keys: u64 },
    /// An event later than its pattern's allowed lateness.
    LateEvent { rule: &'a str },
    /// The pattern state held now.
    PatternState { keys: usize, bytes: usize },
    /// A send found attempted and never answered, after a crash; `action`
    /// is what the channel's `on_unknown` did (`resend`, `skip`).
    UnknownAfterCrash {
        channel: &'a str,
        action: &'static str,
    },
    /// A decision that could not wait for herald's STOP list to be read.
    ConsentWaitFailed,
    /// A provider answered a request (or the retries ended), after
    /// `seconds`.
    ProviderAnswered {
        latency: &'a prometheus::Histogram,
        seconds: f64,
    },
    /// A message went out: how long after its event, and after its
    /// consumption.
    Sent {
        event_to_send_s: f64,
        consume_to_send_s: f64,
    },
    /// Messages held now.
    HeldNow(usize),
    /// Held messages kept for a rule that is not loaded.
    HeldOrphaned(usize),
    /// A held message ended: `sent`, `held_again`, `stale`, `suppressed`,
    /// `failed`, `collapsed`, `delivered`.
    HeldEnded(&'static str),
    /// Digest items: `collected`, `withdrawn`, or `closed` in a digest.
    DigestItems { result: &'static str, count: usize },
    /// A later event met an experiment's goal: a conversion recorded.
    Converted,
    /// The send ledger's size on disk, and the caps' users in memory.
    LedgerSize {
        rows: usize,
        disk_bytes: u64,
        cached_users: usize,
    },
    /// A store's partitions restored from their changelog.
    Restored {
        store: &'static str,
        records: usize,
        seconds: f64,
    },
    /// A feedback record acted on: its kind and the result.
    Feedback {
        kind: &'static str,
        result: &'static str,
    },
    /// Phone numbers opted out of SMS now.
    SmsOptOuts(usize),
}

impl Metrics {
    /// Records what a stage reports.
    pub fn emit(&self, event: StageEvent<'_>) {
        match event {
            StageEvent::DeadLettered { reason } => {
                self.dead_letters.with_label_values(&[reason]).inc()
            }
            StageEvent::Matched { activity, at_ms } => activity.matched(at_ms),
            StageEvent::Decided {
                activity,
                happened,
                at_ms,
            } => activity.decided(happened, at_ms),
            StageEvent::PatternKeysEvicted { rule, keys } => {
                self.pattern_evicted.with_label_values(&[rule]).inc_by(keys)
            }
            StageEvent::LateEvent { rule } => self.late_events.with_label_values(&[rule]).inc(),
            StageEvent::PatternState { keys, bytes } => {
                self.pattern_keys.set(keys as i64);
                self.pattern_state_bytes.set(bytes as i64);
            }
            StageEvent::UnknownAfterCrash { channel, action } => self
                .unknown_after_crash
                .with_label_values(&[channel, action])
                .inc(),
            StageEvent::ConsentWaitFailed => self.consent_waits_failed.inc(),
            StageEvent::ProviderAnswered { latency, seconds } => latency.observe(seconds),
            StageEvent::Sent {
                event_to_send_s,
                consume_to_send_s,
            } => {
                self.event_to_send.observe(event_to_send_s);
                self.consume_to_send.observe(consume_to_send_s);
            }
            StageEvent::HeldNow(n) => self.held.set(n as i64),
            StageEvent::HeldOrphaned(n) => self.held_orphaned.set(n as i64),
            StageEvent::HeldEnded(how) => self.held_released.with_label_values(&[how]).inc(),
            StageEvent::Converted => self.conversions.inc(),
            StageEvent::DigestItems { result, count } => self
                .digest_items
                .with_label_values(&[result])
                .inc_by(count as u64),
            StageEvent::LedgerSize {
                rows,
                disk_bytes,
                cached_users,
            } => {
                self.ledger_entries.set(rows as i64);
                let set = |what, v: u64| {
                    self.state_table
                        .with_label_values(&["ledger", what])
                        .set(v as i64)
                };
                set("keys", rows as u64);
                set("disk_bytes", disk_bytes);
                set("cached_users", cached_users as u64);
            }
            StageEvent::Restored {
                store,
                records,
                seconds,
            } => {
                self.restores.with_label_values(&[store]).inc();
                self.restored_records
                    .with_label_values(&[store])
                    .inc_by(records as u64);
                self.restore_seconds
                    .with_label_values(&[store])
                    .inc_by(seconds);
            }
            StageEvent::Feedback { kind, result } => {
                self.feedback.with_label_values(&[kind, result]).inc()
            }
            StageEvent::SmsOptOuts(n) => self.sms_opt_outs.set(n as i64),
        }
    }
}

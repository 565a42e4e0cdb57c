//! Stage 2's experiments: each user's last exposure (a message sent, or a control arm's would-be message) kept in the send ledger, and the conversion record written when a later event meets the experiment's goal within its window.

use serde_json::json;

use super::decider::{Decided, Decider};
use super::job::Job;
use crate::outcome::{Pending, Status};
use crate::state::{LedgerEntry, LedgerStatus};

/// The send-ledger key of a user's last exposure to an experiment. Its
/// entry is `suppressed` (never counted by caps), at the exposure's time,
/// with the arm in place of an idempotency key: the ledger keeps it eight
/// days, restores it with the user's intents partition, and so a goal's
/// window can be a week.
fn exposure_key(experiment: &str, user: &str) -> String {
    let mut key = String::with_capacity(12 + experiment.len() + user.len());
    for part in ["experiment/", experiment, "/", user] {
        key.push_str(part);
    }
    key
}

impl Decider {
    /// Records an exposure to the rule's experiment: a message sent (not a
    /// shadow's), or a control arm's decision that would have been sent.
    pub(super) fn exposed(&self, d: &Decided) -> Option<Pending> {
        let o = &d.outcome;
        let experiment = o.experiment.as_ref()?;
        let exposed = (o.status == Status::Sent && !o.shadow) || o.reason_code == Some("holdout");
        if !exposed {
            return None;
        }
        let (id, arm) = (experiment["id"].as_str()?, experiment["arm"].as_str()?);
        let entry = LedgerEntry {
            user: o.user.clone(),
            status: LedgerStatus::Suppressed,
            at_ms: self.cx.clock.now_ms(),
            category: o.category.clone(),
            rule: o.rule.clone(),
            idempotency_key: arm.into(),
        };
        self.ledger.record(&exposure_key(id, &o.user), entry)
    }

    /// A later event that met the rule's experiment goal: a conversion
    /// record for the user's last exposure, when it came within the goal's
    /// window before the event (by the event's time). Written to the
    /// conversions topic, keyed by user.
    pub(super) fn convert(&self, job: &Job, writes: &mut Vec<Pending>) {
        let Some((experiment, _)) = job.arm() else {
            return;
        };
        let Some(goal) = experiment.goal.as_ref() else {
            return;
        };
        let user = &job.event.user;
        let Some(exposure) = self.ledger.entry(user, &exposure_key(&experiment.id, user)) else {
            return;
        };
        let after_ms = job.event.time_ms - exposure.at_ms;
        if !(0..=goal.within_ms).contains(&after_ms) {
            return;
        }
        let e = &job.event;
        let record = json!({
            "kind": "conversion",
            "experiment": experiment.id,
            "arm": &*exposure.idempotency_key,
            "user": &**user,
            "rule": &*exposure.rule,
            "exposed_ms": exposure.at_ms,
            "goal": {"topic": &*e.source, "partition": e.partition, "offset": e.offset, "time_ms": e.time_ms},
            "after_s": after_ms / 1000,
        });
        self.cx.metrics.emit(crate::metrics::StageEvent::Converted);
        writes.push(
            self.cx
                .recorder
                .publish_built(&self.conversions_topic, user, || {
                    crate::util::json_bytes(&record)
                }),
        );
    }
}

//! Experiments: a rule's arms with weights (each with its own texts or channels) and a control arm that sends nothing, users assigned by a stable hash that moves as few as possible when weights change, and the goal whose later events count as conversions.
//!
//! ```yaml
//! experiment:
//!   id: cashback-copy              # default: the rule's id
//!   arms:
//!     - { name: control, weight: 10, control: true }
//!     - { name: plain, weight: 45 }                        # the rule's own texts
//!     - { name: playful, weight: 45, template: { title: "…", body: "…" } }
//!   goal:
//!     sources: [transactions]
//!     match: { status: approved }
//!     condition: event.category == "coffee"
//!     within: 7d
//! ```
//!
//! Assignment is weighted rendezvous hashing: each arm scores a user
//! `-ln(u) / weight`, `u` uniform in (0, 1] from a stable hash of the
//! experiment, the arm and the user, and the lowest score wins. The same
//! user gets the same arm on every instance, restart and replay; changing
//! one arm's weight moves users only into or out of that arm (the fewest a
//! change of shares can move), and adding an arm takes its share from every
//! other arm in proportion.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::expr::condition::{Condition, Conditions};
use crate::expr::Scalar;
use crate::util::{DigestPrefix, Span};

/// Categories whose messages are never held out: no control arm.
pub const EXEMPT: [&str; 3] = ["fraud", "security", "regulatory"];
/// The longest goal window: the send ledger keeps an exposure eight days.
pub const LONGEST_GOAL_MS: i64 = 7 * 86_400_000;

/// A rule's `experiment:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    #[serde(default)]
    pub id: Option<String>,
    pub arms: Spanned<Vec<ArmSpec>>,
    #[serde(default)]
    pub goal: Option<Spanned<GoalSpec>>,
}

/// One arm as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    pub name: String,
    pub weight: f64,
    /// Sends nothing: its decisions are recorded as would-have-sent.
    #[serde(default)]
    pub control: bool,
    /// Its own texts (in the rule's locale), in place of the rule's.
    #[serde(default)]
    pub template: Option<ArmTemplate>,
    /// Its own channels, a subset of the rule's.
    #[serde(default)]
    pub channels: Option<Vec<String>>,
}

/// An arm's texts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmTemplate {
    #[serde(default)]
    pub title: Option<Spanned<String>>,
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    #[serde(default)]
    pub text: Option<Spanned<String>>,
}

/// What success is, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalSpec {
    /// The later events' topics (default: the rule's sources).
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    pub match_fields: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub condition: Option<Spanned<String>>,
    /// How long after the message (or would-be message) an event counts.
    pub within: Span,
}

/// An arm, compiled.
#[derive(Debug, Clone)]
pub struct Arm {
    pub name: String,
    pub weight: f64,
    pub control: bool,
    /// Which parts have their own texts: title, body, text.
    pub texts: [bool; 3],
    pub channels: Option<Vec<String>>,
    /// What an outcome of this arm says of its experiment,
    /// `{"id": <experiment>, "arm": <name>}`: made once, shared by them all.
    pub tag: std::sync::Arc<serde_json::Value>,
}

/// An outcome's `experiment`: the experiment's id and the arm's name.
fn tag(experiment: &str, arm: &str) -> std::sync::Arc<serde_json::Value> {
    std::sync::Arc::new(serde_json::json!({"id": experiment, "arm": arm}))
}

/// A goal, compiled.
pub struct Goal {
    pub sources: Vec<String>,
    pub match_fields: Vec<(String, Scalar)>,
    pub condition: Option<Condition>,
    pub within_ms: i64,
}

/// A rule's experiment, compiled.
pub struct Experiment {
    pub id: String,
    pub arms: Vec<Arm>,
    pub goal: Option<Goal>,
    /// Each arm's digest state after the experiment's id and the arm's
    /// name: an assignment hashes only the user (the same digests as
    /// [`assign`]'s).
    arm_digests: Vec<DigestPrefix>,
}

impl Experiment {
    /// The arm of `user`: the lowest `-ln(u) / weight` (weighted rendezvous).
    pub fn assign(&self, user: &str) -> &Arm {
        &self.arms[self.assign_index(user)]
    }

    /// The index of [`Self::assign`]'s arm in `arms`.
    pub fn assign_index(&self, user: &str) -> usize {
        best_score(
            self.arms
                .iter()
                .zip(&self.arm_digests)
                .map(|(arm, digest)| (arm.weight, uniform_of(digest.finish(&[user.as_bytes()])))),
        )
    }

    /// The name of an arm's own template part (`<rule>@<arm>/title`).
    pub fn template_name(rule: &str, arm: &str, part: &str) -> String {
        format!("{rule}@{arm}/{part}")
    }
}

/// [`Experiment::assign`] over any arms (tests change weights).
pub fn assign<'a>(experiment: &str, arms: &'a [Arm], user: &str) -> &'a Arm {
    &arms[assign_index(experiment, arms, user)]
}

fn assign_index(experiment: &str, arms: &[Arm], user: &str) -> usize {
    best_score(arms.iter().map(|arm| {
        let digest = crate::util::stable_digest(&[
            experiment.as_bytes(),
            &[0],
            arm.name.as_bytes(),
            &[0],
            user.as_bytes(),
        ]);
        (arm.weight, uniform_of(digest))
    }))
}

/// The digest state [`assign_index`] reaches before the user, for one arm.
fn arm_digest(experiment: &str, arm: &str) -> DigestPrefix {
    DigestPrefix::new(&[experiment.as_bytes(), &[0], arm.as_bytes(), &[0]])
}

/// The index of the lowest `-ln(u) / weight` of (weight, u) per arm; arms
/// weighted zero or less never win.
fn best_score(arms: impl Iterator<Item = (f64, f64)>) -> usize {
    let mut best = (f64::INFINITY, 0);
    for (i, (weight, u)) in arms.enumerate() {
        if weight <= 0.0 {
            continue;
        }
        let score = -u.ln() / weight;
        if score < best.0 {
            best = (score, i);
        }
    }
    best.1
}

/// A stable number in (0, 1] from a digest of the experiment, the arm and the user.
fn uniform_of(digest: [u8; 16]) -> f64 {
    let bits = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()) >> 11;
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

/// Compiles a rule's `experiment:`; problems with their positions. The
/// arms' own templates are added by the caller (they need the rule's
/// template set).
pub fn compile(
    spec: Option<&ExperimentSpec>,
    rule: &str,
    category: &str,
    channels: &[String],
    sources: &[String],
    conditions: &Conditions,
    mut problem: impl FnMut(&Location, String),
) -> Option<Experiment> {
    let spec = spec?;
    let id = spec.id.clone().unwrap_or_else(|| rule.to_string());
    let at = &spec.arms.referenced;
    let arms = &spec.arms.value;
    if arms.len() < 2 {
        problem(at, "an experiment needs at least two arms".into());
    }
    let mut names = std::collections::BTreeSet::new();
    let mut compiled = Vec::new();
    for arm in arms {
        if arm.name.is_empty()
            || !arm
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            problem(
                at,
                format!(
                    "arm name `{}` must be letters, digits, `-` or `_`",
                    arm.name
                ),
            );
        }
        if !names.insert(arm.name.as_str()) {
            problem(at, format!("arm `{}` is listed twice", arm.name));
        }
        if !(arm.weight.is_finite() && arm.weight > 0.0) {
            problem(
                at,
                format!("arm `{}`: weight must be a number above 0", arm.name),
            );
        }
        if arm.control && EXEMPT.contains(&category) {
            problem(
                at,
                format!(
                    "a `{category}` message is never held out: no control arm in this category"
                ),
            );
        }
        if arm.control && (arm.template.is_some() || arm.channels.is_some()) {
            problem(
                at,
                format!(
                    "control arm `{}` sends nothing: it takes no template or channels",
                    arm.name
                ),
            );
        }
        if let Some(own) = &arm.channels {
            if own.is_empty() || own.iter().any(|c| !channels.contains(c)) {
                problem(
                    at,
                    format!(
                        "arm `{}`: channels must be some of the rule's ({})",
                        arm.name,
                        channels.join(", ")
                    ),
                );
            }
        }
        let t = arm.template.as_ref();
        compiled.push(Arm {
            name: arm.name.clone(),
            weight: arm.weight,
            control: arm.control,
            texts: [
                t.is_some_and(|t| t.title.is_some()),
                t.is_some_and(|t| t.body.is_some()),
                t.is_some_and(|t| t.text.is_some()),
            ],
            channels: arm.channels.clone(),
            tag: tag(&id, &arm.name),
        });
    }
    if !compiled.is_empty() && compiled.iter().all(|a| a.control) {
        problem(
            at,
            "every arm is a control arm: nothing would ever be sent".into(),
        );
    }
    let goal = spec.goal.as_ref().map(|g| {
        let within_ms = g.value.within.ms();
        if within_ms <= 0 || within_ms > LONGEST_GOAL_MS {
            problem(&g.referenced, "goal.within must be above 0 and at most 7d (the send ledger keeps a message eight days)".into());
        }
        let condition = g.value.condition.as_ref().and_then(|c| match conditions.compile(&c.value) {
            Ok(c) => Some(c),
            Err(e) => {
                problem(&c.referenced, format!("goal.condition: {}", e.message));
                None
            }
        });
        Goal {
            sources: g.value.sources.clone().unwrap_or_else(|| sources.to_vec()),
            match_fields: g.value.match_fields.clone().into_iter().collect(),
            condition,
            within_ms,
        }
    });
    Some(Experiment {
        arm_digests: compiled.iter().map(|a| arm_digest(&id, &a.name)).collect(),
        id,
        arms: compiled,
        goal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arms(weights: &[(&str, f64)]) -> Vec<Arm> {
        weights
            .iter()
            .map(|(name, weight)| Arm {
                name: name.to_string(),
                weight: *weight,
                control: *name == "control",
                texts: [false; 3],
                channels: None,
                tag: tag("e", name),
            })
            .collect()
    }

    fn shares(arms: &[Arm], users: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for u in 0..users {
            *counts
                .entry(assign("exp-1", arms, &format!("user-{u}")).name.clone())
                .or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn weights_hold_within_sampling_error_on_100000_users() {
        let a = arms(&[("control", 10.0), ("plain", 45.0), ("playful", 45.0)]);
        let n = 100_000;
        let counts = shares(&a, n);
        for arm in &a {
            let p = arm.weight / 100.0;
            let expected = p * n as f64;
            // Four standard deviations of a binomial count: fails by chance
            // about once in 15,000 runs, and the hash is fixed, so never.
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            let got = counts[&arm.name] as f64;
            assert!(
                (got - expected).abs() < 4.0 * sd,
                "{}: {got} users, expected {expected} ± {:.0}",
                arm.name,
                4.0 * sd
            );
        }
    }

    #[test]
    fn a_compiled_experiment_assigns_every_user_the_arm_of_the_stable_hash() {
        let a = arms(&[
            ("control", 10.0),
            ("plain", 45.0),
            ("playful", 0.0),
            ("bold", 45.0),
        ]);
        let experiment = Experiment {
            id: "exp-1".into(),
            arm_digests: a.iter().map(|arm| arm_digest("exp-1", &arm.name)).collect(),
            arms: a.clone(),
            goal: None,
        };
        for u in 0..5000 {
            let user = format!("user-{u}");
            let got = &experiment.assign(&user).name;
            assert_eq!(got, &assign("exp-1", &a, &user).name, "{user}");
            assert_ne!(got, "playful", "{user}: an arm weighted 0 never wins");
        }
    }

    #[test]
    fn the_same_user_gets_the_same_arm_every_time() {
        let a = arms(&[("control", 10.0), ("plain", 45.0), ("playful", 45.0)]);
        for u in 0..1000 {
            let user = format!("user-{u}");
            let first = assign("exp-1", &a, &user).name.clone();
            assert_eq!(assign("exp-1", &a, &user).name, first);
        }
        // Another experiment shuffles users independently.
        let moved = (0..1000)
            .filter(|u| {
                let user = format!("user-{u}");
                assign("exp-1", &a, &user).name != assign("exp-2", &a, &user).name
            })
            .count();
        assert!(moved > 300, "{moved}");
    }

    #[test]
    fn a_weight_change_moves_users_only_into_or_out_of_that_arm() {
        let before = arms(&[("control", 10.0), ("plain", 45.0), ("playful", 45.0)]);
        let after = arms(&[("control", 20.0), ("plain", 45.0), ("playful", 45.0)]);
        let n = 20_000;
        let mut moved = 0;
        for u in 0..n {
            let user = format!("user-{u}");
            let (b, a) = (
                &assign("exp-1", &before, &user).name,
                &assign("exp-1", &after, &user).name,
            );
            if b != a {
                assert_eq!(
                    a, "control",
                    "{user} moved from {b} to {a}, not into the arm that grew"
                );
                moved += 1;
            }
        }
        // The control share goes from 10 % to 20/110 ≈ 18.2 %: about 8.2 %
        // of users must move, and no more do.
        let share = moved as f64 / n as f64;
        assert!((share - (20.0 / 110.0 - 0.1)).abs() < 0.01, "{share}");
    }
}

//! The live rule set: loaded at start, reloaded when files change, swapped atomically.
//!
//! A reload that finds any error keeps the running set untouched, counts the
//! failure and keeps the errors for `GET /rules`; readers never take a lock.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use prometheus::IntCounter;
use tracing::{error, info, warn};

use super::compile::Known;
use super::error::{RuleError, RuleErrors};
use super::load::load_dir;
use super::set::RuleSet;
use crate::metrics::activity::RuleActivity;
use crate::metrics::Metrics;
use crate::policy::SuppressionCode;
use crate::util::now_ms;

/// A rule set with its per-rule metric handles, made once per load.
pub struct Loaded {
    pub set: RuleSet,
    /// `herald_rule_matches_total{rule}` per rule, by rule index.
    pub matches: Vec<IntCounter>,
    /// `herald_condition_errors_total{rule}` per rule, by rule index.
    pub condition_errors: Vec<IntCounter>,
    /// `herald_subscription_skips_total{rule,reason}` (`off`, `invalid`)
    /// per subscription rule, by rule index (`None` for other rules).
    pub subscription_skips: Vec<Option<[IntCounter; 2]>>,
    /// `herald_rule_decisions_total{rule,status}` per rule, by rule index:
    /// sent, suppressed, failed, held (see `Status::index`).
    pub decisions: Vec<[IntCounter; 4]>,
    /// `herald_rule_suppressions_total{rule,reason}` per rule, by rule index
    /// and reason code (`Suppression::code_index`); each made at its first
    /// use, so a rule shows only the reasons it has met.
    pub suppressions: Vec<[OnceLock<IntCounter>; SuppressionCode::ALL.len()]>,
    /// Each rule's activity for the live page, by rule index (the same one
    /// across reloads, by rule id).
    pub activity: Vec<Arc<RuleActivity>>,
    /// Counts loads; 1 is the first.
    pub generation: u64,
    /// When this set was loaded, epoch ms.
    pub loaded_ms: i64,
    /// The set's pattern rules and their fingerprints, as one number: a
    /// sweep of pattern state on disk reads it all again when it changes.
    pub patterns_print: u64,
}

/// What the last reload attempt found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Errors of the last failed reload, cleared by the next good one.
    pub last_error: Option<Vec<RuleError>>,
    /// When the last failed reload happened, epoch ms.
    pub last_error_ms: Option<i64>,
}

/// The active rules of a running instance.
pub struct LiveRules {
    current: ArcSwap<Loaded>,
    status: Mutex<ReloadStatus>,
    dir: PathBuf,
    channels: BTreeSet<String>,
    sources: BTreeSet<String>,
    metrics: Arc<Metrics>,
    /// Whether a set with no rule may run (`rules.allow_empty`).
    allow_empty: bool,
    /// `rules.default_locale`.
    default_locale: Option<String>,
}

/// The error of a load that found no rule where one is required: the
/// instance would consume and send nothing, silently.
fn no_rules(dir: &std::path::Path, reload: bool) -> RuleErrors {
    let message = match reload {
        false => "no rules in this directory: herald would consume every event and send nothing; add a rule file, or set `rules.allow_empty = true` to run without rules",
        true => "the files now define no rule: this reload would remove every rule and is refused; the previous rules keep running (set `rules.allow_empty = true` to allow it)",
    };
    RuleErrors(vec![RuleError {
        file: dir.to_path_buf(),
        line: 1,
        column: 1,
        rule: None,
        message: message.to_string(),
    }])
}

impl LiveRules {
    /// Loads the rules once; fails with every error when the files are
    /// broken, and when they define no rule unless `allow_empty`.
    pub fn load(
        dir: PathBuf,
        channels: BTreeSet<String>,
        sources: BTreeSet<String>,
        metrics: Arc<Metrics>,
        allow_empty: bool,
        default_locale: Option<String>,
    ) -> Result<Arc<LiveRules>, RuleErrors> {
        let known = Known {
            channels: Some(&channels),
            sources: Some(&sources),
            default_locale: default_locale.as_deref(),
        };
        let set = load_dir(&dir, &known)?;
        if set.rules.is_empty() && !allow_empty {
            return Err(no_rules(&dir, false));
        }
        let loaded = with_metrics(set, &metrics, 1);
        info!(rules = loaded.set.rules.len(), dir = %dir.display(), "rules loaded");
        Ok(Arc::new(LiveRules {
            current: ArcSwap::from_pointee(loaded),
            status: Mutex::new(ReloadStatus::default()),
            dir,
            channels,
            sources,
            metrics,
            allow_empty,
            default_locale,
        }))
    }

    /// The active set; cheap, lock-free, and stable for as long as it is held.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// The last reload's status.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The watched directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Loads the files again and swaps the set in if they are all valid.
    pub fn reload(&self) -> Result<(), RuleErrors> {
        let known = Known {
            channels: Some(&self.channels),
            sources: Some(&self.sources),
            default_locale: self.default_locale.as_deref(),
        };
        let loaded = load_dir(&self.dir, &known).and_then(|set| {
            let removes_all = set.rules.is_empty() && !self.current.load().set.rules.is_empty();
            match removes_all && !self.allow_empty {
                true => Err(no_rules(&self.dir, true)),
                false => Ok(set),
            }
        });
        match loaded {
            Ok(set) => {
                let generation = self.current.load().generation + 1;
                let loaded = with_metrics(set, &self.metrics, generation);
                info!(rules = loaded.set.rules.len(), generation, "rules reloaded");
                self.current.store(Arc::new(loaded));
                self.metrics.rule_reloads.with_label_values(&["ok"]).inc();
                if let Ok(mut s) = self.status.lock() {
                    *s = ReloadStatus::default();
                }
                Ok(())
            }
            Err(errors) => {
                self.metrics
                    .rule_reloads
                    .with_label_values(&["error"])
                    .inc();
                for e in &errors.0 {
                    error!(error = %e, "rule reload refused; the previous rules keep running");
                }
                if let Ok(mut s) = self.status.lock() {
                    s.last_error = Some(errors.0.clone());
                    s.last_error_ms = Some(now_ms());
                }
                Err(errors)
            }
        }
    }

    /// Watches the rules directory and reloads after changes settle for
    /// `debounce`, until `shutdown` changes.
    pub async fn watch(
        self: Arc<Self>,
        debounce: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let mut watcher =
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.try_send(());
                }
            }) {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "cannot watch the rules directory; hot reload is off");
                    return;
                }
            };
        if let Err(e) = watcher.watch(&self.dir, RecursiveMode::Recursive) {
            warn!(error = %e, dir = %self.dir.display(), "cannot watch the rules directory; hot reload is off");
            return;
        }
        loop {
            tokio::select! {
                changed = rx.recv() => if changed.is_none() { return },
                _ = shutdown.changed() => return,
            }
            // Let an editor finish writing (several events per save), then load once.
            tokio::time::sleep(debounce).await;
            while rx.try_recv().is_ok() {}
            let _ = self.reload();
        }
    }
}

fn with_metrics(set: RuleSet, metrics: &Metrics, generation: u64) -> Loaded {
    let matches = set
        .rules
        .iter()
        .map(|r| metrics.rule_matches.with_label_values(&[&*r.id]))
        .collect();
    let condition_errors = set
        .rules
        .iter()
        .map(|r| metrics.condition_errors.with_label_values(&[&*r.id]))
        .collect();
    let subscription_skips = set
        .rules
        .iter()
        .map(|r| {
            r.subscription.as_ref().map(|_| {
                ["off", "invalid"].map(|reason| {
                    metrics
                        .subscription_skips
                        .with_label_values(&[&*r.id, reason])
                })
            })
        })
        .collect();
    let decisions = set
        .rules
        .iter()
        .map(|r| {
            crate::outcome::Status::ALL.map(|status| {
                metrics
                    .rule_decisions
                    .with_label_values(&[&*r.id, status.as_str()])
            })
        })
        .collect();
    let suppressions = set
        .rules
        .iter()
        .map(|_| std::array::from_fn(|_| OnceLock::new()))
        .collect();
    let activity = set
        .rules
        .iter()
        .map(|r| metrics.activity.of(&r.id))
        .collect();
    metrics.rules_loaded.set(set.rules.len() as i64);
    let patterns_print = crate::util::stable_digest(
        &set.rules
            .iter()
            .filter_map(|r| {
                r.pattern
                    .as_ref()
                    .map(|p| (r.id.as_bytes(), p.fingerprint.as_bytes()))
            })
            .flat_map(|(id, print)| [id, b"\0", print, b"\n"])
            .collect::<Vec<_>>(),
    );
    Loaded {
        patterns_print: u64::from_be_bytes(patterns_print[..8].try_into().unwrap_or_default()),
        set,
        matches,
        condition_errors,
        subscription_skips,
        decisions,
        suppressions,
        activity,
        generation,
        loaded_ms: now_ms(),
    }
}

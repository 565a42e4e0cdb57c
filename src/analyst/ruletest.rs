//! Rule tests in YAML, beside the rules (`rules/tests/*.yaml`), run by
//! `herald rules test`: profiles, events at virtual times, and the decisions
//! expected — which message on which channel with which text, or which
//! suppression with which reason, or nothing.
//!
//! ```yaml
//! tests:
//!   - name: three declines in five minutes send one fraud SMS
//!     only: [declined-velocity]          # ignore other rules' decisions
//!     profiles:
//!       u-1: { phone: "+14155552671", time_zone: America/Chicago, consent: { sms: true } }
//!     events:
//!       - { at: "2026-11-24T15:00:00Z", topic: transactions, key: card-1, event: { user_id: u-1, status: declined } }
//!       - { at: "2026-11-24T15:30:00Z" }  # no event: only time passes (timers, held messages)
//!     expect:
//!       - { rule: declined-velocity, channel: sms, status: sent, text_matches: "^herald: 3 declined" }
//!       # also: reason, reason_matches, title, title_matches, text, locale,
//!       # digest_count (the items of a digest's send)
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::{Offline, Seen};
use crate::config::Config;

/// One test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub tests: Vec<TestCase>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: Spanned<String>,
    /// Only these rules' decisions are compared (default: all).
    #[serde(default)]
    pub only: Option<Spanned<Vec<String>>>,
    /// Profiles by user id, as on the profiles topic.
    #[serde(default)]
    pub profiles: BTreeMap<String, Value>,
    /// The locale of every profile of the case that names none (`fr-BE`).
    #[serde(default)]
    pub locale: Option<String>,
    pub events: Vec<Spanned<Step>>,
    /// The decisions, in order; `[]`: nothing at all.
    pub expect: Vec<Spanned<Expected>>,
}

/// An event at a time, or only time passing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// When it arrives (RFC 3339); also its event time unless the event has its own.
    pub at: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub event: Option<Value>,
}

/// What one decision must look like; fields left out are not compared.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub rule: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    /// A regular expression the title must match.
    #[serde(default)]
    pub title_matches: Option<String>,
    /// A regular expression the text (push body or SMS) must match.
    #[serde(default)]
    pub text_matches: Option<String>,
    /// A regular expression the reason must match (`^digested:`).
    #[serde(default)]
    pub reason_matches: Option<String>,
    /// For a digest's send: how many items it carries.
    #[serde(default)]
    pub digest_count: Option<u64>,
    /// The locale of the texts sent (`fr` for a recipient in `fr-BE`).
    #[serde(default)]
    pub locale: Option<String>,
}

/// The result of one case.
pub struct CaseResult {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    /// Empty when it passed; else what differs, ready to print.
    pub failure: Option<String>,
}

/// The test files under `<rules>/tests/`, or the one file given.
pub fn test_files(path: &Path) -> std::io::Result<(PathBuf, Vec<PathBuf>)> {
    if path.is_file() {
        let rules = path
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .to_path_buf();
        return Ok((rules, vec![path.to_path_buf()]));
    }
    let dir = path.join("tests");
    let mut files = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok((path.to_path_buf(), files))
}

/// Runs every case of one file against the rules of `rules_dir`. `Err` is a
/// file that cannot be run at all (unreadable, not a test file, a case naming
/// a rule that does not exist, an event without a time).
pub async fn run_file(
    config: &Config,
    rules_dir: &Path,
    file: &Path,
) -> Result<Vec<CaseResult>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let parsed: TestFile =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut results = Vec::new();
    for case in parsed.tests {
        let offline = Offline::new(config, rules_dir).map_err(|e| e.to_string())?;
        let known = |id: &str| offline.rules.current().set.get(id).is_some();
        let at = |line: usize, msg: String| format!("{}:{line}: {msg}", file.display());
        let line = case.name.referenced.line() as usize;
        for e in &case.expect {
            if !known(&e.value.rule) {
                return Err(at(
                    e.referenced.line() as usize,
                    format!(
                        "test \"{}\": rule `{}` does not exist",
                        case.name.value, e.value.rule
                    ),
                ));
            }
        }
        if let Some(only) = &case.only {
            for id in &only.value {
                if !known(id) {
                    return Err(at(
                        only.referenced.line() as usize,
                        format!("test \"{}\": rule `{id}` does not exist", case.name.value),
                    ));
                }
            }
        }
        for (user, profile) in &case.profiles {
            let mut profile = profile.clone();
            if let (Some(locale), Some(fields)) = (&case.locale, profile.as_object_mut()) {
                fields
                    .entry("locale")
                    .or_insert_with(|| locale.as_str().into());
            }
            offline.profile(user, &profile);
        }
        let mut seen = Vec::new();
        for step in &case.events {
            let l = step.referenced.line() as usize;
            let when = step.value.at.as_deref().ok_or_else(|| {
                at(
                    l,
                    format!(
                        "test \"{}\": every event needs `at` (its arrival time)",
                        case.name.value
                    ),
                )
            })?;
            let at_ms = when
                .parse::<jiff::Timestamp>()
                .map_err(|_| {
                    at(
                        l,
                        format!(
                            "test \"{}\": `at: {when}` is not an RFC 3339 time",
                            case.name.value
                        ),
                    )
                })?
                .as_millisecond();
            match (&step.value.topic, &step.value.event) {
                (Some(topic), Some(event)) => {
                    // The arrival time is the event time unless the event has its own.
                    let mut event = event.clone();
                    let time_field = config
                        .sources
                        .get(topic)
                        .and_then(|s| s.time_field.as_deref());
                    if let (Some(field), Some(fields)) = (time_field, event.as_object_mut()) {
                        fields.entry(field).or_insert_with(|| Value::from(when));
                    }
                    let payload = serde_json::to_vec(&event).unwrap_or_default();
                    offline
                        .event(topic, step.value.key.as_deref(), &payload, at_ms)
                        .await;
                }
                (None, None) => offline.advance(at_ms).await,
                _ => {
                    return Err(at(
                        l,
                        format!(
                            "test \"{}\": an event needs both `topic` and `event`",
                            case.name.value
                        ),
                    ))
                }
            }
            seen.extend(offline.take());
        }
        let only = case.only.as_ref().map(|o| &o.value);
        seen.retain(|s| only.is_none_or(|o| o.iter().any(|id| s.outcome["rule"] == id.as_str())));
        results.push(CaseResult {
            file: file.to_path_buf(),
            line,
            name: case.name.value.clone(),
            failure: compare(&case.expect, &seen),
        });
    }
    Ok(results)
}

/// `None` when `seen` is what `expected` says, else the diff.
fn compare(expected: &[Spanned<Expected>], seen: &[Seen]) -> Option<String> {
    let mut problems = Vec::new();
    for (i, e) in expected.iter().enumerate() {
        let Some(s) = seen.get(i) else {
            problems.push(format!(
                "decision {}: expected {}, got nothing",
                i + 1,
                describe_expected(&e.value)
            ));
            continue;
        };
        let got = |field: &str| s.outcome[field].as_str().unwrap_or("").to_string();
        let mut differ = Vec::new();
        let mut check = |name: &str, want: &Option<String>, have: String| {
            if let Some(w) = want {
                if *w != have {
                    differ.push(format!("{name}: expected {w:?}, got {have:?}"));
                }
            }
        };
        check("rule", &Some(e.value.rule.clone()), got("rule"));
        check("channel", &e.value.channel, got("channel"));
        check("status", &e.value.status, got("status"));
        check("reason", &e.value.reason, got("reason"));
        check("user", &e.value.user, got("user"));
        check("title", &e.value.title, s.title.clone().unwrap_or_default());
        check("text", &e.value.text, s.text.clone().unwrap_or_default());
        let used = s.outcome["locale"]["used"].as_str().unwrap_or("");
        check("locale", &e.value.locale, used.to_string());
        let count = s.outcome["digest"]["count"].as_u64();
        if let (Some(want), false) = (e.value.digest_count, e.value.digest_count == count) {
            differ.push(format!("digest_count: expected {want}, got {count:?}"));
        }
        for (name, pattern, have) in [
            (
                "title",
                &e.value.title_matches,
                s.title.clone().unwrap_or_default(),
            ),
            (
                "text",
                &e.value.text_matches,
                s.text.clone().unwrap_or_default(),
            ),
            ("reason", &e.value.reason_matches, got("reason")),
        ] {
            if let Some(p) = pattern {
                match regex::Regex::new(p) {
                    Ok(re) if re.is_match(&have) => {}
                    Ok(_) => differ.push(format!("{name}: expected to match /{p}/, got {have:?}")),
                    Err(err) => differ.push(format!(
                        "{name}_matches: /{p}/ is not a regular expression: {err}"
                    )),
                }
            }
        }
        if !differ.is_empty() {
            problems.push(format!(
                "decision {} (line {}):\n      {}",
                i + 1,
                e.referenced.line(),
                differ.join("\n      ")
            ));
        }
    }
    if seen.len() > expected.len() {
        problems.push(format!(
            "{} more decision(s) than expected",
            seen.len() - expected.len()
        ));
    }
    if problems.is_empty() {
        return None;
    }
    let mut out = String::new();
    for p in &problems {
        let _ = writeln!(out, "    {p}");
    }
    let _ = writeln!(out, "    expected:");
    if expected.is_empty() {
        let _ = writeln!(out, "      (nothing)");
    }
    for e in expected {
        let _ = writeln!(out, "      - {}", describe_expected(&e.value));
    }
    let _ = writeln!(out, "    got:");
    if seen.is_empty() {
        let _ = writeln!(out, "      (nothing)");
    }
    for s in seen {
        let _ = writeln!(out, "      - {}", describe_seen(s));
    }
    Some(out)
}

fn describe_expected(e: &Expected) -> String {
    let mut parts = vec![e.rule.clone()];
    parts.extend(e.channel.iter().cloned());
    parts.extend(e.status.iter().cloned());
    parts.extend(e.reason.iter().map(|r| format!("({r})")));
    parts.extend(e.reason_matches.iter().map(|r| format!("(/{r}/)")));
    parts.extend(e.title.iter().map(|t| format!("{t:?}")));
    parts.extend(e.title_matches.iter().map(|t| format!("/{t}/")));
    parts.extend(e.text.iter().map(|t| format!("{t:?}")));
    parts.extend(e.text_matches.iter().map(|t| format!("/{t}/")));
    parts.join(" ")
}

fn describe_seen(s: &Seen) -> String {
    let o = &s.outcome;
    let mut parts = vec![
        o["rule"].as_str().unwrap_or("").to_string(),
        o["channel"].as_str().unwrap_or("").to_string(),
        o["status"].as_str().unwrap_or("").to_string(),
    ];
    if let Some(r) = o["reason"].as_str() {
        parts.push(format!("({r})"));
    }
    if let Some(t) = &s.title {
        parts.push(format!("{t:?}"));
    }
    if let Some(t) = &s.text {
        parts.push(format!("{t:?}"));
    }
    parts.join(" ")
}

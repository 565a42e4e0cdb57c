//! Loads every rule file under a directory into a [`RuleSet`], collecting every error at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::compile::{compile_rule, Compiler, Known, Rule};
use super::error::{RuleError, RuleErrors};
use super::model::RuleSpec;
use super::parse::rule_specs;
use super::set::{FileSummary, RuleSet};
use crate::expr::condition::Conditions;
use crate::render::Templates;

/// Largest rule file accepted, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Finds rule files: `*.yaml` and `*.yml` below `dir`, recursively, in path
/// order. Folders named `tests` hold rule tests, not rules, and are skipped.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                if name != "tests" {
                    stack.push(path);
                }
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Loads and compiles every rule file under `dir`. On any error nothing is
/// returned but the complete list of errors.
pub fn load_dir(dir: &Path, known: &Known<'_>) -> Result<RuleSet, RuleErrors> {
    let files = rule_files(dir).map_err(|e| {
        RuleErrors(vec![RuleError {
            file: dir.to_owned(),
            line: 1,
            column: 1,
            rule: None,
            message: format!("cannot read the rules directory: {e}"),
        }])
    })?;
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for path in files {
        let shown = shown_path(dir, &path);
        match read_limited(&path) {
            Ok(text) => sources.push((shown, text)),
            Err(message) => errors.push(RuleError {
                file: shown,
                line: 1,
                column: 1,
                rule: None,
                message,
            }),
        }
    }
    let set = load_texts(&sources, known);
    match set {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(RuleErrors(errors)),
        Err(RuleErrors(more)) => {
            errors.extend(more);
            errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            Err(RuleErrors(errors))
        }
    }
}

/// The path as errors show it: as given on the command line or in the config.
fn shown_path(dir: &Path, file: &Path) -> PathBuf {
    if dir == file {
        return file.to_path_buf();
    }
    file.strip_prefix(dir)
        .map(|p| dir.join(p))
        .unwrap_or_else(|_| file.to_path_buf())
}

fn read_limited(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes; rule files are limited to {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

/// Compiles rule files given as (shown path, text). Used by [`load_dir`] and by tests.
pub fn load_texts(files: &[(PathBuf, String)], known: &Known<'_>) -> Result<RuleSet, RuleErrors> {
    let conditions = Conditions::default();
    let mut templates = Templates::new();
    let mut rules: Vec<Rule> = Vec::new();
    let mut errors = Vec::new();
    let mut summaries = Vec::new();
    let mut first_seen: BTreeMap<String, (PathBuf, usize, usize)> = BTreeMap::new();
    for (path, text) in files {
        let (specs, broken) = rule_specs(path, text);
        errors.extend(broken);
        let versions = rule_versions(text, &specs);
        let (mut count, mut enabled) = (0, 0);
        for (spec, version) in specs.into_iter().zip(versions) {
            let id = spec.id.value.clone();
            let (line, column) = (
                spec.id.referenced.line() as usize,
                spec.id.referenced.column() as usize,
            );
            if let Some((first_file, first_line, first_col)) = first_seen.get(&id) {
                errors.push(RuleError {
                    file: path.clone(),
                    line,
                    column,
                    rule: Some(id.clone()),
                    message: format!(
                        "duplicate rule id; first defined at {}:{first_line}:{first_col}",
                        first_file.display()
                    ),
                });
                continue;
            }
            first_seen.insert(id, (path.clone(), line, column));
            let mut compiler = Compiler {
                conditions: &conditions,
                templates: &mut templates,
                known,
            };
            if let Some(rule) = compile_rule(&mut compiler, spec, path, text, version, &mut errors)
            {
                count += 1;
                enabled += usize::from(rule.enabled);
                rules.push(rule);
            }
        }
        summaries.push(FileSummary {
            path: path.display().to_string(),
            rules: count,
            enabled,
        });
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(RuleErrors(errors));
    }
    Ok(RuleSet::new(rules, templates, conditions, summaries))
}

/// A version per rule: SHA-256 of the rule's own lines (from its `id:` line to
/// the next rule's), so editing one rule leaves the others' versions alone.
fn rule_versions(text: &str, specs: &[RuleSpec]) -> Vec<String> {
    let starts: Vec<usize> = specs
        .iter()
        .map(|r| {
            let offset = r.id.referenced.span().byte_offset().unwrap_or(0) as usize;
            text[..offset.min(text.len())]
                .rfind('\n')
                .map_or(0, |n| n + 1)
        })
        .collect();
    (0..starts.len())
        .map(|i| {
            let end = starts.get(i + 1).copied().unwrap_or(text.len());
            let slice = &text[starts[i]..end.max(starts[i])];
            hex::encode(&Sha256::digest(slice.as_bytes())[..6])
        })
        .collect()
}

/// Names in the config that rules refer to, as sets.
pub fn known_names<'a, I: IntoIterator<Item = &'a String>>(names: I) -> BTreeSet<String> {
    names.into_iter().cloned().collect()
}

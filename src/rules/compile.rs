//! Compiles one [`RuleSpec`] into a [`Rule`]: checks every field, compiles the
//! condition and templates, and reports each problem at its file position.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde_saphyr::{Location, Spanned};

use super::error::RuleError;
use super::model::{Priority, RuleSpec, Scalar};
use super::texts::{inner_position, TemplateNames};
use crate::expr::condition::{Condition, Conditions};
use crate::render::Templates;

/// A compiled, immutable rule.
pub struct Rule {
    pub id: Arc<str>,
    pub description: String,
    pub enabled: bool,
    /// Runs without sending (see `RuleSpec::shadow`).
    pub shadow: bool,
    /// The file it came from, relative to the rules directory.
    pub file: String,
    pub sources: Vec<String>,
    /// Exact-match fields, sorted by field name.
    pub match_fields: Vec<(String, Scalar)>,
    pub condition: Option<Condition>,
    /// The channels to send on; with `fallback`, a chain tried in order.
    pub channels: Vec<String>,
    /// Whether `channels` is a fallback chain (one message) rather than a list (one each).
    pub fallback: bool,
    /// With `fallback`: how long to wait for a delivery receipt before the next channel, ms.
    pub await_delivery_ms: Option<i64>,
    pub campaign: Option<String>,
    pub push_actions: Option<super::model::PushActionsSpec>,
    pub category: Arc<str>,
    pub priority: Priority,
    pub collapse_key: Option<String>,
    pub ttl_seconds: Option<u32>,
    /// Per-rule policy overrides.
    pub policy: crate::policy::RulePolicy,
    /// For an alert users subscribe to: its parameters and default.
    pub subscription: Option<Arc<super::subscription::Subscription>>,
    /// Its messages collected per recipient and sent as one, when it digests.
    pub digest: Option<Arc<super::digest::Digest>>,
    /// Its arms, control group and goal, when it runs an experiment.
    pub experiment: Option<Arc<super::experiment::Experiment>>,
    /// Context over time, when the rule has a `pattern`.
    pub pattern: Option<std::sync::Arc<crate::patterns::Pattern>>,
    /// Template names present for this rule (`<id>/title`, `<id>/body`, `<id>/text`).
    pub has_title: bool,
    pub has_body: bool,
    pub has_text: bool,
    /// The templates' names (`<id>/title`, `<id>/body`, `<id>/text`), made once.
    pub template_names: TemplateNames,
    /// The rule's texts per locale, and how a recipient's are picked.
    pub texts: super::texts::Texts,
    /// SHA-256 prefix of the rule's definition, to tell versions apart.
    pub version: Arc<str>,
    /// Not errors, but worth the analyst's eye (`herald rules check` prints them).
    pub warnings: Vec<String>,
    /// What the rule's templates read of the event and the pattern: all a
    /// held message keeps of them at rest.
    pub reads: TemplateReads,
}

/// The event fields and pattern context a rule's templates read.
#[derive(Debug, Clone, Default)]
pub struct TemplateReads {
    pub event: crate::render::Reads,
    pub pattern: crate::render::Reads,
}

/// What the compiler checks names against.
pub struct Known<'a> {
    /// Channel names from the config; `None` when checking without a config.
    pub channels: Option<&'a BTreeSet<String>>,
    /// Source topics from the config; `None` when checking without a config.
    pub sources: Option<&'a BTreeSet<String>>,
    /// The config's `rules.default_locale`: the locale of texts whose rule
    /// names none (`None`: `en`).
    pub default_locale: Option<&'a str>,
}

/// What compiling a rule set shares between its rules.
pub struct Compiler<'a> {
    pub conditions: &'a Conditions,
    pub templates: &'a mut Templates,
    pub known: &'a Known<'a>,
}

/// Compiles one rule, adding its templates to `templates`. All problems of the
/// rule are pushed to `errors`; `None` when there was any.
pub fn compile_rule(
    compiler: &mut Compiler<'_>,
    spec: RuleSpec,
    file: &Path,
    text: &str,
    version: String,
    errors: &mut Vec<RuleError>,
) -> Option<Rule> {
    let Compiler {
        conditions,
        templates,
        known,
    } = compiler;
    let before = errors.len();
    let id = spec.id.value.clone();
    let err = |loc: &Location, message: String| RuleError {
        file: file.to_owned(),
        line: loc.line() as usize,
        column: loc.column() as usize,
        rule: Some(id.clone()),
        message,
    };
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
    {
        errors.push(err(
            &spec.id.referenced,
            "id must be lowercase letters, digits, `-`, `_` or `.`, e.g. `declined-velocity`"
                .into(),
        ));
    }
    if spec.sources.value.is_empty() {
        errors.push(err(
            &spec.sources.referenced,
            "sources must name at least one topic".into(),
        ));
    }
    if let Some(known_sources) = known.sources {
        for s in &spec.sources.value {
            if !known_sources.contains(s) {
                errors.push(err(
                    &spec.sources.referenced,
                    format!(
                        "source `{s}` is not configured; configured sources: {}",
                        list_names(known_sources)
                    ),
                ));
            }
        }
    }
    let (channels, fallback) = match (&spec.channels, &spec.fallback) {
        (Some(_), Some(f)) => {
            errors.push(err(
                &f.referenced,
                "give either `channels` (send on each) or `fallback` (the first that can take it), not both".into(),
            ));
            (Vec::new(), false)
        }
        (None, None) => {
            errors.push(err(
                &spec.id.referenced,
                "rule needs `channels: [push]` or a `fallback: [push, sms]` chain".into(),
            ));
            (Vec::new(), false)
        }
        (Some(list), None) | (None, Some(list)) => {
            let fallback = spec.fallback.is_some();
            if list.value.is_empty() || (fallback && list.value.len() < 2) {
                errors.push(err(
                    &list.referenced,
                    if fallback {
                        "fallback needs at least two channels, e.g. [push, sms]".into()
                    } else {
                        "channels must name at least one channel, e.g. [push]".into()
                    },
                ));
            }
            let mut seen = BTreeSet::new();
            for c in &list.value {
                if !seen.insert(c) {
                    errors.push(err(
                        &list.referenced,
                        format!("channel `{c}` is listed twice"),
                    ));
                }
                if let Some(known_channels) = known.channels {
                    if !known_channels.contains(c) {
                        errors.push(err(
                            &list.referenced,
                            format!(
                                "channel `{c}` is not configured; configured channels: {}",
                                list_names(known_channels)
                            ),
                        ));
                    }
                }
            }
            (list.value.clone(), fallback)
        }
    };
    if let (Some(wait), false) = (&spec.await_delivery, fallback) {
        errors.push(err(
            &wait.referenced,
            "await_delivery needs a `fallback` chain to fall back along".into(),
        ));
    }
    for guard in &spec.policy.suppress_if {
        if guard.same_campaign && spec.campaign.is_none() {
            errors.push(err(
                &spec.id.referenced,
                format!(
                    "policy.suppress_if `{}` looks at the same campaign, but the rule has no `campaign`; add one or set `same_campaign: false`",
                    guard.engaged
                ),
            ));
        }
    }
    if spec.category.value.trim().is_empty() {
        errors.push(err(
            &spec.category.referenced,
            "category must not be empty, e.g. transactional".into(),
        ));
    }
    let condition = spec
        .condition
        .as_ref()
        .and_then(|c| match conditions.compile(&c.value) {
            Ok(compiled) => Some(compiled),
            Err(e) => {
                let (line, column) = inner_position(text, c, e.line, e.column);
                errors.push(RuleError {
                    file: file.to_owned(),
                    line,
                    column,
                    rule: Some(id.clone()),
                    message: format!("condition: {}", e.message),
                });
                None
            }
        });
    let subscription = super::subscription::compile(
        spec.subscription.as_ref(),
        spec.condition.as_ref().zip(condition.as_ref()),
        spec.id.referenced,
        |at, m| errors.push(err(at, m)),
    );
    let digest = super::digest::compile(
        spec.digest.as_ref(),
        &spec.category,
        &spec.sources.value,
        conditions,
        |at, m| errors.push(err(at, m)),
    )
    .map(Arc::new);
    let experiment = super::experiment::compile(
        spec.experiment.as_ref(),
        &id,
        &spec.category.value,
        &channels,
        &spec.sources.value,
        conditions,
        |at, m| errors.push(err(at, m)),
    )
    .map(Arc::new);
    let pattern = match &spec.pattern {
        None => {
            if let Some(k) = &spec.key {
                errors.push(err(
                    &k.referenced,
                    "`key` belongs to a rule with a `pattern`".into(),
                ));
            }
            None
        }
        Some(p) => {
            let stepped = p.sequence.is_some() || p.absence.is_some();
            if stepped && (!spec.match_fields.is_empty() || spec.condition.is_some()) {
                errors.push(err(
                    &spec.id.referenced,
                    "a sequence or absence takes `match` and `condition` in its steps, not on the rule".into(),
                ));
            }
            let dir = file.parent().unwrap_or(Path::new("."));
            match crate::patterns::compile(
                p,
                spec.key.as_ref(),
                &spec.sources.value,
                dir,
                conditions,
                spec.id.referenced,
            ) {
                Ok(compiled) => Some(std::sync::Arc::new(compiled)),
                Err(problems) => {
                    errors.extend(pattern_errors(problems, file, &id));
                    None
                }
            }
        }
    };
    let t = &spec.template;
    if t.body.is_none() && t.text.is_none() {
        errors.push(err(
            &spec.id.referenced,
            "template needs a `body` (push) or a `text` (SMS)".into(),
        ));
    }
    // A template of the rule under `name`, its errors at their place in
    // the file, each said as `what` says it.
    let mut add_named = |name: String, what: &str, source: &Spanned<String>| -> bool {
        match templates.add(name, source.value.clone()) {
            Ok(()) => true,
            Err(problems) => {
                for e in problems {
                    let (line, column) = inner_position(text, source, e.line, e.column);
                    errors.push(RuleError {
                        file: file.to_owned(),
                        line,
                        column,
                        rule: Some(id.clone()),
                        message: format!("{what}: {}", e.message),
                    });
                }
                false
            }
        }
    };
    let mut add = |part: &str, source: &Option<Spanned<String>>| -> bool {
        let Some(source) = source else { return false };
        add_named(format!("{id}/{part}"), &format!("template.{part}"), source)
    };
    let shown = digest
        .as_ref()
        .map(|d| d.shown(super::digest::MOST_ITEMS).len());
    let mut warnings = push_size_warnings(file, &id, t, shown);
    let has_title = add("title", &t.title);
    let has_body = add("body", &t.body);
    let has_text = add("text", &t.text);
    let mut arm_names = Vec::new();
    for arm in spec.experiment.iter().flat_map(|e| &e.arms.value) {
        let Some(own) = &arm.template else { continue };
        for (part, source) in [
            ("title", &own.title),
            ("body", &own.body),
            ("text", &own.text),
        ] {
            let Some(source) = source else { continue };
            let full = super::experiment::Experiment::template_name(&id, &arm.name, part);
            let what = format!("experiment arm `{}`: template.{part}", arm.name);
            if add_named(full.clone(), &what, source) {
                arm_names.push(full);
            }
        }
    }
    if errors.len() > before {
        return None;
    }
    let template_names = TemplateNames::of(&id);
    let source = super::texts::Source {
        file,
        text,
        id: &id,
        has: [has_title, has_body, has_text],
        max_sms_segments: spec.max_sms_segments,
        default_locale: known.default_locale,
    };
    let texts = super::texts::compile(
        &source,
        t,
        &template_names,
        templates,
        errors,
        &mut warnings,
    )?;
    let mut names: Vec<String> = [("title", has_title), ("body", has_body), ("text", has_text)]
        .into_iter()
        .filter(|(_, has)| *has)
        .map(|(part, _)| format!("{id}/{part}"))
        .collect();
    names.extend(texts.names(&template_names));
    names.extend(arm_names);
    let digest_reads = crate::render::Reads::of(templates, &names, "digest");
    if digest.is_none() && digest_reads != crate::render::Reads::default() {
        errors.push(err(
            &spec.id.referenced,
            "the template reads `digest`, but the rule has no `digest:`".into(),
        ));
        return None;
    }
    let reads = TemplateReads {
        event: crate::render::Reads::of(templates, &names, "event"),
        pattern: crate::render::Reads::of(templates, &names, "pattern"),
    };
    Some(Rule {
        id: id.into(),
        description: spec.description,
        enabled: spec.enabled,
        shadow: spec.shadow,
        file: file.display().to_string(),
        sources: spec.sources.value,
        match_fields: spec.match_fields.into_iter().collect(),
        condition,
        channels,
        fallback,
        await_delivery_ms: spec.await_delivery.map(|w| w.value.ms()),
        campaign: spec.campaign,
        push_actions: spec.push_actions,
        category: spec.category.value.into(),
        priority: spec.priority,
        collapse_key: spec.collapse_key,
        ttl_seconds: spec.ttl_seconds,
        policy: spec.policy,
        subscription,
        digest,
        experiment,
        pattern,
        has_title,
        has_body,
        has_text,
        template_names,
        texts,
        version: version.into(),
        warnings,
        reads,
    })
}

/// Turns compile problems into rule errors at their positions.
fn pattern_errors(
    problems: Vec<crate::patterns::Problem>,
    file: &Path,
    rule: &str,
) -> Vec<RuleError> {
    problems
        .into_iter()
        .map(|(loc, message)| RuleError {
            file: file.to_owned(),
            line: loc.line() as usize,
            column: loc.column() as usize,
            rule: Some(rule.to_string()),
            message,
        })
        .collect()
}

/// FCM's payload limit, which push templates should stay well under.
const PUSH_PAYLOAD_BYTES: usize = 4096;

/// Warnings for push templates that can obviously exceed FCM's payload limit:
/// text over the limit on its own, or a loop whose output can grow past it.
fn push_size_warnings(
    file: &std::path::Path,
    id: &str,
    t: &super::model::TemplateSpec,
    digest_shown: Option<usize>,
) -> Vec<String> {
    // A loop over a digest's items shows at most `show` of them: a few
    // cannot outgrow the payload.
    let bounded = |text: &str| {
        digest_shown.is_some_and(|n| n <= 10)
            && text.matches("{% for").count() + text.matches("{%- for").count()
                == text.matches(" in digest.items").count()
    };
    let mut warnings = Vec::new();
    for (part, source) in [("title", &t.title), ("body", &t.body)] {
        let Some(source) = source else { continue };
        let at = format!(
            "{}:{}:{}: rule \"{id}\": template.{part}",
            file.display(),
            source.referenced.line(),
            source.referenced.column()
        );
        if source.value.len() > PUSH_PAYLOAD_BYTES {
            warnings.push(format!(
                "{at} is {} bytes before any value is filled in, over FCM's {PUSH_PAYLOAD_BYTES}-byte payload; such pushes fail `payload_too_large`",
                source.value.len()
            ));
        } else if (source.value.contains("{% for") || source.value.contains("{%- for"))
            && !bounded(&source.value)
        {
            warnings.push(format!(
                "{at} has a loop: its output can grow past FCM's {PUSH_PAYLOAD_BYTES}-byte payload, and such pushes fail `payload_too_large`"
            ));
        }
    }
    warnings
}

fn list_names(names: &BTreeSet<String>) -> String {
    names
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

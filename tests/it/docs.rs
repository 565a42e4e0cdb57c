//! The docs say what the code does: every config key, every metric and every
//! rule field the code accepts is documented, every link resolves, and the
//! README stays a five-minute read.

use std::collections::BTreeSet;
use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The names in a serde "unknown field `x`, expected one of `a`, `b`" error.
fn expected_fields(error: &str) -> Vec<String> {
    let list = error
        .split("expected one of ")
        .nth(1)
        .or_else(|| error.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no field list in: {error}"));
    list.split(',')
        .map(|f| {
            f.trim()
                .trim_matches(|c: char| c == '`' || c.is_whitespace())
                .split(|c: char| c.is_whitespace())
                .next()
                .unwrap()
                .trim_matches('`')
                .to_string()
        })
        .filter(|f| !f.is_empty())
        .collect()
}

const MINIMAL: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[sources.tx]
user_field = "user_id"
[channels.push]
provider = "console"
[policy.categories.marketing]
"#;

/// Every key of one section of the config, as the code accepts them: the
/// field list of the error an unknown key in that section gives.
fn config_keys(section: &str) -> Vec<String> {
    config_keys_of(MINIMAL, section)
}

/// Every key of a channel whose provider is `provider`.
fn channel_keys(provider: &str) -> Vec<String> {
    let minimal = MINIMAL.replace(
        "provider = \"console\"",
        &format!("provider = \"{provider}\""),
    );
    config_keys_of(&minimal, "channels.push")
}

fn config_keys_of(minimal: &str, section: &str) -> Vec<String> {
    let text = if section.is_empty() {
        format!("zz_not_a_key = 1\n{minimal}")
    } else if minimal.contains(&format!("[{section}]\n")) {
        minimal.replace(
            &format!("[{section}]\n"),
            &format!("[{section}]\nzz_not_a_key = 1\n"),
        )
    } else {
        format!("{minimal}\n[{section}]\nzz_not_a_key = 1\n")
    };
    let error = toml::from_str::<herald::config::Config>(&text)
        .expect_err("an unknown key is an error")
        .to_string();
    assert!(error.contains("zz_not_a_key"), "{section}: {error}");
    expected_fields(&error)
}

#[test]
fn every_config_key_is_in_the_configuration_table() {
    let table = read("docs/operators/configuration.md");
    // Sections whose keys are names the deployment chooses.
    let named = [
        ("sources.tx", "sources.<topic>"),
        (
            "policy.categories.marketing",
            "policy.categories.<category>",
        ),
    ];
    let mut sections: Vec<(String, String)> = named
        .iter()
        .map(|(s, shown)| (s.to_string(), shown.to_string()))
        .collect();
    let top = config_keys("");
    for key in &top {
        if !["sources", "channels"].contains(&key.as_str()) {
            sections.push((key.clone(), key.clone()));
        }
    }
    sections.push(("policy.default".into(), "policy.default".into()));
    let mut missing = Vec::new();
    // A channel's keys are its provider's.
    for provider in ["fcm", "apns", "twilio", "webhook", "console"] {
        let keys = channel_keys(provider);
        assert!(
            keys.contains(&"concurrency".to_string()),
            "{provider}: {keys:?}"
        );
        for key in keys {
            if !table.contains(&format!("`channels.<name>.{key}`")) {
                missing.push(format!("channels.<name>.{key} ({provider})"));
            }
        }
    }
    for (section, shown) in &sections {
        if section == "policy" {
            // `policy.categories` and `policy.default` are sections of their own.
            for key in config_keys(section) {
                if !["categories", "default"].contains(&key.as_str())
                    && !table.contains(&format!("`policy.{key}`"))
                {
                    missing.push(format!("policy.{key}"));
                }
            }
            continue;
        }
        for key in config_keys(section) {
            let documented = table.contains(&format!("`{shown}.{key}`"))
                || table.contains(&format!("`{shown}.{key}.*`"))
                || (shown == "policy.default" && table.contains("`policy.default.*`"));
            if !documented {
                missing.push(format!("{shown}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys the config accepts but docs/operators/configuration.md does not list: {missing:?}"
    );
}

#[test]
fn every_metric_the_code_registers_is_in_the_metrics_table() {
    let table = read("docs/operators/metrics.md");
    let source = read("src/metrics/mod.rs");
    let mut names: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("herald_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    let metrics = herald::metrics::Metrics::new();
    for family in metrics.registry.gather() {
        names.insert(family.name().to_string());
    }
    assert!(names.len() > 30, "{names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !table.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics registered but not in docs/operators/metrics.md: {missing:?}"
    );
}

#[test]
fn every_rule_field_is_in_the_rule_reference() {
    let reference = read("docs/analysts/rules.md");
    let error = serde_saphyr::from_str::<herald::rules::model::RuleFile>(
        "rules:\n  - id: a\n    zz_not_a_field: 1\n",
    )
    .expect_err("an unknown field is an error")
    .to_string();
    let fields = expected_fields(&error);
    assert!(fields.contains(&"category".to_string()), "{fields:?}");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !reference.contains(&format!("| `{f}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "rule fields not in docs/analysts/rules.md's table: {missing:?}"
    );
}

#[test]
fn the_readme_is_a_five_minute_read_and_every_doc_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = read("README.md");
    assert!(
        readme.lines().count() <= 150,
        "README.md is {} lines",
        readme.lines().count()
    );
    let mut pages = vec![root.join("README.md")];
    for reader in ["analysts", "operators", "engineers"] {
        for entry in std::fs::read_dir(root.join("docs").join(reader)).unwrap() {
            pages.push(entry.unwrap().path());
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap().split('#').next().unwrap();
            if target.is_empty() || target.starts_with("http") {
                continue;
            }
            if !page.parent().unwrap().join(target).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing: {broken:?}");
}

#[test]
fn every_state_table_a_stage_declares_is_in_the_state_doc_in_order() {
    let doc = read("docs/engineers/state.md");
    let documented: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| table | stage |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    // Parsed, not loaded: the tables need no credentials.
    let config = herald::config::Config::parse(&read("config/herald.toml")).unwrap();
    let mut declared: Vec<&str> = Vec::new();
    let tables = herald::engine::Engine::tables(&config);
    for table in &tables {
        if declared.last() != Some(&table.name) {
            declared.push(table.name);
        }
    }
    assert_eq!(documented, declared);
    // Each changelog herald creates is named in the doc, as its pattern.
    for table in &tables {
        if let Some((topic, cleanup, _)) = table.changelog() {
            let pattern = topic.replacen(&config.kafka.group_id, "<group>", 1);
            let pattern = tables
                .iter()
                .find_map(|t| match &t.partitioning {
                    herald::state::Partitioning::Source(s) if pattern.contains(s.as_str()) => {
                        Some(pattern.replace(s.as_str(), "<source>"))
                    }
                    _ => None,
                })
                .unwrap_or(pattern);
            assert!(
                doc.contains(&format!("`{pattern}`")),
                "{pattern} not in state.md"
            );
            assert!(
                cleanup.starts_with("compact"),
                "{topic}: a changelog is compacted"
            );
        }
    }
}

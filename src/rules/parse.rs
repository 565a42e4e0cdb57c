//! Reads one rule file into rule specs, rule by rule when the file as a whole
//! does not fit the format, so six broken rules give six errors in one run
//! rather than one per fix.

use std::path::Path;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::RuleError;
use super::model::{RuleFile, RuleSpec};

/// The file's outline: a `rules` list whose items are not yet read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Outline {
    rules: Vec<Spanned<IgnoredAny>>,
}

/// The rules of one file that fit the format, and an error for each that does
/// not. A file that is not YAML, or has no `rules` list, gives one error.
pub fn rule_specs(path: &Path, text: &str) -> (Vec<RuleSpec>, Vec<RuleError>) {
    let whole_file_error = match serde_saphyr::from_str::<RuleFile>(text) {
        Ok(file) => return (file.rules, Vec::new()),
        Err(e) => parse_error(path, text, &e),
    };
    let Ok(outline) = serde_saphyr::from_str::<Outline>(text) else {
        return (Vec::new(), vec![whole_file_error]);
    };
    let starts: Vec<usize> = outline
        .rules
        .iter()
        .filter_map(|item| item_start(text, item))
        .collect();
    if starts.len() != outline.rules.len() {
        return (Vec::new(), vec![whole_file_error]);
    }
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts
            .get(i + 1)
            .copied()
            .unwrap_or_else(|| list_end(text, start));
        match serde_saphyr::from_str::<Vec<RuleSpec>>(&in_place(text, start, end)) {
            Ok(mut one) if one.len() == 1 => specs.push(one.remove(0)),
            Ok(_) => return (Vec::new(), vec![whole_file_error]),
            Err(e) => errors.push(parse_error(path, text, &e)),
        }
    }
    if errors.is_empty() {
        // The pieces read where the whole did not: report what the whole said.
        return (Vec::new(), vec![whole_file_error]);
    }
    (specs, errors)
}

/// Byte offset of the start of the line holding an item's `-`.
fn item_start(text: &str, item: &Spanned<IgnoredAny>) -> Option<usize> {
    let offset = item.referenced.span().byte_offset()? as usize;
    let mut line_start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |n| n + 1);
    if !text[line_start..offset].trim_start().starts_with('-') {
        // `-` alone on the line above, the item's first key below it.
        let above = text[..line_start.saturating_sub(1)]
            .rfind('\n')
            .map_or(0, |n| n + 1);
        if text[above..line_start].trim() != "-" {
            return None;
        }
        line_start = above;
    }
    Some(line_start)
}

/// Where the `rules` list ends after the item starting at `start`: the first
/// later line that is neither blank, a comment, nor indented past the item's `-`.
fn list_end(text: &str, start: usize) -> usize {
    let dash_indent = indent(&text[start..]);
    let mut at = text[start..]
        .find('\n')
        .map_or(text.len(), |n| start + n + 1);
    while at < text.len() {
        let line = &text[at..text[at..].find('\n').map_or(text.len(), |n| at + n)];
        let content = line.trim_start();
        let blank = content.is_empty() || content.starts_with('#');
        let own_indent = indent(line);
        if !blank
            && (own_indent < dash_indent
                || (own_indent == dash_indent && !content.starts_with('-')))
        {
            return at;
        }
        at += line.len() + 1;
    }
    text.len()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The file with everything outside `start..end` blanked (newlines kept,
/// every other byte a space), so lines, columns and byte offsets of what is
/// read are those of the file itself.
fn in_place(text: &str, start: usize, end: usize) -> String {
    let blank = |s: &str| -> String {
        s.bytes()
            .map(|b| if b == b'\n' { '\n' } else { ' ' })
            .collect()
    };
    let mut out = blank(&text[..start]);
    out.push_str(&text[start..end]);
    out.push_str(&blank(&text[end..]));
    out
}

/// A YAML or shape error, with the id of the rule it sits in when one can be found.
fn parse_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> RuleError {
    let (line, column) = e
        .location()
        .map_or((1, 1), |l| (l.line() as usize, l.column() as usize));
    let mut message = e.without_snippet().to_string();
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    if message == "expected sequence start" {
        message = "expected a list here, e.g. `[transactions]` or one `- item` per line".into();
    }
    RuleError {
        file: path.to_owned(),
        line,
        column,
        rule: enclosing_rule_id(text, line),
        message,
    }
}

/// The id of the rule whose text contains `line`: the nearest `id:` at or above it.
fn enclosing_rule_id(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .find_map(|l| {
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            t.strip_prefix("id:")
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
                .filter(|v| !v.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_broken_rule_of_a_file_is_reported_and_the_others_are_read() {
        let text = "\
# payments
rules:
  - id: one
    sources: [transactions]
    template: { body: hi }
  - id: two
    sources: [transactions]
    category: transactional
    colour: blue
    template: { body: hi }

  - id: three
    sources: [transactions]
    category: transactional
    template: { body: hi }
  -
    id: four
    sources: transactions
    category: transactional
    template: { body: hi }
";
        let (specs, errors) = rule_specs(Path::new("f.yaml"), text);
        let ids: Vec<&str> = specs.iter().map(|s| s.id.value.as_str()).collect();
        assert_eq!(ids, ["three"]);
        assert_eq!(specs[0].id.referenced.line(), 12);
        let found: Vec<(usize, Option<&str>)> =
            errors.iter().map(|e| (e.line, e.rule.as_deref())).collect();
        assert_eq!(
            found,
            [(5, Some("one")), (9, Some("two")), (18, Some("four"))],
            "{errors:#?}"
        );
        assert!(errors[0].message.contains("missing field `category`"));
        assert!(errors[1].message.contains("unknown field `colour`"));
    }

    #[test]
    fn a_list_followed_by_another_key_or_a_yaml_error_is_one_error() {
        let (specs, errors) = rule_specs(
            Path::new("f.yaml"),
            "rules:\n- id: a\n  sources: [t]\n  category: c\n  template: { body: hi }\nextra: 1\n",
        );
        assert!(specs.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("unknown field `extra`"),
            "{errors:?}"
        );
        let (_, errors) = rule_specs(Path::new("f.yaml"), "rules: [\n");
        assert_eq!(errors.len(), 1);
    }
}

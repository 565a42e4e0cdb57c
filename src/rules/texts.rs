//! A rule's texts per locale: compiled and checked at load (a part no default text has, a field only one locale reads, a missing translation), and picked for a recipient along their locale's fallback chain.

use std::collections::BTreeSet;
use std::path::Path;

use serde_saphyr::Spanned;

use super::error::RuleError;
use super::model::TemplateSpec;
use crate::render::{Reads, Templates, TextLocale};

/// The parts a text can have.
const PARTS: [&str; 3] = ["title", "body", "text"];

/// The locales a rule has texts in.
#[derive(Debug, Clone)]
pub struct Texts {
    /// The locale of the rule's own texts (`template.locale`, else `en`).
    pub default: TextLocale,
    /// The other locales, by tag (`fr`, `fr-BE`), with the parts each has.
    pub locales: Vec<(String, [bool; 3])>,
}

/// The texts picked for one recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    /// The locale money, numbers and plurals are written in: the
    /// recipient's own when the texts are in their language, else the
    /// texts' (an English sentence writes `$62.13`, not `62,13 $`).
    pub locale: TextLocale,
    /// The recipient's locale, as their profile gives it (parsed).
    pub wanted: Option<String>,
    /// The locale of the texts used (`fr` for a recipient in `fr-BE`).
    pub used: String,
    /// The recipient's language had no texts: the rule's default was used.
    pub fell_back: bool,
    /// Per part, the locale whose template it is (`None`: the default's).
    parts: [Option<String>; 3],
}

impl Picked {
    /// The template name of `part` (`title`, `body`, `text`) for this
    /// recipient.
    pub fn name<'a>(&self, names: &'a TemplateNames, part: &str) -> std::borrow::Cow<'a, str> {
        let i = PARTS.iter().position(|p| *p == part).unwrap_or(2);
        let base = match i {
            0 => &names.title,
            1 => &names.body,
            _ => &names.text,
        };
        match &self.parts[i] {
            Some(tag) => format!("{base}@{tag}").into(),
            None => base.as_str().into(),
        }
    }
}

impl Texts {
    /// The texts for a recipient whose profile says `wanted` (a BCP 47 tag;
    /// an unreadable one counts as none): per part, the first locale of
    /// their fallback chain that has it, else the rule's own text.
    pub fn pick(&self, wanted: Option<&str>) -> Picked {
        let wanted = wanted.and_then(TextLocale::parse);
        let chain = match (&wanted, self.locales.is_empty()) {
            (Some(w), false) => w.chain(),
            _ => Vec::new(),
        };
        let parts: [Option<String>; 3] = std::array::from_fn(|i| {
            chain.iter().find_map(|tag| {
                self.locales
                    .iter()
                    .find(|(t, has)| t == tag && has[i])
                    .map(|(t, _)| t.clone())
            })
        });
        // The locale of the message's main part (the SMS text or the body).
        let main = parts[2].as_ref().or(parts[1].as_ref()).cloned();
        let same_language = |w: &TextLocale| w.language() == self.default.language();
        let (used, fell_back, locale) = match (&wanted, main) {
            (Some(w), Some(tag)) => (tag, false, w.clone()),
            (Some(w), None) if same_language(w) => (self.default.tag.clone(), false, w.clone()),
            (Some(_), None) => (self.default.tag.clone(), true, self.default.clone()),
            (None, _) => (self.default.tag.clone(), false, self.default.clone()),
        };
        Picked {
            locale,
            wanted: wanted.map(|w| w.tag),
            used,
            fell_back,
            parts,
        }
    }

    /// Every template name of the rule's locales (for what they read).
    pub fn names(&self, names: &TemplateNames) -> Vec<String> {
        let mut out = Vec::new();
        for (tag, has) in &self.locales {
            for (i, base) in [&names.title, &names.body, &names.text]
                .into_iter()
                .enumerate()
            {
                if has[i] {
                    out.push(format!("{base}@{tag}"));
                }
            }
        }
        out
    }
}

/// What compiling a rule's locales needs of the rule.
pub(super) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub id: &'a str,
    /// Which default parts the rule has (title, body, text).
    pub has: [bool; 3],
    /// The rule's `max_sms_segments`.
    pub max_sms_segments: Option<u32>,
    /// The config's `rules.default_locale`, if set.
    pub default_locale: Option<&'a str>,
}

/// The part an SMS is made of: the `text`, else the body.
fn sms_part(parts: [&Option<Spanned<String>>; 3]) -> Option<&Spanned<String>> {
    parts[2].as_ref().or(parts[1].as_ref())
}

/// The SMS size of a template's own text, before any value is filled in:
/// what a message will take at least.
fn sms_floor(source: &str) -> crate::outcome::sms::SmsSize {
    let mut literal = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find(['{']) {
        let (before, from) = rest.split_at(start);
        literal.push_str(before);
        let close = match from.get(1..2) {
            Some("{") => "}}",
            Some("%") => "%}",
            Some("#") => "#}",
            _ => {
                literal.push('{');
                rest = &from[1..];
                continue;
            }
        };
        match from.find(close) {
            Some(end) => rest = &from[end + 2..],
            None => rest = "",
        }
    }
    literal.push_str(rest);
    crate::outcome::sms::measure(&crate::outcome::sms::for_sms(literal))
}

/// A warning when an SMS template (`part`, in `locale`) takes more than
/// `max` segments before any value is filled in.
fn segments_warning(
    src: &Source<'_>,
    at: &Spanned<String>,
    what: &str,
    max: u32,
) -> Option<String> {
    let floor = sms_floor(&at.value);
    (floor.segments > max).then(|| {
        format!(
            "{}:{}:{}: rule \"{}\": {what} takes at least {} SMS segments ({}, {} units before any value is filled in), over the rule's max_sms_segments {max}",
            src.file.display(),
            at.referenced.line(),
            at.referenced.column(),
            src.id,
            floor.segments,
            floor.encoding.as_str(),
            floor.units,
        )
    })
}

/// Compiles `t.locales` into `templates` and checks them: a locale's part
/// the default texts lack, and a field of the event one locale reads that
/// the default texts do not (a typo, or a field the event may not have),
/// are errors; a part a locale lacks is a warning (the fallback is used).
pub(super) fn compile(
    src: &Source<'_>,
    t: &TemplateSpec,
    names: &TemplateNames,
    templates: &mut Templates,
    errors: &mut Vec<RuleError>,
    warnings: &mut Vec<String>,
) -> Option<Texts> {
    let before = errors.len();
    let error = |at: Option<&Spanned<String>>, message: String| {
        let (line, column) = at.map_or((1, 1), |s| {
            (s.referenced.line() as usize, s.referenced.column() as usize)
        });
        RuleError {
            file: src.file.to_owned(),
            line,
            column,
            rule: Some(src.id.to_string()),
            message,
        }
    };
    let default = match &t.locale {
        None => match src.default_locale.and_then(TextLocale::parse) {
            Some(configured) => configured,
            None => TextLocale::default_locale(),
        },
        Some(tag) => match TextLocale::parse(&tag.value) {
            Some(l) => l,
            None => {
                errors.push(error(
                    Some(tag),
                    format!(
                        "template.locale `{}` is not a BCP 47 locale (e.g. `en`, `fr-BE`)",
                        tag.value
                    ),
                ));
                return None;
            }
        },
    };
    let defaults: Vec<String> = [&names.title, &names.body, &names.text]
        .into_iter()
        .zip(src.has)
        .filter(|(_, has)| *has)
        .map(|(n, _)| n.clone())
        .collect();
    let default_reads = Reads::of(templates, &defaults, "event");
    // Default texts that read the event whole (`{% for k in event %}`) know every field.
    let every_field = default_reads.keeps_everything();
    let known: BTreeSet<String> = default_reads.names().collect();
    if let (Some(max), Some(at)) = (src.max_sms_segments, sms_part([&t.title, &t.body, &t.text])) {
        warnings.extend(segments_warning(src, at, "template (SMS text)", max));
    }
    let mut locales = Vec::new();
    for (tag, texts) in &t.locales {
        let first = [&texts.title, &texts.body, &texts.text]
            .into_iter()
            .flatten()
            .next();
        let Some(locale) = TextLocale::parse(tag) else {
            errors.push(error(
                first,
                format!(
                    "template.locales: `{tag}` is not a BCP 47 locale (e.g. `fr`, `fr-BE`, `ja`)"
                ),
            ));
            continue;
        };
        let parts = [&texts.title, &texts.body, &texts.text];
        if let (Some(max), Some(at)) = (src.max_sms_segments, sms_part(parts)) {
            let what = format!("template.locales.{tag} (SMS text)");
            warnings.extend(segments_warning(src, at, &what, max));
        }
        let mut has = [false; 3];
        for (i, source) in parts.into_iter().enumerate() {
            let part = PARTS[i];
            let Some(source) = source else {
                if src.has[i] {
                    let (line, column) =
                        first.map_or((1, 1), |s| (s.referenced.line(), s.referenced.column()));
                    warnings.push(format!(
                        "{}:{line}:{column}: rule \"{}\": template.locales.{tag} has no {part}; recipients in {tag} get the next locale's (last, {}'s)",
                        src.file.display(), src.id, default.tag
                    ));
                }
                continue;
            };
            if !src.has[i] {
                errors.push(error(Some(source), format!("template.locales.{tag}.{part}: the rule's default texts ({}) have no {part}; add it there first", default.tag)));
                continue;
            }
            let base = [&names.title, &names.body, &names.text][i];
            let name = format!("{base}@{}", locale.tag);
            match templates.add(name.clone(), source.value.clone()) {
                Ok(()) => {
                    let unknown: Vec<String> =
                        Reads::of(templates, std::slice::from_ref(&name), "event")
                            .names()
                            .filter(|f| !every_field && !known.contains(f))
                            .collect();
                    if unknown.is_empty() {
                        has[i] = true;
                    } else {
                        errors.push(error(Some(source), format!(
                            "template.locales.{tag}.{part} reads event.{}, which the default texts never read: a typo, or a field the event may not have",
                            unknown.join(", event.")
                        )));
                    }
                }
                Err(problems) => {
                    for e in problems {
                        let (line, column) = inner_position(src.text, source, e.line, e.column);
                        errors.push(RuleError {
                            file: src.file.to_owned(),
                            line,
                            column,
                            rule: Some(src.id.to_string()),
                            message: format!("template.locales.{tag}.{part}: {}", e.message),
                        });
                    }
                }
            }
        }
        locales.push((locale.tag, has));
    }
    (errors.len() == before).then_some(Texts { default, locales })
}

/// A rule's template names, by part, whether or not the rule has that part.
pub struct TemplateNames {
    pub title: String,
    pub body: String,
    pub text: String,
}

impl TemplateNames {
    pub fn of(id: &str) -> TemplateNames {
        TemplateNames {
            title: format!("{id}/title"),
            body: format!("{id}/body"),
            text: format!("{id}/text"),
        }
    }
}

/// Maps a 1-based position inside a scalar's text to the file. Exact for plain
/// and quoted one-line scalars and for literal blocks (`|`), whose lines keep
/// their indentation; for folded text the line is exact, the column approximate.
pub(super) fn inner_position(
    text: &str,
    scalar: &Spanned<String>,
    line: usize,
    column: usize,
) -> (usize, usize) {
    let start_line = scalar.referenced.line() as usize;
    let start_col = scalar.referenced.column() as usize;
    let first = scalar
        .referenced
        .span()
        .byte_offset()
        .and_then(|o| text.as_bytes().get(o as usize).copied());
    let quoted = matches!(first, Some(b'"' | b'\'')) && line == 1;
    let shift = usize::from(quoted);
    (start_line + line - 1, start_col + column - 1 + shift)
}

#[cfg(test)]
mod tests {
    use super::sms_floor;
    use crate::rules::{load::load_texts, Known, RuleSet};

    fn refused(yaml: &str) -> String {
        match load(yaml) {
            Ok(_) => panic!("loaded"),
            Err(e) => e,
        }
    }

    fn load(yaml: &str) -> Result<RuleSet, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        let known = Known {
            channels: None,
            sources: None,
            default_locale: None,
        };
        load_texts(&[(path, yaml.to_string())], &known).map_err(|e| e.to_string())
    }

    const PURCHASE: &str = r#"
rules:
  - id: purchase
    sources: [transactions]
    channels: [push]
    category: transactional
    template:
      title: "{{ event.amount | money(event.currency) }} at {{ event.merchant }}"
      body: "Card {{ event.card_last4 }} was used."
      locales:
        fr:
          title: "{{ event.amount | money(event.currency) }} chez {{ event.merchant }}"
          body: "La carte {{ event.card_last4 }} a été utilisée."
        ja:
          body: "カード{{ event.card_last4 }}が使われました。"
"#;

    #[test]
    fn a_recipient_gets_the_first_locale_of_their_chain_part_by_part() {
        let set = load(PURCHASE).unwrap();
        let rule = &set.rules[0];
        let names = &rule.template_names;
        let be = rule.texts.pick(Some("fr-BE"));
        assert_eq!(
            (be.used.as_str(), be.fell_back, be.locale.tag.as_str()),
            ("fr", false, "fr-BE")
        );
        assert_eq!(be.name(names, "title"), "purchase/title@fr");
        let ja = rule.texts.pick(Some("ja-JP"));
        assert_eq!(ja.name(names, "body"), "purchase/body@ja");
        assert_eq!(
            ja.name(names, "title"),
            "purchase/title",
            "no Japanese title: the default's"
        );
        let de = rule.texts.pick(Some("de-CH"));
        assert_eq!(
            (de.used.as_str(), de.fell_back, de.locale.tag.as_str()),
            ("en", true, "en")
        );
        let gb = rule.texts.pick(Some("en-GB"));
        assert_eq!(
            (gb.used.as_str(), gb.fell_back, gb.locale.tag.as_str()),
            ("en", false, "en-GB")
        );
        let none = rule.texts.pick(None);
        assert_eq!((none.used.as_str(), none.wanted.as_deref()), ("en", None));
        let bad = rule.texts.pick(Some("not a locale"));
        assert_eq!((bad.used.as_str(), bad.fell_back), ("en", false));
        assert!(
            rule.warnings
                .iter()
                .any(|w| w.contains("locales.ja has no title")),
            "{:?}",
            rule.warnings
        );
    }

    #[test]
    fn an_sms_text_past_the_rules_segments_is_warned_about_per_locale() {
        let yaml = r#"
rules:
  - id: fraud
    sources: [transactions]
    channels: [sms]
    category: fraud
    max_sms_segments: 1
    template:
      text: "Card {{ event.card_last4 }} was used at {{ event.merchant }}. Not you? Reply NO."
      locales:
        fr:
          text: "La carte {{ event.card_last4 }} a été utilisée chez {{ event.merchant }}. Ce n'est pas vous ? Répondez NON, ou appelez-nous : nous bloquerons la carte aussitôt."
        ja:
          text: "カード{{ event.card_last4 }}が{{ event.merchant }}で使われました。お心当たりがない場合は「NO」と返信してください。カードはすぐに停止されます。ご不明な点がございましたら、カード裏面の番号までお電話ください。"
"#;
        let set = load(yaml).unwrap();
        let warnings = &set.rules[0].warnings;
        // The English text fits; the French one would in GSM-7, but the ô
        // of « aussitôt » makes it UCS-2; Japanese is UCS-2 by nature.
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains(
                "template.locales.fr (SMS text) takes at least 2 SMS segments (UCS-2, 118 units"
            ),
            "{warnings:?}"
        );
        assert!(
            warnings[1]
                .contains("template.locales.ja (SMS text) takes at least 2 SMS segments (UCS-2"),
            "{warnings:?}"
        );
        assert_eq!(
            sms_floor("a {{ x }} b {% if y %}c{% endif %} {# no #}").units,
            7
        );
        assert_eq!(
            sms_floor("é {{ x }}").encoding,
            crate::outcome::sms::SmsEncoding::Gsm7
        );
    }

    #[test]
    fn the_configs_default_locale_names_texts_that_name_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        let french_only = PURCHASE.replace("        fr:\n", "        en:\n");
        let known = Known {
            channels: None,
            sources: None,
            default_locale: Some("fr"),
        };
        let set = load_texts(&[(path, french_only)], &known).unwrap_or_else(|e| panic!("{e}"));
        let texts = &set.rules[0].texts;
        assert_eq!(texts.default.tag, "fr");
        let be = texts.pick(Some("fr-BE"));
        assert_eq!(
            (be.used.as_str(), be.fell_back, be.locale.tag.as_str()),
            ("fr", false, "fr-BE")
        );
    }

    #[test]
    fn locale_texts_are_checked_against_the_default_ones() {
        let no_default_title = PURCHASE.replace(
            "      title: \"{{ event.amount | money(event.currency) }} at {{ event.merchant }}\"\n",
            "",
        );
        let e = refused(&no_default_title);
        assert!(
            e.contains("template.locales.fr.title: the rule's default texts (en) have no title"),
            "{e}"
        );
        let typo = PURCHASE.replace("chez {{ event.merchant }}", "chez {{ event.merchnat }}");
        let e = refused(&typo);
        assert!(
            e.contains("reads event.merchnat, which the default texts never read"),
            "{e}"
        );
        assert!(
            e.contains("rules.yaml:12:18:"),
            "points at the French title: {e}"
        );
        let bad = PURCHASE.replace("        ja:", "        'j a':");
        let e = refused(&bad);
        assert!(e.contains("`j a` is not a BCP 47 locale"), "{e}");
        let broken = PURCHASE.replace("a été utilisée.", "a été {{ utilisée.");
        assert!(refused(&broken).contains("template.locales.fr.body"));
    }
}

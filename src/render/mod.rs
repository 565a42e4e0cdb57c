//! render: minijinja templates for push titles, bodies and SMS text, with masking and money filters.
//!
//! All templates of one rule set live in one [`Templates`] environment, compiled
//! when the rules load, so a syntax error is a rule-file error and rendering on
//! the per-event path only looks a template up by name.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Serde, Value};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::util;

mod names;
mod reads;
pub use reads::Reads;

/// Compiled templates of a rule set, addressed as `"<rule id>/<part>"`.
pub struct Templates {
    env: Environment<'static>,
}

/// A template that failed to compile: the message and its 1-based line and
/// column inside the template text.
#[derive(Debug, Clone)]
pub struct TemplateError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Default for Templates {
    fn default() -> Self {
        Templates::new()
    }
}

impl Templates {
    /// An empty environment with herald's filters.
    pub fn new() -> Templates {
        let mut env = Environment::new();
        // Print of a missing field is an error (a message with a hole is worse
        // than none); `{% if event.x %}` on a missing field is still allowed.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.add_filter("money", money);
        env.add_filter("mask_card", |v: Value| util::mask_card(&v.to_string()));
        env.add_filter("mask_phone", |v: Value| util::mask_phone(&v.to_string()));
        env.add_filter("local_time", local_time);
        Templates { env }
    }

    /// Compiles `source` under `name`. A syntax error stops at the first
    /// problem; otherwise every unknown filter, test and function is reported.
    pub fn add(&mut self, name: String, source: String) -> Result<(), Vec<TemplateError>> {
        let src_for_pos = source.clone();
        self.env
            .add_template_owned(name.clone(), source)
            .map_err(|e| {
                let (line, column) = match e.range() {
                    Some(r) => crate::config::line_col(&src_for_pos, r.start),
                    None => (e.line().unwrap_or(1), 1),
                };
                vec![TemplateError {
                    line,
                    column,
                    message: e.detail().unwrap_or("syntax error").to_string(),
                }]
            })?;
        let unknown = names::unknown_names(&self.env, &name);
        if unknown.is_empty() {
            return Ok(());
        }
        self.env.remove_template(&name);
        Err(unknown)
    }

    /// Whether a template of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.env.get_template(name).is_ok()
    }

    /// Renders the named template in a [`Templates::scope`].
    pub fn render(&self, name: &str, scope: &Value) -> Result<String, Error> {
        let template = self.env.get_template(name)?;
        template.render(scope).map(|s| s.trim().to_string())
    }

    /// What one message's templates see: `event`, `profile`, `rule` and, for
    /// a rule with a pattern, `pattern` (counts, first and last events,
    /// steps). Event and profile are read where they lie, field by field as a
    /// template asks for them; nothing is converted up front. Built once per
    /// message, for its title and body alike.
    pub fn scope(
        event: Arc<dyn JsonFields>,
        profile: Option<Arc<dyn JsonFields>>,
        rule: &RuleScope<'_>,
        pattern: Option<&serde_json::Value>,
    ) -> Value {
        minijinja::context! {
            event => Value::from_object(Fields(event)),
            profile => profile.map(|p| Value::from_object(Fields(p))),
            rule => Serde(rule),
            pattern => Serde(pattern),
        }
    }
}

/// Something templates read as a JSON object (the event, the profile).
pub trait JsonFields: Send + Sync + 'static {
    fn json_fields(&self) -> &serde_json::Map<String, serde_json::Value>;
}

impl JsonFields for serde_json::Map<String, serde_json::Value> {
    fn json_fields(&self) -> &serde_json::Map<String, serde_json::Value> {
        self
    }
}

/// A JSON object seen by templates without being converted: each field
/// becomes a template value when a template reads it.
struct Fields(Arc<dyn JsonFields>);

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.json_fields().iter()).finish()
    }
}

impl Object for Fields {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.json_fields().get(key.as_str()?).map(template_value)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .json_fields()
                .keys()
                .map(|k| Value::from(k.as_str()))
                .collect(),
        )
    }
}

/// One JSON value as a template value, the way minijinja's serde conversion makes it.
fn template_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(i)) => Value::from(i),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        nested => Value::from(Serde(nested)),
    }
}

/// What templates see of the rule.
#[derive(Debug, serde::Serialize)]
pub struct RuleScope<'a> {
    pub id: &'a str,
    pub category: &'a str,
    pub description: &'a str,
}

/// `{{ event.amount | money(event.currency) }}` → `$1,234.50`, `€8.00`, `¥1200`, `12.00 CHF`.
fn money(amount: Value, currency: Option<String>) -> Result<String, Error> {
    let value: f64 = match amount.as_str() {
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| invalid("money: amount is not a number"))?,
        None => f64::try_from(amount).map_err(|_| invalid("money: amount is not a number"))?,
    };
    let code = currency
        .unwrap_or_else(|| "USD".into())
        .to_ascii_uppercase();
    let (symbol, decimals) = match code.as_str() {
        "USD" => (Some("$"), 2),
        "EUR" => (Some("€"), 2),
        "GBP" => (Some("£"), 2),
        "JPY" => (Some("¥"), 0),
        "INR" => (Some("₹"), 2),
        _ => (None, 2),
    };
    let sign = if value < 0.0 { "-" } else { "" };
    let digits = group_thousands(&format!("{:.*}", decimals, value.abs()));
    Ok(match symbol {
        Some(sym) => format!("{sign}{sym}{digits}"),
        None => format!("{sign}{digits} {code}"),
    })
}

fn group_thousands(fixed: &str) -> String {
    let (int, frac) = fixed
        .split_once('.')
        .map_or((fixed, None), |(i, f)| (i, Some(f)));
    let mut out = String::with_capacity(fixed.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// `{{ event.ts | local_time }}` → `14:05` in the recipient's time zone
/// (`profile.time_zone`, else UTC); an optional strftime format:
/// `local_time("%b %d, %H:%M")`.
fn local_time(state: &State, when: Value, format: Option<String>) -> Result<String, Error> {
    let ms = match when.as_str() {
        Some(s) => crate::ingest::decode::parse_time(&serde_json::Value::String(s.to_string())),
        None => when.as_i64(),
    }
    .ok_or_else(|| invalid("local_time: value is not RFC 3339 text or epoch milliseconds"))?;
    let tz_name = state
        .lookup("profile")
        .and_then(|p| p.get_attr("time_zone").ok())
        .and_then(|z| z.as_str().map(str::to_string));
    let tz = match tz_name {
        Some(name) => {
            jiff::tz::TimeZone::get(&name).map_err(|_| invalid("local_time: unknown time zone"))?
        }
        None => jiff::tz::TimeZone::UTC,
    };
    let ts = jiff::Timestamp::from_millisecond(ms)
        .map_err(|_| invalid("local_time: time out of range"))?;
    let zoned = ts.to_zoned_datetime(tz);
    Ok(zoned
        .strftime(format.as_deref().unwrap_or("%H:%M"))
        .to_string())
}

fn invalid(msg: &'static str) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn render(
        src: &str,
        event: serde_json::Value,
        profile: Option<&Profile>,
    ) -> Result<String, Error> {
        let mut t = Templates::new();
        t.add("r/body".into(), src.into()).unwrap();
        let scope = RuleScope {
            id: "r",
            category: "transactional",
            description: "",
        };
        let event = Arc::new(event.as_object().unwrap().clone());
        let profile = profile.map(|p| Arc::new(p.clone()) as Arc<dyn JsonFields>);
        t.render("r/body", &Templates::scope(event, profile, &scope, None))
    }

    #[test]
    fn money_and_masks() {
        let out = render(
            "{{ event.amount | money(event.currency) }} on {{ event.card | mask_card }}",
            serde_json::json!({"amount": 1234.5, "currency": "usd", "card": "4111111111114242"}),
            None,
        )
        .unwrap();
        assert_eq!(out, "$1,234.50 on •••• 4242");
        let out = render(
            "{{ 1200 | money('JPY') }} {{ 12 | money('CHF') }}",
            serde_json::json!({}),
            None,
        )
        .unwrap();
        assert_eq!(out, "¥1,200 12.00 CHF");
    }

    #[test]
    fn local_time_uses_the_profile_zone_across_dst() {
        let profile = Profile {
            time_zone: Some("America/Chicago".into()),
            ..Profile::default()
        };
        // 2026-07-01 15:00 UTC is 10:00 CDT (UTC-5); 2026-12-01 15:00 UTC is 09:00 CST (UTC-6).
        let summer = render(
            "{{ event.ts | local_time }}",
            serde_json::json!({"ts": "2026-07-01T15:00:00Z"}),
            Some(&profile),
        );
        let winter = render(
            "{{ event.ts | local_time }}",
            serde_json::json!({"ts": "2026-12-01T15:00:00Z"}),
            Some(&profile),
        );
        assert_eq!(summer.unwrap(), "10:00");
        assert_eq!(winter.unwrap(), "09:00");
    }

    #[test]
    fn readme_template_examples_render() {
        let profile = Profile::parse("u", br#"{"attributes": {"first_name": "Ada"}}"#)
            .unwrap()
            .0;
        let event = serde_json::json!({"amount": 900.0});
        assert_eq!(
            render(
                "Hi {{ profile.attributes.first_name }}, {{ rule.id }}",
                event.clone(),
                Some(&profile)
            )
            .unwrap(),
            "Hi Ada, r"
        );
        assert_eq!(
            render(
                "{% if event.amount > 500 %}Large purchase{% else %}Purchase{% endif %}",
                event,
                None
            )
            .unwrap(),
            "Large purchase"
        );
    }

    #[test]
    fn missing_field_fails_instead_of_leaving_a_hole() {
        assert!(render("Hi {{ event.name }}", serde_json::json!({}), None).is_err());
        assert_eq!(
            render(
                "{% if event.name %}x{% endif %}ok",
                serde_json::json!({}),
                None
            )
            .unwrap(),
            "ok"
        );
    }

    #[test]
    fn syntax_error_has_a_position() {
        let mut t = Templates::new();
        let err = t
            .add("r/body".into(), "line one\nHi {{ event.name ".into())
            .unwrap_err()
            .remove(0);
        assert_eq!(err.line, 2);
        assert!(
            err.message.contains("unexpected end of input"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_unknown_filter_test_or_function_is_a_load_error_with_its_position() {
        let mut t = Templates::new();
        let errors = t
            .add(
                "r/body".into(),
                "{{ event.amount | monee }}\n{% if event.x is oddly %}x{% endif %}{{ nofunc(1) }}"
                    .into(),
            )
            .unwrap_err();
        let found: Vec<(usize, usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.column, e.message.split(';').next().unwrap()))
            .collect();
        assert_eq!(
            found,
            [
                (1, 19, "unknown filter `monee`"),
                (2, 18, "unknown test `oddly` (after `is`)"),
                (2, 41, "unknown function `nofunc`"),
            ]
        );
        assert!(!t.has("r/body"), "a rejected template must not stay loaded");
    }

    #[test]
    fn known_filters_tests_functions_and_macros_load() {
        let mut t = Templates::new();
        let source = "{% macro line(x) %}{{ x | upper }}{% endmacro %}{{ line(event.m) }} \
            {{ event.amount | money(event.currency) | default('') }} {{ range(2) | length }} \
            {% if event.m is defined and event.m is string %}{{ event.card | mask_card }}{% endif %} \
            {% for x in [1, 2] %}{{ loop.index }}{{ loop.cycle('a', 'b') }}{% endfor %}";
        t.add("r/body".into(), source.into()).unwrap();
    }
}

//! render: minijinja templates for push titles, bodies and SMS text, with masking and money filters.
//!
//! All templates of one rule set live in one [`Templates`] environment, compiled
//! when the rules load, so a syntax error is a rule-file error and rendering on
//! the per-event path only looks a template up by name. The common shape —
//! text and `{{ event.x | filter }}` — is also planned at load and rendered
//! without the interpreter ([`plan`]).

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Serde, Value};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::util;

pub mod locale;
mod money;
mod names;
mod plan;
mod reads;
#[cfg(test)]
mod tests;
pub use locale::TextLocale;
pub use reads::Reads;

use plan::Plan;

/// Compiled templates of a rule set, addressed as `"<rule id>/<part>"`.
pub struct Templates {
    env: Environment<'static>,
    /// The templates of the planned shape, by name.
    plans: foldhash::HashMap<String, Plan>,
}

/// What one message's templates see: `event`, `profile`, `rule` and, for a
/// rule with a pattern, `pattern` (counts, first and last events, steps).
/// Event and profile are read where they lie, field by field as a template
/// asks for them; nothing is converted up front.
pub struct Scope<'a> {
    pub event: Arc<dyn JsonFields>,
    pub profile: Option<Arc<dyn JsonFields>>,
    pub rule: RuleScope<'a>,
    pub pattern: Option<&'a serde_json::Value>,
    /// For a digest's send: `count`, `items` (those its `show` picks, each
    /// with its `event`, `pattern` and `at_ms`), `more`, `group`, `id`.
    pub digest: Option<&'a serde_json::Value>,
    /// The locale the text is written in: money, numbers and plurals
    /// follow it (`locale` in templates).
    pub locale: &'a TextLocale,
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
        env.add_filter("number", number);
        env.add_filter("plural", plural);
        env.add_filter("mask_card", |v: Value| util::mask_card(&v.to_string()));
        env.add_filter("mask_phone", |v: Value| util::mask_phone(&v.to_string()));
        env.add_filter("local_time", local_time);
        env.add_filter("local_date", |state: &State, when: Value| {
            local_date(state, when, false)
        });
        env.add_filter("local_datetime", |state: &State, when: Value| {
            local_date(state, when, true)
        });
        Templates {
            env,
            plans: foldhash::HashMap::default(),
        }
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
            match Plan::of(&self.env, &name) {
                Some(plan) => self.plans.insert(name, plan),
                None => self.plans.remove(&name),
            };
            return Ok(());
        }
        self.env.remove_template(&name);
        self.plans.remove(&name);
        Err(unknown)
    }

    /// Whether a template of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.env.get_template(name).is_ok()
    }

    /// Renders the named template: by its plan when it has one and the plan
    /// can, else on minijinja. Either way the same text, trimmed, or the same error.
    pub fn render(&self, name: &str, scope: &Scope<'_>) -> Result<String, Error> {
        if let Some(text) = self.plans.get(name).and_then(|plan| plan.render(scope)) {
            return Ok(text);
        }
        self.interpret(name, scope)
    }

    /// Renders the named template on minijinja alone.
    pub fn interpret(&self, name: &str, scope: &Scope<'_>) -> Result<String, Error> {
        let template = self.env.get_template(name)?;
        let context = minijinja::context! {
            event => Value::from_object(Fields(Arc::clone(&scope.event))),
            profile => scope.profile.clone().map(|p| Value::from_object(Fields(p))),
            rule => Serde(&scope.rule),
            pattern => Serde(scope.pattern),
            digest => Serde(scope.digest),
            locale => Value::from_object(LocaleValue(scope.locale.clone())),
        };
        template.render(context).map(|s| s.trim().to_string())
    }

    /// Whether the named template is planned (rendered without the interpreter when it can).
    pub fn is_planned(&self, name: &str) -> bool {
        self.plans.contains_key(name)
    }
}

/// Something templates read as a JSON object (the event, the profile).
pub trait JsonFields: Send + Sync + 'static {
    /// One top-level field.
    fn json_field(&self, name: &str) -> Option<&serde_json::Value>;
    /// Every top-level field, for a template that walks the object.
    fn json_entries(&self) -> Vec<(&str, &serde_json::Value)>;
}

impl JsonFields for serde_json::Map<String, serde_json::Value> {
    fn json_field(&self, name: &str) -> Option<&serde_json::Value> {
        crate::ingest::decode::field(self, name)
    }

    fn json_entries(&self) -> Vec<(&str, &serde_json::Value)> {
        self.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }
}

impl JsonFields for crate::ingest::fields::Fields {
    fn json_field(&self, name: &str) -> Option<&serde_json::Value> {
        self.get(name)
    }

    fn json_entries(&self) -> Vec<(&str, &serde_json::Value)> {
        self.iter().collect()
    }
}

/// A JSON object seen by templates without being converted: each field
/// becomes a template value when a template reads it.
struct Fields(Arc<dyn JsonFields>);

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.json_entries()).finish()
    }
}

impl Object for Fields {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.json_field(key.as_str()?).map(template_value)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .json_entries()
                .into_iter()
                .map(|(k, _)| Value::from(k))
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

/// `{{ event.amount | money(event.currency) }}` in the text's locale:
/// `$1,234.50` (en), `1 234,50 €` (fr), `￥1,200` (ja), `CHF 12.00` (de-CH).
fn money(state: &State, amount: Value, currency: Option<String>) -> Result<String, Error> {
    let value = amount_of(&amount).ok_or_else(|| invalid("money: amount is not a number"))?;
    let locale = locale_of(state);
    Ok(locale.money(value, currency.as_deref().unwrap_or("USD")))
}

/// `{{ event.value | number }}`, `{{ event.value | number(1) }}`: grouped
/// and with the decimal sign of the text's locale, rounded to the places given.
fn number(state: &State, value: Value, decimals: Option<u8>) -> Result<String, Error> {
    let value = amount_of(&value).ok_or_else(|| invalid("number: value is not a number"))?;
    Ok(locale_of(state).number(value, decimals))
}

/// `{{ pattern.count | plural(one="# decline", other="# declines") }}`: the
/// form of the count's CLDR plural category in the text's locale (`zero`,
/// `one`, `two`, `few`, `many`, `other`; `other` when the category has no
/// form given), `#` replaced by the count as the locale writes it.
fn plural(state: &State, count: Value, forms: minijinja::value::Kwargs) -> Result<String, Error> {
    let n = amount_of(&count).ok_or_else(|| invalid("plural: count is not a number"))?;
    let locale = locale_of(state);
    let category = locale.plural(n);
    let other: String = forms.get("other")?;
    let mut form = None;
    for name in ["zero", "one", "two", "few", "many"] {
        let given: Option<String> = forms.get(name)?;
        if name == category {
            form = given;
        }
    }
    forms.assert_all_used()?;
    let form = form.unwrap_or(other);
    Ok(form.replace('#', &locale.number(n, None)))
}

/// A number, or text holding one.
fn amount_of(value: &Value) -> Option<f64> {
    match value.as_str() {
        Some(s) => s.trim().parse().ok(),
        None => f64::try_from(value.clone()).ok(),
    }
}

/// The text's locale, as the render put it in the context.
fn locale_of(state: &State) -> TextLocale {
    state
        .lookup("locale")
        .and_then(|v| v.downcast_object_ref::<LocaleValue>().map(|l| l.0.clone()))
        .unwrap_or_else(TextLocale::default_locale)
}

/// The locale in a template's context: prints as its tag (`fr-BE`).
#[derive(Debug)]
struct LocaleValue(TextLocale);

impl Object for LocaleValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result
    where
        Self: Sized + 'static,
    {
        f.write_str(&self.0.tag)
    }
}

/// `{{ event.ts | local_time }}` → `14:05` in the recipient's time zone
/// (`profile.time_zone`, else UTC); an optional strftime format:
/// `local_time("%b %d, %H:%M")`.
fn local_time(state: &State, when: Value, format: Option<String>) -> Result<String, Error> {
    let ms = epoch_ms(&when)
        .ok_or_else(|| invalid("local_time: value is not RFC 3339 text or epoch milliseconds"))?;
    local_time_text(ms, zone_of(state).as_deref(), format.as_deref())
}

/// The time a time filter was given: RFC 3339 text or epoch milliseconds.
fn epoch_ms(when: &Value) -> Option<i64> {
    match when.as_str() {
        Some(s) => crate::ingest::decode::parse_time(&serde_json::Value::String(s.to_string())),
        None => when.as_i64(),
    }
}

/// The recipient's time zone name, from the template's `profile`.
fn zone_of(state: &State) -> Option<String> {
    state
        .lookup("profile")
        .and_then(|p| p.get_attr("time_zone").ok())
        .and_then(|z| z.as_str().map(str::to_string))
}

/// `{{ event.ts | local_date }}` → `24 nov. 2026` (and `local_datetime` →
/// `24 nov. 2026, 15:05`): the day in the recipient's time zone, written as
/// the text's locale writes dates (CLDR's medium length, through ICU4X).
fn local_date(state: &State, when: Value, with_time: bool) -> Result<String, Error> {
    let ms = epoch_ms(&when)
        .ok_or_else(|| invalid("local_date: value is not RFC 3339 text or epoch milliseconds"))?;
    local_date_text(ms, zone_of(state).as_deref(), &locale_of(state), with_time)
        .ok_or_else(|| invalid("local_date: the date cannot be written"))
}

/// Epoch milliseconds as [`local_date`] writes them, in `zone` (else UTC;
/// an unknown zone is UTC too, as for `local_time`'s callers that check it).
fn local_date_text(
    ms: i64,
    zone: Option<&str>,
    locale: &TextLocale,
    with_time: bool,
) -> Option<String> {
    let zone = zone
        .and_then(util::time_zone)
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let local = jiff::Timestamp::from_millisecond(ms)
        .ok()?
        .to_zoned_datetime(zone);
    let time = with_time.then(|| (local.hour() as u8, local.minute() as u8));
    locale.date(
        i32::from(local.year()),
        local.month() as u8,
        local.day() as u8,
        time,
    )
}

/// Epoch milliseconds as [`local_time`] writes them, in `zone` (else UTC).
fn local_time_text(ms: i64, zone: Option<&str>, format: Option<&str>) -> Result<String, Error> {
    let tz = match zone {
        Some(name) => {
            util::time_zone(name).ok_or_else(|| invalid("local_time: unknown time zone"))?
        }
        None => jiff::tz::TimeZone::UTC,
    };
    let ts = jiff::Timestamp::from_millisecond(ms)
        .map_err(|_| invalid("local_time: time out of range"))?;
    let zoned = ts.to_zoned_datetime(tz);
    match format {
        // The default, written without reading a format.
        None | Some("%H:%M") => {
            let (hour, minute) = (zoned.hour(), zoned.minute());
            let digit = |n: i8| char::from(b'0' + n as u8);
            Ok([
                digit(hour / 10),
                digit(hour % 10),
                ':',
                digit(minute / 10),
                digit(minute % 10),
            ]
            .iter()
            .collect())
        }
        Some(format) => Ok(zoned.strftime(format).to_string()),
    }
}

fn invalid(msg: &'static str) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

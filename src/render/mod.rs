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

mod names;
mod plan;
mod reads;
#[cfg(test)]
mod tests;
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

/// `{{ event.amount | money(event.currency) }}` → `$1,234.50`, `€8.00`, `¥1200`, `12.00 CHF`.
fn money(amount: Value, currency: Option<String>) -> Result<String, Error> {
    let value: f64 = match amount.as_str() {
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| invalid("money: amount is not a number"))?,
        None => f64::try_from(amount).map_err(|_| invalid("money: amount is not a number"))?,
    };
    Ok(money_text(value, currency.as_deref().unwrap_or("USD")))
}

/// An amount in a currency, as [`money`] writes it.
fn money_text(value: f64, currency: &str) -> String {
    let known = [
        ("USD", "$", 2),
        ("EUR", "€", 2),
        ("GBP", "£", 2),
        ("JPY", "¥", 0),
        ("INR", "₹", 2),
    ];
    let (symbol, decimals) = known
        .iter()
        .find(|(code, ..)| code.eq_ignore_ascii_case(currency))
        .map_or((None, 2), |&(_, symbol, decimals)| (Some(symbol), decimals));
    let (int, frac) = fixed_digits(value.abs(), decimals);
    let mut out = String::with_capacity(int.len() + frac.len() + int.len() / 3 + 8);
    if value < 0.0 {
        out.push('-');
    }
    if let Some(sym) = symbol {
        out.push_str(sym);
    }
    // Thousands grouped: 1234567.5 → 1,234,567.50.
    for (i, c) in int.char_indices() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(&frac);
    }
    if symbol.is_none() {
        out.push(' ');
        out.push_str(&currency.to_ascii_uppercase());
    }
    out
}

/// A non-negative amount's digits before and after the point, rounded to
/// `decimals` places exactly as `format!("{:.*}", decimals, amount)` rounds.
/// Amounts below a billion units that are not within a millionth of a
/// half-way point are scaled and rounded in integers (the product's error
/// is far below that millionth, so the rounding is the exact one); the rest
/// go through `format!`.
fn fixed_digits(amount: f64, decimals: usize) -> (String, String) {
    let scale = [1.0, 10.0, 100.0][decimals.min(2)];
    let scaled = amount * scale;
    let tie = (scaled - scaled.floor() - 0.5).abs() < 1e-6;
    if decimals <= 2 && scaled < 1e9 && !tie {
        let units = scaled.round() as u64;
        let step = scale as u64;
        let mut buffer = itoa::Buffer::new();
        let int = buffer.format(units / step).to_string();
        let frac = match decimals {
            0 => String::new(),
            _ => {
                let digits = buffer.format(step + units % step);
                digits[1..].to_string()
            }
        };
        return (int, frac);
    }
    let fixed = format!("{amount:.decimals$}");
    match fixed.split_once('.') {
        Some((int, frac)) => (int.to_string(), frac.to_string()),
        None => (fixed, String::new()),
    }
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
    local_time_text(ms, tz_name.as_deref(), format.as_deref())
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
    Ok(zoned.strftime(format.unwrap_or("%H:%M")).to_string())
}

fn invalid(msg: &'static str) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

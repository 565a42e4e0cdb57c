//! The common template rendered without the interpreter: text and
//! `{{ event.x | filter(args) }}` outputs, read straight from the event's JSON.
//!
//! A template is planned at load when its compiled instructions are only
//! text, lookups of `event`, `profile`, `pattern` or `rule` with their
//! attributes, string and number constants, herald's four filters and
//! output. Anything else (conditions, loops, arithmetic, minijinja's own
//! filters) is not planned and runs on minijinja. A planned template that
//! meets a value it does not print the way minijinja would — a missing
//! field, `null`, a bool, an object, a filter's error — returns `None`, and
//! the caller renders it on minijinja, which gives the same text or the same
//! error. `src/render/tests.rs` holds this to minijinja, template for
//! template and event for event.

use std::borrow::Cow;

use minijinja::machinery::{get_compiled_template, Instruction};
use minijinja::value::{Value as TemplateValue, ValueKind};
use minijinja::Environment;
use serde_json::Value;

use super::Scope;
use crate::ingest::decode::field;
use crate::util;

/// A template as straight-line text and outputs.
#[derive(Debug)]
pub(super) struct Plan {
    pieces: Vec<Piece>,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Out(Expr),
}

#[derive(Debug)]
enum Expr {
    Path(Root, Vec<String>),
    Const(Const),
    Filter(Filter, Box<Expr>, Vec<Expr>),
}

#[derive(Debug, Clone, Copy)]
enum Root {
    Event,
    Profile,
    Pattern,
    Rule,
}

#[derive(Debug)]
enum Const {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
}

#[derive(Debug, Clone, Copy)]
enum Filter {
    Money,
    MaskCard,
    MaskPhone,
    LocalTime,
    /// `local_date`, or with the hour and minute `local_datetime`.
    LocalDate {
        with_time: bool,
    },
}

/// A value met while rendering, as minijinja would hold it.
enum Val<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Plan {
    /// The plan of the named template, if it has the planned shape.
    pub(super) fn of(env: &Environment<'static>, name: &str) -> Option<Plan> {
        let template = env.get_template(name).ok()?;
        let compiled = get_compiled_template(&template);
        if !compiled.blocks.is_empty() {
            return None;
        }
        let mut stack: Vec<Expr> = Vec::new();
        let mut pieces = Vec::new();
        for at in 0u32.. {
            let Some(instruction) = compiled.instructions.get(at) else {
                break;
            };
            match instruction {
                Instruction::EmitRaw(text) => pieces.push(Piece::Text(text.to_string())),
                Instruction::Lookup(name) => stack.push(Expr::Path(root(name)?, Vec::new())),
                Instruction::GetAttr(name) => match stack.last_mut()? {
                    Expr::Path(_, path) => path.push(name.to_string()),
                    _ => return None,
                },
                Instruction::LoadConst(value) => stack.push(Expr::Const(constant(value)?)),
                Instruction::ApplyFilter(name, Some(argc), _) => {
                    let argc = usize::from(*argc);
                    let filter = filter(name, argc)?;
                    let args = stack.split_off(stack.len().checked_sub(argc)?);
                    let mut args = args.into_iter();
                    let value = args.next()?;
                    stack.push(Expr::Filter(filter, Box::new(value), args.collect()));
                }
                Instruction::Emit => pieces.push(Piece::Out(stack.pop()?)),
                _ => return None,
            }
        }
        stack.is_empty().then_some(Plan { pieces })
    }

    /// The text, trimmed as [`super::Templates::render`] trims it; `None`
    /// when minijinja must render it instead.
    pub(super) fn render(&self, scope: &Scope<'_>) -> Option<String> {
        let mut out = String::with_capacity(128);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Out(expr) => put(&mut out, expr, scope)?,
            }
        }
        let trimmed = out.trim();
        Some(if trimmed.len() == out.len() {
            out
        } else {
            trimmed.to_string()
        })
    }
}

fn root(name: &str) -> Option<Root> {
    Some(match name {
        "event" => Root::Event,
        "profile" => Root::Profile,
        "pattern" => Root::Pattern,
        "rule" => Root::Rule,
        _ => return None,
    })
}

fn constant(value: &TemplateValue) -> Option<Const> {
    if let Some(s) = value.as_str() {
        return Some(Const::Str(s.to_string()));
    }
    if value.kind() != ValueKind::Number {
        return None;
    }
    if let Ok(u) = u64::try_from(value.clone()) {
        return Some(Const::U64(u));
    }
    if let Ok(i) = i64::try_from(value.clone()) {
        return Some(Const::I64(i));
    }
    f64::try_from(value.clone()).ok().map(Const::F64)
}

/// herald's filters, with the number of values they take (the filtered value included).
fn filter(name: &str, argc: usize) -> Option<Filter> {
    let (filter, most) = match name {
        "money" => (Filter::Money, 2),
        "mask_card" => (Filter::MaskCard, 1),
        "mask_phone" => (Filter::MaskPhone, 1),
        "local_time" => (Filter::LocalTime, 2),
        "local_date" => (Filter::LocalDate { with_time: false }, 1),
        "local_datetime" => (Filter::LocalDate { with_time: true }, 1),
        _ => return None,
    };
    (1..=most).contains(&argc).then_some(filter)
}

/// An output written onto the text: a filter's text straight onto it.
fn put(out: &mut String, expr: &Expr, scope: &Scope<'_>) -> Option<()> {
    match expr {
        Expr::Filter(filter, value, args) => {
            let value = eval(value, scope)?;
            let arg = match args.first() {
                Some(a) => Some(eval(a, scope)?),
                None => None,
            };
            apply(*filter, value, arg, scope, out)
        }
        _ => {
            write(out, &eval(expr, scope)?);
            Some(())
        }
    }
}

fn eval<'a>(expr: &'a Expr, scope: &'a Scope<'_>) -> Option<Val<'a>> {
    match expr {
        Expr::Path(root, path) => lookup(*root, path, scope),
        Expr::Const(c) => Some(match c {
            Const::Str(s) => Val::Str(Cow::Borrowed(s)),
            Const::U64(u) => Val::U64(*u),
            Const::I64(i) => Val::I64(*i),
            Const::F64(f) => Val::F64(*f),
        }),
        Expr::Filter(filter, value, args) => {
            let value = eval(value, scope)?;
            let arg = match args.first() {
                Some(a) => Some(eval(a, scope)?),
                None => None,
            };
            let mut text = String::new();
            apply(*filter, value, arg, scope, &mut text)?;
            Some(Val::Str(Cow::Owned(text)))
        }
    }
}

fn lookup<'a>(root: Root, path: &'a [String], scope: &'a Scope<'_>) -> Option<Val<'a>> {
    let (first, rest) = path.split_first()?;
    let top = match root {
        Root::Event => scope.event.json_field(first)?,
        Root::Profile => scope.profile.as_ref()?.json_field(first)?,
        Root::Pattern => field(scope.pattern?.as_object()?, first)?,
        Root::Rule => {
            let rule = &scope.rule;
            let text = match (first.as_str(), rest) {
                ("id", []) => rule.id,
                ("category", []) => rule.category,
                ("description", []) => rule.description,
                _ => return None,
            };
            return Some(Val::Str(Cow::Borrowed(text)));
        }
    };
    let mut current = top;
    for part in rest {
        current = field(current.as_object()?, part)?;
    }
    json_val(current)
}

/// A JSON value as minijinja's conversion makes it, for the kinds printed here.
fn json_val(json: &Value) -> Option<Val<'_>> {
    match json {
        Value::String(s) => Some(Val::Str(Cow::Borrowed(s))),
        Value::Number(n) => Some(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Val::U64(u),
            (None, Some(i)) => Val::I64(i),
            _ => Val::F64(n.as_f64()?),
        }),
        _ => None,
    }
}

/// A value printed as minijinja prints it.
fn write(out: &mut String, value: &Val<'_>) {
    use std::fmt::Write as _;
    match value {
        Val::Str(s) => out.push_str(s),
        Val::U64(u) => {
            let _ = write!(out, "{u}");
        }
        Val::I64(i) => {
            let _ = write!(out, "{i}");
        }
        Val::F64(f) => {
            if f.is_nan() {
                out.push_str("NaN");
            } else if f.is_infinite() {
                out.push_str(if f.is_sign_negative() { "-inf" } else { "inf" });
            } else {
                let start = out.len();
                let _ = write!(out, "{f}");
                if !out[start..].contains('.') {
                    out.push_str(".0");
                }
            }
        }
    }
}

fn text<'a>(value: &'a Val<'a>) -> Cow<'a, str> {
    match value {
        Val::Str(s) => Cow::Borrowed(s),
        other => {
            let mut s = String::new();
            write(&mut s, other);
            Cow::Owned(s)
        }
    }
}

/// A filter's text written onto `out` (`None`: minijinja renders it).
fn apply(
    filter: Filter,
    value: Val<'_>,
    arg: Option<Val<'_>>,
    scope: &Scope<'_>,
    out: &mut String,
) -> Option<()> {
    let text = match filter {
        Filter::MaskCard => util::mask_card(&text(&value)),
        Filter::MaskPhone => util::mask_phone(&text(&value)),
        Filter::Money => {
            let amount = match &value {
                Val::Str(s) => s.trim().parse().ok()?,
                Val::U64(u) => *u as f64,
                Val::I64(i) => *i as f64,
                Val::F64(f) => *f,
            };
            let currency = arg.as_ref().map(text);
            let currency = currency.as_deref().unwrap_or("USD");
            scope.locale.write_money(out, amount, currency);
            return Some(());
        }
        Filter::LocalTime | Filter::LocalDate { .. } => {
            let ms = match &value {
                Val::Str(s) => crate::ingest::decode::parse_time_text(s)?,
                Val::U64(u) => i64::try_from(*u).ok()?,
                Val::I64(i) => *i,
                Val::F64(_) => return None,
            };
            let zone = scope
                .profile
                .as_ref()
                .and_then(|p| p.json_field("time_zone"))
                .and_then(Value::as_str);
            match filter {
                Filter::LocalDate { with_time } => {
                    super::local_date_text(ms, zone, scope.locale, with_time)?
                }
                _ => {
                    let format = arg.as_ref().map(text);
                    super::local_time_text(ms, zone, format.as_deref()).ok()?
                }
            }
        }
    };
    out.push_str(&text);
    Some(())
}

//! Evaluating a compiled [`Expr`] over borrowed JSON: values are read from the
//! event and profile where they lie; only results (a sum, a lowered string)
//! are built.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::{Case, Comparison, Expr, Find, Operator, Root};
use crate::ingest::decode::field as field_of;
use crate::ingest::fields::Fields;

/// What an expression can see: the event's fields, the profile's JSON view
/// (an object, empty without a profile) and, in a sequence step, the earlier
/// steps' events by name.
#[derive(Clone, Copy)]
pub struct Roots<'a> {
    pub event: Obj<'a>,
    pub profile: &'a Map<String, Value>,
    pub steps: Option<Steps<'a>>,
    /// A subscription rule's parameters for the user; empty for other rules.
    pub sub: &'a Map<String, Value>,
}

impl<'a> Roots<'a> {
    /// The object a variable names.
    fn object(&self, root: Root) -> Obj<'a> {
        match root {
            Root::Event => self.event,
            Root::Profile => Obj::Map(self.profile),
            Root::Sub => Obj::Map(self.sub),
        }
    }
}

/// A sequence's earlier steps: each step's name and its event's fields.
pub type Steps<'a> = &'a [(&'a str, &'a Fields)];

/// A JSON object an expression reads: an event's fields, or a map (the
/// profile's view, a nested object).
#[derive(Debug, Clone, Copy)]
pub enum Obj<'a> {
    Map(&'a Map<String, Value>),
    Fields(&'a Fields),
}

impl<'a> From<&'a Map<String, Value>> for Obj<'a> {
    fn from(map: &'a Map<String, Value>) -> Obj<'a> {
        Obj::Map(map)
    }
}

impl<'a> From<&'a Fields> for Obj<'a> {
    fn from(fields: &'a Fields) -> Obj<'a> {
        Obj::Fields(fields)
    }
}

impl<'a> Obj<'a> {
    fn get(self, name: &str) -> Option<&'a Value> {
        match self {
            Obj::Map(m) => field_of(m, name),
            Obj::Fields(f) => f.get(name),
        }
    }

    fn len(self) -> usize {
        match self {
            Obj::Map(m) => m.len(),
            Obj::Fields(f) => f.len(),
        }
    }

    fn entries(self) -> Box<dyn Iterator<Item = (&'a str, &'a Value)> + 'a> {
        match self {
            Obj::Map(m) => Box::new(m.iter().map(|(k, v)| (k.as_str(), v))),
            Obj::Fields(f) => Box::new(f.iter()),
        }
    }
}

/// The expression could not be evaluated (a missing field, a type mismatch,
/// an overflow): what the cel interpreter reports as an execution error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed;

/// A value during evaluation, borrowed from the JSON or the expression where it can be.
#[derive(Debug, Clone)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Text(Cow<'a, str>),
    Object(Obj<'a>),
    Array(&'a [Value]),
    /// A list built by the expression (a literal, a concatenation).
    List(Vec<Val<'a>>),
}

type Result<'a> = std::result::Result<Val<'a>, Failed>;

impl<'a> Val<'a> {
    /// A JSON value as CEL sees it: a positive integer is a `uint`, a
    /// negative one an `int`, any other number a `double` (as the cel crate's
    /// serde conversion makes them).
    pub fn of(json: &'a Value) -> Val<'a> {
        match json {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => number(n),
            Value::String(s) => Val::Text(Cow::Borrowed(s)),
            Value::Array(a) => Val::Array(a),
            Value::Object(o) => Val::Object(Obj::Map(o)),
        }
    }

    /// Text and numbers as a key string (a pattern's `key:`); `None` for anything else.
    pub fn key_text(&self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s.to_string()),
            Val::Int(n) => Some(n.to_string()),
            Val::UInt(n) => Some(n.to_string()),
            Val::Double(f) => Some(f.to_string()),
            _ => None,
        }
    }

    fn items(&self) -> Option<Vec<Val<'a>>> {
        match self {
            Val::Array(a) => Some(a.iter().map(Val::of).collect()),
            Val::List(l) => Some(l.clone()),
            _ => None,
        }
    }

    fn len(&self) -> Option<usize> {
        match self {
            Val::Array(a) => Some(a.len()),
            Val::List(l) => Some(l.len()),
            _ => None,
        }
    }

    fn item(&self, i: usize) -> Option<Val<'a>> {
        match self {
            Val::Array(a) => a.get(i).map(Val::of),
            Val::List(l) => l.get(i).cloned(),
            _ => None,
        }
    }
}

fn number(n: &Number) -> Val<'static> {
    if let Some(u) = n.as_u64() {
        Val::UInt(u)
    } else if let Some(i) = n.as_i64() {
        Val::Int(i)
    } else {
        Val::Double(n.as_f64().unwrap_or(f64::NAN))
    }
}

impl Expr {
    /// Evaluates to a boolean, or `Ok(None)` when the result is not one.
    pub fn test(&self, roots: &Roots<'_>) -> std::result::Result<Option<bool>, Failed> {
        match self.eval(roots)? {
            Val::Bool(b) => Ok(Some(b)),
            _ => Ok(None),
        }
    }

    /// Evaluates to a value.
    pub fn eval<'a>(&'a self, roots: &Roots<'a>) -> Result<'a> {
        Ok(match self {
            Expr::Null => Val::Null,
            Expr::Bool(b) => Val::Bool(*b),
            Expr::Int(i) => Val::Int(*i),
            Expr::UInt(u) => Val::UInt(*u),
            Expr::Double(d) => Val::Double(*d),
            Expr::Text(s) => Val::Text(Cow::Borrowed(s)),
            Expr::Root(root) => Val::Object(roots.object(*root)),
            Expr::Step(name) => {
                let steps = roots.steps.ok_or(Failed)?;
                let found = steps.iter().find(|(n, _)| **n == **name).ok_or(Failed)?;
                Val::Object(Obj::Fields(found.1))
            }
            Expr::HasStep(name) => {
                let steps = roots.steps.ok_or(Failed)?;
                Val::Bool(steps.iter().any(|(n, _)| **n == **name))
            }
            Expr::Undeclared => return Err(Failed),
            Expr::List(items) => Val::List(
                items
                    .iter()
                    .map(|e| e.eval(roots))
                    .collect::<std::result::Result<_, _>>()?,
            ),
            Expr::Field(root, field) => Val::of(roots.object(*root).get(field).ok_or(Failed)?),
            Expr::HasField(root, field) => Val::Bool(roots.object(*root).get(field).is_some()),
            Expr::Select(operand, field) => match operand.eval(roots)? {
                Val::Object(o) => Val::of(o.get(field).ok_or(Failed)?),
                _ => return Err(Failed),
            },
            Expr::Has(operand, field) => match operand.eval(roots)? {
                Val::Object(o) => Val::Bool(o.get(field).is_some()),
                _ => return Err(Failed),
            },
            Expr::Index(container, index) => {
                let container = container.eval(roots)?;
                let index = index.eval(roots)?;
                index_into(container, index)?
            }
            Expr::Not(a) => match a.eval(roots)? {
                Val::Bool(b) => Val::Bool(!b),
                _ => return Err(Failed),
            },
            Expr::Negate(a) => match a.eval(roots)? {
                Val::Int(i) => Val::Int(i.checked_neg().ok_or(Failed)?),
                Val::Double(d) => Val::Double(-d),
                _ => return Err(Failed),
            },
            Expr::And(a, b) => logical(a, b, false, roots)?,
            Expr::Or(a, b) => logical(a, b, true, roots)?,
            Expr::Choose(c, a, b) => match c.eval(roots)? {
                Val::Bool(true) => a.eval(roots)?,
                Val::Bool(false) => b.eval(roots)?,
                _ => return Err(Failed),
            },
            Expr::Equals(a, b) => Val::Bool(equals(&a.eval(roots)?, &b.eval(roots)?)),
            Expr::NotEquals(a, b) => Val::Bool(!equals(&a.eval(roots)?, &b.eval(roots)?)),
            Expr::Compare(how, a, b) => {
                let order = compare(&a.eval(roots)?, &b.eval(roots)?)?;
                Val::Bool(match how {
                    Comparison::Less => order == Ordering::Less,
                    Comparison::LessOrEqual => order != Ordering::Greater,
                    Comparison::Greater => order == Ordering::Greater,
                    Comparison::GreaterOrEqual => order != Ordering::Less,
                })
            }
            Expr::Arithmetic(op, a, b) => arithmetic(*op, a.eval(roots)?, b.eval(roots)?)?,
            Expr::In(a, b) => {
                let needle = a.eval(roots)?;
                Val::Bool(contains(&b.eval(roots)?, &needle)?)
            }
            Expr::Size(a) => {
                let n = match a.eval(roots)? {
                    Val::Text(s) => s.chars().count(),
                    Val::Object(o) => o.len(),
                    other => other.len().ok_or(Failed)?,
                };
                Val::Int(i64::try_from(n).map_err(|_| Failed)?)
            }
            Expr::Find(how, a, b) => match (a.eval(roots)?, b.eval(roots)?) {
                (Val::Text(s), Val::Text(t)) => Val::Bool(match how {
                    Find::Contains => s.contains(&*t),
                    Find::StartsWith => s.starts_with(&*t),
                    Find::EndsWith => s.ends_with(&*t),
                }),
                _ => return Err(Failed),
            },
            Expr::Matches(a, regex) => match a.eval(roots)? {
                Val::Text(s) => Val::Bool(regex.is_match(&s)),
                _ => return Err(Failed),
            },
            Expr::Case(case, a) => match a.eval(roots)? {
                Val::Text(s) => Val::Text(Cow::Owned(match case {
                    Case::Lower => s.to_lowercase(),
                    Case::Upper => s.to_uppercase(),
                })),
                _ => return Err(Failed),
            },
            Expr::Abs(a) => match a.eval(roots)? {
                Val::Double(d) => Val::Double(d.abs()),
                _ => return Err(Failed),
            },
        })
    }
}

/// `&&` and `||` as CEL has them: the deciding value on either side wins
/// even when the other side fails.
fn logical<'a>(a: &'a Expr, b: &'a Expr, or: bool, roots: &Roots<'a>) -> Result<'a> {
    let left = match a.eval(roots) {
        Ok(Val::Bool(l)) => Some(l),
        _ => None,
    };
    if left == Some(or) {
        return Ok(Val::Bool(or));
    }
    match (left, b.eval(roots)?) {
        (Some(_), Val::Bool(r)) => Ok(Val::Bool(r)),
        (None, Val::Bool(r)) if r == or => Ok(Val::Bool(or)),
        _ => Err(Failed),
    }
}

fn index_into<'a>(container: Val<'a>, index: Val<'a>) -> Result<'a> {
    match (&container, index) {
        (Val::Object(o), Val::Text(key)) => o.get(&key).map(Val::of).ok_or(Failed),
        (Val::Array(_) | Val::List(_), Val::Int(i)) => usize::try_from(i)
            .ok()
            .and_then(|i| container.item(i))
            .ok_or(Failed),
        (Val::Array(_) | Val::List(_), Val::UInt(u)) => usize::try_from(u)
            .ok()
            .and_then(|i| container.item(i))
            .ok_or(Failed),
        // A whole-number double indexes like an int.
        (Val::Array(_) | Val::List(_), Val::Double(d)) if d.fract() == 0.0 && d.abs() < 9.0e15 => {
            usize::try_from(d as i64)
                .ok()
                .and_then(|i| container.item(i))
                .ok_or(Failed)
        }
        _ => Err(Failed),
    }
}

/// CEL's equality: numbers equal across `int`, `uint` and `double`; lists
/// and maps element by element; values of different kinds are not equal.
fn equals(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Text(x), Val::Text(y)) => x == y,
        (Val::Object(x), Val::Object(y)) => {
            x.len() == y.len()
                && x.entries()
                    .all(|(k, v)| y.get(k).is_some_and(|w| equals(&Val::of(v), &Val::of(w))))
        }
        _ => match (numeric(a), numeric(b)) {
            (Some(x), Some(y)) => numeric_order(x, y) == Some(Ordering::Equal),
            _ => match (a.items(), b.items()) {
                (Some(x), Some(y)) => {
                    x.len() == y.len() && x.iter().zip(&y).all(|(v, w)| equals(v, w))
                }
                _ => false,
            },
        },
    }
}

#[derive(Clone, Copy)]
enum Numeric {
    Int(i64),
    UInt(u64),
    Double(f64),
}

fn numeric(v: &Val<'_>) -> Option<Numeric> {
    match v {
        Val::Int(i) => Some(Numeric::Int(*i)),
        Val::UInt(u) => Some(Numeric::UInt(*u)),
        Val::Double(d) => Some(Numeric::Double(*d)),
        _ => None,
    }
}

fn numeric_order(a: Numeric, b: Numeric) -> Option<Ordering> {
    use Numeric::*;
    match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(&y)),
        (UInt(x), UInt(y)) => Some(x.cmp(&y)),
        (Double(x), Double(y)) => x.partial_cmp(&y),
        (Int(x), UInt(y)) => Some(if x < 0 {
            Ordering::Less
        } else {
            (x as u64).cmp(&y)
        }),
        (UInt(_), Int(_)) => numeric_order(b, a).map(Ordering::reverse),
        (Int(x), Double(y)) => (x as f64).partial_cmp(&y),
        (UInt(x), Double(y)) => (x as f64).partial_cmp(&y),
        (Double(_), Int(_) | UInt(_)) => numeric_order(b, a).map(Ordering::reverse),
    }
}

/// CEL's ordering: numbers across kinds, strings, booleans; anything else fails.
fn compare(a: &Val<'_>, b: &Val<'_>) -> std::result::Result<Ordering, Failed> {
    match (a, b) {
        (Val::Text(x), Val::Text(y)) => Ok(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Ok(x.cmp(y)),
        _ => match (numeric(a), numeric(b)) {
            (Some(x), Some(y)) => numeric_order(x, y).ok_or(Failed),
            _ => Err(Failed),
        },
    }
}

fn arithmetic<'a>(op: Operator, a: Val<'a>, b: Val<'a>) -> Result<'a> {
    use Operator::*;
    // int and uint alike: overflow and division by zero fail.
    macro_rules! checked {
        ($x:expr, $y:expr) => {
            match op {
                Add => $x.checked_add($y),
                Subtract => $x.checked_sub($y),
                Multiply => $x.checked_mul($y),
                Divide => $x.checked_div($y),
                Modulo => $x.checked_rem($y),
            }
            .ok_or(Failed)?
        };
    }
    Ok(match (a, b) {
        (Val::Int(x), Val::Int(y)) => Val::Int(checked!(x, y)),
        (Val::UInt(x), Val::UInt(y)) => Val::UInt(checked!(x, y)),
        (Val::Double(x), Val::Double(y)) => Val::Double(match op {
            Add => x + y,
            Subtract => x - y,
            Multiply => x * y,
            Divide => x / y,
            Modulo => return Err(Failed),
        }),
        (Val::Text(x), Val::Text(y)) if op == Add => Val::Text(Cow::Owned(x.into_owned() + &y)),
        (x, y) if op == Add => match (x.items(), y.items()) {
            (Some(mut x), Some(y)) => {
                x.extend(y);
                Val::List(x)
            }
            _ => return Err(Failed),
        },
        _ => return Err(Failed),
    })
}

/// `needle in haystack`: a list's elements (CEL equality) or a map's keys.
fn contains(haystack: &Val<'_>, needle: &Val<'_>) -> std::result::Result<bool, Failed> {
    match haystack {
        // JSON keys are strings; other numbers and booleans are lookup keys
        // that are never found, anything else is no key at all.
        Val::Object(o) => match needle {
            Val::Text(key) => Ok(o.get(key).is_some()),
            Val::Bool(_) | Val::Int(_) | Val::UInt(_) | Val::Double(_) => Ok(false),
            _ => Err(Failed),
        },
        Val::Array(a) => Ok(a.iter().any(|v| equals(&Val::of(v), needle))),
        Val::List(l) => Ok(l.iter().any(|v| equals(v, needle))),
        _ => Err(Failed),
    }
}

//! herald's own evaluator for CEL: the cel crate's parse tree compiled once at
//! load into [`Expr`], then evaluated straight over the event's JSON and the
//! profile's JSON view, with no CEL values built per event.
//!
//! The cel crate stays the reference: it parses every expression, and an
//! expression using something [`Expr`] does not cover (comprehensions, map
//! literals, bytes, conversions, `min`/`max`, …) compiles to `None` and is run
//! by the cel interpreter instead. `src/expr/tests.rs` checks this
//! evaluator against the interpreter, result for result, errors included.

pub mod condition;
mod eval;

use cel::common::ast::{CallExpr, Expr as Ast, LiteralValue};
use cel::IdedExpr;
use regex::Regex;

pub use condition::{Condition, Conditions, EvalError, Scalar, Scope};
pub use eval::{Failed, Obj, Roots, Val};

/// The variables a condition can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Event,
    Profile,
    /// A subscription rule's parameters for the user (`sub.threshold`).
    Sub,
}

/// A compiled expression node.
#[derive(Debug)]
pub enum Expr {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Text(Box<str>),
    Root(Root),
    /// A name CEL would not find: evaluates to an error, as in cel.
    Undeclared,
    List(Vec<Expr>),
    /// `steps.home`: the event of a sequence's earlier step, by name (only
    /// inside a step's condition; `steps` used any other way runs on the
    /// interpreter).
    Step(Box<str>),
    /// `has(steps.home)`
    HasStep(Box<str>),
    /// `event.amount`, `profile.tier`, `sub.max_c`: a variable's field,
    /// read in one step (the common case of [`Expr::Select`]).
    Field(Root, Box<str>),
    /// `has(event.cashback)`: the common case of [`Expr::Has`].
    HasField(Root, Box<str>),
    /// `a.b`
    Select(Box<Expr>, Box<str>),
    /// `has(a.b)`
    Has(Box<Expr>, Box<str>),
    /// `a[b]`
    Index(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    /// `c ? a : b`
    Choose(Box<Expr>, Box<Expr>, Box<Expr>),
    Equals(Box<Expr>, Box<Expr>),
    NotEquals(Box<Expr>, Box<Expr>),
    Compare(Comparison, Box<Expr>, Box<Expr>),
    Arithmetic(Operator, Box<Expr>, Box<Expr>),
    In(Box<Expr>, Box<Expr>),
    Size(Box<Expr>),
    /// `s.contains(t)`, `s.startsWith(t)`, `s.endsWith(t)`
    Find(Find, Box<Expr>, Box<Expr>),
    /// `s.matches('re')` with a literal pattern, compiled at load.
    Matches(Box<Expr>, Box<Regex>),
    /// herald's `lower(s)` / `upper(s)`
    Case(Case, Box<Expr>),
    /// herald's `abs(x)`
    Abs(Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Find {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Lower,
    Upper,
}

impl Expr {
    /// Compiles a parsed CEL expression, or `None` when it uses something
    /// this evaluator leaves to the cel interpreter.
    pub fn compile(ast: &IdedExpr) -> Option<Expr> {
        Some(match &ast.expr {
            Ast::Literal(literal) => match literal {
                LiteralValue::Boolean(b) => Expr::Bool(*b.inner()),
                LiteralValue::Int(i) => Expr::Int(*i.inner()),
                LiteralValue::UInt(u) => Expr::UInt(*u.inner()),
                LiteralValue::Double(d) => Expr::Double(*d.inner()),
                LiteralValue::String(s) => Expr::Text(s.inner().into()),
                LiteralValue::Null => Expr::Null,
                LiteralValue::Bytes(_) => return None,
            },
            Ast::Ident(name) => match name.as_str() {
                "event" => Expr::Root(Root::Event),
                "profile" => Expr::Root(Root::Profile),
                "sub" => Expr::Root(Root::Sub),
                // Only as `steps.<name>`, below.
                "steps" => return None,
                // A digest's waiting item, in a `withdraw` condition: the
                // step of that name.
                "item" => Expr::Step("item".into()),
                _ => Expr::Undeclared,
            },
            Ast::Select(select) if matches!(&select.operand.expr, Ast::Ident(n) if n == "steps") => {
                let name = select.field.as_str().into();
                if select.test {
                    Expr::HasStep(name)
                } else {
                    Expr::Step(name)
                }
            }
            Ast::Select(select) => {
                let operand = boxed(&select.operand)?;
                let field = select.field.as_str().into();
                if let Expr::Root(root) = *operand {
                    return Some(match select.test {
                        true => Expr::HasField(root, field),
                        false => Expr::Field(root, field),
                    });
                }
                if select.test {
                    Expr::Has(operand, field)
                } else {
                    Expr::Select(operand, field)
                }
            }
            Ast::List(list) if list.optional_indices.is_empty() => Expr::List(
                list.elements
                    .iter()
                    .map(Expr::compile)
                    .collect::<Option<_>>()?,
            ),
            Ast::Call(call) => call_of(call)?,
            _ => return None,
        })
    }
}

fn boxed(ast: &IdedExpr) -> Option<Box<Expr>> {
    Expr::compile(ast).map(Box::new)
}

/// Operators, the string methods and herald's helpers; anything else is the
/// interpreter's.
fn call_of(call: &CallExpr) -> Option<Expr> {
    use cel::common::ast::operators as op;
    let args = &call.args;
    let name = call.func_name.as_str();
    if let Some(target) = &call.target {
        let [arg] = args.as_slice() else {
            return (name == "size" && args.is_empty()).then(|| boxed(target).map(Expr::Size))?;
        };
        let find = match name {
            "contains" => Find::Contains,
            "startsWith" => Find::StartsWith,
            "endsWith" => Find::EndsWith,
            "matches" => {
                let Ast::Literal(LiteralValue::String(pattern)) = &arg.expr else {
                    return None;
                };
                let regex = Regex::new(pattern.inner()).ok()?;
                return Some(Expr::Matches(boxed(target)?, Box::new(regex)));
            }
            _ => return None,
        };
        return Some(Expr::Find(find, boxed(target)?, boxed(arg)?));
    }
    Some(match (name, args.as_slice()) {
        (op::LOGICAL_AND, [a, b]) => Expr::And(boxed(a)?, boxed(b)?),
        (op::LOGICAL_OR, [a, b]) => Expr::Or(boxed(a)?, boxed(b)?),
        (op::LOGICAL_NOT, [a]) => Expr::Not(boxed(a)?),
        (op::NEGATE, [a]) => Expr::Negate(boxed(a)?),
        (op::CONDITIONAL, [c, a, b]) => Expr::Choose(boxed(c)?, boxed(a)?, boxed(b)?),
        (op::EQUALS, [a, b]) => Expr::Equals(boxed(a)?, boxed(b)?),
        (op::NOT_EQUALS, [a, b]) => Expr::NotEquals(boxed(a)?, boxed(b)?),
        (op::LESS, [a, b]) => Expr::Compare(Comparison::Less, boxed(a)?, boxed(b)?),
        (op::LESS_EQUALS, [a, b]) => Expr::Compare(Comparison::LessOrEqual, boxed(a)?, boxed(b)?),
        (op::GREATER, [a, b]) => Expr::Compare(Comparison::Greater, boxed(a)?, boxed(b)?),
        (op::GREATER_EQUALS, [a, b]) => {
            Expr::Compare(Comparison::GreaterOrEqual, boxed(a)?, boxed(b)?)
        }
        (op::ADD, [a, b]) => Expr::Arithmetic(Operator::Add, boxed(a)?, boxed(b)?),
        (op::SUBSTRACT, [a, b]) => Expr::Arithmetic(Operator::Subtract, boxed(a)?, boxed(b)?),
        (op::MULTIPLY, [a, b]) => Expr::Arithmetic(Operator::Multiply, boxed(a)?, boxed(b)?),
        (op::DIVIDE, [a, b]) => Expr::Arithmetic(Operator::Divide, boxed(a)?, boxed(b)?),
        (op::MODULO, [a, b]) => Expr::Arithmetic(Operator::Modulo, boxed(a)?, boxed(b)?),
        (op::IN, [a, b]) => Expr::In(boxed(a)?, boxed(b)?),
        (op::INDEX, [a, b]) => Expr::Index(boxed(a)?, boxed(b)?),
        ("size", [a]) => Expr::Size(boxed(a)?),
        ("lower", [a]) => Expr::Case(Case::Lower, boxed(a)?),
        ("upper", [a]) => Expr::Case(Case::Upper, boxed(a)?),
        ("abs", [a]) => Expr::Abs(boxed(a)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;

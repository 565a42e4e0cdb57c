//! CEL conditions: compiled once at load, evaluated per candidate rule against `event`, `profile` and, for a subscription rule, `sub`.

use std::cell::OnceCell;
use std::sync::Arc;

use cel::{Context, Env, Program, Value};

use super::{Expr, Roots};

/// Functions herald adds to CEL's standard library for conditions.
pub const HELPER_FUNCTIONS: &[&str] = &["lower", "upper", "abs", "max", "min"];

/// A compiled condition: herald's evaluator where it covers the expression,
/// the cel interpreter otherwise.
pub struct Condition {
    program: Program,
    fast: Option<Expr>,
    /// The expression as written, for `GET /rules` and error messages.
    pub source: String,
}

/// A condition that does not compile: position inside the expression (1-based) and message.
#[derive(Debug, Clone)]
pub struct ConditionError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a condition could not be evaluated for one event (a missing field, a
/// type mismatch). The event does not match that rule; the error is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalError {
    /// Evaluation failed (e.g. `no such key: amount`).
    Failed,
    /// The expression produced something other than a boolean.
    NotBool,
}

/// The CEL environment shared by every condition: the standard library plus
/// herald's helpers, built once per process.
pub struct Conditions {
    env: Arc<Env>,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            env: Arc::new(Env::stdlib()),
        }
    }
}

/// What one event offers to conditions: the event's fields and the profile's
/// JSON view, borrowed. The CEL context the interpreter needs is built only
/// if a condition falls back to it, once per event.
pub struct Scope<'a> {
    event: super::eval::Obj<'a>,
    profile: Option<&'a crate::profile::Profile>,
    interpreter: OnceCell<Context<'static, 'static>>,
}

static NO_PROFILE: std::sync::LazyLock<serde_json::Map<String, serde_json::Value>> =
    std::sync::LazyLock::new(serde_json::Map::new);

impl Scope<'_> {
    fn roots<'s>(
        &'s self,
        steps: Option<super::eval::Steps<'s>>,
        sub: Option<&'s serde_json::Map<String, serde_json::Value>>,
    ) -> Roots<'s> {
        Roots {
            event: self.event,
            profile: self.profile.map_or(&*NO_PROFILE, |p| p.condition_view()),
            steps,
            sub: sub.unwrap_or(&NO_PROFILE),
        }
    }
}

impl Conditions {
    /// Compiles a condition, rejecting calls to functions that do not exist.
    pub fn compile(&self, source: &str) -> Result<Condition, ConditionError> {
        let program = self.env.compile(source).map_err(|errs| {
            let first = errs.errors.first();
            ConditionError {
                line: first.map_or(1, |e| e.pos.0.max(1) as usize),
                column: first.map_or(1, |e| e.pos.1.max(1) as usize),
                message: first.map_or_else(|| errs.to_string(), |e| e.msg.clone()),
            }
        })?;
        let references = program.references();
        for function in references.functions() {
            let operator =
                function.starts_with('_') || function.starts_with('@') || function.starts_with('!');
            if operator || HELPER_FUNCTIONS.contains(&function) || self.is_standard(function) {
                continue;
            }
            let (line, column) = position_of(source, function);
            return Err(ConditionError {
                line,
                column,
                message: format!(
                    "unknown function `{function}`; available: CEL's standard functions and {}",
                    HELPER_FUNCTIONS.join(", ")
                ),
            });
        }
        Ok(Condition {
            fast: Expr::compile(program.expression()),
            program,
            source: source.to_string(),
        })
    }

    /// Whether CEL's standard environment defines `name`. The cel crate does not
    /// expose that lookup, but refuses to shadow a standard function, which tells.
    fn is_standard(&self, name: &str) -> bool {
        let mut probe = Context::with_env(Arc::clone(&self.env));
        probe.add_function(name, || true).is_err()
    }

    /// The scope of one event, for all its candidate rules.
    pub fn scope<'a>(
        &self,
        event: impl Into<super::eval::Obj<'a>>,
        profile: Option<&'a crate::profile::Profile>,
    ) -> Scope<'a> {
        Scope {
            event: event.into(),
            profile,
            interpreter: OnceCell::new(),
        }
    }

    /// The interpreter's context for a scope, converted once per event.
    fn interpreter<'s>(&self, scope: &'s Scope<'_>) -> &'s Context<'static, 'static> {
        scope.interpreter.get_or_init(|| {
            let mut context = Context::with_env(Arc::clone(&self.env));
            add_helpers(&mut context);
            context.add_variable_from_value(
                "event",
                match scope.event {
                    super::eval::Obj::Map(map) => cel::to_value(map),
                    super::eval::Obj::Fields(fields) => cel::to_value(fields),
                }
                .unwrap_or(Value::Null),
            );
            let profile = scope
                .profile
                .and_then(|p| cel::to_value(p).ok())
                .unwrap_or_else(|| cel::to_value(serde_json::Map::new()).unwrap_or(Value::Null));
            context.add_variable_from_value("profile", profile);
            context
        })
    }

    /// Evaluates a condition in a scope, with `steps` (the earlier steps'
    /// events of a sequence, by name) visible too.
    pub fn eval_with_steps(
        &self,
        condition: &Condition,
        scope: &Scope<'_>,
        steps: super::eval::Steps<'_>,
    ) -> Result<bool, EvalError> {
        match &condition.fast {
            Some(fast) => verdict(fast.test(&scope.roots(Some(steps), None))),
            None => self.interpret_with_steps(condition, scope, steps),
        }
    }

    /// [`Conditions::eval_with_steps`] on the cel interpreter alone.
    pub fn interpret_with_steps(
        &self,
        condition: &Condition,
        scope: &Scope<'_>,
        steps: super::eval::Steps<'_>,
    ) -> Result<bool, EvalError> {
        // The interpreter needs `steps` as one value: the events copied.
        let named: serde_json::Map<String, serde_json::Value> = steps
            .iter()
            .map(|(name, fields)| (name.to_string(), serde_json::Value::Object(fields.to_map())))
            .collect();
        let mut inner = self.interpreter(scope).new_inner_scope();
        if let Some(item) = named.get("item") {
            inner.add_variable_from_value("item", cel::to_value(item).unwrap_or(Value::Null));
        }
        inner.add_variable_from_value("steps", cel::to_value(&named).unwrap_or(Value::Null));
        interpreted(condition.program.execute(&inner))
    }

    /// Evaluates an expression to a key (a pattern's `key:`): text, or a
    /// number as text; `None` when it fails or gives anything else.
    pub fn key(&self, expression: &Condition, scope: &Scope<'_>) -> Option<String> {
        match &expression.fast {
            Some(fast) => fast.eval(&scope.roots(None, None)).ok()?.key_text(),
            None => match expression.program.execute(self.interpreter(scope)).ok()? {
                Value::String(s) => Some(s.to_string()),
                Value::Int(n) => Some(n.to_string()),
                Value::UInt(n) => Some(n.to_string()),
                Value::Float(f) => Some(f.to_string()),
                _ => None,
            },
        }
    }

    /// Evaluates a condition in a scope.
    pub fn eval(&self, condition: &Condition, scope: &Scope<'_>) -> Result<bool, EvalError> {
        self.eval_with_sub(condition, scope, None)
    }

    /// Evaluates a subscription rule's condition: `sub` is the user's
    /// parameters for it.
    pub fn eval_with_sub(
        &self,
        condition: &Condition,
        scope: &Scope<'_>,
        sub: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<bool, EvalError> {
        match (&condition.fast, sub) {
            (Some(fast), _) => verdict(fast.test(&scope.roots(None, sub))),
            (None, None) => self.interpret(condition, scope),
            (None, Some(sub)) => {
                let mut inner = self.interpreter(scope).new_inner_scope();
                inner.add_variable_from_value("sub", cel::to_value(sub).unwrap_or(Value::Null));
                interpreted(condition.program.execute(&inner))
            }
        }
    }

    /// Evaluates a condition with the cel interpreter alone: the reference
    /// the differential test holds herald's evaluator to.
    pub fn interpret(&self, condition: &Condition, scope: &Scope<'_>) -> Result<bool, EvalError> {
        interpreted(condition.program.execute(self.interpreter(scope)))
    }

    /// Whether the condition names the variable `name` (`sub`, `profile`).
    pub fn reads_variable(condition: &Condition, name: &str) -> bool {
        condition.program.references().has_variable(name)
    }

    /// Whether herald's evaluator runs this condition (else the interpreter does).
    pub fn is_compiled(condition: &Condition) -> bool {
        condition.fast.is_some()
    }
}

fn verdict(result: Result<Option<bool>, crate::expr::Failed>) -> Result<bool, EvalError> {
    match result {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(EvalError::NotBool),
        Err(_) => Err(EvalError::Failed),
    }
}

fn interpreted(result: cel::ResolveResult) -> Result<bool, EvalError> {
    match result {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(_) => Err(EvalError::NotBool),
        Err(_) => Err(EvalError::Failed),
    }
}

fn add_helpers(context: &mut Context<'_, '_>) {
    let _ = context.add_function("lower", |s: Arc<String>| s.to_lowercase());
    let _ = context.add_function("upper", |s: Arc<String>| s.to_uppercase());
    let _ = context.add_function("abs", |x: f64| x.abs());
    let _ = context.add_function("max", cel::functions::max);
    let _ = context.add_function("min", cel::functions::min);
}

/// Where `name(` first appears in the expression, 1-based line and column.
fn position_of(source: &str, name: &str) -> (usize, usize) {
    let offset = source
        .find(&format!("{name}("))
        .or_else(|| source.find(name))
        .unwrap_or(0);
    crate::config::line_col(source, offset)
}

/// A scalar value in a `match` table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    /// The value as the index compares it: text as is, numbers and booleans in
    /// their JSON spelling.
    pub fn index_key(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => {
                serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string())
            }
            Scalar::Text(s) => s.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(src: &str, event: serde_json::Value) -> Result<bool, EvalError> {
        let c = Conditions::default();
        let cond = c.compile(src).unwrap();
        let scope = c.scope(event.as_object().unwrap(), None);
        c.eval(&cond, &scope)
    }

    #[test]
    fn evaluates_over_the_event() {
        assert_eq!(
            eval(
                "event.amount > 100.0 && event.country != 'US'",
                json!({"amount": 250.0, "country": "FR"})
            ),
            Ok(true)
        );
        assert_eq!(
            eval(
                "lower(event.status) == 'declined'",
                json!({"status": "DECLINED"})
            ),
            Ok(true)
        );
        assert_eq!(
            eval(
                "has(event.balance) && event.balance < 50",
                json!({"amount": 3})
            ),
            Ok(false)
        );
        assert_eq!(
            eval("abs(event.delta) > 2.0", json!({"delta": -3.5})),
            Ok(true)
        );
    }

    #[test]
    fn readme_examples_evaluate() {
        let c = Conditions::default();
        let event = json!({"amount": 250.0, "merchant": "Blue Bottle Coffee", "country": "FR", "balance_after": 40.0});
        let profile =
            crate::profile::Profile::parse("u", br#"{"preferences": {"marketing": true}}"#)
                .unwrap()
                .0;
        let scope = c.scope(event.as_object().unwrap(), Some(&profile));
        for src in [
            "event.amount > 100.0",
            "has(event.balance_after) && event.balance_after < 100.0",
            "lower(event.merchant).contains(\"coffee\")",
            "profile.preferences.marketing == true",
            "event.country in [\"FR\", \"MX\", \"GB\"]",
        ] {
            let cond = c
                .compile(src)
                .unwrap_or_else(|e| panic!("{src}: {}", e.message));
            assert_eq!(c.eval(&cond, &scope), Ok(true), "{src}");
        }
    }

    #[test]
    fn missing_field_is_an_error_not_a_match() {
        assert_eq!(eval("event.amount > 1", json!({})), Err(EvalError::Failed));
        assert_eq!(
            eval("event.amount", json!({"amount": 1})),
            Err(EvalError::NotBool)
        );
    }

    #[test]
    fn syntax_and_unknown_function_errors_have_positions() {
        let c = Conditions::default();
        let e = c.compile("event.amount >").err().unwrap();
        assert_eq!((e.line, e.column), (1, 15));
        let e = c
            .compile("event.amount > 1 &&\n  is_abroad(event)")
            .err()
            .unwrap();
        assert_eq!((e.line, e.column), (2, 3));
        assert!(
            e.message.starts_with("unknown function `is_abroad`"),
            "{}",
            e.message
        );
    }
}

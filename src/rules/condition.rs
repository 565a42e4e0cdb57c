//! CEL conditions: compiled once at load, evaluated per candidate rule against `event` and `profile`.

use std::sync::Arc;

use cel::{Context, Env, Program, Value};

/// Functions herald adds to CEL's standard library for conditions.
pub const HELPER_FUNCTIONS: &[&str] = &["lower", "upper", "abs", "max", "min"];

/// A compiled condition.
pub struct Condition {
    program: Program,
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

/// The values one event offers to conditions, converted once per event, in a
/// CEL context shared by every candidate rule of that event.
pub struct Scope {
    context: Context<'static, 'static>,
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

    /// Converts the event and profile once, for all candidate rules.
    pub fn scope(
        &self,
        event: &serde_json::Map<String, serde_json::Value>,
        profile: Option<&crate::profile::Profile>,
    ) -> Scope {
        let mut context = Context::with_env(Arc::clone(&self.env));
        add_helpers(&mut context);
        context.add_variable_from_value("event", cel::to_value(event).unwrap_or(Value::Null));
        let profile = profile
            .and_then(|p| cel::to_value(p).ok())
            .unwrap_or_else(|| cel::to_value(serde_json::Map::new()).unwrap_or(Value::Null));
        context.add_variable_from_value("profile", profile);
        Scope { context }
    }

    /// Evaluates a condition in a scope, with `steps` (the earlier steps'
    /// events of a sequence, by name) added in an inner scope: the event is
    /// not converted again.
    pub fn eval_with_steps(
        &self,
        condition: &Condition,
        scope: &Scope,
        steps: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, EvalError> {
        let mut inner = scope.context.new_inner_scope();
        inner.add_variable_from_value("steps", cel::to_value(steps).unwrap_or(Value::Null));
        match condition.program.execute(&inner) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(_) => Err(EvalError::NotBool),
            Err(_) => Err(EvalError::Failed),
        }
    }

    /// Evaluates an expression to a value (a pattern's key).
    pub fn value(&self, expression: &Condition, scope: &Scope) -> Result<Value, EvalError> {
        expression
            .program
            .execute(&scope.context)
            .map_err(|_| EvalError::Failed)
    }

    /// Evaluates a condition in a scope.
    pub fn eval(&self, condition: &Condition, scope: &Scope) -> Result<bool, EvalError> {
        match condition.program.execute(&scope.context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(_) => Err(EvalError::NotBool),
            Err(_) => Err(EvalError::Failed),
        }
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

//! Alert subscriptions: a rule whose users opt in (or out) and set its parameters — "purchases over my threshold", "my freezer's own limit" — declared with types and defaults, checked at load, and resolved per user from their preferences.
//!
//! ```yaml
//! subscription:
//!   on_by_default: false
//!   parameters:
//!     threshold: { type: money, default: "500 USD" }
//! condition: event.currency == sub.threshold.currency && event.amount >= sub.threshold.amount
//! ```
//!
//! A user's values come from `subscriptions.<rule id>` of their profile, as
//! the preference API and the preferences topic override it:
//! `{"on": true, "channels": ["push"], "parameters": {"threshold": "250 USD"}}`.
//! A value that fails its type skips the rule for that user alone, with the
//! parameter and the reason counted and logged; other users are untouched.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

pub use crate::profile::UserSubscription;

/// A rule's `subscription:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Whether a user who never said otherwise is subscribed.
    #[serde(default)]
    pub on_by_default: bool,
    /// The parameters a user may set, by name, as `sub.<name>` in the condition.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParameterSpec>,
}

/// One parameter as written: `{ type: money, default: "500 USD" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterSpec {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// The value of a user who set none; without one, such a user is not
    /// subscribed (`missing`).
    #[serde(default)]
    pub default: Option<Value>,
    /// What the parameter means, for the app that shows it.
    #[serde(default)]
    pub description: String,
}

/// The types a parameter can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An amount in a currency: `"500 USD"` or `{"amount": 500, "currency": "USD"}`;
    /// conditions read `sub.x.amount` and `sub.x.currency`. No conversion is
    /// done: a condition compares amounts in the same currency.
    Money,
    /// A number (`-18`, `2.5`).
    Number,
    /// Text.
    Text,
    /// `true` or `false`.
    Bool,
    /// A list of ISO 3166-1 alpha-2 country codes (`["FR", "JP"]`).
    Countries,
    /// A list of texts.
    List,
}

impl Kind {
    const NAMES: &'static str = "money, number, text, bool, countries, list";

    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "money" => Kind::Money,
            "number" => Kind::Number,
            "text" => Kind::Text,
            "bool" => Kind::Bool,
            "countries" => Kind::Countries,
            "list" => Kind::List,
            _ => return None,
        })
    }

    /// The value as conditions read it, or why it is not of this type (the
    /// reason never repeats the value).
    pub fn normalise(self, value: &Value) -> Result<Value, String> {
        match (self, value) {
            (Kind::Money, Value::String(s)) => {
                let (amount, currency) = s.trim().rsplit_once(' ').ok_or(
                    "money is written `500 USD` or {\"amount\": 500, \"currency\": \"USD\"}",
                )?;
                let amount: f64 = amount
                    .trim()
                    .parse()
                    .map_err(|_| "the amount is not a number")?;
                money(amount, currency)
            }
            (Kind::Money, Value::Object(o)) => {
                let amount = o
                    .get("amount")
                    .and_then(Value::as_f64)
                    .ok_or("money needs a numeric `amount`")?;
                let currency = o
                    .get("currency")
                    .and_then(Value::as_str)
                    .ok_or("money needs a `currency` (ISO 4217, e.g. USD)")?;
                if o.len() > 2 {
                    return Err("money has only `amount` and `currency`".into());
                }
                money(amount, currency)
            }
            (Kind::Number, Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {
                Ok(value.clone())
            }
            (Kind::Text, Value::String(_)) | (Kind::Bool, Value::Bool(_)) => Ok(value.clone()),
            (Kind::Countries, Value::Array(items)) => items
                .iter()
                .map(|c| match c.as_str() {
                    Some(code)
                        if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) =>
                    {
                        Ok(Value::String(code.to_ascii_uppercase()))
                    }
                    _ => Err(
                        "countries are ISO 3166-1 alpha-2 codes, e.g. [\"FR\", \"JP\"]".to_string(),
                    ),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            (Kind::List, Value::Array(items)) if items.iter().all(Value::is_string) => {
                Ok(value.clone())
            }
            (kind, _) => Err(format!("not a {}", kind.describe())),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Money => "money amount (`500 USD`)",
            Kind::Number => "number",
            Kind::Text => "text",
            Kind::Bool => "true or false",
            Kind::Countries => "list of country codes",
            Kind::List => "list of texts",
        }
    }
}

fn money(amount: f64, currency: &str) -> Result<Value, String> {
    if !amount.is_finite() {
        return Err("the amount is not a number".into());
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err("the currency is not an ISO 4217 code (e.g. USD)".into());
    }
    Ok(serde_json::json!({"amount": amount, "currency": currency.to_ascii_uppercase()}))
}

/// One declared parameter.
#[derive(Debug, Clone, Serialize)]
pub struct Parameter {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Already normalised.
    pub default: Option<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A rule's subscription, compiled.
#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    pub on_by_default: bool,
    pub parameters: Vec<Parameter>,
}

/// What a subscription is for one user.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// Not subscribed: the rule does not match for them.
    Off,
    /// Subscribed, with every parameter's value (`sub` in the condition)
    /// and the channels they chose.
    On {
        values: Map<String, Value>,
        channels: Option<Vec<String>>,
    },
    /// A value of theirs cannot be used: the rule is skipped for them.
    Invalid { parameter: String, reason: String },
}

impl Subscription {
    /// Compiles a declaration: every type known, every default of its type.
    /// Errors are (parameter's position, message).
    pub fn compile(
        spec: &SubscriptionSpec,
    ) -> Result<Subscription, Vec<(serde_saphyr::Location, String)>> {
        let mut problems = Vec::new();
        let mut parameters = Vec::new();
        for (name, p) in &spec.parameters {
            let Some(kind) = Kind::parse(&p.kind.value) else {
                problems.push((
                    p.kind.referenced,
                    format!(
                        "subscription parameter `{name}`: unknown type `{}`; one of {}",
                        p.kind.value,
                        Kind::NAMES
                    ),
                ));
                continue;
            };
            let default = match p.default.as_ref().map(|d| kind.normalise(d)) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(reason)) => {
                    problems.push((
                        p.kind.referenced,
                        format!("subscription parameter `{name}`: its default: {reason}"),
                    ));
                    continue;
                }
            };
            parameters.push(Parameter {
                name: name.clone(),
                kind,
                default,
                description: p.description.clone(),
            });
        }
        if problems.is_empty() {
            Ok(Subscription {
                on_by_default: spec.on_by_default,
                parameters,
            })
        } else {
            Err(problems)
        }
    }

    /// The subscription for a user whose settings are `user` (none: defaults).
    pub fn resolve(&self, user: Option<&UserSubscription>) -> Resolved {
        if !user.and_then(|u| u.on).unwrap_or(self.on_by_default) {
            return Resolved::Off;
        }
        let mut values = Map::new();
        for p in &self.parameters {
            let value = match user.and_then(|u| u.parameters.get(&p.name)) {
                Some(given) => match p.kind.normalise(given) {
                    Ok(v) => v,
                    Err(reason) => {
                        return Resolved::Invalid {
                            parameter: p.name.clone(),
                            reason,
                        }
                    }
                },
                None => match &p.default {
                    Some(d) => d.clone(),
                    None => {
                        return Resolved::Invalid {
                            parameter: p.name.clone(),
                            reason: "not set, and the rule gives no default".into(),
                        }
                    }
                },
            };
            values.insert(p.name.clone(), value);
        }
        Resolved::On {
            values,
            channels: user.and_then(|u| u.channels.clone()),
        }
    }

    /// Checks a user's settings as the preference API receives them: every
    /// parameter declared and of its type, channels among the rule's.
    /// `Err((field under the subscription, reason))`.
    pub fn validate(
        &self,
        user: &UserSubscription,
        rule_channels: &[String],
    ) -> Result<(), (String, String)> {
        for (name, value) in &user.parameters {
            let Some(p) = self.parameters.iter().find(|p| &p.name == name) else {
                let known: Vec<&str> = self.parameters.iter().map(|p| p.name.as_str()).collect();
                return Err((
                    format!("parameters.{name}"),
                    format!("no such parameter; this rule has: {}", known.join(", ")),
                ));
            };
            p.kind
                .normalise(value)
                .map_err(|reason| (format!("parameters.{name}"), reason))?;
        }
        for channel in user.channels.iter().flatten() {
            if !rule_channels.contains(channel) {
                return Err((
                    "channels".into(),
                    format!(
                        "`{channel}` is not one of this rule's channels ({})",
                        rule_channels.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks a condition's `sub.<name>` reads against the declared
    /// parameters: `Err((byte offset in the condition, message))`.
    pub fn check_reads(&self, condition: &str) -> Result<(), (usize, String)> {
        for (at, name) in sub_reads(condition) {
            if !self.parameters.iter().any(|p| p.name == name) {
                let known: Vec<&str> = self.parameters.iter().map(|p| p.name.as_str()).collect();
                return Err((
                    at,
                    format!(
                        "condition reads `sub.{name}`, which the subscription does not declare (it has: {})",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The subscription of a rule as written, checked against its condition:
/// `sub` read by a rule without one, an undeclared parameter, a bad type or
/// default are each reported through `error` at their position.
pub fn compile(
    declared: Option<&SubscriptionSpec>,
    condition: Option<(&Spanned<String>, &crate::expr::Condition)>,
    rule_at: serde_saphyr::Location,
    error: impl FnMut(&serde_saphyr::Location, String),
) -> Option<std::sync::Arc<Subscription>> {
    let mut error = error;
    let reads_sub =
        condition.is_some_and(|(_, c)| crate::expr::Conditions::reads_variable(c, "sub"));
    let at = condition.map_or(rule_at, |(source, _)| source.referenced);
    let Some(declared) = declared else {
        if reads_sub {
            error(
                &at,
                "condition reads `sub`, but the rule declares no `subscription:` (its parameters)"
                    .into(),
            );
        }
        return None;
    };
    let compiled = match Subscription::compile(declared) {
        Ok(s) => s,
        Err(problems) => {
            for (loc, message) in problems {
                error(&loc, message);
            }
            return None;
        }
    };
    if let Some((source, _)) = condition {
        if let Err((_, message)) = compiled.check_reads(&source.value) {
            error(&at, message);
            return None;
        }
    }
    Some(std::sync::Arc::new(compiled))
}

/// Every `sub.<name>` a condition reads, with its byte offset.
pub fn sub_reads(condition: &str) -> Vec<(usize, String)> {
    let bytes = condition.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = condition[from..].find("sub").map(|i| i + from) {
        from = i + 3;
        let before_ok = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric() || matches!(bytes[i - 1], b'_' | b'.'));
        if !before_ok {
            continue;
        }
        let rest = &condition[i + 3..];
        let trimmed = rest.trim_start();
        if let Some(after_dot) = trimmed.strip_prefix('.') {
            let name: String = after_dot
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((i, name));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn threshold() -> Subscription {
        Subscription {
            on_by_default: false,
            parameters: vec![
                Parameter {
                    name: "threshold".into(),
                    kind: Kind::Money,
                    default: Some(Kind::Money.normalise(&json!("500 USD")).unwrap()),
                    description: String::new(),
                },
                Parameter {
                    name: "countries".into(),
                    kind: Kind::Countries,
                    default: Some(json!([])),
                    description: String::new(),
                },
            ],
        }
    }

    #[test]
    fn a_user_who_said_nothing_gets_the_default_on_state() {
        let sub = threshold();
        assert_eq!(sub.resolve(None), Resolved::Off, "off by default");
        let on = UserSubscription {
            on: Some(true),
            ..Default::default()
        };
        let Resolved::On { values, channels } = sub.resolve(Some(&on)) else {
            panic!("on")
        };
        assert_eq!(
            values["threshold"],
            json!({"amount": 500.0, "currency": "USD"})
        );
        assert_eq!(values["countries"], json!([]));
        assert_eq!(channels, None);
    }

    #[test]
    fn a_users_own_values_are_normalised_and_a_bad_one_skips_only_them() {
        let sub = threshold();
        let mine = UserSubscription {
            on: Some(true),
            channels: Some(vec!["push".into()]),
            parameters:
                json!({"threshold": {"amount": 250, "currency": "eur"}, "countries": ["fr", "JP"]})
                    .as_object()
                    .unwrap()
                    .clone(),
        };
        let Resolved::On { values, channels } = sub.resolve(Some(&mine)) else {
            panic!("on")
        };
        assert_eq!(
            values["threshold"],
            json!({"amount": 250.0, "currency": "EUR"})
        );
        assert_eq!(values["countries"], json!(["FR", "JP"]));
        assert_eq!(channels, Some(vec!["push".to_string()]));
        let bad = UserSubscription {
            on: Some(true),
            parameters: json!({"threshold": "lots USD"})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        assert_eq!(
            sub.resolve(Some(&bad)),
            Resolved::Invalid {
                parameter: "threshold".into(),
                reason: "the amount is not a number".into()
            }
        );
        let bad = UserSubscription {
            on: Some(true),
            parameters: json!({"countries": ["France"]})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        assert!(
            matches!(sub.resolve(Some(&bad)), Resolved::Invalid { parameter, .. } if parameter == "countries")
        );
        assert_eq!(
            sub.resolve(Some(&UserSubscription {
                on: Some(false),
                ..mine
            })),
            Resolved::Off
        );
    }

    #[test]
    fn the_api_refuses_undeclared_parameters_and_foreign_channels() {
        let sub = threshold();
        let user = |v: Value| UserSubscription {
            parameters: v.as_object().unwrap().clone(),
            ..Default::default()
        };
        let channels = ["push".to_string(), "sms".to_string()];
        assert!(sub
            .validate(&user(json!({"threshold": "20 USD"})), &channels)
            .is_ok());
        let (field, reason) = sub
            .validate(&user(json!({"limit": 3})), &channels)
            .unwrap_err();
        assert_eq!(field, "parameters.limit");
        assert!(
            reason.contains("threshold, countries") || reason.contains("countries"),
            "{reason}"
        );
        let (field, _) = sub
            .validate(&user(json!({"threshold": true})), &channels)
            .unwrap_err();
        assert_eq!(field, "parameters.threshold");
        let email = UserSubscription {
            channels: Some(vec!["email".into()]),
            ..Default::default()
        };
        assert_eq!(sub.validate(&email, &channels).unwrap_err().0, "channels");
    }

    #[test]
    fn a_condition_reading_an_undeclared_parameter_is_found() {
        let sub = threshold();
        assert!(sub
            .check_reads("event.amount >= sub.threshold.amount && event.country in sub.countries")
            .is_ok());
        let (at, message) = sub.check_reads("event.amount > sub.limit").unwrap_err();
        assert_eq!(at, 15);
        assert!(message.contains("`sub.limit`"), "{message}");
        assert!(sub_reads("event.subtotal > 3 && event.sub.x == 1").is_empty());
    }
}

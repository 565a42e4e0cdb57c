//! The differential test: herald's evaluator against the cel crate's
//! interpreter, result for result (match, no match, failed, not a boolean),
//! over every sample rule's condition and a generated corpus, on random
//! events and profiles.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::expr::condition::{Condition, Conditions};
use crate::ingest::fields::Fields;
use crate::profile::Profile;

/// Field references a condition may use: present, absent, nested, of every kind.
const FIELDS: &[&str] = &[
    "event.amount",
    "event.count",
    "event.delta",
    "event.country",
    "event.home_country",
    "event.status",
    "event.merchant",
    "event.flag",
    "event.tags",
    "event.card",
    "event.card.last4",
    "event.card.limit",
    "event.nothing",
    "event.missing",
    "profile.attributes.tier",
    "profile.attributes.score",
    "profile.attributes.vip",
    "profile.preferences.marketing",
    "profile.consent.sms",
    "profile.locale",
    "profile.push_tokens",
];

const LITERALS: &[&str] = &[
    "0",
    "1",
    "3",
    "-2",
    "100",
    "3u",
    "0u",
    "2.5",
    "100.0",
    "-1.5",
    "0.0",
    "'FR'",
    "'US'",
    "''",
    "'declined'",
    "'Coffee'",
    "true",
    "false",
    "null",
    "['FR', 'GB']",
    "[1, 2.0, 'x']",
    "[]",
    "9223372036854775807",
];

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

/// A value-typed expression, `depth` levels deep at most.
fn value(rng: &mut StdRng, depth: u32) -> String {
    let choice = if depth == 0 {
        rng.random_range(0..2)
    } else {
        rng.random_range(0..9)
    };
    match choice {
        0 => pick(rng, FIELDS).to_string(),
        1 => pick(rng, LITERALS).to_string(),
        2 => {
            let op = pick(rng, &["+", "-", "*", "/", "%"]);
            format!("({} {op} {})", value(rng, depth - 1), value(rng, depth - 1))
        }
        3 => format!("-{}", value(rng, depth - 1)),
        4 => format!("size({})", value(rng, depth - 1)),
        5 => format!("{}.size()", pick(rng, FIELDS)),
        6 => format!("{}(event.merchant)", pick(rng, &["lower", "upper"])),
        7 => format!("abs({})", value(rng, depth - 1)),
        _ => format!(
            "{}[{}]",
            pick(rng, &["event.tags", "event.card", "['a', 'b']"]),
            pick(rng, &["0", "1", "5", "-1", "1u", "'last4'", "'x'", "0.0"])
        ),
    }
}

/// A condition: comparisons, logic, membership, presence, string functions.
fn condition(rng: &mut StdRng, depth: u32) -> String {
    let choice = if depth == 0 {
        rng.random_range(0..6)
    } else {
        rng.random_range(0..12)
    };
    match choice {
        0 | 1 => {
            let op = pick(rng, &["==", "!=", "<", "<=", ">", ">="]);
            format!(
                "{} {op} {}",
                value(rng, depth.min(2)),
                value(rng, depth.min(2))
            )
        }
        2 => format!(
            "has({})",
            pick(rng, FIELDS).replace("profile.locale", "profile.attributes.x")
        ),
        3 => format!(
            "{} in {}",
            value(rng, 1),
            pick(
                rng,
                &[
                    "['FR', 'MX', 'GB']",
                    "[1, 2, 3]",
                    "event.tags",
                    "event.card",
                    "profile.attributes",
                    "[]",
                    "event.status"
                ]
            )
        ),
        4 => format!(
            "{}.{}({})",
            pick(
                rng,
                &[
                    "event.merchant",
                    "event.status",
                    "event.country",
                    "lower(event.merchant)",
                    "event.amount"
                ]
            ),
            pick(rng, &["contains", "startsWith", "endsWith"]),
            pick(
                rng,
                &["'coffee'", "'Blue'", "''", "'e'", "event.country", "1"]
            )
        ),
        5 => format!(
            "{}.matches('{}')",
            pick(rng, &["event.merchant", "event.country", "event.count"]),
            pick(rng, &["^[A-Z]", "ee", "^$", "(?i)coffee"])
        ),
        6 => format!("!({})", condition(rng, depth - 1)),
        7 | 8 => format!(
            "({}) {} ({})",
            condition(rng, depth - 1),
            pick(rng, &["&&", "||"]),
            condition(rng, depth - 1)
        ),
        9 => format!(
            "{} ? {} : {}",
            condition(rng, depth - 1),
            condition(rng, depth - 1),
            condition(rng, depth - 1)
        ),
        10 => pick(rng, FIELDS).to_string(),
        _ => pick(
            rng,
            &["true", "false", "event.flag", "profile.attributes.vip"],
        )
        .to_string(),
    }
}

/// The conditions of the sample rules, read from `rules/`.
fn sample_conditions() -> Vec<String> {
    let pattern = regex::Regex::new(r#"condition:\s*(?:"([^"]*)"|([^#}\n]*))"#).unwrap();
    let mut out = Vec::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    for file in crate::rules::load::rule_files(&dir).unwrap() {
        let text = std::fs::read_to_string(file).unwrap();
        for c in pattern.captures_iter(&text) {
            let source = c.get(1).or(c.get(2)).unwrap().as_str().trim();
            out.push(source.to_string());
        }
    }
    out
}

fn corpus(conditions: &Conditions) -> Vec<Condition> {
    let mut rng = StdRng::seed_from_u64(20261201);
    let mut sources = sample_conditions();
    assert!(sources.len() >= 5, "sample conditions: {sources:?}");
    let mut generated = 0;
    while generated < 400 {
        let source = condition(&mut rng, 3);
        if conditions.compile(&source).is_ok() {
            sources.push(source);
            generated += 1;
        }
    }
    let compiled: Vec<Condition> = sources
        .iter()
        .map(|s| {
            conditions
                .compile(s)
                .unwrap_or_else(|e| panic!("{s}: {}", e.message))
        })
        .collect();
    let fast = compiled
        .iter()
        .filter(|c| Conditions::is_compiled(c))
        .count();
    assert!(
        fast >= 400,
        "only {fast} of {} conditions run on herald's evaluator",
        compiled.len()
    );
    compiled
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-1000i64..1000).prop_map(Value::from),
        (0u64..5).prop_map(Value::from),
        (-1000.0f64..1000.0).prop_map(Value::from),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(0.5)),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        number(),
        prop::sample::select(vec![
            "FR", "US", "GB", "MX", "", "declined", "approved", "DECLINED"
        ])
        .prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn maybe(
    field: &'static str,
    v: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Option<(String, Value)>> {
    prop::option::weighted(0.8, v.prop_map(move |v| (field.to_string(), v)))
}

fn event() -> impl Strategy<Value = Map<String, Value>> {
    (
        (
            maybe("amount", prop_oneof![number(), scalar()]),
            maybe(
                "count",
                prop_oneof![(0u64..10).prop_map(Value::from), scalar()],
            ),
            maybe(
                "delta",
                prop_oneof![(-10i64..10).prop_map(Value::from), scalar()],
            ),
            maybe("country", prop_oneof![scalar(), Just(json!("FR"))]),
            maybe("home_country", prop_oneof![scalar(), Just(json!("FR"))]),
            maybe("status", scalar()),
        ),
        (
            maybe(
                "merchant",
                prop::sample::select(vec![
                    "Blue Bottle Coffee",
                    "Shell",
                    "",
                    "COFFEE Corner",
                    "Émile Café",
                ])
                .prop_map(Value::from),
            ),
            maybe(
                "flag",
                prop_oneof![any::<bool>().prop_map(Value::from), scalar()],
            ),
            maybe(
                "tags",
                prop::collection::vec(scalar(), 0..4).prop_map(Value::from),
            ),
            maybe(
                "card",
                (scalar(), number())
                    .prop_map(|(last4, limit)| json!({"last4": last4, "limit": limit})),
            ),
            maybe("nothing", Just(Value::Null)),
        ),
    )
        .prop_map(|((a, b, c, d, e, f), (g, h, i, j, k))| {
            [a, b, c, d, e, f, g, h, i, j, k]
                .into_iter()
                .flatten()
                .collect()
        })
}

fn profile() -> impl Strategy<Value = Option<Profile>> {
    prop::option::weighted(
        0.8,
        (
            scalar(),
            number(),
            any::<bool>(),
            prop::option::of(any::<bool>()),
            any::<bool>(),
        )
            .prop_map(|(tier, score, vip, marketing, sms)| {
                let mut record = json!({
                    "attributes": {"tier": tier, "score": score, "vip": vip},
                    "consent": {"sms": sms},
                    "locale": "en-US",
                    "push_tokens": [{"token": "t", "platform": "android"}],
                });
                if let Some(m) = marketing {
                    record["preferences"] = json!({"marketing": m});
                }
                Profile::parse("u-1", record.to_string().as_bytes())
                    .unwrap()
                    .0
            }),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn herald_evaluates_every_condition_as_cel_does(event in event(), profile in profile()) {
        let conditions = Conditions::default();
        thread_local! {
            static CORPUS: Vec<Condition> = corpus(&Conditions::default());
        }
        // The event as the pipeline holds it (its fields), and as a map.
        let fields = Fields::from(event.clone());
        CORPUS.with(|corpus| {
            let scope = conditions.scope(&fields, profile.as_ref());
            let as_map = conditions.scope(&event, profile.as_ref());
            for c in corpus {
                let ours = conditions.eval(c, &scope);
                prop_assert_eq!(&ours, &conditions.eval(c, &as_map), "`{}`: fields and map", c.source);
                let cel = conditions.interpret(c, &scope);
                prop_assert_eq!(ours, cel, "`{}` on {} with {}", c.source, Value::Object(event.clone()), profile.as_ref().map(|p| Value::Object(p.condition_view().clone())).unwrap_or_default());
            }
            Ok(())
        })?;
    }
}

/// Conditions of a sequence's later step: `steps.<name>` read in place.
const STEP_CONDITIONS: &[&str] = &[
    "event.country != steps.home.country",
    "steps.home.country == event.country",
    "has(steps.home)",
    "has(steps.away)",
    "has(steps.home.country)",
    "steps.away.country == 'FR'",
    "steps.home.amount + event.amount > 100.0",
    "steps.home.country in ['FR', 'US']",
    "steps.home.card.last4 == event.card.last4",
    "steps.home.merchant.startsWith('Blue') || steps.home.status == 'declined'",
    // `steps` as a whole value runs on the interpreter.
    "size(steps) == 1",
    "'home' in steps",
];

#[test]
fn herald_evaluates_step_conditions_as_cel_does() {
    // The interpreter's copy of the step events recurses deeply in a debug
    // build; the test thread's 2 MiB stack is not enough for nested events.
    let check = || {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
        let inputs = (event(), event(), 0usize..3);
        runner.run(&inputs, |(event, home, n)| {
            // The second step's event: the first's, moved abroad.
            let mut away = home.clone();
            away.insert("country".into(), json!("FR"));
            let conditions = Conditions::default();
            let compiled: Vec<Condition> = STEP_CONDITIONS
                .iter()
                .map(|s| conditions.compile(s).unwrap())
                .collect();
            let fast = compiled
                .iter()
                .filter(|c| Conditions::is_compiled(c))
                .count();
            prop_assert_eq!(fast, STEP_CONDITIONS.len() - 2);
            let (home, away) = (Fields::from(home), Fields::from(away));
            let named = [("home", &home), ("away", &away)];
            let steps = &named[..n];
            let fields = Fields::from(event);
            let scope = conditions.scope(&fields, None);
            for c in &compiled {
                let ours = conditions.eval_with_steps(c, &scope, steps);
                let cel = conditions.interpret_with_steps(c, &scope, steps);
                prop_assert_eq!(ours, cel, "`{}` with {} steps", c.source, n);
            }
            Ok(())
        })
    };
    let thread = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(check)
        .unwrap();
    thread.join().unwrap().unwrap();
}

//! Template rendering: herald's filters, and the planned path held to
//! minijinja's, result for result, over the sample rules' templates and a
//! generated corpus.

use super::*;
use crate::profile::Profile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn render(src: &str, event: serde_json::Value, profile: Option<&Profile>) -> Result<String, Error> {
    let mut t = Templates::new();
    t.add("r/body".into(), src.into()).unwrap();
    let scope = RuleScope {
        id: "r",
        category: "transactional",
        description: "",
    };
    let locale = profile
        .and_then(|p| p.locale.as_deref())
        .and_then(TextLocale::parse)
        .unwrap_or_else(TextLocale::default_locale);
    let scope = Scope {
        event: Arc::new(event.as_object().unwrap().clone()),
        profile: profile.map(|p| Arc::new(p.clone()) as Arc<dyn JsonFields>),
        rule: scope,
        pattern: None,
        digest: None,
        locale: &locale,
    };
    t.render("r/body", &scope)
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
    assert_eq!(out, "¥1,200 CHF\u{a0}12.00");
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

/// Every template of the sample rule files, as `(rule id/part, text)`.
fn sample_templates() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        for rule in file["rules"].as_array().unwrap() {
            let Some(parts) = rule["template"].as_object() else {
                continue;
            };
            let id = rule["id"].as_str().unwrap();
            for (part, source) in parts {
                match source.as_str() {
                    Some(text) => out.push((format!("{id}/{part}"), text.to_string())),
                    // `locales`: each locale's parts.
                    None if part == "locales" => {
                        for (tag, texts) in source.as_object().unwrap() {
                            for (part, text) in texts.as_object().unwrap() {
                                let text = text.as_str().unwrap().to_string();
                                out.push((format!("{id}/{part}@{tag}"), text));
                            }
                        }
                    }
                    None => {}
                }
            }
        }
    }
    out.sort();
    out
}

const PATHS: [&str; 14] = [
    "event.amount",
    "event.currency",
    "event.merchant",
    "event.card_last4",
    "event.ts",
    "event.missing",
    "event.card.holder",
    "event.flag",
    "profile.time_zone",
    "profile.attributes.first_name",
    "rule.id",
    "rule.description",
    "pattern.count",
    "pattern.steps.home.merchant",
];

const FILTERS: [&str; 10] = [
    "",
    " | money",
    " | money(event.currency)",
    " | money('jpy')",
    " | money(7)",
    " | mask_card",
    " | mask_phone",
    " | local_time",
    " | local_time('%b %d, %H:%M %Z')",
    " | mask_card | mask_phone",
];

/// Templates made of text and outputs of every path and filter above, and
/// some the plan does not take (arithmetic, minijinja's filters, conditions).
fn generated_templates(rng: &mut StdRng, n: usize) -> Vec<String> {
    let texts = [" ", "Hi ", " at ", "\n", " — ", "é ", ""];
    let unplanned = [
        "{{ pattern.count // 2 }}",
        "{{ event.merchant | upper }}",
        "{% if event.amount > 5 %}big{% endif %}",
        "{{ event['merchant'] }}",
        "{{ event.amount | money(currency='EUR') }}",
    ];
    (0..n)
        .map(|_| {
            let mut t = String::new();
            for _ in 0..rng.random_range(1..5) {
                t.push_str(texts[rng.random_range(0..texts.len())]);
                if rng.random_bool(0.1) {
                    t.push_str(unplanned[rng.random_range(0..unplanned.len())]);
                } else if rng.random_bool(0.1) {
                    t.push_str(&format!(
                        "{{{{ {} }}}}",
                        ["'lit'", "42", "-3", "2.5"][rng.random_range(0..4)]
                    ));
                } else {
                    let path = PATHS[rng.random_range(0..PATHS.len())];
                    let filter = FILTERS[rng.random_range(0..FILTERS.len())];
                    t.push_str(&format!("{{{{ {path}{filter} }}}}"));
                }
            }
            t
        })
        .collect()
}

/// A random event: each field of a kind a producer might send, or missing.
fn random_event(rng: &mut StdRng) -> serde_json::Value {
    use serde_json::json;
    let pick = |rng: &mut StdRng, choices: &[serde_json::Value]| {
        choices[rng.random_range(0..choices.len())].clone()
    };
    let amount = pick(
        rng,
        &[
            json!(4.5),
            json!(1234.567),
            json!(-12.0),
            json!(0),
            json!(1000000),
            json!(18446744073709551615u64),
            json!(-7),
            json!(1e21),
            json!("19.99"),
            json!(" 3 "),
            json!("n/a"),
            json!(true),
            json!(null),
            json!([1]),
        ],
    );
    let currency = pick(
        rng,
        &[
            json!("USD"),
            json!("eur"),
            json!("JPY"),
            json!("chf"),
            json!(5),
            json!(null),
        ],
    );
    let ts = pick(
        rng,
        &[
            json!("2026-07-01T15:00:00Z"),
            json!("2026-12-01T23:59:59.5+01:00"),
            json!(1795514400000i64),
            json!(1795514400000.5),
            json!("1795514400000"),
            json!("yesterday"),
            json!(-5),
        ],
    );
    let text = pick(
        rng,
        &[
            json!("Blue Bottle"),
            json!("Café ☕"),
            json!("  "),
            json!(""),
            json!(4242),
            json!(4.0),
        ],
    );
    let card = pick(
        rng,
        &[
            json!("4242"),
            json!(4242),
            json!("4111 1111 1111 1111"),
            json!("x"),
        ],
    );
    let mut event = serde_json::Map::new();
    for (k, v) in [
        ("amount", amount),
        ("currency", currency),
        ("ts", ts),
        ("merchant", text),
        ("card_last4", card),
    ] {
        if rng.random_bool(0.9) {
            event.insert(k.into(), v);
        }
    }
    if rng.random_bool(0.5) {
        event.insert(
            "card".into(),
            json!({"holder": pick(rng, &[json!("Ada"), json!(7), json!(null)])}),
        );
    }
    event.insert(
        "flag".into(),
        pick(rng, &[json!(true), json!("yes"), json!({})]),
    );
    serde_json::Value::Object(event)
}

fn random_profile(rng: &mut StdRng) -> Option<Arc<dyn JsonFields>> {
    use serde_json::json;
    let zone = [
        json!("America/Chicago"),
        json!("Asia/Kolkata"),
        json!("Mars/Olympus"),
        json!(3),
        json!(null),
    ][rng.random_range(0..5)]
    .clone();
    let profile = match rng.random_range(0..4) {
        0 => return None,
        1 => json!({"attributes": {"first_name": "Ada"}}),
        2 => json!({"time_zone": zone, "attributes": {"first_name": 1}}),
        _ => json!({"time_zone": zone}),
    };
    Some(Arc::new(profile.as_object().unwrap().clone()))
}

fn random_pattern(rng: &mut StdRng) -> Option<serde_json::Value> {
    use serde_json::json;
    match rng.random_range(0..3) {
        0 => None,
        1 => Some(json!({"count": 3, "within_s": 300, "steps": {"home": {"merchant": "Shell"}}})),
        _ => Some(json!({"count": 2.5, "steps": {"home": {}}})),
    }
}

#[test]
fn the_planned_path_renders_what_minijinja_renders() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut t = Templates::new();
    let samples = sample_templates();
    assert!(samples.len() >= 10, "sample templates: {samples:?}");
    let mut names = Vec::new();
    for (name, source) in &samples {
        t.add(name.clone(), source.clone()).unwrap();
        names.push(name.clone());
    }
    // Every sample template but the one with arithmetic and the digest's
    // (a loop over its items) takes the plan.
    let unplanned: Vec<&String> = names.iter().filter(|n| !t.is_planned(n)).collect();
    assert_eq!(
        unplanned,
        [
            "cashback-digest/body",
            "cashback-digest/title",
            "declined-velocity/text"
        ]
    );
    let generated = generated_templates(&mut rng, 300);
    for (i, source) in generated.iter().enumerate() {
        let name = format!("gen-{i}/body");
        t.add(name.clone(), source.clone()).unwrap();
        names.push(name);
    }
    let planned = names.iter().filter(|n| t.is_planned(n)).count();
    assert!(planned >= 200, "only {planned} of {} planned", names.len());
    let (mut fast, mut compared) = (0, 0);
    for _ in 0..400 {
        let event = random_event(&mut rng);
        let profile = random_profile(&mut rng);
        let pattern = random_pattern(&mut rng);
        let tags = ["en", "fr-FR", "ja-JP", "de-CH"];
        let locale = TextLocale::parse(tags[rng.random_range(0..tags.len())]).unwrap();
        let scope = Scope {
            locale: &locale,
            event: Arc::new(event.as_object().unwrap().clone()),
            profile,
            rule: RuleScope {
                id: "r-1",
                category: "fraud",
                description: "A rule",
            },
            pattern: pattern.as_ref(),
            digest: None,
        };
        for name in &names {
            let planned = t.plans.get(name.as_str()).and_then(|p| p.render(&scope));
            let interpreted = t.interpret(name, &scope);
            compared += 1;
            if let Some(text) = &planned {
                fast += 1;
                assert_eq!(
                    Some(text),
                    interpreted.as_ref().ok(),
                    "template {name} on {event} ({:?})",
                    interpreted.as_ref().err()
                );
            }
            match (t.render(name, &scope), interpreted) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{name} on {event}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
                (a, b) => panic!("{name} on {event}: {a:?} against {b:?}"),
            }
        }
    }
    // Many of these events are broken on purpose, so many renders fall back.
    assert!(
        fast * 10 >= compared,
        "{fast} of {compared} renders on the plan"
    );

    // A well-formed card transaction renders every planned sample on its plan.
    let event = serde_json::json!({"amount": 592.84, "currency": "USD", "merchant": "Shell",
        "card_last4": "0331", "ts": 1795514400000i64, "country": "US", "balance_after": 82.5});
    let en = TextLocale::default_locale();
    let scope = Scope {
        locale: &en,
        event: Arc::new(event.as_object().unwrap().clone()),
        profile: random_profile(&mut StdRng::seed_from_u64(3)),
        rule: RuleScope {
            id: "r-1",
            category: "fraud",
            description: "",
        },
        digest: None,
        pattern: Some(
            &serde_json::json!({"steps": {"home": {"merchant": "Shell"}, "abroad": {"merchant": "Fnac", "country": "FR"}}}),
        ),
    };
    let card_rules = [
        "purchase-notice",
        "large-or-foreign-purchase",
        "declined-transaction",
    ];
    let card_rules = card_rules
        .iter()
        .chain(&["low-balance", "abroad-after-home"]);
    for rule in card_rules {
        for (name, _) in samples
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{rule}/")))
        {
            let plan = t.plans[name.as_str()].render(&scope);
            assert!(plan.is_some(), "{name} fell back to minijinja");
            assert_eq!(
                plan.as_ref(),
                t.interpret(name, &scope).as_ref().ok(),
                "{name}"
            );
        }
    }
}

/// Money in the default locale (`en`) when the recipient has none: the
/// currency's own decimals, negative amounts, unknown codes.
#[test]
fn money_in_the_default_locale() {
    let en = TextLocale::default_locale();
    assert_eq!(en.money(-1234.5, "usd"), "-$1,234.50");
    assert_eq!(en.money(1200.4, "JPY"), "¥1,200");
    assert_eq!(en.money(12.0, "chf"), "CHF\u{a0}12.00");
    assert_eq!(
        en.money(0.125, "EUR"),
        "€0.13",
        "half away from zero, as ICU4X rounds money"
    );
    assert_eq!(en.money(1e12, "USD"), "$1,000,000,000,000.00");
}

#[test]
fn money_numbers_and_plurals_follow_the_recipients_locale() {
    let french = Profile {
        locale: Some("fr-FR".into()),
        ..Profile::default()
    };
    let out = render(
        "{{ event.amount | money(event.currency) }}, {{ event.n | plural(one=\"# refus\", other=\"# refus\") }}, {{ 1234.5 | number(1) }} ({{ locale }})",
        serde_json::json!({"amount": 1130.93, "currency": "EUR", "n": 0}),
        Some(&french),
    )
    .unwrap();
    assert_eq!(
        out,
        "1\u{202f}130,93\u{a0}€, 0 refus, 1\u{202f}234,5 (fr-FR)"
    );
    let polish = Profile {
        locale: Some("pl".into()),
        ..Profile::default()
    };
    let forms = "{{ event.n | plural(one=\"# karta\", few=\"# karty\", many=\"# kart\", other=\"# karty\") }}";
    let said: Vec<String> = [1, 3, 5, 22]
        .iter()
        .map(|n| render(forms, serde_json::json!({"n": n}), Some(&polish)).unwrap())
        .collect();
    assert_eq!(said, ["1 karta", "3 karty", "5 kart", "22 karty"]);
    let err = render("{{ 2 | plural(one=\"x\") }}", serde_json::json!({}), None).unwrap_err();
    assert!(err.to_string().contains("other"), "{err}");
    let err = render(
        "{{ 2 | plural(other=\"x\", fwe=\"y\") }}",
        serde_json::json!({}),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("fwe"), "{err}");
}

//! `herald rules check`: the sample rules pass; each broken fixture prints its exact error and exits 1.

use std::path::Path;
use std::process::Command;

fn check(path: &str) -> (i32, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["rules", "check", path])
        .current_dir(root)
        .output()
        .expect("herald runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn sample_rules_pass_with_a_summary_per_file() {
    let (code, out) = check("rules");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "rules/cold-chain.yaml: ok, 2 rules (2 enabled)\n\
         rules/offers.yaml: ok, 3 rules (3 enabled)\n\
         rules/payments.yaml: ok, 7 rules (7 enabled)\n\
         12 rules in 3 files\n"
    );
}

#[test]
fn sample_rules_pass_against_the_sample_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["rules", "check", "rules", "--config", "config/herald.toml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn expect_error(fixture: &str, expected: &str) {
    let path = format!("tests/fixtures/broken/{fixture}");
    let (code, out) = check(&path);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out, format!("{expected}\n"));
}

#[test]
fn unknown_field() {
    expect_error(
        "unknown-field.yaml",
        "tests/fixtures/broken/unknown-field.yaml:7:5: rule \"declined-velocity\": unknown field `withn`, expected one of id, description, enabled, shadow, sources, match, condition, channels, fallback, await_delivery, campaign, push_actions, category, priority, template, collapse_key, ttl_seconds, max_sms_segments, pattern, key, policy, subscription, digest, experiment",
    );
}

#[test]
fn cel_syntax_error() {
    expect_error(
        "cel-syntax.yaml",
        "tests/fixtures/broken/cel-syntax.yaml:4:30: rule \"big-spend\": condition: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}",
    );
}

#[test]
fn unknown_function() {
    expect_error(
        "unknown-function.yaml",
        "tests/fixtures/broken/unknown-function.yaml:4:40: rule \"abroad\": condition: unknown function `is_abroad`; available: CEL's standard functions and lower, upper, abs, max, min",
    );
}

#[test]
fn subscription_parameters_are_checked_against_the_condition() {
    let f = "tests/fixtures/broken/subscriptions.yaml";
    expect_error(
        "subscriptions.yaml",
        &[
            format!("{f}:4:16: rule \"reads-sub-without-one\": condition reads `sub`, but the rule declares no `subscription:` (its parameters)"),
            format!("{f}:13:16: rule \"undeclared-parameter\": condition reads `sub.limit`, which the subscription does not declare (it has: threshold)"),
            format!("{f}:21:24: rule \"bad-type-and-default\": subscription parameter `limit`: unknown type `temperature`; one of money, number, text, bool, countries, list"),
            format!("{f}:22:28: rule \"bad-type-and-default\": subscription parameter `threshold`: its default: money is written `500 USD` or {{\"amount\": 500, \"currency\": \"USD\"}}"),
        ]
        .join("\n"),
    );
}

#[test]
fn digests_are_checked_and_never_for_fraud() {
    let f = "tests/fixtures/broken/digests.yaml";
    expect_error(
        "digests.yaml",
        &[
            format!("{f}:6:23: rule \"fraud-digest\": a `fraud` message must never wait: a digest is not allowed in this category"),
            format!("{f}:8:9: rule \"reads-digest-without-one\": the template reads `digest`, but the rule has no `digest:`"),
            format!("{f}:18:15: rule \"bad-windows\": window.at `25:00` is not a time of day such as \"08:00\""),
            format!("{f}:19:18: rule \"bad-windows\": max_items must be 1 to 500: each waiting item's event is kept until the digest goes"),
            format!("{f}:26:15: rule \"sliding-without-longest\": a sliding window needs `at_most` too, e.g. {{ quiet_for: 15m, at_most: 2h }}"),
            format!("{f}:27:13: rule \"sliding-without-longest\": show takes one of {{ first: N }} or {{ last: N }}, N at least 1"),
        ]
        .join("\n"),
    );
}

#[test]
fn template_error() {
    expect_error(
        "template-error.yaml",
        "tests/fixtures/broken/template-error.yaml:8:54: rule \"purchase\": template.body: unexpected `}`, expected end of variable block",
    );
}

#[test]
fn bad_policy_value() {
    expect_error(
        "bad-policy.yaml",
        "tests/fixtures/broken/bad-policy.yaml:8:14: rule \"nightly-offer\": cap unit `fortnight` is not one of minute, hour, day, week",
    );
}

#[test]
fn duplicate_id() {
    expect_error(
        "duplicate-id.yaml",
        "tests/fixtures/broken/duplicate-id.yaml:8:9: rule \"purchase\": duplicate rule id; first defined at tests/fixtures/broken/duplicate-id.yaml:2:9",
    );
}

#[test]
fn every_error_of_a_file_is_reported_at_once() {
    expect_error(
        "several-errors.yaml",
        "tests/fixtures/broken/several-errors.yaml:2:9: rule \"Bad Id\": id must be lowercase letters, digits, `-`, `_` or `.`, e.g. `declined-velocity`\n\
         tests/fixtures/broken/several-errors.yaml:2:9: rule \"Bad Id\": template needs a `body` (push) or a `text` (SMS)\n\
         tests/fixtures/broken/several-errors.yaml:3:14: rule \"Bad Id\": sources must name at least one topic\n\
         tests/fixtures/broken/several-errors.yaml:5:15: rule \"Bad Id\": category must not be empty, e.g. transactional\n\
         tests/fixtures/broken/several-errors.yaml:12:9: rule \"ok-rule\": condition: unknown function `nope`; available: CEL's standard functions and lower, upper, abs, max, min\n\
         tests/fixtures/broken/several-errors.yaml:16:20: rule \"ok-rule\": template.body: unexpected end of block",
    );
}

#[test]
fn six_broken_rules_of_one_file_give_every_error_in_one_run() {
    let f = "tests/fixtures/broken/six-broken-rules.yaml";
    expect_error(
        "six-broken-rules.yaml",
        &[
            format!("{f}:5:5: rule \"one\": missing field `category`"),
            format!("{f}:11:5: rule \"two\": unknown field `colour`, expected one of id, description, enabled, shadow, sources, match, condition, channels, fallback, await_delivery, campaign, push_actions, category, priority, template, collapse_key, ttl_seconds, max_sms_segments, pattern, key, policy, subscription, digest, experiment"),
            format!("{f}:18:30: rule \"three\": condition: Syntax error: mismatched input '<EOF>' expecting {{'[', '{{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}}"),
            format!("{f}:20:32: rule \"three\": template.body: unknown filter `monee`; herald's filters are money, number, plural, mask_card, mask_phone, local_time, local_date and local_datetime, beside minijinja's (upper, default, round, …)"),
            format!("{f}:25:15: rule \"four\": unknown variant `urgent`, expected one of high, normal"),
            format!("{f}:33:31: rule \"five\": template.body: unknown test `oddly` (after `is`)"),
            format!("{f}:33:54: rule \"five\": template.body: unknown function `nofunc`"),
            format!("{f}:35:14: rule \"six\": expected a list here, e.g. `[transactions]` or one `- item` per line"),
        ]
        .join("\n"),
    );
}

#[test]
fn errors_in_several_files_are_all_reported() {
    let (code, out) = check("tests/fixtures/broken");
    assert_eq!(code, 1);
    for f in [
        "cel-syntax",
        "duplicate-id",
        "several-errors",
        "template-error",
        "unknown-field",
        "unknown-function",
    ] {
        assert!(
            out.contains(&format!("tests/fixtures/broken/{f}.yaml:")),
            "{f} missing from:\n{out}"
        );
    }
}

#[test]
fn delivery_choices_that_cannot_work_are_refused() {
    expect_error(
        "bad-delivery.yaml",
        "tests/fixtures/broken/bad-delivery.yaml:5:15: rule \"both-lists\": give either `channels` (send on each) or `fallback` (the first that can take it), not both\n\
         tests/fixtures/broken/bad-delivery.yaml:10:15: rule \"chain-of-one\": fallback needs at least two channels, e.g. [push, sms]\n\
         tests/fixtures/broken/bad-delivery.yaml:14:9: rule \"no-campaign\": policy.suppress_if `email_opened` looks at the same campaign, but the rule has no `campaign`; add one or set `same_campaign: false`\n\
         tests/fixtures/broken/bad-delivery.yaml:17:21: rule \"no-campaign\": await_delivery needs a `fallback` chain to fall back along",
    );
    expect_error(
        "zero-wait.yaml",
        "tests/fixtures/broken/zero-wait.yaml:5:21: rule \"impatient\": duration `0s` must be longer than zero",
    );
}

#[test]
fn a_push_template_that_can_outgrow_fcms_payload_is_a_warning_not_an_error() {
    let (code, out) = check("tests/fixtures/warnings/push-loop.yaml");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "tests/fixtures/warnings/push-loop.yaml: ok, 1 rules (1 enabled)\n\
         warning: tests/fixtures/warnings/push-loop.yaml:10:13: rule \"basket-receipt\": template.body has a loop: its output can grow past FCM's 4096-byte payload, and such pushes fail `payload_too_large`\n\
         1 rules in 1 files\n"
    );
}

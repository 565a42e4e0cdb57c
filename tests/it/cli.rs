//! The commands the README shows that other tests do not run: `herald standin`,
//! and the sample config files.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn standin_command_serves_fcm_and_twilio_with_credentials_from_the_environment() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["standin", "--listen", "127.0.0.1:0"])
        .env("HERALD_FCM_ACCESS_TOKEN", "tok")
        .env("TWILIO_ACCOUNT_SID", "AC9")
        .env("TWILIO_AUTH_TOKEN", "sec")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first.rsplit(' ').next().unwrap().to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{first}");
    let http = crate::support::http();
    let body = serde_json::json!({"message": {"token": "t-1", "notification": {"body": "hello"}, "data": {"rule": "r"}}});
    let url = format!("{base}/v1/projects/p/messages:send");
    assert_eq!(
        http.post(&url)
            .bearer_auth("nope")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.post(&url)
            .bearer_auth("tok")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let sms = http
        .post(format!("{base}/2010-04-01/Accounts/AC9/Messages.json"))
        .basic_auth("AC9", Some("sec"))
        .form(&[
            ("To", "+14155552671"),
            ("From", "+15005550006"),
            ("Body", "hi"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(sms.status(), 201);
    let printed = lines.next().unwrap().unwrap();
    assert!(
        printed.starts_with("fcm r token:") && printed.ends_with(": hello"),
        "{printed}"
    );
    assert!(!printed.contains("t-1"), "the token is masked: {printed}");
    let printed = lines.next().unwrap().unwrap();
    assert_eq!(printed, "twilio - +141******71: hi");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sample_config_files_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The sample configs' variables, set with the rest, once per process.
    crate::support::credentials();
    for file in [
        "config/herald.toml",
        "config/console.toml",
        "config/docker.toml",
    ] {
        let config = herald::config::Config::load(&root.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!config.channels.is_empty(), "{file} has channels");
    }
}

fn herald(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_sample_rules_pass_their_rule_tests() {
    let (code, out, err) = herald(&["rules", "test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with(" passed, 0 failed\n"), "{out}");
    for file in ["cold-chain", "offers", "payments"] {
        assert!(
            out.contains(&format!("ok    rules/tests/{file}.yaml:")),
            "{file}: {out}"
        );
    }
}

#[test]
fn digest_windows_close_on_time_on_the_virtual_clock() {
    // Across a DST change, in two time zones, early at max_items, sliding,
    // the first at once, per group, and held through quiet hours.
    let (code, out, err) = herald(&["rules", "test", "tests/fixtures/digests"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("8 passed, 0 failed\n"), "{out}");
}

#[test]
fn a_failing_rule_test_shows_expected_against_got_at_its_line() {
    let (code, out, _) = herald(&["rules", "test", "tests/fixtures/ruletest"]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "ok    tests/fixtures/ruletest/tests/cases.yaml:2  the title is right\n\
         FAIL  tests/fixtures/ruletest/tests/cases.yaml:10  the analyst expected another merchant\n\
         \x20   decision 1 (line 16):\n\
         \x20     title: expected \"$12.50 at Chevron\", got \"$12.50 at Shell\"\n\
         \x20   expected:\n\
         \x20     - purchase-notice push sent \"$12.50 at Chevron\"\n\
         \x20   got:\n\
         \x20     - purchase-notice push sent \"$12.50 at Shell\" \"Card •••• 4242\"\n\
         \n\
         ok    tests/fixtures/ruletest/tests/cases.yaml:18  without consent the notice is suppressed\n\
         2 passed, 1 failed\n"
    );
}

#[test]
fn a_rule_test_that_cannot_be_trusted_stops_with_its_reason() {
    let (code, _, err) = herald(&[
        "rules",
        "test",
        "tests/fixtures/ruletest-broken/tests/unknown-rule.yaml",
    ]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: tests/fixtures/ruletest-broken/tests/unknown-rule.yaml:6: test \"refers to a rule that is not there\": rule `purchase-notise` does not exist\n"
    );
    let (code, _, err) = herald(&[
        "rules",
        "test",
        "tests/fixtures/ruletest-broken/tests/no-time.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no-time.yaml:4: test \"an event without its time\": every event needs `at`"),
        "{err}"
    );
}

#[test]
fn rules_eval_prints_what_each_rule_would_do() {
    let (code, out, err) = herald(&[
        "rules",
        "eval",
        "--event",
        "tests/fixtures/eval/event.json",
        "--profile",
        "tests/fixtures/eval/profile.json",
        "--key",
        "card-1",
        "--at",
        "2026-11-24T15:00:00Z",
    ]);
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["matched"],
        serde_json::json!([
            "purchase-notice",
            "large-or-foreign-purchase",
            "low-balance"
        ])
    );
    let d = &answer["decisions"];
    assert_eq!(d[0]["text"], "Card •••• 4242 was used at 09:00.");
    assert_eq!(d[1]["reason"], "no_consent:sms");
    assert_eq!(d[2]["title"], "Low balance");
    let (code, _, err) = herald(&[
        "rules",
        "eval",
        "--event",
        "tests/fixtures/eval/profile.json",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("the event has no `user_id`"), "{err}");
}

/// The first command installs what the demo needs and no browser; the
/// second adds the browser the live-page test runs in.
#[test]
fn the_demo_installs_no_browser_and_the_tests_do() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = |purpose: &str| -> Vec<String> {
        let out = std::process::Command::new("bash")
            .args(["scripts/install-deps.sh", "--list", purpose])
            .current_dir(root)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let demo = list("demo");
    assert!(
        demo.contains(&"openjdk-17-jre-headless".to_string()),
        "{demo:?}"
    );
    assert!(!demo.contains(&"chromium".to_string()), "{demo:?}");
    assert!(list("test").contains(&"chromium".to_string()));
    let demo_script = std::fs::read_to_string(root.join("scripts/demo.sh")).unwrap();
    assert!(demo_script.contains("scripts/install-deps.sh demo\n"));
}

#[test]
fn an_experiment_report_over_a_replay_matches_a_tally_by_hand() {
    // 300 opted-in coffee drinkers buy a coffee on day one (each gets the
    // offer, or is held out); every third comes back for another on day
    // two: a conversion in whichever arm they are.
    let dir = tempfile::tempdir().unwrap();
    let (events, profiles, out, chart) = (
        dir.path().join("events.jsonl"),
        dir.path().join("profiles.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("chart.svg"),
    );
    let (mut ev, mut pr) = (String::new(), String::new());
    for i in 0..300 {
        let user = format!("c-{i}");
        pr.push_str(&format!(
            "{{\"user_id\":\"{user}\",\"push_tokens\":[{{\"token\":\"t-{i}\",\"platform\":\"ios\"}}],\"time_zone\":\"UTC\",\"consent\":{{\"push\":true}},\"preferences\":{{\"marketing\":true}}}}\n"
        ));
        let coffee = |day: u32| {
            format!(
                "{{\"topic\":\"transactions\",\"key\":\"card-{i}\",\"event\":{{\"user_id\":\"{user}\",\"ts\":\"2026-11-{day}T16:{:02}:{:02}Z\",\"merchant\":\"Blue Bottle\",\"category\":\"coffee\",\"amount\":4.5,\"currency\":\"USD\",\"status\":\"approved\"}}}}\n",
                i / 60,
                i % 60
            )
        };
        ev.push_str(&coffee(24));
        if i % 3 == 0 {
            ev.push_str(&coffee(25));
        }
    }
    // Day two's events after day one's.
    let mut lines: Vec<&str> = ev.lines().collect();
    lines.sort_by_key(|l| l.contains("2026-11-25"));
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    std::fs::write(&profiles, pr).unwrap();
    let (code, stdout, err) = herald(&[
        "replay",
        "--input",
        events.to_str().unwrap(),
        "--profiles",
        profiles.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, report, err) = herald(&[
        "experiment",
        "report",
        "coffee-offer-2026-12",
        "--from",
        out.to_str().unwrap(),
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{report}{err}");
    // By hand: each user's arm by the same stable hash the rule uses.
    let arms: Vec<herald::rules::experiment::Arm> =
        [("control", 20.0), ("discount", 40.0), ("pastry", 40.0)]
            .into_iter()
            .map(|(name, weight)| herald::rules::experiment::Arm {
                name: name.into(),
                weight,
                control: name == "control",
                texts: [false; 3],
                channels: None,
                tag: Default::default(),
            })
            .collect();
    let mut expected: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for i in 0..300 {
        let arm =
            herald::rules::experiment::assign("coffee-offer-2026-12", &arms, &format!("c-{i}"));
        let e = expected.entry(arm.name.as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(i % 3 == 0);
    }
    for (arm, (users, converted)) in &expected {
        let label = if *arm == "control" {
            "control (control)".to_string()
        } else {
            arm.to_string()
        };
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no row for {arm}: {report}"));
        let cells: Vec<&str> = row[label.len()..].split_whitespace().collect();
        assert_eq!(cells[0], users.to_string(), "{arm} users: {row}");
        assert_eq!(cells[2], converted.to_string(), "{arm} conversions: {row}");
        let rate = 100.0 * *converted as f64 / *users as f64;
        assert_eq!(cells[3], format!("{rate:.2}"), "{arm} rate: {row}");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.contains("coffee-offer-2026-12") && svg.contains("pastry"),
        "{svg}"
    );
}

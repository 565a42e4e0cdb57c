//! `herald replay` over a file of 100,000 recorded events: the totals it
//! reports and the outcomes it writes match an answer computed here.

use std::io::Write;
use std::process::Command;

#[test]
fn replaying_100000_events_reports_the_known_totals() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        r#"
rules:
  - id: declines
    sources: [transactions]
    match: { status: declined }
    channels: [push]
    category: transactional
    template: { title: "Declined", body: "{{ event.merchant }}" }
"#,
    )
    .unwrap();
    // 997 users; the even ones have a push token and consent.
    let mut profiles = std::fs::File::create(dir.path().join("profiles.jsonl")).unwrap();
    for u in 0..997 {
        let consent = u % 2 == 0;
        writeln!(
            profiles,
            r#"{{"user_id":"u-{u}","push_tokens":[{{"token":"t-{u}","platform":"android"}}],"consent":{{"push":{consent}}}}}"#
        )
        .unwrap();
    }
    let t0: i64 = 1_795_514_400_000;
    let (mut sent, mut no_consent) = (0, 0);
    let mut users = std::collections::BTreeSet::new();
    let mut events =
        std::io::BufWriter::new(std::fs::File::create(dir.path().join("events.jsonl")).unwrap());
    for i in 0..100_000i64 {
        if i == 50_000 {
            writeln!(events, "{{not json").unwrap();
        }
        let user = i % 997;
        let declined = i % 10 == 0;
        if declined {
            if user % 2 == 0 {
                sent += 1;
                users.insert(user);
            } else {
                no_consent += 1;
            }
        }
        writeln!(
            events,
            r#"{{"user_id":"u-{user}","ts":{},"merchant":"Shell","amount":1.0,"currency":"USD","status":"{}"}}"#,
            t0 + i * 1000,
            if declined { "declined" } else { "approved" }
        )
        .unwrap();
    }
    drop(events);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("replay")
        .arg("--input")
        .arg(dir.path().join("events.jsonl"))
        .args([
            "--topic",
            "transactions",
            "--config",
            "config/herald.toml",
            "--price",
            "push=0.001",
        ])
        .arg("--profiles")
        .arg(dir.path().join("profiles.jsonl"))
        .arg("--rules")
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("outcomes.jsonl"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("events.jsonl:50001: not JSON"),
        "the bad line by number: {stderr}"
    );
    assert!(stderr.contains("100%"), "progress: {stderr}");
    assert!(stdout.starts_with("100000 events replayed\n"), "{stdout}");
    assert!(stdout.contains("  matches           10000\n"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "  would send        {sent} to {} users\n",
            users.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  suppressed        {no_consent} no_consent\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  estimated cost    {:.2}\n", sent as f64 * 0.001)),
        "{stdout}"
    );
    assert!(stdout.contains("; 1 malformed lines skipped"), "{stdout}");
    let written = std::fs::read_to_string(dir.path().join("outcomes.jsonl")).unwrap();
    assert_eq!(
        written.lines().count(),
        10_000,
        "one would-be outcome per decline"
    );
    let sent_lines = written
        .lines()
        .filter(|l| l.contains(r#""status":"sent""#))
        .count();
    assert_eq!(sent_lines, sent);
}

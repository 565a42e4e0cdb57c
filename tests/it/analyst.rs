//! Analyst tooling on the real broker: a shadow rule runs beside the live one
//! without sending, and `herald rules diff` compares the two.

use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_rule_sends_nothing_and_rules_diff_compares_it_with_the_live_one() {
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        r#"
rules:
  - id: notice-v1
    sources: [TX]
    match: { status: approved }
    condition: event.country == "US"
    channels: [push]
    category: transactional
    template: { body: "v1 {{ event.merchant }}" }
  - id: notice-v2
    shadow: true
    sources: [TX]
    match: { status: approved }
    condition: event.amount > 50.0
    channels: [push]
    category: transactional
    template: { body: "v2 {{ event.merchant }}" }
"#
        .replace("TX", &topics.transactions),
    )
    .unwrap();
    let p = producer();
    for user in ["u-1", "u-2", "u-3"] {
        publish(&p, &topics.profiles, user, &profile(user, true, false)).await;
    }
    let text = config_text(&topics, rules.path(), &provider.base_url(), "");
    let (config_path, config) = load_config(rules.path(), &text);
    let running = herald::start(config).await.expect("herald starts");
    wait_ready(running.admin_addr()).await;
    for (user, amount, country) in [
        ("u-1", 20.0, "US"),
        ("u-2", 80.0, "US"),
        ("u-3", 80.0, "FR"),
    ] {
        publish(
            &p,
            &topics.transactions,
            user,
            &swipe(user, amount, "approved", country),
        )
        .await;
    }
    let outcomes = read_json(&topics.outcomes, 4, Duration::from_secs(20), |_| true);
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    let shadow: Vec<_> = outcomes
        .iter()
        .filter(|o| o["rule"] == "notice-v2")
        .collect();
    assert_eq!(shadow.len(), 2);
    assert!(shadow
        .iter()
        .all(|o| o["shadow"] == true && o["status"] == "sent"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies: Vec<String> = provider
        .received_by("fcm")
        .iter()
        .map(|r| {
            r.json["message"]["notification"]["body"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(bodies.len(), 2, "only the live rule sends: {bodies:?}");
    assert!(bodies.iter().all(|b| b.starts_with("v1 ")));
    let (_, rules_page) = admin_get(running.admin_addr(), "/rules").await;
    assert!(
        rules_page.contains(r#""id":"notice-v2""#) && rules_page.contains(r#""status":"shadow""#)
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "rules",
            "diff",
            "--old",
            "notice-v1",
            "--new",
            "notice-v2",
            "--since",
            "1h",
            "--config",
        ])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "old  notice-v1: 2 messages to 2 users\n\
         new  notice-v2 (shadow): 2 messages to 2 users\n\
         would newly reach 1 users: u-3\n\
         would no longer reach 1 users: u-1\n\
         reached by both: 1 users\n"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_a_time_range_of_a_topic_and_refuses_one_that_is_empty() {
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let rules = sample_rules(&topics);
    let p = producer();
    publish(&p, &topics.profiles, "u-1", &profile("u-1", true, true)).await;
    for amount in [5.0, 1500.0] {
        publish(
            &p,
            &topics.transactions,
            "card-1",
            &swipe("u-1", amount, "approved", "US"),
        )
        .await;
    }
    let text = config_text(&topics, rules.path(), &provider.base_url(), "");
    let (config_path, _) = load_config(rules.path(), &text);
    let replay = |since: &str, topic: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "replay",
                "--from-topic",
                topic,
                "--since",
                since,
                "--config",
            ])
            .arg(&config_path)
            .arg("--rules")
            .arg(rules.path())
            .output()
            .unwrap()
    };
    let hour_ago = jiff::Timestamp::now()
        .checked_sub(jiff::Span::new().hours(1))
        .unwrap()
        .to_string();
    let out = replay(&hour_ago, &topics.transactions);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("2 events replayed"), "{stdout}");
    assert!(
        stdout.contains("purchase-notice\n  matches           2\n  would send        2 to 1 users"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "large-or-foreign-purchase\n  matches           1\n  would send        1 to 1 users"
        ),
        "{stdout}"
    );
    assert!(provider.received().is_empty(), "a replay sends nothing");

    let later = jiff::Timestamp::now()
        .checked_add(jiff::Span::new().hours(1))
        .unwrap()
        .to_string();
    let out = replay(&later, &topics.transactions);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no events in"));
    let out = replay(&hour_ago, "no-such-topic");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`no-such-topic` does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

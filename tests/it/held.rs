//! Held messages on disk, on a real broker: one whose rule is removed while it waits is kept (reported once, dead-lettered with its record) and released when the rule is back.

use std::time::Duration;

use serde_json::json;

use crate::support::provider::Provider;
use crate::support::*;

fn offer_rule(source: &str, window: &str) -> String {
    format!(
        r#"  - id: evening-offer
    sources: [{source}]
    match: {{ status: approved }}
    channels: [push]
    category: promotions
    policy: {{ quiet_hours: "{window}", on_quiet_hours: hold, max_age_s: 600 }}
    template:
      body: "offer {{{{ event.seq }}}}"
"#
    )
}

/// A rule that keeps the rule set from being empty, and matches nothing here.
fn other_rule(source: &str) -> String {
    format!(
        r#"  - id: refunds
    sources: [{source}]
    match: {{ status: refunded }}
    channels: [push]
    category: transactional
    template:
      body: "refund"
"#
    )
}

fn swipe(seq: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"user_id": "u-8", "ts": herald::util::now_ms(), "seq": seq, "status": "approved", "amount": 12.5})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_whose_rule_is_removed_is_kept_reported_and_released_when_the_rule_is_back()
{
    let window = quiet_window_now(40).await;
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let file = rules.join("rules.yaml");
    let (offer, other) = (
        offer_rule(&topics.transactions, &window),
        other_rule(&topics.transactions),
    );
    std::fs::write(&file, format!("rules:\n{offer}{other}")).unwrap();
    let mut utc = profile_json("u-8", true, false);
    utc["time_zone"] = json!("UTC");
    publish(
        &producer(),
        &topics.profiles,
        "u-8",
        utc.to_string().as_bytes(),
    )
    .await;
    let text = config_text(&topics, &rules, &provider.base_url(), "");
    let (_, config) = load_config(dir.path(), &text);
    let first = herald::start(config).await.expect("herald starts");
    wait_ready(first.admin_addr()).await;
    publish(&producer(), &topics.transactions, "card-8", &swipe(1)).await;
    let held = read_json(&topics.outcomes, 1, Duration::from_secs(30), |o| {
        o["user"] == "u-8"
    });
    assert_eq!(held[0]["status"], "held", "{held:?}");
    first.stop().await;

    // The rule is removed while its message waits; another rule stays.
    std::fs::write(&file, format!("rules:\n{other}")).unwrap();
    let (_, config) = load_config(dir.path(), &text);
    let second = herald::start(config).await.expect("herald starts");
    let addr = second.admin_addr();
    let dead = read_json(&topics.dlq, 1, Duration::from_secs(90), |d| {
        d["reason"] == "held_rule_removed"
    });
    assert_eq!(dead[0]["rule"], "evening-offer", "{dead:?}");
    let warned = admin_until(addr, "/readyz", |_, body| {
        body.contains("wait for a rule that is not loaded")
    })
    .await;
    assert!(warned.is_some(), "readiness warns of the kept message");
    let (_, metrics) = admin_get(addr, "/metrics").await;
    assert!(metrics.contains("herald_held_orphaned 1"), "{metrics}");
    assert!(
        provider.received_by("fcm").is_empty(),
        "not sent while its rule is gone"
    );
    // Still held on the topic: its record, no tombstone.
    let records = read_all_records(
        &topics.held,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    let last = records.last().expect("the held record");
    assert!(last.1.is_some(), "the held record was not deleted");
    // The dead letter was written once, not at every look.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let letters = read_all_json(
        &topics.dlq,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    assert_eq!(
        letters
            .iter()
            .filter(|d| d["reason"] == "held_rule_removed")
            .count(),
        1
    );

    // The rule is back: the message goes out, once.
    std::fs::write(&file, format!("rules:\n{offer}{other}")).unwrap();
    let sent = read_json(&topics.outcomes, 1, Duration::from_secs(60), |o| {
        o["user"] == "u-8" && o["status"] == "sent"
    });
    assert_eq!(sent[0]["idempotency_key"], held[0]["idempotency_key"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.received_by("fcm").len(), 1, "released once");
    second.stop().await;
}

#[test]
fn herald_run_refuses_to_start_without_rules_and_says_how_to_allow_it() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let topics = Topics::fresh();
    let text = config_text(&topics, &rules, "http://127.0.0.1:9", "");
    let (path, _) = load_config(dir.path(), &text);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no rules in this directory"), "{stderr}");
    assert!(stderr.contains("rules.allow_empty = true"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_deployment_on_the_same_held_topic_leaves_the_first_ones_messages_alone() {
    let window = quiet_window_now(40).await;
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (first_rules, second_rules) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&first_rules, &second_rules] {
        std::fs::create_dir(d).unwrap();
    }
    let (offer, other) = (
        offer_rule(&topics.transactions, &window),
        other_rule(&topics.transactions),
    );
    std::fs::write(
        first_rules.join("r.yaml"),
        format!("rules:\n{offer}{other}"),
    )
    .unwrap();
    // The second deployment knows nothing of the first's rule.
    std::fs::write(second_rules.join("r.yaml"), format!("rules:\n{other}")).unwrap();
    let mut utc = profile_json("u-8", true, false);
    utc["time_zone"] = json!("UTC");
    let profile = utc.to_string();
    publish(&producer(), &topics.profiles, "u-8", profile.as_bytes()).await;
    let first_dir = dir.path().join("first");
    std::fs::create_dir(&first_dir).unwrap();
    let first_text = config_text(&topics, &first_rules, &provider.base_url(), "");
    let (_, first_config) = load_config(&first_dir, &first_text);
    let group = first_config.kafka.group_id.clone();
    let first = herald::start(first_config).await.expect("first starts");
    wait_ready(first.admin_addr()).await;
    publish(&producer(), &topics.transactions, "card-8", &swipe(1)).await;
    let held = read_json(&topics.outcomes, 1, Duration::from_secs(30), |o| {
        o["user"] == "u-8"
    });
    assert_eq!(held[0]["status"], "held", "{held:?}");
    let records = read_all_records(
        &topics.held,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    let key = String::from_utf8(records[0].0.clone().unwrap()).unwrap();
    assert!(
        key.starts_with(&format!("{group}/")),
        "the held record's key names its deployment: {key}"
    );

    // Another deployment (its own group id and rules) on the same topics.
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).unwrap();
    let second_text = config_text(&topics, &second_rules, &provider.base_url(), "");
    let (_, second_config) = load_config(&second_dir, &second_text);
    assert_ne!(second_config.kafka.group_id, group);
    let second = herald::start(second_config).await.expect("second starts");
    wait_ready(second.admin_addr()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, ready) = admin_get(second.admin_addr(), "/readyz").await;
    assert!(
        !ready.contains("not loaded"),
        "not the second's to report: {ready}"
    );
    let letters = read_all_json(
        &topics.dlq,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    assert!(
        letters.iter().all(|d| d["reason"] != "held_rule_removed"),
        "the second deployment dead-lettered the first's held message: {letters:?}"
    );
    let records = read_all_records(
        &topics.held,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    assert_eq!(
        records.len(),
        1,
        "nothing written over or deleted: {records:?}"
    );

    // The quiet hours end: the first deployment sends it, once.
    let sent = read_json(&topics.outcomes, 1, Duration::from_secs(90), |o| {
        o["user"] == "u-8" && o["status"] == "sent"
    });
    assert_eq!(sent[0]["idempotency_key"], held[0]["idempotency_key"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.received_by("fcm").len(), 1, "released once");
    second.stop().await;
    first.stop().await;
}

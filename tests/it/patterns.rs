//! Patterns end to end on the real broker: a velocity window, a sequence with
//! named steps in the message, and an absence that fires when the key goes silent.

use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;
use serde_json::{json, Value};

struct Harness {
    topics: Topics,
    provider: Provider,
    _rules: tempfile::TempDir,
    running: herald::Running,
}

async fn harness(rules_yaml: &str, users: &[&str]) -> Harness {
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        rules_yaml
            .replace("TX", &topics.transactions)
            .replace("LOC", &topics.locations),
    )
    .unwrap();
    let producer = producer();
    for user in users {
        publish(
            &producer,
            &topics.profiles,
            user,
            &profile(user, true, true),
        )
        .await;
    }
    let text = config_text(&topics, rules.path(), &provider.base_url(), "");
    let (_, config) = load_config(rules.path(), &text);
    let running = herald::start(config).await.expect("herald starts");
    wait_ready(running.admin_addr()).await;
    Harness {
        topics,
        provider,
        _rules: rules,
        running,
    }
}

/// A card transaction at `ts_ms` (event time), keyed by card.
async fn transaction(h: &Harness, card: &str, fields: Value) {
    publish(
        &producer(),
        &h.topics.transactions,
        card,
        fields.to_string().as_bytes(),
    )
    .await;
}

fn sms_bodies(h: &Harness) -> Vec<String> {
    h.provider
        .received_by("twilio")
        .iter()
        .map(|r| r.form["Body"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_declines_on_one_card_within_five_minutes_send_one_fraud_sms() {
    let h = harness(
        r#"
rules:
  - id: declined-velocity
    sources: [TX]
    match: { status: declined }
    pattern: { window: { count: 3, within: 5m } }
    channels: [sms]
    category: fraud
    template:
      text: "{{ pattern.count }} declines on {{ event.card_last4 | mask_card }}, first at {{ pattern.first.merchant }}"
"#,
        &["u-1"],
    )
    .await;
    let t0 = herald::util::now_ms() - 10 * 60_000;
    let decline = |minute: i64, merchant: &str| {
        json!({"user_id": "u-1", "ts": t0 + minute * 60_000, "card_last4": "4242",
               "merchant": merchant, "amount": 1.0, "currency": "USD", "status": "declined"})
    };
    // Card A: 0, 2, 6 minutes (never three in five); card B: 0, 1, 4 minutes.
    for (card, minute, merchant) in [
        ("card-a", 0, "Shell"),
        ("card-b", 0, "Uber"),
        ("card-a", 2, "Shell"),
        ("card-b", 1, "Uber"),
        ("card-a", 6, "Shell"),
        ("card-b", 4, "Apple Store"),
    ] {
        transaction(&h, card, decline(minute, merchant)).await;
    }
    let outcomes = read_json(&h.topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["rule"], "declined-velocity");
    assert_eq!(outcomes[0]["status"], "sent");
    assert_eq!(outcomes[0]["pattern"]["kind"], "window");
    assert_eq!(outcomes[0]["pattern"]["count"], 3);
    assert_eq!(
        outcomes[0]["pattern"]["events"].as_array().unwrap().len(),
        3
    );
    assert_eq!(sms_bodies(&h), ["3 declines on **** 4242, first at Uber"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sms_bodies(&h).len(),
        1,
        "card A never had three within five minutes"
    );
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_abroad_soon_after_one_at_home_names_both() {
    let h = harness(
        r#"
rules:
  - id: abroad-after-home
    sources: [TX]
    pattern:
      sequence:
        within: 1h
        steps:
          - { name: home, match: { status: approved }, condition: "event.country == event.home_country" }
          - { name: abroad, match: { status: approved }, condition: "event.country != steps.home.country" }
    channels: [sms]
    category: fraud
    template:
      text: "{{ pattern.steps.abroad.merchant }} ({{ pattern.steps.abroad.country }}) after {{ pattern.steps.home.merchant }}"
"#,
        &["u-2"],
    )
    .await;
    let now = herald::util::now_ms();
    let swipe = |minutes_ago: i64, merchant: &str, country: &str| {
        json!({"user_id": "u-2", "ts": now - minutes_ago * 60_000, "card_last4": "1111",
               "merchant": merchant, "amount": 20.0, "currency": "USD",
               "country": country, "home_country": "US", "status": "approved"})
    };
    // Another card: abroad two hours after home — too late.
    transaction(&h, "card-y", swipe(180, "Target", "US")).await;
    transaction(&h, "card-y", swipe(60, "Harrods", "GB")).await;
    // This card: home, then abroad 29 minutes later (a minute ago: still fresh).
    transaction(&h, "card-x", swipe(30, "Blue Bottle", "US")).await;
    transaction(&h, "card-x", swipe(1, "Le Bon Marché", "FR")).await;
    let outcomes = read_json(&h.topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(outcomes[0]["status"], "sent");
    assert_eq!(outcomes[0]["pattern"]["steps"], json!(["home", "abroad"]));
    assert_eq!(sms_bodies(&h), ["Le Bon Marché (FR) after Blue Bottle"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sms_bodies(&h).len(), 1);
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absence_fires_when_nothing_more_ever_arrives_for_the_key() {
    let h = harness(
        r#"
rules:
  - id: cart-left
    sources: [TX]
    key: event.user_id
    pattern:
      absence:
        after: { name: checkout_started, match: { status: pending } }
        missing: { name: paid, match: { status: approved } }
        within: 2s
      lateness: 1s
    channels: [push]
    category: transactional
    template:
      body: "Your {{ pattern.first.merchant }} payment did not go through."
"#,
        &["u-3", "u-4"],
    )
    .await;
    let now = herald::util::now_ms();
    let event = |user: &str, status: &str| {
        json!({"user_id": user, "ts": now, "card_last4": "2222", "merchant": "Amazon",
               "amount": 30.0, "currency": "USD", "status": status})
    };
    transaction(&h, "card-3", event("u-3", "pending")).await;
    transaction(&h, "card-4", event("u-4", "pending")).await;
    transaction(&h, "card-4", event("u-4", "approved")).await;
    // Nothing else is published: u-3's absence must fire by the wall clock.
    let outcomes = read_json(&h.topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0]["user"], "u-3");
    assert_eq!(outcomes[0]["status"], "sent");
    assert_eq!(outcomes[0]["pattern"]["kind"], "absence");
    assert_eq!(outcomes[0]["pattern"]["missing"], "paid");
    let push = h.provider.received_by("fcm");
    assert_eq!(
        push[0].json["message"]["notification"]["body"],
        "Your Amazon payment did not go through."
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(h.provider.received_by("fcm").len(), 1, "u-4 paid in time");
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_key_cannot_be_computed_is_dead_lettered_and_the_stream_goes_on() {
    let h = harness(
        r#"
rules:
  - id: by-account
    sources: [TX]
    key: event.account
    pattern: { window: { count: 2, within: 1m } }
    channels: [push]
    category: transactional
    template: { body: "two on {{ event.account }}" }
"#,
        &["u-5"],
    )
    .await;
    let now = herald::util::now_ms();
    let with = |account: Value| json!({"user_id": "u-5", "ts": now, "account": account});
    transaction(&h, "k", with(json!({"nested": true}))).await;
    transaction(&h, "k", with(json!("acc-1"))).await;
    transaction(&h, "k", with(json!("acc-1"))).await;
    let dead = read_json(&h.topics.dlq, 1, Duration::from_secs(20), |_| true);
    assert_eq!(dead[0]["reason"], "key_error");
    assert_eq!(dead[0]["rule"], "by-account");
    assert!(dead[0]["detail"]
        .as_str()
        .unwrap()
        .contains("did not give text or a number"));
    let sent = read_json(&h.topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(sent[0]["status"], "sent", "the next events still count");
    h.running.stop().await;
}

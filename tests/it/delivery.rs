//! Delivery edge cases on the real broker: a signed webhook, and a provider
//! that hangs (the request times out, the decision is recorded, nothing is lost).

use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;

async fn start(
    topics: &Topics,
    provider: &Provider,
    rules: &str,
    timeout_ms: u32,
) -> (tempfile::TempDir, herald::Running) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    let extra = format!(
        "[channels.hook]\nprovider = \"webhook\"\nbase_url = \"{}/hook\"\nsecret_env = \"HERALD_TEST_WEBHOOK_SECRET\"\n",
        provider.base_url()
    );
    let text = config_text(topics, dir.path(), &provider.base_url(), &extra)
        .replace("timeout_ms = 2000", &format!("timeout_ms = {timeout_ms}"));
    let (_, config) = load_config(dir.path(), &text);
    let running = herald::start(config).await.expect("herald starts");
    (dir, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_signed_and_carries_the_message() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let mut p = profile_json("site-1", false, false);
    p["consent"]["hook"] = true.into();
    publish(
        &producer(),
        &topics.profiles,
        "site-1",
        p.to_string().as_bytes(),
    )
    .await;
    let rules = format!(
        "rules:\n  - id: freezer-hook\n    sources: [{}]\n    condition: event.value > event.limit\n    channels: [hook]\n    category: operations\n    template:\n      title: \"{{{{ event.device_id }}}}\"\n      text: \"{{{{ event.value }}}} above {{{{ event.limit }}}}\"\n",
        topics.sensors
    );
    let (_dir, running) = start(&topics, &provider, &rules, 2000).await;
    let reading = serde_json::json!({"device_id": "freezer-1", "owner_id": "site-1", "ts": herald::util::now_ms(), "value": -4.0, "limit": -10.0});
    publish(
        &producer(),
        &topics.sensors,
        "freezer-1",
        reading.to_string().as_bytes(),
    )
    .await;
    let got = eventually(Duration::from_secs(20), || {
        let r = provider.received_by("webhook");
        (!r.is_empty()).then_some(r)
    })
    .await
    .expect("a webhook request");
    assert!(
        got[0].auth_ok,
        "HMAC-SHA256 signature and idempotency key verified"
    );
    assert_eq!(got[0].content_type, "application/json");
    assert_eq!(got[0].json["rule"], "freezer-hook");
    assert_eq!(got[0].json["user"], "site-1");
    assert_eq!(got[0].json["title"], "freezer-1");
    assert_eq!(got[0].json["body"], "-4.0 above -10.0");
    let outcome = read_json(&topics.outcomes, 1, Duration::from_secs(10), |_| true);
    assert_eq!(outcome[0]["status"], "sent");
    assert_eq!(outcome[0]["provider_message_id"], "hook-1");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_provider_is_retried_while_fresh_then_recorded_and_the_stream_goes_on() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    publish_profile(&topics, "u-1", true, false).await;
    let rules = every_swipe_rule(&topics.transactions, "policy: { max_age_s: 5 }");
    let (_dir, running) = start(&topics, &provider, &rules, 300).await;
    wait_ready(running.admin_addr()).await;
    provider.delay(Duration::from_secs(3));
    let p = producer();
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 1.0, "approved", "US"),
    )
    .await;
    let first = read_json(&topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(first[0]["status"], "failed");
    assert_eq!(
        first[0]["reason"], "stale_after_outage:provider_unreachable",
        "retried (each attempt timing out after 2 s) until the message was 5 s old"
    );
    assert!(first[0]["attempts"].as_u64().unwrap() >= 2, "{first:?}");
    let dead = read_json(&topics.dlq, 1, Duration::from_secs(10), |_| true);
    assert_eq!(
        dead[0]["reason"],
        "send_failed:stale_after_outage:provider_unreachable"
    );

    provider.delay(Duration::ZERO);
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 2.0, "approved", "US"),
    )
    .await;
    let both = read_json(&topics.outcomes, 2, Duration::from_secs(20), |_| true);
    assert_eq!(
        both[1]["status"], "sent",
        "the next event is delivered once the provider answers"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_capped_messages_are_suppressed_with_their_reasons() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let mut opted_in = profile_json("u-1", true, false);
    opted_in["preferences"]["marketing"] = true.into();
    publish(
        &producer(),
        &topics.profiles,
        "u-1",
        opted_in.to_string().as_bytes(),
    )
    .await;
    // Marketing: the default caps (3/day, 1/hour) and freshness (1 h) apply;
    // quiet hours are turned off so the test does not depend on the clock.
    let rules = format!(
        "rules:\n  - id: offer\n    sources: [{}]\n    channels: [push]\n    category: marketing\n    policy: {{ quiet_hours: \"off\" }}\n    template:\n      body: \"offer {{{{ event.amount }}}}\"\n",
        topics.transactions
    );
    let (_dir, running) = start(&topics, &provider, &rules, 2000).await;
    let p = producer();
    let old = serde_json::json!({"user_id": "u-1", "ts": herald::util::now_ms() - 7_200_000, "amount": 1.0});
    publish(&p, &topics.transactions, "card", old.to_string().as_bytes()).await;
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 2.0, "approved", "US"),
    )
    .await;
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 3.0, "approved", "US"),
    )
    .await;
    let mut all = read_json(&topics.outcomes, 3, Duration::from_secs(25), |_| true);
    // Decided in order; recorded as each finishes (the capped one does not
    // wait for the provider, so its outcome may come first): in event order.
    all.sort_by_key(|o| o["source"]["offset"].as_i64());
    let reasons: Vec<&str> = all
        .iter()
        .map(|o| o["reason"].as_str().unwrap_or("sent"))
        .collect();
    assert!(
        reasons[0].starts_with("stale:72") && reasons[0].ends_with("s>3600s"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1..], ["sent", "cap:marketing:1/hour"]);
    assert_eq!(provider.received_by("fcm").len(), 1);
    let (_, metrics) = admin_get(running.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("herald_suppressions_total{reason=\"cap\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_rule_decisions_total{rule=\"offer\",status=\"suppressed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_suppressions_total{reason=\"stale\"} 1"),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_over_fcms_4096_byte_limit_fails_before_sending() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    publish_profile(&topics, "u-1", true, false).await;
    let rules = format!(
        "rules:\n  - id: long-note\n    sources: [{}]\n    channels: [push]\n    category: transactional\n    template:\n      body: \"{{% for i in range(600) %}}{{{{ event.note }}}}{{% endfor %}}\"\n",
        topics.transactions
    );
    let (_dir, running) = start(&topics, &provider, &rules, 2000).await;
    wait_ready(running.admin_addr()).await;
    let event = serde_json::json!({
        "user_id": "u-1", "ts": herald::util::now_ms(), "status": "approved", "note": "0123456789",
    });
    publish(
        &producer(),
        &topics.transactions,
        "card",
        event.to_string().as_bytes(),
    )
    .await;
    let outcome = read_json(&topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(outcome[0]["status"], "failed");
    assert_eq!(outcome[0]["reason"], "payload_too_large");
    assert!(
        provider.received_by("fcm").is_empty(),
        "FCM would refuse it; nothing sent"
    );
    running.stop().await;
}

//! The policy stage end to end on the real broker: STOP/START/HELP and replies
//! on the feedback topic, fallback chains, cross-channel suppression, held
//! messages and de-duplication across a restart.

use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;
use serde_json::{json, Value};

const PHONE: &str = "+14155552671";

struct Harness {
    topics: Topics,
    provider: Provider,
    rules: tempfile::TempDir,
    running: herald::Running,
    /// The config, to start the same instance (same consumer group) again.
    text: String,
}

async fn harness(rules_yaml: &str, profiles: &[(&str, Value)], extra: &str) -> Harness {
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        rules_yaml.replace("SOURCE", &topics.transactions),
    )
    .unwrap();
    let producer = producer();
    for (user, p) in profiles {
        publish(&producer, &topics.profiles, user, p.to_string().as_bytes()).await;
    }
    let text = config_text(&topics, rules.path(), &provider.base_url(), extra);
    let running = start(&rules, &text).await;
    Harness {
        topics,
        provider,
        rules,
        running,
        text,
    }
}

async fn start(rules: &tempfile::TempDir, text: &str) -> herald::Running {
    let (_, config) = load_config(rules.path(), text);
    let running = herald::start(config).await.expect("herald starts");
    wait_ready(running.admin_addr()).await;
    running
}

/// Outcomes of `user`, waiting until there are `want`.
fn outcomes_of(h: &Harness, user: &str, want: usize) -> Vec<Value> {
    read_json(&h.topics.outcomes, want, Duration::from_secs(20), |o| {
        o["user"] == user
    })
}

async fn feedback(h: &Harness, key: &str, record: Value) {
    publish(
        &producer(),
        &h.topics.feedback,
        key,
        record.to_string().as_bytes(),
    )
    .await;
}

/// An approved card swipe of `amount` USD on `card`, for `user`.
async fn approved_swipe(h: &Harness, card: &str, user: &str, amount: f64) {
    publish(
        &producer(),
        &h.topics.transactions,
        card,
        &swipe(user, amount, "approved", "US"),
    )
    .await;
}

/// A push decision (`push_status`) followed by an SMS sent in its place, with the hop's reason.
fn assert_fell_back_to_sms(outcomes: &[Value], push_status: &str, reason: &str) {
    assert_eq!(outcomes[0]["channel"], "push", "{outcomes:?}");
    assert_eq!(outcomes[0]["status"], push_status);
    assert_eq!(outcomes[1]["channel"], "sms");
    assert_eq!(outcomes[1]["status"], "sent");
    assert_eq!(
        outcomes[1]["hops"],
        json!([{"channel": "push", "reason": reason}])
    );
}

async fn metric(h: &Harness, line: &str) -> bool {
    admin_get(h.running.admin_addr(), "/metrics")
        .await
        .1
        .lines()
        .any(|l| l == line)
}

const FRAUD_SMS: &str = r#"
rules:
  - id: foreign-sms
    sources: [SOURCE]
    match: { status: approved }
    channels: [sms]
    category: fraud
    template:
      text: "{{ event.amount | money(event.currency) }} at {{ event.merchant }}. Was this you? Reply YES or NO."
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_blocks_the_very_next_sms_start_restores_help_answers_and_replies_become_events() {
    let h = harness(
        FRAUD_SMS,
        &[("u-1", profile_json("u-1", false, true))],
        "[feedback]\nhelp_channel = \"sms\"\n",
    )
    .await;
    let twilio_to = |h: &Harness| -> Vec<String> {
        h.provider
            .received_by("twilio")
            .iter()
            .map(|r| r.form["Body"].clone())
            .collect()
    };

    // STOP, and at once a transaction: no SMS.
    let inbound = |body: &str| {
        json!({"MessageSid": "SM1", "AccountSid": TWILIO_SID, "From": PHONE,
               "To": "+15005550006", "Body": body, "NumMedia": "0"})
    };
    feedback(&h, PHONE, inbound("Stop")).await;
    approved_swipe(&h, "card-1", "u-1", 40.0).await;
    let first = outcomes_of(&h, "u-1", 1);
    assert_eq!(first[0]["status"], "suppressed", "{first:?}");
    assert_eq!(first[0]["reason"], "no_consent:sms:opted_out");
    assert!(twilio_to(&h).is_empty(), "no SMS after STOP");
    let consent = read_json(&h.topics.consent, 1, Duration::from_secs(10), |_| true);
    assert_eq!(consent[0]["phone"], PHONE, "published for the CRM");
    assert_eq!(consent[0]["consent"], false);
    assert_eq!(consent[0]["keyword"], "STOP");

    // START, then a transaction: the SMS goes out.
    feedback(&h, PHONE, inbound("START")).await;
    approved_swipe(&h, "card-1", "u-1", 41.0).await;
    let both = outcomes_of(&h, "u-1", 2);
    assert_eq!(both[1]["status"], "sent", "{both:?}");
    assert_eq!(twilio_to(&h).len(), 1);

    // HELP is answered with the configured help text.
    feedback(&h, PHONE, inbound("help")).await;
    let bodies = eventually(Duration::from_secs(10), || {
        let b = twilio_to(&h);
        (b.len() == 2).then_some(b)
    })
    .await
    .expect("a HELP answer");
    assert!(
        bodies[1].contains("Reply STOP to unsubscribe"),
        "{bodies:?}"
    );

    // NO to "was this you?" becomes an event naming the message it answers.
    feedback(&h, PHONE, inbound("NO")).await;
    let replies = read_json(&h.topics.replies, 1, Duration::from_secs(10), |_| true);
    let reply = &replies[0];
    assert_eq!(reply["type"], "sms_reply");
    assert_eq!(reply["text"], "NO");
    assert_eq!(reply["user"], "u-1");
    assert_eq!(reply["rule"], "foreign-sms");
    assert_eq!(reply["key"], "card-1");
    assert_eq!(reply["idempotency_key"], both[1]["idempotency_key"]);
    assert!(!reply.to_string().contains(PHONE), "no phone in the event");

    assert!(
        metric(
            &h,
            "herald_feedback_total{kind=\"stop\",result=\"applied\"} 1"
        )
        .await
    );
    assert!(
        metric(
            &h,
            "herald_rule_suppressions_total{reason=\"no_consent\",rule=\"foreign-sms\"} 1"
        )
        .await
    );
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_to_sms_when_there_is_no_push_token_with_each_hop_recorded() {
    let mut tokenless = profile_json("u-2", true, true);
    tokenless["push_tokens"] = json!([]);
    let h = harness(
        r#"
rules:
  - id: purchase
    sources: [SOURCE]
    match: { status: approved }
    fallback: [push, sms]
    category: transactional
    template:
      title: "Purchase"
      body: "{{ event.amount | money(event.currency) }} at {{ event.merchant }}"
"#,
        &[("u-2", tokenless), ("u-3", profile_json("u-3", true, true))],
        "",
    )
    .await;
    approved_swipe(&h, "card-2", "u-2", 9.0).await;
    approved_swipe(&h, "card-3", "u-3", 9.0).await;

    let hops = outcomes_of(&h, "u-2", 2);
    assert_fell_back_to_sms(&hops, "suppressed", "no_address:push");
    assert_eq!(hops[0]["reason"], "no_address:push");
    assert_eq!(hops[0]["next_channel"], "sms");
    let with_token = outcomes_of(&h, "u-3", 1);
    assert_eq!(with_token[0]["channel"], "push");
    assert_eq!(with_token[0]["status"], "sent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        outcomes_of(&h, "u-3", 2).len(),
        1,
        "the chain stops at the first send"
    );
    assert_eq!(h.provider.received_by("twilio").len(), 1);
    assert_eq!(h.provider.received_by("fcm").len(), 1);
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_without_a_delivery_receipt_in_time_falls_back_to_sms() {
    let h = harness(
        r#"
rules:
  - id: purchase
    sources: [SOURCE]
    match: { status: approved }
    fallback: [push, sms]
    await_delivery: 1s
    category: transactional
    template:
      body: "{{ event.amount | money(event.currency) }} at {{ event.merchant }}"
"#,
        &[
            ("u-8", profile_json("u-8", true, true)),
            ("u-9", profile_json("u-9", true, true)),
        ],
        "",
    )
    .await;
    approved_swipe(&h, "card-8", "u-8", 3.0).await;
    let pushed = outcomes_of(&h, "u-8", 1);
    assert_eq!(pushed[0]["status"], "sent");
    // The app reports delivery of u-8's push at once.
    feedback(
        &h,
        "u-8",
        json!({"type": "push_delivered", "user": "u-8",
               "message": pushed[0]["idempotency_key"]}),
    )
    .await;
    approved_swipe(&h, "card-9", "u-9", 3.0).await;
    let fell_back = outcomes_of(&h, "u-9", 2);
    assert_fell_back_to_sms(&fell_back, "sent", "not_delivered:push:1s");
    assert!(
        fell_back[1]["timings"]["request_sent_ms"].as_i64().unwrap()
            >= fell_back[0]["timings"]["request_sent_ms"].as_i64().unwrap() + 1000
    );
    // u-8's wait ended before u-9's (it started first): delivered, no SMS.
    assert!(metric(&h, "herald_held_released_total{result=\"delivered\"} 1").await);
    let sms: Vec<_> = h.provider.received_by("twilio");
    assert_eq!(
        sms.len(),
        1,
        "only u-9, whose push was not confirmed, gets the SMS"
    );
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_email_suppresses_the_push_and_a_push_action_becomes_an_event() {
    let h = harness(
        r#"
rules:
  - id: spring-offer
    sources: [SOURCE]
    match: { status: approved }
    channels: [push]
    category: promotions
    campaign: spring-sale
    push_actions: { category: OFFER, buttons: [claim, dismiss] }
    policy:
      suppress_if:
        - { engaged: email_opened, within: 2h }
    template:
      body: "Spring sale at {{ event.merchant }}"
"#,
        &[
            ("u-4", profile_json("u-4", true, false)),
            ("u-5", profile_json("u-5", true, false)),
        ],
        "",
    )
    .await;
    feedback(
        &h,
        "u-4",
        json!({"type": "email_opened", "user": "u-4", "campaign": "spring-sale"}),
    )
    .await;
    feedback(
        &h,
        "u-5",
        json!({"type": "email_opened", "user": "u-5", "campaign": "winter-sale"}),
    )
    .await;
    feedback(
        &h,
        "x",
        json!({"type": "email_opened", "message": "no-such-message"}),
    )
    .await;
    publish(&producer(), &h.topics.feedback, "x", b"not json").await;
    approved_swipe(&h, "card-4", "u-4", 5.0).await;
    approved_swipe(&h, "card-5", "u-5", 5.0).await;

    let u4 = outcomes_of(&h, "u-4", 1);
    assert_eq!(u4[0]["status"], "suppressed");
    assert_eq!(u4[0]["reason"], "suppressed_by:email_opened");
    let u5 = outcomes_of(&h, "u-5", 1);
    assert_eq!(
        u5[0]["status"], "sent",
        "another campaign's email does not count"
    );
    let push = h.provider.received_by("fcm");
    assert_eq!(push.len(), 1);
    let m = &push[0].json["message"];
    assert_eq!(m["apns"]["payload"]["aps"]["category"], "OFFER");
    assert_eq!(m["android"]["notification"]["click_action"], "OFFER");
    assert_eq!(m["data"]["actions"], "claim,dismiss");
    assert_eq!(m["data"]["key"], "card-5");

    // The app echoes the push data when a button is pressed.
    feedback(
        &h,
        "u-5",
        json!({"type": "push_action", "action": "claim", "user": "u-5",
               "rule": m["data"]["rule"], "key": m["data"]["key"],
               "idempotency_key": m["data"]["idempotency_key"]}),
    )
    .await;
    let replies = read_json(&h.topics.replies, 1, Duration::from_secs(10), |_| true);
    assert_eq!(replies[0]["type"], "push_action");
    assert_eq!(replies[0]["action"], "claim");
    assert_eq!(replies[0]["rule"], "spring-offer");
    assert_eq!(replies[0]["key"], "card-5");
    assert_eq!(replies[0]["idempotency_key"], u5[0]["idempotency_key"]);

    let dead = read_json(&h.topics.dlq, 1, Duration::from_secs(10), |_| true);
    assert_eq!(dead[0]["reason"], "feedback_not_object");
    assert!(
        metric(
            &h,
            "herald_feedback_total{kind=\"engagement\",result=\"unknown_message\"} 1"
        )
        .await
    );
    assert!(metric(&h, "herald_suppressions_total{reason=\"suppressed_by\"} 1").await);
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_quiet_hours_is_held_through_a_restart_and_sent_when_they_end() {
    // Quiet hours from this minute to the next: the release comes within a minute.
    let window = quiet_window_now(45).await;
    let mut utc = profile_json("u-6", true, false);
    utc["time_zone"] = json!("UTC");
    let h = harness(
        &format!(
            r#"
rules:
  - id: evening-offer
    sources: [SOURCE]
    match: {{ status: approved }}
    channels: [push]
    category: promotions
    policy: {{ quiet_hours: "{window}", on_quiet_hours: hold, max_age_s: 600 }}
    template:
      body: "Thanks for shopping at {{{{ event.merchant }}}}"
"#
        ),
        &[("u-6", utc)],
        "",
    )
    .await;
    approved_swipe(&h, "card-6", "u-6", 5.0).await;
    let held = outcomes_of(&h, "u-6", 1);
    assert_eq!(held[0]["status"], "held", "{held:?}");
    let reason = held[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("quiet_hours:{window}")),
        "a held outcome says why: {held:?}"
    );
    assert!(
        metric(
            &h,
            "herald_decisions_total{channel=\"push\",status=\"held\"} 1"
        )
        .await,
        "the decisions metric counts the held outcome"
    );
    assert_decisions_match_outcomes(h.running.admin_addr(), &held).await;
    let release = held[0]["release_ms"].as_i64().unwrap();
    assert!(release > held[0]["timings"]["event_ms"].as_i64().unwrap());
    assert!(
        h.provider.received_by("fcm").is_empty(),
        "nothing sent in quiet hours"
    );
    assert!(metric(&h, "herald_held_messages 1").await);
    // At rest the held message keeps of the event only what its template
    // reads (the merchant), not the whole transaction.
    let record = read_json(&h.topics.held, 1, Duration::from_secs(10), |_| true);
    let kept: Vec<&String> = record[0]["event"]["fields"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(kept, ["merchant"], "{record:?}");

    // Stop and start again in the same consumer group: the event is not
    // delivered again; the held message comes back from the held topic.
    let Harness {
        topics,
        provider,
        rules,
        running,
        text,
    } = h;
    running.stop().await;
    let running = start(&rules, &text).await;
    let h = Harness {
        topics,
        provider,
        rules,
        running,
        text,
    };
    let both = read_json(&h.topics.outcomes, 2, Duration::from_secs(90), |o| {
        o["user"] == "u-6"
    });
    assert_eq!(both.len(), 2, "released: {both:?}");
    assert_eq!(both[1]["status"], "sent");
    assert_eq!(both[1]["idempotency_key"], held[0]["idempotency_key"]);
    assert!(both[1]["timings"]["request_sent_ms"].as_i64().unwrap() >= release);
    assert_eq!(h.provider.received_by("fcm").len(), 1);
    assert!(metric(&h, "herald_held_released_total{result=\"sent\"} 1").await);
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_again_after_a_restart_is_not_sent_twice() {
    let h = harness(FRAUD_SMS, &[("u-7", profile_json("u-7", false, true))], "").await;
    approved_swipe(&h, "card-7", "u-7", 7.0).await;
    assert_eq!(outcomes_of(&h, "u-7", 1)[0]["status"], "sent");
    h.running.stop().await;

    // The group reads the source topic from the start again, as after a
    // crash before the commit: the same event comes a second time, and the
    // send ledger (restored from its changelog) knows its intent.
    rewind_group(&group_of(&h.text), &h.topics.transactions);
    let again = start(&h.rules, &h.text).await;
    let both = read_json(&h.topics.outcomes, 2, Duration::from_secs(20), |o| {
        o["user"] == "u-7"
    });
    assert_eq!(both.len(), 2);
    assert_eq!(both[1]["status"], "suppressed");
    assert_eq!(both[1]["reason"], "duplicate");
    assert_eq!(both[1]["idempotency_key"], both[0]["idempotency_key"]);
    assert_eq!(h.provider.received_by("twilio").len(), 1, "one SMS only");
    again.stop().await;
}

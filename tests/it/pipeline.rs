//! End to end on the real broker: events in, provider requests out, outcomes and dead letters recorded.

use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;
use serde_json::Value;

struct Harness {
    topics: Topics,
    provider: Provider,
    _rules: tempfile::TempDir,
    running: herald::Running,
    group: String,
    config: std::path::PathBuf,
}

async fn harness(profiles: &[(&str, Vec<u8>)]) -> Harness {
    let topics = Topics::create(3).await;
    let provider = Provider::start().await;
    let rules = sample_rules(&topics);
    let producer = producer();
    for (user, p) in profiles {
        publish(&producer, &topics.profiles, user, p).await;
    }
    let text = config_text(&topics, rules.path(), &provider.base_url(), "");
    let (path, config) = load_config(rules.path(), &text);
    let running = herald::start(config).await.expect("herald starts");
    Harness {
        topics,
        provider,
        _rules: rules,
        running,
        group: group_of(&text),
        config: path,
    }
}

/// `herald inspect <args> --config <config>`: exit code, stdout, stderr.
fn inspect(args: &[&str], config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("inspect")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn outcomes(h: &Harness, want: usize) -> Vec<Value> {
    read_json(&h.topics.outcomes, want, Duration::from_secs(20), |_| true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_swipe_becomes_an_fcm_push_with_rendered_text() {
    let h = harness(&[("u-1", profile("u-1", true, true))]).await;
    wait_ready(h.running.admin_addr()).await;
    let mut with_pan: Value =
        serde_json::from_slice(&swipe("u-1", 12.5, "approved", "US")).unwrap();
    with_pan["pan"] = "4111 1111 1111 1111".into();
    publish(
        &producer(),
        &h.topics.transactions,
        "card-1",
        &serde_json::to_vec(&with_pan).unwrap(),
    )
    .await;

    let got = eventually(Duration::from_secs(20), || {
        let r = h.provider.received_by("fcm");
        (!r.is_empty()).then_some(r)
    })
    .await
    .expect("an FCM request");
    let req = &got[0];
    assert!(req.auth_ok, "bearer token from the environment");
    assert_eq!(req.account, "herald-test");
    assert_eq!(req.json["message"]["token"], "fcm-token-u-1");
    assert_eq!(
        req.json["message"]["notification"]["title"],
        "$12.50 at Blue Bottle"
    );
    let body = req.json["message"]["notification"]["body"]
        .as_str()
        .unwrap();
    assert!(body.starts_with("Card •••• 4242 was used at "), "{body}");
    assert_eq!(req.json["message"]["android"]["priority"], "HIGH");
    assert_eq!(req.json["message"]["android"]["collapse_key"], "purchase");
    assert_eq!(req.json["message"]["android"]["ttl"], "600s");
    assert_eq!(
        req.json["message"]["apns"]["headers"]["apns-collapse-id"],
        "purchase"
    );

    // Between the stages the event is at rest: its card number masked.
    let intents = read_json(
        &format!("{}.intents", h.group),
        1,
        Duration::from_secs(10),
        |_| true,
    );
    assert_eq!(intents[0]["event"]["fields"]["pan"], "**** **** **** 1111");
    assert_eq!(intents[0]["event"]["fields"]["card_last4"], "4242");
    // An operator reads the binary intents as JSON with `herald inspect`.
    let intents_topic = format!("{}.intents", h.group);
    let (code, out, err) = inspect(&[&intents_topic, "--last", "5"], &h.config);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["value"]["rule"], "purchase-notice", "{out}");
    assert_eq!(
        lines[0]["value"]["event"]["fields"]["pan"],
        "**** **** **** 1111"
    );
    // A name that is not a topic: the topics it may have meant.
    let (code, _, err) = inspect(&[&h.group, "--last", "1"], &h.config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&intents_topic), "{err}");

    let sent = outcomes(&h, 1);
    assert_eq!(sent.len(), 1, "one decision: the purchase notice");
    let o = &sent[0];
    assert_eq!(o["rule"], "purchase-notice");
    assert_eq!(o["status"], "sent");
    assert_eq!(o["channel"], "push");
    assert!(o["provider_message_id"]
        .as_str()
        .unwrap()
        .starts_with("projects/herald-test/messages/"));
    let t = &o["timings"];
    for stage in [
        "event_ms",
        "consumed_ms",
        "matched_ms",
        "request_sent_ms",
        "answered_ms",
    ] {
        assert!(t[stage].as_i64().unwrap() > 0, "timing {stage} recorded");
    }
    let raw = o.to_string();
    assert!(
        !raw.contains("fcm-token-u-1"),
        "no push token in clear: {raw}"
    );
    assert!(!raw.contains("+14155552671"), "no phone in clear");
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_purchase_becomes_a_twilio_sms_with_form_fields() {
    let h = harness(&[("u-2", profile("u-2", false, true))]).await;
    publish(
        &producer(),
        &h.topics.transactions,
        "card-2",
        &swipe("u-2", 80.0, "approved", "FR"),
    )
    .await;

    let got = eventually(Duration::from_secs(25), || {
        let r = h.provider.received_by("twilio");
        (!r.is_empty()).then_some(r)
    })
    .await
    .expect("a Twilio request");
    let req = &got[0];
    assert!(
        req.auth_ok,
        "HTTP basic auth with the account SID and token"
    );
    assert_eq!(req.account, TWILIO_SID);
    assert_eq!(req.content_type, "application/x-www-form-urlencoded");
    assert_eq!(req.form["To"], "+14155552671");
    assert_eq!(req.form["From"], "+15005550006");
    assert_eq!(
        req.form["Body"],
        "herald: $80.00 at Blue Bottle (FR) on card **** 4242. Not you? Reply NO."
    );
    // The purchase notice is also matched but push consent is off.
    let all = outcomes(&h, 2);
    let push = all
        .iter()
        .find(|o| o["rule"] == "purchase-notice")
        .expect("push decision");
    assert_eq!(push["status"], "suppressed");
    assert_eq!(push["reason"], "no_consent:push");
    let sms = all
        .iter()
        .find(|o| o["rule"] == "large-or-foreign-purchase")
        .unwrap();
    assert_eq!(sms["status"], "sent");
    assert_eq!(sms["recipient"], "+141******71");
    // What the carrier bills: the mask's bullets are not GSM-7, so they go
    // as `*` (as Twilio's Smart Encoding sends them) and the 72 characters
    // fit one GSM-7 segment instead of two UCS-2 ones.
    assert_eq!(
        sms["sms"],
        serde_json::json!({"encoding": "GSM-7", "units": 72, "segments": 1})
    );
    assert!(push.get("sms").is_none(), "a push has no SMS size");
    assert!(
        h.provider.received_by("fcm").is_empty(),
        "no push without consent"
    );
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_profile_or_consent_is_suppressed_without_a_request() {
    let h = harness(&[("u-3", profile("u-3", false, false))]).await;
    let p = producer();
    publish(
        &p,
        &h.topics.transactions,
        "card-3",
        &swipe("u-3", 2000.0, "approved", "US"),
    )
    .await;
    publish(
        &p,
        &h.topics.transactions,
        "card-4",
        &swipe("nobody", 5.0, "declined", "US"),
    )
    .await;

    let all = outcomes(&h, 3);
    assert_eq!(all.len(), 3, "{all:?}");
    let reason = |rule: &str| {
        all.iter()
            .find(|o| o["rule"] == rule)
            .map(|o| {
                (
                    o["status"].as_str().unwrap().to_string(),
                    o["reason"].as_str().unwrap().to_string(),
                )
            })
            .unwrap()
    };
    assert_eq!(
        reason("purchase-notice"),
        ("suppressed".into(), "no_consent:push".into())
    );
    assert_eq!(
        reason("large-or-foreign-purchase"),
        ("suppressed".into(), "no_consent:sms".into())
    );
    assert_eq!(
        reason("declined-transaction"),
        ("suppressed".into(), "no_profile".into())
    );
    assert!(
        h.provider.received().is_empty(),
        "no provider request at all"
    );
    let (_, metrics) = admin_get(h.running.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("herald_suppressions_total{reason=\"no_consent\"} 2"),
        "{metrics}"
    );
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_go_to_the_dead_letter_topic_and_the_stream_goes_on() {
    let h = harness(&[("u-5", profile("u-5", true, false))]).await;
    let p = producer();
    // Same key, so the valid event is behind the bad ones in the same partition.
    publish(&p, &h.topics.transactions, "card-5", b"this is not json").await;
    publish(&p, &h.topics.transactions, "card-5", &vec![b'x'; 4096]).await;
    publish(&p, &h.topics.transactions, "card-5", b"[1, 2, 3]").await;
    publish(
        &p,
        &h.topics.transactions,
        "card-5",
        br#"{"amount": 3.0, "ts": 1, "pan": "4111 1111 1111 1111"}"#,
    )
    .await;
    publish(
        &p,
        &h.topics.transactions,
        "card-5",
        &swipe("u-5", 7.0, "approved", "US"),
    )
    .await;

    let dead = read_json(&h.topics.dlq, 4, Duration::from_secs(25), |_| true);
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        vec!["not_json", "too_large", "not_object", "missing_field"]
    );
    let first = &dead[0];
    assert_eq!(first["topic"], h.topics.transactions.as_str());
    assert!(first["offset"].as_i64().is_some() && first["partition"].as_i64().is_some());
    use base64::Engine;
    let original = base64::engine::general_purpose::STANDARD
        .decode(first["payload_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(original, b"this is not json");
    assert!(dead[3]["detail"].as_str().unwrap().contains("user_id"));
    // A card number is not kept at rest in clear: its last four digits only.
    let missing_user = base64::engine::general_purpose::STANDARD
        .decode(dead[3]["payload_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(missing_user).unwrap(),
        r#"{"amount": 3.0, "ts": 1, "pan": "**** **** **** 1111"}"#
    );
    assert_eq!(dead[3]["card_numbers_masked"], true);

    let sent = eventually(Duration::from_secs(20), || {
        let r = h.provider.received_by("fcm");
        (!r.is_empty()).then_some(r)
    })
    .await
    .expect("the valid event after the bad ones is still sent");
    assert_eq!(sent[0].json["message"]["token"], "fcm-token-u-5");
    let (_, metrics) = admin_get(h.running.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("herald_dead_letters_total{reason=\"not_json\"} 1"),
        "{metrics}"
    );
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_503_twice_then_200_is_one_send_and_400_is_failed() {
    let h = harness(&[("u-6", profile("u-6", true, false))]).await;
    h.provider.plan(&[503, 503]);
    let p = producer();
    publish(
        &p,
        &h.topics.transactions,
        "card-6",
        &swipe("u-6", 9.0, "approved", "US"),
    )
    .await;
    let first = read_json(&h.topics.outcomes, 1, Duration::from_secs(25), |_| true);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["status"], "sent");
    assert_eq!(first[0]["attempts"], 3);
    let requests = h.provider.received_by("fcm");
    assert_eq!(requests.len(), 3, "two retried 503s and one success");
    let keys: Vec<&Value> = requests
        .iter()
        .map(|r| &r.json["message"]["data"]["idempotency_key"])
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "retries carry the same idempotency key"
    );

    h.provider.plan(&[400]);
    publish(
        &p,
        &h.topics.transactions,
        "card-6",
        &swipe("u-6", 10.0, "approved", "US"),
    )
    .await;
    let all = read_json(&h.topics.outcomes, 2, Duration::from_secs(25), |_| true);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1]["status"], "failed");
    assert_eq!(all[1]["reason"], "provider_rejected:400");
    assert_eq!(all[1]["attempts"], 1, "a 400 is not retried");
    let dead = read_json(&h.topics.dlq, 1, Duration::from_secs(10), |_| true);
    assert_eq!(dead[0]["reason"], "send_failed:provider_rejected:400");
    assert_eq!(dead[0]["rule"], "purchase-notice");
    assert_eq!(h.provider.received_by("fcm").len(), 4);
    assert_decisions_match_outcomes(h.running.admin_addr(), &all).await;
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_token_is_not_used_again() {
    let h = harness(&[("u-7", profile("u-7", true, false))]).await;
    h.provider.plan(&[404]);
    let p = producer();
    publish(
        &p,
        &h.topics.transactions,
        "card-7",
        &swipe("u-7", 1.0, "approved", "US"),
    )
    .await;
    // Once herald has the provider's answer, the token is not used again
    // (a message decided while the first request was in flight may still
    // try it: one user's sends overlap).
    read_json(&h.topics.outcomes, 1, Duration::from_secs(25), |_| true);
    publish(
        &p,
        &h.topics.transactions,
        "card-7",
        &swipe("u-7", 2.0, "approved", "US"),
    )
    .await;
    let all = read_json(&h.topics.outcomes, 2, Duration::from_secs(25), |_| true);
    assert_eq!(all[0]["status"], "failed");
    assert_eq!(all[0]["reason"], "token_unregistered");
    assert_eq!(all[1]["status"], "suppressed");
    assert_eq!(all[1]["reason"], "dead_tokens:push");
    assert_eq!(h.provider.received_by("fcm").len(), 1);
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_with_an_invalid_phone_is_kept_and_sms_is_suppressed_with_the_reason() {
    let mut p = profile_json("u-8", true, true);
    p["phone"] = "+1 555".into();
    p["time_zone"] = "Mars/Olympus".into();
    let h = harness(&[("u-8", p.to_string().into_bytes())]).await;
    publish(
        &producer(),
        &h.topics.transactions,
        "card-8",
        &swipe("u-8", 50.0, "approved", "FR"),
    )
    .await;
    let all = outcomes(&h, 2);
    let by_rule = |rule: &str| all.iter().find(|o| o["rule"] == rule).unwrap().clone();
    assert_eq!(
        by_rule("purchase-notice")["status"],
        "sent",
        "the valid parts of the profile are used"
    );
    assert_eq!(
        by_rule("large-or-foreign-purchase")["reason"],
        "invalid_phone:sms"
    );
    assert!(h.provider.received_by("twilio").is_empty());
    let (_, metrics) = admin_get(h.running.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("herald_profile_errors_total 2"),
        "phone and time zone reported"
    );
    h.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_answers_what_would_be_sent_without_sending_or_counting() {
    let h = harness(&[("u-9", profile("u-9", true, false))]).await;
    wait_ready(h.running.admin_addr()).await;
    let event = serde_json::json!({"user_id": "u-9", "card_last4": "4242", "merchant": "Harrods",
        "amount": 80.0, "currency": "USD", "country": "GB", "home_country": "US", "status": "approved"});
    // A bound on every request: a hung endpoint fails the test, not CI.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let answer: Value = client
        .post(format!("http://{}/rules/evaluate", h.running.admin_addr()))
        .json(&serde_json::json!({"topic": h.topics.transactions, "key": "card-9", "event": event}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["user"], "u-9");
    let decisions = answer["decisions"].as_array().unwrap();
    let notice = decisions
        .iter()
        .find(|d| d["rule"] == "purchase-notice")
        .expect("the purchase notice");
    assert_eq!(notice["would"], "send");
    assert_eq!(notice["title"], "$80.00 at Harrods");
    let foreign = decisions
        .iter()
        .find(|d| d["rule"] == "large-or-foreign-purchase")
        .expect("the foreign purchase SMS");
    assert_eq!(foreign["would"], "suppressed");
    assert_eq!(
        foreign["reason"], "no_consent:sms",
        "the live profile was used"
    );
    let bad: Value = client
        .post(format!("http://{}/rules/evaluate", h.running.admin_addr()))
        .json(&serde_json::json!({"topic": "nope", "event": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bad["error"], "`nope` is not a configured source");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.provider.received().is_empty(), "nothing sent");
    let (_, metrics) = admin_get(h.running.admin_addr(), "/metrics").await;
    assert!(
        !metrics.contains("herald_rule_matches_total{rule=\"purchase-notice\"} 1"),
        "live counters untouched"
    );
    assert!(
        read_json(&h.topics.outcomes, 1, Duration::from_secs(1), |_| true).is_empty(),
        "no outcome written"
    );
    h.running.stop().await;
}

/// Stage 1 writes an intent again when it replays an event after a restart;
/// the copy can reach stage 2 while the first one's request is still out.
/// That is the same decision, not a send lost in a crash: one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_delivered_twice_while_its_push_is_in_flight_is_sent_once() {
    let h = harness(&[("u-1", profile("u-1", true, true))]).await;
    wait_ready(h.running.admin_addr()).await;
    // Under the client's 2 s timeout: one request, answered late.
    h.provider.delay(Duration::from_millis(1500));
    let swipe = swipe("u-1", 12.5, "approved", "US");
    publish(&producer(), &h.topics.transactions, "card-1", &swipe).await;
    let intents = format!("{}.intents", h.group);
    let written = eventually(Duration::from_secs(20), || {
        let r = read_all_records(&intents, Duration::from_millis(50), Duration::from_secs(2));
        (!r.is_empty()).then_some(r)
    })
    .await
    .expect("the intent");
    let (key, payload) = written[0].clone();
    let key = String::from_utf8(key.expect("intents are keyed")).unwrap();
    publish(&producer(), &intents, &key, &payload.expect("an intent")).await;
    eventually(Duration::from_secs(20), || {
        (!h.provider.received_by("fcm").is_empty()).then_some(())
    })
    .await
    .expect("the push");
    // Long enough for a second send, had the copy been taken for a crash.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let all = read_json(&h.topics.outcomes, 2, Duration::from_secs(10), |_| true);
    let sent: Vec<&Value> = all.iter().filter(|o| o["status"] == "sent").collect();
    assert_eq!(sent.len(), 1, "one send: {all:?}");
    assert!(sent[0].get("unknown_after_crash").is_none(), "{all:?}");
    assert_eq!(h.provider.received_by("fcm").len(), 1, "one push: {all:?}");
    let copy: Vec<&Value> = all.iter().filter(|o| o["status"] != "sent").collect();
    assert!(
        copy.iter().all(|o| o["reason"] == "duplicate"),
        "the copy is a duplicate: {all:?}"
    );
    h.running.stop().await;
}

//! Twilio's webhooks on herald's admin server, on the real broker: inbound
//! SMS and status callbacks are accepted only with Twilio's signature over the
//! public URL, reach the feedback topic, and take effect (STOP opts the
//! number out); every SMS carries a status callback naming its message.

use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;
use herald::deliver::twilio::inbound::signature;

const PUBLIC_URL: &str = "https://herald.example.com";

async fn start(topics: &Topics, provider: &Provider) -> (tempfile::TempDir, herald::Running) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        format!(
            "rules:\n  - id: sms-every-swipe\n    sources: [{}]\n    channels: [sms]\n    category: transactional\n    template:\n      text: \"Card used: {{{{ event.amount }}}}\"\n",
            topics.transactions
        ),
    )
    .unwrap();
    let text = config_text(topics, dir.path(), &provider.base_url(), "").replacen(
        "from = \"+15005550006\"\n",
        &format!("from = \"+15005550006\"\npublic_url = \"{PUBLIC_URL}/\"\n"),
        1,
    );
    let (_, config) = load_config(dir.path(), &text);
    let running = herald::start(config).await.expect("herald starts");
    (dir, running)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Posts a form to herald's admin server as Twilio would, signed over `signed_url`.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    signed_url: &str,
    form: &[(String, String)],
    token: &str,
) -> (u16, String, String) {
    let r = crate::support::http()
        .post(format!("http://{addr}{path}"))
        .header(
            "X-Twilio-Signature",
            signature(token.as_bytes(), signed_url, form),
        )
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, kind, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_inbound_stop_opts_the_number_out_and_a_forged_one_is_refused() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let (_dir, running) = start(&topics, &provider).await;
    let addr = running.admin_addr();
    wait_ready(addr).await;
    let stop = pairs(&[
        ("MessageSid", "SM0001"),
        ("AccountSid", TWILIO_SID),
        ("From", "+14155552671"),
        ("To", "+15005550006"),
        ("Body", "STOP"),
    ]);
    let url = format!("{PUBLIC_URL}/twilio/sms/inbound");
    let (forged, _, _) = post(addr, "/twilio/sms/inbound", &url, &stop, "not-the-token").await;
    assert_eq!(forged, 403, "a wrong signature is refused");
    let (local_url, _, _) = post(
        addr,
        "/twilio/sms/inbound",
        &format!("http://{addr}/twilio/sms/inbound"),
        &stop,
        TWILIO_TOKEN,
    )
    .await;
    assert_eq!(
        local_url, 403,
        "signed over the URL herald sees, not the public one Twilio calls: refused"
    );
    let (code, kind, body) = post(addr, "/twilio/sms/inbound", &url, &stop, TWILIO_TOKEN).await;
    assert_eq!((code, kind.as_str()), (200, "text/xml"));
    assert!(
        body.contains("<Response></Response>"),
        "empty TwiML: {body}"
    );

    let feedback = read_json(&topics.feedback, 1, Duration::from_secs(10), |_| true);
    assert_eq!(feedback[0]["Body"], "STOP");
    let (_, metrics) = admin_get(addr, "/metrics").await;
    assert!(
        metrics.contains(
            "herald_twilio_webhooks_total{channel=\"sms\",kind=\"inbound\",result=\"bad_signature\"} 2"
        ),
        "{metrics}"
    );
    let mut opted_out = false;
    for _ in 0..100 {
        if admin_get(addr, "/metrics")
            .await
            .1
            .contains("herald_sms_opt_outs 1")
        {
            opted_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opted_out, "the STOP took effect");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_carries_its_status_callback_and_the_receipt_reaches_the_feedback_topic() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    publish_profile(&topics, "u-1", false, true).await;
    let (_dir, running) = start(&topics, &provider).await;
    let addr = running.admin_addr();
    wait_ready(addr).await;
    publish(
        &producer(),
        &topics.transactions,
        "card",
        &swipe("u-1", 5.0, "approved", "US"),
    )
    .await;
    let outcome = read_json(&topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(outcome[0]["status"], "sent");
    let key = outcome[0]["idempotency_key"].as_str().unwrap().to_string();
    let sent = provider.received_by("twilio");
    let callback = format!("{PUBLIC_URL}/twilio/sms/status?message={key}");
    assert_eq!(
        sent[0].form.get("StatusCallback"),
        Some(&callback),
        "the callback names the message"
    );

    let path = format!("/twilio/sms/status?message={key}");
    let malformed = pairs(&[("MessageSid", "SM0002")]);
    assert_eq!(
        post(addr, &path, &callback, &malformed, TWILIO_TOKEN)
            .await
            .0,
        400
    );
    let delivered = pairs(&[
        ("MessageSid", "SM0002"),
        ("MessageStatus", "delivered"),
        ("AccountSid", TWILIO_SID),
    ]);
    assert_eq!(
        post(addr, &path, &callback, &delivered, TWILIO_TOKEN)
            .await
            .0,
        200
    );
    assert_eq!(
        outcome[0]["delivery"], "queued",
        "Twilio's status when it accepted the message"
    );
    let records = read_json(&topics.outcomes, 2, Duration::from_secs(10), |_| true);
    assert_eq!(records[1]["record"], "delivery");
    assert_eq!(records[1]["idempotency_key"], key.as_str());
    assert_eq!(records[1]["delivery_status"], "delivered");
    assert_eq!(records[1]["final"], true);
    // (herald's own `herald_sent` record of the send is on the topic too.)
    let receipts = read_json(&topics.feedback, 1, Duration::from_secs(10), |r| {
        r["type"] != "herald_sent"
    });
    assert_eq!(receipts[0]["type"], "sms_delivered");
    assert_eq!(receipts[0]["message"], key.as_str());
    assert_eq!(receipts[0]["provider_message_id"], "SM0002");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_that_said_stop_at_twilio_is_opted_out_for_the_next_sms() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    publish_profile(&topics, "u-1", false, true).await;
    let (_dir, running) = start(&topics, &provider).await;
    wait_ready(running.admin_addr()).await;
    provider.plan(&[21610]);
    let p = producer();
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 5.0, "approved", "US"),
    )
    .await;
    let first = read_json(&topics.outcomes, 1, Duration::from_secs(20), |_| true);
    assert_eq!(first[0]["status"], "failed");
    assert_eq!(first[0]["reason"], "opted_out_at_provider");
    let stop = read_json(&topics.feedback, 1, Duration::from_secs(10), |_| true);
    assert_eq!(
        (stop[0]["Body"].as_str(), stop[0]["From"].as_str()),
        (Some("STOP"), Some("+14155552671")),
        "recorded as the STOP it was, for every instance and the consent topic"
    );
    publish(
        &p,
        &topics.transactions,
        "card",
        &swipe("u-1", 6.0, "approved", "US"),
    )
    .await;
    let both = read_json(&topics.outcomes, 2, Duration::from_secs(20), |_| true);
    assert_eq!(both[1]["status"], "suppressed");
    assert_eq!(both[1]["reason"], "no_consent:sms:opted_out");
    assert_eq!(provider.received_by("twilio").len(), 1, "no second request");

    provider.plan(&[21211]);
    let mut u2 = profile_json("u-2", false, true);
    u2["phone"] = "+14155550123".into();
    publish(
        &producer(),
        &topics.profiles,
        "u-2",
        u2.to_string().as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(
        &p,
        &topics.transactions,
        "card-2",
        &swipe("u-2", 7.0, "approved", "US"),
    )
    .await;
    let three = read_json(&topics.outcomes, 3, Duration::from_secs(20), |_| true);
    assert_eq!(three[2]["reason"], "invalid_phone", "{three:?}");
    running.stop().await;
}

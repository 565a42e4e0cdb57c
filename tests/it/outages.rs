//! What herald does when it cannot make progress, on the real broker: a
//! provider outage opens the circuit and sends wait, then go out once; a record
//! it cannot write makes `/readyz` say so until it is written; a fatally
//! failed producer is rebuilt and loses nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;
use herald::outcome::{KafkaWriter, WriteHealth};
use rdkafka::producer::Producer;
use rdkafka::ClientConfig;

async fn start(
    topics: &Topics,
    provider: &Provider,
    edit: impl Fn(String) -> String,
) -> (tempfile::TempDir, herald::Running) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        every_swipe_rule(&topics.transactions, ""),
    )
    .unwrap();
    let text = edit(config_text(topics, dir.path(), &provider.base_url(), ""));
    let (_, config) = load_config(dir.path(), &text);
    let running = herald::start(config).await.expect("herald starts");
    (dir, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_opens_the_circuit_and_every_message_goes_out_once_after_it() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    publish_profile(&topics, "u-1", true, false).await;
    let (_dir, running) = start(&topics, &provider, |t| t).await;
    let addr = running.admin_addr();
    wait_ready(addr).await;
    // The next 40 requests fail: far more than the 4 attempts a message used
    // to get before it was given up.
    provider.plan(&[503; 40]);
    let p = producer();
    for amount in 1..=10 {
        publish(
            &p,
            &topics.transactions,
            "card",
            &swipe("u-1", amount as f64, "approved", "US"),
        )
        .await;
    }
    let open = admin_until(addr, "/metrics", |_, m| {
        m.contains("herald_channel_circuit_open{channel=\"push\"} 1")
    })
    .await;
    assert!(open.is_some(), "the push circuit opens during the outage");
    // The SMS channel is configured too, and idle: readiness still says
    // that push messages wait.
    let (code, ready) = admin_get(addr, "/readyz").await;
    assert!(ready.contains("\"push (open"), "{ready}");
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.contains("messages wait on a failing provider; circuits open: push"),
        "{ready}"
    );
    let (live, _) = admin_get(addr, "/livez").await;
    assert_eq!(live, 200, "alive while not ready");

    let outcomes = read_json(&topics.outcomes, 10, Duration::from_secs(60), |_| true);
    assert!(
        outcomes.iter().all(|o| o["status"] == "sent"),
        "every message sent once the provider answers, none failed: {outcomes:?}"
    );
    // The 40 planned failures, then one successful request per message.
    assert_eq!(
        provider.received_by("fcm").len(),
        40 + 10,
        "each message sent once after the outage"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_herald_cannot_write_makes_it_not_ready_until_it_is_written() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    publish_profile(&topics, "u-1", true, false).await;
    // The dead-letter topic exists at start (herald refuses to start
    // without it) and is deleted while herald runs; the broker creates none.
    let missing = unique("dlq-missing");
    create_topics(&[(&missing, 1)]).await;
    let (_dir, running) = start(&topics, &provider, |t| {
        t.replace(&topics.dlq, &missing).replace(
            "[kafka.properties]",
            "[kafka.properties]\n\"message.timeout.ms\" = \"2000\"",
        )
    })
    .await;
    let addr = running.admin_addr();
    wait_ready(addr).await;
    delete_topics(&[&missing]).await;
    publish(&producer(), &topics.transactions, "card", b"not json").await;
    let stuck = admin_until(addr, "/readyz", |code, body| {
        code == 503 && body.contains(&missing)
    })
    .await;
    let body = stuck.expect("readyz names the topic it cannot write to");
    assert!(body.contains("not written"), "{body}");
    let (_, metrics) = admin_get(addr, "/metrics").await;
    assert!(metrics.contains("herald_writes_failing 1"), "{metrics}");

    let mut made = false;
    for _ in 0..60 {
        if try_create_topics(&[(&missing, 1)]).await.is_ok() {
            made = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(made, "dead-letter topic made again");
    let dead = read_json(&missing, 1, Duration::from_secs(30), |_| true);
    assert_eq!(
        dead[0]["reason"], "not_json",
        "written once the topic exists"
    );
    let ready = admin_until(addr, "/readyz", |code, _| code == 200).await;
    assert!(ready.is_some(), "ready again once the record is written");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatally_failed_producer_is_rebuilt_and_every_record_arrives() {
    let topic = unique("rebuilt");
    create_topics(&[(&topic, 1)]).await;
    let failing = prometheus::IntGauge::new("failing", "failing").unwrap();
    let rebuilds = prometheus::IntCounter::new("rebuilds", "rebuilds").unwrap();
    let health = Arc::new(WriteHealth::new(failing.clone(), rebuilds.clone()));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all");
    let writer = Arc::new(KafkaWriter::new(config, Arc::clone(&health)).unwrap());
    writer
        .write(topic.clone(), None, "k".into(), Some(b"1".to_vec()))
        .await;

    // What librdkafka offers to test this path: a fabricated fatal error in
    // the idempotent producer, as a fenced or out-of-sequence producer gets.
    let broken = writer.producer();
    let reason = std::ffi::CString::new("test: fenced").unwrap();
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            broken.client().native_ptr(),
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED,
            reason.as_ptr(),
        );
    }
    assert!(broken.client().fatal_error().is_some());
    let writes: Vec<_> = (2..=5)
        .map(|n| {
            writer.write(
                topic.clone(),
                None,
                "k".into(),
                Some(n.to_string().into_bytes()),
            )
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(writes))
        .await
        .expect("every write completes on the rebuilt producer");
    assert_eq!(rebuilds.get(), 1, "one rebuild for all the failed writes");
    assert_eq!(failing.get(), 0, "nothing left failing");
    assert!(health.problem().is_none());
    let values: Vec<String> = read_json(&topic, 5, Duration::from_secs(10), |_| true)
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(values, ["1", "2", "3", "4", "5"], "every record, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_lanes_fill_during_an_outage_fetching_pauses_and_nothing_is_lost() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    publish_profile(&topics, "u-1", true, false).await;
    // One lane holding one message: the outage fills it at once.
    let (_dir, running) = start(&topics, &provider, |t| {
        t.replace("[limits]", "[limits]\nlanes = 1\nlane_queue = 1")
    })
    .await;
    let addr = running.admin_addr();
    wait_ready(addr).await;
    provider.plan(&[503; 30]);
    let p = producer();
    for amount in 1..=20 {
        publish(
            &p,
            &topics.transactions,
            "card",
            &swipe("u-1", amount as f64, "approved", "US"),
        )
        .await;
    }
    let paused = admin_until(addr, "/metrics", |_, m| m.contains("herald_fetch_paused 1")).await;
    assert!(paused.is_some(), "fetching pauses while the lane is full");
    let outcomes = read_json(&topics.outcomes, 20, Duration::from_secs(60), |_| true);
    assert!(
        outcomes.iter().all(|o| o["status"] == "sent"),
        "{outcomes:?}"
    );
    assert_eq!(
        provider.received_by("fcm").len(),
        30 + 20,
        "the 30 refusals, then each message once"
    );
    let resumed = admin_until(addr, "/metrics", |_, m| m.contains("herald_fetch_paused 0")).await;
    assert!(resumed.is_some(), "fetching resumes");
    running.stop().await;
}

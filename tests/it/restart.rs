//! Stop the real `herald` binary with SIGTERM mid-stream and start it again:
//! every event is handled exactly once — nothing sent twice, nothing missed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;

const EVENTS: usize = 600;

fn seq_counts(provider: &Provider) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for r in provider.received_by("fcm") {
        let seq: u64 = r.json["message"]["notification"]["title"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        *counts.entry(seq).or_default() += 1;
    }
    counts
}

/// A rules directory in `dir` with one rule: a push for every swipe, titled
/// with the swipe's `seq`.
fn every_swipe_rules(dir: &std::path::Path, topics: &Topics) -> std::path::PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("every.yaml"),
        format!(
            "rules:\n  - id: every-swipe\n    sources: [{}]\n    channels: [push]\n    category: transactional\n    template:\n      title: \"{{{{ event.seq }}}}\"\n      body: \"swipe\"\n",
            topics.transactions
        ),
    )
    .unwrap();
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_then_restart_handles_every_event_exactly_once() {
    let topics = Topics::create(3).await;
    let provider = Provider::start().await;
    provider.delay(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    let rules = every_swipe_rules(dir.path(), &topics);
    let p = producer();
    for u in 0..10 {
        publish(
            &p,
            &topics.profiles,
            &format!("u-{u}"),
            &profile(&format!("u-{u}"), true, false),
        )
        .await;
    }
    let (config, _) = load_config(
        dir.path(),
        &config_text(&topics, &rules, &provider.base_url(), ""),
    );

    let mut first = spawn_herald(&config, &dir.path().join("first.log"));
    let tx = topics.transactions.clone();
    let publisher = tokio::spawn(async move {
        let p = producer();
        for seq in 0..EVENTS {
            let user = format!("u-{}", seq % 10);
            let event = serde_json::json!({"user_id": user, "ts": herald::util::now_ms(), "seq": seq, "status": "approved"});
            publish(
                &p,
                &tx,
                &format!("card-{}", seq % 10),
                &serde_json::to_vec(&event).unwrap(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    // Stop it once it is busy sending.
    let busy = eventually(Duration::from_secs(30), || {
        (provider.received_by("fcm").len() >= 40).then_some(())
    })
    .await;
    assert!(
        busy.is_some(),
        "first instance started sending: {}",
        std::fs::read_to_string(dir.path().join("first.log")).unwrap()
    );
    let pid = first.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut first, Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "clean exit on SIGTERM: {}",
        std::fs::read_to_string(dir.path().join("first.log")).unwrap()
    );
    let sent_before = provider.received_by("fcm").len();
    assert!(
        sent_before < EVENTS,
        "stopped mid-stream ({sent_before} sent)"
    );
    publisher.await.unwrap();

    let mut second = spawn_herald(&config, &dir.path().join("second.log"));
    let all = eventually(Duration::from_secs(60), || {
        (seq_counts(&provider).len() == EVENTS).then_some(())
    })
    .await;
    // Give a duplicate, if any, time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut second, Duration::from_secs(20)))
        .await
        .unwrap();
    let counts = seq_counts(&provider);
    assert!(
        all.is_some(),
        "every event sent: {} of {EVENTS}",
        counts.len()
    );
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "sent twice after restart: {repeated:?}"
    );
    assert_eq!(provider.received_by("fcm").len(), EVENTS);
    assert_eq!(code, Some(0));
}

/// `[log] format = "json"`: what a log collector reads from the real binary,
/// from start to a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_log_is_one_object_per_line_without_colour_or_start_up_noise() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("every.yaml"),
        every_swipe_rule(&topics.transactions, ""),
    )
    .unwrap();
    let p = producer();
    publish(&p, &topics.profiles, "u-1", &profile("u-1", true, false)).await;
    // The shared properties hold consumer-only keys (session.timeout.ms):
    // producers must not be handed them.
    let (config, _) = load_config(
        dir.path(),
        &config_text(
            &topics,
            &rules,
            &provider.base_url(),
            "[log]\nformat = \"json\"\n",
        ),
    );
    let log = dir.path().join("herald.log");
    let mut herald = spawn_herald(&config, &log);
    publish(
        &p,
        &topics.transactions,
        "u-1",
        &swipe("u-1", 12.0, "approved", "US"),
    )
    .await;
    let sent = eventually(Duration::from_secs(60), || {
        (!provider.received_by("fcm").is_empty()).then_some(())
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &herald.id().to_string()])
        .status();
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut herald, Duration::from_secs(20)))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(sent.is_some(), "the swipe was sent: {text}");
    assert_eq!(code, Some(0), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{text}");
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            == "shutdown signal received; stopping (a second signal ends herald at once)"),
        "{text}"
    );
    for noise in [
        "\u{1b}[",
        "PartitionEOF",
        "CONFWARN",
        "is a consumer property",
    ] {
        assert!(!text.contains(noise), "log holds {noise:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_a_stop_that_waits_on_a_provider() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    // Requests hang far longer than the stop's grace.
    provider.delay(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let rules = every_swipe_rules(dir.path(), &topics);
    let p = producer();
    publish(&p, &topics.profiles, "u-1", &profile("u-1", true, false)).await;
    let (config, _) = load_config(
        dir.path(),
        &config_text(&topics, &rules, &provider.base_url(), "")
            .replace("shutdown_grace_ms = 5000", "shutdown_grace_ms = 60000"),
    );
    let log = dir.path().join("herald.log");
    let mut herald = spawn_herald(&config, &log);
    let event = serde_json::json!({"user_id": "u-1", "ts": herald::util::now_ms(), "seq": 1, "status": "approved"});
    publish(
        &p,
        &topics.transactions,
        "card-1",
        &serde_json::to_vec(&event).unwrap(),
    )
    .await;
    let waiting = eventually(Duration::from_secs(30), || {
        (!provider.received_by("fcm").is_empty()).then_some(())
    })
    .await;
    assert!(
        waiting.is_some(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let term = |pid: u32| {
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
    };
    let pid = herald.id();
    term(pid);
    // The stop waits for the request in flight (a 60 s grace)...
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(herald.try_wait().unwrap().is_none(), "still stopping");
    // ...until a second signal ends it.
    term(pid);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut herald, Duration::from_secs(10)))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(143), "{text}");
    assert!(text.contains("a second stop signal"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_one_users_backlog_leaves_the_rest_for_the_restart_and_repeats_nothing() {
    const BACKLOG: usize = 300;
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    // A provider answering in 40 ms: one user's messages go one at a time.
    provider.delay(Duration::from_millis(40));
    let dir = tempfile::tempdir().unwrap();
    let rules = every_swipe_rules(dir.path(), &topics);
    let p = producer();
    publish(
        &p,
        &topics.profiles,
        "fleet",
        &profile("fleet", true, false),
    )
    .await;
    for seq in 0..BACKLOG {
        let event = serde_json::json!({"user_id": "fleet", "ts": herald::util::now_ms(), "seq": seq, "status": "approved"});
        publish(
            &p,
            &topics.transactions,
            &format!("freezer-{seq}"),
            &serde_json::to_vec(&event).unwrap(),
        )
        .await;
    }
    // A grace far longer than the backlog's stop should take.
    let (config, _) = load_config(
        dir.path(),
        &config_text(&topics, &rules, &provider.base_url(), "")
            .replace("shutdown_grace_ms = 5000", "shutdown_grace_ms = 30000"),
    );
    let mut first = spawn_herald(&config, &dir.path().join("first.log"));
    let busy = eventually(Duration::from_secs(60), || {
        (provider.received_by("fcm").len() >= 30).then_some(())
    })
    .await;
    assert!(
        busy.is_some(),
        "{}",
        std::fs::read_to_string(dir.path().join("first.log")).unwrap()
    );
    let stopped = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap()
        .success());
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut first, Duration::from_secs(40)))
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert_eq!(code, Some(0), "{log}");
    let sent_before = provider.received_by("fcm").len();
    assert!(
        sent_before < BACKLOG,
        "stopped before the backlog's end ({sent_before})"
    );
    // The queue was left, not drained: the stop took far less than the
    // 30 s grace (no timing asserted beyond that bound).
    assert!(stopped.elapsed() < Duration::from_secs(30), "{log}");
    assert!(!log.contains("did not finish in time"), "{log}");

    let mut second = spawn_herald(&config, &dir.path().join("second.log"));
    let all = eventually(Duration::from_secs(90), || {
        (seq_counts(&provider).len() == BACKLOG).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let _ =
        tokio::task::spawn_blocking(move || wait_exit(&mut second, Duration::from_secs(20))).await;
    let counts = seq_counts(&provider);
    assert!(
        all.is_some(),
        "every reading sent: {} of {BACKLOG}",
        counts.len()
    );
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "sent twice across the restart: {repeated:?}"
    );
    let outcomes = read_all_json(
        &topics.outcomes,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    let unknown: Vec<_> = outcomes
        .iter()
        .filter(|o| o["unknown_after_crash"] == true)
        .collect();
    assert!(
        unknown.is_empty(),
        "a clean stop leaves no request unrecorded: {unknown:?}"
    );
}

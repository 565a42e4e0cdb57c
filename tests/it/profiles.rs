//! Profiles on local disk: a restart after kill -9 reads only the profile
//! records written since the table's checkpoint, and decides with the
//! profiles as the topic has them (updated, deleted, added while stopped); a
//! profiles topic made again while herald was stopped rebuilds the table; a
//! replay from the topics deletes what a tombstone deletes; a followed topic
//! whose writer uses transactions (its last offset a commit marker, not a
//! record) is read to its end.

use std::time::Duration;

use serde_json::Value;

use crate::support::provider::Provider;
use crate::support::*;

/// A rules folder in `dir` with one rule that pushes every swipe.
fn every_swipe_rules(dir: &std::path::Path, topics: &Topics) -> std::path::PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("every.yaml"),
        every_swipe_rule(&topics.transactions, ""),
    )
    .unwrap();
    rules
}

/// A config for the real binary, with its admin port, and its address.
fn binary_config(
    dir: &std::path::Path,
    topics: &Topics,
    rules: &std::path::Path,
    provider: &Provider,
) -> (std::path::PathBuf, std::net::SocketAddr) {
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = config_text(topics, rules, &provider.base_url(), "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""));
    let (path, _) = load_config(dir, &text);
    (path, admin)
}

/// The instance's `/readyz`, once it is ready.
async fn ready(admin: std::net::SocketAddr) -> Value {
    wait_ready(admin).await;
    let (_, body) = admin_get(admin, "/readyz").await;
    serde_json::from_str(&body).unwrap()
}

fn kill_9(child: &mut std::process::Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_a_restart_reads_only_the_new_profile_records_and_uses_them() {
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = every_swipe_rules(dir.path(), &topics);
    for u in 0..30 {
        let user = format!("u-{u}");
        publish_profile(&topics, &user, true, false).await;
    }
    let (config, admin) = binary_config(dir.path(), &topics, &rules, &provider);

    let mut first = spawn_herald(&config, &dir.path().join("first.log"));
    let readiness = ready(admin).await;
    assert_eq!(
        readiness["profiles_loading"]["read"], 30,
        "the first start reads every profile: {readiness}"
    );
    assert!(
        dir.path().join("herald-state/instance-1").is_dir(),
        "the store is in the config's folder"
    );
    kill_9(&mut first);

    // While it is down: one user withdraws push consent, one is deleted, one is new.
    let p = producer();
    publish(&p, &topics.profiles, "u-1", &profile("u-1", false, false)).await;
    publish_tombstone(&topics.profiles, "u-2").await;
    publish(&p, &topics.profiles, "u-30", &profile("u-30", true, false)).await;

    let mut second = spawn_herald(&config, &dir.path().join("second.log"));
    let readiness = ready(admin).await;
    assert_eq!(
        readiness["profiles_loading"]["read"],
        3,
        "the restart reads only the three records written since the checkpoint: {readiness}\n{}",
        std::fs::read_to_string(dir.path().join("second.log")).unwrap()
    );

    for user in ["u-1", "u-2", "u-5", "u-30"] {
        publish(
            &p,
            &topics.transactions,
            user,
            &swipe(user, 12.5, "approved", "US"),
        )
        .await;
    }
    let outcomes = read_json(&topics.outcomes, 4, Duration::from_secs(30), |_| true);
    kill_9(&mut second);
    let status = |user: &str| {
        outcomes
            .iter()
            .find(|o| o["user"] == user)
            .map(|o| {
                (
                    o["status"].as_str().unwrap_or("").to_string(),
                    o["reason"].clone(),
                )
            })
            .unwrap_or_else(|| panic!("no outcome for {user}: {outcomes:?}"))
    };
    assert_eq!(status("u-5").0, "sent", "a profile from disk is used");
    assert_eq!(
        status("u-30").0,
        "sent",
        "a profile added while down is used"
    );
    let (u1, why) = status("u-1");
    assert!(
        u1 == "suppressed" && why.to_string().contains("consent"),
        "consent withdrawn while down is honoured: {u1} {why}"
    );
    let (u2, why) = status("u-2");
    assert!(
        u2 == "suppressed" && why.to_string().contains("no_profile"),
        "a profile deleted while down is gone: {u2} {why}"
    );
    let tokens: Vec<String> = provider
        .received_by("fcm")
        .iter()
        .map(|r| r.json["message"]["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiles_topic_made_again_while_stopped_rebuilds_the_table() {
    let topics = Topics::create(1).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = every_swipe_rules(dir.path(), &topics);
    for u in 0..20 {
        publish_profile(&topics, &format!("u-{u}"), true, false).await;
    }
    let (config, admin) = binary_config(dir.path(), &topics, &rules, &provider);
    let mut first = spawn_herald(&config, &dir.path().join("first.log"));
    ready(admin).await;
    kill_9(&mut first);

    // The topic is deleted and made again with two profiles: its offsets
    // start again below the table's checkpoint.
    delete_topics(&[&topics.profiles]).await;
    let mut made = false;
    for _ in 0..60 {
        if try_create_topics_with(&[(&topics.profiles, 1)], &[("cleanup.policy", "compact")])
            .await
            .is_ok()
        {
            made = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(made, "profiles topic made again");
    for u in ["new-1", "new-2"] {
        publish_profile(&topics, u, true, false).await;
    }

    let mut second = spawn_herald(&config, &dir.path().join("second.log"));
    let readiness = ready(admin).await;
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert_eq!(
        readiness["profiles_loading"]["read"], 2,
        "read again from the start of the new topic: {readiness}\n{log}"
    );
    let p = producer();
    for user in ["u-3", "new-1"] {
        publish(
            &p,
            &topics.transactions,
            user,
            &swipe(user, 3.0, "approved", "US"),
        )
        .await;
    }
    let outcomes = read_json(&topics.outcomes, 2, Duration::from_secs(30), |_| true);
    kill_9(&mut second);
    let status = |user: &str| {
        outcomes
            .iter()
            .find(|o| o["user"] == user)
            .map(|o| o["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no outcome for {user}: {outcomes:?}"))
    };
    assert_eq!(status("new-1"), "sent");
    assert_eq!(
        status("u-3"),
        "suppressed",
        "a profile of the old topic is not used"
    );
    assert!(log.contains("profile table cleared"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_the_topics_honours_a_profile_deleted_on_the_profiles_topic() {
    let topics = Topics::create(1).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = every_swipe_rules(dir.path(), &topics);
    for u in ["u-kept", "u-gone"] {
        publish_profile(&topics, u, true, false).await;
    }
    publish_tombstone(&topics.profiles, "u-gone").await;
    let p = producer();
    for u in ["u-kept", "u-gone"] {
        publish(
            &p,
            &topics.transactions,
            u,
            &swipe(u, 9.0, "approved", "US"),
        )
        .await;
    }
    let (config, _) = load_config(
        dir.path(),
        &config_text(&topics, &rules, "http://127.0.0.1:9", ""),
    );
    let out = dir.path().join("outcomes.jsonl");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["replay", "--from-topic", &topics.transactions])
        .args(["--since", "2020-01-01T00:00:00Z", "--config"])
        .arg(&config)
        .arg("--rules")
        .arg(&rules)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{said}");
    let outcomes: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |user: &str| {
        outcomes
            .iter()
            .find(|o| o["user"] == user)
            .unwrap_or_else(|| panic!("no outcome for {user}: {said}"))
            .clone()
    };
    assert_eq!(of("u-kept")["status"], "sent", "{said}");
    assert_eq!(of("u-gone")["status"], "suppressed");
    assert_eq!(
        of("u-gone")["reason"],
        "no_profile",
        "the tombstone deleted it"
    );
}

/// A CRM that writes profiles (or a consent service that writes STOPs) in
/// Kafka transactions leaves a commit marker at the end of the partition:
/// the high watermark is one past the last record. The follower must take
/// the read position librdkafka reports at the partition's end, not "last
/// record + 1": with the latter, a barrier (every SMS's STOP check waits on
/// one) waits out its time and fails, and the SMS with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_written_in_transactions_is_read_to_its_end_past_the_commit_marker() {
    use herald::kafka::follow::{Follower, Start};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

    let topic = unique("txn-profiles");
    create_topics(&[(&topic, 1)]).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique("txn-writer"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    for user in ["u-1", "u-2", "u-3"] {
        let payload = profile(user, true, true);
        producer
            .send(
                FutureRecord::to(&topic).key(user).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();

    let client = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("txn-reader"))
        .clone();
    let follower = std::sync::Arc::new(Follower::new(topic.clone(), client));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (follower, read) = (
            std::sync::Arc::clone(&follower),
            std::sync::Arc::clone(&read),
        );
        tokio::spawn(async move {
            follower
                .run_with(
                    Start::Beginning,
                    shutdown,
                    |_| {
                        read.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    },
                    |_| {},
                )
                .await
        })
    };
    let caught_up = tokio::time::timeout(Duration::from_secs(30), follower.wait_caught_up()).await;
    assert!(
        caught_up.is_ok(),
        "the follower never reached the partition's end"
    );
    assert_eq!(
        read.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "each record read once"
    );
    follower
        .barrier(Duration::from_secs(10))
        .await
        .expect("a barrier passes at once: everything written before it was read");
    stop.send(true).unwrap();
    reader.await.unwrap().unwrap();
}

//! Topics at start: herald refuses to start on a missing, uncompacted or
//! wrongly partitioned topic, naming each and its fix; `herald check` says the
//! same without starting; herald creates its own topics, compacted where it
//! reads them whole.

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::support::*;

/// `herald <command> --config <path>`: exit code, stdout, stderr.
fn herald(command: &str, config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([command, "--config"])
        .arg(config)
        .env("HERALD_TEST_FCM_TOKEN", FCM_TOKEN)
        .env("HERALD_TEST_TWILIO_SID", TWILIO_SID)
        .env("HERALD_TEST_TWILIO_TOKEN", TWILIO_TOKEN)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `group_id` a test config names.
fn group_of(config: &str) -> String {
    let line = config
        .lines()
        .find(|l| l.starts_with("group_id"))
        .expect("a group id");
    line.split('"').nth(1).unwrap().to_string()
}

/// A topic's cleanup.policy, from the broker.
async fn cleanup_policy(topic: &str) -> String {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let resources = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = resources.into_iter().next().unwrap().unwrap();
    resource
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_refuses_to_start_on_a_missing_or_uncompacted_topic_and_names_each_fix() {
    let topics = Topics::fresh();
    // The operator made every topic but the outcomes topic, and the
    // profiles topic without compaction (a week's retention).
    let compacted = topics.compacted();
    let (whole, rest): (Vec<_>, Vec<_>) = topics
        .specs(1)
        .into_iter()
        .filter(|(t, _)| *t != &topics.outcomes && *t != &topics.profiles)
        .partition(|(t, _)| compacted.contains(t));
    create_topics(&rest).await;
    try_create_topics_with(&whole, &[("cleanup.policy", "compact")])
        .await
        .unwrap();
    try_create_topics_with(&[(&topics.profiles, 1)], &[("retention.ms", "604800000")])
        .await
        .unwrap();
    let rules = sample_rules(&topics);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&topics, rules.path(), "http://127.0.0.1:9", "");
    let (path, _) = load_config(dir.path(), &text);

    let (code, stdout, stderr) = herald("check", &path);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("ok    rules:"), "{stdout}");
    let missing = format!("FAIL  topic {}: does not exist", topics.outcomes);
    assert!(stdout.contains(&missing), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "--create --topic {} --partitions",
            topics.outcomes
        )),
        "the fix is the command: {stdout}"
    );
    let uncompacted = format!("FAIL  topic {}: cleanup.policy=delete", topics.profiles);
    assert!(stdout.contains(&uncompacted), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "--entity-name {} --add-config cleanup.policy=compact",
            topics.profiles
        )),
        "{stdout}"
    );
    // herald's own topics are not problems: it creates them.
    let intents = format!(
        "ok    topic {}.intents: does not exist yet",
        group_of(&text)
    );
    assert!(stdout.contains(&intents), "{stdout}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");

    // `herald run` refuses the same way, having created nothing.
    let (code, _, stderr) = herald("run", &path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("topic {}: does not exist", topics.outcomes)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("topic {}: cleanup.policy=delete", topics.profiles)),
        "{stderr}"
    );
    assert!(stderr.contains("herald check --config"), "{stderr}");
    let (code, stdout, _) = herald("check", &path);
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains(&intents),
        "a refused start creates no topic: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_creates_its_own_topics_compacted_and_check_then_passes() {
    let topics = Topics::fresh();
    // The operator's topics only; herald makes held, intents and changelogs.
    let compacted = topics.compacted();
    let (whole, rest): (Vec<_>, Vec<_>) = topics
        .specs(2)
        .into_iter()
        .filter(|(t, _)| *t != &topics.held)
        .partition(|(t, _)| compacted.contains(t));
    create_topics(&rest).await;
    try_create_topics_with(&whole, &[("cleanup.policy", "compact")])
        .await
        .unwrap();
    let rules = sample_rules(&topics);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&topics, rules.path(), "http://127.0.0.1:9", "");
    let (path, config) = load_config(dir.path(), &text);

    let running = herald::start(config.clone()).await.expect("herald starts");
    wait_ready(running.admin_addr()).await;
    running.stop().await;
    assert_eq!(cleanup_policy(&topics.held).await, "compact");
    assert_eq!(
        cleanup_policy(&config.pattern_changelog(&topics.transactions)).await,
        "compact"
    );
    assert_eq!(
        cleanup_policy(&config.ledger_changelog()).await,
        "compact,delete"
    );

    let (code, stdout, stderr) = herald("check", &path);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("herald can start"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_whose_partitions_differ_from_its_source_is_refused() {
    let topics = Topics::create(2).await;
    let rules = sample_rules(&topics);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&topics, rules.path(), "http://127.0.0.1:9", "");
    let (path, config) = load_config(dir.path(), &text);
    // The transactions changelog made by hand with 3 partitions; the
    // source has 2.
    let changelog = config.pattern_changelog(&topics.transactions);
    try_create_topics_with(&[(&changelog, 3)], &[("cleanup.policy", "compact")])
        .await
        .unwrap();
    let (code, stdout, _) = herald("check", &path);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "topic {changelog}: has 3 partitions; herald needs 2"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("--delete --topic {changelog}")),
        "{stdout}"
    );
}

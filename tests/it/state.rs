//! State that survives: frequency caps, pattern windows, the send ledger and
//! held messages live in Kafka (changelog topics, the intents topic, the held
//! topic), so they hold across instances, restarts of every instance, and a
//! kill -9 of the instance that owned them.

use std::process::Command;
use std::time::Duration;

use crate::support::provider::Provider;
use crate::support::*;
use serde_json::{json, Value};

/// Every approved swipe pushes a notice, at most `cap` a day per user; three
/// declines on one card within five minutes send one SMS.
fn rules_on(notice_sources: &[&str], cap: &str) -> String {
    let source = notice_sources[0];
    let notice = notice_sources.join(", ");
    format!(
        r#"rules:
  - id: notice
    sources: [{notice}]
    match: {{ status: approved }}
    channels: [push]
    category: transactional
    policy: {{ caps: ["{cap}"] }}
    template:
      body: "{{{{ event.seq }}}}"
  - id: velocity
    sources: [{source}]
    match: {{ status: declined }}
    pattern: {{ window: {{ count: 3, within: 5m }} }}
    channels: [sms]
    category: fraud
    template:
      text: "{{{{ pattern.count }}}} declines, last {{{{ event.seq }}}}"
"#
    )
}

fn swipe_of(user: &str, status: &str, seq: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "user_id": user,
        "ts": herald::util::now_ms(),
        "status": status,
        "seq": seq,
        "amount": 10.0,
    }))
    .unwrap()
}

/// A test's topics, provider and rule folder, with `user`'s profile
/// published, and the config text every instance of the test shares.
async fn setup(
    partitions: i32,
    cap: &str,
    user: &str,
    push: bool,
    sms: bool,
) -> (Topics, Provider, tempfile::TempDir, String) {
    let topics = Topics::create(partitions).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        rules_on(&[&topics.transactions, &topics.locations], cap),
    )
    .unwrap();
    publish_profile(&topics, user, push, sms).await;
    let text = config_text(&topics, dir.path(), &provider.base_url(), "");
    (topics, provider, dir, text)
}

async fn start(dir: &std::path::Path, text: &str) -> herald::Running {
    let (_, config) = load_config(dir, text);
    let running = herald::start(config).await.expect("herald starts");
    wait_ready(running.admin_addr()).await;
    running
}

/// The source partitions of `topic` an instance owns now, from `/readyz`.
async fn owned(addr: std::net::SocketAddr, topic: &str) -> Vec<i32> {
    let (_, body) = admin_get(addr, "/readyz").await;
    let ready: Value = serde_json::from_str(&body).unwrap();
    ready["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            p.as_str()?
                .strip_prefix(&format!("{topic}["))?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

fn statuses(outcomes: &[Value]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| {
            format!(
                "{} {} {}",
                o["rule"].as_str().unwrap(),
                o["status"].as_str().unwrap(),
                o["reason"].as_str().unwrap_or("")
            )
            .trim_end()
            .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_two_cards_on_two_instances_is_capped_once_across_both() {
    let (topics, provider, dir, text) = setup(4, "2/day", "u-1", true, false).await;
    let a = start(dir.path(), &text).await;
    let b = start(dir.path(), &text).await;
    // Each instance owns some of the source partitions: card A's events go
    // to one of A's, card B's to one of B's.
    // The notice rule reads transactions and locations; find a partition of
    // either owned by each instance (the group spreads the 20 partitions of
    // its topics, not each topic, over the two).
    let mut split = None;
    for _ in 0..80 {
        let mut mine = Vec::new();
        for addr in [a.admin_addr(), b.admin_addr()] {
            let mut parts: Vec<(String, i32)> = Vec::new();
            for topic in [&topics.transactions, &topics.locations] {
                for p in owned(addr, topic).await {
                    parts.push((topic.clone(), p));
                }
            }
            mine.push(parts);
        }
        if let [pa, pb] = &mine[..] {
            if !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 8 {
                split = Some((pa[0].clone(), pb[0].clone()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (pa, pb) = split.expect("the group spreads the source partitions over both instances");
    for seq in 0..4u64 {
        let (card, (topic, partition)) = if seq % 2 == 0 {
            ("card-a", &pa)
        } else {
            ("card-b", &pb)
        };
        publish_to(topic, *partition, card, &swipe_of("u-1", "approved", seq)).await;
    }
    let outcomes = read_json(&topics.outcomes, 4, Duration::from_secs(40), |o| {
        o["user"] == "u-1"
    });
    let got = statuses(&outcomes);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got.iter().filter(|s| *s == "notice sent").count(),
        2,
        "two sends under a 2/day cap: {got:?}"
    );
    assert_eq!(
        got.iter()
            .filter(|s| *s == "notice suppressed cap:rule:notice:2/day")
            .count(),
        2,
        "{got:?}"
    );
    assert_eq!(provider.received_by("fcm").len(), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_every_instance_remembers_caps_and_windows() {
    let (topics, provider, dir, text) = setup(2, "1/day", "u-2", true, true).await;
    let first = start(dir.path(), &text).await;
    let p = producer();
    publish(
        &p,
        &topics.transactions,
        "card-2",
        &swipe_of("u-2", "approved", 0),
    )
    .await;
    publish(
        &p,
        &topics.transactions,
        "card-2",
        &swipe_of("u-2", "declined", 1),
    )
    .await;
    publish(
        &p,
        &topics.transactions,
        "card-2",
        &swipe_of("u-2", "declined", 2),
    )
    .await;
    let sent = read_json(&topics.outcomes, 1, Duration::from_secs(30), |o| {
        o["user"] == "u-2"
    });
    assert_eq!(statuses(&sent), ["notice sent"]);
    // Give the two declines time to be handled before the stop drains.
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.stop().await;

    // Nothing in memory survives: the new process restores from Kafka.
    let second = start(dir.path(), &text).await;
    publish(
        &p,
        &topics.transactions,
        "card-2",
        &swipe_of("u-2", "approved", 3),
    )
    .await;
    publish(
        &p,
        &topics.transactions,
        "card-2",
        &swipe_of("u-2", "declined", 4),
    )
    .await;
    let all = read_json(&topics.outcomes, 3, Duration::from_secs(30), |o| {
        o["user"] == "u-2"
    });
    assert_eq!(
        statuses(&all),
        [
            "notice sent",
            "notice suppressed cap:rule:notice:1/day",
            "velocity sent"
        ],
        "the cap counts the send before the restart, the window the declines before it"
    );
    let sms = provider.received_by("twilio");
    assert_eq!(sms.len(), 1);
    assert!(
        sms[0].form["Body"].contains("3 declines, last 4"),
        "{:?}",
        sms[0].form
    );
    second.stop().await;
}

/// The pattern changelog's records for `card` (newest last).
/// The window's length of `card` in the pattern changelog `topic`, its
/// records opened with the state key herald keeps in `state_dir`.
fn window_of(topic: &str, state_dir: &std::path::Path, card: &str) -> Option<usize> {
    let sealer = herald::store::Sealer::for_dir(state_dir).ok()?;
    let seal =
        herald::state::sealed::ChangelogSeal::new(sealer, None, herald::patterns::store::identity);
    let mut moved = std::collections::HashMap::new();
    read_all_records(topic, Duration::from_millis(500), Duration::from_secs(5))
        .into_iter()
        .filter_map(|(key, value)| {
            let change = herald::state::Change {
                key: String::from_utf8(key?).ok()?,
                value,
            };
            match seal.open(change, &mut moved) {
                herald::state::sealed::Opened::Current(c) => c.value,
                _ => None,
            }
        })
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
        .rfind(|r| r["key"] == card)
        .and_then(|r| r["state"]["Window"]["entries"].as_array().map(Vec::len))
}

fn config_with_admin(topics: &Topics, dir: &std::path::Path, base: &str) -> (String, u16) {
    let port = free_port();
    let text =
        config_text(topics, dir, base, "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    (text, port)
}

async fn wait_ready_at(port: u16) {
    wait_ready(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
}

fn kill_9(child: &mut std::process::Child) {
    assert!(Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_declines_with_a_kill_9_between_the_second_and_third_send_one_sms_from_the_new_owner()
{
    let (topics, provider, dir, _) = setup(2, "5/day", "u-3", false, true).await;
    let (text, port) = config_with_admin(&topics, dir.path(), &provider.base_url());
    let (config_path, config) = load_config(dir.path(), &text);
    let changelog = config.pattern_changelog(&topics.transactions);

    let mut owner = spawn_herald(&config_path, &dir.path().join("owner.log"));
    wait_ready_at(port).await;
    let p = producer();
    publish(
        &p,
        &topics.transactions,
        "card-3",
        &swipe_of("u-3", "declined", 1),
    )
    .await;
    publish(
        &p,
        &topics.transactions,
        "card-3",
        &swipe_of("u-3", "declined", 2),
    )
    .await;
    let two = eventually(Duration::from_secs(30), || {
        (window_of(&changelog, &dir.path().join("herald-state"), "card-3") == Some(2)).then_some(())
    })
    .await;
    assert!(
        two.is_some(),
        "the owner recorded two declines in the changelog: {}",
        std::fs::read_to_string(dir.path().join("owner.log")).unwrap()
    );
    kill_9(&mut owner);

    let (_, config) = load_config(dir.path(), &text.replace(&port.to_string(), "0"));
    let next = herald::start(config).await.expect("herald starts");
    wait_ready(next.admin_addr()).await;
    publish(
        &p,
        &topics.transactions,
        "card-3",
        &swipe_of("u-3", "declined", 3),
    )
    .await;
    let outcomes = read_json(&topics.outcomes, 1, Duration::from_secs(40), |o| {
        o["user"] == "u-3"
    });
    assert_eq!(statuses(&outcomes), ["velocity sent"]);
    // A redelivered decline (past the dead owner's last commit) must not
    // count twice nor fire again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sms = provider.received_by("twilio");
    assert_eq!(sms.len(), 1, "exactly one velocity SMS");
    assert!(sms[0].form["Body"].contains("3 declines, last 3"));
    next.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_is_released_once_by_the_new_owner_after_a_kill_9() {
    let window = quiet_window_now(40).await;
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        format!(
            r#"rules:
  - id: evening-offer
    sources: [{}]
    match: {{ status: approved }}
    channels: [push]
    category: promotions
    policy: {{ quiet_hours: "{window}", on_quiet_hours: hold, max_age_s: 600 }}
    template:
      body: "offer {{{{ event.seq }}}}"
"#,
            topics.transactions
        ),
    )
    .unwrap();
    let mut utc = profile_json("u-4", true, false);
    utc["time_zone"] = json!("UTC");
    publish(
        &producer(),
        &topics.profiles,
        "u-4",
        utc.to_string().as_bytes(),
    )
    .await;
    let (text, port) = config_with_admin(&topics, dir.path(), &provider.base_url());
    let (config_path, _) = load_config(dir.path(), &text);

    let mut owner = spawn_herald(&config_path, &dir.path().join("owner.log"));
    wait_ready_at(port).await;
    publish(
        &producer(),
        &topics.transactions,
        "card-4",
        &swipe_of("u-4", "approved", 7),
    )
    .await;
    let held = read_json(&topics.outcomes, 1, Duration::from_secs(30), |o| {
        o["user"] == "u-4"
    });
    assert_eq!(held[0]["status"], "held", "{held:?}");
    kill_9(&mut owner);

    let (_, config) = load_config(dir.path(), &text.replace(&port.to_string(), "0"));
    let running = herald::start(config).await.expect("herald starts");
    // The swipe comes again if the dead owner had not committed it: its
    // intent is known to the ledger as held, so it is a duplicate, not a
    // second hold. The release is the held message's own.
    let sent = read_json(&topics.outcomes, 1, Duration::from_secs(100), |o| {
        o["user"] == "u-4" && o["status"] == "sent"
    });
    assert_eq!(sent.len(), 1, "released");
    assert_eq!(sent[0]["idempotency_key"], held[0]["idempotency_key"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = read_all_json(
        &topics.outcomes,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    let others: Vec<String> = statuses(&all[1..])
        .into_iter()
        .filter(|s| s != "evening-offer sent")
        .collect();
    assert!(
        others
            .iter()
            .all(|s| s == "evening-offer suppressed duplicate"),
        "only duplicates of the redelivered swipe besides the release: {others:?}"
    );
    assert_eq!(provider.received_by("fcm").len(), 1, "released once");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_reaching_another_instance_than_the_sender_finds_the_sms_it_answers() {
    let (topics, _provider, dir, text) = setup(2, "5/day", "u-5", false, true).await;
    let sender = start(dir.path(), &text).await;
    let p = producer();
    for seq in 1..=3 {
        publish(
            &p,
            &topics.transactions,
            "card-5",
            &swipe_of("u-5", "declined", seq),
        )
        .await;
    }
    let sent = read_json(&topics.outcomes, 1, Duration::from_secs(30), |o| {
        o["user"] == "u-5" && o["status"] == "sent"
    });
    assert_eq!(sent[0]["rule"], "velocity");
    // Another instance takes over every partition; the sender is gone.
    let other = start(dir.path(), &text).await;
    sender.stop().await;
    let mut took_over = false;
    for _ in 0..80 {
        if owned(other.admin_addr(), &topics.feedback).await.len() == 2 {
            took_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(took_over, "the other instance owns the feedback topic");
    let reply = json!({"MessageSid": "SM5", "AccountSid": TWILIO_SID,
        "From": "+14155552671", "To": "+15005550006", "Body": "NO", "NumMedia": "0"});
    publish(
        &p,
        &topics.feedback,
        "+14155552671",
        reply.to_string().as_bytes(),
    )
    .await;
    let replies = read_json(&topics.replies, 1, Duration::from_secs(30), |_| true);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["type"], "sms_reply");
    assert_eq!(replies[0]["rule"], "velocity", "{}", replies[0]);
    assert_eq!(replies[0]["idempotency_key"], sent[0]["idempotency_key"]);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_that_cannot_be_read_is_dead_lettered_and_the_stream_goes_on() {
    let (topics, provider, dir, text) = setup(2, "5/day", "u-6", true, false).await;
    let (_, config) = load_config(dir.path(), &text);
    let intents = config.intents_topic();
    let running = start(dir.path(), &text).await;
    // As if written by a herald version with another intent schema.
    publish_to(&intents, 0, "u-6", br#"{"id": 7, "rule": ["notice"]}"#).await;
    let p = producer();
    publish(
        &p,
        &topics.transactions,
        "card-6",
        &swipe_of("u-6", "approved", 1),
    )
    .await;
    let dead = read_json(&topics.dlq, 1, Duration::from_secs(30), |d| {
        d["reason"] == "bad_intent"
    });
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["topic"], intents.as_str());
    assert!(
        dead[0]["detail"]
            .as_str()
            .unwrap()
            .contains("intent cannot be read"),
        "{}",
        dead[0]
    );
    let sent = read_json(&topics.outcomes, 1, Duration::from_secs(30), |o| {
        o["user"] == "u-6" && o["status"] == "sent"
    });
    assert_eq!(sent.len(), 1, "the next intent is decided");
    assert_eq!(provider.received_by("fcm").len(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digests_waiting_items_survive_a_kill_9_and_it_goes_once_without_the_withdrawn_one() {
    let topics = Topics::create(2).await;
    let provider = Provider::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        format!(
            r#"rules:
  - id: swipe-summary
    sources: [{}]
    match: {{ status: approved }}
    channels: [push]
    category: news
    digest:
      window: {{ after_first: 25s }}
      withdraw: {{ match: {{ status: reversed }}, condition: "event.reverses == item.seq" }}
    template:
      body: "{{{{ digest.count }}}}: {{% for i in digest.items %}}{{{{ i.event.seq }}}} {{% endfor %}}"
"#,
            topics.transactions
        ),
    )
    .unwrap();
    publish_profile(&topics, "u-5", true, false).await;
    let (text, port) = config_with_admin(&topics, dir.path(), &provider.base_url());
    let (config_path, _) = load_config(dir.path(), &text);

    let mut owner = spawn_herald(&config_path, &dir.path().join("owner.log"));
    wait_ready_at(port).await;
    let p = producer();
    for seq in 1..=3 {
        publish(
            &p,
            &topics.transactions,
            "card-5",
            &swipe_of("u-5", "approved", seq),
        )
        .await;
    }
    let reversal = json!({"user_id": "u-5", "ts": herald::util::now_ms(), "status": "reversed", "reverses": 2});
    publish(
        &p,
        &topics.transactions,
        "card-5",
        reversal.to_string().as_bytes(),
    )
    .await;
    let before = read_json(&topics.outcomes, 4, Duration::from_secs(30), |o| {
        o["user"] == "u-5"
    });
    let kinds: Vec<String> = before
        .iter()
        .map(|o| {
            let reason = o["reason"].as_str().unwrap_or("");
            let code = reason.split(':').next().unwrap_or("");
            format!("{} {} {code}", o["rule"], o["status"]).replace('"', "")
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "swipe-summary held digested",
            "swipe-summary held digested",
            "swipe-summary held digested",
            "swipe-summary suppressed withdrawn"
        ],
        "{before:?}"
    );
    kill_9(&mut owner);

    let (_, config) = load_config(dir.path(), &text.replace(&port.to_string(), "0"));
    let running = herald::start(config).await.expect("herald starts");
    let sent = read_json(&topics.outcomes, 1, Duration::from_secs(100), |o| {
        o["user"] == "u-5" && o["status"] == "sent"
    });
    assert_eq!(sent[0]["digest"]["count"], 2, "{sent:?}");
    assert_eq!(sent[0]["digest"]["items"].as_array().unwrap().len(), 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pushes = provider.received_by("fcm");
    assert_eq!(pushes.len(), 1, "the digest goes once");
    assert_eq!(pushes[0].json["message"]["notification"]["body"], "2: 1 3");
    running.stop().await;
}

/// The feedback topic is read in batches, each committed to disk once: every
/// record of a batch is applied — a send another instance made, a click
/// naming that send in the same batch, a STOP — and the table's checkpoint
/// ends where the topic does, so a restart reads none of it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feedback_topic_read_in_batches_applies_every_record_and_checkpoints_its_end() {
    use herald::feedback::disk::{FeedbackDisk, FORMAT};
    use herald::kafka::follow::Start;
    let topics = Topics::create(1).await;
    let p = producer();
    let now = herald::util::now_ms();
    let sends = 400;
    let mut published = 0i64;
    for i in 0..sends {
        let sent = json!({"type": "herald_sent", "user": format!("u-{i}"), "rule": "notice",
            "key": null, "idempotency_key": format!("k-{i}"), "channel": "push",
            "time": now, "phone_sha256": null, "deployment": "elsewhere"});
        publish(
            &p,
            &topics.feedback,
            &format!("u-{i}"),
            sent.to_string().as_bytes(),
        )
        .await;
        published += 1;
        if i == 10 {
            // A click that names the send just before it, not its user.
            let click = json!({"type": "link_clicked", "message": "k-10", "time": now});
            publish(&p, &topics.feedback, "k-10", click.to_string().as_bytes()).await;
            published += 1;
        }
    }
    let stop = json!({"MessageSid": "SM9", "From": "+14155552671", "To": "+15005550006",
        "Body": "STOP", "NumMedia": "0"});
    publish(
        &p,
        &topics.feedback,
        "+14155552671",
        stop.to_string().as_bytes(),
    )
    .await;
    published += 1;

    let store = herald::store::Store::temporary(8 << 20).unwrap();
    let disk = FeedbackDisk::new(
        store.sealed_table("feedback", FORMAT).unwrap(),
        store.sealed_table("consent", FORMAT).unwrap(),
    );
    let client = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("feedback-reader"))
        .clone();
    let state = herald::feedback::FeedbackState::on_disk(
        client,
        topics.feedback.clone(),
        topics.consent.clone(),
        86_400_000,
        disk,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follow = tokio::spawn(std::sync::Arc::clone(&state).follow(stop_rx, now));
    tokio::time::timeout(Duration::from_secs(60), state.wait_caught_up())
        .await
        .expect("both topics read to their end");

    let found = (0..sends)
        .filter(|i| {
            state
                .sent_by_key(&format!("k-{i}"), now)
                .is_some_and(|s| *s.user == format!("u-{i}"))
        })
        .count();
    assert_eq!(
        found, sends,
        "every send another instance made is found by its key"
    );
    assert!(
        state.engaged("u-10", "link_clicked", None, now - 1),
        "the click found its send's user, read in the same batch"
    );
    assert!(state.opted_out("+14155552671"), "the STOP holds");
    let table = store.sealed_table("feedback", FORMAT).unwrap();
    match FeedbackDisk::start(&table, Start::Beginning) {
        Start::Offsets(offsets) => assert_eq!(
            offsets.into_iter().collect::<Vec<_>>(),
            vec![(0, published)],
            "the checkpoint is the topic's end"
        ),
        other => panic!("no checkpoint: {other:?}"),
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), follow).await;
}

//! The scenarios: each sets a stage, runs herald under one kind of fault while
//! swipes stream in, and reports what happened to every event.

use std::time::Duration;

use herald::util::now_ms;
use rand::Rng;
use tokio::time::sleep;

use super::load;
use super::scene::{Report, Scene};
use super::state;
use super::world::Broker;
use super::Options;

/// Swipes per second during a scenario.
const RATE: u32 = 50;

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn random_ms(low: u64, high: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(low..high))
}

/// Settles and counts, with the suite's usual patience.
pub(super) async fn close(s: Scene) -> Result<Report, String> {
    s.settle(secs(40), secs(240)).await;
    s.finish().await
}

/// kill -9 of the only instance at random moments, restarted at once; with
/// `dynamic_member`, as a dynamic member of the group (`instance_id = ""`).
pub async fn kill9(
    opts: &Options,
    broker: &Broker,
    kills: usize,
    dynamic_member: bool,
) -> Result<Report, String> {
    let name = if dynamic_member {
        "kill9-dynamic"
    } else {
        "kill9"
    };
    let mut s = Scene::new(opts, broker, name, "").await?;
    s.dynamic_member = dynamic_member;
    let mut i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    for k in 0..kills {
        sleep(random_ms(1_000, 6_000)).await;
        let start = now_ms();
        s.instances[i].kill9();
        s.instances[i].exited(secs(10)).await;
        i = s.spawn()?;
        s.fault(format!("kill -9 #{}", k + 1), start);
    }
    s.ready(i).await?;
    sleep(secs(5)).await;
    s.stop_load().await;
    s.notes.push(if dynamic_member {
        format!("{kills} kills at random moments 1–6 s after each start (some during start-up); dynamic membership (`instance_id = \"\"`): recovery includes the group's wait for the dead member's session (6 s)")
    } else {
        format!("{kills} kills at random moments 1–6 s after each start (some during start-up); the restarted instance takes its state slot and static member id back, and its partitions at once")
    });
    close(s).await
}

/// kill -9 of the only instance at random moments while profiles are
/// rewritten at a high rate (and swipes stream in), restarted at once; then
/// the profile table it left on disk is compared, user by user and with its
/// checkpoint, with a rebuild from the profiles topic.
pub async fn kill9_state(opts: &Options, broker: &Broker, kills: usize) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "kill9-state", "").await?;
    // Pattern state to compare too: a streak of swipes per card, whose
    // notices carry no `eid` and are not counted.
    s.add_rules(
        "streak.yaml",
        &format!(
            r#"rules:
  - id: swipe-streak
    description: Five approved swipes on one card within ten minutes (pattern state for the comparison; not counted).
    sources: [{source}]
    match: {{ status: approved }}
    pattern: {{ window: {{ count: 5, within: 10m }} }}
    channels: [push]
    category: transactional
    priority: high
    template:
      title: "streak"
      body: "{{{{ pattern.count }}}} swipes on one card"
"#,
            source = s.topics.transactions
        ),
    )?;
    let mut i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(state::rewrite_profiles(
        s.producer.clone(),
        s.topics.clone(),
        stopped,
    ));
    for k in 0..kills {
        sleep(random_ms(1_000, 6_000)).await;
        let start = now_ms();
        s.instances[i].kill9();
        s.instances[i].exited(secs(10)).await;
        i = s.spawn()?;
        s.fault(format!("kill -9 #{}", k + 1), start);
    }
    let _ = stop.send(true);
    let written = writer.await.map_err(|e| e.to_string())?;
    s.ready(i).await?;
    sleep(secs(5)).await;
    s.stop_load().await;
    let (state_dir, bootstrap, topic) = (
        s.state_dir(),
        broker.bootstrap.clone(),
        s.topics.profiles.clone(),
    );
    let changelog = format!("{}.ledger-changelog", s.group);
    let patterns = format!("{}.patterns-{}-changelog", s.group, s.topics.transactions);
    let feedback = s.topics.feedback.clone();
    s.settle(secs(40), secs(240)).await;
    let mut report = s.finish().await?;
    let compared = tokio::task::spawn_blocking(move || {
        let profiles = state::compare_profiles(&state_dir, &bootstrap, &topic)?;
        let ledger = state::compare_ledger(&state_dir, &bootstrap, &changelog)?;
        let patterns = state::compare_mirror(&state_dir, &bootstrap, &patterns)?;
        let feedback = state::compare_feedback(&state_dir, &bootstrap, &feedback)?;
        Ok::<_, String>((profiles, ledger, patterns, feedback))
    })
    .await
    .map_err(|e| e.to_string())?;
    let (
        (users, differ),
        (keys, tail, ledger_differ),
        (pattern_keys, pattern_tail, pattern_differ),
        (sends, feedback_missing),
    ) = compared?;
    report.notes.push(format!(
        "{kills} kills 1–6 s apart while {written} profile records were written; the profile table on disk against a rebuild from the topic: {users} users, {} differ; the send ledger on disk, brought up from its checkpoint ({tail} records past it), against a rebuild from its changelog: {keys} keys, {} differ; the pattern state's copy on disk, the same way ({pattern_tail} records past its checkpoint): {pattern_keys} keys, {} differ; the feedback table against its topic up to its checkpoint: {sends} sends, {} missing",
        differ.len(),
        ledger_differ.len(),
        pattern_differ.len(),
        feedback_missing.len()
    ));
    report.problems.extend(differ.into_iter().take(20));
    report.problems.extend(ledger_differ.into_iter().take(20));
    report.problems.extend(pattern_differ.into_iter().take(20));
    report
        .problems
        .extend(feedback_missing.into_iter().take(20));
    Ok(report)
}

/// kill -9 of one member of a three-instance group at random moments,
/// restarted at once: its partitions, and their stores, move to the others
/// and back.
pub async fn kill9_group(opts: &Options, broker: &Broker, kills: usize) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "kill9-group", "").await?;
    let mut live = Vec::new();
    for _ in 0..3 {
        let i = s.spawn()?;
        s.ready(i).await?;
        live.push(i);
    }
    s.start_load(RATE);
    for k in 0..kills {
        sleep(random_ms(2_000, 8_000)).await;
        let slot = rand::rng().random_range(0..3usize);
        let start = now_ms();
        s.instances[live[slot]].kill9();
        s.instances[live[slot]].exited(secs(10)).await;
        live[slot] = s.spawn()?;
        s.fault(format!("kill -9 #{} (member {})", k + 1, slot + 1), start);
    }
    for &i in &live {
        s.ready(i).await?;
    }
    sleep(secs(8)).await;
    s.stop_load().await;
    s.notes.push(format!(
        "{kills} kills of a random member of three, 2–8 s apart, each restarted at once"
    ));
    close(s).await
}

/// SIGTERM of the only instance at random moments (start-up included),
/// restarted once it has exited.
pub async fn sigterm(opts: &Options, broker: &Broker, stops: usize) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "sigterm", "").await?;
    let mut i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    let (mut longest, mut codes) = (Duration::ZERO, Vec::new());
    for k in 0..stops {
        sleep(random_ms(500, 6_000)).await;
        let start = now_ms();
        let began = std::time::Instant::now();
        s.instances[i].sigterm();
        match s.instances[i].exited(secs(30)).await {
            Some(code) => codes.push(code),
            None => {
                s.notes
                    .push(format!("stop #{}: not exited 30 s after SIGTERM", k + 1));
                s.instances[i].kill9();
            }
        }
        longest = longest.max(began.elapsed());
        i = s.spawn()?;
        s.fault(format!("SIGTERM #{}", k + 1), start);
    }
    s.ready(i).await?;
    sleep(secs(5)).await;
    s.stop_load().await;
    let clean = codes.iter().filter(|&&c| c == 0).count();
    s.notes.push(format!(
        "{clean}/{} exits with code 0; longest SIGTERM-to-exit {:.1} s (shutdown_grace_ms 5000)",
        codes.len(),
        longest.as_secs_f64()
    ));
    if clean != stops {
        s.notes.push(format!("exit codes: {codes:?}"));
    }
    close(s).await
}

/// Three instances join one by one, then one leaves by SIGTERM and one by
/// kill -9; after each change every topic's partitions must be spread evenly
/// over the live instances (herald's `range` assignor). `cooperative` uses
/// `cooperative-sticky` instead, for comparison: its spread is reported, not
/// required.
pub async fn group(opts: &Options, broker: &Broker, cooperative: bool) -> Result<Report, String> {
    let (name, extra) = if cooperative {
        (
            "group-cooperative",
            "\"partition.assignment.strategy\" = \"cooperative-sticky\"",
        )
    } else {
        ("group", "")
    };
    let mut s = Scene::new(opts, broker, name, extra).await?;
    let a = s.spawn()?;
    s.ready(a).await?;
    s.start_load(RATE);
    sleep(secs(8)).await;
    let mut live = vec![a];
    for who in ["B", "C"] {
        let start = now_ms();
        let n = s.spawn()?;
        s.ready(n).await?;
        s.fault(format!("{who} joins"), start);
        live.push(n);
        sleep(secs(10)).await;
        s.check_spread(&format!("after {who} joins"), &live, !cooperative)
            .await;
    }
    let start = now_ms();
    s.instances[1].sigterm();
    let code = s.instances[1].exited(secs(30)).await;
    s.fault("B leaves (SIGTERM)".into(), start);
    s.notes.push(format!("B exit code {code:?}"));
    live.retain(|&i| i != 1);
    sleep(secs(10)).await;
    s.check_spread("after B leaves", &live, !cooperative).await;
    let start = now_ms();
    s.instances[2].kill9();
    s.instances[2].exited(secs(10)).await;
    s.fault("C leaves (kill -9)".into(), start);
    sleep(secs(15)).await;
    s.stop_load().await;
    close(s).await
}

/// On three brokers: kill -9 of the broker leading most source partitions,
/// restarted 20 s later.
pub async fn leader(opts: &Options, broker: &Broker, down: u64) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "broker-leader", "").await?;
    let i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    sleep(secs(8)).await;
    let node = broker.busiest_leader(&s.topics.transactions)?;
    let start = now_ms();
    tokio::task::block_in_place(|| broker.kill_node(node))?;
    // A static member whose coordinator was away longer than its session is
    // fenced by librdkafka and exits; the supervisor every deployment has
    // restarts it (docs/operators/running.md).
    s.supervise_for(secs(down)).await?;
    tokio::task::block_in_place(|| broker.restart_node(node))?;
    s.fault(
        format!("broker {node} (leader) kill -9, restarted after {down} s"),
        start,
    );
    s.supervise_for(secs(10)).await?;
    s.stop_load().await;
    s.supervise_for(secs(100)).await?;
    close(s).await
}

/// The (single) broker frozen by SIGSTOP, then resumed.
pub async fn freeze(opts: &Options, broker: &Broker, frozen: u64) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "broker-freeze", "").await?;
    let i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    sleep(secs(8)).await;
    let start = now_ms();
    tokio::task::block_in_place(|| broker.freeze())?;
    sleep(secs(frozen)).await;
    tokio::task::block_in_place(|| broker.thaw())?;
    s.fault(format!("broker SIGSTOP {frozen} s"), start);
    // herald exits when its consumer cannot rejoin the group although the
    // broker answers again; the supervisor every deployment has restarts it.
    s.supervise_for(secs(15)).await?;
    s.stop_load().await;
    s.supervise_for(secs(100)).await?;
    close(s).await
}

/// The provider answering 503 to every request for a while.
pub async fn provider_down(opts: &Options, broker: &Broker, down: u64) -> Result<Report, String> {
    let s = Scene::new(opts, broker, "provider-down", "").await?;
    provider_outage(s, down, "provider down (503)").await
}

/// One instance of scene `s` under load, the stand-in answering 503 to
/// every request for `down` s (the fault named `what`).
pub(super) async fn provider_outage(mut s: Scene, down: u64, what: &str) -> Result<Report, String> {
    let i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    sleep(secs(8)).await;
    let start = now_ms();
    s.standin.fail_per_mille(1000);
    sleep(secs(down)).await;
    s.standin.fail_per_mille(0);
    s.fault(format!("{what} {down} s"), start);
    sleep(secs(10)).await;
    s.stop_load().await;
    close(s).await
}

/// 20 % of provider requests answered 503 throughout.
pub async fn provider_flaky(opts: &Options, broker: &Broker, run: u64) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "provider-503-20pct", "").await?;
    let i = s.spawn()?;
    s.ready(i).await?;
    s.standin.fail_per_mille(200);
    s.start_load(RATE);
    sleep(secs(run)).await;
    s.stop_load().await;
    s.settle(secs(30), secs(120)).await;
    s.standin.fail_per_mille(0);
    close(s).await
}

/// Hostile records on the source topic, each followed by a valid swipe.
pub async fn hostile(opts: &Options, broker: &Broker) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "hostile", "").await?;
    let i = s.spawn()?;
    s.ready(i).await?;
    let now = now_ms();
    let nested = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let oversize = format!(
        r#"{{"eid":"big","user_id":"u1","ts":{now},"status":"approved","pad":"{}"}}"#,
        "x".repeat(900_000)
    );
    let with =
        |field: &str| format!(r#"{{"user_id":"u1","ts":{now},"status":"approved",{field}}}"#);
    let mut bad_utf8 = with(r#""merchant":"AB""#).into_bytes();
    let at = bad_utf8.len() - 3;
    bad_utf8[at] = 0xff;
    let cases: Vec<(&str, Option<Vec<u8>>, &'static str)> = vec![
        ("oversize-900KB", Some(oversize.into_bytes()), "too_large"),
        ("nested-5000", Some(nested.into_bytes()), "not_json"),
        ("invalid-utf8", Some(bad_utf8), "not_json"),
        (
            "nan",
            Some(with(r#""amount":NaN"#).into_bytes()),
            "not_json",
        ),
        (
            "infinity",
            Some(with(r#""amount":Infinity"#).into_bytes()),
            "not_json",
        ),
        (
            "1e400",
            Some(with(r#""amount":1e400"#).into_bytes()),
            "not_json",
        ),
        (
            "ts-1e300",
            Some(
                r#"{"user_id":"u1","ts":1e300,"status":"approved"}"#
                    .as_bytes()
                    .to_vec(),
            ),
            "bad_time",
        ),
        (
            "ts-i64-min",
            Some(
                r#"{"user_id":"u1","ts":-9223372036854775808,"status":"approved"}"#
                    .as_bytes()
                    .to_vec(),
            ),
            "bad_time",
        ),
        ("empty-value", Some(Vec::new()), "not_json"),
        ("tombstone", None, "empty"),
    ];
    let topic = s.topics.transactions.clone();
    for (n, (what, payload, expect)) in cases.into_iter().enumerate() {
        let eid = format!("hostile-{what}");
        load::send(
            &s.producer,
            &topic,
            &s.ledger,
            eid,
            Some("card-1"),
            payload.as_deref(),
            Some(expect),
        )
        .await?;
        let eid = format!("hostile-after-{what}");
        let (key, payload) = load::swipe(&eid, n);
        load::send(
            &s.producer,
            &topic,
            &s.ledger,
            eid,
            Some(&key),
            Some(&payload),
            None,
        )
        .await?;
    }
    let (_, payload) = load::swipe("hostile-no-key", 3);
    load::send(
        &s.producer,
        &topic,
        &s.ledger,
        "hostile-no-key".into(),
        None,
        Some(&payload),
        None,
    )
    .await?;
    s.settle(secs(20), secs(60)).await;
    let alive = s.instances[i].alive();
    s.notes.push(format!(
        "herald {} after the hostile records",
        if alive { "still running" } else { "EXITED" }
    ));
    let report = s.finish().await?;
    if !alive {
        return Err("herald exited on hostile input".into());
    }
    Ok(report)
}

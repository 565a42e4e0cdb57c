//! Operators' mistakes and the faults they combine: a topic missing at
//! start, a second deployment started on the same topics, a push outage
//! while an idle SMS channel is configured, and a SIGTERM (a rolling
//! deploy) while one user's long backlog drains.

use std::time::{Duration, Instant};

use herald::util::now_ms;
use tokio::time::sleep;

use super::held::{hold_policy, quiet_window};
use super::load;
use super::scenarios::{close, provider_outage, secs};
use super::scene::{Report, Scene};
use super::world::Broker;
use super::Options;

/// Swipes per second.
const RATE: u32 = 50;

/// The outcomes topic deleted before herald starts: herald must exit
/// non-zero at once, naming the topic and the command that creates it; once
/// the topic exists it starts and loses nothing.
pub async fn missing_topic(opts: &Options, broker: &Broker) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "missing-topic", "").await?;
    let outcomes = s.topics.outcomes.clone();
    broker.delete_topics(&[&outcomes]).await?;
    let start = now_ms();
    let began = Instant::now();
    let i = s.spawn()?;
    let code = s.instances[i].exited(secs(60)).await;
    let took = began.elapsed();
    let log = s.instances[i].log();
    // Exited (or not): not the supervisor's to restart.
    s.instances[i].kill9();
    let named = log.contains(&format!("topic {outcomes}: does not exist"));
    let fix = log.contains(&format!("--create --topic {outcomes}"));
    s.notes.push(format!(
        "the outcomes topic missing at start: herald exited with code {code:?} {:.1} s after it started, {} the topic and {} the command that creates it",
        took.as_secs_f64(),
        if named { "naming" } else { "NOT naming" },
        if fix { "giving" } else { "NOT giving" },
    ));
    if code != Some(1) || !named || !fix {
        s.problems.push(format!(
            "a missing topic: exit code {code:?}, named {named}, fix given {fix}"
        ));
    }
    // The operator creates it (a topic just deleted may not be made again
    // at once).
    let mut made = Err(String::new());
    for _ in 0..60 {
        made = broker.create_topics(&[(&outcomes, 3, false)]).await;
        if made.is_ok() {
            break;
        }
        sleep(Duration::from_millis(500)).await;
    }
    made?;
    s.fault("outcomes topic missing at start".into(), start);
    let j = s.spawn()?;
    s.ready(j).await?;
    s.start_load(RATE);
    sleep(secs(15)).await;
    s.stop_load().await;
    close(s).await
}

/// Every swipe held by quiet hours, and a second deployment (its own group
/// id, no rule for those messages) started on the same topics while they
/// wait: it must leave them alone, and the first deployment releases each
/// once when the quiet hours end.
pub async fn second_deployment(opts: &Options, broker: &Broker) -> Result<Report, String> {
    let (window, ends_ms) = quiet_window()?;
    let mut s = Scene::new(opts, broker, "second-deployment", &hold_policy(&window)).await?;
    let a = s.spawn()?;
    s.ready(a).await?;
    s.start_load(RATE);
    sleep(secs(10)).await;
    let start = now_ms();
    let other = format!(
        r#"rules:
  - id: chargebacks
    description: Another deployment's rule; nothing in this stream matches it.
    sources: [{source}]
    match: {{ status: chargeback }}
    channels: [push]
    category: transactional
    template:
      body: "chargeback"
"#,
        source = s.topics.transactions
    );
    let b = s.spawn_deployment("other", &other)?;
    s.ready(b).await?;
    s.fault(
        "a second deployment starts on the same topics".into(),
        start,
    );
    let left = ends_ms + 30_000 - now_ms();
    sleep(Duration::from_millis(left.max(0) as u64)).await;
    s.stop_load().await;
    let log = s.instances[b].log();
    let touched: Vec<&str> = ["held_rule_removed", "not loaded", "no longer exists"]
        .into_iter()
        .filter(|w| log.contains(w))
        .collect();
    s.notes.push(format!(
        "quiet hours {window} Europe/Paris held every swipe; a second deployment (group `{}-other`, one rule matching nothing) started 10 s in, on the same source, held, feedback, consent and outcome topics; it {}",
        s.group,
        if touched.is_empty() {
            "reported, dead-lettered and released none of the first's held messages".to_string()
        } else {
            format!("acted on the first's held messages (its log: {touched:?})")
        }
    ));
    if !touched.is_empty() {
        s.problems.push(format!(
            "the second deployment acted on the first's held messages: {touched:?}"
        ));
    }
    close(s).await
}

/// The push provider down with an SMS channel configured (idle: the rule
/// sends push only): `/readyz` must be 503 naming the push channel.
pub async fn provider_down_with_sms(
    opts: &Options,
    broker: &Broker,
    down: u64,
) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "provider-down-sms", "").await?;
    let sms = format!(
        "\n[channels.sms]\nprovider = \"twilio\"\nbase_url = \"{}\"\naccount_sid_env = \"HERALD_FAULTS_TWILIO_SID\"\nauth_token_env = \"HERALD_FAULTS_TWILIO_TOKEN\"\nfrom = \"+15005550006\"\n",
        s.standin.base_url()
    );
    s.append_config(&sms);
    let mut report = provider_outage(s, down, "push provider down (503), SMS idle,").await?;
    let said = report
        .not_ready
        .as_deref()
        .is_some_and(|r| r.contains("circuits open: push"));
    if !said {
        report.problems.push(format!(
            "readiness did not name the failing push channel during the outage: {:?}",
            report.not_ready
        ));
    }
    Ok(report)
}

/// One user's backlog of `backlog` alerts, the provider answering in 40 ms,
/// and `stops` SIGTERMs while it drains, each instance started again once
/// it has exited (a rolling deploy): no alert may go twice, not even one
/// reported `unknown_after_crash`, and every exit must be clean.
pub async fn sigterm_backlog(
    opts: &Options,
    broker: &Broker,
    backlog: usize,
    stops: usize,
) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "sigterm-backlog", "").await?;
    let mut i = s.spawn()?;
    s.ready(i).await?;
    s.standin.delay(Duration::from_millis(40));
    let topic = s.topics.transactions.clone();
    let mut sends = tokio::task::JoinSet::new();
    for k in 0..backlog {
        // User u0 every time: one user's messages, decided in order.
        let (key, payload) = load::swipe(&format!("backlog-{k}"), k * load::USERS);
        let (producer, topic, ledger) = (s.producer.clone(), topic.clone(), s.ledger.clone());
        sends.spawn(async move {
            load::send(
                &producer,
                &topic,
                &ledger,
                format!("backlog-{k}"),
                Some(&key),
                Some(&payload),
                None,
            )
            .await
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent.map_err(|e| e.to_string())??;
    }
    let (mut codes, mut longest) = (Vec::new(), Duration::ZERO);
    for k in 0..stops {
        sleep(secs(6)).await;
        let start = now_ms();
        let began = Instant::now();
        s.instances[i].sigterm();
        let code = s.instances[i].exited(secs(30)).await;
        longest = longest.max(began.elapsed());
        codes.push(code);
        if code.is_none() {
            s.instances[i].kill9();
        }
        i = s.spawn()?;
        s.ready(i).await?;
        s.fault(format!("SIGTERM #{} during the backlog", k + 1), start);
    }
    s.standin.delay(Duration::ZERO);
    let clean = codes.iter().filter(|c| **c == Some(0)).count();
    s.notes.push(format!(
        "{backlog} alerts for one user, the provider answering in 40 ms; {stops} SIGTERMs 6 s apart while they drained, each instance restarted once it had exited; {clean}/{stops} exits with code 0, the longest {:.1} s after its SIGTERM (shutdown_grace_ms 5000)",
        longest.as_secs_f64()
    ));
    if clean != stops {
        s.problems
            .push(format!("exit codes after SIGTERM: {codes:?}"));
    }
    let mut report = close(s).await?;
    if report.figures.duplicates > 0 {
        report.problems.push(format!(
            "{} alert(s) sent twice across a SIGTERM (a clean stop must repeat nothing)",
            report.figures.duplicates
        ));
    }
    Ok(report)
}

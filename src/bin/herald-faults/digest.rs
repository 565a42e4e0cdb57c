//! The digest scenario: every swipe is also an item of its user's digest (closing 20 s after its first item, or at 30 items), herald killed with -9 throughout; every item must be in exactly one digest push, and no digest sent twice.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use tokio::time::sleep;

use super::scene::{Report, Scene};
use super::world::Broker;
use super::Options;

/// Swipes per second (40 users: about 25 items per digest).
const RATE: u32 = 50;
/// The digest's window and its largest, as the rule says them.
const WINDOW_S: u64 = 20;
const MAX_ITEMS: usize = 30;

/// The digest rule beside the counted purchase notice: its push lists its
/// items as `item=<eid>` (not `eid=`, which the notice tally reads).
fn rule(source: &str) -> String {
    format!(
        r#"rules:
  - id: swipe-digest
    description: Every approved swipe, collected per user (the fault suite's digest scenario).
    sources: [{source}]
    match: {{ status: approved }}
    channels: [push]
    category: digestible
    digest:
      window: {{ after_first: {WINDOW_S}s }}
      max_items: {MAX_ITEMS}
      show: {{ first: {MAX_ITEMS} }}
    template:
      title: "digest"
      body: "{{{{ digest.count }}}}:{{% for i in digest.items %}} item={{{{ i.event.eid }}}}{{% endfor %}}"
"#
    )
}

/// The digest's category: no caps (a user gets many digests in the run).
const POLICY: &str = "\n[policy.categories.digestible]\nbypass = [\"caps\"]\n";

/// kill -9 at random moments while digests collect and close; then every
/// valid swipe must be an item of exactly one digest push.
pub async fn kill9_digest(opts: &Options, broker: &Broker, kills: usize) -> Result<Report, String> {
    let mut s = Scene::new(opts, broker, "kill9-digest", POLICY).await?;
    s.add_rules("digest.yaml", &rule(&s.topics.transactions))?;
    let mut i = s.spawn()?;
    s.ready(i).await?;
    s.start_load(RATE);
    for k in 0..kills {
        let gap = rand::rng().random_range(2_000..9_000);
        sleep(Duration::from_millis(gap)).await;
        let start = herald::util::now_ms();
        s.instances[i].kill9();
        s.instances[i].exited(Duration::from_secs(10)).await;
        i = s.spawn()?;
        s.fault(format!("kill -9 #{}", k + 1), start);
    }
    s.ready(i).await?;
    sleep(Duration::from_secs(5)).await;
    s.stop_load().await;
    // The last digests close a window after the last swipe.
    s.settle(Duration::from_secs(40), Duration::from_secs(240))
        .await;
    let produced: Vec<String> = s
        .ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|p| p.valid)
        .map(|p| p.eid.clone())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(WINDOW_S + 60);
    let mut tally = count(&s.standin.recorded(), &produced);
    while tally.missing > 0 && std::time::Instant::now() < deadline {
        sleep(Duration::from_secs(2)).await;
        tally = count(&s.standin.recorded(), &produced);
    }
    let (bootstrap, outcomes) = (broker.bootstrap.clone(), s.topics.outcomes.clone());
    let kept = [outcomes.clone(), s.topics.held.clone()];
    let dir = s.dir().to_path_buf();
    let mut report = s.finish().await?;
    // A digest whose request was in flight at a kill is sent again
    // (`on_unknown = "resend"`) and its outcome says so: reported.
    let outcomes =
        tokio::task::spawn_blocking(move || super::tally::read_all(&bootstrap, &outcomes))
            .await
            .map_err(|e| e.to_string())??;
    let reported = outcomes
        .iter()
        .filter_map(|(_, _, v)| serde_json::from_slice::<serde_json::Value>(v).ok())
        .filter(|o| o["rule"] == "swipe-digest" && o["unknown_after_crash"] == true)
        .count();
    report.notes.push(format!(
        "digests of every approved swipe per user ({WINDOW_S} s after the first item, or {MAX_ITEMS} items), {kills} kills 2–9 s apart: {} swipes, {} digests sent (largest {} items); items missing from every digest {}, items in two digests {}, digests sent again {} ({reported} reported `unknown_after_crash`, in flight at a kill)",
        produced.len(),
        tally.pushes,
        tally.largest,
        tally.missing,
        tally.twice,
        tally.digests_twice
    ));
    if tally.digests_twice > reported {
        report.problems.push(format!(
            "{} digests sent twice, {reported} of them reported",
            tally.digests_twice
        ));
    }
    if tally.missing > 0 {
        report.problems.push(format!(
            "{} swipes in no digest (e.g. {})",
            tally.missing,
            tally.missing_examples.join(", ")
        ));
        // The broker's data goes with the run: what it held is kept beside
        // the herald logs, to find where the item went.
        match keep_topics(&broker.bootstrap, &kept, &dir).await {
            Ok(()) => report.notes.push(format!(
                "the outcomes and held topics are kept in {}",
                dir.display()
            )),
            Err(e) => report
                .notes
                .push(format!("the topics could not be kept: {e}")),
        }
    }
    if tally.twice > 0 {
        report
            .problems
            .push(format!("{} items in two different digests", tally.twice));
    }
    Ok(report)
}

/// What the digest pushes say of the produced swipes.
#[derive(Default)]
struct Tally {
    pushes: usize,
    largest: usize,
    missing: usize,
    missing_examples: Vec<String>,
    twice: usize,
    digests_twice: usize,
}

fn count(arrivals: &[herald::standin::Arrival], produced: &[String]) -> Tally {
    let mut t = Tally::default();
    let mut items: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for a in arrivals {
        if a.status >= 300 || a.rule.as_deref() != Some("swipe-digest") {
            continue;
        }
        // The same digest again is counted once here, as a digest sent twice.
        if let Some(key) = a.key.as_deref() {
            let seen = keys.entry(key).or_default();
            *seen += 1;
            if *seen > 1 {
                continue;
            }
        }
        t.pushes += 1;
        let mut n = 0;
        for eid in a
            .text
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("item="))
        {
            *items.entry(eid).or_default() += 1;
            n += 1;
        }
        t.largest = t.largest.max(n);
    }
    t.digests_twice = keys.values().filter(|&&c| c > 1).count();
    for eid in produced {
        match items.get(eid.as_str()) {
            None => {
                t.missing += 1;
                if t.missing_examples.len() < 5 {
                    t.missing_examples.push(eid.clone());
                }
            }
            Some(&c) if c > 1 => t.twice += 1,
            Some(_) => {}
        }
    }
    t
}

/// Writes every record of `topics` to `<dir>/<topic>.jsonl` (partition,
/// offset, the value as text, or as hex when it is binary: held records).
async fn keep_topics(
    bootstrap: &str,
    topics: &[String],
    dir: &std::path::Path,
) -> Result<(), String> {
    for topic in topics {
        let (bootstrap, name) = (bootstrap.to_string(), topic.to_string());
        let records =
            tokio::task::spawn_blocking(move || super::tally::read_all(&bootstrap, &name))
                .await
                .map_err(|e| e.to_string())??;
        let lines: Vec<String> = records
            .iter()
            .map(|(partition, offset, value)| {
                // Text when it is (outcomes), else hex: lossy text would
                // lose the bytes of a binary record.
                let value = match std::str::from_utf8(value) {
                    Ok(text) => serde_json::json!({ "text": text }),
                    Err(_) => serde_json::json!({ "hex": hex::encode(value) }),
                };
                serde_json::json!({ "partition": partition, "offset": offset, "value": value })
                    .to_string()
            })
            .collect();
        std::fs::write(dir.join(format!("{topic}.jsonl")), lines.join("\n"))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

//! `herald-faults`: the fault suite. Real herald processes (the release
//! binary) on real Apache Kafka, a provider stand-in that records every
//! request and fails on demand, and a producer that stamps every event with a
//! unique id; each scenario reports lost, duplicate, failed and recovery
//! figures, and the run fails when a guarantee does not hold.
//!
//! Run it with `scripts/faults.sh` (full; writes RELIABILITY.md) or
//! `scripts/faults.sh --short` (what CI runs).

mod digest;
mod disk;
mod feed;
mod held;
mod load;
mod operator;
mod scenarios;
mod scene;
mod state;
mod stuck;
mod tally;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use scene::Report;
use world::Broker;

/// The access token herald and the stand-in share in the suite.
pub const FCM_TOKEN: &str = "herald-faults-token";
/// The Twilio account the stand-in accepts (an SMS channel's scenarios).
pub const TWILIO_SID: &str = "AC00000000000000000000000000000000";
pub const TWILIO_TOKEN: &str = "herald-faults-twilio-token";

/// The suite's options.
#[derive(Parser, Debug, Clone)]
#[command(name = "herald-faults", about = "herald's fault suite on Apache Kafka")]
pub struct Options {
    /// The short version (CI): fewer kills, shorter outages.
    #[arg(long)]
    short: bool,
    /// Run only these scenarios (kill9, kill9-dynamic, kill9-state, kill9-held, kill9-digest, second-deployment, missing-topic, sigterm-backlog, sigterm, sigterm-frozen, freeze-group, group, group-cooperative, provider-down-sms,
    /// broker-leader, broker-freeze, provider-down, provider-flaky, hostile).
    #[arg(long = "only")]
    only: Vec<String>,
    /// The herald binary under test.
    #[arg(long, default_value = "target/release/herald")]
    herald: PathBuf,
    /// The project root (for scripts/broker.sh).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Where scenarios keep their configs and herald logs.
    #[arg(long, default_value = "target/faults")]
    work: PathBuf,
    /// Write the results table (markdown) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let opts = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = std::time::Instant::now();
    let reports = match runtime.block_on(run(&opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("faults: {e}");
            return ExitCode::FAILURE;
        }
    };
    let table = table(&reports, &opts, started.elapsed());
    println!("{table}");
    if let Some(out) = &opts.out {
        if let Err(e) = std::fs::write(out, &table) {
            eprintln!("faults: {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    let mut failed = false;
    for r in &reports {
        for why in r.failures() {
            eprintln!("FAIL {}: {why}", r.name);
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        eprintln!("faults: every guarantee held");
        ExitCode::SUCCESS
    }
}

fn wanted(opts: &Options, name: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|o| o == name)
}

async fn run(opts: &Options) -> Result<Vec<Report>, String> {
    let short = opts.short;
    let mut reports = Vec::new();
    let single = [
        "kill9",
        "kill9-dynamic",
        "kill9-state",
        "kill9-held",
        "kill9-digest",
        "kill9-group",
        "sigterm",
        "group",
        "group-cooperative",
        "broker-freeze",
        "freeze-group",
        "sigterm-frozen",
        "provider-down",
        "provider-down-sms",
        "provider-flaky",
        "missing-topic",
        "second-deployment",
        "sigterm-backlog",
        "hostile",
        "disk",
    ];
    if single.iter().any(|s| wanted(opts, s)) {
        let broker = tokio::task::block_in_place(|| Broker::single(&opts.root))?;
        let step = |name: &str| {
            eprintln!("faults: == {name}");
            wanted(opts, name)
        };
        if step("hostile") {
            reports.push(scenarios::hostile(opts, &broker).await?);
        }
        if step("kill9") {
            reports.push(scenarios::kill9(opts, &broker, if short { 4 } else { 20 }, false).await?);
        }
        if !short && step("kill9-dynamic") {
            reports.push(scenarios::kill9(opts, &broker, 20, true).await?);
        }
        if step("kill9-state") {
            reports.push(scenarios::kill9_state(opts, &broker, if short { 5 } else { 20 }).await?);
        }
        if step("kill9-held") {
            reports.push(held::kill9_held(opts, &broker, if short { 4 } else { 20 }).await?);
        }
        if step("kill9-digest") {
            reports.push(digest::kill9_digest(opts, &broker, if short { 3 } else { 15 }).await?);
        }
        if step("second-deployment") {
            reports.push(operator::second_deployment(opts, &broker).await?);
        }
        if step("sigterm-backlog") {
            reports.push(
                operator::sigterm_backlog(opts, &broker, 2_000, if short { 2 } else { 5 }).await?,
            );
        }
        if step("missing-topic") {
            reports.push(operator::missing_topic(opts, &broker).await?);
        }
        if step("kill9-group") {
            reports.push(scenarios::kill9_group(opts, &broker, if short { 3 } else { 20 }).await?);
        }
        if step("sigterm") {
            reports.push(scenarios::sigterm(opts, &broker, if short { 3 } else { 20 }).await?);
        }
        if step("group") {
            reports.push(scenarios::group(opts, &broker, false).await?);
        }
        if !short && step("group-cooperative") {
            reports.push(scenarios::group(opts, &broker, true).await?);
        }
        if step("provider-down") {
            reports
                .push(scenarios::provider_down(opts, &broker, if short { 20 } else { 60 }).await?);
        }
        if step("provider-down-sms") {
            reports.push(
                operator::provider_down_with_sms(opts, &broker, if short { 20 } else { 60 })
                    .await?,
            );
        }
        if step("provider-flaky") {
            reports
                .push(scenarios::provider_flaky(opts, &broker, if short { 15 } else { 45 }).await?);
        }
        if !short && step("disk") {
            reports.push(disk::disk(opts, &broker, 20).await?);
        }
        if step("broker-freeze") {
            reports.push(scenarios::freeze(opts, &broker, if short { 20 } else { 60 }).await?);
        }
        if step("freeze-group") {
            let (runs, frozen) = if short { (1, 20) } else { (10, 60) };
            reports.push(stuck::freeze_group(opts, &broker, 2, runs, frozen).await?);
            if !short {
                reports.push(stuck::freeze_group(opts, &broker, 3, runs, frozen).await?);
            }
        }
        if step("sigterm-frozen") {
            reports.push(stuck::sigterm_frozen(opts, &broker, if short { 2 } else { 10 }).await?);
        }
    }
    if wanted(opts, "broker-leader") {
        eprintln!("faults: == broker-leader (three nodes)");
        let cluster = tokio::task::block_in_place(|| Broker::cluster(&opts.root))?;
        reports.push(scenarios::leader(opts, &cluster, if short { 10 } else { 20 }).await?);
    }
    Ok(reports)
}

/// What RELIABILITY.md says before the figures (it is written whole by the suite).
const PREAMBLE: &str = "# Reliability: herald under faults

The figures below come from herald's fault suite (`src/bin/herald-faults/`):
real herald processes (the release binary) on real Apache Kafka started by
`scripts/broker.sh`, a provider stand-in (FCM HTTP v1) that records every
request with its arrival time and fails on demand, and a producer that stamps
every swipe with a unique id. One rule sends a push for every approved swipe.

- **lost**: no successful provider request and no final outcome with a reason.
- **duplicate**: more than one successful provider request for one event; in
  brackets, those herald itself reported: a later send's outcome says
  `unknown_after_crash` (the send ledger found the first request recorded
  `attempted` with no answer: in flight when its instance died; the channel's
  `on_unknown = \"resend\"`, the default). Any other duplicate fails the run.
- **failed / suppressed**: never sent, with the outcome's reason.
- **recovery**: from the end of each fault (restart issued, broker resumed,
  provider back) to the first successful request after it.
- **longest pause**: the longest gap between successful requests from each
  fault's start to 30 s later (or to 10 s after its end).
- **readiness**: the first `/readyz` 503 seen during a fault, with its reasons.

The run fails (exit 1) on any lost event, any duplicate not reported as
`unknown_after_crash`, and any hostile record not dead-lettered with its
expected reason. State lives in Kafka (docs/engineers/state.md): the send ledger, caps
and pattern windows are restored by each partition's next owner, so a
restarted or surviving instance knows every decision made before a kill;
profiles are kept on local disk with the topic offsets they hold, and
`kill9-state` compares that table, after 20 kills during heavy profile
writes, with a rebuild from the topic (the send ledger and the pattern
state's copy on disk too, from their changelogs). `kill9-held` holds every
swipe by quiet hours that end two minutes later, kills herald during the
hold and around the release, and compares the held table on disk with the
held topic: every held notice must go out once. `freeze-group` freezes the
broker under two instances (and three, in the full run) and fails on a
process that neither regains its work nor exits; `sigterm-frozen` sends
SIGTERM and freezes the broker half a second later, and fails unless herald
exits within 20 s. `second-deployment` holds every swipe by quiet hours
and starts a second deployment (its own group id, no rule for them) on the
same topics: it must leave the held messages alone, and each goes out once.
`sigterm-backlog` sends SIGTERM while one user's 2,000 alerts drain (a
rolling deploy) and fails on any alert sent twice. `missing-topic` deletes the outcomes topic before the start: herald must
exit 1 naming it and the command that creates it. `provider-down-sms`
takes the push provider down with an idle SMS channel configured:
`/readyz` must say push is failing. `group` fails unless each topic's
partitions are spread evenly after every change. `disk` (full suite only; it mounts a
tmpfs, so it needs root) fills the state directory while herald runs, makes
it read-only while herald starts, and deletes it while herald is stopped.
This file is rewritten by `scripts/faults.sh`; `scripts/faults.sh --short`
(fewer kills, shorter outages) runs in CI.

The suite fails where herald did: run against the release binary of commit
a402d14 (before the fixes of the Apache Kafka issue) with
`herald-faults --herald <old binary> --short --only hostile --only provider-down`,
the 900 KB record got no dead letter (its base64 copy exceeded the broker's
1 MiB limit and was retried for ever, its partition's offset frozen, `/readyz`
200), the event times 1e300 and i64::MIN passed decoding, and a 20 s provider
outage failed 804 of 1,901 notifications (`provider_status:503`) with `/readyz`
200 throughout.

";

/// The results as a markdown table, with the command that produced them.
fn table(reports: &[Report], opts: &Options, took: std::time::Duration) -> String {
    let mut out = String::from(PREAMBLE);
    let mut command = String::from("scripts/faults.sh");
    if opts.short {
        command.push_str(" --short");
    }
    for only in &opts.only {
        command.push_str(&format!(" --only {only}"));
    }
    out.push_str(&format!(
        "Produced by `{command}` on {} in {:.0} min (herald release build, Apache Kafka {}, {} swipes/s).\n\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d"),
        took.as_secs_f64() / 60.0,
        kafka_version(&opts.root),
        50
    ));
    out.push_str("| scenario | events | sent once | duplicates (reported unknown_after_crash) | failed / suppressed | lost | recovery after fault: median / max | longest pause in sends | readiness during the fault |\n");
    out.push_str("|---|---:|---:|---:|---|---:|---|---|---|\n");
    for r in reports {
        let f = &r.figures;
        let failed = if f.failed.is_empty() {
            "0".to_string()
        } else {
            f.failed
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut rec = f.recovery_ms.clone();
        rec.sort_unstable();
        let recovery = match (rec.get(rec.len() / 2), rec.last()) {
            (Some(m), Some(x)) => format!("{:.1} s / {:.1} s", *m as f64 / 1e3, *x as f64 / 1e3),
            _ => "—".into(),
        };
        let pause = r
            .pauses_ms
            .iter()
            .max()
            .map_or("—".into(), |p| format!("{:.1} s", *p as f64 / 1e3));
        out.push_str(&format!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} |\n",
            r.name,
            f.events,
            f.sent_once,
            f.duplicates,
            f.duplicates_reported,
            failed,
            f.lost.len(),
            recovery,
            pause,
            r.not_ready
                .as_deref()
                .map_or("—".into(), |s| format!("503: {s}")),
        ));
    }
    out.push_str("\nPer scenario:\n\n");
    for r in reports {
        out.push_str(&format!("- **{}**:", r.name));
        let f = &r.figures;
        if f.duplicates_across_fault > 0 {
            out.push_str(&format!(
                " every duplicate's first request came at most {} ms before a kill (in flight at the kill);",
                f.duplicate_lead_ms
            ));
        }
        if f.unknown_after_crash > 0 {
            out.push_str(&format!(
                " {} send(s) found attempted without an answer by the next owner, each recorded `unknown_after_crash`;",
                f.unknown_after_crash
            ));
        }
        if f.refused_requests > 0 {
            out.push_str(&format!(
                " {} requests answered 503 by the stand-in;",
                f.refused_requests
            ));
        }
        if f.dead_lettered_as_expected > 0 {
            out.push_str(&format!(
                " {} hostile records dead-lettered with the expected reason;",
                f.dead_lettered_as_expected
            ));
        }
        for n in &r.notes {
            out.push_str(&format!(" {n};"));
        }
        if r.name.starts_with("group") {
            let pauses: Vec<String> = r
                .faults
                .iter()
                .zip(&r.pauses_ms)
                .map(|(f, p)| format!("{} {} ms", f.what, p))
                .collect();
            out.push_str(&format!(
                " longest pause after each change: {};",
                pauses.join(", ")
            ));
        }
        for why in r.failures() {
            out.push_str(&format!(" **FAILED: {why}**;"));
        }
        out.push('\n');
    }
    out
}

fn kafka_version(root: &std::path::Path) -> String {
    std::fs::read_to_string(root.join("scripts/kafka/pom.xml"))
        .ok()
        .and_then(|pom| {
            let start = pom.find("<kafka.version>")? + "<kafka.version>".len();
            let end = pom[start..].find('<')? + start;
            Some(pom[start..end].to_string())
        })
        .unwrap_or_else(|| "?".into())
}

//! `herald loadtest`: open-loop load against the real broker, measuring herald
//! (produce → request received at the provider stand-in) against the floor (a
//! bare rdkafka consumer that only decodes the same events) in the same run.
//! Each side is measured after 3 s of unmeasured traffic through its own
//! topics, as a running deployment's topics are ([`WARM_SECONDS`]).
//!
//! Not a timed test: it reports figures; BENCHMARKS.md records them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use serde::Serialize;

use crate::demo::stats::{Latencies, Percentiles};
use crate::demo::{create_topics, wait_ready, RunTopics};
use crate::simulate::{self, Generator, Schedule, StreamTopics};
use crate::standin::{Credentials, StandIn};

pub mod drain;
mod floor;
pub mod plot;
mod stages;

/// Which rules herald runs under load.
#[derive(Debug, Clone, Copy)]
pub enum RuleLoad {
    /// The sample rules in `rules/`.
    Sample,
    /// The sample rules plus this many generated rules, each keyed on a merchant
    /// that does not occur (a large rule base where each rule is about one thing).
    Generated(usize),
}

impl RuleLoad {
    fn label(self) -> String {
        match self {
            RuleLoad::Sample => "sample".into(),
            RuleLoad::Generated(n) => format!("{n}"),
        }
    }
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub brokers: String,
    pub rate: f64,
    pub duration: Duration,
    pub rules: RuleLoad,
    pub sample_rules: PathBuf,
    pub out_dir: PathBuf,
    pub partitions: i32,
    pub users: usize,
    /// herald's limits, for comparing settings in one build.
    pub limits: LimitOverrides,
}

/// Settings a run may change (`--lanes`, `--lane-batch`, `--sends-per-user`, `--kafka`).
#[derive(Debug, Clone, Default)]
pub struct LimitOverrides {
    pub lanes: Option<usize>,
    pub lane_batch: Option<usize>,
    pub sends_per_user: Option<usize>,
    /// librdkafka properties for herald's clients (`linger.ms=5`).
    pub kafka: Vec<(String, String)>,
}

impl LimitOverrides {
    /// Applies these to a config.
    pub fn apply(&self, config: &mut crate::config::Config) {
        if let Some(n) = self.lanes {
            config.limits.lanes = n;
        }
        if let Some(n) = self.lane_batch {
            config.limits.lane_batch = n;
        }
        if let Some(n) = self.sends_per_user {
            config.limits.sends_per_user = n;
        }
        config.kafka.properties.extend(self.kafka.iter().cloned());
    }
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub label: String,
    pub offered_rate: f64,
    pub events: u64,
    /// Events handled per second from the first produce to the last handled.
    pub sustained_rate: f64,
    /// Latency samples in ms: produce → consumed (floor) or → request received (herald).
    pub latency_ms: Percentiles,
    /// Floor only: events per second draining a backlog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consume_rate: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rules: String,
    pub rule_count: usize,
    pub duration_s: f64,
    pub partitions: i32,
    pub floor: Side,
    pub herald: Side,
    /// herald ÷ floor, per percentile.
    pub ratio: Ratios,
    /// herald's sent pushes, their time split by stage.
    pub herald_stages: Vec<stages::StageFigures>,
}

/// Latency ratios herald ÷ floor.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

/// Runs both sides and writes `loadtest-<rules>-<rate>.{json,svg,png}` in the out dir.
pub async fn run(options: LoadOptions, credentials: Credentials) -> Result<Report, String> {
    let id = format!("{:08x}", rand::random::<u32>());
    let count = (options.rate * options.duration.as_secs_f64()).round() as u64;
    println!(
        "loadtest {id}: {count} events at {:.0}/s over {} partitions, rules: {}",
        options.rate,
        options.partitions,
        options.rules.label()
    );

    let floor = measure_floor(&options, &id, count).await?;
    let f = &floor.0.latency_ms;
    println!(
        "floor:  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        f.p50, f.p99, f.max
    );
    let (herald, rule_count, herald_sorted, floor_sorted, herald_stages) =
        measure_herald(&options, &id, count, credentials, floor.1).await?;
    let floor = floor.0;
    let ratio = |h: f64, f: f64| if f > 0.0 { h / f } else { 0.0 };
    let report = Report {
        rules: options.rules.label(),
        rule_count,
        duration_s: options.duration.as_secs_f64(),
        partitions: options.partitions,
        ratio: Ratios {
            p50: ratio(herald.latency_ms.p50, floor.latency_ms.p50),
            p90: ratio(herald.latency_ms.p90, floor.latency_ms.p90),
            p99: ratio(herald.latency_ms.p99, floor.latency_ms.p99),
            p999: ratio(herald.latency_ms.p999, floor.latency_ms.p999),
        },
        floor,
        herald,
        herald_stages,
    };
    print_table(&report);
    stages::print(&report.herald_stages);
    std::fs::create_dir_all(&options.out_dir).map_err(|e| e.to_string())?;
    let stem = options
        .out_dir
        .join(format!("loadtest-{}-{:.0}", report.rules, options.rate));
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(stem.with_extension("json"), json).map_err(|e| e.to_string())?;
    let title = format!(
        "herald vs bare consumer, {:.0} events/s, {} rules",
        options.rate, rule_count
    );
    let curves = [
        plot::Curve {
            label: "floor: bare rdkafka consumer (produce → consumed)",
            color: "#888888",
            sorted_ms: &floor_sorted,
        },
        plot::Curve {
            label: "herald (produce → push request at provider)",
            color: "#d9480f",
            sorted_ms: &herald_sorted,
        },
    ];
    plot::write(&plot::svg(&title, &curves), &stem.with_extension("png"))?;
    println!("wrote {}.json, .svg and .png", stem.display());
    Ok(report)
}

/// Seconds of the offered rate each side gets before its measured part,
/// through the very topics that part uses, not measured. Apache Kafka's JVM
/// compiles its produce and fetch paths in the first seconds, and the broker
/// holds the first write to each partition of a new topic (~20 ms a
/// partition on this machine, one after another: BENCHMARKS.md, "the first
/// writes to a new partition"). A run's topics are new; production topics
/// have long paid both, so the measured part starts where a running
/// deployment is.
const WARM_SECONDS: f64 = 3.0;

fn warm_count(options: &LoadOptions) -> u64 {
    (options.rate * WARM_SECONDS).round() as u64
}

async fn measure_floor(
    options: &LoadOptions,
    id: &str,
    count: u64,
) -> Result<(Side, Vec<f64>), String> {
    let brokers = &options.brokers;
    let topic = format!("lt-{id}-floor");
    let backlog = format!("lt-{id}-backlog");
    create_topics(
        brokers,
        &[
            (&topic, options.partitions, false),
            (&backlog, options.partitions, false),
        ],
    )
    .await?;
    let consumer = floor::consumer(brokers, &topic)?;
    floor::wait_assigned(&consumer).await?;
    let producer = simulate::producer(brokers, &[]).map_err(|e| e.to_string())?;
    let warm = warm_count(options);
    let produce = publish_transactions(&producer, &topic, options, 6, options.rate, warm);
    let (_, (warmed, _)) = tokio::join!(
        produce,
        floor::measure(&consumer, warm, Duration::from_secs(30))
    );
    // Every warm-up event read, or the measured part would count the rest.
    if (warmed.len() as u64) < warm {
        return Err(format!(
            "the floor consumer read {} of the warm-up's {warm} events within 30 s",
            warmed.len()
        ));
    }
    let start = Instant::now();
    let produce = publish_transactions(&producer, &topic, options, 7, options.rate, count);
    let consume = floor::measure(&consumer, count, options.duration + Duration::from_secs(30));
    let (_, (latency, span)) = tokio::join!(produce, consume);
    let handled = latency.len() as u64;
    let sustained = span.map_or(0.0, |(_, last)| {
        handled as f64 / (last - start).as_secs_f64()
    });

    // Maximum consume rate: drain a backlog as fast as the consumer can.
    let backlog_count = count.max(20_000);
    publish_transactions(&producer, &backlog, options, 8, 1e9, backlog_count).await;
    let drain = floor::consumer(brokers, &backlog)?;
    let (drained, span) = floor::measure(&drain, backlog_count, Duration::from_secs(120)).await;
    let max_rate =
        span.map(|(first, last)| drained.len() as f64 / (last - first).as_secs_f64().max(1e-6));
    let sorted = latency.sorted();
    Ok((
        Side {
            label: "bare rdkafka consumer".into(),
            offered_rate: options.rate,
            events: handled,
            sustained_rate: sustained,
            latency_ms: latency.percentiles(),
            max_consume_rate: max_rate,
        },
        sorted,
    ))
}

async fn measure_herald(
    options: &LoadOptions,
    id: &str,
    count: u64,
    credentials: Credentials,
    floor_sorted: Vec<f64>,
) -> Result<(Side, usize, Vec<f64>, Vec<f64>, Vec<stages::StageFigures>), String> {
    let brokers = &options.brokers;
    let (topics, standin) =
        topics_and_standin(brokers, id, options.partitions, credentials).await?;
    let rules = tempfile_dir(id)?;
    let rule_count = write_rules(&options.sample_rules, &rules, &topics, options.rules)?;
    let producer = simulate::producer(brokers, &[]).map_err(|e| e.to_string())?;
    let mut generator = Generator::new(7, options.users, 5);
    simulate::publish_profiles(&producer, &topics.profiles, &mut generator)
        .await
        .map_err(|e| e.to_string())?;
    let mut config = topics.config(brokers, &standin.base_url(), &rules, false)?;
    // Its own state directory: another run's tables belong to other topics.
    config.state.dir = rules.join("state");
    options.limits.apply(&mut config);
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    wait_ready(running.admin_addr(), Duration::from_secs(60)).await?;
    let consumed = || running.metrics().consumed_of(&topics.transactions);
    let wait_consumed = |want: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if consumed() >= want {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    // The warm-up's events are older than `since`: only later ones count.
    let warm = warm_count(options);
    publish_transactions(
        &producer,
        &topics.transactions,
        options,
        10,
        options.rate,
        warm,
    )
    .await;
    wait_consumed(warm)
        .await
        .ok_or_else(|| format!("herald did not take the warm-up's {warm} events within 60 s"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let since = crate::util::now_ms();
    let (stage_samples, stage_task) =
        stages::StageSamples::collect(running.watch_decisions(), since);

    let samples = Arc::new(Mutex::new(Latencies::default()));
    let sink = Arc::clone(&samples);
    let mut arrivals = standin.arrivals();
    let collector = tokio::spawn(async move {
        loop {
            // A lag loses only those samples; the rest still count.
            let a = match arrivals.recv().await {
                Ok(a) => a,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            if let (Some(e), "fcm") = (a.event_ms, a.api) {
                if e < since {
                    continue;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((a.at_ms - e) as f64);
            }
        }
    });
    let start = Instant::now();
    publish_transactions(
        &producer,
        &topics.transactions,
        options,
        11,
        options.rate,
        count,
    )
    .await;
    let done_at = wait_consumed(warm + count).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handled = consumed().saturating_sub(warm);
    running.stop().await;
    collector.abort();
    stage_task.abort();
    let herald_stages = stage_samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .figures();
    let _ = std::fs::remove_dir_all(&rules);
    let latency = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let sustained = done_at.map_or(0.0, |t| handled as f64 / (t - start).as_secs_f64());
    let sorted = latency.sorted();
    Ok((
        Side {
            label: format!("herald ({} rules)", rule_count),
            offered_rate: options.rate,
            events: handled,
            sustained_rate: sustained,
            latency_ms: latency.percentiles(),
            max_consume_rate: None,
        },
        rule_count,
        sorted,
        floor_sorted,
        herald_stages,
    ))
}

/// A run's topics (`lt-<id>-…`), created, and a provider stand-in for it.
async fn topics_and_standin(
    brokers: &str,
    id: &str,
    partitions: i32,
    credentials: Credentials,
) -> Result<(RunTopics, StandIn), String> {
    let topics = RunTopics::new(&format!("lt-{id}"));
    topics.create(brokers, partitions).await?;
    let standin = StandIn::start(([127, 0, 0, 1], 0).into(), credentials)
        .await
        .map_err(|e| e.to_string())?;
    Ok((topics, standin))
}

fn tempfile_dir(id: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("herald-loadtest-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// Publishes `count` card transactions to `topic` at `rate` events per second,
/// open loop, from a generator seeded with `seed`.
async fn publish_transactions(
    producer: &FutureProducer,
    topic: &str,
    options: &LoadOptions,
    seed: u64,
    rate: f64,
    count: u64,
) {
    let topics = StreamTopics {
        transactions: topic.to_string(),
        ..StreamTopics::default()
    };
    let mut generator = Generator::new(seed, options.users, 5);
    let schedule = Schedule {
        rate,
        duration: None,
        count: Some(count),
    };
    simulate::run(
        producer,
        &topics,
        |now| generator.transaction(now),
        schedule,
        std::future::pending(),
    )
    .await;
}

/// Copies the sample rules (pointed at the run's topics) and adds generated ones; returns the rule count.
fn write_rules(
    samples: &Path,
    dir: &Path,
    topics: &RunTopics,
    load: RuleLoad,
) -> Result<usize, String> {
    let mut count = topics.copy_rules(samples, dir)?;
    let topic = &topics.transactions;
    if let RuleLoad::Generated(n) = load {
        // 500 rules a file keeps each file well under the 1 MiB rule-file limit.
        for (file, first) in (0..n).step_by(500).enumerate() {
            let mut text = String::from(
                "# Generated for the load test: each rule watches one merchant.\nrules:\n",
            );
            for i in first..(first + 500).min(n) {
                text += &format!(
                    "  - id: generated-{i}\n    sources: [{topic}]\n    match: {{ merchant: \"Merchant {i}\" }}\n    condition: event.amount > {}.0\n    channels: [push]\n    category: marketing\n    template: {{ title: \"Offer {i}\", body: \"{{{{ event.merchant }}}}\" }}\n",
                    i % 100
                );
            }
            std::fs::write(dir.join(format!("generated-{file:03}.yaml")), text)
                .map_err(|e| e.to_string())?;
        }
        count += n;
    }
    Ok(count)
}

fn print_table(r: &Report) {
    let (f, h) = (&r.floor, &r.herald);
    println!(
        "\n{:<28} {:>22} {:>22} {:>8}",
        "",
        "floor (bare consumer)",
        format!("herald ({} rules)", r.rule_count),
        "ratio"
    );
    println!(
        "{:<28} {:>22.0} {:>22.0}",
        "offered rate (events/s)", f.offered_rate, h.offered_rate
    );
    println!("{:<28} {:>22} {:>22}", "events handled", f.events, h.events);
    println!(
        "{:<28} {:>22.0} {:>22.0}",
        "sustained (events/s)", f.sustained_rate, h.sustained_rate
    );
    for (name, a, b, ratio) in [
        (
            "latency p50 (ms)",
            f.latency_ms.p50,
            h.latency_ms.p50,
            r.ratio.p50,
        ),
        (
            "latency p90 (ms)",
            f.latency_ms.p90,
            h.latency_ms.p90,
            r.ratio.p90,
        ),
        (
            "latency p99 (ms)",
            f.latency_ms.p99,
            h.latency_ms.p99,
            r.ratio.p99,
        ),
        (
            "latency p99.9 (ms)",
            f.latency_ms.p999,
            h.latency_ms.p999,
            r.ratio.p999,
        ),
    ] {
        println!("{name:<28} {a:>22.1} {b:>22.1} {ratio:>7.2}x");
    }
    println!(
        "{:<28} {:>22.1} {:>22.1}",
        "latency max (ms)", f.latency_ms.max, h.latency_ms.max
    );
    if let Some(m) = f.max_consume_rate {
        println!("{:<28} {:>22.0}", "max consume rate (events/s)", m);
    }
}

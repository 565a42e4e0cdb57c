//! `herald loadtest --drain N` and `--burst N`: a backlog drained, and one
//! user's burst, each beside a bare consumer on the same broker in the same
//! run, with what herald wrote to the broker per event and whose CPU it was.
//! herald first runs once over 3,000 swipes (the run's topics warmed, as a
//! deployment's are), then restarts onto the backlog.
//!
//! Not a timed test: it prints figures; BENCHMARKS.md records them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::demo::{wait_ready, RunTopics};
use crate::kafka::offsets::ReadLimit;
use crate::simulate::{self, Generator};
use crate::standin::Credentials;

/// The rules a drain runs.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainRules {
    /// One rule: a push for every approved swipe (the sample purchase notice).
    One,
    /// The sample rules.
    Sample,
}

/// What to drain.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub brokers: String,
    /// Swipes in the backlog (`--drain`), or one user's alerts (`--burst`).
    pub count: u64,
    /// All for one user, published at once, the provider answering after
    /// `provider_ms`.
    pub burst: bool,
    pub provider_ms: u64,
    pub rules: DrainRules,
    pub sample_rules: PathBuf,
    pub partitions: i32,
    pub users: usize,
    pub limits: crate::loadtest::LimitOverrides,
}

/// Records and bytes herald wrote to one topic during the run.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub topic: String,
    pub records: u64,
    pub bytes: u64,
}

/// The figures of one drain.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    pub rules: DrainRules,
    pub burst: bool,
    pub events: u64,
    /// The bare consumer over the same backlog, events per second.
    pub floor_rate: f64,
    /// Source events per second from the first source event herald took
    /// to its last push.
    pub herald_rate: f64,
    /// From the first source event taken (burst: the first push) to the
    /// last push, ms.
    pub span_ms: u64,
    /// Source events per second from `/readyz` ready to the last push: how
    /// drains were timed before 2026-12-07. Stage 1 starts before ready, so
    /// this overstates the rate.
    pub from_ready_rate: f64,
    /// Source events stage 1 had taken when herald said ready.
    pub taken_before_ready: u64,
    /// From the first source event taken to the last one, ms: a
    /// drain much shorter than `span_ms` here is limited by stage 2 (the
    /// decisions and sends), not by reading and matching.
    pub source_read_ms: u64,
    pub pushes: u64,
    /// Pushes whose idempotency key had arrived before.
    pub duplicates: u64,
    /// herald's decisions recorded `sent`: pushes short of it were lost.
    pub sent: u64,
    pub written: Vec<Written>,
    pub records_per_event: f64,
    pub bytes_per_event: f64,
    /// Shares of the machine's CPU time from the first event taken to the
    /// last push, in % of all cores. herald's process holds the load
    /// generator and the provider stand-in too (in production, another
    /// machine answers).
    pub cpu_herald_pct: f64,
    pub cpu_broker_pct: f64,
}

/// Runs one drain (or burst) and prints its figures.
pub async fn run(options: DrainOptions, credentials: Credentials) -> Result<DrainReport, String> {
    let id = format!("{:08x}", rand::random::<u32>());
    let brokers = &options.brokers;
    let (topics, standin) =
        super::topics_and_standin(brokers, &id, options.partitions, credentials).await?;
    if options.provider_ms > 0 {
        standin.delay(Duration::from_millis(options.provider_ms));
    }
    let rules = std::env::temp_dir().join(format!("herald-drain-{id}"));
    let rule_count = write_rules(&options, &topics, &rules)?;
    let producer = simulate::producer(brokers, &[]).map_err(|e| e.to_string())?;
    let mut generator = Generator::new(7, options.users, 5);
    simulate::publish_profiles(&producer, &topics.profiles, &mut generator)
        .await
        .map_err(|e| e.to_string())?;

    let mut config = topics.config(brokers, &standin.base_url(), &rules, false)?;
    // Its own state directory: another run's tables belong to other topics.
    config.state.dir = rules.join("state");
    options.limits.apply(&mut config);
    let prefixes = [format!("lt-{id}"), config.kafka.group_id.clone()];
    let warmed_events = warm(&producer, &topics, config.clone(), &options).await?;
    let warmed = ends(brokers, &prefixes)?;

    // The backlog, then the floor over it.
    let published = publish(&producer, &topics.transactions, &options, 11).await?;
    let floor = crate::loadtest::floor::consumer(brokers, &topics.transactions)?;
    // From the start of the topic: the warm-up's events and the backlog.
    let (read, span) = crate::loadtest::floor::measure(
        &floor,
        warmed_events + published,
        Duration::from_secs(120),
    )
    .await;
    let floor_rate = span.map_or(0.0, |(a, b)| {
        read.len() as f64 / (b - a).as_secs_f64().max(1e-6)
    });
    drop(floor);
    println!("drain {id}: {published} events, {rule_count} rule(s); floor {floor_rate:.0}/s");

    let pushes = Arc::new(Mutex::new(Pushes::default()));
    let sink = Arc::clone(&pushes);
    let mut arrivals = standin.arrivals();
    let collector = tokio::spawn(async move {
        loop {
            let arrival = arrivals.recv().await;
            let mut p = sink.lock().unwrap_or_else(|p| p.into_inner());
            match arrival {
                Ok(a) => p.add(a.key),
                Err(RecvError::Lagged(n)) => p.missed += n,
                Err(RecvError::Closed) => break,
            }
        }
    });
    let brokers_procs = broker_procs();
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    // Stage 1 takes source events before `/readyz` says ready (stage 2's
    // restore is what readiness waits for), so the drain is timed from the
    // first event taken, watched while waiting for ready.
    let first_taken = {
        let ready = wait_ready(running.admin_addr(), Duration::from_secs(120));
        tokio::pin!(ready);
        let mut first = None;
        loop {
            tokio::select! {
                done = &mut ready => break done.map(|()| first)?,
                () = tokio::time::sleep(Duration::from_millis(2)), if first.is_none() => {
                    if running.metrics().consumed_of(&topics.transactions) > 0 {
                        first = Some((Instant::now(), Cpu::now(&brokers_procs)));
                    }
                }
            }
        }
    };
    let ready = Instant::now();
    let taken_before_ready = running.metrics().consumed_of(&topics.transactions);
    let (first_taken, cpu_before) =
        first_taken.unwrap_or_else(|| (ready, Cpu::now(&brokers_procs)));
    // The CPU used up to the last push: the 2 s of quiet that tell the
    // drain is over would dilute the shares.
    let (mut cpu_at_last, mut pushes_seen) = (Cpu::now(&brokers_procs), 0);
    // Done once every event is consumed and no push has arrived for 2 s.
    let deadline = ready + Duration::from_secs(600);
    let mut shown = Instant::now();
    let mut source_read = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            let m = running.metrics();
            println!(
                "  {:>5.1} s: source {:>7}  pushes {:>7}  parked {:>6} paused {}",
                ready.elapsed().as_secs_f64(),
                m.consumed_of(&topics.transactions),
                pushes.lock().unwrap_or_else(|p| p.into_inner()).count,
                m.parked.get(),
                m.fetch_paused.get(),
            );
        }
        let (last, count) = {
            let p = pushes.lock().unwrap_or_else(|p| p.into_inner());
            (p.last, p.count)
        };
        if count > pushes_seen {
            (cpu_at_last, pushes_seen) = (Cpu::now(&brokers_procs), count);
        }
        let consumed = running.metrics().consumed_of(&topics.transactions);
        if consumed >= published && source_read.is_none() {
            source_read = Some(first_taken.elapsed());
        }
        let quiet = last.is_none_or(|t| t.elapsed() > Duration::from_secs(2));
        if (consumed >= published && quiet) || Instant::now() > deadline {
            break;
        }
    }
    let cpu = cpu_at_last.since(&cpu_before);
    let sent = running.metrics().sent_total();
    running.stop().await;
    collector.abort();
    let _ = std::fs::remove_dir_all(&rules);
    let p = pushes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if p.missed > 0 {
        // The last push seen would be early and the rate too high.
        return Err(format!(
            "the run is void: the push counter fell {} arrivals behind the stand-in",
            p.missed
        ));
    }
    let from = if options.burst {
        p.first
    } else {
        Some(first_taken)
    };
    let span_ms = match (from, p.last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_millis() as u64,
        _ => 0,
    };
    let herald_rate = published as f64 / (span_ms.max(1) as f64 / 1000.0);
    let from_ready_rate = p.last.map_or(0.0, |last| {
        published as f64
            / last
                .saturating_duration_since(ready)
                .as_secs_f64()
                .max(1e-3)
    });
    let written = written(brokers, &topics, &prefixes, &warmed)?;
    let (records, bytes) = written
        .iter()
        .fold((0, 0), |(r, b), w| (r + w.records, b + w.bytes));
    let report = DrainReport {
        rules: options.rules,
        burst: options.burst,
        events: published,
        floor_rate,
        herald_rate,
        span_ms,
        from_ready_rate,
        taken_before_ready,
        source_read_ms: source_read.map_or(0, |d| d.as_millis() as u64),
        pushes: p.count,
        duplicates: p.duplicates,
        sent,
        records_per_event: records as f64 / published.max(1) as f64,
        bytes_per_event: bytes as f64 / published.max(1) as f64,
        written,
        cpu_herald_pct: cpu.herald_pct,
        cpu_broker_pct: cpu.broker_pct,
    };
    print(&report);
    Ok(report)
}

/// The pushes that arrived: how many, keys seen twice, first and last.
#[derive(Default, Clone)]
struct Pushes {
    count: u64,
    duplicates: u64,
    keys: std::collections::HashSet<String>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Arrivals the counter missed (it fell behind the stand-in's queue).
    missed: u64,
}

impl Pushes {
    fn add(&mut self, key: Option<String>) {
        let now = Instant::now();
        self.count += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
        if let Some(k) = key {
            if !self.keys.insert(k) {
                self.duplicates += 1;
            }
        }
    }
}

/// The rules: the sample rules, or the purchase notice alone.
fn write_rules(
    options: &DrainOptions,
    topics: &RunTopics,
    dir: &std::path::Path,
) -> Result<usize, String> {
    match options.rules {
        DrainRules::Sample => topics.copy_rules(&options.sample_rules, dir),
        DrainRules::One => {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let text = format!(
                "rules:\n  - id: purchase-notice\n    sources: [{}]\n    match: {{ status: approved }}\n    channels: [push]\n    category: transactional\n    priority: high\n    ttl_seconds: 600\n    template:\n      title: \"{{{{ event.amount | money(event.currency) }}}} at {{{{ event.merchant }}}}\"\n      body: \"Card {{{{ event.card_last4 | mask_card }}}} was used at {{{{ event.ts | local_time }}}}.\"\n",
                topics.transactions
            );
            std::fs::write(dir.join("one.yaml"), text).map_err(|e| e.to_string())?;
            Ok(1)
        }
    }
}

/// Publishes the backlog: generated swipes over the population, or (a
/// burst) approved swipes all of one user and card. Returns how many.
async fn publish(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    options: &DrainOptions,
    seed: u64,
) -> Result<u64, String> {
    let mut generator = Generator::new(seed, options.users, 5);
    let now = crate::util::now_ms();
    let mut sends = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for _ in 0..options.count {
        let mut record = generator.transaction(now);
        if options.burst {
            record.key = "card-burst".into();
            record.value["user_id"] = Generator::user_id(0).into();
            record.value["status"] = "approved".into();
        }
        let payload = serde_json::to_vec(&record.value).map_err(|e| e.to_string())?;
        let key = record.key.clone();
        let future = producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload));
        sends.push(future.map_err(|(e, _)| e.to_string())?);
        while sends.len() > 10_000 {
            sends.next().await;
        }
    }
    while sends.next().await.is_some() {}
    Ok(options.count)
}

/// Herald run once over a few seconds' swipes and stopped, before the
/// backlog is published: the run's topics are new, and the broker holds the
/// first write to each new partition (~20 ms each, one after another:
/// `loadtest::WARM_SECONDS`), which a deployment's topics have long paid.
/// The drain is then a restart onto a backlog, the way a backlog arises.
async fn warm(
    producer: &rdkafka::producer::FutureProducer,
    topics: &RunTopics,
    config: crate::config::Config,
    options: &DrainOptions,
) -> Result<u64, String> {
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    wait_ready(running.admin_addr(), Duration::from_secs(120)).await?;
    let warm = DrainOptions {
        count: 3_000,
        burst: false,
        ..options.clone()
    };
    let count = publish(producer, &topics.transactions, &warm, 12).await?;
    // Taken, and no send for 1 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut sent, mut since) = (0, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = running.metrics();
        if m.sent_total() != sent {
            (sent, since) = (m.sent_total(), Instant::now());
        }
        if m.consumed_of(&topics.transactions) >= count && since.elapsed() > Duration::from_secs(1)
        {
            running.stop().await;
            return Ok(count);
        }
    }
    running.stop().await;
    Err(format!(
        "herald did not take the warm-up's {count} events within 60 s"
    ))
}

/// The run's topics (names starting with one of `prefixes`) and their
/// partitions' ends.
fn ends(brokers: &str, prefixes: &[String]) -> Result<HashMap<(String, i32), i64>, String> {
    let (consumer, topics) = run_topics(brokers, prefixes)?;
    let mut out = HashMap::new();
    for (name, partitions) in topics {
        let marks = crate::kafka::offsets::watermarks(
            &consumer,
            &name,
            &partitions,
            Duration::from_secs(10),
        )
        .map_err(|e| e.to_string())?;
        out.extend(
            marks
                .into_iter()
                .map(|(p, (_, hi))| ((name.clone(), p), hi)),
        );
    }
    Ok(out)
}

/// Topics by name, each with its partitions.
type TopicPartitions = Vec<(String, Vec<i32>)>;

/// A client to ask offsets with, and the run's topics with their partitions.
fn run_topics(
    brokers: &str,
    prefixes: &[String],
) -> Result<(BaseConsumer, TopicPartitions), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("drain-count-{}", prefixes[0]))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let topics = metadata
        .topics()
        .iter()
        .filter(|t| prefixes.iter().any(|p| t.name().starts_with(p.as_str())))
        .map(|t| {
            (
                t.name().to_string(),
                t.partitions().iter().map(|p| p.id()).collect(),
            )
        })
        .collect();
    Ok((consumer, topics))
}

/// Every record of the run's topics other than its inputs written after
/// `from` (each partition's end then): what herald wrote.
fn written(
    brokers: &str,
    topics: &RunTopics,
    prefixes: &[String],
    from: &HashMap<(String, i32), i64>,
) -> Result<Vec<Written>, String> {
    let (consumer, run_topics) = run_topics(brokers, prefixes)?;
    let inputs = [&topics.transactions, &topics.profiles];
    let mut out = Vec::new();
    for (name, partitions) in run_topics {
        if inputs.contains(&&name) {
            continue;
        }
        let want = crate::kafka::offsets::assign_to_ends(
            &consumer,
            &name,
            &partitions,
            Duration::from_secs(10),
            |p, _, _| from.get(&(name.clone(), p)).copied().unwrap_or(0),
        )
        .map_err(|e| e.to_string())?;
        let mut w = Written {
            topic: name.clone(),
            records: 0,
            bytes: 0,
        };
        let unread = crate::kafka::offsets::read_to_ends(
            &consumer,
            want,
            ReadLimit::Total(Duration::from_secs(60)),
            |m| {
                w.records += 1;
                w.bytes +=
                    (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
            },
        )
        .map_err(|e| format!("`{name}`: {e}"))?;
        if !unread.is_empty() {
            return Err(format!("`{name}` was not read to its end within 60 s"));
        }
        if w.records > 0 {
            out.push(w);
        }
    }
    out.sort_by_key(|w| std::cmp::Reverse(w.records));
    Ok(out)
}

/// CPU time so far: this process (herald, the stand-in and the publisher)
/// and the broker (every `kafka.Kafka` JVM on the machine), in clock ticks.
struct Cpu {
    at: Instant,
    own: u64,
    broker: u64,
}

/// CPU shares over an interval.
struct Shares {
    herald_pct: f64,
    broker_pct: f64,
}

/// The broker's processes (`/proc/<pid>`), found once: a sample then reads
/// only their `stat`.
fn broker_procs() -> Vec<std::path::PathBuf> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            std::fs::read(path.join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("kafka.Kafka"))
        })
        .collect()
}

impl Cpu {
    fn now(brokers: &[std::path::PathBuf]) -> Cpu {
        Cpu {
            at: Instant::now(),
            own: ticks(std::path::Path::new("/proc/self/stat")),
            broker: brokers.iter().map(|p| ticks(&p.join("stat"))).sum(),
        }
    }

    fn since(&self, before: &Cpu) -> Shares {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // Linux's USER_HZ is 100 on every platform herald runs on.
        let wall_ticks = (self.at - before.at).as_secs_f64() * 100.0 * cores;
        let pct = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / wall_ticks.max(1.0);
        Shares {
            herald_pct: pct(self.own, before.own),
            broker_pct: pct(self.broker, before.broker),
        }
    }
}

/// utime + stime of a `/proc/<pid>/stat`.
fn ticks(stat: &std::path::Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces), 1-based 14 and 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn print(r: &DrainReport) {
    let what = if r.burst { "burst (one user)" } else { "drain" };
    println!("\n{what}: {} events, rules {:?}", r.events, r.rules);
    println!(
        "  floor (bare consumer)     {:>10.0} events/s",
        r.floor_rate
    );
    println!(
        "  herald                    {:>10.0} events/s  ({} ms to the last push)",
        r.herald_rate, r.span_ms
    );
    if !r.burst {
        println!(
            "  timed from ready, as before 2026-12-07: {:>6.0} events/s  ({} events were taken before ready)",
            r.from_ready_rate, r.taken_before_ready
        );
        if r.source_read_ms > 0 {
            println!(
                "  of which stage 1 read the source at {:>6.0} events/s  ({} ms to its last event)",
                r.events as f64 / (r.source_read_ms as f64 / 1000.0),
                r.source_read_ms
            );
        }
    }
    println!(
        "  pushes {} (sent {}), duplicates {}",
        r.pushes, r.sent, r.duplicates
    );
    println!(
        "  written per event: {:.2} records, {:.0} bytes",
        r.records_per_event, r.bytes_per_event
    );
    for w in &r.written {
        println!(
            "    {:<60} {:>9} records {:>12} bytes",
            w.topic, w.records, w.bytes
        );
    }
    println!(
        "  CPU to the last push: herald process (with the stand-in) {:.0}%, broker {:.0}% of the machine",
        r.cpu_herald_pct, r.cpu_broker_pct
    );
}

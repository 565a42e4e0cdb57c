//! `herald demo`: the whole product in one command — topics, profiles, the
//! sample rules, a realistic event stream, a provider stand-in, a live feed of
//! every message sent or suppressed, and a summary with latency percentiles.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use prometheus::core::Collector;

use crate::config::Config;
use crate::outcome::Status;
use crate::simulate::{self, Generator, Schedule, StreamTopics};
use crate::standin::{Credentials, StandIn};

mod scene;
pub mod stats;
use stats::{Latencies, Tally};

/// What the demo runs against and for how long.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub brokers: String,
    pub duration: Duration,
    pub rate: f64,
    pub seed: u64,
    pub users: usize,
    pub rules_dir: PathBuf,
}

/// Environment variables the demo's channels read their credentials from.
pub const ENV_FCM: &str = "HERALD_DEMO_FCM_TOKEN";
pub const ENV_SID: &str = "HERALD_DEMO_TWILIO_SID";
pub const ENV_TOKEN: &str = "HERALD_DEMO_TWILIO_TOKEN";
/// The preference API's backend secret, under the name herald reads by default.
pub const ENV_API: &str = "HERALD_API_TOKEN";

/// Demo credentials: made up for this run, shared by herald and the stand-in.
pub fn credentials() -> Credentials {
    Credentials {
        fcm_token: format!("demo-fcm-{:x}", rand::random::<u64>()),
        twilio_sid: format!("AC{:032x}", rand::random::<u128>()),
        twilio_token: format!("{:032x}", rand::random::<u128>()),
    }
}

/// Creates topics, ignoring those that exist. Profiles are compacted.
pub async fn create_topics(brokers: &str, names: &[(&str, i32, bool)]) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let new: Vec<NewTopic> = names
        .iter()
        .map(|(name, partitions, compact)| {
            let t = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
            if *compact {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(|e| format!("cannot create topics on {brokers}: {e}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, e)) => return Err(format!("cannot create topic {name}: {e}")),
        }
    }
    Ok(())
}

/// Copies the sample rule files into `dir`, pointing their `sources` at other
/// topic names (`[transactions]` → `[demo-1a2b-transactions]`). Returns the rule count.
pub fn copy_rules(samples: &Path, dir: &Path, renames: &[(&str, &str)]) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut count = 0;
    for entry in std::fs::read_dir(samples).map_err(|e| format!("{}: {e}", samples.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let target = dir.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            // Geofence files (and anything else the rules refer to) come along.
            count += copy_rules(&path, &target, renames)?;
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            std::fs::copy(&path, &target).map_err(|e| format!("{}: {e}", path.display()))?;
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        count += text.matches("\n  - id:").count();
        std::fs::write(target, rename_sources(&text, renames)).map_err(|e| e.to_string())?;
    }
    Ok(count)
}

/// Renames topics in every `sources: [a, b]` list of a rule file.
fn rename_sources(text: &str, renames: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let Some((head, rest)) = line.split_once("sources: [") else {
            out.push_str(line);
            continue;
        };
        let Some((list, tail)) = rest.split_once(']') else {
            out.push_str(line);
            continue;
        };
        let renamed: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .map(|t| {
                renames
                    .iter()
                    .find(|(from, _)| *from == t)
                    .map_or(t, |(_, to)| *to)
            })
            .collect();
        out.push_str(&format!("{head}sources: [{}]{tail}", renamed.join(", ")));
    }
    out
}

/// The topics of one run of the demo or the load test: fresh names, so a
/// broker that outlives a run does not replay the last run's events into this one.
#[derive(Clone)]
pub struct RunTopics {
    pub transactions: String,
    pub sensors: String,
    pub locations: String,
    pub profiles: String,
    pub outcomes: String,
    pub dlq: String,
    pub feedback: String,
    pub consent: String,
    pub replies: String,
    pub held: String,
}

impl RunTopics {
    /// `<prefix>-transactions`, `<prefix>-sensors`, …
    pub fn new(prefix: &str) -> RunTopics {
        let name = |t: &str| format!("{prefix}-{t}");
        RunTopics {
            transactions: name("transactions"),
            sensors: name("sensors"),
            locations: name("locations"),
            profiles: name("profiles"),
            outcomes: name("outcomes"),
            dlq: name("dlq"),
            feedback: name("feedback"),
            consent: name("consent"),
            replies: name("replies"),
            held: name("held"),
        }
    }

    /// Creates them: the streams, outcomes and feedback with `partitions`, the
    /// profiles, consent and held compacted, dead letters and replies with one partition.
    pub async fn create(&self, brokers: &str, partitions: i32) -> Result<(), String> {
        create_topics(
            brokers,
            &[
                (&self.transactions, partitions, false),
                (&self.sensors, partitions, false),
                (&self.locations, partitions, false),
                (&self.profiles, 1, true),
                (&self.outcomes, partitions, false),
                (&self.dlq, 1, false),
                (&self.feedback, partitions, false),
                (&self.consent, 1, true),
                (&self.replies, 1, false),
                (&self.held, 1, true),
            ],
        )
        .await
    }

    /// The streams, for the simulator.
    pub fn streams(&self) -> StreamTopics {
        StreamTopics {
            transactions: self.transactions.clone(),
            sensors: self.sensors.clone(),
            locations: self.locations.clone(),
        }
    }

    /// The sample rules copied into `dir`, pointed at these topics; returns
    /// the rule count. The cashback digest closes [`scene::DIGEST_WINDOW`]
    /// after its first item instead of at 08:00, so the demo shows it go.
    pub fn copy_rules(&self, samples: &Path, dir: &Path) -> Result<usize, String> {
        let count = copy_rules(
            samples,
            dir,
            &[
                ("transactions", &self.transactions),
                ("sensors", &self.sensors),
                ("locations", &self.locations),
            ],
        )?;
        let offers = dir.join("offers.yaml");
        if let Ok(text) = std::fs::read_to_string(&offers) {
            let demo = text.replace(
                r#"window: { at: "08:00" }"#,
                &format!("window: {{ after_first: {} }}", scene::DIGEST_WINDOW),
            );
            std::fs::write(&offers, demo).map_err(|e| e.to_string())?;
        }
        Ok(count)
    }

    /// Config for an in-process herald on these topics, sending to the stand-in
    /// at `standin` with the demo credentials (see [`ENV_FCM`]).
    pub fn config(
        &self,
        brokers: &str,
        standin: &str,
        rules: &Path,
        watch: bool,
    ) -> Result<Config, String> {
        // Built as a value, so no name or path needs quoting for TOML.
        let source = |user_field: &str, type_field: Option<&str>| {
            let mut s = serde_json::json!({ "user_field": user_field, "time_field": "ts" });
            if let Some(t) = type_field {
                s["type_field"] = t.into();
            }
            s
        };
        let mut sources = serde_json::Map::new();
        sources.insert(self.transactions.clone(), source("user_id", Some("status")));
        sources.insert(self.sensors.clone(), source("owner_id", None));
        sources.insert(self.locations.clone(), source("user_id", None));
        let value = serde_json::json!({
            "kafka": {
                "bootstrap_servers": brokers,
                "group_id": format!("herald-{:x}", rand::random::<u32>()),
                "properties": { "session.timeout.ms": "6000" },
            },
            "sources": sources,
            "topics": {
                "profiles": self.profiles,
                "outcomes": self.outcomes,
                "dead_letter": self.dlq,
                "feedback": self.feedback,
                "consent": self.consent,
                "replies": self.replies,
                "held": self.held,
                // The run's own, as its other topics: a demo run starts
                // with no user's preferences.
                "preferences": self.held.replace("-held", "-preferences"),
                "conversions": self.held.replace("-held", "-conversions"),
            },
            "rules": { "dir": rules, "watch": watch },
            "admin": { "listen": "127.0.0.1:0" },
            "channels": {
                "push": {
                    "provider": "fcm",
                    "base_url": standin,
                    "project_id": "herald-demo",
                    "token_env": ENV_FCM,
                    "concurrency": 256,
                },
                "sms": {
                    "provider": "twilio",
                    "base_url": standin,
                    "account_sid_env": ENV_SID,
                    "auth_token_env": ENV_TOKEN,
                    "from": "+15005550006",
                    "concurrency": 64,
                },
            },
        });
        let config: Config = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Runs the demo; `stop` ends the event stream early (Ctrl-C). The
/// credentials must already be in the environment (see [`ENV_FCM`]).
pub async fn run(
    options: DemoOptions,
    credentials: Credentials,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let brokers = options.brokers.as_str();
    println!(
        "herald demo — broker {brokers}, rules {}, {:.0} events/s for {} s",
        options.rules_dir.display(),
        options.rate,
        options.duration.as_secs()
    );
    let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let topics = RunTopics::new(&format!("demo-{run}"));
    topics.create(brokers, 3).await?;
    // The sample rules, pointed at this run's topics.
    let rules = std::env::temp_dir().join(format!("herald-demo-{run}"));
    topics.copy_rules(&options.rules_dir, &rules)?;
    println!("topics demo-{run}-*: transactions, sensors, locations, profiles, outcomes, dlq");
    let standin = StandIn::start(([127, 0, 0, 1], 0).into(), credentials)
        .await
        .map_err(|e| format!("provider stand-in: {e}"))?;
    println!(
        "provider stand-in (FCM v1 + Twilio) on {}",
        standin.base_url()
    );

    let producer = simulate::producer(brokers, &[]).map_err(|e| e.to_string())?;
    let mut generator = Generator::new(options.seed, options.users, 5);
    let profiles = simulate::publish_profiles(&producer, &topics.profiles, &mut generator)
        .await
        .map_err(|e| format!("publishing profiles: {e}"))?;
    println!("published {profiles} profiles");

    let config = topics.config(brokers, &standin.base_url(), &rules, true)?;
    let report_config = config.clone();
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    println!(
        "herald admin on http://{} (metrics, readyz, rules)",
        running.admin_addr()
    );
    wait_ready(running.admin_addr(), Duration::from_secs(30)).await?;

    let mut decisions = running.watch_decisions();
    let mut arrivals = standin.arrivals();
    let printer = tokio::spawn(async move {
        let mut sent = Tally::default();
        let mut suppressed = Tally::default();
        let mut failed = Tally::default();
        let mut latency = Latencies::default();
        while let Ok(d) = decisions.recv().await {
            let o = &d.outcome;
            let to = o.recipient.as_deref().unwrap_or("-");
            match o.status {
                Status::Sent => {
                    let ms = (o.timings.request_sent_ms - o.timings.event_ms) as f64;
                    // A digest waits on purpose: not a latency.
                    if o.digest.is_none() {
                        latency.push(ms);
                    }
                    sent.add(format!("{} → {}", o.rule, o.channel));
                    let text = match (&d.title, &d.text) {
                        (Some(t), Some(b)) => format!("{t} — {b}"),
                        (None, Some(b)) => b.clone(),
                        _ => String::new(),
                    };
                    println!(
                        "  sent        {:<5} {:<26} {:<22} {:>4} ms  {}",
                        o.channel, o.rule, to, ms, text
                    );
                }
                Status::Held => {
                    let (why, tally) = match o.reason_code {
                        Some("digested") => ("collected into a digest", "collected into a digest"),
                        Some("awaiting_delivery") => {
                            ("until a delivery receipt", "awaiting delivery")
                        }
                        _ => ("until quiet hours end", "held for quiet hours"),
                    };
                    println!(
                        "  held        {:<5} {:<26} {:<22}          {why}",
                        o.channel, o.rule, to
                    );
                    suppressed.add(tally);
                }
                Status::Suppressed => {
                    let reason = o.reason.clone().unwrap_or_default();
                    println!(
                        "  suppressed  {:<5} {:<26} {:<22}          {}",
                        o.channel, o.rule, to, reason
                    );
                    suppressed.add(reason);
                }
                Status::Failed => {
                    let reason = o.reason.clone().unwrap_or_default();
                    println!(
                        "  FAILED      {:<5} {:<26} {:<22}          {}",
                        o.channel, o.rule, to, reason
                    );
                    failed.add(reason);
                }
            }
        }
        (sent, suppressed, failed, latency)
    });
    let at_door = Arc::new(Mutex::new(Latencies::default()));
    let door_samples = Arc::clone(&at_door);
    let door = tokio::spawn(async move {
        while let Ok(a) = arrivals.recv().await {
            // The digest waits on purpose: not a latency.
            if a.rule.as_deref() == Some(scene::DIGEST_RULE) {
                continue;
            }
            if let Some(event_ms) = a.event_ms {
                door_samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((a.at_ms - event_ms) as f64);
            }
        }
    });

    // A cardholder sets, then raises, their own alert amount through the API.
    let api_token = std::env::var(ENV_API).unwrap_or_default();
    if let Err(e) = scene::threshold(&producer, &topics, running.admin_addr(), &api_token).await {
        println!("(the subscription scene did not run: {e})");
    }
    // Cashback collected into one push while the stream runs.
    let digest_producer = producer.clone();
    let digest_topics = topics.clone();
    tokio::spawn(async move {
        if let Err(e) = scene::cashback(&digest_producer, &digest_topics).await {
            println!("(the digest scene did not run: {e})");
        }
    });

    // A few broken messages, as real producers sometimes send: they go to the
    // dead-letter topic and the stream goes on.
    for (key, bad) in [
        ("bad-1", b"{not json".to_vec()),
        ("bad-2", br#"{"amount": 3}"#.to_vec()),
        ("bad-3", b"[1,2,3]".to_vec()),
    ] {
        let _ = producer
            .send(
                FutureRecord::to(&topics.transactions)
                    .key(key)
                    .payload(&bad),
                Duration::from_secs(5),
            )
            .await;
    }
    let schedule = Schedule {
        rate: options.rate,
        duration: Some(options.duration),
        count: None,
    };
    let report = simulate::run(
        &producer,
        &topics.streams(),
        |now| generator.next(now),
        schedule,
        stop,
    )
    .await;
    // Let the last events through, then stop herald (drains in-flight sends).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dead_letters: u64 = running
        .metrics()
        .dead_letters
        .collect()
        .iter()
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| m.get_counter().get_value() as u64)
        })
        .sum();
    running.stop().await;
    drop(standin);
    let _ = std::fs::remove_dir_all(&rules);
    let (sent, suppressed, failed, latency) = printer.await.map_err(|e| e.to_string())?;
    door.abort();

    println!("\n== summary ({:.1} s)", report.elapsed.as_secs_f64());
    println!(
        "events in: {} ({})",
        report.total() + 3,
        report
            .sent
            .iter()
            .map(|(t, n)| format!("{} {n}", t.rsplit('-').next().unwrap_or(t)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("messages out: {}", sent.total());
    for (k, n) in &sent.0 {
        println!("  {n:>6}  {k}");
    }
    println!("suppressed: {}", suppressed.total());
    for (k, n) in &suppressed.0 {
        println!("  {n:>6}  {k}");
    }
    if failed.total() > 0 {
        println!("failed: {}", failed.total());
        for (k, n) in &failed.0 {
            println!("  {n:>6}  {k}");
        }
    }
    println!("dead letters: {dead_letters}");
    let p = latency.percentiles();
    println!(
        "end-to-end latency, event time → provider request sent (ms): p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}  ({} messages)",
        p.p50, p.p90, p.p99, p.max, p.count
    );
    let d = at_door
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .percentiles();
    println!(
        "event produced → push request received at the provider (ms):  p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}  ({} pushes)",
        d.p50, d.p90, d.p99, d.max, d.count
    );
    experiment_report(report_config).await;
    Ok(())
}

/// The sample experiment's report over this run's outcomes and
/// conversions (`herald experiment report` does the same on any topics).
async fn experiment_report(config: Config) {
    let read = tokio::task::spawn_blocking(move || {
        let mut records = crate::analyst::experiment::read_topic(&config, &config.topics.outcomes)?;
        records.extend(crate::analyst::experiment::read_topic(
            &config,
            &config.topics.conversions,
        )?);
        Ok::<_, String>(records)
    })
    .await;
    let records = match read {
        Ok(Ok(records)) => records,
        Ok(Err(e)) => return println!("(no experiment report: {e})"),
        Err(e) => return println!("(no experiment report: {e})"),
    };
    let report = crate::analyst::experiment::report(scene::EXPERIMENT, records);
    if report.arms.is_empty() {
        return;
    }
    println!(
        "\n== the coffee offer experiment so far (`herald experiment report {}`)",
        scene::EXPERIMENT
    );
    print!("{}", crate::analyst::experiment::text(&report));
}

/// Waits until an instance's `/readyz` answers 200, up to `limit`.
pub async fn wait_ready(addr: std::net::SocketAddr, limit: Duration) -> Result<(), String> {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "herald did not become ready within {} s (is the broker up?)",
        limit.as_secs()
    ))
}

/// Puts the demo credentials where the channels read them. Call before any
/// thread is started.
pub fn export_credentials(c: &Credentials) {
    std::env::set_var(ENV_FCM, &c.fcm_token);
    std::env::set_var(ENV_SID, &c.twilio_sid);
    std::env::set_var(ENV_TOKEN, &c.twilio_token);
    // The preference API's backend secret (the demo's scene calls the API).
    if std::env::var(ENV_API).map_or(true, |v| v.is_empty()) {
        std::env::set_var(ENV_API, format!("demo-api-{:x}", rand::random::<u64>()));
    }
}

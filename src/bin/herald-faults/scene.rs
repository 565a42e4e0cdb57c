//! One scenario's stage: fresh topics and profiles, the provider stand-in,
//! herald instances, the event stream, a readiness watcher, and the final tally.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::standin::{Credentials, StandIn};
use herald::util::now_ms;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::feed;
use super::load::{self, Ledger, Topics};
use super::tally::{self, Fault, Figures};
use super::world::{free_addr, Broker, Herald};
use super::Options;

/// A readiness answer seen during the scenario: when, which instance, status, body.
type Seen = (i64, String, u16, String);

/// What one scenario found, for the report.
pub struct Report {
    pub name: String,
    pub figures: Figures,
    pub faults: Vec<Fault>,
    /// Longest pause in successful sends after each fault began, ms.
    pub pauses_ms: Vec<i64>,
    /// The first not-ready answer seen during a fault, if any.
    pub not_ready: Option<String>,
    pub notes: Vec<String>,
    /// What the scenario found wrong besides the events (a store that
    /// differs from its rebuild).
    pub problems: Vec<String>,
}

impl Report {
    /// Why this scenario fails the suite, if it does.
    pub fn failures(&self) -> Vec<String> {
        let f = &self.figures;
        let mut out = Vec::new();
        if !f.lost.is_empty() {
            let some: Vec<&str> = f.lost.iter().take(5).map(String::as_str).collect();
            out.push(format!("{} lost (e.g. {})", f.lost.len(), some.join(", ")));
        }
        // A duplicate is acceptable only when herald reported it: the send
        // ledger found its first request unanswered after a crash (or a
        // revoke that outlasted the grace), and the outcome says so.
        let unexplained = f.duplicates - f.duplicates_reported;
        if unexplained > 0 {
            out.push(format!(
                "{unexplained} duplicate(s) not reported as unknown_after_crash"
            ));
        }
        out.extend(f.dead_letter_mismatch.iter().cloned());
        out.extend(self.problems.iter().cloned());
        if f.events == 0 {
            out.push("no events produced".into());
        }
        out
    }
}

/// A scenario in progress.
pub struct Scene {
    pub name: String,
    dir: PathBuf,
    pub topics: Topics,
    pub standin: StandIn,
    pub producer: FutureProducer,
    pub ledger: Ledger,
    pub http: reqwest::Client,
    pub instances: Vec<Herald>,
    pub faults: Vec<Fault>,
    pub notes: Vec<String>,
    /// What the scenario found wrong besides the events.
    pub problems: Vec<String>,
    bootstrap: String,
    herald_bin: PathBuf,
    pub group: String,
    extra_kafka: String,
    /// Instances are dynamic members of the group (`instance_id = ""`).
    pub dynamic_member: bool,
    watched: Arc<Mutex<Vec<(String, std::net::SocketAddr)>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    watcher: JoinHandle<()>,
    load: Option<(watch::Sender<bool>, JoinHandle<feed::Fed>)>,
    spawned: usize,
}

impl Scene {
    /// Where the scenario's herald logs and configs are.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Sets the stage on `broker`: topics, profiles, a recording stand-in.
    pub async fn new(
        opts: &Options,
        broker: &Broker,
        name: &str,
        extra_kafka: &str,
    ) -> Result<Scene, String> {
        let run = format!("{name}-{:x}", now_ms());
        let dir = opts.work.join(&run);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let topics = Topics::fresh(&format!("faults-{run}"));
        topics.create(broker).await?;
        let producer = load::producer(broker)?;
        load::publish_profiles(&producer, &topics).await?;
        let standin = StandIn::start(
            ([127, 0, 0, 1], 0).into(),
            Credentials {
                fcm_token: super::FCM_TOKEN.into(),
                twilio_sid: super::TWILIO_SID.into(),
                twilio_token: super::TWILIO_TOKEN.into(),
            },
        )
        .await
        .map_err(|e| format!("stand-in: {e}"))?;
        standin.record();
        let http = reqwest::Client::new();
        let watched = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let watcher = tokio::spawn(watch_readiness(
            http.clone(),
            Arc::clone(&watched),
            Arc::clone(&seen),
        ));
        Ok(Scene {
            name: name.to_string(),
            dir,
            topics,
            standin,
            producer,
            ledger: Ledger::default(),
            http,
            instances: Vec::new(),
            faults: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
            bootstrap: broker.bootstrap.clone(),
            herald_bin: opts.herald.clone(),
            group: format!("herald-faults-{run}"),
            extra_kafka: extra_kafka.to_string(),
            dynamic_member: false,
            watched,
            seen,
            watcher,
            load: None,
            spawned: 0,
        })
    }

    /// Adds `text` to the config of every instance started from now on
    /// (after `[kafka.properties]`: whole tables).
    pub fn append_config(&mut self, text: &str) {
        self.extra_kafka.push_str(text);
    }

    /// Adds a rule file every instance started from now on loads.
    pub fn add_rules(&self, file: &str, yaml: &str) -> Result<(), String> {
        let rules = self.dir.join("rules");
        std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
        std::fs::write(rules.join(file), yaml).map_err(|e| e.to_string())
    }

    /// The state directory every instance of the scene shares (a slot each).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("herald-state")
    }

    /// Starts one more herald instance; its index in `instances`.
    pub fn spawn(&mut self) -> Result<usize, String> {
        let n = self.spawned;
        self.spawned += 1;
        let (dir, group) = (self.dir.clone(), self.group.clone());
        self.spawn_in(&dir, &group, &format!("herald-{n}"), n, None)
    }

    /// Starts an instance of another deployment on the scene's topics: its
    /// own group id (`<group>-<name>`), state directory and rules
    /// (`rules_yaml`); its index in `instances`.
    pub fn spawn_deployment(&mut self, name: &str, rules_yaml: &str) -> Result<usize, String> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let group = format!("{}-{name}", self.group);
        self.spawn_in(&dir, &group, &format!("{name}-0"), 0, Some(rules_yaml))
    }

    fn spawn_in(
        &mut self,
        dir: &Path,
        group: &str,
        name: &str,
        n: usize,
        rules_yaml: Option<&str>,
    ) -> Result<usize, String> {
        let admin = free_addr();
        let provider = self.standin.base_url();
        let setup = load::Setup {
            bootstrap: &self.bootstrap,
            topics: &self.topics,
            group,
            provider: &provider,
            extra_kafka: &self.extra_kafka,
            dynamic_member: self.dynamic_member,
        };
        let config = setup.write(dir, admin, n)?;
        if let Some(yaml) = rules_yaml {
            std::fs::write(dir.join("rules").join("notices.yaml"), yaml)
                .map_err(|e| e.to_string())?;
        }
        let log = self.dir.join(format!("{name}.log"));
        let h = Herald::spawn(&self.herald_bin, name, &config, admin, &log)?;
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), admin));
        self.instances.push(h);
        Ok(self.instances.len() - 1)
    }

    /// Waits until instance `i` is ready.
    pub async fn ready(&mut self, i: usize) -> Result<Duration, String> {
        self.instances[i]
            .wait_ready(&self.http, Duration::from_secs(90))
            .await
    }

    /// Starts producing swipes at `rate` per second.
    pub fn start_load(&mut self, rate: u32) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(feed::stream(
            self.producer.clone(),
            self.bootstrap.clone(),
            self.topics.transactions.clone(),
            Arc::clone(&self.ledger),
            self.name.clone(),
            rate,
            rx,
        ));
        self.load = Some((tx, task));
    }

    /// Stops producing and waits for every event to be acknowledged (a
    /// note when the suite's producer had to be replaced meanwhile).
    pub async fn stop_load(&mut self) {
        if let Some((stop, task)) = self.load.take() {
            let _ = stop.send(true);
            if let Ok(fed) = task.await {
                if fed.replaced > 0 {
                    self.notes.push(format!(
                        "the suite's own producer stalled (no acknowledgement for {} s) and was replaced {} time(s); the swipes it had not sent were written by the new one",
                        feed::stall().as_secs(),
                        fed.replaced
                    ));
                }
            }
        }
    }

    /// Each live instance's partitions per topic, from its `/readyz`; a note
    /// with the spread, and a problem when `required` and some topic's
    /// partitions are not split evenly (counts differing by more than one).
    pub async fn check_spread(&mut self, when: &str, live: &[usize], required: bool) {
        let mut per_topic: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (n, &i) in live.iter().enumerate() {
            let (_, body) = self.instances[i].readyz(&self.http).await;
            let owned: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| serde_json::from_value(v["partitions"].clone()).ok())
                .unwrap_or_default();
            for tp in owned {
                let topic = tp.rsplit_once('[').map_or(tp.as_str(), |(t, _)| t);
                per_topic
                    .entry(topic.to_string())
                    .or_insert_with(|| vec![0; live.len()])[n] += 1;
            }
        }
        let mut uneven = Vec::new();
        let spread: Vec<String> = per_topic
            .iter()
            .map(|(topic, counts)| {
                let (lo, hi) = (counts.iter().min(), counts.iter().max());
                if hi.zip(lo).is_some_and(|(h, l)| h - l > 1) {
                    uneven.push(topic.clone());
                }
                let short = topic
                    .rsplit_once(['.', '-'])
                    .map_or(topic.as_str(), |(_, t)| t);
                format!("{short} {counts:?}")
            })
            .collect();
        self.notes.push(format!(
            "partitions per instance {when}: {}",
            spread.join(", ")
        ));
        if required && !uneven.is_empty() {
            self.problems.push(format!(
                "{when}: partitions not spread evenly on {}",
                uneven.join(", ")
            ));
        }
    }

    /// Records a fault that began at `start_ms` and ended now.
    pub fn fault(&mut self, what: String, start_ms: i64) {
        self.faults.push(Fault {
            what,
            start_ms,
            end_ms: now_ms(),
        });
    }

    /// Restarts every instance that exited on its own, as its supervisor
    /// would, with a note saying so.
    pub fn supervise(&mut self) -> Result<(), String> {
        for h in &mut self.instances {
            if let Some(code) = h.restart_if_exited()? {
                self.notes.push(format!(
                    "{} exited on its own (code {code}) and was started again, as a supervisor would",
                    h.name
                ));
            }
        }
        Ok(())
    }

    /// Supervises the instances for `period`, or until every valid event was sent.
    pub async fn supervise_for(&mut self, period: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < period {
            self.supervise()?;
            if self.load.is_none() && tally::sent_count(&self.standin.recorded()) >= self.valid() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    fn valid(&self) -> usize {
        self.ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.valid)
            .count()
    }

    /// The first `/readyz` 503 at or after `since_ms` whose reasons contain
    /// `containing`, waited for up to `limit`: when, and the reasons.
    pub async fn not_ready_since(
        &self,
        since_ms: i64,
        containing: &str,
        limit: Duration,
    ) -> Option<(i64, String)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let found = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(at, _, status, _)| *at >= since_ms && *status == 503)
                .map(|(at, _, _, body)| (*at, reasons(body)))
                .find(|(_, reasons)| reasons.contains(containing));
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }

    /// Waits until every valid event was sent or has a final outcome, or
    /// nothing changed for `quiet`, or `limit` passed.
    pub async fn settle(&self, quiet: Duration, limit: Duration) {
        let valid = self.valid();
        let start = Instant::now();
        let (mut last, mut since) = (usize::MAX, Instant::now());
        while start.elapsed() < limit {
            let sent = tally::sent_count(&self.standin.recorded());
            if sent >= valid {
                return;
            }
            if sent != last {
                (last, since) = (sent, Instant::now());
            } else if since.elapsed() >= quiet {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops every instance (SIGTERM), reads outcomes and dead letters back,
    /// and counts.
    pub async fn finish(mut self) -> Result<Report, String> {
        self.stop_load().await;
        for h in &mut self.instances {
            if h.alive() {
                h.sigterm();
                if h.exited(Duration::from_secs(30)).await.is_none() {
                    self.notes
                        .push(format!("{} did not stop within 30 s of SIGTERM", h.name));
                    h.kill9();
                }
            }
        }
        self.watcher.abort();
        let (bootstrap, outcomes, dlq) = (
            self.bootstrap.clone(),
            self.topics.outcomes.clone(),
            self.topics.dead_letter.clone(),
        );
        let (outcomes, dead) = tokio::task::spawn_blocking(move || {
            Ok::<_, String>((
                tally::read_all(&bootstrap, &outcomes)?,
                tally::read_all(&bootstrap, &dlq)?,
            ))
        })
        .await
        .map_err(|e| e.to_string())??;
        let arrivals = self.standin.recorded();
        let produced = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let figures = tally::figures(
            &produced,
            &arrivals,
            &outcomes,
            &dead,
            &self.topics.transactions,
            &self.faults,
        );
        let pauses_ms = self
            .faults
            .iter()
            .map(|f| {
                tally::longest_gap(
                    &arrivals,
                    f.start_ms,
                    30_000.max(f.end_ms - f.start_ms + 10_000),
                )
            })
            .collect();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let not_ready = seen
            .iter()
            .find(|(at, _, status, _)| {
                *status == 503
                    && self
                        .faults
                        .iter()
                        .any(|f| *at >= f.start_ms && *at <= f.end_ms + 5_000)
            })
            .map(|(_, who, _, body)| format!("{who}: {}", reasons(body)));
        Ok(Report {
            name: self.name.clone(),
            figures,
            faults: self.faults.clone(),
            pauses_ms,
            not_ready,
            notes: self.notes.clone(),
            problems: self.problems.clone(),
        })
    }
}

/// The `not_ready` reasons of a readiness body.
fn reasons(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["not_ready"].as_array().map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .unwrap_or_default()
}

/// Polls every instance's `/readyz` twice a second.
async fn watch_readiness(
    http: reqwest::Client,
    watched: Arc<Mutex<Vec<(String, std::net::SocketAddr)>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    loop {
        let targets = watched.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, addr) in targets {
            let answer = http
                .get(format!("http://{addr}/readyz"))
                .timeout(Duration::from_millis(800))
                .send()
                .await;
            if let Ok(r) = answer {
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((now_ms(), name, status, body));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

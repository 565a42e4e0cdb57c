//! Starting and stopping one herald instance: wires the stages, serves admin, drains on shutdown.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::deliver::{http_client, idle_connections_for, Channel};
use crate::engine::{ChannelRuntime, Engine, StageContext};
use crate::feedback::FeedbackState;
use crate::ingest::offsets::OffsetTracker;
use crate::ingest::{consume, ConsumerHealth, HeraldContext};
use crate::kafka;
use crate::metrics::Metrics;
use crate::outcome::{KafkaWriter, Recorder, WriteHealth};
use crate::profile::ProfileTable;
use crate::rules::{LiveRules, RuleErrors};

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rule files have errors:\n{0}")]
    Rules(#[from] RuleErrors),
    #[error(transparent)]
    Channel(#[from] crate::deliver::ChannelError),
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot go on: {0}")]
    Fatal(String),
    #[error("topics are not as herald needs them (`herald check --config …` says the same without starting):\n{0}")]
    Topics(String),
    #[error("admin listener on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started instance.
pub struct Running {
    admin_addr: SocketAddr,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    health: Arc<ConsumerHealth>,
    grace: Duration,
    shutdown: watch::Sender<bool>,
    consumer: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Where the admin server listens (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Every decision from now on, with its rendered text (for the demo).
    pub fn watch_decisions(
        &self,
    ) -> tokio::sync::broadcast::Receiver<Arc<crate::engine::Decision>> {
        self.engine.watch_decisions()
    }

    /// The instance's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Resolves when the instance cannot go on (its consumer failed fatally),
    /// with the reason.
    pub async fn failed(&self) -> String {
        self.health.failed().await
    }

    /// Stops fetching, drains in-flight sends, commits offsets and stops every
    /// task, all within one bound: `limits.shutdown_grace_ms` from now.
    pub async fn stop(mut self) {
        let deadline = self.health.shutdown_within(self.grace);
        let _ = self.shutdown.send(true);
        // The consumer drains its lanes within the grace, then commits
        // (blocking, on the broker's answer). Bounded too: a stop that
        // waited on it for ever would hang an embedding process (the tests,
        // the load test), where `run`'s exit guard does not watch.
        let commit = deadline + STOP_BOUND / 2;
        if tokio::time::timeout_at(commit.into(), &mut self.consumer)
            .await
            .is_err()
        {
            tracing::error!(
                waited_s = (self.grace + STOP_BOUND / 2).as_secs(),
                "the consumer did not stop in time; stopping without its last commit (its messages are handled again after the restart, as after a crash)"
            );
            self.consumer.abort();
        }
        // Background tasks stop on the same signal; a second or so beyond the
        // grace lets them close their clients cleanly.
        let limit = std::time::Instant::now().max(deadline) + Duration::from_secs(1);
        let _ =
            tokio::time::timeout_at(limit.into(), futures::future::join_all(self.background)).await;
        info!("stopped");
    }
}

/// Runs an instance until `shutdown` resolves, then stops it cleanly. Returns
/// an error, after stopping, when the instance could not go on (a fatal
/// consumer error), so the process exits non-zero and is restarted.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    tokio::pin!(shutdown);
    // Start-up may wait (a state directory that will not open); a signal
    // meanwhile ends it, with nothing consumed yet.
    let running = tokio::select! {
        running = start(config) => running?,
        _ = &mut shutdown => {
            info!("stopped during start-up");
            return Ok(());
        }
    };
    let fatal = tokio::select! {
        _ = shutdown => None,
        reason = running.failed() => Some(reason),
    };
    exit_guard(running.grace + STOP_BOUND);
    running.stop().await;
    match fatal {
        Some(reason) => Err(Error::Fatal(reason)),
        None => Ok(()),
    }
}

/// Beyond the grace, how long stopping may take (the stages' clients closing,
/// the runtime's blocking calls) before the process is ended regardless.
const STOP_BOUND: Duration = Duration::from_secs(10);

/// Guarantees the process ends once it is stopping, whatever hangs (a
/// Kafka client's close on a frozen broker, a blocked worker): a thread of
/// its own, with its own runtime so it runs when every worker is stuck,
/// exits non-zero once `bound` has passed, and at once on a second SIGTERM
/// or SIGINT (143 or 130, as the shell reports a signal). A stop that ends
/// in time returns from `main` first, which ends the thread with the
/// process. Only [`run`], the binary's loop, arms it.
fn exit_guard(bound: Duration) {
    let guard = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let second_signal = async {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => 130,
                _ = term.recv() => 143,
            }
        };
        let code = match &runtime {
            Ok(rt) => rt.block_on(async { tokio::time::timeout(bound, second_signal).await.ok() }),
            Err(_) => {
                std::thread::sleep(bound);
                None
            }
        };
        match code {
            Some(_) => error!("a second stop signal: exiting at once, without finishing the stop"),
            None => error!(
                seconds = bound.as_secs(),
                "stopping did not end in time (a client or a disk that does not answer); exiting"
            ),
        }
        std::process::exit(code.unwrap_or(1));
    };
    if let Err(e) = std::thread::Builder::new()
        .name("herald-exit-guard".into())
        .spawn(guard)
    {
        warn!(error = %e, "the exit guard did not start; a hung stop is not bounded");
    }
}

/// Starts an instance: loads rules (refusing to start on any error), connects
/// to Kafka, follows profiles, watches the rules, serves admin and consumes.
pub async fn start(mut config: Config) -> Result<Running, Error> {
    let metrics = Arc::new(Metrics::new());
    // Rules first: a broken or empty rules directory is said before any
    // topic is touched.
    let channel_names: BTreeSet<String> = config.channels.keys().cloned().collect();
    let source_names: BTreeSet<String> = config.sources.keys().cloned().collect();
    let rules = LiveRules::load(
        config.rules.dir.clone(),
        channel_names,
        source_names,
        Arc::clone(&metrics),
        config.rules.allow_empty,
        config.rules.default_locale.clone(),
    )?;
    let with_changelog = check_topics(&mut config).await?;

    let http = http_client(idle_connections_for(config.channels.values()));
    let mut built = std::collections::BTreeMap::new();
    for (name, channel_config) in &config.channels {
        let circuit = metrics.circuit_open.with_label_values(&[name]);
        let channel = Channel::from_config(name, channel_config, http.clone(), circuit)
            .map_err(Error::Channel)?;
        built.insert(name.clone(), channel);
    }
    crate::deliver::route_ios_tokens(&mut built);
    let mut channels = crate::util::FastMap::default();
    let mut breakers = Vec::new();
    for (name, channel) in built {
        breakers.push((name.clone(), Arc::clone(&channel.breaker)));
        channels.insert(name, ChannelRuntime::new(channel, &metrics));
    }

    let writes = Arc::new(WriteHealth::new(
        metrics.writes_failing.clone(),
        metrics.producer_rebuilds.clone(),
    ));
    let writer = Arc::new(KafkaWriter::new(
        kafka::producer_config(&config.kafka),
        Arc::clone(&writes),
    )?);
    let recorder = Recorder::new(
        writer,
        config.topics.outcomes.clone(),
        config.topics.dead_letter.clone(),
    );
    let twilio_hooks = admin::twilio::TwilioHooks::from_config(
        &config,
        recorder.clone(),
        metrics.twilio_webhooks.clone(),
    );
    let store = open_store(&config).await?;
    let instance_id = kafka::instance_id(&config.kafka, store.slot());
    info!(dir = %store.dir().display(), instance_id = instance_id.as_deref().unwrap_or("(dynamic membership)"), "state store open");
    if let crate::store::KeySource::File(path) = store.key_source() {
        warn!(key_file = %path.display(), "HERALD_STATE_KEY is not set: the state on disk and the pattern changelogs' records are sealed with a key kept in the state directory, which protects a copy of the tables but not of the whole directory, and which instances on other hosts do not have (a source partition moving to one starts its pattern state fresh); set it from your secret store, the same on every instance (64 hex digits)");
    }
    let profiles = ProfileTable::on_disk(
        store
            .sealed_table("profiles", ProfileTable::FORMAT)
            .map_err(|e| Error::Fatal(e.to_string()))?,
        config.state.profile_cache,
    );
    let ledger_table = store
        .table("ledger", crate::state::ledger_store::FORMAT)
        .map_err(|e| Error::Fatal(e.to_string()))?;
    if config.limits.ledger_entries.is_some() {
        warn!("limits.ledger_entries is no longer used (the send ledger is on disk and keeps every entry for eight days); remove it");
    }
    let sealed = |name: &str| {
        store
            .sealed_table(name, crate::feedback::disk::FORMAT)
            .map_err(|e| Error::Fatal(e.to_string()))
    };
    let feedback = FeedbackState::on_disk(
        kafka::profile_reader_config(&config.kafka),
        config.topics.feedback.clone(),
        config.topics.consent.clone(),
        config.feedback.lookback.ms(),
        crate::feedback::disk::FeedbackDisk::new(sealed("feedback")?, sealed("consent")?),
    );
    let tracker = Arc::new(OffsetTracker::default());
    let health = Arc::new(ConsumerHealth::default());
    let context = HeraldContext {
        tracker: Arc::clone(&tracker),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        revoke_wait: config.limits.shutdown_grace(),
        stores: std::sync::OnceLock::new(),
    };
    let consumer: StreamConsumer<HeraldContext> =
        kafka::consumer_config(&config.kafka, instance_id.as_deref())
            .create_with_context(context)?;
    let topics: Vec<String> = config.consumed_topics();
    let consumer = Arc::new(consumer);

    let listener = bind_admin(&config).await?;
    let admin_addr = listener.local_addr().map_err(|source| Error::Admin {
        addr: config.admin.listen,
        source,
    })?;
    info!(%admin_addr, "herald starting; loading profiles");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut background = Vec::new();
    background.push(tokio::spawn(Arc::clone(&profiles).follow(
        kafka::profile_reader_config(&config.kafka),
        config.topics.profiles.clone(),
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    )));
    background.push(tokio::spawn(Arc::clone(&profiles).follow_preferences(
        kafka::profile_reader_config(&config.kafka),
        config.topics.preferences.clone(),
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    )));
    background.push(tokio::spawn(
        Arc::clone(&feedback).follow(shutdown_rx.clone(), crate::util::now_ms()),
    ));
    if config.rules.watch {
        background.push(tokio::spawn(Arc::clone(&rules).watch(
            Duration::from_millis(config.rules.debounce_ms),
            shutdown_rx.clone(),
        )));
    }
    let state = AdminState {
        metrics: Arc::clone(&metrics),
        rules: Arc::clone(&rules),
        profiles: Arc::clone(&profiles),
        store: Some(store.clone()),
        feedback: Arc::clone(&feedback),
        config: Arc::new(config.clone()),
        consumer: Arc::clone(&health),
        writes,
        breakers,
        twilio: Arc::new(twilio_hooks),
        api: Arc::new(admin::preferences::Api::from_config(&config)),
    };
    background.push(tokio::spawn(admin::serve(
        listener,
        state,
        shutdown_rx.clone(),
    )));
    let probe = kafka::client_config(&config.kafka, kafka::Role::Admin, &[]);
    background.push(tokio::spawn(watch_broker(
        Arc::clone(&consumer),
        probe,
        Arc::clone(&health),
        config.consumed_topics(),
        shutdown_rx.clone(),
    )));

    let restart = Arc::clone(&health);
    background.push(tokio::spawn(crate::store::watch::watch_disk(
        store.clone(),
        move |reason| restart.set_fatal(reason),
        shutdown_rx.clone(),
    )));

    let table = Arc::clone(&profiles);
    let state_loaded = Arc::clone(&feedback);
    let parts = crate::engine::Parts {
        context: StageContext {
            rules,
            profiles,
            recorder,
            metrics: Arc::clone(&metrics),
            clock: Arc::new(crate::util::SystemClock),
            deployment: config.kafka.group_id.as_str().into(),
        },
        feedback,
        channels,
        changelogs: Some(with_changelog),
        ledger: Some(ledger_table),
        store: Some(store.clone()),
    };
    let engine = Arc::new(Engine::new(parts, &config));
    let stores: Arc<dyn crate::ingest::PartitionStores> = Arc::clone(&engine) as _;
    let _ = consumer.context().stores.set(stores);
    background.extend(engine.spawn_tasks(Arc::clone(&health), shutdown_rx.clone()));
    let limits = config.limits.clone();
    let health_handle = Arc::clone(&health);
    let seed_client = kafka::profile_reader_config(&config.kafka);
    let outcomes_topic = config.topics.outcomes.clone();
    let handle = Arc::clone(&engine);
    let consume_metrics = Arc::clone(&metrics);
    let mut stop = shutdown_rx.clone();
    let consumer_task = tokio::spawn(async move {
        // Events are matched against profiles, opt-outs and engagement, so
        // none is taken before those have caught up with their topics.
        tokio::select! {
            _ = async { tokio::join!(table.wait_caught_up(), state_loaded.wait_caught_up()) } => {}
            _ = stop.changed() => return,
        }
        // Sends made just before a crash are in the outcomes topic; their
        // events may come again (past the last commit) and must not resend.
        let seeder = Arc::clone(&engine);
        let seeding = tokio::task::spawn_blocking(move || {
            seeder.seed_recent_sends(&seed_client, &outcomes_topic, 20_000)
        });
        // A shutdown during start-up never joins the group.
        let seeded = tokio::select! {
            seeded = seeding => seeded,
            _ = stop.changed() => return,
        };
        match seeded {
            Ok(Ok(n)) => info!(sends = n, "recent sends read back from the outcomes topic"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read recent sends back; duplicates after a crash are possible")
            }
            Err(e) => tracing::warn!(error = %e, "cannot read recent sends back"),
        }
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&topic_refs) {
            tracing::error!(error = %e, "cannot subscribe to the source topics");
            return;
        }
        info!(topics = ?topics, "profiles and feedback loaded; consuming");
        consume(
            consumer,
            engine,
            consume_metrics,
            tracker,
            health,
            &limits,
            shutdown_rx,
        )
        .await;
    });
    Ok(Running {
        admin_addr,
        engine: handle,
        metrics,
        health: health_handle,
        grace: config.limits.shutdown_grace(),
        shutdown: shutdown_tx,
        consumer: consumer_task,
        background,
    })
}

/// Opens the state store. While it will not open — a full, read-only or
/// missing disk — serves `/readyz` 503 with the reason and tries again every
/// two seconds: the operator sees why, and the instance starts once the disk
/// is fixed, with no restart loop.
async fn open_store(config: &Config) -> Result<crate::store::Store, Error> {
    let (dir, cache) = (config.state.dir.clone(), config.state.block_cache_mb << 20);
    let open = move || crate::store::Store::open(&dir, cache);
    let not_opened = |e: crate::store::StoreError| format!("the state store cannot be opened: {e}");
    let first = match open() {
        Ok(store) => return Ok(store),
        Err(e) => not_opened(e),
    };
    warn!(error = %first, "waiting for the state directory; /readyz says why; trying again every 2 s");
    let listener = bind_admin(config).await?;
    let reason = Arc::new(std::sync::Mutex::new(first));
    let mut page = AbortOnDrop(tokio::spawn(admin::serve_not_ready(
        listener,
        Arc::clone(&reason),
    )));
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let open = open.clone();
        match tokio::task::spawn_blocking(open).await {
            Ok(Ok(store)) => {
                // The listener is free again before the admin endpoints bind it.
                page.0.abort();
                let _ = (&mut page.0).await;
                info!("state store open after waiting for its directory");
                return Ok(store);
            }
            Ok(Err(e)) => *reason.lock().unwrap_or_else(|p| p.into_inner()) = not_opened(e),
            Err(e) => return Err(Error::Fatal(e.to_string())),
        }
    }
}

/// Binds the admin listener of `config`.
async fn bind_admin(config: &Config) -> Result<tokio::net::TcpListener, Error> {
    admin::bind(config.admin.listen)
        .await
        .map_err(|source| Error::Admin {
            addr: config.admin.listen,
            source,
        })
}

/// A task aborted when its handle is dropped (start-up cancelled by a signal).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks every topic herald reads or writes before anything is consumed
/// ([`kafka::topics`]): refuses to start, naming each problem and its fix,
/// or creates herald's own missing topics (the intents topic, the held
/// topic, the changelogs). Returns the sources that have a changelog.
async fn check_topics(config: &mut Config) -> Result<BTreeSet<String>, Error> {
    let checked = topic_check(config).await.map_err(Error::Fatal)?;
    for warning in &checked.warnings {
        warn!("{warning}");
    }
    if !checked.problems.is_empty() {
        let each: Vec<String> = checked.problems.iter().map(|p| format!("- {p}")).collect();
        return Err(Error::Topics(each.join("\n")));
    }
    kafka::topics::create(config, &checked.to_create)
        .await
        .map_err(Error::Fatal)?;
    Ok(checked.with_changelog)
}

/// The checks `herald run` makes of every topic before it consumes (and
/// `herald check` makes alone): those the config names and the changelog of
/// every state table the stages declare. `Err` when the brokers cannot be asked.
pub async fn topic_check(config: &mut Config) -> Result<kafka::topics::Checked, String> {
    let changelogs = changelogs(config);
    kafka::topics::check(config, &changelogs).await
}

/// The changelog of every state table the stages declare ([`Engine::tables`]).
fn changelogs(config: &Config) -> Vec<kafka::topics::Changelog> {
    use crate::state::Partitioning;
    Engine::tables(config)
        .iter()
        .filter_map(|table| {
            let (topic, cleanup, retention_ms) = table.changelog()?;
            Some(kafka::topics::Changelog {
                topic: topic.to_string(),
                table: table.name.to_string(),
                partitioned_by: match &table.partitioning {
                    Partitioning::IntentsPartition => Some(config.intents_topic()),
                    Partitioning::Global => None,
                    Partitioning::Source(source) => Some(source.clone()),
                },
                cleanup,
                retention_ms,
            })
        })
        .collect()
}

/// After a lost assignment, how long the consumer may wait for a new one,
/// with the broker answering, before it is subscribed again.
const REJOIN_AFTER: Duration = Duration::from_secs(15);

/// After a lost assignment, how long the consumer may stay without one while
/// the broker answers, before herald gives up on it and exits. The broker's
/// answering time is summed over the whole time without partitions, not
/// counted afresh after each of its outages: under a broker frozen 60 s in
/// every 100 (the full fault suite's `freeze-group-3`, 2026-12-06) every
/// instance's group requests stayed stuck, no answering stretch lasted 60 s,
/// and three instances sat without partitions for eight minutes.
const WEDGED_AFTER: Duration = Duration::from_secs(60);

/// Asks the broker for metadata every two seconds, through the consumer and
/// through a fresh client of its own; readiness reports the consumer's answer.
/// When the assignment was lost at a session timeout (a frozen broker) and no
/// new one came although the broker answers again, it subscribes the consumer
/// again: librdkafka's cooperative rejoin was seen to stall there
/// (RELIABILITY.md, broker-freeze). A consumer that stays without partitions
/// while the probe reaches the broker for [`WEDGED_AFTER`] in all — its own
/// connections were seen stuck in connection setup for good — is fatal: herald
/// stops and exits non-zero, so its supervisor starts a fresh process, which
/// restores every store from Kafka; nothing is lost, and the wait is bounded.
async fn watch_broker(
    consumer: Arc<StreamConsumer<HeraldContext>>,
    probe: rdkafka::ClientConfig,
    health: Arc<ConsumerHealth>,
    topics: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut resubscribed = None::<std::time::Instant>;
    // The broker's answering time since the assignment was lost, summed.
    let mut answered = Duration::ZERO;
    let mut probed = std::time::Instant::now();
    loop {
        let c = Arc::clone(&consumer);
        let p = probe.clone();
        // The probe matters only while the assignment is lost.
        let lost = health.lost_for().is_some();
        let (ok, reachable) = tokio::task::spawn_blocking(move || {
            let ok = c.fetch_metadata(None, Duration::from_secs(2)).is_ok();
            // A fresh client each time: a long-lived one was seen stuck in
            // connection setup with the consumer after a frozen broker.
            let reachable = ok
                || lost
                    && p.create::<rdkafka::producer::BaseProducer>()
                        .is_ok_and(|probe| {
                            rdkafka::producer::Producer::client(&probe)
                                .fetch_metadata(None, Duration::from_secs(2))
                                .is_ok()
                        });
            (ok, reachable)
        })
        .await
        .unwrap_or((false, false));
        health
            .broker_ok
            .store(ok, std::sync::atomic::Ordering::Release);
        // How long the broker has answered while the consumer has no partitions.
        let since = std::mem::replace(&mut probed, std::time::Instant::now()).elapsed();
        if health.lost_for().is_none() {
            answered = Duration::ZERO;
            resubscribed = None;
        } else if reachable {
            answered += since;
        }
        let waited = (!answered.is_zero()).then_some(answered);
        let due = resubscribed.is_none_or(|t| t.elapsed() > REJOIN_AFTER);
        if due && reachable && waited.is_some_and(|d| d > REJOIN_AFTER) {
            tracing::warn!("no partitions since the assignment was lost; subscribing again");
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&refs) {
                tracing::error!(error = %e, "cannot subscribe again");
            }
            resubscribed = Some(std::time::Instant::now());
        }
        if waited.is_some_and(|d| d > WEDGED_AFTER) {
            health.set_fatal(format!(
                "the consumer has had no partitions since its assignment was lost, while the broker answered for {} s in all; exiting so that a fresh process rejoins the group",
                WEDGED_AFTER.as_secs()
            ));
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

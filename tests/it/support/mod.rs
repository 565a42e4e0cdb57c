//! Shared helpers for the black-box tests: the real local broker, random topic
//! names, a provider stand-in that speaks FCM v1 and Twilio, and herald itself.
#![allow(dead_code)]

pub mod provider;

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

pub const FCM_TOKEN: &str = "test-fcm-access-token";
pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TWILIO_TOKEN: &str = "test-twilio-auth-token";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

/// The broker the test command started (`scripts/test.sh` sets HERALD_TEST_BROKERS).
pub fn brokers() -> String {
    std::env::var("HERALD_TEST_BROKERS").expect(
        "HERALD_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts the local broker",
    )
}

/// The preference API's backend secret in the tests.
pub const API_TOKEN: &str = "test-backend-secret-3f9a";
/// The key of the tests' per-user tokens.
pub const USER_HMAC_KEY: &str = "test-user-key-77c1";

/// Sets the provider credentials herald reads from the environment, once per process.
pub fn credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        std::env::set_var("HERALD_TEST_FCM_TOKEN", FCM_TOKEN);
        std::env::set_var("HERALD_TEST_TWILIO_SID", TWILIO_SID);
        std::env::set_var("HERALD_TEST_TWILIO_TOKEN", TWILIO_TOKEN);
        std::env::set_var("HERALD_TEST_WEBHOOK_SECRET", WEBHOOK_SECRET);
        // The preference API's secrets, under the names herald reads by default.
        std::env::set_var("HERALD_API_TOKEN", API_TOKEN);
        std::env::set_var("HERALD_USER_HMAC_KEY", USER_HMAC_KEY);
        // What the sample config files name (config/*.toml).
        for var in [
            "HERALD_FCM_ACCESS_TOKEN",
            "TWILIO_ACCOUNT_SID",
            "TWILIO_AUTH_TOKEN",
        ] {
            std::env::set_var(var, "x");
        }
    });
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// Topics of one test: the demo's and the load test's list of topic names
/// ([`herald::demo::RunTopics`]), with a fresh prefix.
pub struct Topics(herald::demo::RunTopics);

impl std::ops::Deref for Topics {
    type Target = herald::demo::RunTopics;
    fn deref(&self) -> &herald::demo::RunTopics {
        &self.0
    }
}

impl Topics {
    /// Fresh names, not created anywhere yet.
    pub fn fresh() -> Topics {
        Topics(herald::demo::RunTopics::new(&unique("t")))
    }

    /// Every topic with its partition count: the streams and the feedback
    /// topic get `partitions`, herald's own topics one.
    pub fn specs(&self, partitions: i32) -> Vec<(&String, i32)> {
        vec![
            (&self.transactions, partitions),
            (&self.sensors, partitions),
            (&self.locations, partitions),
            (&self.profiles, 1),
            (&self.outcomes, 1),
            (&self.dlq, 1),
            (&self.feedback, partitions),
            (&self.consent, 1),
            (&self.replies, 1),
            (&self.held, 1),
        ]
    }

    /// The topics herald reads whole at start, which it requires compacted.
    pub fn compacted(&self) -> [&String; 3] {
        [&self.profiles, &self.consent, &self.held]
    }

    /// Creates a fresh set of topics on the broker, as an operator would:
    /// profiles, consent and held compacted.
    pub async fn create(partitions: i32) -> Topics {
        let t = Topics::fresh();
        let compacted = t.compacted();
        let (whole, rest): (Vec<_>, Vec<_>) = t
            .specs(partitions)
            .into_iter()
            .partition(|(name, _)| compacted.contains(name));
        create_topics(&rest).await;
        if let Err(e) = try_create_topics_with(&whole, &[("cleanup.policy", "compact")]).await {
            panic!("topics not created: {e}");
        }
        t
    }
}

/// Creates topics (name, partitions) on the test broker.
pub async fn create_topics(specs: &[(&String, i32)]) {
    if let Err(e) = try_create_topics(specs).await {
        panic!("topics not created: {e}");
    }
}

/// Creates topics; the broker's refusal when it refuses (e.g. a deleted
/// topic of the same name is still being removed).
pub async fn try_create_topics(specs: &[(&String, i32)]) -> Result<(), String> {
    try_create_topics_with(specs, &[]).await
}

/// Creates topics with these topic configs.
pub async fn try_create_topics_with(
    specs: &[(&String, i32)],
    configs: &[(&str, &str)],
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = specs
        .iter()
        .map(|(name, p)| {
            configs.iter().fold(
                NewTopic::new(name, *p, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|(topic, e)| format!("{topic}: {e}"))?;
    }
    Ok(())
}

/// Deletes topics from the test broker.
pub async fn delete_topics(names: &[&String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    for r in admin
        .delete_topics(&names, &AdminOptions::new())
        .await
        .expect("delete topics")
    {
        r.expect("topic deleted");
    }
}

/// Publishes a tombstone (no value) for `key`.
pub async fn publish_tombstone(topic: &str, key: &str) {
    producer()
        .send(
            FutureRecord::<str, [u8]>::to(topic).key(key),
            Duration::from_secs(10),
        )
        .await
        .expect("publish tombstone");
}

/// A rule file with one rule that pushes every event of `source`, its amount
/// as the body; `policy` adds a policy line (e.g. `policy: { max_age_s: 5 }`).
pub fn every_swipe_rule(source: &str, policy: &str) -> String {
    let policy = if policy.is_empty() {
        String::new()
    } else {
        format!("    {policy}\n")
    };
    format!(
        "rules:\n  - id: every-swipe\n    sources: [{source}]\n    channels: [push]\n    category: transactional\n{policy}    template:\n      body: \"{{{{ event.amount }}}}\"\n"
    )
}

/// Publishes `user`'s profile ([`profile`]) to the test's profiles topic.
pub async fn publish_profile(topics: &Topics, user: &str, push: bool, sms: bool) {
    publish(
        &producer(),
        &topics.profiles,
        user,
        &profile(user, push, sms),
    )
    .await;
}

/// A producer for test input.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// Publishes one record and waits for the broker's acknowledgement.
pub async fn publish(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("publish");
}

/// A consumer assigned to every partition of `topic`, from the beginning.
fn reader(brokers: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Reads records of `topic` from the beginning until `want` records match
/// `keep` or `limit` passes; returns the matching JSON values.
pub fn read_json(
    topic: &str,
    want: usize,
    limit: Duration,
    keep: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    read_json_from(&brokers(), topic, want, limit, keep)
}

/// [`read_json`] from a given cluster (the mock cluster of the fault tests).
pub fn read_json_from(
    brokers: &str,
    topic: &str,
    want: usize,
    limit: Duration,
    keep: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let consumer = reader(brokers, topic);
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if let Some(v) = m.payload().and_then(herald::state::wire::to_json) {
                if keep(&v) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// A record's key and payload (`None`: a tombstone).
pub type KeyAndPayload = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Reads every record of `topic` from the beginning as (key, payload),
/// stopping once no record that `keep` keeps has arrived for `quiet` (after
/// the first) or after `limit`.
fn read_until_quiet<T>(
    topic: &str,
    quiet: Duration,
    limit: Duration,
    keep: impl Fn(KeyAndPayload) -> Option<T>,
) -> Vec<T> {
    let consumer = reader(&brokers(), topic);
    let deadline = Instant::now() + limit;
    let mut last = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < deadline && (out.is_empty() || last.elapsed() < quiet) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let record = (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec));
            if let Some(v) = keep(record) {
                out.push(v);
                last = Instant::now();
            }
        }
    }
    out
}

/// Every record of `topic` as (key, payload; `None` a tombstone), until none
/// came for `quiet` (or `limit` passed).
pub fn read_all_records(topic: &str, quiet: Duration, limit: Duration) -> Vec<KeyAndPayload> {
    read_until_quiet(topic, quiet, limit, Some)
}

/// Reads every JSON record of `topic` from the beginning, stopping once
/// nothing new has arrived for `quiet` (after the first record) or after
/// `limit`.
pub fn read_all_json(topic: &str, quiet: Duration, limit: Duration) -> Vec<Value> {
    read_until_quiet(topic, quiet, limit, |(_, payload)| {
        payload.and_then(|p| serde_json::from_slice::<Value>(&p).ok())
    })
}

/// Polls `check` every 50 ms until it returns `Some` or `limit` passes.
pub async fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// herald.toml text for a test: the test's topics, rules dir and provider stand-in.
pub fn config_text(topics: &Topics, rules_dir: &Path, provider_base: &str, extra: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = "{brokers}"
group_id = "{group}"

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[sources.{tx}]
user_field = "user_id"
time_field = "ts"
type_field = "status"

[sources.{sensors}]
user_field = "owner_id"
time_field = "ts"

[sources.{locations}]
user_field = "user_id"
time_field = "ts"

[topics]
profiles = "{profiles}"
outcomes = "{outcomes}"
dead_letter = "{dlq}"
feedback = "{feedback}"
consent = "{consent}"
replies = "{replies}"
held = "{held}"
preferences = "{preferences}"
intents_partitions = 4

[rules]
dir = "{rules}"
debounce_ms = 200

[admin]
listen = "127.0.0.1:0"

[limits]
max_event_bytes = 2048
shutdown_grace_ms = 5000

[channels.push]
provider = "fcm"
base_url = "{base}"
project_id = "herald-test"
token_env = "HERALD_TEST_FCM_TOKEN"
timeout_ms = 2000
backoff_ms = 20
max_backoff_ms = 200

[channels.sms]
provider = "twilio"
base_url = "{base}"
account_sid_env = "HERALD_TEST_TWILIO_SID"
auth_token_env = "HERALD_TEST_TWILIO_TOKEN"
from = "+15005550006"
timeout_ms = 2000
backoff_ms = 20
max_backoff_ms = 200
{extra}
"#,
        brokers = brokers(),
        group = unique("herald"),
        tx = topics.transactions,
        sensors = topics.sensors,
        locations = topics.locations,
        profiles = topics.profiles,
        outcomes = topics.outcomes,
        dlq = topics.dlq,
        feedback = topics.feedback,
        consent = topics.consent,
        replies = topics.replies,
        held = topics.held,
        preferences = preferences_topic(topics),
        rules = rules_dir.display(),
        base = provider_base,
    )
}

/// The test's own preferences topic (herald creates it).
pub fn preferences_topic(topics: &Topics) -> String {
    topics.profiles.replace("-profiles", "-preferences")
}

/// Copies the sample rules into a fresh folder, pointing them at this test's topics.
pub fn sample_rules(topics: &Topics) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    herald::demo::copy_rules(
        &samples,
        dir.path(),
        &[
            ("transactions", &topics.transactions),
            ("sensors", &topics.sensors),
            ("locations", &topics.locations),
        ],
    )
    .unwrap();
    dir
}

/// Writes a config file into `dir` and loads it the way `herald run` does.
pub fn load_config(dir: &Path, text: &str) -> (PathBuf, herald::config::Config) {
    credentials();
    let path = dir.join("herald.toml");
    std::fs::write(&path, text).unwrap();
    let config = herald::config::Config::load(&path).unwrap_or_else(|e| panic!("test config: {e}"));
    (path, config)
}

/// A card swipe as the payment system publishes it.
pub fn swipe(user: &str, amount: f64, status: &str, country: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "user_id": user,
        "ts": herald::util::now_ms(),
        "card_last4": "4242",
        "merchant": "Blue Bottle",
        "category": "books",
        "amount": amount,
        "currency": "USD",
        "country": country,
        "home_country": "US",
        "status": status,
        "balance_after": 2500.0,
    }))
    .unwrap()
}

/// A profile with the given consents.
pub fn profile(user: &str, push: bool, sms: bool) -> Vec<u8> {
    serde_json::to_vec(&profile_json(user, push, sms)).unwrap()
}

/// [`profile`] as JSON, to change before publishing.
pub fn profile_json(user: &str, push: bool, sms: bool) -> Value {
    serde_json::json!({
        "user_id": user,
        "push_tokens": [{"token": format!("fcm-token-{user}"), "platform": "android"}],
        "phone": "+14155552671",
        "time_zone": "America/Chicago",
        "locale": "en-US",
        "consent": {"push": push, "sms": sms},
        "preferences": {"marketing": false},
    })
}

/// Polls an admin endpoint until `done` holds (30 s at most); its body then.
pub async fn admin_until(
    addr: std::net::SocketAddr,
    path: &str,
    done: impl Fn(u16, &str) -> bool,
) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let (code, body) = admin_get(addr, path).await;
        if done(code, &body) {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Admin GET, body as text.
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = http()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin answers GET {path}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// An HTTP client whose every request is bounded (60 s): a hung endpoint
/// fails the test with the call's name instead of hanging CI.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// Waits until `/readyz` answers 200.
pub async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http().get(format!("http://{addr}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = admin_get(addr, "/readyz").await;
    panic!("herald did not become ready within 30 s: {body}");
}

/// The consumer group a config text names.
pub fn group_of(config_text: &str) -> String {
    config_text
        .lines()
        .find_map(|l| l.strip_prefix("group_id = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("group_id in the config text")
        .to_string()
}

/// Commits offset 0 for every partition of `topic` in `group` (no member
/// running): the next start reads the topic again from the beginning, as
/// after a crash before any commit. Until the group has emptied (a static
/// member stays until its session times out) the broker refuses the commit,
/// as it refuses an operator's offset reset, so this retries for up to 30 s.
pub fn rewind_group(group: &str, topic: &str) {
    use rdkafka::consumer::CommitMode;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(0))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("commit offsets: {e}"),
        }
    }
}

/// Runs the real `herald` binary on a config file, its log to `log`.
pub fn spawn_herald(config: &Path, log: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["run", "--config"])
        .arg(config)
        .env("HERALD_TEST_FCM_TOKEN", FCM_TOKEN)
        .env("HERALD_TEST_TWILIO_SID", TWILIO_SID)
        .env("HERALD_TEST_TWILIO_TOKEN", TWILIO_TOKEN)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("herald starts")
}

/// Waits for a child to exit (killing it after `limit`); its exit code.
pub fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

/// A loopback port free right now (for an admin listener of a child process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Publishes one record to a given partition of `topic`.
pub async fn publish_to(topic: &str, partition: i32, key: &str, payload: &[u8]) {
    producer()
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("published");
}

/// Quiet hours from this minute to the next, in UTC (`"HH:MM-HH:MM"`), so a
/// held message is released within a minute. Waits until at most `latest_s`
/// seconds into the minute, so an event sent now lands inside the window.
pub async fn quiet_window_now(latest_s: i64) -> String {
    while jiff::Timestamp::now().as_second() % 60 > latest_s {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let next = now.checked_add(jiff::Span::new().minutes(1)).unwrap();
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        now.hour(),
        now.minute(),
        next.hour(),
        next.minute()
    )
}

/// Asserts that `herald_decisions_total{channel,status}` counts exactly the
/// decisions the outcomes topic holds (delivery records aside), per channel
/// and status.
pub async fn assert_decisions_match_outcomes(addr: std::net::SocketAddr, outcomes: &[Value]) {
    use std::collections::BTreeMap;
    let mut written: BTreeMap<(String, String), u64> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.get("record").is_none()) {
        let key = (
            o["channel"].as_str().unwrap().to_string(),
            o["status"].as_str().unwrap().to_string(),
        );
        *written.entry(key).or_default() += 1;
    }
    let (_, metrics) = admin_get(addr, "/metrics").await;
    let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("herald_decisions_total{"))
    {
        let (labels, n) = line.rsplit_once(' ').unwrap();
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap()
                .to_string()
        };
        let n: u64 = n.parse().unwrap();
        if n > 0 {
            counted.insert((label("channel"), label("status")), n);
        }
    }
    assert_eq!(
        counted, written,
        "herald_decisions_total against the outcomes topic"
    );
}

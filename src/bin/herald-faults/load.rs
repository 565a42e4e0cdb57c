//! What a scenario feeds herald: its topics, config and rule, the users'
//! profiles, and a steady stream of card swipes, each stamped with a unique id.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::world::Broker;

/// Users that receive the notices; events go round them.
pub const USERS: usize = 40;

/// The topics of one scenario, with fresh names.
#[derive(Clone)]
pub struct Topics {
    pub transactions: String,
    pub profiles: String,
    pub outcomes: String,
    pub dead_letter: String,
    pub feedback: String,
    pub consent: String,
    pub replies: String,
    pub held: String,
}

impl Topics {
    /// Fresh names under `prefix` (the scenario and run).
    pub fn fresh(prefix: &str) -> Topics {
        let t = |name: &str| format!("{prefix}-{name}");
        Topics {
            transactions: t("transactions"),
            profiles: t("profiles"),
            outcomes: t("outcomes"),
            dead_letter: t("dlq"),
            feedback: t("feedback"),
            consent: t("consent"),
            replies: t("replies"),
            held: t("held"),
        }
    }

    /// Creates them: six source partitions, three for feedback, one for the
    /// rest; profiles, consent and held compacted, as herald requires.
    pub async fn create(&self, broker: &Broker) -> Result<(), String> {
        broker
            .create_topics(&[
                (&self.transactions, 6, false),
                (&self.profiles, 1, true),
                (&self.outcomes, 3, false),
                (&self.dead_letter, 1, false),
                (&self.feedback, 3, false),
                (&self.consent, 1, true),
                (&self.replies, 1, false),
                (&self.held, 1, true),
            ])
            .await
    }
}

/// What every instance of a scenario shares in its config.
pub struct Setup<'a> {
    pub bootstrap: &'a str,
    pub topics: &'a Topics,
    pub group: &'a str,
    /// The stand-in's base URL.
    pub provider: &'a str,
    /// More `[kafka.properties]` lines (the eager-rebalance comparison).
    pub extra_kafka: &'a str,
    /// Dynamic membership (`instance_id = ""`) instead of herald's static default.
    pub dynamic_member: bool,
}

impl Setup<'_> {
    /// Writes the rule and instance `n`'s config (admin on `admin`) into
    /// `dir`; returns the config's path.
    pub fn write(
        &self,
        dir: &Path,
        admin: std::net::SocketAddr,
        n: usize,
    ) -> Result<PathBuf, String> {
        let (topics, extra_kafka, group, provider) =
            (self.topics, self.extra_kafka, self.group, self.provider);
        let rules = dir.join("rules");
        std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
        let rule = format!(
            r#"rules:
  - id: purchase-notice
    description: Every approved swipe, at once (the fault suite counts these).
    sources: [{source}]
    match: {{ status: approved }}
    channels: [push]
    category: transactional
    priority: high
    template:
      title: "{{{{ event.amount }}}} at {{{{ event.merchant }}}}"
      body: "eid={{{{ event.eid }}}} card {{{{ event.card | mask_card }}}}"
"#,
            source = topics.transactions
        );
        std::fs::write(rules.join("notices.yaml"), rule).map_err(|e| e.to_string())?;
        let config = format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
{instance_id}
[kafka.properties]
"session.timeout.ms" = "6000"
{extra_kafka}

[sources.{transactions}]
user_field = "user_id"
time_field = "ts"

[topics]
profiles = "{profiles}"
outcomes = "{outcomes}"
dead_letter = "{dead_letter}"
feedback = "{feedback}"
consent = "{consent}"
replies = "{replies}"
held = "{held}"

[rules]
dir = "{rules}"
watch = false

[admin]
listen = "{admin}"

[limits]
shutdown_grace_ms = 5000

[channels.push]
provider = "fcm"
base_url = "{provider}"
project_id = "herald-faults"
token_env = "HERALD_FAULTS_FCM_TOKEN"
concurrency = 32
"#,
            bootstrap = self.bootstrap,
            instance_id = if self.dynamic_member {
                "instance_id = \"\""
            } else {
                ""
            },
            transactions = topics.transactions,
            profiles = topics.profiles,
            outcomes = topics.outcomes,
            dead_letter = topics.dead_letter,
            feedback = topics.feedback,
            consent = topics.consent,
            replies = topics.replies,
            held = topics.held,
            rules = rules.display(),
        );
        let path = dir.join(format!("herald-{n}.toml"));
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        Ok(path)
    }
}

/// A producer that waits out broker faults rather than dropping events.
pub fn producer(broker: &Broker) -> Result<FutureProducer, String> {
    producer_to(&broker.bootstrap)
}

/// [`producer`], given the broker's address.
pub fn producer_to(bootstrap: &str) -> Result<FutureProducer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "600000")
        .create()
        .map_err(|e| e.to_string())
}

/// Publishes every user's profile (a push token, consent to push).
pub async fn publish_profiles(producer: &FutureProducer, topics: &Topics) -> Result<(), String> {
    for u in 0..USERS {
        let user = format!("u{u}");
        let profile = serde_json::json!({
            "user_id": user,
            "push_tokens": [{"token": format!("fcm-token-{user}"), "platform": "android"}],
            "time_zone": "Europe/Paris",
            "locale": "fr-FR",
            "consent": {"push": true, "sms": false},
        });
        let payload = serde_json::to_vec(&profile).map_err(|e| e.to_string())?;
        producer
            .send(
                FutureRecord::to(&topics.profiles)
                    .key(&user)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e.to_string())?;
    }
    Ok(())
}

/// One event the producer wrote, and where the broker put it.
#[derive(Debug, Clone)]
pub struct Produced {
    pub eid: String,
    pub partition: i32,
    pub offset: i64,
    /// A valid event herald should notify about (not a hostile record).
    pub valid: bool,
    /// For a hostile record: the dead-letter reason expected.
    pub expect: Option<&'static str>,
}

/// Everything produced so far, shared with the tally.
pub type Ledger = Arc<Mutex<Vec<Produced>>>;

/// A valid swipe of user `n % USERS`, stamped `eid`.
pub fn swipe(eid: &str, n: usize) -> (String, Vec<u8>) {
    let u = n % USERS;
    let event = serde_json::json!({
        "eid": eid,
        "user_id": format!("u{u}"),
        "card": format!("4000000000{u:06}"),
        "ts": herald::util::now_ms(),
        "status": "approved",
        "amount": 12.5 + (n % 7) as f64,
        "merchant": "Corner Shop",
    });
    (
        format!("card-{u}"),
        serde_json::to_vec(&event).expect("json"),
    )
}

/// Why a record was not written.
#[derive(Debug)]
pub enum Unsent {
    /// Taken out of a stalled producer's queue before it was ever sent
    /// (see `feed`): safe to write again with another producer.
    Purged,
    Failed(String),
}

impl std::fmt::Display for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsent::Purged => f.write_str("purged from a stalled producer's queue"),
            Unsent::Failed(why) => f.write_str(why),
        }
    }
}

impl From<Unsent> for String {
    fn from(unsent: Unsent) -> String {
        unsent.to_string()
    }
}

/// Writes one record and notes where it went.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    ledger: &Ledger,
    eid: String,
    key: Option<&str>,
    payload: Option<&[u8]>,
    expect: Option<&'static str>,
) -> Result<(), Unsent> {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    let delivery = producer
        .send(record, Duration::from_secs(600))
        .await
        .map_err(|(e, _)| match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue) => Unsent::Purged,
            e => Unsent::Failed(format!("producing {eid}: {e}")),
        })?;
    ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Produced {
            eid,
            partition: delivery.partition,
            offset: delivery.offset,
            valid: expect.is_none(),
            expect,
        });
    Ok(())
}

//! kafka: client settings shared by the source consumer, the profile reader
//! and the producer, and [`follow`], which reads a whole topic and keeps up.

pub mod describe;
pub mod follow;
pub mod offsets;
pub mod topics;

use rdkafka::ClientConfig;

use crate::config::{kafka_properties, KafkaConfig};

/// What a client is, for which configured properties it takes: librdkafka
/// warns at every start about a consumer property given to a producer and the
/// other way round, so `[kafka.properties]` is shared and each client gets
/// only the keys that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
    /// Metadata and topic administration (an admin client is a producer
    /// underneath): neither consumer nor producer settings.
    Admin,
}

/// Properties only consumers take ("C" in librdkafka's CONFIGURATION.md, 2.12).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.commit.enable",
    "auto.offset.reset",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "consume.callback.max.messages",
];

/// Properties only producers take ("P" in librdkafka's CONFIGURATION.md, 2.12).
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

impl Role {
    fn takes(self, key: &str) -> bool {
        let consumer_only = CONSUMER_ONLY.contains(&key);
        let producer_only = PRODUCER_ONLY.contains(&key);
        match self {
            Role::Consumer => !producer_only,
            Role::Producer => !consumer_only,
            Role::Admin => !consumer_only && !producer_only,
        }
    }
}

/// Base settings: brokers, low-latency defaults, then every configured
/// property this kind of client takes, which wins over herald's defaults (so
/// SASL_SSL, timeouts, … pass through).
pub fn client_config(kafka: &KafkaConfig, role: Role, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in kafka_properties(kafka) {
        if role.takes(&k) {
            config.set(k, v);
        }
    }
    config
}

/// The source consumer: manual offset store, auto commit of stored offsets;
/// `instance_id`, when given, makes it a static member of the group.
pub fn consumer_config(kafka: &KafkaConfig, instance_id: Option<&str>) -> ClientConfig {
    let mut config = client_config(
        kafka,
        Role::Consumer,
        &[
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "50"),
            ("session.timeout.ms", "10000"),
            // Per topic: each topic's partitions split evenly over the
            // instances (cooperative-sticky balances the total count, so one
            // instance could hold every source partition and another only
            // intents). Eager, but with the state on disk a rebalance pauses
            // sends less than cooperative-sticky's two rounds (the fault
            // suite's `group` and `group-cooperative`, RELIABILITY.md).
            ("partition.assignment.strategy", "range"),
            // An ApiVersion request caught by a frozen broker must not time
            // out into librdkafka's "broker older than 0.10" fallback.
            ("api.version.request.timeout.ms", "60000"),
            // Consumer lag per partition, for `herald_consumer_lag` and the live page.
            ("statistics.interval.ms", "5000"),
        ],
    );
    config.set("group.id", &kafka.group_id);
    if config.get("group.protocol") == Some("consumer") {
        // KIP-848: the broker owns the session and the assignment; librdkafka
        // refuses these client-side settings with that protocol.
        for key in [
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "partition.assignment.strategy",
        ] {
            config.remove(key);
        }
    }
    if let Some(id) = instance_id {
        config.set("group.instance.id", id);
    }
    // Not overridable: herald stores an offset only after the message's work is final.
    config.set("enable.auto.offset.store", "false");
    config
}

/// This instance's `group.instance.id`: the configured one, else the host
/// name and `slot` (the instance's state slot, which a restarted instance
/// takes again); `None` when configured off (`instance_id = ""`).
pub fn instance_id(kafka: &KafkaConfig, slot: u32) -> Option<String> {
    match kafka.instance_id.as_deref() {
        Some("") => None,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "herald".into());
            Some(format!("{host}-{slot}"))
        }
        Some(id) => Some(id.to_string()),
    }
}

/// The profile reader: its own group id, never committing (it always reads from the start).
pub fn profile_reader_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka, Role::Consumer, &[("fetch.wait.max.ms", "100")]);
    config.set(
        "group.id",
        format!("{}.profiles.{}", kafka.group_id, std::process::id()),
    );
    config
}

/// The producer for outcomes and dead letters: acknowledged by all replicas,
/// idempotent, and never timing a record out (librdkafka retries it until
/// the broker has it, so a record is written once: see
/// `outcome::producer`).
///
/// `linger.ms=0`: a record goes out at once. An event's path waits for two
/// acknowledgements in a row (its intent, its `attempted` entry), and 1 ms
/// of linger cost ~3 ms at p50 at 200 events/s (BENCHMARKS.md, "linger");
/// under load librdkafka still batches what gathers while requests are in
/// flight.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    client_config(
        kafka,
        Role::Producer,
        &[
            ("linger.ms", "0"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "0"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_only_the_shared_properties_it_takes() {
        let kafka: KafkaConfig = toml::from_str(
            "bootstrap_servers = \"b:9092\"\n[properties]\n\"session.timeout.ms\" = \"6000\"\n\"linger.ms\" = \"5\"\n\"security.protocol\" = \"SASL_SSL\"\n",
        )
        .unwrap();
        let producer = producer_config(&kafka);
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("5"));
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        let consumer = consumer_config(&kafka, None);
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));
        let admin = client_config(&kafka, Role::Admin, &[]);
        assert_eq!(admin.get("session.timeout.ms"), None);
        assert_eq!(admin.get("linger.ms"), None);
        assert_eq!(admin.get("security.protocol"), Some("SASL_SSL"));
    }
}

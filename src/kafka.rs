//! Kafka client settings shared by the source consumer, the profile reader and the producer.

use rdkafka::ClientConfig;

use crate::config::{kafka_properties, KafkaConfig};

/// Base settings: brokers, low-latency defaults, then every configured
/// property, which wins over herald's defaults (so SASL_SSL, timeouts, … pass through).
pub fn client_config(kafka: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in kafka_properties(kafka) {
        config.set(k, v);
    }
    config
}

/// The source consumer: manual offset store, auto commit of stored offsets.
pub fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(
        kafka,
        &[
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "50"),
            ("session.timeout.ms", "10000"),
            // Incremental rebalancing: when an instance joins or leaves, only
            // the partitions that move stop; the rest keep flowing.
            ("partition.assignment.strategy", "cooperative-sticky"),
            // An ApiVersion request caught by a frozen broker must not time
            // out into librdkafka's "broker older than 0.10" fallback.
            ("api.version.request.timeout.ms", "60000"),
        ],
    );
    config.set("group.id", &kafka.group_id);
    // Not overridable: herald stores an offset only after the message's work is final.
    config.set("enable.auto.offset.store", "false");
    config
}

/// The profile reader: its own group id, never committing (it always reads from the start).
pub fn profile_reader_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka, &[("fetch.wait.max.ms", "100")]);
    config.set(
        "group.id",
        format!("{}.profiles.{}", kafka.group_id, std::process::id()),
    );
    config
}

/// The producer for outcomes and dead letters: acknowledged by all replicas, idempotent.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    client_config(
        kafka,
        &[
            ("linger.ms", "1"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "30000"),
        ],
    )
}

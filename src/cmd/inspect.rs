//! `herald inspect <topic>`: the last records of any topic herald writes,
//! one JSON line each, its binary intents decoded (`state::wire`), so an
//! operator reads them as easily as the outcomes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use herald::config::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::{Failure, Outcome};

/// Arguments of `herald inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The topic (e.g. `herald.intents`).
    topic: String,
    /// The configuration file: the brokers and client settings (SASL, TLS).
    #[arg(long, short, default_value = "herald.toml")]
    config: PathBuf,
    /// How many of the newest records of each partition.
    #[arg(long, default_value_t = 10)]
    last: i64,
}

/// `herald inspect`: prints `{partition, offset, timestamp_ms, key, value}`
/// per record, oldest first per partition; a value that is neither a
/// versioned record nor JSON (a sealed changelog value) is shown by size.
pub fn inspect(args: &InspectArgs) -> Outcome {
    // Only the Kafka settings are used: no channel credential is needed.
    let config = Config::read(&args.config).map_err(Failure::input)?;
    let mut client = herald::kafka::profile_reader_config(&config.kafka);
    client.set("group.id", "herald-inspect");
    let consumer: BaseConsumer = client.create().map_err(Failure::run)?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .map_err(Failure::run)?;
    let partitions = herald::kafka::follow::partition_ids(&metadata);
    if partitions.is_empty() {
        // Name the topics it may have meant: those whose name contains it.
        let like: Vec<String> = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .map(|t| t.name().to_string())
                    .filter(|n| n.contains(&args.topic))
                    .take(20)
                    .collect()
            })
            .unwrap_or_default();
        let hint = match like.is_empty() {
            true => String::new(),
            false => format!(
                "; topics with `{}` in their name: {}",
                args.topic,
                like.join(", ")
            ),
        };
        return Err(Failure::input(format!(
            "topic `{}` does not exist (or this client may not describe it){hint}",
            args.topic
        )));
    }
    let marks = herald::kafka::offsets::watermarks(
        &consumer,
        &args.topic,
        &partitions,
        Duration::from_secs(10),
    )
    .map_err(Failure::run)?;
    for partition in partitions {
        let (low, high) = marks[&partition];
        let from = (high - args.last.max(0)).max(low);
        if from >= high {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&args.topic, partition, Offset::Offset(from))
            .map_err(Failure::run)?;
        consumer.assign(&tpl).map_err(Failure::run)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next = from;
        while next < high && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            next = m.offset() + 1;
            let line = json!({
                "partition": m.partition(),
                "offset": m.offset(),
                "timestamp_ms": m.timestamp().to_millis(),
                "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                "value": value_of(m.payload()),
            });
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A record's value for people: decoded, JSON as it is, or its size.
fn value_of(payload: Option<&[u8]>) -> Value {
    let Some(bytes) = payload else {
        return Value::Null; // a tombstone
    };
    if let Some(v) = herald::state::wire::to_json(bytes) {
        return v;
    }
    match herald::state::wire::decode_intent(bytes) {
        Err(e @ herald::state::wire::WireError::UnknownVersion(_)) => {
            json!({ "unreadable": e.to_string(), "bytes": bytes.len() })
        }
        _ => json!({ "binary": format!("{} bytes (sealed, or not herald's)", bytes.len()) }),
    }
}

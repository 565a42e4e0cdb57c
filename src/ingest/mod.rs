//! ingest: the consumer group over all source topics, lanes that keep each key in
//! order, and offsets stored only once a message's decisions are final.

pub mod consumer;
pub mod decode;
mod fetch;
pub mod fields;
pub mod offsets;

pub use consumer::{consume, ConsumerHealth, HeraldContext, PartitionStores, RestoreFailed};

use crate::outcome::Pending;

/// A Kafka message handed to the pipeline, owned.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub consumed_ms: i64,
}

/// What ingest hands each consumed record to (the engine, in service): ingest
/// knows nothing of rules or channels, only that a record's offset may be
/// stored once the writes its handling returned are acknowledged.
pub trait Handler: Send + Sync + 'static {
    /// Handles one record; the writes its offset must wait for.
    fn handle(&self, m: Incoming) -> impl std::future::Future<Output = Vec<Pending>> + Send;

    /// The topics whose records are handled ahead of the others, in lanes
    /// of their own (the engine's intents: decisions waiting to be sent).
    fn first_topics(&self) -> Vec<String> {
        Vec::new()
    }
}

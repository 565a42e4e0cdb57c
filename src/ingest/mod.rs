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
///
/// Records are handled in batches (a lane takes what is queued, up to
/// `limits.lane_batch`): each record's handling may leave work to its
/// batch's end ([`Handler::Deferred`]), done once for the whole batch
/// ([`Handler::close_batch`]); the batch's offsets are stored once all its
/// writes are acknowledged.
pub trait Handler: Send + Sync + 'static {
    /// What a record's handling leaves to the end of its batch (the
    /// engine's pattern-state changes: a key changed by several records is
    /// written once, with its last value).
    type Deferred: Send + 'static;

    /// Handles one record: the writes its offset must wait for, and what it
    /// leaves to its batch's end.
    fn handle(
        &self,
        m: Incoming,
    ) -> impl std::future::Future<Output = (Vec<Pending>, Self::Deferred)> + Send;

    /// Ends a batch: what its records left (in their order) becomes writes
    /// that follow every one of `writes`.
    fn close_batch(&self, deferred: Vec<Self::Deferred>, writes: &mut Vec<Pending>);

    /// The topics whose records are handled ahead of the others, in lanes
    /// of their own (the engine's intents: decisions waiting to be sent).
    fn first_topics(&self) -> Vec<String> {
        Vec::new()
    }
}

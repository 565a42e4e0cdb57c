//! ingest: the consumer group over all source topics, lanes that keep each key in
//! order, and offsets stored only once a message's decisions are final.

pub mod consumer;
pub mod decode;
pub mod follow;
pub mod offsets;

pub use consumer::{consume, ConsumerHealth, HeraldContext, PartitionStores};

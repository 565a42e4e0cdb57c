//! One change of a changelog as read back, and why a changelog could not be read back.

/// One record of a changelog: a key and its newest value (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// Why a changelog partition could not be read back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RestoreError {
    #[error("changelog {topic}: its copy on disk: {source}")]
    Disk {
        topic: String,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("changelog {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("changelog {topic}[{partition}]: read {read} of {expected} records in {waited_s} s; the broker stopped answering{}", last_error.as_ref().map(|e| format!(" (its client's last error: {e})")).unwrap_or_default())]
    Incomplete {
        topic: String,
        partition: i32,
        read: i64,
        expected: i64,
        waited_s: u64,
        /// The last error the client reported meanwhile, if any: none of
        /// them ends a read (see `kafka::offsets::failed_fatally`), but the last
        /// one says why the broker did not answer.
        last_error: Option<String>,
    },
}

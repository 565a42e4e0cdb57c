//! A stage's state tables as the stage declares them (as Arroyo's operators declare their `tables()`): name, key, partitioning, the topic that keeps it, retention and bounds.
//!
//! The declarations are the one place: herald creates the changelog topics
//! they name (`service::internal_topics`), the stores restore from them, and
//! `docs/engineers/state.md` lists them (a test holds the doc's table to
//! them).

/// What a table's partitions follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// One store per partition of this source topic (stage 1).
    Source(String),
    /// One store per intents partition, i.e. per user (stage 2).
    IntentsPartition,
    /// Read whole by every instance.
    Global,
}

/// Where a table is kept, so that a restart or another owner finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// A changelog topic herald creates when it is missing, with as many
    /// partitions as the table's partitioning, cleaned up as `cleanup`, and
    /// deleted after `retention_ms` when set.
    Changelog {
        topic: String,
        cleanup: &'static str,
        retention_ms: Option<i64>,
    },
    /// A topic of the operator's (the held, feedback, consent or outcomes
    /// topic), read back at start or on assignment.
    Topic(String),
    /// Rebuilt from another table on restore.
    DerivedFrom(&'static str),
}

/// One state table of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTable {
    /// The table's name, as the docs, logs and restore metrics (`store`
    /// label) give it.
    pub name: &'static str,
    /// The stage that owns it: `1`, `2`, or `replies`.
    pub stage: &'static str,
    /// What a key is.
    pub key: &'static str,
    pub partitioning: Partitioning,
    pub kept: Kept,
    /// What bounds its size.
    pub bound: &'static str,
}

impl StateTable {
    /// The changelog topic herald creates for the table, if it has one:
    /// name, cleanup policy, retention.
    pub fn changelog(&self) -> Option<(&str, &'static str, Option<i64>)> {
        match &self.kept {
            Kept::Changelog {
                topic,
                cleanup,
                retention_ms,
            } => Some((topic, cleanup, *retention_ms)),
            Kept::Topic(_) | Kept::DerivedFrom(_) => None,
        }
    }
}

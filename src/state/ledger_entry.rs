//! One send-ledger entry — a decision of one intent on one channel — as the changelog and the disk hold it, and what a restore of the ledger read.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Entries older than this are forgotten (the longest cap window is a week;
/// the changelog topic deletes what is older than this, too).
pub const HORIZON_MS: i64 = 8 * 24 * 3_600_000;

/// Where a decision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerStatus {
    /// The provider request is about to go out, or went out unanswered.
    Attempted,
    Sent,
    Failed,
    Suppressed,
    /// Held for quiet hours or a delivery receipt; its release decides again.
    Held,
}

/// One decision of one intent on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub user: Arc<str>,
    pub status: LedgerStatus,
    /// When it was decided (for `attempted`: when the request was made), epoch ms.
    pub at_ms: i64,
    pub category: Arc<str>,
    pub rule: Arc<str>,
    /// The decision's idempotency key (a hash; empty when it was suppressed
    /// before an address was chosen), for the outcome of a redelivery.
    /// Always written: the binary encoding is positional.
    #[serde(default)]
    pub idempotency_key: Arc<str>,
}

impl LedgerEntry {
    /// Whether frequency caps count it: a send made, or one that may have been.
    pub fn counts_for_caps(&self) -> bool {
        matches!(self.status, LedgerStatus::Sent | LedgerStatus::Attempted)
    }
}

/// What a restore read.
#[derive(Debug, Default)]
pub struct Restored {
    /// Changelog records read (the tail past the checkpoint).
    pub records: usize,
    /// Records before the checkpoint, not read again.
    pub skipped: usize,
    /// Partitions read from their changelog's start (no checkpoint, or one
    /// outside the changelog).
    pub rebuilt: usize,
    /// Records that were not ledger entries (skipped, counted).
    pub unreadable: usize,
}

/// What a key's new entry replaces on disk, when its decision read it.
#[derive(Debug, Clone, Default)]
pub enum Replacing {
    /// Not read: the disk is read when the entry is written.
    #[default]
    Unread,
    /// What the ledger held for the key when it was read (`None`:
    /// nothing). A key's entries are recorded one after another, so it is
    /// what the disk holds when this one is written, and reading it again
    /// (a third of the entry's cost on disk) is not needed.
    Read(Option<LedgerEntry>),
}

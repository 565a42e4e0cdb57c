//! state: what herald's promises depend on, kept in Kafka — stores that belong
//! to a partition, written to compacted changelog topics and restored by
//! whichever instance owns that partition now (as Kafka Streams does).
//!
//! Two stages, two keys (see `docs/engineers/state.md`):
//!
//! - stage 1 (decode · match · patterns) runs per **source** partition; its
//!   store is the pattern state of every (rule, key), one changelog per
//!   source topic with the source's partition count;
//! - stage 2 (policy · render · deliver · outcome) runs per **intents**
//!   partition, keyed by user; its store is the send ledger (every decision,
//!   the sends that caps count, the sends in flight), one changelog with the
//!   intents topic's partition count.
//!
//! A store is restored to the end of its changelog partition in the
//! rebalance callback, before the consumer hands out any record of the
//! partition, and dropped when the partition is revoked.

pub mod change;
pub mod changelog;
pub mod group;
pub mod intent;
pub mod ledger;
pub mod ledger_entry;
pub mod ledger_store;
pub mod mirror;
pub mod sealed;
pub mod table;
pub mod watermark;
pub mod wire;

pub use changelog::{Change, Changelog};
pub use intent::Intent;
pub use ledger::{LedgerEntry, LedgerStatus, Replacing, Seen, SendLedger};
pub use ledger_store::CountedSend;
pub use table::{Kept, Partitioning, StateTable};

/// The partition of `key` among `partitions`, as Kafka's Java clients choose
/// it (murmur2 of the key bytes, sign bit cleared): a Java or Go producer
/// writing intents by user agrees with herald.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions.max(1)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_agrees_with_kafka_java_clients() {
        // Kafka's own UtilsTest vectors.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(
                murmur2(data) as i32,
                expected,
                "{:?}",
                std::str::from_utf8(data)
            );
        }
    }

    #[test]
    fn every_user_has_one_partition_in_range() {
        for n in [1, 3, 12] {
            for user in ["u1", "u2", "", "ü-ñ"] {
                let p = partition_for(user.as_bytes(), n);
                assert!((0..n).contains(&p));
                assert_eq!(p, partition_for(user.as_bytes(), n));
            }
        }
    }
}

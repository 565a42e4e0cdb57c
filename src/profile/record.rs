//! One record of the profiles topic: parsed and validated once (the phone to E.164, the time zone), and the compact form it is kept in on disk.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tracing::warn;

use super::Profile;
use crate::metrics::Metrics;
use crate::util::fingerprint;

/// The format of a profile on disk (2: sealed under the state key); a table
/// of another format is rebuilt.
pub const FORMAT: u32 = 2;

/// What one record of the profiles topic does to the table.
pub enum Change {
    /// The user's profile is now this.
    Upsert { user: String, profile: Box<Profile> },
    /// The user's profile is gone (a tombstone).
    Delete { user: String },
    /// The record cannot be used (counted and logged without content).
    Refused,
}

/// At most one warning a second about profile records (a CRM that sends
/// many bad phone numbers must not flood the log); every problem is still
/// counted in `herald_profile_errors_total`. Returns whether this one may be
/// logged, and how many were not since the last.
fn may_warn() -> Option<u64> {
    static LAST_S: AtomicI64 = AtomicI64::new(i64::MIN);
    static UNSAID: AtomicU64 = AtomicU64::new(0);
    let now_s = crate::util::now_ms() / 1000;
    let last = LAST_S.load(Ordering::Relaxed);
    if last != now_s
        && LAST_S
            .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        Some(UNSAID.swap(0, Ordering::Relaxed))
    } else {
        UNSAID.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Parses and validates one record of the profiles topic. Pure but for
/// counting and logging, so records can be parsed on several threads.
pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>, metrics: &Metrics) -> Change {
    let Some(user) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
        metrics.profile_errors.inc();
        if let Some(unsaid) = may_warn() {
            warn!(unsaid, "profile record without a UTF-8 key ignored");
        }
        return Change::Refused;
    };
    let Some(bytes) = value else {
        return Change::Delete {
            user: user.to_string(),
        };
    };
    match Profile::parse(user, bytes) {
        Ok((profile, problems)) => {
            for problem in &problems {
                metrics.profile_errors.inc();
                if let Some(unsaid) = may_warn() {
                    warn!(user = %fingerprint(user), %problem, unsaid, "profile part left out");
                }
            }
            Change::Upsert {
                user: user.to_string(),
                profile: Box::new(profile),
            }
        }
        Err(e) => {
            metrics.profile_errors.inc();
            if let Some(unsaid) = may_warn() {
                warn!(user = %fingerprint(user), error = %e, unsaid, "profile record refused");
            }
            Change::Refused
        }
    }
}

/// A profile as kept on disk: a format byte, flags for what validation
/// found, then the validated profile's JSON (its phone already E.164).
pub fn encode(profile: &Profile) -> Vec<u8> {
    let flags = u8::from(profile.phone_invalid) | u8::from(profile.time_zone_invalid) << 1;
    let mut bytes = vec![FORMAT as u8, flags];
    // A profile always serializes; its fields are plain data.
    serde_json::to_writer(&mut bytes, profile).expect("a profile serializes");
    bytes
}

/// The profile `encode` wrote; `None` (and a warning) when it cannot be read.
pub fn decode(user: &str, bytes: &[u8]) -> Option<Profile> {
    let [format, flags, json @ ..] = bytes else {
        warn!(user = %fingerprint(user), "profile on disk is truncated");
        return None;
    };
    if u32::from(*format) != FORMAT {
        warn!(user = %fingerprint(user), "profile on disk has another format");
        return None;
    }
    let mut profile: Profile = match serde_json::from_slice(json) {
        Ok(p) => p,
        Err(e) => {
            warn!(user = %fingerprint(user), error = %e, "profile on disk cannot be read");
            return None;
        }
    };
    profile.phone_invalid = flags & 1 != 0;
    profile.time_zone_invalid = flags & 2 != 0;
    Some(profile)
}

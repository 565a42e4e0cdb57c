//! A changelog whose records say nothing in clear: each key's name blinded
//! (HMAC under the state key), each value sealed (XChaCha20-Poly1305 under
//! the state key, bound to its record key) — the pattern changelogs, whose
//! keys may be card numbers and whose values hold the events of open
//! patterns. Records written in clear before, or sealed under the previous
//! key (`HERALD_STATE_KEY_PREVIOUS`), are read and moved to their current key.
//!
//! A record key is `<name>\0<32 hex digits>`: the name (a rule id, not
//! secret) kept so a reader can tell records apart, the id blinded. A value
//! is `1 · the key's id (4 bytes) · nonce · ciphertext · tag`.

use std::collections::HashMap;

use super::change::Change;
use crate::store::Sealer;

/// The first byte of a sealed value.
const SEALED: u8 = 1;

/// The name and id a clear value says it is of (a pattern record's rule and
/// key), to move a record to its current key.
pub type Identity = fn(&[u8]) -> Option<(String, String)>;

/// The keys that seal and blind one changelog's records.
pub struct ChangelogSeal {
    current: Sealer,
    previous: Option<Sealer>,
    identity: Identity,
}

/// A record read back from the topic.
#[derive(Debug, PartialEq)]
pub enum Opened {
    /// Its current key, its value in clear.
    Current(Change),
    /// Written in clear or under the previous key: the change under its
    /// current key, and the key it was read from (to be deleted once it is
    /// written again under the current one).
    Moved { from: String, change: Change },
    /// Sealed under a key herald does not have, or altered.
    Unreadable,
}

impl ChangelogSeal {
    pub fn new(current: Sealer, previous: Option<Sealer>, identity: Identity) -> ChangelogSeal {
        ChangelogSeal {
            current,
            previous,
            identity,
        }
    }

    /// The record key of (`name`, `id`) under the current key.
    pub fn key(&self, name: &str, id: &str) -> String {
        Self::key_under(&self.current, name, id)
    }

    fn key_under(sealer: &Sealer, name: &str, id: &str) -> String {
        let mut joined = Vec::with_capacity(name.len() + 1 + id.len());
        joined.extend_from_slice(name.as_bytes());
        joined.push(0);
        joined.extend_from_slice(id.as_bytes());
        let mut key = String::with_capacity(name.len() + 33);
        key.push_str(name);
        key.push('\u{0}');
        crate::util::push_hex(&mut key, &sealer.blind(&joined));
        key
    }

    /// `clear` sealed for the record key `key`.
    pub fn seal(&self, key: &str, clear: &[u8]) -> Vec<u8> {
        let sealed = self.current.seal(key.as_bytes(), clear);
        let mut out = Vec::with_capacity(5 + sealed.len());
        out.push(SEALED);
        out.extend_from_slice(&self.current.id());
        out.extend_from_slice(&sealed);
        out
    }

    /// A record as read from the topic. `moved` maps the keys of records
    /// moved earlier in the same read to their current keys, so that a later
    /// tombstone of the old key deletes the moved state.
    pub fn open(&self, change: Change, moved: &mut HashMap<String, String>) -> Opened {
        let Change { key, value } = change;
        let Some(value) = value else {
            let key = match moved.get(&key) {
                Some(current) => current.clone(),
                None => match key.split_once('\u{0}') {
                    // Written in clear: its current key is known from it.
                    Some((name, id)) if !is_blinded(id) => self.key(name, id),
                    _ => key,
                },
            };
            return Opened::Current(Change { key, value: None });
        };
        let clear = match value.first() {
            Some(b'{') => value,
            Some(&SEALED) if value.len() > 5 => {
                let (id, sealed) = (&value[1..5], &value[5..]);
                if id == self.current.id() {
                    return match self.current.open(key.as_bytes(), sealed) {
                        Some(clear) => Opened::Current(Change {
                            key,
                            value: Some(clear),
                        }),
                        None => Opened::Unreadable,
                    };
                }
                match self.previous.as_ref().filter(|p| id == p.id()) {
                    Some(previous) => match previous.open(key.as_bytes(), sealed) {
                        Some(clear) => clear,
                        None => return Opened::Unreadable,
                    },
                    None => return Opened::Unreadable,
                }
            }
            _ => return Opened::Unreadable,
        };
        let Some((name, id)) = (self.identity)(&clear) else {
            return Opened::Unreadable;
        };
        let current = self.key(&name, &id);
        if current == key {
            // In clear under its current key (written with sealing off).
            return Opened::Current(Change {
                key,
                value: Some(clear),
            });
        }
        moved.insert(key.clone(), current.clone());
        Opened::Moved {
            from: key,
            change: Change {
                key: current,
                value: Some(clear),
            },
        }
    }
}

/// Whether a record key's id part is a blinded one (32 hex digits).
fn is_blinded(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(value: &[u8]) -> Option<(String, String)> {
        let v: serde_json::Value = serde_json::from_slice(value).ok()?;
        Some((v["rule"].as_str()?.into(), v["key"].as_str()?.into()))
    }

    const CARD: &str = "4111111111111111";

    fn record() -> Vec<u8> {
        format!(r#"{{"rule":"velocity","key":"{CARD}","state":{{"card":"{CARD}"}}}}"#).into_bytes()
    }

    fn change(key: &str, value: Option<Vec<u8>>) -> Change {
        Change {
            key: key.to_string(),
            value,
        }
    }

    #[test]
    fn a_sealed_record_shows_no_card_number_and_reads_back_under_its_key() {
        let seal = ChangelogSeal::new(Sealer::ephemeral(), None, identity);
        let key = seal.key("velocity", CARD);
        assert!(
            key.starts_with("velocity\u{0}") && !key.contains(CARD),
            "{key}"
        );
        assert_eq!(key, seal.key("velocity", CARD), "the same key each time");
        let sealed = seal.seal(&key, &record());
        assert!(!sealed.windows(CARD.len()).any(|w| w == CARD.as_bytes()));
        let opened = seal.open(change(&key, Some(sealed.clone())), &mut HashMap::new());
        assert_eq!(opened, Opened::Current(change(&key, Some(record()))));
        // Bound to its key: copied under another, it does not open.
        let other = seal.key("velocity", "4000000000000002");
        let moved = seal.open(change(&other, Some(sealed)), &mut HashMap::new());
        assert_eq!(moved, Opened::Unreadable);
    }

    #[test]
    fn a_record_in_clear_or_under_the_previous_key_moves_to_its_current_key() {
        let old = Sealer::ephemeral();
        let before = ChangelogSeal::new(old.clone(), None, identity);
        let seal = ChangelogSeal::new(Sealer::ephemeral(), Some(old), identity);
        let current = seal.key("velocity", CARD);
        let mut moved = HashMap::new();

        let legacy = format!("velocity\u{0}{CARD}");
        let opened = seal.open(change(&legacy, Some(record())), &mut moved);
        assert_eq!(
            opened,
            Opened::Moved {
                from: legacy.clone(),
                change: change(&current, Some(record()))
            }
        );
        // Its tombstone deletes the moved state.
        let gone = seal.open(change(&legacy, None), &mut HashMap::new());
        assert_eq!(gone, Opened::Current(change(&current, None)));

        let rotated = before.key("velocity", CARD);
        let sealed = before.seal(&rotated, &record());
        let opened = seal.open(change(&rotated, Some(sealed)), &mut moved);
        assert_eq!(
            opened,
            Opened::Moved {
                from: rotated.clone(),
                change: change(&current, Some(record()))
            }
        );
        let gone = seal.open(change(&rotated, None), &mut moved);
        assert_eq!(gone, Opened::Current(change(&current, None)));

        // Without the previous key it cannot be read.
        let sealed = before.seal(&rotated, &record());
        let alone = ChangelogSeal::new(Sealer::ephemeral(), None, identity);
        let opened = alone.open(change(&rotated, Some(sealed)), &mut HashMap::new());
        assert_eq!(opened, Opened::Unreadable);
    }
}

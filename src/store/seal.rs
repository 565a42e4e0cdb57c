//! Values at rest sealed with XChaCha20-Poly1305 under the state key (`HERALD_STATE_KEY`), each bound to its row's key, so a copy of the state directory shows no phone number or push token.
//!
//! A value is `nonce (24 random bytes) · ciphertext · tag (16)`; the row's
//! key is the associated data, so a value moved to another row does not
//! open. XChaCha's 192-bit random nonces need no counter and no limit on
//! the number of values sealed under one key.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The environment variable that holds the state key: 32 bytes, as 64 hex
/// digits.
pub const KEY_VARIABLE: &str = "HERALD_STATE_KEY";

/// The environment variable that holds the state key before a rotation:
/// what was sealed under it (a pattern changelog's records) is still read,
/// and written again under the new key.
pub const PREVIOUS_KEY_VARIABLE: &str = "HERALD_STATE_KEY_PREVIOUS";

const NONCE: usize = 24;
const TAG: usize = 16;

/// Where the state key came from (said once in the log at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `HERALD_STATE_KEY`.
    Environment,
    /// A key file in the state directory, made on the first start when the
    /// environment has none: it protects a copy of the tables alone, not a
    /// copy of the whole directory.
    File(PathBuf),
    /// A key of this process only (a temporary store).
    Ephemeral,
}

/// The key every sealed table's values are sealed with.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// The key row keys are blinded with, derived from the state key.
    blinding: [u8; 32],
    /// Names the key without showing it (a value sealed under it says so).
    id: [u8; 4],
    pub source: KeySource,
}

/// Why the state key cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{KEY_VARIABLE} must be 64 hex digits (32 bytes); generate one with `openssl rand -hex 32`"
    )]
    Malformed,
    #[error("state key file {path}: {detail}")]
    File { path: PathBuf, detail: String },
}

impl Sealer {
    /// The key from `HERALD_STATE_KEY`, or else from `dir/state.key`
    /// (made, readable by its owner only, when missing).
    pub fn for_dir(dir: &Path) -> Result<Sealer, KeyError> {
        if let Ok(hex) = std::env::var(KEY_VARIABLE) {
            return Sealer::from_hex(hex.trim(), KeySource::Environment);
        }
        let path = dir.join("state.key");
        let failed = |e: std::io::Error| KeyError::File {
            path: path.clone(),
            detail: e.to_string(),
        };
        match std::fs::read_to_string(&path) {
            Ok(hex) => Sealer::from_hex(hex.trim(), KeySource::File(path.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                write_private(&path, hex::encode(key).as_bytes()).map_err(failed)?;
                Ok(Sealer::new(&key, KeySource::File(path)))
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// The key before a rotation, from `HERALD_STATE_KEY_PREVIOUS`, if set.
    pub fn previous() -> Result<Option<Sealer>, KeyError> {
        match std::env::var(PREVIOUS_KEY_VARIABLE) {
            Ok(hex) => Sealer::from_hex(hex.trim(), KeySource::Environment).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Four bytes that name this key (derived from it, showing nothing of it).
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// A random key that lives as long as the process.
    pub fn ephemeral() -> Sealer {
        Sealer::new(&rand::random::<[u8; 32]>(), KeySource::Ephemeral)
    }

    fn from_hex(hex: &str, source: KeySource) -> Result<Sealer, KeyError> {
        let bytes = hex::decode(hex).map_err(|_| KeyError::Malformed)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Sealer::new(&key, source))
    }

    fn new(key: &[u8; 32], source: KeySource) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
            blinding: hmac_sha256(key, b"herald row keys"),
            id: hmac_sha256(key, b"herald key id")[..4]
                .try_into()
                .expect("4 of 32 bytes"),
            source,
        }
    }

    /// A row key that names `key` without showing it (HMAC-SHA-256 under a
    /// key derived from the state key, first 16 bytes): for rows whose key
    /// may be a card number, kept in the sealed value instead.
    pub fn blind(&self, key: &[u8]) -> [u8; 16] {
        let mac = hmac_sha256(&self.blinding, key);
        mac[..16].try_into().expect("16 of 32 bytes")
    }

    /// `value` sealed for the row `row`.
    pub fn seal(&self, row: &[u8], value: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE] = rand::random();
        let mut out = Vec::with_capacity(NONCE + value.len() + TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), row, &mut out[NONCE..])
            .expect("a value under 256 GB seals");
        out.extend_from_slice(&tag);
        out
    }

    /// The value sealed for `row`; `None` when it was sealed under another
    /// key, for another row, or altered.
    pub fn open(&self, row: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE + TAG {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE);
        let (body, tag) = rest.split_at(rest.len() - TAG);
        let mut plain = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), row, &mut plain, tag.into())
            .ok()?;
        Some(plain)
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Writes a new file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_row_and_key() {
        let sealer = Sealer::ephemeral();
        let sealed = sealer.seal(b"u-1", b"+33612345678");
        assert!(
            !sealed.windows(12).any(|w| w == b"+33612345678"),
            "no clear text"
        );
        assert_eq!(
            sealer.open(b"u-1", &sealed).as_deref(),
            Some(&b"+33612345678"[..])
        );
        assert_eq!(sealer.open(b"u-2", &sealed), None, "moved to another row");
        assert_eq!(Sealer::ephemeral().open(b"u-1", &sealed), None);
        let mut altered = sealed.clone();
        altered[30] ^= 1;
        assert_eq!(sealer.open(b"u-1", &altered), None);
        assert_ne!(sealer.seal(b"u-1", b"x"), sealer.seal(b"u-1", b"x"));
        let card = b"4111111111111111";
        assert_eq!(sealer.blind(card), sealer.blind(card));
        assert_ne!(sealer.blind(card), Sealer::ephemeral().blind(card), "keyed");
    }

    #[test]
    fn the_key_file_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = Sealer::for_dir(dir.path()).unwrap();
        let sealed = first.seal(b"k", b"v");
        let again = Sealer::for_dir(dir.path()).unwrap();
        assert_eq!(again.open(b"k", &sealed).as_deref(), Some(&b"v"[..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("state.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

//! Small shared pieces: clocks, fingerprints and masks that keep personal data out of logs.

/// Declares a closed set of reason codes as an enum: its `ALL` list in
/// declaration order (so metric handles can be made once, by `index`) and
/// each code's text, both derived from the one declaration.
#[macro_export]
macro_rules! reason_codes {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = $code:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The code as outcomes and metric labels spell it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $code,)+ }
            }

            /// The code's place in [`Self::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

use std::hash::Hasher as _;

use siphasher::sip128::{Hasher128 as _, SipHasher13};

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What time it is, for the decision path: the wall clock in service, a
/// virtual clock in rule tests and replays (no waiting).
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that moves only when told to.
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// Sets the time.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, std::sync::atomic::Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Whether a warning kept in `last` (epoch s of its last time) may be said
/// now: at most once a second, so a stream of one bad value cannot flood the log.
pub fn once_a_second(last: &std::sync::atomic::AtomicI64) -> bool {
    use std::sync::atomic::Ordering;
    let now_s = now_ms() / 1000;
    let before = last.load(Ordering::Relaxed);
    before != now_s
        && last
            .compare_exchange(before, now_s, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// A short, stable, non-reversible reference to a personal value (user id, token,
/// phone) for logs and outcome records: the first 12 hex digits of its
/// [`stable_digest`].
pub fn fingerprint(value: &str) -> String {
    let mut out = String::with_capacity(12);
    push_fingerprint(&mut out, value);
    out
}

/// Appends [`fingerprint`]`(value)` to `out`.
fn push_fingerprint(out: &mut String, value: &str) {
    push_hex(out, &stable_digest(&[value.as_bytes()])[..6]);
}

/// Appends `bytes` as lowercase hex, as `hex::encode` writes them (which
/// goes a character at a time through an iterator, too slow for the
/// per-event path).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.extend(hex_pair(b).map(char::from));
    }
}

/// A [`stable_digest`] in lower-case hex, in one allocation of its own (an
/// id shared by an outcome, its ledger entry and its message).
pub fn digest_hex(digest: &[u8; 16]) -> std::sync::Arc<str> {
    let mut text = [0u8; 32];
    for (pair, &b) in text.chunks_exact_mut(2).zip(digest) {
        pair.copy_from_slice(&hex_pair(b));
    }
    std::str::from_utf8(&text).unwrap_or_default().into()
}

/// One byte's two lower-case hex digits.
fn hex_pair(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]
}

/// `parts` joined by `/` in one allocation: keys and ids built on the
/// per-event path, where `format!` costs several times as much.
pub fn slash_joined(parts: &[&str]) -> String {
    let len = parts.iter().map(|p| p.len() + 1).sum();
    let mut out = String::with_capacity(len);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(part);
    }
    out
}

/// A 128-bit digest of `parts` (each followed by a zero byte) that is the same
/// on every instance, build and version: SipHash-1-3 with a fixed key, whose
/// output is specified. Not a cryptographic hash: it names things (idempotency
/// keys, fingerprints) and must be cheap on the per-event path. A value from a
/// small space (a phone number) can be found from its digest by trying them
/// all, with this as with SHA-256; nothing secret is hashed with it.
pub fn stable_digest(parts: &[&[u8]]) -> [u8; 16] {
    DigestPrefix::new(&[]).finish(parts)
}

/// [`stable_digest`]'s state after its first parts, kept to finish many
/// digests that start with them (an experiment's arm before each user):
/// `DigestPrefix::new(a).finish(b)` is `stable_digest(a ++ b)`, without
/// hashing `a` again each time.
#[derive(Debug, Clone, Copy)]
pub struct DigestPrefix(SipHasher13);

impl DigestPrefix {
    pub fn new(parts: &[&[u8]]) -> DigestPrefix {
        let start = SipHasher13::new_with_keys(0x6865_7261_6c64_0001, 0x6865_7261_6c64_0002);
        DigestPrefix(start).then(parts)
    }

    /// The digest of the prefix's parts followed by `parts`.
    pub fn finish(&self, parts: &[&[u8]]) -> [u8; 16] {
        self.then(parts).0.finish128().as_bytes()
    }

    /// The state after `parts` too, each followed by a zero byte.
    fn then(mut self, parts: &[&[u8]]) -> DigestPrefix {
        for part in parts {
            self.0.write(part);
            self.0.write_u8(0);
        }
        self
    }
}

/// A phone number with all but the country prefix and last two digits hidden:
/// `+1415*****71`.
pub fn mask_phone(phone: &str) -> String {
    if phone.is_ascii() && phone.len() > 6 {
        // Byte for byte: the common case, an E.164 number.
        let n = phone.len();
        let mut out = String::with_capacity(n);
        out.push_str(&phone[..4]);
        out.extend(std::iter::repeat_n('*', n - 6));
        out.push_str(&phone[n - 2..]);
        return out;
    }
    let n = phone.chars().count();
    if n <= 6 {
        return "*".repeat(n);
    }
    phone
        .chars()
        .enumerate()
        .map(|(i, c)| if i < 4 || i >= n - 2 { c } else { '*' })
        .collect()
}

/// A card number (or any digit string) reduced to its last four digits: `•••• 4242`.
pub fn mask_card(card: &str) -> String {
    // The last four digits, found from the end, in their order.
    let mut last4 = [0u8; 4];
    let mut found = 0;
    for d in card.bytes().rev().filter(u8::is_ascii_digit).take(4) {
        found += 1;
        last4[4 - found] = d;
    }
    let mut out = String::with_capacity(17);
    out.push_str("•••• ");
    out.extend(last4[4 - found..].iter().map(|&d| char::from(d)));
    out
}

/// A push token shown by its platform-independent fingerprint only.
pub fn mask_token(token: &str) -> String {
    let mut out = String::with_capacity(18);
    out.push_str("token:");
    push_fingerprint(&mut out, token);
    out
}

/// Parses a duration as analysts write it: a whole number and a unit, `90s`,
/// `5m`, `2h`, `7d` (also `ms`). Returns milliseconds; zero is refused.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration `{text}` must be a whole number with a unit: ms, s, m, h or d (e.g. `5m`)"
            ))
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("duration `{text}` must start with a whole number (e.g. `5m`)"))?;
    if n == 0 {
        return Err(format!("duration `{text}` must be longer than zero"));
    }
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("duration `{text}` is too long"))
}

/// A positive duration in YAML or TOML, written `90s`, `5m`, `2h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub u64);

impl Span {
    /// Milliseconds.
    pub fn ms(self) -> i64 {
        self.0 as i64
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0;
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration_ms(&text)
            .map(Span)
            .map_err(serde::de::Error::custom)
    }
}

/// The bytes of `word` (eight bytes of a JSON string, read little-endian)
/// that a JSON string cannot hold as they are: `"`, `\` and control
/// characters, each marked by its high bit. Bytes past 0x7f (UTF-8) count
/// as plain. The lowest bit set is exact (a borrow only carries upwards),
/// so it marks the first such byte; higher bits may be set beside it.
#[inline]
pub fn json_string_specials(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    below(word, 0x20)
        | below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
}

/// A record as JSON bytes, written into a buffer sized for herald's
/// records at once (growing it by doubling cost more than the writing).
pub fn json_bytes<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    match serde_json::to_writer(&mut out, value) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// The hasher of herald's in-memory maps: foldhash, seeded per process —
/// several times cheaper than the standard library's SipHash on the short
/// string keys (user ids, intent ids, rule ids) of the per-event path.
pub type FastHasher = foldhash::fast::RandomState;

/// A concurrent map with [`FastHasher`].
pub type FastDashMap<K, V> = dashmap::DashMap<K, V, FastHasher>;

/// When a capped map may have outgrown its cap, without counting it on
/// every insert (a `DashMap` counts by locking each of its shards): the
/// last count plus the keys inserted since is never below the map's size,
/// so the map needs counting only once that sum passes the cap. A count
/// racing an insert may miss it; the next insert makes up for it.
#[derive(Debug, Default)]
pub struct SizeWatch(std::sync::atomic::AtomicUsize);

impl SizeWatch {
    /// After a new key went in: whether the map may now hold more than `cap`.
    pub fn grew_past(&self, cap: usize) -> bool {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 > cap
    }

    /// A new key went in where no cap is checked (state restored).
    pub fn inserted(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The map was counted (`len` keys): the sum starts again from it.
    pub fn counted(&self, len: usize) {
        self.0.store(len, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A map with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;

/// How many zone names [`time_zone`] keeps per thread: the IANA names
/// (about 600) in any spelling a profile may use, with room to spare.
pub const ZONES_KEPT: usize = 4096;

/// An IANA time zone by name, from a per-thread map in front of jiff's
/// database, whose lookup searches the zone names on every call (quiet hours
/// and `local_time` ask once per decision). Only zones found are kept, at
/// most [`ZONES_KEPT`] spellings (then the map starts again); a zone's rules
/// are those read when this thread first asked for it (a tzdata update
/// applies after a restart).
pub fn time_zone(name: &str) -> Option<jiff::tz::TimeZone> {
    thread_local! {
        static ZONES: std::cell::RefCell<FastMap<Box<str>, jiff::tz::TimeZone>> =
            std::cell::RefCell::new(FastMap::default());
    }
    ZONES.with(|zones| {
        if let Some(tz) = zones.borrow().get(name) {
            return Some(tz.clone());
        }
        let tz = jiff::tz::TimeZone::get(name).ok()?;
        let mut zones = zones.borrow_mut();
        if zones.len() >= ZONES_KEPT {
            zones.clear();
        }
        zones.insert(name.into(), tz.clone());
        Some(tz)
    })
}

/// The digest a number is known by in `herald_sent` records: SHA-256 of its
/// E.164 form, hex.
pub fn phone_sha256(phone: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(phone.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_digest_is_the_one_every_version_wrote() {
        // Keys already in ledgers, outcomes and providers' dedup windows
        // must not change with a release: this is the key every version
        // since the digest was chosen has written for these parts.
        let parts: [&[u8]; 3] = [b"purchase-notice", b"transactions", b"push"];
        assert_eq!(
            &*digest_hex(&stable_digest(&parts)),
            "cf1f71a59b0998bc6299182a7a4f132f"
        );
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms(" 2h "), Ok(7_200_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert!(parse_duration_ms("-5m").is_err());
        assert!(parse_duration_ms("5 minutes").unwrap_err().contains("unit"));
        assert!(parse_duration_ms("m").is_err());
        assert_eq!(Span(7_200_000).to_string(), "2h");
        assert_eq!(Span(90_000).to_string(), "90s");
    }

    const STABLE_U1: &str = "5fc80dc044699bac06844c65fd7460f0";

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The masks' quick paths give what the plain, char-by-char
        /// definitions give, for ASCII and for any other text.
        #[test]
        fn masks_match_their_plain_definitions(
            text in proptest::prop_oneof!["[+0-9 ]{0,20}", "\\PC{0,20}", "(\\PC|[+0-9]){0,20}"]
        ) {
            let n = text.chars().count();
            let phone: String = if n <= 6 {
                "*".repeat(n)
            } else {
                text.chars()
                    .enumerate()
                    .map(|(i, c)| if i < 4 || i >= n - 2 { c } else { '*' })
                    .collect()
            };
            proptest::prop_assert_eq!(mask_phone(&text), phone);
            let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_digit).collect();
            let last4 = &digits[digits.len().saturating_sub(4)..];
            let card = format!("•••• {}", String::from_utf8_lossy(last4));
            proptest::prop_assert_eq!(mask_card(&text), card);
        }
    }

    #[test]
    fn masks_hide_the_middle() {
        assert_eq!(mask_phone("+14155552671"), "+141******71");
        assert_eq!(mask_card("4111 1111 1111 4242"), "•••• 4242");
        assert_eq!(mask_card("42"), "•••• 42");
        assert_eq!(fingerprint("u1").len(), 12);
        // Fixed for good: idempotency keys and fingerprints must not change
        // between versions (a redelivered intent must get the key it had).
        assert_eq!(hex::encode(stable_digest(&[b"u1"])), STABLE_U1);
        let mut ours = String::new();
        push_hex(&mut ours, &[0x00, 0x0f, 0xa5, 0xff, 0x10]);
        assert_eq!(ours, hex::encode([0x00, 0x0f, 0xa5, 0xff, 0x10]));
        let digest = stable_digest(&[b"u1"]);
        assert_eq!(&*digest_hex(&digest), STABLE_U1);
        assert!(!mask_token("secret-token").contains("secret"));
    }
}

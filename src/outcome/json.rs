//! A JSON writer for the records herald writes on the per-event path
//! (outcomes, `herald_sent`): fields written in order, strings escaped in one
//! pass, no serializer machinery. It writes the bytes serde_json's compact
//! serializer writes for the same struct; the tests hold it to that.

use super::{Outcome, Timings};

/// One JSON object being written into `out`.
pub struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    /// Opens an object at the end of `out`.
    pub fn open(out: &'a mut Vec<u8>) -> Obj<'a> {
        out.push(b'{');
        Obj { out, first: true }
    }

    /// A field name: herald's own identifiers, which need no escaping.
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        debug_assert!(!needs_escape(key.as_bytes()), "{key}");
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        string(self.key(key), value);
        self
    }

    /// A string, or `null` without one.
    pub fn str_or_null(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key).extend_from_slice(b"null");
                self
            }
        }
    }

    /// A string, left out without one.
    pub fn str_if(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.str(key, v);
        }
        self
    }

    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        let mut digits = itoa::Buffer::new();
        self.key(key)
            .extend_from_slice(digits.format(value).as_bytes());
        self
    }

    /// `true`, left out when false.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key)
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    pub fn true_if(&mut self, key: &str, value: bool) -> &mut Self {
        if value {
            self.key(key).extend_from_slice(b"true");
        }
        self
    }

    /// Any JSON value, through serde_json.
    pub fn value(&mut self, key: &str, value: &serde_json::Value) -> &mut Self {
        let out = self.key(key);
        // Writing to a Vec cannot fail, and a Value always serialises.
        let _ = serde_json::to_writer(out, value);
        self
    }

    /// A nested object, written by `f`.
    pub fn obj(&mut self, key: &str, f: impl FnOnce(&mut Obj<'_>)) -> &mut Self {
        let mut inner = Obj::open(self.key(key));
        f(&mut inner);
        inner.close();
        self
    }

    /// A list of objects, each written by `f`.
    pub fn list<T>(&mut self, key: &str, items: &[T], f: impl Fn(&mut Obj<'_>, &T)) -> &mut Self {
        let out = self.key(key);
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut inner = Obj::open(out);
            f(&mut inner, item);
            inner.close();
        }
        out.push(b']');
        self
    }

    /// Closes the object.
    pub fn close(self) {
        self.out.push(b'}');
    }
}

/// A JSON string, escaped as serde_json escapes it: `"` and `\`, and control
/// characters (`\n`, `\t`, … or `\u00XX`); everything else as it is.
pub fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any byte is `"`, `\` or a control character, eight at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if crate::util::json_string_specials(u64::from_le_bytes(word)) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

impl Outcome {
    /// The outcome as the outcomes topic holds it: what `serde_json` makes of
    /// it, written directly.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(640);
        let mut o = Obj::open(&mut out);
        o.str("rule", &self.rule)
            .str("rule_version", &self.rule_version)
            .str("category", &self.category)
            .str("user", &self.user)
            .str("channel", &self.channel)
            .str("status", self.status.as_str())
            .str_if("reason", self.reason.as_deref())
            .str("idempotency_key", &self.idempotency_key)
            .str_if("recipient", self.recipient.as_deref())
            .str_if("provider_message_id", self.provider_message_id.as_deref())
            .int("attempts", i64::from(self.attempts))
            .str_if("key", self.key.as_deref());
        if !self.hops.is_empty() {
            o.list("hops", &self.hops, |h, hop| {
                h.str("channel", &hop.channel).str("reason", &hop.reason);
            });
        }
        o.str_if("next_channel", self.next_channel.as_deref());
        if let Some(release_ms) = self.release_ms {
            o.int("release_ms", release_ms);
        }
        if let Some(pattern) = &self.pattern {
            o.value("pattern", pattern);
        }
        if let Some(sms) = &self.sms {
            o.obj("sms", |s| {
                s.str("encoding", sms.encoding.as_str())
                    .int("units", i64::from(sms.units))
                    .int("segments", i64::from(sms.segments));
            });
        }
        if let Some(l) = &self.locale {
            o.obj("locale", |o| {
                o.str("used", &l.used)
                    .str_if("wanted", l.wanted.as_deref())
                    .bool("fell_back", l.fell_back);
            });
        }
        if let Some(subscription) = &self.subscription {
            o.value("subscription", subscription);
        }
        if let Some(digest) = &self.digest {
            o.value("digest", digest);
        }
        if let Some(experiment) = &self.experiment {
            o.value("experiment", experiment);
        }
        o.str_if("delivery", self.delivery.as_deref())
            .true_if("shadow", self.shadow)
            .true_if("unknown_after_crash", self.unknown_after_crash)
            .obj("source", |s| {
                s.str("topic", &self.source.topic)
                    .int("partition", i64::from(self.source.partition))
                    .int("offset", self.source.offset);
            })
            .obj("timings", |t| timings(t, &self.timings));
        o.close();
        out
    }
}

fn timings(t: &mut Obj<'_>, timings: &Timings) {
    t.int("event_ms", timings.event_ms)
        .int("consumed_ms", timings.consumed_ms)
        .int("matched_ms", timings.matched_ms)
        .int("received_ms", timings.received_ms)
        .int("decided_ms", timings.decided_ms)
        .int("request_sent_ms", timings.request_sent_ms)
        .int("answered_ms", timings.answered_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Hop, SourceRef, Status};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn text(rng: &mut StdRng) -> String {
        let pieces = [
            "a", "é", "\"", "\\", "\n", "\t", "\u{1}", "\u{1f}", "\u{7f}", "☕", " ", "\u{8}",
            "\u{c}", "\r", "/",
        ];
        (0..rng.random_range(0..6))
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect()
    }

    fn maybe(rng: &mut StdRng) -> Option<String> {
        rng.random_bool(0.5).then(|| text(rng))
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_wherever_it_lies() {
        for b in 0u8..=255 {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                bytes[at] = b;
                let expect = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(needs_escape(&bytes), expect, "byte {b:#x} at {at}");
            }
        }
        assert!(!needs_escape(
            "é☕ plain text, ~ and 0x7f: \u{7f}".as_bytes()
        ));
    }

    #[test]
    fn outcomes_are_written_as_serde_json_writes_them() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..2000 {
            let outcome = Outcome {
                rule: text(&mut rng).into(),
                rule_version: text(&mut rng).into(),
                category: text(&mut rng).into(),
                user: text(&mut rng).into(),
                channel: text(&mut rng).into(),
                status: Status::ALL[rng.random_range(0..4)],
                reason: maybe(&mut rng),
                reason_code: None,
                idempotency_key: text(&mut rng).into(),
                recipient: maybe(&mut rng),
                provider_message_id: maybe(&mut rng),
                attempts: rng.random(),
                key: maybe(&mut rng).map(std::sync::Arc::from),
                hops: (0..rng.random_range(0..3))
                    .map(|_| Hop {
                        channel: text(&mut rng),
                        reason: text(&mut rng),
                    })
                    .collect(),
                next_channel: maybe(&mut rng),
                release_ms: rng.random_bool(0.5).then(|| rng.random()),
                pattern: rng.random_bool(0.5).then(|| {
                    serde_json::json!({"kind": text(&mut rng), "count": rng.random::<u32>(), "x": [1.5, null]})
                }),
                sms: maybe(&mut rng).map(|t| crate::outcome::sms::measure(&t)),
                locale: rng.random_bool(0.5).then(|| crate::outcome::LocaleUsed {
                    used: text(&mut rng),
                    wanted: maybe(&mut rng),
                    fell_back: rng.random(),
                }),
                subscription: rng.random_bool(0.5).then(|| {
                    serde_json::json!({"parameters": {"threshold": {"amount": 250.0, "currency": text(&mut rng)}}})
                }),
                digest: rng.random_bool(0.5).then(|| {
                    serde_json::json!({"id": text(&mut rng), "count": rng.random::<u8>(), "items": [text(&mut rng)]})
                }),
                experiment: rng.random_bool(0.5).then(|| {
                    std::sync::Arc::new(serde_json::json!({"id": text(&mut rng), "arm": text(&mut rng)}))
                }),
                delivery: maybe(&mut rng),
                shadow: rng.random(),
                unknown_after_crash: rng.random(),
                source: SourceRef {
                    topic: text(&mut rng).into(),
                    partition: rng.random(),
                    offset: rng.random(),
                },
                timings: Timings {
                    event_ms: rng.random(),
                    consumed_ms: rng.random(),
                    matched_ms: i64::MIN,
                    received_ms: rng.random(),
                    decided_ms: -1,
                    request_sent_ms: i64::MAX,
                    answered_ms: 0,
                },
            };
            let ours = outcome.to_json();
            let theirs = serde_json::to_vec(&outcome).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }
}

//! The events a replay reads: JSON lines (`{"topic", "key", "event"}` or bare
//! events of one topic) or a source topic's records, each kept as the bytes
//! it was recorded as, with only the fields the replay needs before the run
//! (each source's user and time field) read out of it.

use std::io::BufRead;

use std::sync::Arc;

use serde_json::Value;

use super::scan::{NotJson, Scan};

use crate::config::{Config, SourceConfig};
use crate::ingest::decode::{field, parse_time};

/// One event to replay: its bytes as they were recorded, handed to the
/// pipeline as a consumed record's payload, and the top-level fields the
/// replay reads before the run (its time, its user), parsed.
pub struct Recorded {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// The top-level fields named by [`Wanted`] (all of them for [`Recorded::new`]).
    fields: Vec<(Arc<str>, Value)>,
}

/// The top-level fields a replay reads of each event before the run: every
/// source's user and time field (their first segment, for a dotted path).
pub struct Wanted(Vec<Arc<str>>);

impl Wanted {
    pub fn of(config: &Config) -> Wanted {
        let mut names: Vec<&str> = config
            .sources
            .values()
            .flat_map(|m| std::iter::once(&m.user_field).chain(m.time_field.as_ref()))
            .map(|f| f.split('.').next().unwrap_or(f))
            .collect();
        names.sort();
        names.dedup();
        Wanted(names.into_iter().map(Arc::from).collect())
    }
}

impl Recorded {
    /// An event given as a value (its payload is its JSON text).
    pub fn new(topic: String, key: Option<String>, event: Value) -> Recorded {
        let payload = crate::util::json_bytes(&event);
        let fields = match event {
            Value::Object(fields) => fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            _ => Vec::new(),
        };
        Recorded {
            topic,
            key,
            payload,
            fields,
        }
    }

    /// An event given as the bytes of its JSON text. Not JSON is an error;
    /// JSON that is not an object is kept (the pipeline dead-letters it, as
    /// it would in service).
    pub fn parse(
        topic: String,
        key: Option<String>,
        payload: &[u8],
        wanted: &Wanted,
    ) -> Result<Recorded, NotJson> {
        let mut scan = Scan::new(payload);
        let fields = event_fields(&mut scan, wanted)?;
        scan.end()?;
        Ok(Recorded {
            topic,
            key,
            payload: payload.to_vec(),
            fields,
        })
    }

    /// A field the replay reads before the run, by its dotted path.
    pub fn field(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let first = parts.next()?;
        let (_, top) = self
            .fields
            .iter()
            .rev()
            .find(|(name, _)| &**name == first)?;
        parts.try_fold(top, |at, part| field(at.as_object()?, part))
    }
}

/// Each event's virtual time: its time field, never earlier than the event before.
pub(super) fn event_times(config: &Config, events: &[Recorded]) -> Vec<i64> {
    let mut last_ms = 0;
    events
        .iter()
        .map(|r| {
            let at_ms = config
                .sources
                .get(&r.topic)
                .and_then(|m| m.time_field.as_deref())
                .and_then(|f| r.field(f))
                .and_then(parse_time)
                .unwrap_or(last_ms)
                .max(last_ms);
            last_ms = at_ms;
            at_ms
        })
        .collect()
}

/// Decoding alone, the floor a replay is measured against (`herald replay`
/// prints both): every event decoded as the pipeline decodes it, on `jobs`
/// threads, each a share of the events. Returns events per second.
pub fn decode_rate(config: &Config, events: &[Recorded], jobs: usize) -> f64 {
    // Set up before the clock starts, as the pipeline holds them: each
    // event's time (consumed at its own time, so it is plausible) and each
    // source's name.
    let times = event_times(config, events);
    let sources: std::collections::HashMap<&str, (std::sync::Arc<str>, &SourceConfig)> = config
        .sources
        .iter()
        .map(|(topic, mapping)| (topic.as_str(), (topic.as_str().into(), mapping)))
        .collect();
    let started = std::time::Instant::now();
    let share = events.len().div_ceil(jobs.max(1)).max(1);
    let decoded: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = events
            .chunks(share)
            .zip(times.chunks(share))
            .map(|(chunk, times)| {
                let sources = &sources;
                scope.spawn(move || {
                    let mut n = 0;
                    for (offset, (r, &at)) in chunk.iter().zip(times).enumerate() {
                        let Some((source, mapping)) = sources.get(r.topic.as_str()) else {
                            continue;
                        };
                        let origin = crate::ingest::decode::Origin {
                            topic: &r.topic,
                            partition: 0,
                            offset: offset as i64,
                            key: r.key.as_deref().map(str::as_bytes),
                            timestamp_ms: None,
                        };
                        let event = crate::ingest::decode::decode(
                            source,
                            mapping,
                            origin,
                            Some(&r.payload),
                            usize::MAX,
                            at,
                        );
                        n += usize::from(std::hint::black_box(event).is_ok());
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    std::hint::black_box(decoded);
    events.len() as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// Reads a JSON-lines file: each line `{"topic", "key", "event"}`, or a bare
/// event of `default_topic`. Malformed lines are reported with their number
/// (and the rest goes on). The event's own text is kept as it was, not rewritten.
pub fn read_lines(
    mut reader: impl BufRead,
    default_topic: Option<&str>,
    wanted: &Wanted,
    mut bad: impl FnMut(usize, String),
) -> Vec<Recorded> {
    let mut out = Vec::new();
    // One buffer for every line: nothing is allocated per line but the
    // event it keeps.
    let mut buffer = Vec::new();
    for line_no in 1.. {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                bad(line_no, format!("not read ({e})"));
                break;
            }
        }
        let bytes = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let Ok(line) = std::str::from_utf8(bytes) else {
            bad(line_no, "not text".into());
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match envelope(line, default_topic, wanted) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => bad(
                line_no,
                "not {\"topic\", \"key\", \"event\"}; give --topic for bare events".into(),
            ),
            Err(e) => bad(line_no, format!("not JSON ({e})")),
        }
    }
    out
}

/// One line as a recorded event: an envelope with `topic` and `event`, else
/// a bare event of `default_topic` (`None` without one). The line is read
/// once: the envelope's parts and the event's wanted fields together.
fn envelope(
    line: &str,
    default_topic: Option<&str>,
    wanted: &Wanted,
) -> Result<Option<Recorded>, NotJson> {
    let text = line.as_bytes();
    let mut scan = Scan::new(text);
    if scan.at_object() {
        let mut parts = Parts::default();
        scan.fields(|name, scan| {
            let part = match () {
                _ if name.is("topic") => &mut parts.topic,
                _ if name.is("key") => &mut parts.key,
                _ if name.is("event") => {
                    let start = scan.next_value_at();
                    parts.fields = Some(event_fields(scan, wanted)?);
                    let event = &text[start..scan.offset()];
                    parts.repeated |= parts.event.replace(event).is_some();
                    return Ok(());
                }
                _ => return scan.value().map(|_| ()),
            };
            parts.repeated |= part.replace(scan.value()?).is_some();
            Ok(())
        })?;
        scan.end()?;
        if let (Some(topic), Some(event), false) = (parts.topic, parts.event, parts.repeated) {
            return Ok(Some(Recorded {
                topic: string(topic).unwrap_or_default(),
                key: parts.key.and_then(string),
                payload: event.to_vec(),
                fields: parts.fields.unwrap_or_default(),
            }));
        }
    } else {
        Scan::whole(text)?;
    }
    // JSON that is no envelope: a bare event, given a topic.
    default_topic
        .map(|topic| Recorded::parse(topic.to_string(), None, text, wanted))
        .transpose()
}

/// An envelope's parts as their text (the event's wanted fields read out).
#[derive(Default)]
struct Parts<'a> {
    topic: Option<&'a [u8]>,
    key: Option<&'a [u8]>,
    event: Option<&'a [u8]>,
    fields: Option<Vec<(Arc<str>, Value)>>,
    /// A part given twice: then the line is not taken as an envelope.
    repeated: bool,
}

/// A JSON string's text (`None` for any other value).
fn string(raw: &[u8]) -> Option<String> {
    if let [b'"', inner @ .., b'"'] = raw {
        if !inner.contains(&b'\\') {
            return std::str::from_utf8(inner).ok().map(str::to_string);
        }
    }
    serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

/// Reads the next value, keeping the top-level fields named by `wanted`
/// when it is an object (a repeated field: its last value, as serde_json
/// keeps). Any other value is read and gives no fields.
fn event_fields(scan: &mut Scan<'_>, wanted: &Wanted) -> Result<Vec<(Arc<str>, Value)>, NotJson> {
    let mut out = Vec::new();
    if !scan.at_object() {
        scan.value()?;
        return Ok(out);
    }
    scan.fields(|name, scan| {
        let value = scan.value()?;
        if let Some(want) = wanted.0.iter().find(|w| name.is(w)) {
            // Text the scan took as JSON; only a lone surrogate in a string
            // still fails here, and such a field is left out. A string with
            // no escape is taken as it is written. A repeated name: the last
            // is found first (`Recorded::field` looks from the end).
            let plain = match value {
                [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => {
                    std::str::from_utf8(inner).ok().map(Value::from)
                }
                _ => None,
            };
            if let Some(v) = plain.or_else(|| serde_json::from_slice::<Value>(value).ok()) {
                out.push((Arc::clone(want), v));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted(vec!["ts".into(), "user_id".into()])
    }

    #[test]
    fn only_the_wanted_fields_are_read_and_the_bytes_are_kept_as_they_were() {
        let line = r#"{"topic": "transactions", "key": "card-1", "event": {"user_id": "u-1", "amount": 4.5, "ts": 7, "nested": {"user_id": "x"}} }"#;
        let read = read_lines(line.as_bytes(), None, &wanted(), |_, why| panic!("{why}"));
        let r = &read[0];
        assert_eq!(
            (r.topic.as_str(), r.key.as_deref()),
            ("transactions", Some("card-1"))
        );
        assert_eq!(
            r.payload,
            br#"{"user_id": "u-1", "amount": 4.5, "ts": 7, "nested": {"user_id": "x"}}"#
        );
        assert_eq!(r.field("user_id"), Some(&Value::from("u-1")));
        assert_eq!(r.field("ts"), Some(&Value::from(7)));
        assert_eq!(r.field("amount"), None, "not wanted, not read");
    }

    #[test]
    fn bad_lines_say_why_and_the_rest_go_on() {
        let lines =
            "not json\n[1, 2]\n{\"user_id\": \"u\"}\n\n{\"topic\": \"t\", \"event\": [1]}\n";
        let mut bad = Vec::new();
        let read = read_lines(lines.as_bytes(), None, &wanted(), |n, why| {
            bad.push((n, why))
        });
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].1.starts_with("not JSON"), "{bad:?}");
        assert!(bad[1].1.starts_with("not {\"topic\""), "{bad:?}");
        // An envelope whose event is not an object is kept: the pipeline dead-letters it.
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].payload, b"[1]");
        let bare = read_lines(
            "{\"user_id\": \"u\"}\n".as_bytes(),
            Some("t"),
            &wanted(),
            |_, w| panic!("{w}"),
        );
        assert_eq!(bare[0].field("user_id"), Some(&Value::from("u")));
    }

    #[test]
    fn a_line_not_utf_8_is_reported_by_its_number_and_crlf_lines_are_read() {
        let lines: &[u8] = b"{\"topic\": \"t\", \"event\": {\"user_id\": \"a\"}}\r\n\xff\xfe\n{\"topic\": \"t\", \"event\": {\"user_id\": \"b\"}}";
        let mut bad = Vec::new();
        let read = read_lines(lines, None, &wanted(), |n, why| bad.push((n, why)));
        assert_eq!(bad, [(2, "not text".to_string())]);
        let users: Vec<_> = read.iter().map(|r| r.field("user_id").cloned()).collect();
        assert_eq!(users, [Some(Value::from("a")), Some(Value::from("b"))]);
    }
}

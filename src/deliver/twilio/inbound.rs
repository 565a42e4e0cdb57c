//! Twilio's webhooks as feedback: checking `X-Twilio-Signature`, and turning
//! an inbound SMS or a message status callback into a feedback record.
//!
//! Twilio signs each webhook with the account's Auth Token: HMAC-SHA1 over
//! the full URL it called (as configured, so behind a proxy it is the public
//! URL, not the one herald sees) followed by every POST parameter, sorted by
//! name, as name and value concatenated; base64 in `X-Twilio-Signature`.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha1::Sha1;

/// Decodes an `application/x-www-form-urlencoded` body into pairs, in order.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn mac(auth_token: &[u8], url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac
}

/// The signature Twilio sends for a POST of `params` to `url`.
pub fn signature(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `header` is Twilio's signature of this request (constant-time).
pub fn verify(auth_token: &[u8], url: &str, params: &[(String, String)], header: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else {
        return false;
    };
    mac(auth_token, url, params).verify_slice(&given).is_ok()
}

fn object(params: &[(String, String)]) -> Map<String, Value> {
    params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

/// An inbound SMS as a feedback record: Twilio's fields as they came (the
/// shape the feedback topic already takes: `From`, `To`, `Body`, `MessageSid`).
pub fn inbound_record(params: &[(String, String)]) -> Value {
    Value::Object(object(params))
}

/// A status callback for the message with idempotency key `message`, as an
/// engagement record: `sms_delivered`, `sms_undelivered`, `sms_failed`,
/// `sms_sent`, … with Twilio's `MessageSid` and `ErrorCode`. Each callback is
/// recorded as it comes; a late `sent` after `delivered` adds a record and
/// takes nothing back, so the order Twilio posts them in does not matter.
pub fn status_record(message: &str, params: &[(String, String)]) -> Option<Value> {
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let status = field("MessageStatus").or(field("SmsStatus"))?;
    if status.is_empty() || !status.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let mut record = json!({
        "type": format!("sms_{status}"),
        "message": message,
        "provider_message_id": field("MessageSid"),
    });
    if let Some(code) = field("ErrorCode").filter(|c| !c.is_empty()) {
        record["error_code"] = json!(code);
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn signs_as_twilio_documents() {
        // The example of Twilio's "Webhooks security" page: auth token
        // 12345, this URL and these parameters give this signature.
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            signature(b"12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(verify(
            b"12345",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify(
            b"12346",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify(
            b"12345",
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify(b"12345", url, &params, "not base64!"));
    }

    #[test]
    fn a_status_callback_becomes_an_engagement_record() {
        let params = pairs(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
        ]);
        assert_eq!(
            status_record("k1", &params).unwrap(),
            json!({"type": "sms_undelivered", "message": "k1", "provider_message_id": "SM1", "error_code": "30003"})
        );
        assert_eq!(status_record("k1", &pairs(&[("MessageSid", "SM1")])), None);
        assert_eq!(
            status_record("k1", &pairs(&[("MessageStatus", "Delivered\"}")])),
            None,
            "only Twilio's lower-case status words"
        );
    }
}

//! Card numbers out of what herald keeps at rest: every run of 13–19 digits
//! (spaces or dashes between them allowed) that starts with 2–6, as Visa,
//! Mastercard, Amex and Discover numbers do, and passes the Luhn check keeps
//! only its last four digits (`4111 1111 1111 1111` → `**** **** **** 1111`).
//!
//! Epoch-millisecond times (13 digits, starting with 1) are left alone;
//! a phone number that happens to pass is masked too, which errs the right way.
//! `mask_card` in a template still prints `•••• 1111` from a masked number.

use serde_json::Value;

/// `payload` with every card number masked, or `None` when it holds none.
/// A JSON payload stays valid JSON: a card number written as a bare JSON
/// number becomes a masked string.
pub fn card_numbers(payload: &[u8]) -> Option<Vec<u8>> {
    let masked = mask_runs(payload)?;
    let was_json = serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok();
    if was_json && serde_json::from_slice::<serde::de::IgnoredAny>(&masked).is_err() {
        let mut value: Value = serde_json::from_slice(payload).ok()?;
        mask_json(&mut value);
        return serde_json::to_vec(&value).ok();
    }
    Some(masked)
}

/// Masks card numbers in every string and integer of a JSON value, in place.
pub fn mask_json(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Some(m) = mask_runs(s.as_bytes()) {
                *s = String::from_utf8(m).expect("only ASCII digits were replaced");
            }
        }
        Value::Number(n) if n.is_u64() => {
            if let Some(m) = mask_runs(n.to_string().as_bytes()) {
                *value = Value::String(String::from_utf8(m).expect("ASCII"));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_json),
        Value::Object(fields) => fields.values_mut().for_each(mask_json),
        _ => {}
    }
}

/// `text` with every card number masked, or `None` when it holds none (a
/// record's key: a card number when events are keyed by card).
pub fn mask_text(text: &str) -> Option<String> {
    mask_runs(text.as_bytes())
        .map(|m| String::from_utf8(m).expect("only ASCII digits were replaced"))
}

/// Masks card numbers in every field of a JSON object, in place.
pub fn mask_fields(fields: &mut serde_json::Map<String, Value>) {
    fields.values_mut().for_each(mask_json);
}

/// The bytes with each card-number run masked; `None` when there is none.
fn mask_runs(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A run: digits, with single spaces or dashes between them.
        let mut digits = Vec::new();
        let mut j = i;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                digits.push(j);
                j += 1;
            } else if matches!(bytes[j], b' ' | b'-')
                && bytes.get(j + 1).is_some_and(u8::is_ascii_digit)
            {
                j += 1;
            } else {
                break;
            }
        }
        if is_card_number(bytes, &digits) {
            let copy = out.get_or_insert_with(|| bytes.to_vec());
            for &at in &digits[..digits.len() - 4] {
                copy[at] = b'*';
            }
        }
        i = j.max(i + 1);
    }
    out
}

fn is_card_number(bytes: &[u8], digits: &[usize]) -> bool {
    if !(13..=19).contains(&digits.len()) || !(b'2'..=b'6').contains(&bytes[digits[0]]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(n, &at)| {
            let d = u32::from(bytes[at] - b'0');
            match (n % 2 == 1, d * 2) {
                (true, twice) if twice > 9 => twice - 9,
                (true, twice) => twice,
                (false, _) => d,
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(text: &str) -> String {
        card_numbers(text.as_bytes())
            .map_or_else(|| text.to_string(), |m| String::from_utf8(m).unwrap())
    }

    #[test]
    fn card_numbers_keep_their_last_four_and_times_and_amounts_stay() {
        assert_eq!(
            masked(r#"{"pan":"4111 1111 1111 1111","ts":1796133277000,"amount":42.5}"#),
            r#"{"pan":"**** **** **** 1111","ts":1796133277000,"amount":42.5}"#
        );
        assert_eq!(
            masked("card 5500-0000-0000-0004 declined"),
            "card ****-****-****-0004 declined"
        );
        assert_eq!(masked("amex 378282246310005"), "amex ***********0005");
        // Fails Luhn, or too short, or starts like no card: left alone.
        assert_eq!(masked("4111111111111112"), "4111111111111112");
        assert_eq!(masked("411111111111"), "411111111111");
        assert_eq!(masked("1796133277000"), "1796133277000");
    }

    #[test]
    fn a_card_number_as_a_bare_json_number_becomes_a_masked_string() {
        let out = masked(r#"{"pan":4111111111111111,"user":"u-1"}"#);
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["pan"], "************1111");
        assert_eq!(value["user"], "u-1");
        assert_eq!(card_numbers(b"{\"user\":\"u-1\"}"), None);
    }
}

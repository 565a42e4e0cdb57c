//! An SMS's size as its outcome records it and carriers bill it: its encoding (GSM-7 when every character is in the GSM 03.38 alphabet, else UCS-2) and how many segments it takes.
//!
//! GSM-7 (3GPP TS 23.038): a character of the basic table is one septet, one
//! of the extension table (`^ { } \ [ ~ ] | €` and form feed) two (an escape,
//! then the character). One segment holds 160 septets; a longer message is
//! split into segments of 153 (the rest carries the concatenation header),
//! never between an escape and its character. UCS-2 counts UTF-16 code
//! units: 70 in one segment, 67 per segment once split, never between the
//! two halves of a surrogate pair (an emoji). One character outside GSM-7 (a
//! `ç`, a `ê`, any Japanese) makes the whole message UCS-2: at most 70
//! characters before it costs two.

use serde::{Deserialize, Serialize};

/// How an SMS is encoded on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SmsEncoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl SmsEncoding {
    /// As written in outcomes: `GSM-7` or `UCS-2`.
    pub fn as_str(self) -> &'static str {
        match self {
            SmsEncoding::Gsm7 => "GSM-7",
            SmsEncoding::Ucs2 => "UCS-2",
        }
    }
}

/// An SMS's encoding, length in its units and segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsSize {
    pub encoding: SmsEncoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: u32,
    pub segments: u32,
}

/// GSM 03.38's basic table, as characters (one septet each).
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                     ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Its extension table (two septets each: an escape, then the character).
const EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Septets of `c` in GSM-7, or `None` when it is not in the alphabet.
fn septets(c: char) -> Option<u32> {
    if c.is_ascii() {
        // Every printable ASCII character is in one of the tables, except `` ` ``.
        return match c {
            '^' | '{' | '}' | '\\' | '[' | ']' | '~' | '|' | '\u{c}' => Some(2),
            '`' => None,
            ' '..='~' | '\n' | '\r' => Some(1),
            _ => None,
        };
    }
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Segments of a message of `total` units whose characters take `widths`
/// units each, with `single` units in one segment and `part` per segment
/// once split; a character is never split across two segments.
fn segments(total: u32, widths: impl Iterator<Item = u32>, single: u32, part: u32) -> u32 {
    if total <= single {
        return 1;
    }
    let (mut count, mut used) = (1, 0);
    for w in widths {
        if used + w > part {
            count += 1;
            used = 0;
        }
        used += w;
    }
    count
}

/// The size of SMS `text`. An empty text is one segment (it is never sent:
/// rules check refuses an empty template).
pub fn measure(text: &str) -> SmsSize {
    // Walked again rather than collected: no allocation per message; the
    // split into segments is walked only for a text longer than one.
    let gsm = match text.is_ascii() {
        true => text
            .bytes()
            .map(|b| septets(char::from(b)))
            .sum::<Option<u32>>(),
        false => text.chars().map(septets).sum::<Option<u32>>(),
    };
    match gsm {
        Some(units) => SmsSize {
            encoding: SmsEncoding::Gsm7,
            units,
            segments: segments(
                units,
                text.chars().map(|c| septets(c).unwrap_or(1)),
                160,
                153,
            ),
        },
        None => {
            let widths = text.chars().map(|c| c.len_utf16() as u32);
            let units = widths.clone().sum();
            SmsSize {
                encoding: SmsEncoding::Ucs2,
                units,
                segments: segments(units, widths, 70, 67),
            }
        }
    }
}

/// `text` with its no-break and thin spaces (U+00A0, U+202F, U+2009) as
/// plain spaces: GSM-7 has none, and one would make the whole SMS UCS-2
/// (CLDR writes them in French and German amounts: `1 130,93 €`). Twilio's
/// Smart Encoding does the same.
pub fn plain_spaces(text: String) -> String {
    if !text.contains(['\u{a0}', '\u{202f}', '\u{2009}']) {
        return text;
    }
    text.replace(['\u{a0}', '\u{202f}', '\u{2009}'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(text: &str) -> (SmsEncoding, u32, u32) {
        let s = measure(text);
        (s.encoding, s.units, s.segments)
    }

    #[test]
    fn plain_text_and_accents_of_the_gsm_alphabet_stay_gsm_7() {
        use SmsEncoding::Gsm7;
        assert_eq!(size("Card 4242 was used at Blue Bottle."), (Gsm7, 34, 1));
        assert_eq!(size("Café à Paris, 12,50 £"), (Gsm7, 21, 1));
        assert_eq!(size(&"a".repeat(160)), (Gsm7, 160, 1));
        assert_eq!(size(&"a".repeat(161)), (Gsm7, 161, 2));
        assert_eq!(size(&"a".repeat(306)), (Gsm7, 306, 2));
        assert_eq!(size(&"a".repeat(307)), (Gsm7, 307, 3));
    }

    #[test]
    fn extension_characters_take_two_septets_and_are_never_split() {
        use SmsEncoding::Gsm7;
        assert_eq!(size("€12 [ok]"), (Gsm7, 11, 1));
        assert_eq!(size(&"€".repeat(80)), (Gsm7, 160, 1));
        assert_eq!(size(&"€".repeat(81)), (Gsm7, 162, 2));
        // 152 septets, then an escape pair: the pair starts the next segment.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        assert_eq!(size(&text), (Gsm7, 164, 2));
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(size(&text), (Gsm7, 306, 3), "153 would split the pair");
    }

    #[test]
    fn one_character_outside_the_alphabet_makes_the_whole_message_ucs_2() {
        use SmsEncoding::Ucs2;
        assert_eq!(size("Reçu: 1 130,93 € chez Fnac"), (Ucs2, 26, 1));
        assert_eq!(size("カード4242で¥1,131のお支払い"), (Ucs2, 19, 1));
        assert_eq!(size("`"), (Ucs2, 1, 1), "the backtick is not GSM-7");
        assert_eq!(size(&"ê".repeat(70)), (Ucs2, 70, 1));
        assert_eq!(size(&"ê".repeat(71)), (Ucs2, 71, 2));
        assert_eq!(size(&"ê".repeat(134)), (Ucs2, 134, 2));
        assert_eq!(size(&"ê".repeat(135)), (Ucs2, 135, 3));
    }

    #[test]
    fn a_french_amount_stays_gsm_7_once_its_no_break_spaces_are_plain() {
        let text = "Paiement de 1\u{202f}130,93\u{a0}€ chez Fnac".to_string();
        assert_eq!(measure(&text).encoding, SmsEncoding::Ucs2);
        let plain = plain_spaces(text);
        assert_eq!(plain, "Paiement de 1 130,93 € chez Fnac");
        assert_eq!(size(&plain), (SmsEncoding::Gsm7, 33, 1));
    }

    #[test]
    fn an_emoji_is_two_units_and_its_halves_stay_together() {
        use SmsEncoding::Ucs2;
        assert_eq!(size("🎉"), (Ucs2, 2, 1));
        // 66 units, then a pair: the pair starts the second segment.
        let text = format!("{}🎉{}", "ê".repeat(66), "ê".repeat(5));
        assert_eq!(size(&text), (Ucs2, 73, 2));
    }
}

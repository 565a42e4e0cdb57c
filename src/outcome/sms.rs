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
    match gsm_septets(text) {
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
            // UTF-16 units without decoding: one per byte that starts a
            // character (not a continuation byte), and one more per
            // four-byte character (a surrogate pair).
            let units = text
                .bytes()
                .map(|b| u32::from(b & 0xc0 != 0x80) + u32::from(b >= 0xf0))
                .sum();
            SmsSize {
                encoding: SmsEncoding::Ucs2,
                units,
                segments: segments(units, widths, 70, 67),
            }
        }
    }
}

/// Septets of each ASCII byte in GSM-7 (0: not in the alphabet), from
/// [`septets`], so the common all-ASCII text is a table walk.
const ASCII_SEPTETS: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = match b as u8 {
            b'^' | b'{' | b'}' | b'\\' | b'[' | b']' | b'~' | b'|' | 0x0c => 2,
            b'`' => 0,
            b' '..=b'~' | b'\n' | b'\r' => 1,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// The septets of `text` in GSM-7, or `None` at its first character
/// outside the alphabet.
fn gsm_septets(text: &str) -> Option<u32> {
    let bytes = text.as_bytes();
    let (mut units, mut at) = (0u32, 0);
    while let Some(&b) = bytes.get(at) {
        if b.is_ascii() {
            // The common case, by table.
            match ASCII_SEPTETS[usize::from(b)] {
                0 => return None,
                n => units += u32::from(n),
            }
            at += 1;
        } else {
            let c = text[at..].chars().next()?;
            units += septets(c)?;
            at += c.len_utf8();
        }
    }
    Some(units)
}

/// `text` as herald sends it by SMS, as Twilio's Smart Encoding sends it:
/// its no-break and thin spaces always as plain spaces (GSM-7 has none;
/// CLDR writes them in French and German amounts: `1 130,93 €`), and
/// typographic look-alikes (`•` of `mask_card`, curly quotes, dashes, `…`,
/// the minus sign) as their GSM-7 forms (`*`, `'`, `"`, `-`, `...`) when
/// that makes the whole text GSM-7, 160 characters a segment instead of
/// 70. A text that stays UCS-2 anyway (an `ê`, Japanese, an emoji) keeps
/// them as written.
pub fn for_sms(text: String) -> String {
    if text.is_ascii() {
        // Nothing to replace: no ASCII character outside GSM-7 (a
        // backtick, a tab) has a look-alike.
        return text;
    }
    // One walk: what would change, and whether the text would then be GSM-7.
    let (mut spaces, mut alikes, mut gsm) = (false, false, true);
    for c in text.chars() {
        if !c.is_ascii() {
            if is_special_space(c) {
                spaces = true;
            } else if look_alike(c).is_some() {
                alikes = true;
            } else if septets(c).is_none() {
                gsm = false;
            }
        } else if ASCII_SEPTETS[usize::from(c as u8)] == 0 {
            // A backtick, a tab, another control character.
            gsm = false;
        }
    }
    let replace_alikes = alikes && gsm;
    if !spaces && !replace_alikes {
        return text;
    }
    let mut sent = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, c) in text.char_indices() {
        let with = match c {
            _ if c.is_ascii() => continue,
            _ if is_special_space(c) => " ",
            _ => match look_alike(c) {
                Some(gsm) if replace_alikes => gsm,
                _ => continue,
            },
        };
        sent.push_str(&text[copied..at]);
        sent.push_str(with);
        copied = at + c.len_utf8();
    }
    sent.push_str(&text[copied..]);
    sent
}

/// The no-break and thin spaces CLDR writes in amounts (U+00A0, U+202F,
/// U+2009): GSM-7 has none, an SMS sends them as plain spaces.
fn is_special_space(c: char) -> bool {
    matches!(c, '\u{a0}' | '\u{202f}' | '\u{2009}')
}

/// The GSM-7 form of a typographic character outside the alphabet.
fn look_alike(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{2022}' | '\u{2219}' => "*",
        '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' | '\u{2032}' => "'",
        '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' | '\u{2033}' => "\"",
        '\u{2010}'..='\u{2015}' | '\u{2212}' => "-",
        '\u{2026}' => "...",
        _ => return None,
    })
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
        let plain = for_sms(text);
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

    /// The size by the definition, a character at a time.
    fn size_by_characters(text: &str) -> (SmsEncoding, u32, u32) {
        match text.chars().map(septets).sum::<Option<u32>>() {
            Some(units) => (
                SmsEncoding::Gsm7,
                units,
                segments(
                    units,
                    text.chars().map(|c| septets(c).unwrap_or(1)),
                    160,
                    153,
                ),
            ),
            None => {
                let units = text.chars().map(|c| c.len_utf16() as u32).sum();
                let widths = text.chars().map(|c| c.len_utf16() as u32);
                (SmsEncoding::Ucs2, units, segments(units, widths, 70, 67))
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_table_walk_measures_as_the_definition_does(
            text in "[ -~\\n\\r\u{c}`€£éçê•\u{a0}🎉カ]{0,400}"
        ) {
            proptest::prop_assert_eq!(size(&text), size_by_characters(&text));
        }
    }

    /// [`for_sms`] by its definition: the spaces always, the look-alikes
    /// when the text is GSM-7 with them replaced.
    fn for_sms_by_definition(text: &str) -> String {
        let spaced = text.replace(['\u{a0}', '\u{202f}', '\u{2009}'], " ");
        let plain: String = spaced
            .chars()
            .map(|c| look_alike(c).map_or_else(|| c.to_string(), str::to_string))
            .collect();
        let gsm = plain.chars().map(septets).sum::<Option<u32>>().is_some();
        if gsm {
            plain
        } else {
            spaced
        }
    }

    proptest::proptest! {
        #[test]
        fn one_walk_sends_what_the_definition_sends(
            text in "[ a-z`\t\né€•“”’–—…−\u{a0}\u{202f}\u{2009}\u{2008}êカ🎉]{0,60}"
        ) {
            proptest::prop_assert_eq!(for_sms(text.clone()), for_sms_by_definition(&text));
        }
    }

    #[test]
    fn look_alikes_go_as_gsm_7_when_that_makes_the_whole_text_gsm_7() {
        use SmsEncoding::{Gsm7, Ucs2};
        let fraud = "herald: $80.00 at Blue Bottle (FR) on card •••• 4242. Not you? Reply NO.";
        assert_eq!(
            size(fraud),
            (Ucs2, 72, 2),
            "the bullets alone bill two segments"
        );
        let sent = for_sms(fraud.to_string());
        assert_eq!(
            sent,
            "herald: $80.00 at Blue Bottle (FR) on card **** 4242. Not you? Reply NO."
        );
        assert_eq!(size(&sent), (Gsm7, 72, 1));
        assert_eq!(
            for_sms("“Back soon” – it’s… −5\u{a0}°".replace('°', "C")),
            "\"Back soon\" - it's... -5 C"
        );
        // Still UCS-2 with them replaced (ê, Japanese): kept as written.
        let french = "Carte •••• 4242 utilisée à 09:00 — fenêtre".to_string();
        assert_eq!(for_sms(french.clone()), french);
        let japanese = "カード•••• 4242が使われました".to_string();
        assert_eq!(for_sms(japanese.clone()), japanese);
        assert_eq!(for_sms("plain ASCII".into()), "plain ASCII");
    }
}

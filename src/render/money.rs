//! money: an amount of whole cents written as ICU4X writes it for one locale and currency, from that pair's shape, learnt once from ICU4X's own output and checked against it.
//!
//! ICU4X formats money in ~2,000 instructions an amount (building an exact
//! decimal, rounding it to the currency's digits, walking CLDR's pattern);
//! a message with an amount in its title and body paid that twice per send.
//! A locale writes one currency the same way every time: a prefix and a
//! suffix (each its own for negative amounts), a grouping separator and
//! sizes, a decimal separator and the currency's digits. [`MoneyShape::learn`]
//! reads them off ICU4X's output for a few probe amounts, then writes a
//! further set of amounts itself and keeps the shape only if every one is
//! ICU4X's text, byte for byte; a pair whose output is of another form
//! (digits other than ASCII, a pattern this does not describe) has no shape
//! and stays on ICU4X. Amounts that are not whole cents always do.

/// How one locale writes one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneyShape {
    positive: Affixes,
    negative: Affixes,
    /// Empty when the locale does not group digits.
    group: String,
    /// The digits in the last group, and in each group before it
    /// (`12,34,567` in en-IN: 3, then 2).
    primary: usize,
    secondary: usize,
    /// The fewest digits before the last group for the number to be grouped
    /// at all (CLDR's `minimumGroupingDigits`: `1234` but `12 345` in es).
    min_grouping: usize,
    decimal: String,
    /// The currency's digits after the separator: 0 (JPY), 2, or 3 (BHD).
    fraction: u8,
}

/// The text before and after the number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Affixes {
    prefix: String,
    suffix: String,
}

/// Amounts, in cents, the learnt shape must write as ICU4X does before it
/// is used: zero, ones, each grouping length, rounding halves, negatives.
const CHECKED: [i64; 26] = [
    0,
    1,
    5,
    49,
    50,
    99,
    100,
    150,
    250,
    1_050,
    99_999,
    100_000,
    123_400,
    1_234_500,
    12_345_600,
    123_456_789,
    9_876_543_210,
    100_000_000_000,
    -1,
    -50,
    -150,
    -800,
    -123_450,
    -123_456_789,
    -100_000_000_000,
    999_999_999_999_999,
];

impl MoneyShape {
    /// The shape of `icu`'s output (an amount given in cents, formatted),
    /// or `None` when it is not one this writes or does not give back
    /// `icu`'s text for every one of [`CHECKED`].
    pub fn learn(icu: impl Fn(i64) -> String) -> Option<MoneyShape> {
        let shape = Self::read(&icu)?;
        CHECKED
            .iter()
            .all(|&cents| {
                let mut mine = String::new();
                !shape.write(&mut mine, cents) || mine == icu(cents)
            })
            .then_some(shape)
    }

    fn read(icu: &impl Fn(i64) -> String) -> Option<MoneyShape> {
        let fraction = match Number::of(&icu(150))?.runs.as_slice() {
            [(one, _), (digits, "")]
                if one == "1" && digits.bytes().all(|b| b == b'5' || b == b'0') =>
            {
                u8::try_from(digits.len()).ok()?
            }
            [(two, "")] if two == "2" => 0,
            _ => return None,
        };
        let probe = icu(123_456_789);
        let number = Number::of(&probe)?;
        let (int_runs, decimal) = match fraction {
            0 => (&number.runs[..], String::new()),
            _ => {
                let (int_runs, last) = number.runs.split_at(number.runs.len().checked_sub(1)?);
                let frac = &last[0].0;
                let want = format!("{:0<width$}", "89", width = usize::from(fraction));
                if *frac != want {
                    return None;
                }
                (int_runs, int_runs.last()?.1.to_string())
            }
        };
        let digits: String = int_runs.iter().map(|(d, _)| d.as_str()).collect();
        let expected = if fraction == 0 { "1234568" } else { "1234567" };
        if digits != expected {
            return None;
        }
        let (group, primary, secondary) = match int_runs {
            [_] => (String::new(), usize::MAX, usize::MAX),
            [.., (before, sep), (last, _)] => {
                let seps = &int_runs[..int_runs.len() - 1];
                if seps.iter().any(|(_, s)| s != sep) {
                    return None;
                }
                (sep.to_string(), last.len(), before.len())
            }
            [] => return None,
        };
        // 1234.00: grouped unless the locale wants two digits before the
        // last group.
        let min_grouping = match Number::of(&icu(123_400))?.runs.len() {
            n if n > 1 + usize::from(fraction > 0) => 1,
            _ => 2,
        };
        let negative_text = icu(-123_456_789);
        let at = negative_text.find(number.middle)?;
        Some(MoneyShape {
            positive: Affixes {
                prefix: number.prefix.to_string(),
                suffix: number.suffix.to_string(),
            },
            negative: Affixes {
                prefix: negative_text[..at].to_string(),
                suffix: negative_text[at + number.middle.len()..].to_string(),
            },
            group,
            primary,
            secondary,
            min_grouping,
            decimal,
            fraction,
        })
    }

    /// `cents` written onto `out`; `false` (nothing written) when ICU4X
    /// must write it (a negative amount that rounds to zero, whose sign
    /// is ICU4X's to decide).
    pub fn write(&self, out: &mut String, cents: i64) -> bool {
        let negative = cents < 0;
        let magnitude = cents.unsigned_abs();
        let (units, fraction) = match self.fraction {
            // Half away from zero, as ICU4X rounds money.
            0 => ((magnitude + 50) / 100, 0),
            2 => (magnitude / 100, magnitude % 100),
            3 => (magnitude / 100, magnitude % 100 * 10),
            _ => return false,
        };
        if negative && units == 0 && self.fraction == 0 {
            return false;
        }
        let affixes = if negative {
            &self.negative
        } else {
            &self.positive
        };
        out.push_str(&affixes.prefix);
        let mut digits = [0u8; 20];
        let mut n = 0;
        let mut rest = units;
        loop {
            digits[n] = b'0' + (rest % 10) as u8;
            n += 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let grouped = !self.group.is_empty() && n >= self.primary + self.min_grouping;
        for i in (0..n).rev() {
            out.push(char::from(digits[i]));
            if grouped && i > 0 && i >= self.primary && (i - self.primary) % self.secondary == 0 {
                out.push_str(&self.group);
            }
        }
        if self.fraction > 0 {
            out.push_str(&self.decimal);
            let width = usize::from(self.fraction);
            let text = [
                b'0' + (fraction / 100 % 10) as u8,
                b'0' + (fraction / 10 % 10) as u8,
                b'0' + (fraction % 10) as u8,
            ];
            for &d in &text[3 - width..] {
                out.push(char::from(d));
            }
        }
        out.push_str(&affixes.suffix);
        true
    }
}

/// A formatted amount taken apart: the text before its first ASCII digit,
/// its digit runs each with the text after it (up to the next run), and
/// the text after its last digit.
struct Number<'a> {
    prefix: &'a str,
    runs: Vec<(String, &'a str)>,
    /// From the first digit to the last.
    middle: &'a str,
    suffix: &'a str,
}

impl<'a> Number<'a> {
    fn of(text: &'a str) -> Option<Number<'a>> {
        let first = text.find(|c: char| c.is_ascii_digit())?;
        let last = text.rfind(|c: char| c.is_ascii_digit())?;
        let middle = &text[first..=last];
        let mut runs: Vec<(String, &'a str)> = Vec::new();
        let mut rest = middle;
        while !rest.is_empty() {
            let digits_end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (digits, after) = rest.split_at(digits_end);
            let sep_end = after
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(after.len());
            runs.push((digits.to_string(), &after[..sep_end]));
            rest = &after[sep_end..];
        }
        Some(Number {
            prefix: &text[..first],
            runs,
            middle,
            suffix: &text[last + 1..],
        })
    }
}

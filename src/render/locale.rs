//! The recipient's locale in templates: money, numbers, dates and plural forms formatted by ICU4X from CLDR's data (compiled in), and the fallback chain from a recipient's locale to the texts a rule has.
//!
//! Chosen by measurement (BENCHMARKS.md, "Localisation library"): ICU4X is
//! the Unicode Consortium's own implementation of CLDR, used by Firefox and
//! Chrome; Fluent (fluent-bundle) formats messages and plurals but not
//! money or grouping for a locale. Formatters are built once per thread and
//! (locale, currency), a few microseconds, then format in ~0.2 µs. An amount
//! of whole cents is written from the pair's shape (`money.rs`), learnt from
//! the formatter's own output when it is built and checked against it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::str::FromStr;

use icu::datetime::fieldsets::{YMD, YMDT};
use icu::datetime::input::{Date, DateTime, Time};
use icu::datetime::DateTimeFormatter;
use icu::locale::fallback::{LocaleFallbackConfig, LocaleFallbacker};
use icu::locale::Locale;
use icu::plurals::{PluralCategory, PluralRules};
use icu_experimental::dimension::currency::formatter::CurrencyFormatter;
use icu_experimental::dimension::currency::CurrencyType;

use super::money::MoneyShape;

/// The locale texts are in when neither the rule nor the config says.
pub const DEFAULT: &str = "en";

/// A recipient's locale, parsed once per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextLocale {
    /// As BCP 47 writes it (`fr-BE`).
    pub tag: String,
    icu: Locale,
}

impl TextLocale {
    /// `tag` parsed (`fr_BE` and `fr-be` are read as `fr-BE`), or `None`
    /// when it is no locale.
    pub fn parse(tag: &str) -> Option<TextLocale> {
        let icu = Locale::try_from_str(&tag.replace('_', "-")).ok()?;
        (!icu.id.language.is_unknown()).then(|| TextLocale {
            tag: icu.to_string(),
            icu,
        })
    }

    /// Its language subtag (`fr` for `fr-BE`).
    pub fn language(&self) -> &str {
        self.icu.id.language.as_str()
    }

    /// The default locale, `en`.
    pub fn default_locale() -> TextLocale {
        TextLocale::parse(DEFAULT).expect("`en` is a locale")
    }

    /// The locales to look for texts in, most specific first, ending with
    /// the language alone (CLDR's fallback: `fr-BE` → `fr`; `zh-TW` →
    /// `zh-Hant`, not `zh`, which is Simplified); the rule's default locale
    /// comes after.
    pub fn chain(&self) -> Vec<String> {
        let fallbacker = LocaleFallbacker::new().for_config(LocaleFallbackConfig::default());
        let mut it = fallbacker.fallback_for((&self.icu).into());
        let mut out = vec![self.tag.clone()];
        loop {
            let here = it.get();
            if here.is_unknown() {
                break;
            }
            let tag = here.to_string();
            if !out.contains(&tag) {
                out.push(tag);
            }
            it.step();
        }
        out
    }

    /// `amount` in `currency` (ISO 4217) as this locale writes money:
    /// `1 130,93 €` (fr), `￥1,131` (ja), `CHF 1'130.93` (de-CH), with the
    /// currency's own decimals. An unknown currency code is written after
    /// the number.
    pub fn money(&self, amount: f64, currency: &str) -> String {
        let mut out = String::new();
        self.write_money(&mut out, amount, currency);
        out
    }

    /// [`TextLocale::money`] written onto `out`. The formatter is found by
    /// the locale's tag and the code, lower-cased on the stack: nothing is
    /// allocated for an amount but the text itself.
    pub fn write_money(&self, out: &mut String, amount: f64, currency: &str) {
        let trimmed = currency.trim();
        let mut lower = [0u8; 8];
        let code: std::borrow::Cow<'_, str> = match lower.get_mut(..trimmed.len()) {
            Some(short) => {
                short.copy_from_slice(trimmed.as_bytes());
                short.make_ascii_lowercase();
                // Only ASCII bytes changed: still the UTF-8 it was.
                std::str::from_utf8(short).map_or_else(|_| trimmed.into(), Into::into)
            }
            None => trimmed.to_ascii_lowercase().into(),
        };
        let written = CURRENCY.with(|cache| {
            let mut cache = cache.borrow_mut();
            if !cache.contains_key(self.tag.as_str()) {
                cache.insert(self.tag.clone(), foldhash::HashMap::default());
            }
            let of_locale = cache.get_mut(self.tag.as_str())?;
            if !of_locale.contains_key(&*code) {
                let built = CurrencyType::try_from_str(&code).ok().and_then(|c| {
                    CurrencyFormatter::try_new_symbol((&self.icu).into(), c, Default::default())
                        .ok()
                });
                let shape = built.as_ref().and_then(|icu| {
                    MoneyShape::learn(|cents| {
                        icu.format_fixed_decimal(&cents_decimal(cents)).to_string()
                    })
                });
                of_locale.insert(code.to_string(), built.map(|icu| (icu, shape)));
            }
            let (formatter, shape) = of_locale.get(&*code)?.as_ref()?;
            if let (Some(shape), Some(cents)) = (shape, whole_cents(amount)) {
                if shape.write(out, cents) {
                    return Some(());
                }
            }
            let value = decimal(amount)?;
            let _ = writeable::Writeable::write_to(&formatter.format_fixed_decimal(&value), out);
            Some(())
        });
        if written.is_none() {
            out.push_str(&self.number(amount, Some(2)));
            out.push(' ');
            out.push_str(&trimmed.to_ascii_uppercase());
        }
    }

    /// `value` as this locale writes numbers (`1 130,5` in fr, `1,130.5`
    /// in en), rounded to `decimals` places when given.
    pub fn number(&self, value: f64, decimals: Option<u8>) -> String {
        let Some(mut d) = decimal(value) else {
            return value.to_string();
        };
        if let Some(places) = decimals {
            d.round(-i16::from(places));
            d.pad_end(-i16::from(places));
        }
        DECIMAL.with(|cache| {
            let mut cache = cache.borrow_mut();
            let formatter = cache.entry(self.tag.clone()).or_insert_with(|| {
                icu::decimal::DecimalFormatter::try_new((&self.icu).into(), Default::default()).ok()
            });
            match formatter {
                Some(f) => f.format(&d).to_string(),
                None => d.to_string(),
            }
        })
    }

    /// A calendar date (and, with `time`, its hour and minute) as this
    /// locale writes it at CLDR's medium length: `Nov 24, 2026, 3:05 PM` in
    /// en, `24 nov. 2026, 15:05` in fr, `24.11.2026, 15:05` in de,
    /// `2026/11/24 15:05` in ja. `None` for a date that does not exist.
    pub fn date(&self, year: i32, month: u8, day: u8, time: Option<(u8, u8)>) -> Option<String> {
        let date = Date::try_new_iso(year, month, day).ok()?;
        match time {
            None => DATES.with(|cache| {
                let mut cache = cache.borrow_mut();
                let f = cache.entry(self.tag.clone()).or_insert_with(|| {
                    DateTimeFormatter::try_new((&self.icu).into(), YMD::medium()).ok()
                });
                Some(f.as_ref()?.format(&date).to_string())
            }),
            Some((hour, minute)) => {
                let time = Time::try_new(hour, minute, 0, 0).ok()?;
                DATE_TIMES.with(|cache| {
                    let mut cache = cache.borrow_mut();
                    let f = cache.entry(self.tag.clone()).or_insert_with(|| {
                        DateTimeFormatter::try_new((&self.icu).into(), YMD::medium().with_time_hm())
                            .ok()
                    });
                    Some(f.as_ref()?.format(&DateTime { date, time }).to_string())
                })
            }
        }
    }

    /// The CLDR plural category of `n` here: `zero`, `one`, `two`, `few`,
    /// `many` or `other`.
    pub fn plural(&self, n: f64) -> &'static str {
        let Some(d) = decimal(n) else {
            return "other";
        };
        PLURALS.with(|cache| {
            let mut cache = cache.borrow_mut();
            let rules = cache
                .entry(self.tag.clone())
                .or_insert_with(|| PluralRules::try_new_cardinal((&self.icu).into()).ok());
            match rules.as_ref().map(|r| r.category_for(&d)) {
                Some(PluralCategory::Zero) => "zero",
                Some(PluralCategory::One) => "one",
                Some(PluralCategory::Two) => "two",
                Some(PluralCategory::Few) => "few",
                Some(PluralCategory::Many) => "many",
                _ => "other",
            }
        })
    }
}

/// `value` as a decimal, exactly as Rust prints it (shortest round trip).
/// An amount of whole cents (most money) is built from its integer, without
/// printing and parsing it: `c / 100` is the shortest decimal of a float
/// that `c as f64 / 100.0` gives back exactly.
fn decimal(value: f64) -> Option<icu::decimal::input::Decimal> {
    if !value.is_finite() {
        return None;
    }
    if let Some(cents) = whole_cents(value) {
        return Some(cents_decimal(cents));
    }
    icu::decimal::input::Decimal::from_str(&format!("{value}")).ok()
}

/// `value` in whole cents, when it is a whole number of them (its shortest
/// decimal has at most two places).
fn whole_cents(value: f64) -> Option<i64> {
    let cents = (value * 100.0).round();
    (cents.abs() < 1e15 && cents / 100.0 == value).then_some(cents as i64)
}

/// `cents / 100` as a decimal, without trailing zeros.
fn cents_decimal(cents: i64) -> icu::decimal::input::Decimal {
    let mut d = icu::decimal::input::Decimal::from(cents);
    d.multiply_pow10(-2);
    d.absolute.trim_end();
    d
}

type Formatters<K, V> = RefCell<HashMap<K, Option<V>>>;
type Money = CurrencyFormatter<icu::decimal::DecimalFormatter>;
/// A currency's formatter and, when learnt, the shape it writes whole cents in.
type MoneyFormat = (Money, Option<MoneyShape>);

thread_local! {
    static DATES: Formatters<String, DateTimeFormatter<YMD>> = RefCell::default();
    static DATE_TIMES: Formatters<String, DateTimeFormatter<YMDT>> = RefCell::default();
    /// Per locale, per currency code (lower case); looked up per amount,
    /// so on foldhash rather than SipHash.
    static CURRENCY: RefCell<foldhash::HashMap<String, foldhash::HashMap<String, Option<MoneyFormat>>>> = RefCell::default();
    static DECIMAL: Formatters<String, icu::decimal::DecimalFormatter> = RefCell::default();
    static PLURALS: Formatters<String, PluralRules> = RefCell::default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tag: &str) -> TextLocale {
        TextLocale::parse(tag).unwrap()
    }

    #[test]
    fn money_is_written_as_cldr_writes_it_for_the_locale() {
        // CLDR's own forms, separators included: U+202F (narrow no-break
        // space) groups French thousands, U+00A0 comes before the symbol.
        assert_eq!(at("fr-FR").money(1130.93, "EUR"), "1\u{202f}130,93\u{a0}€");
        assert_eq!(at("de-DE").money(1130.93, "EUR"), "1.130,93\u{a0}€");
        assert_eq!(at("ja-JP").money(1130.93, "JPY"), "￥1,131");
        assert_eq!(at("de-CH").money(1130.93, "CHF"), "CHF\u{a0}1'130.93");
        assert_eq!(at("en-US").money(1234.5, "usd"), "$1,234.50");
        assert_eq!(at("en").money(-8.0, "EUR"), "-€8.00");
        assert_eq!(at("en").money(12.0, "XYZ"), "XYZ\u{a0}12.00");
        assert_eq!(at("en").money(12.0, "not a code"), "12.00 NOT A CODE");
    }

    #[test]
    fn decimals_are_the_shortest_that_give_the_float_back() {
        for (value, text) in [
            (0.29, "0.29"),
            (12.5, "12.5"),
            (1130.93, "1130.93"),
            (-8.0, "-8"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e20, "100000000000000000000"),
            (0.125, "0.125"),
        ] {
            assert_eq!(decimal(value).unwrap().to_string(), text, "{value}");
        }
    }

    #[test]
    fn numbers_and_plural_categories_follow_the_locale() {
        assert_eq!(at("fr").number(1130.5, None), "1\u{202f}130,5");
        assert_eq!(at("en").number(1130.5, Some(2)), "1,130.50");
        assert_eq!(at("en").plural(1.0), "one");
        assert_eq!(at("en").plural(0.0), "other");
        assert_eq!(at("fr").plural(0.0), "one", "French says 0 in the singular");
        assert_eq!(at("ja").plural(1.0), "other", "Japanese has one form");
        let polish: Vec<&str> = [1.0, 2.0, 5.0, 22.0]
            .iter()
            .map(|n| at("pl").plural(*n))
            .collect();
        assert_eq!(polish, ["one", "few", "many", "few"]);
        assert_eq!(at("ar").plural(2.0), "two");
    }

    #[test]
    fn dates_are_written_as_cldr_writes_them_for_the_locale() {
        let cases = [
            ("en", "Nov 24, 2026", "Nov 24, 2026, 3:05\u{202f}PM"),
            ("fr", "24 nov. 2026", "24 nov. 2026, 15:05"),
            ("de", "24.11.2026", "24.11.2026, 15:05"),
            ("ja", "2026/11/24", "2026/11/24 15:05"),
        ];
        for (tag, date, date_time) in cases {
            let l = at(tag);
            assert_eq!(l.date(2026, 11, 24, None).as_deref(), Some(date), "{tag}");
            assert_eq!(
                l.date(2026, 11, 24, Some((15, 5))).as_deref(),
                Some(date_time),
                "{tag}"
            );
        }
        assert_eq!(at("en").date(2026, 2, 30, None), None, "no such day");
    }

    #[test]
    fn the_fallback_chain_goes_from_region_to_language() {
        assert_eq!(at("fr-BE").chain(), ["fr-BE", "fr"]);
        assert_eq!(at("fr_be").chain(), ["fr-BE", "fr"]);
        assert_eq!(at("ja").chain(), ["ja"]);
        assert_eq!(at("zh-TW").chain(), ["zh-TW", "zh-Hant"]);
        assert!(TextLocale::parse("not a locale!").is_none());
        assert!(TextLocale::parse("und").is_none());
    }

    /// `amount` in `code` as ICU4X alone writes it, no learnt shape.
    fn icu_money(tag: &str, amount: f64, code: &str) -> String {
        let currency = CurrencyType::try_from_str(&code.to_ascii_lowercase()).unwrap();
        let formatter =
            CurrencyFormatter::try_new_symbol((&at(tag).icu).into(), currency, Default::default())
                .unwrap();
        let value = decimal(amount).unwrap();
        let text = formatter.format_fixed_decimal(&value).to_string();
        text
    }

    fn shape_of(tag: &str, code: &str) -> Option<MoneyShape> {
        let currency = CurrencyType::try_from_str(&code.to_ascii_lowercase()).unwrap();
        let formatter =
            CurrencyFormatter::try_new_symbol((&at(tag).icu).into(), currency, Default::default())
                .unwrap();
        MoneyShape::learn(|cents| {
            let value = cents_decimal(cents);
            let text = formatter.format_fixed_decimal(&value).to_string();
            text
        })
    }

    #[test]
    fn learnt_money_shapes_write_what_icu4x_writes() {
        let locales = [
            "en", "en-US", "en-GB", "en-IN", "hi-IN", "fr-FR", "fr-CH", "de-DE", "de-CH", "es-ES",
            "es-MX", "pt-BR", "pt-PT", "it-IT", "nl-NL", "sv-SE", "pl-PL", "ru-RU", "ja-JP",
            "zh-CN", "ko-KR", "ar-EG", "ar-AE", "he-IL", "fa-IR", "tr-TR", "bn-BD", "th-TH",
        ];
        let codes = [
            "USD", "EUR", "JPY", "GBP", "INR", "CHF", "BHD", "SEK", "KRW", "BRL",
        ];
        // Whole cents of every length and sign, rounding halves, and
        // amounts that are not whole cents (which ICU4X always writes).
        let mut amounts: Vec<f64> = vec![0.0, -0.0, 0.125, 2.675, 1e20, -0.4, -0.5, 1234.5];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..160 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let cents = (x % 10u64.pow(i % 14 + 1)) as i64;
            let cents = if i % 5 == 0 { -cents } else { cents };
            amounts.push(cents as f64 / 100.0);
        }
        let mut learnt = 0;
        for tag in locales {
            for code in codes {
                learnt += usize::from(shape_of(tag, code).is_some());
                for &amount in &amounts {
                    assert_eq!(
                        at(tag).money(amount, code),
                        icu_money(tag, amount, code),
                        "{amount} {code} in {tag}"
                    );
                }
            }
        }
        for (tag, code) in [
            ("en", "USD"),
            ("fr-FR", "EUR"),
            ("de-CH", "CHF"),
            ("ja-JP", "JPY"),
            ("en-IN", "INR"),
            ("es-ES", "EUR"),
            ("en", "BHD"),
        ] {
            assert!(shape_of(tag, code).is_some(), "{tag} {code} has a shape");
        }
        assert!(learnt * 10 >= locales.len() * codes.len() * 8, "{learnt} pairs learnt (250 of 280 when written: ar-EG, fa-IR and bn-BD write other digits)");
    }
}

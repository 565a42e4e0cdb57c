//! phone-bench: validates 200,000 generated numbers of ten countries with the `phonenumber` crate and with `rlibphonenumber`; prints where they disagree (of the first 50,000) and each one's rate.
use std::time::Instant;
fn old(raw: &str) -> Option<String> {
    if !raw.starts_with('+') { return None; }
    let n = phonenumber::parse(None, raw).ok()?;
    if !phonenumber::is_valid(&n) { return None; }
    Some(n.format().mode(phonenumber::Mode::E164).to_string())
}
fn new(raw: &str) -> Option<String> {
    use rlibphonenumber::{PHONE_NUMBER_UTIL, PhoneNumberFormat};
    if !raw.starts_with('+') { return None; }
    let n = PHONE_NUMBER_UTIL.parse(raw, None).ok()?;
    if !n.is_valid() { return None; }
    Some(n.format_as(PhoneNumberFormat::E164).to_string())
}
fn main() {
    // A mix: US/CA numbers with varied area codes, UK, FR, DE, IN, BR, JP, invalid ones, formatted ones.
    let mut x: u64 = 88172645463325252;
    let mut rnd = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
    let prefixes = ["+1", "+44 7", "+33 6", "+49 15", "+91 9", "+55 11 9", "+81 90", "+1 ", "+61 4", "+34 6"];
    let nums: Vec<String> = (0..200_000).map(|_| {
        let p = prefixes[(rnd() % prefixes.len() as u64) as usize];
        let digits = match p { "+1" | "+1 " => 10, "+44 7" => 9, "+33 6" => 8, "+49 15" => 9, "+91 9" => 9, "+55 11 9" => 8, "+81 90" => 8, "+61 4" => 8, _ => 8 };
        let mut s = p.to_string();
        for _ in 0..digits { s.push(char::from(b'0' + (rnd() % 10) as u8)); }
        s
    }).collect();
    let mut agree = 0; let mut differ = 0; let mut valid = 0;
    for n in nums.iter().take(50_000) {
        let (a, b) = (old(n), new(n));
        if a == b { agree += 1 } else { differ += 1; if differ <= 10 { println!("differ: {n}: old {a:?} new {b:?}"); } }
        if a.is_some() { valid += 1 }
    }
    println!("agree {agree} differ {differ} (valid by old: {valid})");
    let t = Instant::now(); let mut c = 0; for n in &nums { if old(n).is_some() { c += 1 } } let o = t.elapsed();
    let t = Instant::now(); let mut d = 0; for n in &nums { if new(n).is_some() { d += 1 } } let w = t.elapsed();
    println!("phonenumber: {:.0}/s ({c} valid); rlibphonenumber: {:.0}/s ({d} valid)", nums.len() as f64 / o.as_secs_f64(), nums.len() as f64 / w.as_secs_f64());
}

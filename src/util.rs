//! Small shared pieces: clocks, fingerprints and masks that keep personal data out of logs.

use sha2::{Digest, Sha256};

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A short, stable, non-reversible reference to a personal value (user id, token,
/// phone) for logs and outcome records: the first 12 hex digits of its SHA-256.
pub fn fingerprint(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    hex::encode(&digest[..6])
}

/// A phone number with all but the country prefix and last two digits hidden:
/// `+1415*****71`.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().collect();
    if digits.len() <= 6 {
        return "*".repeat(digits.len());
    }
    let head: String = digits[..4].iter().collect();
    let tail: String = digits[digits.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(digits.len() - 6))
}

/// A card number (or any digit string) reduced to its last four digits: `•••• 4242`.
pub fn mask_card(card: &str) -> String {
    let digits: Vec<char> = card.chars().filter(char::is_ascii_digit).collect();
    let last4: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    format!("•••• {last4}")
}

/// A push token shown by its platform-independent fingerprint only.
pub fn mask_token(token: &str) -> String {
    format!("token:{}", fingerprint(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_hide_the_middle() {
        assert_eq!(mask_phone("+14155552671"), "+141******71");
        assert_eq!(mask_card("4111 1111 1111 4242"), "•••• 4242");
        assert_eq!(mask_card("42"), "•••• 42");
        assert_eq!(fingerprint("u1").len(), 12);
        assert!(!mask_token("secret-token").contains("secret"));
    }
}

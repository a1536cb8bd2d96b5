//! Small helpers: clock, base64url, random identifiers.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Current time as unix seconds (0 if the clock is before 1970).
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// base64url without padding, as used by JWS and JWK.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// `N` bytes from the OS random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// An opaque access token like ProConnect's: 32 random bytes, base64url, 43 characters.
pub fn random_token() -> String {
    b64url(&random_bytes::<32>())
}

/// A key id: 16 random bytes, base64url (22 characters).
pub fn random_kid() -> String {
    b64url(&random_bytes::<16>())
}

/// Formats 16 bytes as a UUID version 4 (RFC 9562): sets the version and variant bits.
pub fn format_uuid_v4(mut bytes: [u8; 16]) -> String {
    if let Some(b) = bytes.get_mut(6) {
        *b = (*b & 0x0f) | 0x40;
    }
    if let Some(b) = bytes.get_mut(8) {
        *b = (*b & 0x3f) | 0x80;
    }
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A random UUID v4, the shape of ProConnect's `sub`.
pub fn random_uuid_v4() -> String {
    format_uuid_v4(random_bytes::<16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_43_chars_of_base64url() {
        let token = random_token();
        assert_eq!(token.len(), 43);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(token, random_token());
    }

    #[test]
    fn uuid_v4_format() {
        assert_eq!(
            format_uuid_v4([0xff; 16]),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(
            format_uuid_v4([0; 16]),
            "00000000-0000-4000-8000-000000000000"
        );
        let u = random_uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(u.chars().nth(14), Some('4'));
        assert!(matches!(u.chars().nth(19), Some('8' | '9' | 'a' | 'b')));
    }

    #[test]
    fn b64url_roundtrip() {
        let data = [0xfb, 0xff, 0x00, 0x10];
        let text = b64url(&data);
        assert_eq!(text, "-_8AEA");
        assert_eq!(b64url_decode(&text), Some(data.to_vec()));
    }
}

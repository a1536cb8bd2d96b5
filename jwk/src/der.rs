//! The few DER structures (ITU-T X.690) a native signature check needs, written from JWK
//! members and JWS signatures:
//!
//! - a `SubjectPublicKeyInfo` (RFC 5280 §4.1.2.7) for an RSA key (RFC 3279 §2.3.1: `rsaEncryption`
//!   with NULL parameters, the key an `RSAPublicKey` of modulus and exponent) and for a P-256 key
//!   (RFC 5480 §2: `id-ecPublicKey`, named curve `prime256v1`, the uncompressed point);
//! - an `ECDSA-Sig-Value` (RFC 3279 §2.2.3) from the JWS form of an ES256 signature, `r‖s` of
//!   exactly 64 bytes (RFC 7518 §3.4).
//!
//! Only writing, never parsing: the bytes come from values this crate has already checked.

/// OID 1.2.840.113549.1.1.1, `rsaEncryption`.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// OID 1.2.840.10045.2.1, `id-ecPublicKey`.
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// OID 1.2.840.10045.3.1.7, `prime256v1` (P-256).
const PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const NULL: u8 = 0x05;
const OBJECT_IDENTIFIER: u8 = 0x06;
const SEQUENCE: u8 = 0x30;

/// One TLV: tag, definite length (short form below 128, else long form), contents.
fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = Vec::with_capacity(contents.len() + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let significant = bytes.get(first..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(contents);
    out
}

fn sequence(items: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, &items.concat())
}

/// A non-negative INTEGER from big-endian magnitude bytes: minimal (leading zeros dropped), with
/// a zero byte in front when the high bit is set (X.690 §8.3).
fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let first = magnitude
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(magnitude.len());
    let digits = magnitude.get(first..).unwrap_or_default();
    let mut contents = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|&b| b & 0x80 != 0) {
        contents.push(0);
    }
    contents.extend_from_slice(digits);
    tlv(INTEGER, &contents)
}

/// A BIT STRING of whole bytes (no unused bits).
fn bit_string(bytes: &[u8]) -> Vec<u8> {
    tlv(BIT_STRING, &[&[0u8][..], bytes].concat())
}

/// `SubjectPublicKeyInfo` of an RSA public key, from the JWK's `n` and `e` (big-endian).
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let algorithm = sequence(&[&tlv(OBJECT_IDENTIFIER, RSA_ENCRYPTION), &tlv(NULL, &[])]);
    let key = sequence(&[&unsigned_integer(modulus), &unsigned_integer(exponent)]);
    sequence(&[&algorithm, &bit_string(&key)])
}

/// `SubjectPublicKeyInfo` of a P-256 public key, from the JWK's `x` and `y` (32 bytes each).
pub fn p256_spki(x: &[u8; 32], y: &[u8; 32]) -> Vec<u8> {
    let algorithm = sequence(&[
        &tlv(OBJECT_IDENTIFIER, EC_PUBLIC_KEY),
        &tlv(OBJECT_IDENTIFIER, PRIME256V1),
    ]);
    let point = [&[0x04u8][..], x, y].concat();
    sequence(&[&algorithm, &bit_string(&point)])
}

/// The DER `ECDSA-Sig-Value` of a JWS ES256 signature; `None` unless it is exactly 64 bytes.
pub fn ecdsa_signature(jws_signature: &[u8]) -> Option<Vec<u8>> {
    if jws_signature.len() != 64 {
        return None;
    }
    let (r, s) = jws_signature.split_at(32);
    Some(sequence(&[&unsigned_integer(r), &unsigned_integer(s)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_short_and_long_form() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[7; 200]);
        assert_eq!(long.get(..3).unwrap(), &[0x04, 0x81, 200]);
        assert_eq!(long.len(), 203);
        let longer = tlv(0x04, &[7; 300]);
        assert_eq!(longer.get(..4).unwrap(), &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(tlv(NULL, &[]), vec![0x05, 0]);
    }

    #[test]
    fn integers_are_minimal_and_non_negative() {
        assert_eq!(unsigned_integer(&[0, 0, 1]), vec![0x02, 1, 1]);
        assert_eq!(unsigned_integer(&[0x80]), vec![0x02, 2, 0, 0x80]);
        assert_eq!(
            unsigned_integer(&[0, 0x7f, 0xff]),
            vec![0x02, 2, 0x7f, 0xff]
        );
        // Zero (an all-zero r or s) is one zero byte, never an empty INTEGER.
        assert_eq!(unsigned_integer(&[0, 0]), vec![0x02, 1, 0]);
        assert_eq!(unsigned_integer(&[]), vec![0x02, 1, 0]);
        assert_eq!(unsigned_integer(&[1, 0, 1]), vec![0x02, 3, 1, 0, 1]);
    }

    #[test]
    fn ecdsa_signature_needs_exactly_64_bytes() {
        for len in [0, 1, 32, 63, 65, 72, 128] {
            assert_eq!(ecdsa_signature(&vec![1; len]), None, "{len}");
        }
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r: high bit set, needs a zero byte
        raw[63] = 1; // s: 31 leading zeros dropped
        let der = ecdsa_signature(&raw).unwrap();
        let r = [&[0x02, 33, 0][..], &raw[..32]].concat();
        assert_eq!(der, [&[0x30, 35 + 3][..], &r, &[0x02, 1, 1]].concat());
    }

    #[test]
    fn p256_spki_layout() {
        let spki = p256_spki(&[0x11; 32], &[0x22; 32]);
        // 91 bytes: the usual size of a P-256 SubjectPublicKeyInfo.
        assert_eq!(spki.len(), 91);
        assert_eq!(spki.get(..4).unwrap(), &[0x30, 0x59, 0x30, 0x13]);
        assert_eq!(spki.get(23..26).unwrap(), &[0x03, 0x42, 0x00]);
        assert_eq!(spki.get(26), Some(&0x04));
    }

    #[test]
    fn rsa_spki_layout() {
        let modulus = [0xc5; 256];
        let spki = rsa_spki(&modulus, &[1, 0, 1]);
        // The usual 294 bytes of a 2048-bit RSA key with exponent 65537.
        assert_eq!(spki.len(), 294);
        assert_eq!(spki.get(..4).unwrap(), &[0x30, 0x82, 0x01, 0x22]);
        assert_eq!(
            spki.get(4..19).unwrap(),
            &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
                0x00
            ]
        );
        assert_eq!(spki.get(spki.len() - 5..).unwrap(), &[0x02, 0x03, 1, 0, 1]);
    }
}

//! Envoy's `verify_signature` foreign function (`source/extensions/common/wasm/foreign.cc`):
//! BoringSSL checks a signature for the module. Its argument and result are protobuf messages
//! (`ext/verify_signature.proto`):
//!
//! ```text
//! VerifySignatureArguments { string hash_function = 1; bytes public_key = 2;  // DER SPKI
//!                            bytes signature = 3; bytes text = 4; string public_key_pem = 5; }
//! VerifySignatureResult    { bool result = 1; string error = 2; }
//! ```
//!
//! What Envoy 1.40 does with bad input (measured): most of it is not an error. A key of the
//! wrong type, an unparsable key, an unknown hash name all come back `Ok` with `result` false and
//! a message; so does an ECDSA signature in its raw JWS form. Only `result == true` is a valid
//! signature, and the caller matches the key's type to the algorithm itself. A malformed message,
//! no key or two keys are `BadArgument`; an Envoy without the function answers `NotFound`.

use crate::fault::HostError;
use crate::host::Host;
use crate::jwt::{NativeFailure, NativeVerifier, Spki};

/// The function's registered name.
pub const VERIFY_SIGNATURE: &str = "verify_signature";

/// The hash name BoringSSL's utility knows for SHA-256 (not `sha-256`, not `SHA256`).
const SHA256: &str = "sha256";

/// Protobuf wire types (protobuf encoding guide, "Message Structure").
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field (strings, bytes). Empty values are left out, as proto3 does.
fn put_bytes(out: &mut Vec<u8>, field: u8, value: &[u8]) {
    if value.is_empty() {
        return;
    }
    out.push(field << 3 | LEN);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// The serialised `VerifySignatureArguments` of a SHA-256 check with a DER key.
pub fn arguments(spki: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spki.len() + signature.len() + text.len() + 24);
    put_bytes(&mut out, 1, SHA256.as_bytes());
    put_bytes(&mut out, 2, spki);
    put_bytes(&mut out, 3, signature);
    put_bytes(&mut out, 4, text);
    out
}

/// Reads a varint at `*at`, moving past it; `None` if truncated or longer than 10 bytes.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// `VerifySignatureResult.result`. Strict: `true` only from one field 1 holding exactly 1;
/// a truncated message, an unknown wire type or a repeated `result` is unreadable. Other fields
/// (the error message) are skipped unread.
pub fn result(bytes: &[u8]) -> Result<bool, NativeFailure> {
    let mut at = 0;
    let mut result = None;
    while at < bytes.len() {
        let key = varint(bytes, &mut at).ok_or(NativeFailure::Unreadable)?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        match (field, wire) {
            (1, VARINT) => {
                let value = varint(bytes, &mut at).ok_or(NativeFailure::Unreadable)?;
                if result.is_some() || value > 1 {
                    return Err(NativeFailure::Unreadable);
                }
                result = Some(value == 1);
            }
            (0, _) | (1, _) => return Err(NativeFailure::Unreadable),
            (_, VARINT) => {
                varint(bytes, &mut at).ok_or(NativeFailure::Unreadable)?;
            }
            (_, LEN) => {
                let len = varint(bytes, &mut at).ok_or(NativeFailure::Unreadable)?;
                let len = usize::try_from(len).map_err(|_| NativeFailure::Unreadable)?;
                at = at
                    .checked_add(len)
                    .filter(|&end| end <= bytes.len())
                    .ok_or(NativeFailure::Unreadable)?;
            }
            (_, I64) | (_, I32) => {
                let width = if wire == I64 { 8 } else { 4 };
                at = at
                    .checked_add(width)
                    .filter(|&end| end <= bytes.len())
                    .ok_or(NativeFailure::Unreadable)?;
            }
            _ => return Err(NativeFailure::Unreadable),
        }
    }
    // proto3 leaves a false `result` out.
    Ok(result.unwrap_or(false))
}

/// The proxy's `verify_signature`, reached through the host port.
pub struct HostVerifier<'a, H: Host>(pub &'a H);

impl<H: Host> NativeVerifier for HostVerifier<'_, H> {
    fn verify_sha256(
        &self,
        spki: &Spki,
        signature: &[u8],
        text: &[u8],
    ) -> Result<bool, NativeFailure> {
        let args = arguments(spki.der(), signature, text);
        match self.0.call_foreign(VERIFY_SIGNATURE, &args) {
            Ok(answer) => result(&answer),
            Err(HostError::Status(NOT_FOUND)) => Err(NativeFailure::Missing),
            Err(HostError::Status(BAD_ARGUMENT)) => Err(NativeFailure::Refused),
            Err(HostError::Status(status)) => Err(NativeFailure::Status(status)),
            Err(_) => Err(NativeFailure::Unreadable),
        }
    }
}

/// proxy-wasm ABI statuses.
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_the_proto_fields_in_order() {
        let args = arguments(&[0xaa; 3], &[0xbb; 200], b"t");
        let mut expected = vec![0x0a, 6];
        expected.extend_from_slice(b"sha256");
        expected.extend_from_slice(&[0x12, 3, 0xaa, 0xaa, 0xaa]);
        expected.extend_from_slice(&[0x1a, 0xc8, 0x01]);
        expected.extend_from_slice(&[0xbb; 200]);
        expected.extend_from_slice(&[0x22, 1, b't']);
        assert_eq!(args, expected);
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, 1 << 20, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut at = 0;
            assert_eq!(varint(&out, &mut at), Some(value));
            assert_eq!(at, out.len());
        }
        // Truncated, or more than ten bytes.
        assert_eq!(varint(&[0x80], &mut 0), None);
        assert_eq!(varint(&[0xff; 11], &mut 0), None);
    }

    #[test]
    fn only_one_true_result_is_true() {
        assert_eq!(result(&[0x08, 1]), Ok(true));
        assert_eq!(result(&[]), Ok(false));
        assert_eq!(result(&[0x08, 0]), Ok(false));
        // The error message is skipped, before or after.
        let with_error = [&[0x12, 3][..], b"bad", &[0x08, 1]].concat();
        assert_eq!(result(&with_error), Ok(true));
        assert_eq!(result(&[0x08, 0, 0x12, 2, b'n', b'o']), Ok(false));
        // Unknown fields of every wire type are skipped.
        let unknown = [
            &[0x18, 0x96, 0x01][..],
            &[0x21, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0x2d, 1, 2, 3, 4],
            &[0x08, 1],
        ]
        .concat();
        assert_eq!(result(&unknown), Ok(true));
    }

    #[test]
    fn odd_results_are_unreadable_never_true() {
        for bytes in [
            &[0x08, 2][..],      // not a bool
            &[0x08, 1, 0x08, 1], // repeated
            &[0x08, 0, 0x08, 1], // repeated, last would win in protobuf
            &[0x08],             // truncated
            &[0x0a, 1, 1],       // field 1 with the wrong wire type
            &[0x12, 5, b'a'],    // length past the end
            &[
                0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[0x0b],       // group start
            &[0x00],       // field 0
            &[0x21, 1, 2], // fixed64 truncated
        ] {
            assert_eq!(result(bytes), Err(NativeFailure::Unreadable), "{bytes:?}");
        }
    }
}

//! A stand-in for Envoy's `verify_signature` foreign function, for native tests: it reads the
//! protobuf arguments and answers like Envoy 1.40 does (measured there): malformed arguments or
//! no key are `BadArgument`; an unknown hash name, an unparsable key, a key of another type or a
//! signature in the wrong form are `Ok` with `result` false and an error message.
//!
//! For the gate's tests (`#[path]`); the check itself is jose/tests/support/boringssl.rs.
#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::HashMap;

use introspection_core::HostError;

// BoringSSL's check itself, shared with the JWS verifier's unit tests.
#[path = "../../../jose/tests/support/boringssl.rs"]
mod boringssl;
pub use boringssl::check;

const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;

/// The length-delimited fields of a protobuf message; `None` if it is malformed.
fn fields(mut bytes: &[u8]) -> Option<HashMap<u64, Vec<u8>>> {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut out = HashMap::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        if key & 7 != 2 {
            return None;
        }
        let len = usize::try_from(varint(&mut bytes)?).ok()?;
        if len > bytes.len() {
            return None;
        }
        let (value, rest) = bytes.split_at(len);
        out.insert(key >> 3, value.to_vec());
        bytes = rest;
    }
    Some(out)
}

fn answer(valid: bool, error: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if valid {
        out.extend_from_slice(&[0x08, 1]);
    }
    if !error.is_empty() {
        out.push(0x12);
        out.push(error.len() as u8);
        out.extend_from_slice(error.as_bytes());
    }
    out
}

/// Envoy's `verify_signature`, natively.
pub fn verify_signature(function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostError> {
    if function != "verify_signature" {
        return Err(HostError::Status(NOT_FOUND));
    }
    let fields = fields(arguments).ok_or(HostError::Status(BAD_ARGUMENT))?;
    let empty = Vec::new();
    let get = |n| fields.get(&n).unwrap_or(&empty);
    let (hash, key, signature, text) = (get(1), get(2), get(3), get(4));
    match (key.is_empty(), fields.contains_key(&5)) {
        (true, false) | (false, true) => return Err(HostError::Status(BAD_ARGUMENT)),
        _ => {}
    }
    let (valid, error) = check(hash, key, signature, text);
    Ok(answer(valid, error))
}

/// A proxy whose function says yes to everything.
pub fn always_valid(_: &str, _: &[u8]) -> Result<Vec<u8>, HostError> {
    Ok(vec![0x08, 1])
}

/// A proxy whose function says no to everything.
pub fn never_valid(_: &str, _: &[u8]) -> Result<Vec<u8>, HostError> {
    Ok(Vec::new())
}

/// A proxy whose function refuses every argument.
pub fn refusing(_: &str, _: &[u8]) -> Result<Vec<u8>, HostError> {
    Err(HostError::Status(BAD_ARGUMENT))
}

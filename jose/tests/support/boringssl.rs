//! BoringSSL's signature check as Envoy's `verify_signature` makes it, for native tests:
//! whether a signature over a text verifies with a DER `SubjectPublicKeyInfo`, and the message
//! Envoy 1.40 returns when it does not (measured there). The protobuf around it is
//! core/tests/support/envoy_crypto.rs.
//!
//! Shared by the JWS verifier's unit tests and core's integration tests (`#[path]`).
#![allow(dead_code)]

use rsa::pkcs8::DecodePublicKey as _;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha2::{Digest, Sha256};

/// BoringSSL's check as Envoy calls it: whether `signature` over `text` verifies with the DER
/// key, and the error message when it does not.
pub fn check(hash: &[u8], key: &[u8], signature: &[u8], text: &[u8]) -> (bool, &'static str) {
    if hash != b"sha256" {
        return (false, "unknown hash function");
    }
    let digest = Sha256::digest(text);
    let valid = if let Ok(public) = RsaPublicKey::from_public_key_der(key) {
        public
            .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
            .is_ok()
    } else if let Ok(public) = p256::ecdsa::VerifyingKey::from_public_key_der(key) {
        use p256::ecdsa::signature::Verifier as _;
        p256::ecdsa::Signature::from_der(signature)
            .map(|sig| public.verify(text, &sig).is_ok())
            .unwrap_or(false)
    } else {
        return (false, "Failed to import public key");
    };
    (valid, if valid { "" } else { "Failed to verify digest" })
}

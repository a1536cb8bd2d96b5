//! The JWS verifier on arbitrary input, against fixed keys (HS256 secret, the RFC 7515/7517
//! public keys), with the module's crypto and through the proxy's (a stand-in that refuses
//! every signature): never panics, never accepts what it was not signed with. The proxy's
//! protobuf answer reader and the DER writer get the same bytes.
#![no_main]

use introspection_core::jwt::{
    self, Crypto, Expectations, KeySet, Keys, NativeFailure, NativeVerifier, SigningAlg, Spki,
};
use introspection_core::{der, foreign};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static KeySet {
    static K: OnceLock<KeySet> = OnceLock::new();
    K.get_or_init(|| {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../jose/tests/fixtures/rfc-vectors.json"))
                .unwrap_or_else(|e| panic!("{e}"));
        let jwks = vectors["rfc7517_a1_public_jwks"].to_string();
        KeySet::from_jwks(jwks.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// A proxy that checks nothing and refuses everything.
struct Refusing;

impl NativeVerifier for Refusing {
    fn verify_sha256(&self, _: &Spki, _: &[u8], _: &[u8]) -> Result<bool, NativeFailure> {
        Ok(false)
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = foreign::result(data);
    if let Some(der) = der::ecdsa_signature(data) {
        assert!(der.len() <= 72);
    }
    for alg in [SigningAlg::RS256, SigningAlg::ES256, SigningAlg::HS256] {
        let expect = Expectations {
            alg,
            issuer: "https://as",
            client_id: "sr",
            now: 1_790_000_000,
            leeway: 30,
            max_age: 120,
        };
        let keys = match alg {
            SigningAlg::HS256 => Keys::Secret(b"the-client-secret"),
            _ => Keys::Jwks(keys()),
        };
        // Random bytes are never a valid signature under these keys.
        for crypto in [Crypto::Wasm, Crypto::Native(&Refusing)] {
            assert!(jwt::verify(data, keys, crypto, &expect).is_err());
        }
    }
});

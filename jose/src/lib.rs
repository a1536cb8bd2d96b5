//! Signed introspection answers (RFC 9701) and the JSON they are made of: verifying a compact JWS
//! (RFC 7515) against a JWK Set (RFC 7517) or the client secret, its claims (RFC 7519), the DER
//! forms Envoy's crypto reads (X.690), and strict JSON that refuses a member given twice.
//!
//! Pure, like `introspection-core`, which re-exports these modules under the same names. A crate
//! of its own for one reason: jwt-compact's parsing and base64 decoding are generic, so they are
//! compiled at the optimisation level of the crate that uses them, and the filter builds this one
//! for speed while the rest of the core is built for size (the workspace's `profile.wasm`).

pub mod claims;
pub mod json;
pub mod jwt;

// The DER writer lives with the keys it serves (`introspection-jwk`), under its name here.
pub use introspection_jwk::der;

//! JSON Web Keys (RFC 7517) for the introspection filter: a JWK Set read into the public keys
//! signed answers are checked with, and the DER forms (X.690) the proxy's crypto reads.
//!
//! A crate of its own, apart from `introspection-jose`, so that it keeps the core's size-first
//! build (it runs once per JWKS fetch) while the JWS verification is built for speed: see the
//! workspace's `profile.wasm`.

pub mod der;
pub mod jwks;

pub use jwks::{Entry, KeySet, Spki};

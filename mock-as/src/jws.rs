//! Compact JWS (RFC 7515) building: header and payload are serialized here, the
//! signature primitive comes from jwt-compact's `Algorithm::sign`, so the signing input
//! and every byte of the output are under our control (needed by the tamper modes).

use crate::util::{b64url, b64url_decode};
use jwt_compact::alg::{Es256, Hs256, Hs256Key, Rsa};
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use rsa::RsaPrivateKey;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;

/// Entries kept by [`SignatureCache`] before it is emptied.
pub const SIGNATURE_CACHE_CAPACITY: usize = 4_096;

/// Memoizes RS256/ES256 signatures by signing input. Both are deterministic here
/// (PKCS#1 v1.5; ECDSA with RFC 6979 nonces), so a cached signature is byte-for-byte the
/// one a fresh signing would give; the header's `kid` (random, 128 bits) ties each input
/// to one key. Under load the same answer is signed many times per second (`iat` has a
/// one-second resolution), and RSA signing is the costliest step of a request.
#[derive(Debug, Default)]
pub struct SignatureCache {
    entries: Mutex<HashMap<String, Vec<u8>>>,
}

impl SignatureCache {
    /// Returns the cached signature of `input`, or signs and remembers it.
    fn sign(&self, signer: Signer<'_>, input: &str) -> Vec<u8> {
        if let Some(sig) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(input)
        {
            return sig.clone();
        }
        let sig = signer.sign(input.as_bytes());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= SIGNATURE_CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(input.to_owned(), sig.clone());
        sig
    }
}

/// A key able to sign, with its algorithm.
#[derive(Debug, Clone, Copy)]
pub enum Signer<'a> {
    /// RS256 with an RSA private key.
    Rs256(&'a RsaPrivateKey),
    /// ES256 with a P-256 private key.
    Es256(&'a p256::ecdsa::SigningKey),
    /// HS256 with raw secret bytes.
    Hs256(&'a [u8]),
}

impl Signer<'_> {
    /// The JWS `alg` name.
    pub fn alg(&self) -> &'static str {
        match self {
            Self::Rs256(_) => "RS256",
            Self::Es256(_) => "ES256",
            Self::Hs256(_) => "HS256",
        }
    }

    /// Signs `input` (the ASCII `header.payload`), returning the raw JWS signature bytes
    /// (PKCS#1 v1.5 block, `r||s` for ES256, the HMAC for HS256).
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Self::Rs256(key) => Rsa::rs256().sign(key, input).as_bytes().into_owned(),
            Self::Es256(key) => Es256.sign(key, input).as_bytes().into_owned(),
            Self::Hs256(secret) => Hs256
                .sign(&Hs256Key::new(secret), input)
                .as_bytes()
                .into_owned(),
        }
    }
}

/// A JOSE header: `alg`, `typ` and an optional `kid`, serialized in that order.
#[derive(Debug, Clone, Serialize)]
pub struct JwsHeader<'a> {
    /// Algorithm name.
    pub alg: &'a str,
    /// Media type of the whole JWS.
    pub typ: &'a str,
    /// Key id, absent for HS256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<&'a str>,
}

/// `base64url(header).base64url(payload)`.
pub fn signing_input(header: &JwsHeader<'_>, payload: &[u8]) -> Result<String, String> {
    let header = serde_json::to_vec(header).map_err(|e| e.to_string())?;
    Ok(format!("{}.{}", b64url(&header), b64url(payload)))
}

/// A signed compact JWS. The header's `alg` should match the signer (it is not forced,
/// so a tamper mode may lie). RS256/ES256 signatures of a header with a `kid` go through
/// `cache` when one is given.
pub fn sign_compact(
    header: &JwsHeader<'_>,
    payload: &[u8],
    signer: Signer<'_>,
    cache: Option<&SignatureCache>,
) -> Result<String, String> {
    let input = signing_input(header, payload)?;
    let signature = match (cache, signer, header.kid) {
        (Some(cache), Signer::Rs256(_) | Signer::Es256(_), Some(_)) => cache.sign(signer, &input),
        _ => signer.sign(input.as_bytes()),
    };
    Ok(format!("{input}.{}", b64url(&signature)))
}

/// An unsecured JWS (`header.payload.` with an empty signature part).
pub fn unsigned_compact(header: &JwsHeader<'_>, payload: &[u8]) -> Result<String, String> {
    Ok(format!("{}.", signing_input(header, payload)?))
}

/// Splits a compact JWS into its three parts.
fn parts(jws: &str) -> Option<(&str, &str, &str)> {
    let mut it = jws.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => Some((h, p, s)),
        _ => None,
    }
}

/// Flips one bit in the middle of the decoded signature and re-encodes it.
pub fn flip_signature_bit(jws: &str) -> Option<String> {
    let (h, p, s) = parts(jws)?;
    let mut sig = b64url_decode(s)?;
    let middle = sig.len() / 2;
    *sig.get_mut(middle)? ^= 0x01;
    Some(format!("{h}.{p}.{}", b64url(&sig)))
}

/// Replaces the signature by what `change` makes of its bytes.
pub fn change_signature(jws: &str, change: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Option<String> {
    let (h, p, s) = parts(jws)?;
    let sig = b64url_decode(s)?;
    Some(format!("{h}.{p}.{}", b64url(&change(sig))))
}

/// The two halves of `sig` as a DER SEQUENCE of two non-negative INTEGERs (X.690), the form of
/// an ECDSA signature outside JWS. Lengths stay below 128 for ES256's 32-byte halves.
pub fn der_of_halves(sig: &[u8]) -> Vec<u8> {
    let integer = |half: &[u8]| {
        let start = half.iter().position(|&b| b != 0).unwrap_or(half.len());
        let mut digits = half.get(start..).unwrap_or_default().to_vec();
        if digits.first().is_none_or(|&b| b & 0x80 != 0) {
            digits.insert(0, 0);
        }
        let mut out = vec![0x02, digits.len() as u8];
        out.extend_from_slice(&digits);
        out
    };
    let (r, s) = sig.split_at(sig.len() / 2);
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// Replaces the payload, keeping the original header and signature.
pub fn replace_payload(jws: &str, payload: &[u8]) -> Option<String> {
    let (h, _, s) = parts(jws)?;
    Some(format!("{h}.{}.{s}", b64url(payload)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use jwt_compact::{AlgorithmExt as _, UntrustedToken};
    use rand::rngs::OsRng;

    const PAYLOAD: &[u8] = br#"{"token_introspection":{"active":false},"aud":"sr","iat":1790000000,"iss":"http://as/api/v2"}"#;

    fn decode_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&b64url_decode(part).unwrap()).unwrap()
    }

    #[test]
    fn der_of_halves_is_a_sequence_of_two_minimal_integers() {
        let mut sig = [0u8; 64];
        sig[0] = 0x80;
        sig[63] = 7;
        let der = der_of_halves(&sig);
        let mut r = vec![0x02, 33, 0];
        r.extend_from_slice(&sig[..32]);
        let expected = [vec![0x30, 38], r, vec![0x02, 1, 7]].concat();
        assert_eq!(der, expected);
    }

    #[test]
    fn hs256_is_standard_and_verifies() {
        let header = JwsHeader {
            alg: "HS256",
            typ: "token-introspection+jwt",
            kid: None,
        };
        let jws = sign_compact(&header, PAYLOAD, Signer::Hs256(b"secret"), None).unwrap();
        let (h, p, _) = parts(&jws).unwrap();
        assert_eq!(
            b64url_decode(h).unwrap(),
            br#"{"alg":"HS256","typ":"token-introspection+jwt"}"#
        );
        assert_eq!(b64url_decode(p).unwrap(), PAYLOAD);
        let token = UntrustedToken::new(&jws).unwrap();
        assert_eq!(
            token.header().token_type.as_deref(),
            Some("token-introspection+jwt")
        );
        let claims = Hs256
            .validator::<serde_json::Value>(&Hs256Key::new(b"secret"))
            .validate(&token)
            .unwrap();
        assert_eq!(claims.claims().custom["aud"], "sr");
        assert!(Hs256
            .validator::<serde_json::Value>(&Hs256Key::new(b"other"))
            .validate(&token)
            .is_err());
    }

    #[test]
    fn es256_verifies_and_tampering_breaks_it() {
        let key = p256::ecdsa::SigningKey::random(&mut OsRng);
        let header = JwsHeader {
            alg: "ES256",
            typ: "token-introspection+jwt",
            kid: Some("k1"),
        };
        let jws = sign_compact(&header, PAYLOAD, Signer::Es256(&key), None).unwrap();
        let sig = b64url_decode(parts(&jws).unwrap().2).unwrap();
        assert_eq!(sig.len(), 64);
        let again = sign_compact(&header, PAYLOAD, Signer::Es256(&key), None).unwrap();
        assert_eq!(again, jws, "RFC 6979 signatures are deterministic");
        assert_eq!(decode_json(parts(&jws).unwrap().0)["kid"], "k1");
        let verify = |jws: &str| {
            let token = UntrustedToken::new(jws).unwrap();
            Es256
                .validator::<serde_json::Value>(key.verifying_key())
                .validate(&token)
                .is_ok()
        };
        assert!(verify(&jws));
        let flipped = flip_signature_bit(&jws).unwrap();
        assert_ne!(flipped, jws);
        assert!(!verify(&flipped));
        let swapped = replace_payload(&jws, br#"{"token_introspection":{"active":true}}"#).unwrap();
        assert!(!verify(&swapped));
        assert_eq!(parts(&swapped).unwrap().2, parts(&jws).unwrap().2);
    }

    #[test]
    fn rs256_verifies() {
        // A small key keeps the test fast; the signing path is the same as for 2048 bits.
        let key = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let header = JwsHeader {
            alg: "RS256",
            typ: "token-introspection+jwt",
            kid: Some("r1"),
        };
        let jws = sign_compact(&header, PAYLOAD, Signer::Rs256(&key), None).unwrap();
        // Deterministic: the cache returns exactly what signing gives.
        let cache = SignatureCache::default();
        let cached = sign_compact(&header, PAYLOAD, Signer::Rs256(&key), Some(&cache)).unwrap();
        assert_eq!(cached, jws);
        assert_eq!(
            sign_compact(&header, PAYLOAD, Signer::Rs256(&key), Some(&cache)).unwrap(),
            jws
        );
        let token = UntrustedToken::new(&jws).unwrap();
        let public = key.to_public_key();
        assert!(Rsa::rs256()
            .validator::<serde_json::Value>(&public)
            .validate(&token)
            .is_ok());
    }

    #[test]
    fn unsigned_has_empty_signature() {
        let header = JwsHeader {
            alg: "none",
            typ: "token-introspection+jwt",
            kid: None,
        };
        let jws = unsigned_compact(&header, PAYLOAD).unwrap();
        assert!(jws.ends_with('.'));
        assert_eq!(decode_json(parts(&jws).unwrap().0)["alg"], "none");
    }
}

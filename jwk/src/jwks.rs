//! A JWK Set (RFC 7517 §5) read into the public keys signed answers are checked with: RSA keys
//! of at least 2048 bits for RS256 and P-256 keys for ES256 (RFC 7518 §6), each kept both as the
//! module's crypto reads it and as the DER `SubjectPublicKeyInfo` the proxy's reads. Keys that
//! cannot serve are skipped and counted, not fatal.

use base64::Engine as _;
use jwt_compact::alg::{RsaPublicKey, StrongKey};
use p256::ecdsa::VerifyingKey as EcKey;
use rsa::BigUint;
use serde::Deserialize;
use serde_json::Value;

use crate::der;

/// A JWK Set (RFC 7517 §5): only `keys` is read.
#[derive(Deserialize)]
struct Jwks {
    keys: Option<Vec<Value>>,
}

/// The members of a public JWK (RFC 7517 §4, RFC 7518 §6) needed for RS256 and ES256.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// One public key of a JWKS: parsed for the checks done in the module, and as the DER
/// `SubjectPublicKeyInfo` the proxy's own crypto reads, both built once per JWKS.
#[derive(Clone)]
pub struct Entry<K> {
    kid: Option<String>,
    key: K,
    spki: Spki,
}

impl<K> Entry<K> {
    /// The key, for the module's own crypto.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The same key as DER, for the proxy's.
    pub fn spki(&self) -> &Spki {
        &self.spki
    }
}

/// A DER `SubjectPublicKeyInfo` (RFC 5280 §4.1.2.7).
#[derive(Clone, PartialEq, Eq)]
pub struct Spki(Vec<u8>);

impl Spki {
    pub fn der(&self) -> &[u8] {
        &self.0
    }
}

/// Public keys parsed once from a JWKS, kept by type.
#[derive(Default, Clone)]
pub struct KeySet {
    rsa: Vec<Entry<RsaPublicKey>>,
    ec: Vec<Entry<EcKey>>,
    /// Keys that were skipped (unsupported type, curve, size or use): for logs.
    pub skipped: usize,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "rsa_kids",
                &self.rsa.iter().map(|e| &e.kid).collect::<Vec<_>>(),
            )
            .field(
                "ec_kids",
                &self.ec.iter().map(|e| &e.kid).collect::<Vec<_>>(),
            )
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys":[...]}`). Keys that cannot serve for signature
    /// verification with RS256 or ES256 are skipped, not fatal: a JWKS may hold other keys.
    pub fn from_jwks(bytes: &[u8]) -> Result<KeySet, &'static str> {
        let doc: Jwks = serde_json::from_slice(bytes).map_err(|_| "JWKS is not valid JSON")?;
        let keys = doc.keys.ok_or("JWKS has no `keys` array")?;
        let mut set = KeySet::default();
        for key in keys {
            // Each key on its own: one key of an unknown shape is skipped, not fatal.
            let added = serde_json::from_value::<Jwk>(key)
                .ok()
                .and_then(|jwk| set.add(jwk));
            if added.is_none() {
                set.skipped += 1;
            }
        }
        Ok(set)
    }

    fn add(&mut self, jwk: Jwk) -> Option<()> {
        if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let member = |text: &Option<String>| -> Option<Vec<u8>> {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.as_deref()?.trim_end_matches('='))
                .ok()
        };
        let alg = jwk.alg.as_deref();
        match jwk.kty.as_str() {
            "RSA" => {
                if alg.is_some_and(|a| a != "RS256") {
                    return None;
                }
                let (n, e) = (member(&jwk.n)?, member(&jwk.e)?);
                let public =
                    RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
                        .ok()?;
                // At least 2048 bits (RFC 7518 §3.3).
                let strong = StrongKey::try_from(public).ok()?;
                self.rsa.push(Entry {
                    kid: jwk.kid,
                    key: strong.into_inner(),
                    spki: Spki(der::rsa_spki(&n, &e)),
                });
            }
            "EC" => {
                if jwk.crv.as_deref() != Some("P-256") || alg.is_some_and(|a| a != "ES256") {
                    return None;
                }
                let (x, y) = (fixed_32(&member(&jwk.x)?)?, fixed_32(&member(&jwk.y)?)?);
                let point = p256::EncodedPoint::from_affine_coordinates(
                    &p256::FieldBytes::from(x),
                    &p256::FieldBytes::from(y),
                    false,
                );
                // On the curve: checked here for both ways of verifying.
                let key = EcKey::from_encoded_point(&point).ok()?;
                self.ec.push(Entry {
                    kid: jwk.kid,
                    key,
                    spki: Spki(der::p256_spki(&x, &y)),
                });
            }
            _ => return None,
        }
        Some(())
    }

    /// The RSA key for `kid` (see [`KeySet::select`]).
    pub fn rsa(&self, kid: Option<&str>) -> Option<&Entry<RsaPublicKey>> {
        Self::select(&self.rsa, kid)
    }

    /// The P-256 key for `kid` (see [`KeySet::select`]).
    pub fn ec(&self, kid: Option<&str>) -> Option<&Entry<EcKey>> {
        Self::select(&self.ec, kid)
    }

    pub fn has_rsa(&self) -> bool {
        !self.rsa.is_empty()
    }

    pub fn has_ec(&self) -> bool {
        !self.ec.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rsa.len() + self.ec.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for `kid`: the one with that kid, or, for a token without kid (or a key set
    /// without kids), the only key of the type.
    fn select<'a, K>(keys: &'a [Entry<K>], kid: Option<&str>) -> Option<&'a Entry<K>> {
        if let Some(kid) = kid {
            if let Some(entry) = keys.iter().find(|e| e.kid.as_deref() == Some(kid)) {
                return Some(entry);
            }
        }
        match keys {
            [only] if only.kid.is_none() || kid.is_none() => Some(only),
            _ => None,
        }
    }
}

fn fixed_32(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The RFC reference vectors (jose/tests/fixtures/rfc-vectors.json).
    fn vectors() -> Value {
        serde_json::from_str(include_str!("../../jose/tests/fixtures/rfc-vectors.json")).unwrap()
    }

    /// The public parts of RFC 7515 A.2 (RSA) and A.3 (P-256), and a symmetric key.
    fn jwks() -> Vec<u8> {
        let v = vectors();
        let public = |jwk: &Value, kid: &str| {
            let mut jwk = jwk.clone();
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                jwk.as_object_mut().unwrap().remove(private);
            }
            jwk["kid"] = json!(kid);
            jwk
        };
        json!({"keys": [
            public(&v["rfc7515_a2_rsa_private"], "rsa-1"),
            public(&v["rfc7515_a3_ec_private"], "ec-1"),
            {"kty":"oct","k":"AAAA"}]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn rfc7517_a1_jwks_keeps_the_rsa_signing_key_and_skips_the_encryption_key() {
        let jwks = vectors()["rfc7517_a1_public_jwks"].to_string();
        let set = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        assert_eq!((set.rsa.len(), set.ec.len(), set.skipped), (1, 0, 1));
        assert!(set.rsa(Some("2011-04-29")).is_some());
        assert!(set.rsa(Some("another")).is_none());
    }

    #[test]
    fn jwks_parsing_keeps_usable_keys() {
        let set = KeySet::from_jwks(&jwks()).unwrap();
        assert_eq!((set.rsa.len(), set.ec.len(), set.skipped), (1, 1, 1));
        assert_eq!(
            KeySet::from_jwks(b"{}").err(),
            Some("JWKS has no `keys` array")
        );
        assert_eq!(
            KeySet::from_jwks(b"nope").err(),
            Some("JWKS is not valid JSON")
        );
        let weak = json!({"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}).to_string();
        assert!(KeySet::from_jwks(weak.as_bytes()).unwrap().is_empty());
    }

    #[test]
    fn a_key_is_selected_by_kid_or_as_the_only_one_of_its_type() {
        let set = KeySet::from_jwks(&jwks()).unwrap();
        assert!(set.rsa(Some("rsa-1")).is_some());
        assert!(set.ec(Some("ec-1")).is_some());
        // The kid of another type's key does not select across types.
        assert!(set.rsa(Some("ec-1")).is_none());
        // No kid in the token: the only key of the type.
        assert!(set.rsa(None).is_some());
        // Each entry's DER is the SPKI of its own key.
        let rsa = set.rsa(None).unwrap();
        let ec = set.ec(None).unwrap();
        assert_eq!(rsa.spki().der()[..2], [0x30, 0x82]);
        assert_eq!(ec.spki().der().len(), 91);
    }
}

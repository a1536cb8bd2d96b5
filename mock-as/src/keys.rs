//! Signing keys and the published JWKS.
//!
//! One RSA-2048 key (RS256) and one P-256 key (ES256) sign at any time. Rotation puts new
//! keys first in the JWKS and keeps the old ones published until they are retired.

use crate::util::{b64url, random_kid};
use rand::rngs::OsRng;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::Serialize;
use std::sync::Arc;

/// One published JSON Web Key (public part only).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Jwk {
    /// `RSA` or `EC`.
    pub kty: &'static str,
    /// Curve (`P-256`) for EC keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    /// EC x coordinate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Key id.
    pub kid: String,
    /// `RS256` or `ES256`.
    pub alg: &'static str,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: &'static str,
}

/// An RSA signing key with its kid, JWK and SPKI PEM.
#[derive(Debug)]
pub struct RsaKey {
    /// Key id.
    pub kid: String,
    /// Private key (RS256 signing).
    pub private: RsaPrivateKey,
    /// Public JWK.
    pub jwk: Jwk,
    /// Public key as PEM (SubjectPublicKeyInfo, LF line endings), for the
    /// `hs256_rsa_pubkey` key-confusion tamper.
    pub public_pem: String,
}

impl RsaKey {
    /// Generates an RSA-2048 key (slow in debug builds: call from a blocking thread).
    pub fn generate() -> Result<Self, String> {
        let private =
            RsaPrivateKey::new(&mut OsRng, 2048).map_err(|e| format!("RSA keygen: {e}"))?;
        Self::from_private(private, random_kid())
    }

    /// Wraps an existing key.
    pub fn from_private(private: RsaPrivateKey, kid: String) -> Result<Self, String> {
        let public = private.to_public_key();
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("RSA PEM: {e}"))?;
        let jwk = Jwk {
            kty: "RSA",
            crv: None,
            x: None,
            y: None,
            n: Some(b64url(&public.n().to_bytes_be())),
            e: Some(b64url(&public.e().to_bytes_be())),
            kid: kid.clone(),
            alg: "RS256",
            use_: "sig",
        };
        Ok(Self {
            kid,
            private,
            jwk,
            public_pem,
        })
    }
}

/// A P-256 signing key with its kid and JWK.
#[derive(Debug)]
pub struct EcKey {
    /// Key id.
    pub kid: String,
    /// Private key (ES256 signing).
    pub private: p256::ecdsa::SigningKey,
    /// Public JWK.
    pub jwk: Jwk,
}

impl EcKey {
    /// Generates a P-256 key.
    pub fn generate() -> Result<Self, String> {
        Self::from_private(p256::ecdsa::SigningKey::random(&mut OsRng), random_kid())
    }

    /// Wraps an existing key.
    pub fn from_private(private: p256::ecdsa::SigningKey, kid: String) -> Result<Self, String> {
        let point = private.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err("EC public key has no affine coordinates".to_owned());
        };
        let jwk = Jwk {
            kty: "EC",
            crv: Some("P-256"),
            x: Some(b64url(x)),
            y: Some(b64url(y)),
            n: None,
            e: None,
            kid: kid.clone(),
            alg: "ES256",
            use_: "sig",
        };
        Ok(Self { kid, private, jwk })
    }
}

/// A pair of fresh keys, one of each type.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// RS256 key.
    pub rsa: Arc<RsaKey>,
    /// ES256 key.
    pub ec: Arc<EcKey>,
}

impl KeyPair {
    /// Generates both keys (blocking).
    pub fn generate() -> Result<Self, String> {
        Ok(Self {
            rsa: Arc::new(RsaKey::generate()?),
            ec: Arc::new(EcKey::generate()?),
        })
    }
}

/// The current signing keys and every published public key. Immutable: rotation builds
/// a new set.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// Keys that sign now.
    pub current: KeyPair,
    /// Published keys, in JWKS order.
    pub published: Vec<Jwk>,
    /// The serialized JWKS document, built once.
    pub jwks_body: Vec<u8>,
}

impl KeySet {
    /// A set that publishes and signs with `pair` (RSA key first).
    pub fn new(pair: KeyPair) -> Self {
        let published = vec![pair.rsa.jwk.clone(), pair.ec.jwk.clone()];
        Self::build(pair, published)
    }

    fn build(current: KeyPair, published: Vec<Jwk>) -> Self {
        #[derive(Serialize)]
        struct Jwks<'a> {
            keys: &'a [Jwk],
        }
        let jwks_body = serde_json::to_vec(&Jwks { keys: &published })
            .unwrap_or_else(|_| b"{\"keys\":[]}".to_vec());
        Self {
            current,
            published,
            jwks_body,
        }
    }

    /// New keys sign from now on; they are published first, the old keys stay published.
    pub fn rotate(&self, pair: KeyPair) -> Self {
        let mut published = vec![pair.rsa.jwk.clone(), pair.ec.jwk.clone()];
        published.extend(self.published.iter().cloned());
        Self::build(pair, published)
    }

    /// Unpublishes every key except the current signing ones.
    pub fn retire(&self) -> Self {
        Self::new(self.current.clone())
    }

    /// Published kids, in JWKS order.
    pub fn kids(&self) -> Vec<String> {
        self.published.iter().map(|k| k.kid.clone()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn jwks_shape_rotation_and_retirement() {
        let first = KeyPair::generate().unwrap();
        let set = KeySet::new(first.clone());
        let doc: serde_json::Value = serde_json::from_slice(&set.jwks_body).unwrap();
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kty"], "RSA");
        assert_eq!(keys[0]["alg"], "RS256");
        assert_eq!(keys[0]["use"], "sig");
        assert_eq!(keys[0]["e"], "AQAB");
        assert_eq!(keys[0]["n"].as_str().unwrap().len(), 342);
        assert!(keys[0].get("crv").is_none());
        assert_eq!(keys[1]["kty"], "EC");
        assert_eq!(keys[1]["crv"], "P-256");
        assert_eq!(keys[1]["alg"], "ES256");
        assert_eq!(keys[1]["x"].as_str().unwrap().len(), 43);
        assert_eq!(keys[1]["y"].as_str().unwrap().len(), 43);
        assert!(first
            .rsa
            .public_pem
            .starts_with("-----BEGIN PUBLIC KEY-----\n"));

        let second = KeyPair {
            rsa: first.rsa.clone(),
            ec: Arc::new(EcKey::generate().unwrap()),
        };
        let rotated = set.rotate(second.clone());
        assert_eq!(
            rotated.kids(),
            [
                first.rsa.kid.clone(),
                second.ec.kid.clone(),
                first.rsa.kid.clone(),
                first.ec.kid.clone()
            ]
        );
        assert_eq!(rotated.current.ec.kid, second.ec.kid);
        let retired = rotated.retire();
        assert_eq!(
            retired.kids(),
            [first.rsa.kid.clone(), second.ec.kid.clone()]
        );
    }
}

//! Signed introspection answers (RFC 9701): their verification, with the keys of a JWK Set
//! (`introspection-jwk`) or the client secret.
//!
//! The configured algorithm alone decides how an answer is checked; the JWS header can only
//! select a key (`kid`) of that algorithm's type. Error messages are fixed strings: a claim
//! value or any part of the token never ends up in a log.

use std::borrow::Cow;

use jwt_compact::alg::{Es256, Hs256, Hs256Key, Rsa};
use jwt_compact::{
    Algorithm, AlgorithmExt, AlgorithmSignature, Claims as JwtClaims, ParseError, UntrustedToken,
    ValidationError,
};
use serde::Deserialize;
use serde_json::Value;

use introspection_jwk::der;
pub use introspection_jwk::{KeySet, Spki};

use crate::claims::Claims;
use crate::json;

/// The algorithm the SR registered with ProConnect (`introspection_signed_response_alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlg {
    RS256,
    ES256,
    HS256,
}

impl SigningAlg {
    pub fn name(self) -> &'static str {
        match self {
            SigningAlg::RS256 => "RS256",
            SigningAlg::ES256 => "ES256",
            SigningAlg::HS256 => "HS256",
        }
    }

    /// Whether keys come from a JWKS (asymmetric) rather than the client secret.
    pub fn uses_jwks(self) -> bool {
        !matches!(self, SigningAlg::HS256)
    }
}

/// What the answer must match besides its signature.
pub struct Expectations<'a> {
    pub alg: SigningAlg,
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// Unix seconds.
    pub now: i64,
    /// Allowed clock skew for `iat` in the future, seconds.
    pub leeway: i64,
    /// Oldest acceptable `iat`, in seconds before `now`.
    pub max_age: i64,
}

/// Why a signed answer is refused. Each has a stable short code (logs, metrics, details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// No key matches the token's `kid` (refetching the JWKS may help).
    UnknownKey,
    /// Not a compact JWS.
    Format,
    /// `alg` is not the configured algorithm.
    Alg,
    /// `typ` is not `token-introspection+jwt`.
    Typ,
    /// The configured algorithm has no key material of its kind.
    NoKeyMaterial,
    Signature,
    /// The payload is not the JSON object expected.
    Payload,
    Issuer,
    Audience,
    NoIat,
    IatInFuture,
    IatTooOld,
    /// `token_introspection` is not an object with a boolean `active`.
    NotIntrospection,
    /// The header or the payload holds a member twice.
    Ambiguous,
    /// A `crit` header parameter: an extension this verifier does not implement.
    Crit,
    /// The JWT's own `exp` is past.
    Expired,
    /// The JWT's own `nbf` is ahead.
    NotYetValid,
    /// The proxy could not check the signature (its `verify_signature` failed), and why.
    NativeCheck(NativeFailure),
}

impl VerifyError {
    /// Stable short code.
    pub fn code(self) -> &'static str {
        match self {
            VerifyError::UnknownKey => "jwt_unknown_kid",
            VerifyError::Format => "jwt_format",
            VerifyError::Alg => "jwt_alg",
            VerifyError::Typ => "jwt_typ",
            VerifyError::NoKeyMaterial => "jwt_no_key_material",
            VerifyError::Signature => "jwt_signature",
            VerifyError::Payload => "jwt_payload",
            VerifyError::Issuer => "jwt_iss",
            VerifyError::Audience => "jwt_aud",
            VerifyError::NoIat => "jwt_iat_missing",
            VerifyError::IatInFuture => "jwt_iat_future",
            VerifyError::IatTooOld => "jwt_iat_old",
            VerifyError::NotIntrospection => "jwt_not_introspection",
            VerifyError::Ambiguous => "jwt_ambiguous",
            VerifyError::Crit => "jwt_crit",
            VerifyError::Expired => "jwt_exp",
            VerifyError::NotYetValid => "jwt_nbf",
            VerifyError::NativeCheck(_) => "jwt_native_check",
        }
    }

    /// A fixed sentence, safe to log.
    pub fn reason(self) -> &'static str {
        match self {
            VerifyError::UnknownKey => "no JWKS key matches the answer's kid",
            VerifyError::Format => "answer is not a compact JWS",
            VerifyError::Alg => "JWS alg is not the configured algorithm",
            VerifyError::Typ => "JWS typ is not token-introspection+jwt",
            VerifyError::NoKeyMaterial => "no key material for the configured algorithm",
            VerifyError::Signature => "JWS signature does not verify",
            VerifyError::Payload => "JWS payload is malformed",
            VerifyError::Issuer => "JWS iss is not the configured issuer",
            VerifyError::Audience => "JWS aud does not contain our client_id",
            VerifyError::NoIat => "JWS has no iat",
            VerifyError::IatInFuture => "JWS iat is in the future",
            VerifyError::IatTooOld => "JWS iat is too old",
            VerifyError::NotIntrospection => {
                "JWS token_introspection is not an object with a boolean active"
            }
            VerifyError::Ambiguous => "JWS header or payload has a duplicated member",
            VerifyError::Crit => "JWS has a critical header parameter this verifier ignores",
            VerifyError::Expired => "JWS exp is past",
            VerifyError::NotYetValid => "JWS nbf is ahead",
            VerifyError::NativeCheck(_) => "the proxy could not check the JWS signature",
        }
    }
}

/// The payload's members besides `exp`, `nbf` and `iat` (jwt-compact's own, whose duplicates
/// its derived parser refuses), read in jwt-compact's single pass over the payload: the three
/// this verifier needs are kept, every other one is walked and dropped, and a member given
/// twice, at any depth, fails the parse (see [`json::is_duplicate`]).
#[derive(Default)]
struct Payload {
    token_introspection: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> serde::de::Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JWT claims set")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Payload, A::Error> {
        let mut payload = Payload::default();
        json::members(map, |name, map| {
            let slot = match name {
                "token_introspection" => &mut payload.token_introspection,
                "iss" => &mut payload.iss,
                "aud" => &mut payload.aud,
                _ => return Ok(false),
            };
            let json::Strict(value) = map.next_value()?;
            *slot = Some(value);
            Ok(true)
        })?;
        Ok(payload)
    }
}

/// A compact JWS as jwt-compact parses it, with the header members it does not read walked by
/// [`OtherMembers`].
type Jws<'a> = UntrustedToken<'a, OtherMembers>;

/// jwt-compact's parse of a compact JWS (RFC 7515 §7.1): its three parts decoded, the header
/// read in one pass. A `crit` parameter and a header member given twice are refused here.
fn parse(compact: &str) -> Result<Jws<'_>, VerifyError> {
    match Jws::try_from(compact) {
        Ok(token) => Ok(token),
        Err(ParseError::MalformedHeader(e)) if e.to_string().starts_with(CRIT) => {
            Err(VerifyError::Crit)
        }
        Err(ParseError::MalformedHeader(e)) if json::is_duplicate(&e) => {
            Err(VerifyError::Ambiguous)
        }
        Err(_) => Err(VerifyError::Format),
    }
}

/// The text of the parse error for a `crit` header parameter (recognised by [`parse`]).
const CRIT: &str = "critical header parameter";

/// The header's members besides jwt-compact's own (`alg`, `cty`, `kid`, `typ`, `jku`, `x5u`,
/// `x5t`, `x5t#S256`: strings it reads, whose duplicates its derived parser refuses), read in
/// the same pass: a `crit` parameter is refused (RFC 7515 §4.1.11: this verifier implements no
/// extension, so it cannot honour one), every other member is walked and dropped, and a member
/// given twice, at any depth, fails the parse: parsers disagree on which one counts.
#[derive(Clone, Copy, Debug)]
pub struct OtherMembers;

impl<'de> Deserialize<'de> for OtherMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OtherMembersVisitor)
    }
}

struct OtherMembersVisitor;

impl<'de> serde::de::Visitor<'de> for OtherMembersVisitor {
    type Value = OtherMembers;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JOSE header parameters")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<OtherMembers, A::Error> {
        json::members(map, |name, _| match name {
            "crit" => Err(serde::de::Error::custom(CRIT)),
            _ => Ok(false),
        })?;
        Ok(OtherMembers)
    }
}

/// The key material for one verification.
#[derive(Clone, Copy)]
pub enum Keys<'a> {
    Jwks(&'a KeySet),
    Secret(&'a [u8]),
}

/// Why the proxy could not check a signature (not: the signature is wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeFailure {
    /// The proxy has no such function.
    Missing,
    /// The proxy refused the arguments.
    Refused,
    /// The proxy's answer could not be read.
    Unreadable,
    /// Any other status of the host call.
    Status(u32),
}

impl std::fmt::Display for NativeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NativeFailure::Missing => f.write_str("the proxy has no `verify_signature` function"),
            NativeFailure::Refused => f.write_str("the proxy refused the arguments"),
            NativeFailure::Unreadable => f.write_str("the proxy's answer is unreadable"),
            NativeFailure::Status(s) => write!(f, "host status {s}"),
        }
    }
}

/// An RSA (PKCS#1 v1.5) or ECDSA signature check over SHA-256 done by the proxy, outside the
/// module: Envoy's BoringSSL, through its `verify_signature` foreign function.
pub trait NativeVerifier {
    /// Whether `signature` over `text` verifies with the key `spki`: `Ok(true)` only for a valid
    /// signature. `signature` is the PKCS#1 v1.5 signature for RSA, the DER `ECDSA-Sig-Value`
    /// for ECDSA. The proxy must not be trusted to match the key's type to the algorithm: the
    /// caller does.
    fn verify_sha256(
        &self,
        spki: &Spki,
        signature: &[u8],
        text: &[u8],
    ) -> Result<bool, NativeFailure>;
}

/// Who checks RS256 and ES256 signatures: the module itself (RSA and P-256 arithmetic compiled
/// to wasm), or the proxy. HS256 is always checked in the module.
#[derive(Clone, Copy)]
pub enum Crypto<'a> {
    Wasm,
    Native(&'a dyn NativeVerifier),
}

/// A jwt-compact algorithm whose signature check is the proxy's: jwt-compact still parses the
/// token and enforces the algorithm's name.
struct Native<'a> {
    alg: SigningAlg,
    verifier: &'a dyn NativeVerifier,
    /// Set when the proxy could not check (so a refusal is not mistaken for a bad signature).
    failure: std::cell::Cell<Option<NativeFailure>>,
}

/// A signature as it appears in the JWS: jwt-compact checks nothing of it but its presence.
struct JwsSignature(Vec<u8>);

impl AlgorithmSignature for JwsSignature {
    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        Ok(JwsSignature(slice.to_vec()))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

impl Algorithm for Native<'_> {
    /// Verification only.
    type SigningKey = std::convert::Infallible;
    type VerifyingKey = Spki;
    type Signature = JwsSignature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.alg.name())
    }

    fn sign(&self, never: &Self::SigningKey, _message: &[u8]) -> JwsSignature {
        match *never {}
    }

    fn verify_signature(&self, signature: &JwsSignature, key: &Spki, message: &[u8]) -> bool {
        let der;
        let signature = match self.alg {
            SigningAlg::RS256 => signature.0.as_slice(),
            // r‖s (RFC 7518 §3.4), exactly 64 bytes, as the DER BoringSSL reads.
            SigningAlg::ES256 => match der::ecdsa_signature(&signature.0) {
                Some(bytes) => {
                    der = bytes;
                    der.as_slice()
                }
                None => return false,
            },
            SigningAlg::HS256 => return false,
        };
        match self.verifier.verify_sha256(key, signature, message) {
            Ok(valid) => valid,
            Err(failure) => {
                self.failure.set(Some(failure));
                false
            }
        }
    }
}

/// Verifies a signed introspection answer and returns its `token_introspection` object.
pub fn verify(
    jws: &[u8],
    keys: Keys<'_>,
    crypto: Crypto<'_>,
    expect: &Expectations<'_>,
) -> Result<Claims, VerifyError> {
    let text = std::str::from_utf8(jws).map_err(|_| VerifyError::Format)?;
    let text = text.trim();
    let token = parse(text)?;
    if token.algorithm() != expect.alg.name() {
        return Err(VerifyError::Alg);
    }
    match token.header().token_type.as_deref() {
        Some(t) if is_introspection_typ(t) => {}
        _ => return Err(VerifyError::Typ),
    }
    let checked = validate::<Payload>(expect.alg, keys, crypto, &token)?;
    let claims: JwtClaims<Payload> = match checked {
        Ok(token) => token.into_parts().1,
        Err(e) if is_signature_error(&e) => return Err(VerifyError::Signature),
        Err(ValidationError::AlgorithmMismatch { .. }) => return Err(VerifyError::Alg),
        Err(ValidationError::MalformedClaims(e)) if json::is_duplicate(&e) => {
            return Err(VerifyError::Ambiguous)
        }
        Err(_) => return Err(VerifyError::Payload),
    };

    match &claims.custom.iss {
        Some(Value::String(iss)) if iss == expect.issuer => {}
        _ => return Err(VerifyError::Issuer),
    }
    let aud_ok = match &claims.custom.aud {
        Some(Value::String(aud)) => aud == expect.client_id,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expect.client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(VerifyError::Audience);
    }
    // RFC 7519 §4.1.4 and §4.1.5, with the same leeway as `iat`.
    if let Some(exp) = claims.expiration.map(|t| t.timestamp()) {
        if exp <= expect.now.saturating_sub(expect.leeway) {
            return Err(VerifyError::Expired);
        }
    }
    if let Some(nbf) = claims.not_before.map(|t| t.timestamp()) {
        if nbf > expect.now.saturating_add(expect.leeway) {
            return Err(VerifyError::NotYetValid);
        }
    }
    let Some(iat) = claims.issued_at.map(|t| t.timestamp()) else {
        return Err(VerifyError::NoIat);
    };
    if iat > expect.now.saturating_add(expect.leeway) {
        return Err(VerifyError::IatInFuture);
    }
    if iat < expect.now.saturating_sub(expect.max_age) {
        return Err(VerifyError::IatTooOld);
    }
    match claims.custom.token_introspection {
        Some(Value::Object(map)) if matches!(map.get("active"), Some(Value::Bool(_))) => Ok(map),
        _ => Err(VerifyError::NotIntrospection),
    }
}

/// jwt-compact's validation of the token's signature with the key its `kid` selects, checked by
/// `crypto`. The key's type follows from the algorithm: RSA keys for RS256, P-256 keys for ES256.
fn validate<T: serde::de::DeserializeOwned>(
    alg: SigningAlg,
    keys: Keys<'_>,
    crypto: Crypto<'_>,
    token: &Jws<'_>,
) -> Result<Result<jwt_compact::Token<T, OtherMembers>, ValidationError>, VerifyError> {
    let kid = token.header().key_id.as_deref();
    Ok(match (alg, keys, crypto) {
        (SigningAlg::RS256, Keys::Jwks(set), Crypto::Native(verifier)) => {
            let entry = set.rsa(kid).ok_or(VerifyError::UnknownKey)?;
            native::<T>(alg, verifier, entry.spki(), token)?
        }
        (SigningAlg::ES256, Keys::Jwks(set), Crypto::Native(verifier)) => {
            let entry = set.ec(kid).ok_or(VerifyError::UnknownKey)?;
            native::<T>(alg, verifier, entry.spki(), token)?
        }
        (SigningAlg::RS256, Keys::Jwks(set), Crypto::Wasm) => {
            let entry = set.rsa(kid).ok_or(VerifyError::UnknownKey)?;
            Rsa::rs256().validator::<T>(entry.key()).validate(token)
        }
        (SigningAlg::ES256, Keys::Jwks(set), Crypto::Wasm) => {
            let entry = set.ec(kid).ok_or(VerifyError::UnknownKey)?;
            Es256.validator::<T>(entry.key()).validate(token)
        }
        (SigningAlg::HS256, Keys::Secret(secret), _) => {
            let key = Hs256Key::new(secret);
            Hs256.validator::<T>(&key).validate(token)
        }
        _ => return Err(VerifyError::NoKeyMaterial),
    })
}

/// Whether the signature of a compact JWS verifies with the set's key for `alg`, checked by
/// `crypto`; nothing else is looked at. `Ok(false)`: a wrong signature. For known-answer tests
/// of a way of checking.
pub fn signature_verifies(
    jws: &str,
    keys: Keys<'_>,
    alg: SigningAlg,
    crypto: Crypto<'_>,
) -> Result<bool, VerifyError> {
    let token = parse(jws)?;
    match validate::<Value>(alg, keys, crypto, &token)? {
        Ok(_) => Ok(true),
        Err(e) if is_signature_error(&e) => Ok(false),
        Err(ValidationError::AlgorithmMismatch { .. }) => Err(VerifyError::Alg),
        Err(_) => Err(VerifyError::Payload),
    }
}

fn is_signature_error(e: &ValidationError) -> bool {
    matches!(
        e,
        ValidationError::InvalidSignature
            | ValidationError::InvalidSignatureLen { .. }
            | ValidationError::MalformedSignature(_)
    )
}

/// jwt-compact's validation with the proxy checking the signature; a check the proxy could not
/// make is its own error, not a bad signature.
fn native<T: serde::de::DeserializeOwned>(
    alg: SigningAlg,
    verifier: &dyn NativeVerifier,
    spki: &Spki,
    token: &Jws<'_>,
) -> Result<Result<jwt_compact::Token<T, OtherMembers>, ValidationError>, VerifyError> {
    let algorithm = Native {
        alg,
        verifier,
        failure: std::cell::Cell::new(None),
    };
    let checked = algorithm.validator::<T>(spki).validate(token);
    match algorithm.failure.get() {
        Some(failure) => Err(VerifyError::NativeCheck(failure)),
        None => Ok(checked),
    }
}

/// RFC 9701 `typ`: `token-introspection+jwt`, case-insensitive, optional `application/` prefix.
fn is_introspection_typ(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    bare == "token-introspection+jwt"
}

#[cfg(test)]
#[path = "../tests/support/boringssl.rs"]
mod boringssl;

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use jwt_compact::alg::RsaPrivateKey;
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{Claims as C, Header};
    use serde_json::json;
    use std::sync::OnceLock;

    const NOW: i64 = 1_790_000_000;
    const ISS: &str = "https://auth.example/api/v2";

    struct Fixture {
        rsa: RsaPrivateKey,
        ec: p256::ecdsa::SigningKey,
        jwks: Vec<u8>,
    }

    /// The RFC reference vectors (jose/tests/fixtures/rfc-vectors.json).
    fn vectors() -> Value {
        serde_json::from_str(include_str!("../tests/fixtures/rfc-vectors.json")).unwrap()
    }

    /// Signing keys from RFC 7515 A.2 (RSA) and A.3 (P-256): fixed, never generated.
    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let v = vectors();
            let rsa_jwk: JsonWebKey<'_> =
                serde_json::from_value(v["rfc7515_a2_rsa_private"].clone()).unwrap();
            let rsa = RsaPrivateKey::try_from(&rsa_jwk).unwrap();
            let ec_private = v["rfc7515_a3_ec_private"].to_string();
            let ec =
                p256::ecdsa::SigningKey::from(p256::SecretKey::from_jwk_str(&ec_private).unwrap());
            let public = |jwk: &Value, kid: &str, alg: &str| {
                let mut jwk = jwk.clone();
                for private in ["d", "p", "q", "dp", "dq", "qi"] {
                    jwk.as_object_mut().unwrap().remove(private);
                }
                jwk["kid"] = json!(kid);
                jwk["use"] = json!("sig");
                jwk["alg"] = json!(alg);
                jwk
            };
            let jwks = json!({"keys": [
                public(&v["rfc7515_a2_rsa_private"], "rsa-1", "RS256"),
                public(&v["rfc7515_a3_ec_private"], "ec-1", "ES256"),
                {"kty":"oct","k":"AAAA"}]})
            .to_string();
            Fixture {
                rsa,
                ec,
                jwks: jwks.into_bytes(),
            }
        })
    }

    #[test]
    fn rfc7515_a3_es256_vector_verifies_with_a_key_built_from_its_jwk_members() {
        let v = vectors();
        let mut jwk = v["rfc7515_a3_ec_private"].clone();
        jwk.as_object_mut().unwrap().remove("d");
        let set = KeySet::from_jwks(json!({ "keys": [jwk] }).to_string().as_bytes()).unwrap();
        let key = set.ec(None).unwrap().key();
        let jws = v["rfc7515_a3_es256_jws"].as_str().unwrap();
        let token = UntrustedToken::new(jws).unwrap();
        let checked = Es256.validator::<Value>(key).validate(&token).unwrap();
        assert_eq!(checked.claims().custom["iss"], "joe");
        // As an introspection answer it is refused, for exactly its missing `typ`.
        let expect = Expectations {
            alg: SigningAlg::ES256,
            issuer: "joe",
            client_id: "sr",
            now: 1_300_819_000,
            leeway: 30,
            max_age: 120,
        };
        assert_eq!(
            verify(jws.as_bytes(), Keys::Jwks(&set), Crypto::Wasm, &expect),
            Err(VerifyError::Typ)
        );
    }

    fn payload(active: bool) -> Value {
        json!({"token_introspection": {"active": active, "sub": "u-1", "token_type": "Bearer"},
            "aud": "sr-client", "iss": ISS})
    }

    fn sign(
        alg: SigningAlg,
        kid: Option<&str>,
        typ: Option<&str>,
        body: Value,
        iat: Option<i64>,
    ) -> String {
        let mut header = Header::empty();
        if let Some(kid) = kid {
            header = header.with_key_id(kid);
        }
        if let Some(typ) = typ {
            header = header.with_token_type(typ);
        }
        let mut claims = C::new(body);
        claims.issued_at = iat.map(chrono_ts);
        let f = fixture();
        match alg {
            SigningAlg::RS256 => Rsa::rs256().token(&header, &claims, &f.rsa).unwrap(),
            SigningAlg::ES256 => Es256.token(&header, &claims, &f.ec).unwrap(),
            SigningAlg::HS256 => Hs256
                .token(&header, &claims, &Hs256Key::new(b"the-client-secret"))
                .unwrap(),
        }
    }

    fn chrono_ts(t: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(t, 0).unwrap()
    }

    fn expect(alg: SigningAlg) -> Expectations<'static> {
        Expectations {
            alg,
            issuer: ISS,
            client_id: "sr-client",
            now: NOW,
            leeway: 30,
            max_age: 120,
        }
    }

    /// The proxy's check as the tests see it: BoringSSL's check emulated natively (the
    /// protobuf around it is tested with the gate, tests/gate.rs).
    struct Envoy;

    impl NativeVerifier for Envoy {
        fn verify_sha256(
            &self,
            spki: &Spki,
            signature: &[u8],
            text: &[u8],
        ) -> Result<bool, NativeFailure> {
            Ok(boringssl::check(b"sha256", spki.der(), signature, text).0)
        }
    }

    /// Verifies with the module's crypto and with the proxy's: both must agree (every test
    /// that goes through here runs against both paths).
    fn check(alg: SigningAlg, jws: &str) -> Result<Claims, VerifyError> {
        let set = KeySet::from_jwks(&fixture().jwks).unwrap();
        let keys = match alg {
            SigningAlg::HS256 => Keys::Secret(b"the-client-secret"),
            _ => Keys::Jwks(&set),
        };
        let wasm = verify(jws.as_bytes(), keys, Crypto::Wasm, &expect(alg));
        let native = verify(jws.as_bytes(), keys, Crypto::Native(&Envoy), &expect(alg));
        assert_eq!(wasm, native, "the two paths disagree on {jws}");
        wasm
    }

    const TYP: Option<&str> = Some("token-introspection+jwt");

    #[test]
    fn valid_answers_verify_for_each_algorithm() {
        for (alg, kid) in [
            (SigningAlg::RS256, Some("rsa-1")),
            (SigningAlg::ES256, Some("ec-1")),
            (SigningAlg::HS256, None),
        ] {
            let jws = sign(alg, kid, TYP, payload(true), Some(NOW));
            let claims = check(alg, &jws).unwrap();
            assert_eq!(claims["sub"], "u-1");
            let inactive = sign(alg, kid, TYP, payload(false), Some(NOW));
            assert_eq!(check(alg, &inactive).unwrap()["active"], false);
        }
    }

    #[test]
    fn typ_variants() {
        for typ in [
            "token-introspection+jwt",
            "Token-Introspection+JWT",
            "application/token-introspection+jwt",
        ] {
            let jws = sign(
                SigningAlg::ES256,
                Some("ec-1"),
                Some(typ),
                payload(true),
                Some(NOW),
            );
            assert!(check(SigningAlg::ES256, &jws).is_ok(), "{typ}");
        }
        for typ in [Some("JWT"), None, Some("at+jwt")] {
            let jws = sign(
                SigningAlg::ES256,
                Some("ec-1"),
                typ,
                payload(true),
                Some(NOW),
            );
            assert_eq!(check(SigningAlg::ES256, &jws), Err(VerifyError::Typ));
        }
    }

    #[test]
    fn tampering_is_refused() {
        let jws = sign(
            SigningAlg::RS256,
            Some("rsa-1"),
            TYP,
            payload(true),
            Some(NOW),
        );
        let parts: Vec<&str> = jws.split('.').collect();
        // One bit of the signature.
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut sig = engine.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], engine.encode(&sig));
        assert_eq!(
            check(SigningAlg::RS256, &flipped),
            Err(VerifyError::Signature)
        );
        // Another payload under the same signature.
        let mut body = payload(true);
        body["token_introspection"]["sub"] = json!("someone-else");
        let mut claims = serde_json::to_value(C::new(body)).unwrap();
        claims["iat"] = json!(NOW);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            engine.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            check(SigningAlg::RS256, &forged),
            Err(VerifyError::Signature)
        );
        // alg none.
        let none_header = engine.encode(r#"{"alg":"none","typ":"token-introspection+jwt"}"#);
        let none = format!("{none_header}.{}.", parts[1]);
        assert_eq!(check(SigningAlg::RS256, &none), Err(VerifyError::Alg));
        // Garbage.
        assert_eq!(
            check(SigningAlg::RS256, "not.a.jws"),
            Err(VerifyError::Format)
        );
        assert_eq!(check(SigningAlg::RS256, ""), Err(VerifyError::Format));
    }

    #[test]
    fn hs256_with_the_rsa_public_key_is_refused() {
        let f = fixture();
        let public_pem = serde_json::to_vec(&JsonWebKey::from(&f.rsa.to_public_key())).unwrap();
        let mut header = Header::empty().with_token_type("token-introspection+jwt");
        header = header.with_key_id("rsa-1");
        let mut claims = C::new(payload(true));
        claims.issued_at = Some(chrono_ts(NOW));
        let jws = Hs256
            .token(&header, &claims, &Hs256Key::new(public_pem))
            .unwrap();
        assert_eq!(check(SigningAlg::RS256, &jws), Err(VerifyError::Alg));
        // And an ES256 answer when RS256 is configured.
        let es = sign(
            SigningAlg::ES256,
            Some("ec-1"),
            TYP,
            payload(true),
            Some(NOW),
        );
        assert_eq!(check(SigningAlg::RS256, &es), Err(VerifyError::Alg));
    }

    /// An HS256 JWS made by hand from raw header and payload JSON (for shapes jwt-compact
    /// would not produce).
    fn hand_made(header: &str, payload: &str) -> String {
        use hmac::{Hmac, Mac};
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"the-client-secret").unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
    }

    const HS_HEADER: &str = r#"{"alg":"HS256","typ":"token-introspection+jwt"}"#;

    fn hs_payload(extra: &str) -> String {
        format!(
            r#"{{"iss":"{ISS}","aud":"sr-client","iat":{NOW},{extra}"token_introspection":{{"active":true,"sub":"u-1","token_type":"Bearer"}}}}"#
        )
    }

    #[test]
    fn a_hand_made_answer_verifies_so_the_cases_below_test_one_thing_each() {
        let jws = hand_made(HS_HEADER, &hs_payload(""));
        assert_eq!(check(SigningAlg::HS256, &jws).unwrap()["sub"], "u-1");
    }

    #[test]
    fn a_crit_header_parameter_is_refused() {
        for header in [
            r#"{"alg":"HS256","typ":"token-introspection+jwt","crit":["exp"]}"#,
            r#"{"crit":[],"alg":"HS256","typ":"token-introspection+jwt"}"#,
            r#"{"alg":"HS256","typ":"token-introspection+jwt","cr\u0069t":["exp"]}"#,
        ] {
            let jws = hand_made(header, &hs_payload(""));
            assert_eq!(
                check(SigningAlg::HS256, &jws),
                Err(VerifyError::Crit),
                "{header}"
            );
        }
        // Only the header's own member is one; a member named so inside another is not.
        let header = r#"{"alg":"HS256","typ":"token-introspection+jwt","x":{"crit":1}}"#;
        assert!(check(SigningAlg::HS256, &hand_made(header, &hs_payload(""))).is_ok());
    }

    #[test]
    fn a_duplicated_member_in_the_payload_is_refused() {
        let payload = hs_payload(r#""token_introspection":{"active":false},"#);
        let jws = hand_made(HS_HEADER, &payload);
        assert_eq!(check(SigningAlg::HS256, &jws), Err(VerifyError::Ambiguous));
        let nested = hs_payload("").replace(r#""sub":"u-1""#, r#""sub":"u-1","sub":"u-2""#);
        let jws = hand_made(HS_HEADER, &nested);
        assert_eq!(check(SigningAlg::HS256, &jws), Err(VerifyError::Ambiguous));
        // Members this verifier reads, jwt-compact's own, escaped spellings and members no one
        // reads, at the top or nested: all refused the same way.
        for extra in [
            format!(r#""iat":{NOW},"#),
            format!(r#""exp":{},"exp":{},"#, NOW + 60, NOW + 61),
            r#""\u0069ss":"https://elsewhere","#.to_string(),
            r#""aud":"x","#.to_string(),
            r#""other":1,"other":2,"#.to_string(),
            r#""other":{"a":[{"b":1,"b":1}]},"#.to_string(),
        ] {
            let jws = hand_made(HS_HEADER, &hs_payload(&extra));
            assert_eq!(
                check(SigningAlg::HS256, &jws),
                Err(VerifyError::Ambiguous),
                "{extra}"
            );
        }
        // The same member in sibling objects is no duplicate.
        let siblings = r#""a":{"x":1},"b":{"x":2},"#;
        assert!(check(
            SigningAlg::HS256,
            &hand_made(HS_HEADER, &hs_payload(siblings))
        )
        .is_ok());
    }

    #[test]
    fn a_duplicated_header_parameter_is_refused() {
        // jwt-compact's own parameters (its derived parser refuses them), escaped spellings,
        // parameters no one reads, at the top or nested: all refused the same way.
        for header in [
            r#"{"alg":"HS256","typ":"token-introspection+jwt","typ":"JWT"}"#,
            r#"{"alg":"HS256","alg":"HS256","typ":"token-introspection+jwt"}"#,
            r#"{"alg":"HS256","typ":"token-introspection+jwt","kid":"a","k\u0069d":"b"}"#,
            r#"{"alg":"HS256","typ":"token-introspection+jwt","x":1,"x":2}"#,
            r#"{"alg":"HS256","typ":"token-introspection+jwt","jwk":{"kty":"EC","kty":"RSA"}}"#,
            r#"{"alg":"HS256","typ":"token-introspection+jwt","x":[{"a":1,"a":1}]}"#,
        ] {
            let jws = hand_made(header, &hs_payload(""));
            assert_eq!(
                check(SigningAlg::HS256, &jws),
                Err(VerifyError::Ambiguous),
                "{header}"
            );
        }
        // The same member in sibling objects is no duplicate.
        let header = r#"{"alg":"HS256","typ":"token-introspection+jwt","a":{"x":1},"b":{"x":2}}"#;
        assert!(check(SigningAlg::HS256, &hand_made(header, &hs_payload(""))).is_ok());
    }

    #[test]
    fn members_are_checked_for_duplicates_by_name_not_one_by_one() {
        // Thousands of distinct members, then one given again: found, in the header and in the
        // payload, without comparing each name with every one before it (a set, not a list:
        // the header and claims are read before the signature is checked).
        let many: String = (0..20_000).map(|i| format!(r#""m{i}":0,"#)).collect();
        let header = format!(r#"{{{many}"alg":"HS256","typ":"token-introspection+jwt"}}"#);
        assert!(check(SigningAlg::HS256, &hand_made(&header, &hs_payload(""))).is_ok());
        assert!(check(SigningAlg::HS256, &hand_made(HS_HEADER, &hs_payload(&many))).is_ok());
        let again = format!(r#"{many}"m0":1,"#);
        let header = format!(r#"{{{again}"alg":"HS256","typ":"token-introspection+jwt"}}"#);
        assert_eq!(
            check(SigningAlg::HS256, &hand_made(&header, &hs_payload(""))),
            Err(VerifyError::Ambiguous)
        );
        assert_eq!(
            check(
                SigningAlg::HS256,
                &hand_made(HS_HEADER, &hs_payload(&again))
            ),
            Err(VerifyError::Ambiguous)
        );
    }

    #[test]
    fn a_past_jwt_exp_is_refused() {
        let jws = hand_made(HS_HEADER, &hs_payload(&format!(r#""exp":{},"#, NOW - 31)));
        assert_eq!(check(SigningAlg::HS256, &jws), Err(VerifyError::Expired));
        let jws = hand_made(HS_HEADER, &hs_payload(&format!(r#""exp":{},"#, NOW + 60)));
        assert!(check(SigningAlg::HS256, &jws).is_ok());
    }

    #[test]
    fn a_future_jwt_nbf_is_refused() {
        let jws = hand_made(HS_HEADER, &hs_payload(&format!(r#""nbf":{},"#, NOW + 31)));
        assert_eq!(
            check(SigningAlg::HS256, &jws),
            Err(VerifyError::NotYetValid)
        );
        let jws = hand_made(HS_HEADER, &hs_payload(&format!(r#""nbf":{},"#, NOW)));
        assert!(check(SigningAlg::HS256, &jws).is_ok());
    }

    #[test]
    fn a_non_numeric_jwt_exp_is_a_malformed_payload() {
        let jws = hand_made(HS_HEADER, &hs_payload(r#""exp":"soon","#));
        assert_eq!(check(SigningAlg::HS256, &jws), Err(VerifyError::Payload));
    }

    #[test]
    fn claims_are_checked() {
        let alg = SigningAlg::HS256;
        let mut p = payload(true);
        p["iss"] = json!("https://evil.example");
        assert_eq!(
            check(alg, &sign(alg, None, TYP, p, Some(NOW))),
            Err(VerifyError::Issuer)
        );
        let mut p = payload(true);
        p["aud"] = json!("another-sr");
        assert_eq!(
            check(alg, &sign(alg, None, TYP, p, Some(NOW))),
            Err(VerifyError::Audience)
        );
        let mut p = payload(true);
        p["aud"] = json!(["another-sr", "sr-client"]);
        assert!(check(alg, &sign(alg, None, TYP, p, Some(NOW))).is_ok());
        assert_eq!(
            check(alg, &sign(alg, None, TYP, payload(true), None)),
            Err(VerifyError::NoIat)
        );
        assert_eq!(
            check(alg, &sign(alg, None, TYP, payload(true), Some(NOW + 31))),
            Err(VerifyError::IatInFuture)
        );
        assert!(check(alg, &sign(alg, None, TYP, payload(true), Some(NOW + 30))).is_ok());
        assert_eq!(
            check(alg, &sign(alg, None, TYP, payload(true), Some(NOW - 121))),
            Err(VerifyError::IatTooOld)
        );
        let mut p = payload(true);
        p["token_introspection"] = json!({"active": "yes"});
        assert_eq!(
            check(alg, &sign(alg, None, TYP, p, Some(NOW))),
            Err(VerifyError::NotIntrospection)
        );
        let mut p = payload(true);
        p.as_object_mut().unwrap().remove("token_introspection");
        assert_eq!(
            check(alg, &sign(alg, None, TYP, p, Some(NOW))),
            Err(VerifyError::NotIntrospection)
        );
        // Wrong secret.
        let other = Hs256
            .token(
                &Header::empty().with_token_type("token-introspection+jwt"),
                &{
                    let mut c = C::new(payload(true));
                    c.issued_at = Some(chrono_ts(NOW));
                    c
                },
                &Hs256Key::new(b"another-secret"),
            )
            .unwrap();
        assert_eq!(check(alg, &other), Err(VerifyError::Signature));
    }

    #[test]
    fn kid_selection() {
        let unknown = sign(
            SigningAlg::RS256,
            Some("rotated-away"),
            TYP,
            payload(true),
            Some(NOW),
        );
        assert_eq!(
            check(SigningAlg::RS256, &unknown),
            Err(VerifyError::UnknownKey)
        );
        // No kid in the token: the only RSA key is used.
        let no_kid = sign(SigningAlg::RS256, None, TYP, payload(true), Some(NOW));
        assert!(check(SigningAlg::RS256, &no_kid).is_ok());
        // A key without kid is usable when it is the only one of its type.
        let f = fixture();
        let jwk = serde_json::to_value(JsonWebKey::from(&f.rsa.to_public_key())).unwrap();
        let set = KeySet::from_jwks(json!({"keys":[jwk]}).to_string().as_bytes()).unwrap();
        let jws = sign(
            SigningAlg::RS256,
            Some("whatever"),
            TYP,
            payload(true),
            Some(NOW),
        );
        for crypto in [Crypto::Wasm, Crypto::Native(&Envoy)] {
            let rs256 = expect(SigningAlg::RS256);
            assert!(verify(jws.as_bytes(), Keys::Jwks(&set), crypto, &rs256).is_ok());
            let empty = KeySet::default();
            assert_eq!(
                verify(jws.as_bytes(), Keys::Jwks(&empty), crypto, &rs256),
                Err(VerifyError::UnknownKey)
            );
        }
    }
}

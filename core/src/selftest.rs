//! The known-answer test that decides who checks RS256 and ES256 signatures.
//!
//! At configuration the proxy's check is given a fixed vector that must verify, then copies with
//! a changed signature and a changed payload that must not. Any other outcome (no such function,
//! an error, a wrong answer) leaves the checks in the module. The vectors are RFC 7515's own
//! (appendix A.2, RS256; A.3, ES256), with the public keys of those appendices; the keys go
//! through [`KeySet::from_jwks`] like any JWKS, so the DER built from JWK members is tested too.

use base64::Engine as _;

use crate::jwt::{self, Crypto, KeySet, Keys, NativeFailure, SigningAlg, VerifyError};

/// RFC 7515 A.2: `{"alg":"RS256"}` over the A.1 payload, and its key.
const RS256_JWS: &str = concat!(
    "eyJhbGciOiJSUzI1NiJ9",
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5",
    "jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L",
    "07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUip",
    "UTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw",
);
const RS256_JWKS: &str = concat!(
    r#"{"keys":[{"kty":"RSA","e":"AQAB","n":""#,
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4",
    "d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5re",
    "xMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxX",
    "FvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
    r#""}]}"#,
);

/// RFC 7515 A.3: `{"alg":"ES256"}` over the A.1 payload, and its key.
const ES256_JWS: &str = concat!(
    "eyJhbGciOiJFUzI1NiJ9",
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
);
const ES256_JWKS: &str = concat!(
    r#"{"keys":[{"kty":"EC","crv":"P-256","#,
    r#""x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","#,
    r#""y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
);

/// Why the proxy's check was not chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTestFailure {
    /// Not an algorithm the proxy checks (HS256 stays in the module).
    NotApplicable,
    /// The proxy could not check (typically: no `verify_signature` function).
    Unavailable(NativeFailure),
    /// The reference signature was refused.
    RefusedValid,
    /// A changed signature or payload was accepted.
    AcceptedTampered,
    /// The vectors themselves did not parse (a defect of this module).
    Vector(VerifyError),
}

impl std::fmt::Display for SelfTestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelfTestFailure::NotApplicable => f.write_str("HS256 is checked in the module"),
            SelfTestFailure::Unavailable(failure) => write!(f, "{failure}"),
            SelfTestFailure::RefusedValid => f.write_str("it refused RFC 7515's valid signature"),
            SelfTestFailure::AcceptedTampered => f.write_str("it accepted a tampered signature"),
            SelfTestFailure::Vector(e) => write!(f, "reference vector unusable ({})", e.code()),
        }
    }
}

/// The reference JWS and key set of an algorithm.
fn vector(alg: SigningAlg) -> Option<(&'static str, &'static str)> {
    match alg {
        SigningAlg::RS256 => Some((RS256_JWS, RS256_JWKS)),
        SigningAlg::ES256 => Some((ES256_JWS, ES256_JWKS)),
        SigningAlg::HS256 => None,
    }
}

/// A copy of `jws` whose segment `index` (1 payload, 2 signature) differs, still well formed:
/// the payload's first lowercase letter in upper case (still JSON: only the signature can refuse
/// it), or one base64url character of the signature changed.
fn tampered(jws: &str, index: usize) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut segments: Vec<String> = jws.split('.').map(str::to_string).collect();
    if let Some(segment) = segments.get_mut(index) {
        let changed = match index {
            1 => b64.decode(segment.as_bytes()).ok().map(|mut payload| {
                if let Some(letter) = payload.iter_mut().find(|b| b.is_ascii_lowercase()) {
                    letter.make_ascii_uppercase();
                }
                b64.encode(payload)
            }),
            _ => {
                let middle = segment.len() / 2;
                Some(
                    segment
                        .char_indices()
                        .map(|(i, c)| match (i == middle, c) {
                            (true, 'A') => 'B',
                            (true, _) => 'A',
                            (false, c) => c,
                        })
                        .collect(),
                )
            }
        };
        if let Some(changed) = changed {
            *segment = changed;
        }
    }
    segments.join(".")
}

/// Runs the known-answer test of `crypto` for `alg`: `Ok` if it verifies RFC 7515's vector and
/// refuses its tampered copies.
pub fn run(alg: SigningAlg, crypto: Crypto<'_>) -> Result<(), SelfTestFailure> {
    let (jws, jwks) = vector(alg).ok_or(SelfTestFailure::NotApplicable)?;
    let set = KeySet::from_jwks(jwks.as_bytes())
        .map_err(|_| SelfTestFailure::Vector(VerifyError::NoKeyMaterial))?;
    let check = |jws: &str| match jwt::signature_verifies(jws, Keys::Jwks(&set), alg, crypto) {
        Ok(valid) => Ok(valid),
        Err(VerifyError::NativeCheck(failure)) => Err(SelfTestFailure::Unavailable(failure)),
        Err(e) => Err(SelfTestFailure::Vector(e)),
    };
    if !check(jws)? {
        return Err(SelfTestFailure::RefusedValid);
    }
    for segment in [2, 1] {
        if check(&tampered(jws, segment))? {
            return Err(SelfTestFailure::AcceptedTampered);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_passes_its_own_known_answer_test() {
        assert_eq!(run(SigningAlg::RS256, Crypto::Wasm), Ok(()));
        assert_eq!(run(SigningAlg::ES256, Crypto::Wasm), Ok(()));
        assert_eq!(
            run(SigningAlg::HS256, Crypto::Wasm),
            Err(SelfTestFailure::NotApplicable)
        );
    }

    #[test]
    fn tampering_changes_the_segment_and_keeps_the_form() {
        for (jws, _) in [vector(SigningAlg::RS256), vector(SigningAlg::ES256)]
            .into_iter()
            .flatten()
        {
            for segment in [1, 2] {
                let changed = tampered(jws, segment);
                assert_ne!(changed, jws);
                assert_eq!(changed.len(), jws.len());
                let differing: Vec<usize> = changed
                    .split('.')
                    .zip(jws.split('.'))
                    .enumerate()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(differing, vec![segment]);
            }
        }
    }
}

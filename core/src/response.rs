//! Reading the authorization server's answer to the introspection callout.
//!
//! Nothing here ever puts the body, or any part of it but a sanitised `error` code, into a
//! message: the body may carry claims about the user.

use serde_json::Value;

use crate::callout::ACCEPT_JWT;
use crate::claims::Claims;
use crate::config::{Config, KeySource};
use crate::discovery::Endpoints;
use crate::jwt::{self, Crypto, Expectations, KeySet, Keys, VerifyError};

/// The parts of the callout response the filter looks at. `Debug` omits the body.
#[derive(Clone, Copy)]
pub struct Answer<'a> {
    /// `:status`, absent when the callout failed (timeout, reset, no upstream).
    pub status: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    pub body: &'a [u8],
}

impl std::fmt::Debug for Answer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status.map(String::from_utf8_lossy))
            .field("body_len", &self.body.len())
            .finish()
    }
}

pub use crate::fault::Fault;
use crate::fault::OAuthError;
use crate::host::Host;
use crate::json::{self, JsonError};

/// A callout answer, owned (kept while a signed answer waits for keys). `Debug` omits the body.
#[derive(Clone, Default)]
pub struct StoredAnswer {
    pub status: Option<Vec<u8>>,
    pub content_type: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for StoredAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view().fmt(f)
    }
}

impl StoredAnswer {
    pub fn view(&self) -> Answer<'_> {
        Answer {
            status: self.status.as_deref(),
            content_type: self.content_type.as_deref(),
            body: &self.body,
        }
    }
}

/// Reads the answer of the callout being delivered. A failed callout has no headers (reading
/// them would be a host error), so `num_headers == 0` is checked first; an oversized body is
/// not read at all.
pub fn read_answer<H: Host>(
    host: &H,
    num_headers: usize,
    body_size: usize,
    max: usize,
) -> Result<StoredAnswer, Fault> {
    if num_headers == 0 {
        return Err(Fault::CalloutFailed);
    }
    if body_size > max {
        return Err(Fault::TooLarge);
    }
    let status = host.callout_header(":status").map_err(Fault::Host)?;
    let content_type = host.callout_header("content-type").map_err(Fault::Host)?;
    let body = if body_size == 0 {
        Vec::new()
    } else {
        host.callout_body(body_size).map_err(Fault::Host)?
    };
    Ok(StoredAnswer {
        status,
        content_type,
        body,
    })
}

/// Checks that the answer is a 200, or says why it is not a usable answer.
pub fn check_status(answer: &Answer<'_>) -> Result<(), Fault> {
    let Some(status) = answer.status else {
        return Err(Fault::CalloutFailed);
    };
    if status == b"200" {
        return Ok(());
    }
    let status = std::str::from_utf8(status)
        .ok()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    Err(Fault::Status {
        status,
        error: error_code(answer.body),
    })
}

/// The media type of a `Content-Type` value, lowercase, without parameters.
pub fn media_type(content_type: Option<&[u8]>) -> Option<String> {
    let ct = content_type?;
    let ct = std::str::from_utf8(ct).ok()?;
    let main = ct.split(';').next().unwrap_or_default().trim();
    Some(main.to_ascii_lowercase())
}

/// Parses a plain (unsigned) RFC 7662 answer into its claims.
pub fn parse_json_answer(answer: &Answer<'_>) -> Result<Claims, Fault> {
    check_status(answer)?;
    match media_type(answer.content_type).as_deref() {
        Some("application/json") => {}
        Some(t) if t.ends_with("+json") => {}
        _ => return Err(Fault::ContentType),
    }
    parse_claims(answer.body)
}

/// Parses a JSON object (the answer body, or a JWT payload's member).
pub fn parse_claims(body: &[u8]) -> Result<Claims, Fault> {
    match json::parse_strict(body) {
        Ok(Value::Object(map)) => Ok(map),
        Err(JsonError::Duplicate) => Err(Fault::Ambiguous),
        Ok(_) | Err(JsonError::Syntax) => Err(Fault::NotJson),
    }
}

/// The OAuth `error` code of an error body, if it has one: a registered code, or `Other`.
fn error_code(body: &[u8]) -> Option<OAuthError> {
    if body.len() > 4096 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    Some(OAuthError::parse(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer<'a>(status: &'a str, ct: &'a str, body: &'a str) -> Answer<'a> {
        Answer {
            status: Some(status.as_bytes()),
            content_type: Some(ct.as_bytes()),
            body: body.as_bytes(),
        }
    }

    #[test]
    fn plain_active_answer() {
        let c = parse_json_answer(&answer(
            "200",
            "application/json; charset=utf-8",
            r#"{"active":true,"sub":"u"}"#,
        ))
        .unwrap();
        assert_eq!(c.get("sub").unwrap(), "u");
    }

    #[test]
    fn errors_name_status_and_code_only() {
        let e = parse_json_answer(&answer(
            "401",
            "application/json",
            r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
        ))
        .unwrap_err();
        assert_eq!(
            e,
            Fault::Status {
                status: 401,
                error: Some(OAuthError::InvalidClient)
            }
        );
        assert_eq!(
            e.to_string(),
            "authorization server answered status 401, error `invalid_client`"
        );
        // A code outside the charset is not echoed.
        let e = parse_json_answer(&answer(
            "400",
            "application/json",
            r#"{"error":"tok-abc.def"}"#,
        ))
        .unwrap_err();
        assert_eq!(
            e,
            Fault::Status {
                status: 400,
                error: Some(OAuthError::Other)
            }
        );
        assert!(!e.to_string().contains("tok-abc"), "{e}");
        let e = check_status(&Answer {
            status: None,
            content_type: None,
            body: b"",
        })
        .unwrap_err();
        assert_eq!(e, Fault::CalloutFailed);
    }

    #[test]
    fn non_json_is_refused_without_echo() {
        for (ct, body) in [
            ("text/html", "{\"active\":true}"),
            ("application/json", "not json at all"),
            ("application/json", "[1,2]"),
            ("application/token-introspection+jwt", "eyJ.eyJ.sig"),
        ] {
            let e = parse_json_answer(&answer("200", ct, body)).unwrap_err();
            assert!(matches!(e, Fault::ContentType | Fault::NotJson), "{e}");
        }
        let e = parse_json_answer(&Answer {
            status: Some(b"200"),
            content_type: None,
            body: b"{}",
        });
        assert!(e.is_err());
    }

    fn config(extra: serde_json::Value) -> Config {
        let mut v = serde_json::json!({"cluster": "as", "authority": "as", "client_id": "sr",
            "client_secret": "secret"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        Config::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn endpoints(issuer: Option<&str>) -> Endpoints {
        Endpoints {
            introspection_path: "/i".into(),
            issuer: issuer.map(String::from),
            jwks_path: Some("/jwks".into()),
        }
    }

    #[test]
    fn plain_answers_with_another_issuer_are_refused() {
        let c = config(serde_json::json!({}));
        let body = r#"{"active":true,"sub":"u","iss":"https://evil/api/v2"}"#;
        let a = answer("200", "application/json", body);
        assert!(verified_claims(&c, &endpoints(None), None, Crypto::Wasm, &a, 0).is_ok());
        assert!(verified_claims(
            &c,
            &endpoints(Some("https://evil/api/v2")),
            None,
            Crypto::Wasm,
            &a,
            0
        )
        .is_ok());
        assert_eq!(
            verified_claims(
                &c,
                &endpoints(Some("https://as/api/v2")),
                None,
                Crypto::Wasm,
                &a,
                0
            ),
            Err(AnswerError::Fault(Fault::IssuerMismatch))
        );
    }

    #[test]
    fn signed_mode_wants_a_jwt_and_keys() {
        let c = config(serde_json::json!({"signed_response_alg": "RS256",
            "issuer": "https://as/api/v2", "jwks_path": "/jwks"}));
        let e = endpoints(Some("https://as/api/v2"));
        // A plain JSON answer is never accepted in signed mode (no downgrade).
        let plain = answer("200", "application/json", r#"{"active":true,"sub":"u"}"#);
        assert!(matches!(
            verified_claims(&c, &e, None, Crypto::Wasm, &plain, 0),
            Err(AnswerError::Fault(_))
        ));
        // A JWT before any key is loaded: fetch keys, never pass.
        let jwt = answer("200", "application/token-introspection+jwt", "a.b.c");
        assert_eq!(
            verified_claims(&c, &e, None, Crypto::Wasm, &jwt, 0),
            Err(AnswerError::UnknownKey)
        );
        // Errors keep their status, even when a JWT was asked for.
        let err = answer("401", "application/json", r#"{"error":"invalid_client"}"#);
        assert!(matches!(
            verified_claims(&c, &e, None, Crypto::Wasm, &err, 0),
            Err(AnswerError::Fault(Fault::Status { status: 401, .. }))
        ));
    }

    #[test]
    fn media_type_is_normalised() {
        assert_eq!(
            media_type(Some(b"Application/Token-Introspection+JWT; charset=utf-8")).as_deref(),
            Some("application/token-introspection+jwt")
        );
        assert_eq!(media_type(Some(b"\xff")), None);
    }
}

/// Why an answer gave no claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// A signed answer names a key this VM does not have (or has no keys yet): refetching the
    /// JWKS may help.
    UnknownKey,
    /// Unusable answer: 503. Safe to log.
    Fault(Fault),
}

/// The verified claims of an introspection answer, plain or signed as configured.
pub fn verified_claims(
    config: &Config,
    endpoints: &Endpoints,
    jwks: Option<&KeySet>,
    crypto: Crypto<'_>,
    answer: &Answer<'_>,
    now: i64,
) -> Result<Claims, AnswerError> {
    let Some(signed) = &config.signed else {
        let claims = parse_json_answer(answer).map_err(AnswerError::Fault)?;
        // A plain answer that names its issuer must name ours.
        if let (Some(expected), Some(iss)) = (endpoints.issuer.as_deref(), claims.get("iss")) {
            if iss.as_str() != Some(expected) {
                return Err(AnswerError::Fault(Fault::IssuerMismatch));
            }
        }
        return Ok(claims);
    };
    check_status(answer).map_err(AnswerError::Fault)?;
    if media_type(answer.content_type).as_deref() != Some(ACCEPT_JWT) {
        return Err(AnswerError::Fault(Fault::ContentType));
    }
    let Some(issuer) = endpoints.issuer.as_deref() else {
        return Err(AnswerError::Fault(Fault::NotConfigured));
    };
    let keys = match &signed.keys {
        KeySource::ClientSecret => Keys::Secret(config.client.client_secret.expose().as_bytes()),
        KeySource::Inline(set) => Keys::Jwks(set),
        KeySource::Remote { .. } => match jwks {
            Some(set) => Keys::Jwks(set),
            None => return Err(AnswerError::UnknownKey),
        },
    };
    let expect = Expectations {
        alg: signed.alg,
        issuer,
        client_id: &config.client.client_id,
        now,
        leeway: signed.iat_leeway,
        max_age: signed.iat_max_age,
    };
    match jwt::verify(answer.body, keys, crypto, &expect) {
        Ok(claims) => Ok(claims),
        Err(VerifyError::UnknownKey) if matches!(signed.keys, KeySource::Remote { .. }) => {
            Err(AnswerError::UnknownKey)
        }
        Err(e) => Err(AnswerError::Fault(Fault::Jwt(e))),
    }
}

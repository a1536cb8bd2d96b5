//! Why no trustworthy answer was had (the request gets 503), as data.
//!
//! Every fault has a stable short code, used in three places: the log line, the per-cause
//! counter `introspection.denied.unavailable.<code>`, and the local reply's response code
//! details (`%RESPONSE_CODE_DETAILS%` in Envoy's access log). Nothing here can carry a byte of a
//! token, a secret or an answer body: the variants hold only fixed values.

use std::fmt;

use crate::jwt::VerifyError;

/// An error reported by the host (the proxy) for one of its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// A compare-and-swap write found the value changed since it was read.
    CasMismatch,
    /// The host refused the call; the number is its status code.
    Status(u32),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::CasMismatch => f.write_str("CAS mismatch"),
            HostError::Status(s) => write!(f, "host status {s}"),
        }
    }
}

/// An OAuth 2.0 error code from the registered list (RFC 6749 §5.2, RFC 6750 §3.1,
/// RFC 7009 §2.2.1). Anything else an authorization server says is [`OAuthError::Other`]: an
/// echoed value is never logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidToken,
    InsufficientScope,
    AccessDenied,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedTokenType,
    Other,
}

impl OAuthError {
    const ALL: [OAuthError; 12] = [
        OAuthError::InvalidRequest,
        OAuthError::InvalidClient,
        OAuthError::InvalidGrant,
        OAuthError::UnauthorizedClient,
        OAuthError::UnsupportedGrantType,
        OAuthError::InvalidScope,
        OAuthError::InvalidToken,
        OAuthError::InsufficientScope,
        OAuthError::AccessDenied,
        OAuthError::ServerError,
        OAuthError::TemporarilyUnavailable,
        OAuthError::UnsupportedTokenType,
    ];

    /// The registered code this string is, or `Other`.
    pub fn parse(code: &str) -> OAuthError {
        OAuthError::ALL
            .into_iter()
            .find(|e| e.code() == code)
            .unwrap_or(OAuthError::Other)
    }

    pub fn code(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::InvalidToken => "invalid_token",
            OAuthError::InsufficientScope => "insufficient_scope",
            OAuthError::AccessDenied => "access_denied",
            OAuthError::ServerError => "server_error",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthError::UnsupportedTokenType => "unsupported_token_type",
            OAuthError::Other => "unregistered",
        }
    }
}

/// An answer the policy cannot use although it parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// `active` missing or not a boolean.
    Active,
    /// The expiry claim is not a unix time.
    Expiry,
    /// `nbf` is not a unix time.
    NotBefore,
    /// A forwarded claim holds something that cannot become a header value.
    Claim,
}

/// Why no trustworthy answer was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The callout got no answer (connection reset, refused, no upstream).
    CalloutFailed,
    /// No answer before the configured timeout.
    Timeout,
    /// The host would not send the callout (unknown cluster, bad headers).
    DispatchFailed,
    /// A status other than 200; the OAuth error code of the body, if any and registered.
    Status {
        status: u16,
        error: Option<OAuthError>,
    },
    /// Not the expected media type.
    ContentType,
    /// Not a JSON object.
    NotJson,
    /// A JSON object with a duplicated member: parsers disagree on its meaning.
    Ambiguous,
    /// Larger than `max_response_bytes`.
    TooLarge,
    /// A plain answer naming another issuer.
    IssuerMismatch,
    /// A signed answer that does not verify.
    Jwt(VerifyError),
    /// Signed mode and no JWKS loaded yet.
    NoKeys,
    /// The discovery document (or the configuration) is not loaded yet.
    NotConfigured,
    /// A claim the policy needs is unusable.
    Unusable(Unusable),
    /// The host clock could not be read.
    Clock,
    /// Another host call failed (reading headers, setting a header...).
    Host(HostError),
}

impl Fault {
    /// Stable short code: logs, the per-cause counter, the response code details.
    pub fn code(self) -> &'static str {
        match self {
            Fault::CalloutFailed => "callout_failed",
            Fault::Timeout => "timeout",
            Fault::DispatchFailed => "dispatch_failed",
            Fault::Status { status, .. } => match status {
                300..=399 => "status_3xx",
                400..=499 => "status_4xx",
                500..=599 => "status_5xx",
                _ => "status_other",
            },
            Fault::ContentType => "content_type",
            Fault::NotJson => "not_json",
            Fault::Ambiguous => "ambiguous",
            Fault::TooLarge => "too_large",
            Fault::IssuerMismatch => "issuer_mismatch",
            Fault::Jwt(e) => e.code(),
            Fault::NoKeys => "no_keys",
            Fault::NotConfigured => "not_configured",
            Fault::Unusable(Unusable::Active) => "bad_active",
            Fault::Unusable(Unusable::Expiry) => "bad_expiry",
            Fault::Unusable(Unusable::NotBefore) => "bad_nbf",
            Fault::Unusable(Unusable::Claim) => "bad_claim",
            Fault::Clock => "clock",
            Fault::Host(_) => "host_error",
        }
    }

    /// Every code, for defining the counters up front.
    pub const CODES: [&'static str; 38] = [
        "callout_failed",
        "timeout",
        "dispatch_failed",
        "status_3xx",
        "status_4xx",
        "status_5xx",
        "status_other",
        "content_type",
        "not_json",
        "too_large",
        "issuer_mismatch",
        "jwt_unknown_kid",
        "jwt_format",
        "jwt_alg",
        "jwt_typ",
        "jwt_no_key_material",
        "jwt_signature",
        "jwt_payload",
        "jwt_iss",
        "jwt_aud",
        "jwt_iat_missing",
        "jwt_iat_future",
        "jwt_iat_old",
        "jwt_not_introspection",
        "jwt_ambiguous",
        "jwt_crit",
        "jwt_exp",
        "jwt_nbf",
        "jwt_native_check",
        "no_keys",
        "not_configured",
        "bad_active",
        "bad_expiry",
        "bad_nbf",
        "bad_claim",
        "clock",
        "host_error",
        "ambiguous",
    ];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::CalloutFailed => f.write_str("callout failed (reset or no answer)"),
            Fault::Timeout => f.write_str("no answer within the timeout"),
            Fault::DispatchFailed => f.write_str("the host refused to send the callout"),
            Fault::Status { status, error } => {
                write!(f, "authorization server answered status {status}")?;
                match error {
                    Some(e) => write!(f, ", error `{}`", e.code()),
                    None => Ok(()),
                }
            }
            Fault::ContentType => f.write_str("answer has an unexpected Content-Type"),
            Fault::NotJson => f.write_str("answer is not a JSON object"),
            Fault::Ambiguous => f.write_str("answer has a duplicated member"),
            Fault::TooLarge => f.write_str("answer exceeds max_response_bytes"),
            Fault::IssuerMismatch => f.write_str("answer iss is not the configured issuer"),
            Fault::Jwt(e) => f.write_str(e.reason()),
            Fault::NoKeys => f.write_str("no JWKS loaded yet"),
            Fault::NotConfigured => f.write_str("discovery document not loaded yet"),
            Fault::Unusable(Unusable::Active) => f.write_str("answer has no boolean `active`"),
            Fault::Unusable(Unusable::Expiry) => f.write_str("expiry claim is not a unix time"),
            Fault::Unusable(Unusable::NotBefore) => f.write_str("`nbf` is not a unix time"),
            Fault::Unusable(Unusable::Claim) => {
                f.write_str("a forwarded claim cannot be a header value")
            }
            Fault::Clock => f.write_str("cannot read the clock"),
            Fault::Host(e) => write!(f, "host call failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_and_is_a_metric_segment() {
        let mut seen = std::collections::HashSet::new();
        for code in Fault::CODES {
            assert!(seen.insert(code), "{code} listed twice");
            assert!(code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        let samples = [
            Fault::CalloutFailed,
            Fault::Timeout,
            Fault::DispatchFailed,
            Fault::Status {
                status: 302,
                error: None,
            },
            Fault::Status {
                status: 401,
                error: Some(OAuthError::InvalidClient),
            },
            Fault::Status {
                status: 503,
                error: None,
            },
            Fault::Status {
                status: 204,
                error: None,
            },
            Fault::Jwt(VerifyError::Signature),
            Fault::Unusable(Unusable::Claim),
            Fault::Host(HostError::Status(2)),
        ];
        for f in samples {
            assert!(Fault::CODES.contains(&f.code()), "{} not listed", f.code());
        }
    }

    #[test]
    fn only_registered_oauth_codes_are_named() {
        assert_eq!(
            OAuthError::parse("invalid_client"),
            OAuthError::InvalidClient
        );
        assert_eq!(OAuthError::parse("eyJhbGciOi"), OAuthError::Other);
        let f = Fault::Status {
            status: 400,
            error: Some(OAuthError::parse("secret_token_value")),
        };
        assert_eq!(
            f.to_string(),
            "authorization server answered status 400, error `unregistered`"
        );
    }
}

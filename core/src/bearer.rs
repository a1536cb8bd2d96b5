//! Reading the bearer token from the request (RFC 6750 §2.1).

/// How clients write the token after `Bearer ` (`bearer_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BearerEncoding {
    /// The access token as issued (RFC 6750).
    #[default]
    Raw,
    /// `base64(access_token)`, as services built from ProConnect's example send it.
    Base64,
    /// Either: a strict standard-base64 value that decodes to a valid token is used decoded
    /// (as La Suite's resource-server library does), anything else as is.
    RawOrBase64,
}

/// The access token a bearer credential stands for, under `encoding`.
pub fn decode(credential: &str, encoding: BearerEncoding) -> Result<String, Malformed> {
    let decoded = || {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(credential)
            .ok()?;
        (is_b64token(&bytes)).then(|| String::from_utf8(bytes).ok())?
    };
    match encoding {
        BearerEncoding::Raw => Ok(credential.to_string()),
        BearerEncoding::Base64 => decoded().ok_or(Malformed::Encoding),
        BearerEncoding::RawOrBase64 => Ok(decoded().unwrap_or_else(|| credential.to_string())),
    }
}

/// What the request's `Authorization` headers hold. `Debug` never prints the token.
#[derive(PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No `Authorization` header at all.
    Missing,
    /// Something is there but it is not exactly one well-formed bearer token.
    Malformed(Malformed),
    /// One syntactically valid bearer token.
    Bearer(&'a str),
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Missing => f.write_str("Missing"),
            Credentials::Malformed(r) => write!(f, "Malformed({})", r.code()),
            Credentials::Bearer(_) => f.write_str("Bearer([redacted])"),
        }
    }
}

/// Why a request is malformed (400 `invalid_request`, RFC 6750 §3.1): its `Authorization`
/// header is not one well-formed bearer token, or its path cannot be judged by the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Several,
    Empty,
    NoToken,
    Scheme,
    TooLong,
    Syntax,
    /// `bearer_encoding: base64` and the credential is not base64 of a token.
    Encoding,
    /// A path rule would be read on a path that is not normalised (see `rules::is_normal`).
    Path,
}

impl Malformed {
    /// Stable short code.
    pub fn code(self) -> &'static str {
        match self {
            Malformed::Several => "several_headers",
            Malformed::Empty => "empty_header",
            Malformed::NoToken => "no_token",
            Malformed::Scheme => "not_bearer",
            Malformed::TooLong => "too_long",
            Malformed::Syntax => "not_b64token",
            Malformed::Encoding => "not_base64",
            Malformed::Path => "path_not_normalised",
        }
    }

    /// A fixed sentence (it goes in the `error_description` of the challenge).
    pub fn description(self) -> &'static str {
        match self {
            Malformed::Several => "several Authorization headers",
            Malformed::Empty => "empty Authorization header",
            Malformed::NoToken => "Bearer scheme without a token",
            Malformed::Scheme => "Authorization scheme is not Bearer",
            Malformed::TooLong => "bearer token too long",
            Malformed::Syntax => "bearer token is not a b64token",
            Malformed::Encoding => "bearer credential is not the base64 of a token",
            Malformed::Path => "request path is not normalised",
        }
    }
}

/// Reads the bearer token out of every `Authorization` header value of the request.
///
/// Works on raw bytes: a client may send anything, including non-UTF-8.
pub fn extract<'a>(values: &[&'a [u8]], max_token_length: usize) -> Credentials<'a> {
    let value = match values {
        [] => return Credentials::Missing,
        [one] => *one,
        _ => return Credentials::Malformed(Malformed::Several),
    };
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return if value.is_empty() {
            Credentials::Malformed(Malformed::Empty)
        } else if value.eq_ignore_ascii_case(b"bearer") {
            Credentials::Malformed(Malformed::NoToken)
        } else {
            Credentials::Malformed(Malformed::Scheme)
        };
    };
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Credentials::Malformed(Malformed::Scheme);
    }
    // RFC 9110 §11.4: one or more spaces separate the scheme from the credentials.
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let token = rest.get(start..).unwrap_or_default();
    if token.is_empty() {
        return Credentials::Malformed(Malformed::NoToken);
    }
    if token.len() > max_token_length {
        return Credentials::Malformed(Malformed::TooLong);
    }
    if !is_b64token(token) {
        return Credentials::Malformed(Malformed::Syntax);
    }
    match std::str::from_utf8(token) {
        Ok(t) => Credentials::Bearer(t),
        // Unreachable: b64token bytes are ASCII. Still no panic.
        Err(_) => Credentials::Malformed(Malformed::Syntax),
    }
}

/// RFC 6750 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    let (body, _padding) = token.split_at(body_len);
    !body.is_empty()
        && body
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &[u8]) -> Credentials<'_> {
        extract(&[v], 4096)
    }

    #[test]
    fn reads_a_bearer_token() {
        assert_eq!(
            one(b"Bearer abc.DEF-_~+/=="),
            Credentials::Bearer("abc.DEF-_~+/==")
        );
        assert_eq!(one(b"bearer abc"), Credentials::Bearer("abc"));
        assert_eq!(one(b"BEARER abc"), Credentials::Bearer("abc"));
        assert_eq!(one(b"Bearer   abc"), Credentials::Bearer("abc"));
    }

    #[test]
    fn debug_hides_the_token() {
        assert_eq!(format!("{:?}", one(b"Bearer s3cr3t")), "Bearer([redacted])");
    }

    #[test]
    fn no_header_is_missing() {
        assert_eq!(extract(&[], 10), Credentials::Missing);
    }

    #[test]
    fn malformed_inputs() {
        for v in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer  ",
            b"Basic dXNlcjpwYXNz",
            b"Bearerabc",
            b"Bearer a b",
            b"Bearer a,Bearer b",
            b"Bearer =abc",
            b"Bearer ===",
            b"Bearer a=b",
            b"Bearer abc\t",
            b"Bearer \xff\xfe",
            b"Bearer abc\"",
            b"Token abc",
        ] {
            assert!(
                matches!(one(v), Credentials::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn several_headers_are_malformed() {
        assert_eq!(
            extract(&[b"Bearer a", b"Bearer a"], 10),
            Credentials::Malformed(Malformed::Several)
        );
    }

    #[test]
    fn base64_credentials_are_decoded_when_asked() {
        use base64::Engine as _;
        let raw = "ProConnect-token_value.1";
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(decode(&b64, BearerEncoding::Base64).as_deref(), Ok(raw));
        assert_eq!(
            decode(&b64, BearerEncoding::RawOrBase64).as_deref(),
            Ok(raw)
        );
        assert_eq!(
            decode(&b64, BearerEncoding::Raw).as_deref(),
            Ok(b64.as_str())
        );
        assert_eq!(
            decode(raw, BearerEncoding::Base64),
            Err(Malformed::Encoding)
        );
        assert_eq!(decode(raw, BearerEncoding::RawOrBase64).as_deref(), Ok(raw));
    }

    #[test]
    fn base64_of_something_that_is_not_a_token_stays_raw() {
        use base64::Engine as _;
        // Decodes, but to bytes that are no b64token: the credential is the token itself.
        let odd = base64::engine::general_purpose::STANDARD.encode([0xff, 0x00, 0x20, 0x41]);
        assert_eq!(
            decode(&odd, BearerEncoding::RawOrBase64).as_deref(),
            Ok(odd.as_str())
        );
        assert_eq!(
            decode(&odd, BearerEncoding::Base64),
            Err(Malformed::Encoding)
        );
        // Unpadded or URL-safe base64 is not strict standard base64.
        assert_eq!(
            decode("YWJj ", BearerEncoding::Base64),
            Err(Malformed::Encoding)
        );
        assert_eq!(
            decode("YWI", BearerEncoding::Base64),
            Err(Malformed::Encoding)
        );
    }

    #[test]
    fn length_is_bounded() {
        let long = format!("Bearer {}", "a".repeat(33));
        assert_eq!(
            extract(&[long.as_bytes()], 32),
            Credentials::Malformed(Malformed::TooLong)
        );
        let ok = format!("Bearer {}", "a".repeat(32));
        assert!(matches!(
            extract(&[ok.as_bytes()], 32),
            Credentials::Bearer(_)
        ));
    }
}

//! Registered clients (the resource servers that call introspection) and client
//! authentication, following node-oidc-provider 7 as ProConnect runs it.
//!
//! Accepted mechanisms: `client_secret_post` (`client_id` and `client_secret` in the form
//! body) and `client_secret_basic` (RFC 6749 §2.3.1: id and secret each
//! form-urlencoded, joined by `:`, base64). Never both at once.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// The client's `introspection_signed_response_alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigAlg {
    /// Plain JSON answers only.
    #[serde(rename = "none")]
    None,
    /// RSASSA-PKCS1-v1_5 with SHA-256, the server's RSA key.
    RS256,
    /// ECDSA P-256 with SHA-256, the server's EC key.
    ES256,
    /// HMAC SHA-256 keyed with the client's secret.
    HS256,
}

impl SigAlg {
    /// Parses the names used on the command line (`none`, `RS256`, `ES256`, `HS256`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "RS256" => Some(Self::RS256),
            "ES256" => Some(Self::ES256),
            "HS256" => Some(Self::HS256),
            _ => None,
        }
    }

    /// The JWS `alg` name (`none` for [`SigAlg::None`]).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::HS256 => "HS256",
        }
    }
}

/// One registered client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Client {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (never logged).
    pub client_secret: String,
    /// `introspection_signed_response_alg`; absent or null means `none`.
    #[serde(default = "default_alg", deserialize_with = "deserialize_alg")]
    pub introspection_signed_response_alg: SigAlg,
}

fn default_alg() -> SigAlg {
    SigAlg::None
}

fn deserialize_alg<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SigAlg, D::Error> {
    Ok(Option::<SigAlg>::deserialize(d)?.unwrap_or(SigAlg::None))
}

/// Parses `ID:SECRET[:ALG]`. The secret may itself contain `:`; the last segment is
/// taken as the alg only when it is one of `none|RS256|ES256|HS256`.
pub fn parse_client_arg(text: &str) -> Result<Client, String> {
    let (id, rest) = text
        .split_once(':')
        .ok_or_else(|| "expected ID:SECRET[:ALG]".to_owned())?;
    let (secret, alg) = match rest.rsplit_once(':') {
        Some((secret, alg)) => match SigAlg::parse(alg) {
            Some(alg) => (secret, alg),
            None => (rest, SigAlg::None),
        },
        None => (rest, SigAlg::None),
    };
    if id.is_empty() || secret.is_empty() {
        return Err("client id and secret must not be empty".to_owned());
    }
    Ok(Client {
        client_id: id.to_owned(),
        client_secret: secret.to_owned(),
        introspection_signed_response_alg: alg,
    })
}

/// Parses a clients file: `[{"client_id":..,"client_secret":..,"introspection_signed_response_alg":..}]`.
pub fn parse_clients_json(text: &str) -> Result<Vec<Client>, String> {
    let clients: Vec<Client> =
        serde_json::from_str(text).map_err(|e| format!("invalid clients file: {e}"))?;
    if clients
        .iter()
        .any(|c| c.client_id.is_empty() || c.client_secret.is_empty())
    {
        return Err("client id and secret must not be empty".to_owned());
    }
    Ok(clients)
}

/// The registered clients, by id.
#[derive(Debug, Default)]
pub struct Clients {
    by_id: HashMap<String, Client>,
}

impl Clients {
    /// Registers clients; a later entry with the same id replaces an earlier one.
    pub fn new(list: impl IntoIterator<Item = Client>) -> Self {
        Self {
            by_id: list.into_iter().map(|c| (c.client_id.clone(), c)).collect(),
        }
    }

    /// `id(alg)` for each client, sorted, for the startup log (no secrets).
    pub fn summary(&self) -> String {
        let mut items: Vec<String> = self
            .by_id
            .values()
            .map(|c| {
                format!(
                    "{}({})",
                    c.client_id,
                    c.introspection_signed_response_alg.name()
                )
            })
            .collect();
        items.sort();
        items.join(" ")
    }

    /// Looks a client up.
    pub fn get(&self, id: &str) -> Option<&Client> {
        self.by_id.get(id)
    }
}

/// An OAuth error answer: status, `error`, `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: u16,
    /// `error` code.
    pub error: &'static str,
    /// `error_description`.
    pub description: String,
}

impl OAuthError {
    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self {
            status: 400,
            error: "invalid_request",
            description: description.into(),
        }
    }

    /// 401 `invalid_client` "client authentication failed".
    pub fn invalid_client() -> Self {
        Self {
            status: 401,
            error: "invalid_client",
            description: "client authentication failed".to_owned(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({"error": self.error, "error_description": self.description})
            .to_string()
            .into_bytes()
    }
}

/// A decoded `application/x-www-form-urlencoded` body, keeping the raw key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormParams {
    pairs: Vec<(String, String)>,
}

impl FormParams {
    /// Decodes a form body.
    pub fn parse(body: &[u8]) -> Self {
        Self {
            pairs: form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    /// The first value of `key`, treating an empty value as absent (as node-oidc-provider does).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The first parameter that appears more than once, if any.
    pub fn duplicate(&self) -> Option<&str> {
        self.pairs.iter().enumerate().find_map(|(i, (k, _))| {
            self.pairs
                .iter()
                .skip(i + 1)
                .any(|(other, _)| other == k)
                .then_some(k.as_str())
        })
    }

    /// Keys in the order they were sent (duplicates included).
    pub fn keys(&self) -> Vec<String> {
        self.pairs.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Key → value (first value), with `client_secret` replaced by `[redacted]`.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for (k, v) in &self.pairs {
            let value = if k == "client_secret" {
                "[redacted]".to_owned()
            } else {
                v.clone()
            };
            map.entry(k.clone()).or_insert(value);
        }
        map
    }
}

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// HTTP Basic.
    ClientSecretBasic,
}

impl AuthMethod {
    /// The registered name of the method.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
        }
    }
}

/// Strict `application/x-www-form-urlencoded` decoding of one Basic credential part
/// (`+` is a space; a bad `%` escape or bad UTF-8 is an error), like node-oidc-provider's
/// `decodeURIComponent(value.replace(/\+/g, '%20'))`.
pub fn decode_credential(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut iter = bytes.iter();
    while let Some(&b) = iter.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = iter.next().and_then(|c| (*c as char).to_digit(16))?;
                let lo = iter.next().and_then(|c| (*c as char).to_digit(16))?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

/// Parses an `Authorization` header as HTTP Basic client credentials.
pub fn parse_basic(value: &str) -> Result<(String, String), OAuthError> {
    let format_error = || OAuthError::invalid_request("invalid authorization header value format");
    let mut parts = value.split(' ');
    let (Some(scheme), Some(credentials), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format_error());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(format_error());
    }
    let decoded = STANDARD
        .decode(credentials)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(format_error)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(format_error)?;
    let not_encoded = || {
        OAuthError::invalid_request(
            "client_id and client_secret in the authorization header are not properly encoded",
        )
    };
    let id = decode_credential(id).ok_or_else(not_encoded)?;
    let secret = decode_credential(secret).ok_or_else(not_encoded)?;
    Ok((id, secret))
}

/// Compares secrets without an early exit on the first difference.
fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request presented, before checking it: method and client id (for wire checks).
pub fn attempted(
    authorization: Option<&str>,
    params: &FormParams,
) -> (Option<AuthMethod>, Option<String>) {
    if let Some(header) = authorization {
        let id = parse_basic(header).ok().map(|(id, _)| id);
        return (
            Some(AuthMethod::ClientSecretBasic),
            id.or_else(|| params.get("client_id").map(str::to_owned)),
        );
    }
    let id = params.get("client_id").map(str::to_owned);
    if params.get("client_secret").is_some() {
        (Some(AuthMethod::ClientSecretPost), id)
    } else {
        (None, id)
    }
}

/// Authenticates the calling client from the `Authorization` header and the form.
pub fn authenticate<'a>(
    clients: &'a Clients,
    authorization: Option<&str>,
    params: &FormParams,
) -> Result<(&'a Client, AuthMethod), OAuthError> {
    let body_id = params.get("client_id");
    let (id, secret, method) = if let Some(header) = authorization {
        let (id, secret) = parse_basic(header)?;
        if body_id.is_some_and(|b| b != id) {
            return Err(OAuthError::invalid_request(
                "mismatch in body and authorization client ids",
            ));
        }
        if params.get("client_secret").is_some() || params.get("client_assertion").is_some() {
            return Err(OAuthError::invalid_request(
                "client authentication must only be provided using one mechanism",
            ));
        }
        (id, Some(secret), AuthMethod::ClientSecretBasic)
    } else {
        let Some(id) = body_id else {
            return Err(OAuthError::invalid_request(
                "no client authentication mechanism provided",
            ));
        };
        if params.get("client_assertion").is_some() {
            if params.get("client_secret").is_some() {
                return Err(OAuthError::invalid_request(
                    "client authentication must only be provided using one mechanism",
                ));
            }
            // private_key_jwt is advertised (as ProConnect does) but no client here uses it.
            return Err(OAuthError::invalid_client());
        }
        (
            id.to_owned(),
            params.get("client_secret").map(str::to_owned),
            AuthMethod::ClientSecretPost,
        )
    };
    let client = clients.get(&id).ok_or_else(OAuthError::invalid_client)?;
    match secret {
        Some(s) if !s.is_empty() && secrets_equal(&s, &client.client_secret) => {
            Ok((client, method))
        }
        _ => Err(OAuthError::invalid_client()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn clients() -> Clients {
        Clients::new([
            parse_client_arg("sr:s3cret").unwrap(),
            parse_client_arg("sr sig:a:b&c=d%:RS256").unwrap(),
        ])
    }

    fn basic(id: &str, secret: &str) -> String {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
        )
    }

    #[test]
    fn client_arg_parsing() {
        let c = parse_client_arg("a:b").unwrap();
        assert_eq!((c.client_id.as_str(), c.client_secret.as_str()), ("a", "b"));
        assert_eq!(c.introspection_signed_response_alg, SigAlg::None);
        let c = parse_client_arg("a:b:c:ES256").unwrap();
        assert_eq!(c.client_secret, "b:c");
        assert_eq!(c.introspection_signed_response_alg, SigAlg::ES256);
        let c = parse_client_arg("a:b:c").unwrap();
        assert_eq!(c.client_secret, "b:c");
        assert!(parse_client_arg("a").is_err());
        assert!(parse_client_arg(":b").is_err());
        assert!(parse_client_arg("a::HS256").is_err());
    }

    #[test]
    fn clients_file_parsing() {
        let list = parse_clients_json(
            r#"[{"client_id":"a","client_secret":"x","introspection_signed_response_alg":"HS256"},
                {"client_id":"b","client_secret":"y"},
                {"client_id":"c","client_secret":"z","introspection_signed_response_alg":null}]"#,
        )
        .unwrap();
        let algs: Vec<_> = list
            .iter()
            .map(|c| c.introspection_signed_response_alg)
            .collect();
        assert_eq!(algs, [SigAlg::HS256, SigAlg::None, SigAlg::None]);
        assert!(parse_clients_json(r#"[{"client_id":"a"}]"#).is_err());
        assert!(parse_clients_json(
            r#"[{"client_id":"a","client_secret":"x","introspection_signed_response_alg":"PS256"}]"#
        )
        .is_err());
    }

    #[test]
    fn client_secret_post() {
        let cs = clients();
        let p = FormParams::parse(b"token=t&client_id=sr&client_secret=s3cret");
        let (c, m) = authenticate(&cs, None, &p).unwrap();
        assert_eq!(c.client_id, "sr");
        assert_eq!(m, AuthMethod::ClientSecretPost);
    }

    #[test]
    fn client_secret_basic_with_encoding() {
        let cs = clients();
        let p = FormParams::parse(b"token=t");
        let header = basic("sr sig", "a:b&c=d%");
        let (c, m) = authenticate(&cs, Some(&header), &p).unwrap();
        assert_eq!(c.client_id, "sr sig");
        assert_eq!(m, AuthMethod::ClientSecretBasic);
        // Same client_id in the body is allowed.
        let p = FormParams::parse(b"token=t&client_id=sr+sig");
        assert!(authenticate(&cs, Some(&header), &p).is_ok());
        // Lower-case scheme is accepted.
        let lower = header.replacen("Basic", "basic", 1);
        assert!(authenticate(&cs, Some(&lower), &p).is_ok());
    }

    #[test]
    fn both_mechanisms_rejected() {
        let cs = clients();
        let p = FormParams::parse(b"token=t&client_id=sr&client_secret=s3cret");
        let e = authenticate(&cs, Some(&basic("sr", "s3cret")), &p).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.error, "invalid_request");
        assert_eq!(
            e.description,
            "client authentication must only be provided using one mechanism"
        );
    }

    #[test]
    fn failures() {
        let cs = clients();
        let e = authenticate(&cs, None, &FormParams::parse(b"token=t")).unwrap_err();
        assert_eq!(
            (e.status, e.error, e.description.as_str()),
            (
                400,
                "invalid_request",
                "no client authentication mechanism provided"
            )
        );
        for body in [
            &b"client_id=sr"[..],
            b"client_id=sr&client_secret=",
            b"client_id=sr&client_secret=wrong",
            b"client_id=nobody&client_secret=s3cret",
            b"client_id=sr&client_assertion=x",
        ] {
            let e = authenticate(&cs, None, &FormParams::parse(body)).unwrap_err();
            assert_eq!(e, OAuthError::invalid_client(), "{body:?}");
        }
        let p = FormParams::parse(b"token=t");
        let e = authenticate(&cs, Some(&basic("sr", "nope")), &p).unwrap_err();
        assert_eq!(e.status, 401);
        let e = authenticate(&cs, Some(&basic("sr", "")), &p).unwrap_err();
        assert_eq!(e.status, 401);
        let e = authenticate(&cs, Some("Bearer abc"), &p).unwrap_err();
        assert_eq!(e.status, 400);
        let e = authenticate(&cs, Some("Basic !!!"), &p).unwrap_err();
        assert_eq!(e.status, 400);
        let e = authenticate(
            &cs,
            Some(&format!("Basic {}", STANDARD.encode("sr%zz:x"))),
            &p,
        )
        .unwrap_err();
        assert_eq!(
            e.description,
            "client_id and client_secret in the authorization header are not properly encoded"
        );
        let p = FormParams::parse(b"token=t&client_id=other");
        let e = authenticate(&cs, Some(&basic("sr", "s3cret")), &p).unwrap_err();
        assert_eq!(
            e.description,
            "mismatch in body and authorization client ids"
        );
    }

    #[test]
    fn credential_decoding() {
        assert_eq!(decode_credential("a+b%3Ac").as_deref(), Some("a b:c"));
        assert_eq!(decode_credential("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode_credential("%zz"), None);
        assert_eq!(decode_credential("%4"), None);
        assert_eq!(decode_credential("%ff"), None);
    }

    #[test]
    fn form_params() {
        let p = FormParams::parse(b"token=a%2Bb%3D&client_secret=x&token_type_hint=&token=c");
        assert_eq!(p.get("token"), Some("a+b="));
        assert_eq!(p.get("token_type_hint"), None);
        assert_eq!(p.duplicate(), Some("token"));
        assert_eq!(
            p.keys(),
            ["token", "client_secret", "token_type_hint", "token"]
        );
        let r = p.redacted();
        assert_eq!(r["client_secret"], "[redacted]");
        assert_eq!(r["token"], "a+b=");
        assert_eq!(FormParams::parse(b"a=1&b=2").duplicate(), None);
    }

    #[test]
    fn attempted_auth() {
        let p = FormParams::parse(b"client_id=x&client_secret=y");
        assert_eq!(
            attempted(None, &p),
            (Some(AuthMethod::ClientSecretPost), Some("x".to_owned()))
        );
        let p = FormParams::parse(b"token=t");
        assert_eq!(
            attempted(Some(&basic("sr", "z")), &p),
            (Some(AuthMethod::ClientSecretBasic), Some("sr".to_owned()))
        );
        assert_eq!(attempted(None, &p), (None, None));
    }
}

//! Plugin configuration: the JSON Envoy hands to `on_configure`, parsed, validated and compiled
//! into a [`Config`] once. Every error names the offending field.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::secret::Secret;

/// How the filter authenticates to the introspection endpoint (RFC 7662 §2.1, RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (ProConnect's choice).
    ClientSecretPost,
    /// HTTP Basic with the id and the secret form-urlencoded before base64.
    ClientSecretBasic,
}

/// A configuration error: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: `{}`: {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// The configuration as written by the operator (JSON). Unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<String>,
    authority: Option<String>,
    #[serde(default = "default_introspection_path")]
    introspection_path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    client_id: Option<String>,
    /// Kept as a raw JSON value so a mistyped secret is never echoed in a serde error message.
    client_secret: Option<serde_json::Value>,
    #[serde(default = "default_client_auth")]
    client_auth: ClientAuth,
    #[serde(default)]
    token_type_hint: Option<String>,
    #[serde(default = "default_user_claim")]
    user_claim: String,
    #[serde(default = "default_expiry_claim")]
    expiry_claim: String,
    #[serde(default)]
    allow_missing_token_type: bool,
    #[serde(default = "default_user_header")]
    user_header: String,
    #[serde(default)]
    claim_headers: BTreeMap<String, String>,
    #[serde(default)]
    required_scopes: Vec<String>,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    forward_authorization: bool,
    #[serde(default = "default_max_token_length")]
    max_token_length: usize,
    #[serde(default = "default_max_response_bytes")]
    max_response_bytes: usize,
}

fn default_introspection_path() -> String {
    "/api/v2/token/introspection".to_string()
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_client_auth() -> ClientAuth {
    ClientAuth::ClientSecretPost
}
fn default_user_claim() -> String {
    "sub".to_string()
}
fn default_expiry_claim() -> String {
    "exp".to_string()
}
fn default_user_header() -> String {
    "x-user-sub".to_string()
}
fn default_realm() -> String {
    "api".to_string()
}
fn default_max_token_length() -> usize {
    4096
}
fn default_max_response_bytes() -> usize {
    64 * 1024
}

/// The validated configuration the filter runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Envoy cluster of the authorization server.
    pub cluster: String,
    /// `:authority` of the callout.
    pub authority: String,
    /// `:path` of the introspection endpoint.
    pub introspection_path: String,
    /// Callout timeout.
    pub timeout: Duration,
    pub client_id: String,
    pub client_secret: Secret,
    pub client_auth: ClientAuth,
    pub token_type_hint: Option<String>,
    /// The claim that names the user (`sub`; OAuthSD: `user_id`).
    pub user_claim: String,
    /// The claim that carries the expiry in unix seconds (`exp`; OAuthSD: `expires`).
    pub expiry_claim: String,
    /// Accept an active answer with no `token_type` at all (servers that never send one).
    pub allow_missing_token_type: bool,
    /// Upstream header that receives the user claim.
    pub user_header: String,
    /// Further claims forwarded upstream: (claim, header), sorted by claim.
    pub claim_headers: Vec<(String, String)>,
    /// Scopes that must all be present in the answer's `scope`.
    pub required_scopes: Vec<String>,
    pub realm: String,
    /// Whether the client's `Authorization` header reaches the upstream.
    pub forward_authorization: bool,
    pub max_token_length: usize,
    pub max_response_bytes: usize,
    /// Every header the filter may set, lowercase: removed from each incoming request.
    pub identity_headers: Vec<String>,
}

const MAX_TIMEOUT_MS: u64 = 60_000;

impl Config {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ConfigError::new(
                "(plugin configuration)",
                "is empty; at least `cluster`, `authority`, `client_id` and `client_secret` are required",
            ));
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            // serde names the unknown or mistyped field in its message; it never echoes values
            // of string fields, so no secret leaks through here.
            ConfigError::new("(plugin configuration)", e.to_string())
        })?;
        Config::compile(raw)
    }

    fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
        let cluster = required(raw.cluster, "cluster")?;
        let authority = required(raw.authority, "authority")?;
        if !authority.bytes().all(is_authority_byte) {
            return Err(ConfigError::new(
                "authority",
                "must be a host name with an optional port",
            ));
        }
        let introspection_path = raw.introspection_path;
        if !introspection_path.starts_with('/') || !introspection_path.bytes().all(is_path_byte) {
            return Err(ConfigError::new(
                "introspection_path",
                "must start with `/` and contain only URL path characters",
            ));
        }
        if raw.timeout_ms == 0 || raw.timeout_ms > MAX_TIMEOUT_MS {
            return Err(ConfigError::new(
                "timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        let client_id = required(raw.client_id, "client_id")?;
        if client_id.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "client_id",
                "must not contain control characters",
            ));
        }
        let client_secret = match raw.client_secret {
            Some(serde_json::Value::String(s)) => Secret::new(required(Some(s), "client_secret")?),
            Some(_) => return Err(ConfigError::new("client_secret", "must be a string")),
            None => return Err(ConfigError::new("client_secret", "is required")),
        };
        if let Some(hint) = &raw.token_type_hint {
            if hint.is_empty() || !hint.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "token_type_hint",
                    "must be a non-empty token such as `access_token`",
                ));
            }
        }
        for (field, claim) in [
            ("user_claim", &raw.user_claim),
            ("expiry_claim", &raw.expiry_claim),
        ] {
            if claim.is_empty() {
                return Err(ConfigError::new(field, "must not be empty"));
            }
        }

        let mut identity_headers = Vec::new();
        let user_header = header_name(&raw.user_header, "user_header")?;
        identity_headers.push(user_header.clone());
        let mut claim_headers = Vec::new();
        for (claim, header) in raw.claim_headers {
            let field = format!("claim_headers.{claim}");
            if claim.is_empty() {
                return Err(ConfigError::new("claim_headers", "a claim name is empty"));
            }
            let header = header_name(&header, &field)?;
            if identity_headers.contains(&header) {
                return Err(ConfigError::new(
                    field,
                    format!("header `{header}` is already set by another claim"),
                ));
            }
            identity_headers.push(header.clone());
            claim_headers.push((claim, header));
        }

        let mut required_scopes = Vec::new();
        for scope in raw.required_scopes {
            if scope.is_empty() || !scope.bytes().all(is_scope_byte) {
                return Err(ConfigError::new(
                    "required_scopes",
                    "each scope must be a non-empty scope-token (RFC 6749 §3.3): no spaces, quotes or backslashes",
                ));
            }
            if !required_scopes.contains(&scope) {
                required_scopes.push(scope);
            }
        }
        if raw.realm.is_empty() || !raw.realm.bytes().all(is_quoted_string_byte) {
            return Err(ConfigError::new(
                "realm",
                "must be non-empty printable ASCII without `\"` or `\\`",
            ));
        }
        if !(16..=64 * 1024).contains(&raw.max_token_length) {
            return Err(ConfigError::new(
                "max_token_length",
                "must be between 16 and 65536",
            ));
        }
        if !(256..=1024 * 1024).contains(&raw.max_response_bytes) {
            return Err(ConfigError::new(
                "max_response_bytes",
                "must be between 256 and 1048576",
            ));
        }

        Ok(Config {
            cluster,
            authority,
            introspection_path,
            timeout: Duration::from_millis(raw.timeout_ms),
            client_id,
            client_secret,
            client_auth: raw.client_auth,
            token_type_hint: raw.token_type_hint,
            user_claim: raw.user_claim,
            expiry_claim: raw.expiry_claim,
            allow_missing_token_type: raw.allow_missing_token_type,
            user_header,
            claim_headers,
            required_scopes,
            realm: raw.realm,
            forward_authorization: raw.forward_authorization,
            max_token_length: raw.max_token_length,
            max_response_bytes: raw.max_response_bytes,
            identity_headers,
        })
    }
}

fn required(value: Option<String>, field: &str) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(ConfigError::new(field, "must not be empty")),
        None => Err(ConfigError::new(field, "is required")),
    }
}

/// Headers the filter must never set: they carry routing, framing or the credentials themselves.
const FORBIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

fn header_name(name: &str, field: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty() || !lower.bytes().all(is_token_byte) {
        return Err(ConfigError::new(
            field,
            "must be a valid HTTP header name (RFC 9110 token)",
        ));
    }
    if FORBIDDEN_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-envoy-") {
        return Err(ConfigError::new(
            field,
            format!("`{lower}` cannot be used as an identity header"),
        ));
    }
    Ok(lower)
}

/// RFC 9110 `tchar`.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)
}

/// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
pub(crate) fn is_scope_byte(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
}

fn is_quoted_string_byte(b: u8) -> bool {
    (0x20..=0x7E).contains(&b) && b != b'"' && b != b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "cluster": "proconnect",
            "authority": "auth.agentconnect.gouv.fr",
            "client_id": "sr-client",
            "client_secret": "s3cr3t-value"
        })
    }

    fn with(field: &str, value: serde_json::Value) -> Result<Config, ConfigError> {
        let mut v = minimal();
        v[field] = value;
        Config::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_json(minimal().to_string().as_bytes()).unwrap();
        assert_eq!(c.introspection_path, "/api/v2/token/introspection");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(c.user_claim, "sub");
        assert_eq!(c.expiry_claim, "exp");
        assert_eq!(c.user_header, "x-user-sub");
        assert_eq!(c.identity_headers, vec!["x-user-sub".to_string()]);
        assert!(!c.forward_authorization);
        assert!(!c.allow_missing_token_type);
        assert_eq!(c.max_token_length, 4096);
        assert_eq!(c.token_type_hint, None);
    }

    #[test]
    fn missing_required_fields_are_named() {
        for field in ["cluster", "authority", "client_id", "client_secret"] {
            let mut v = minimal();
            v.as_object_mut().unwrap().remove(field);
            let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field));
        }
        let err = with("client_id", serde_json::json!("")).unwrap_err();
        assert_eq!(err.field, "client_id");
    }

    #[test]
    fn unknown_field_is_refused_and_named() {
        let err = with("clien_secret", serde_json::json!("x")).unwrap_err();
        assert!(err.reason.contains("clien_secret"), "{err}");
    }

    #[test]
    fn empty_configuration_is_refused() {
        assert!(Config::from_json(b"").is_err());
        assert!(Config::from_json(b"  ").is_err());
        assert!(Config::from_json(b"[]").is_err());
    }

    #[test]
    fn secret_never_appears_in_errors() {
        let mut v = minimal();
        v["client_secret"] = serde_json::json!(12345);
        let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(!err.to_string().contains("12345"), "{err}");
        v["client_secret"] = serde_json::json!(["s3cr3t-value"]);
        let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn field_checks() {
        assert_eq!(
            with("timeout_ms", 0.into()).unwrap_err().field,
            "timeout_ms"
        );
        assert_eq!(
            with("timeout_ms", 60_001.into()).unwrap_err().field,
            "timeout_ms"
        );
        assert_eq!(
            with("introspection_path", "token".into())
                .unwrap_err()
                .field,
            "introspection_path"
        );
        assert_eq!(
            with("authority", "a b".into()).unwrap_err().field,
            "authority"
        );
        assert_eq!(
            with("client_auth", "private_key_jwt".into())
                .unwrap_err()
                .field,
            "(plugin configuration)"
        );
        assert_eq!(with("realm", "a\"b".into()).unwrap_err().field, "realm");
        assert_eq!(
            with("required_scopes", serde_json::json!(["ok", "two words"]))
                .unwrap_err()
                .field,
            "required_scopes"
        );
        assert_eq!(
            with("user_header", "authorization".into())
                .unwrap_err()
                .field,
            "user_header"
        );
        assert_eq!(
            with("user_header", "x user".into()).unwrap_err().field,
            "user_header"
        );
        assert_eq!(
            with("max_token_length", 1.into()).unwrap_err().field,
            "max_token_length"
        );
        assert_eq!(
            with("token_type_hint", "".into()).unwrap_err().field,
            "token_type_hint"
        );
        assert_eq!(
            with("user_claim", "".into()).unwrap_err().field,
            "user_claim"
        );
    }

    #[test]
    fn claim_headers_are_identity_headers() {
        let c = with(
            "claim_headers",
            serde_json::json!({"client_id": "X-Token-Client-Id", "scope": "x-token-scope"}),
        )
        .unwrap();
        assert_eq!(
            c.identity_headers,
            vec!["x-user-sub", "x-token-client-id", "x-token-scope"]
        );
        assert_eq!(
            c.claim_headers,
            vec![
                ("client_id".to_string(), "x-token-client-id".to_string()),
                ("scope".to_string(), "x-token-scope".to_string())
            ]
        );
        let err = with("claim_headers", serde_json::json!({"uid": "x-user-sub"})).unwrap_err();
        assert_eq!(err.field, "claim_headers.uid");
    }

    #[test]
    fn oauthsd_style() {
        let mut v = minimal();
        v["user_claim"] = "user_id".into();
        v["expiry_claim"] = "expires".into();
        v["allow_missing_token_type"] = true.into();
        v["client_auth"] = "client_secret_basic".into();
        v["introspection_path"] = "/introspect".into();
        let c = Config::from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.client_auth, ClientAuth::ClientSecretBasic);
        assert_eq!(c.user_claim, "user_id");
        assert!(c.allow_missing_token_type);
    }
}

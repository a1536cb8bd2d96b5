//! Plugin configuration: the JSON Envoy hands to `on_configure`, parsed, validated and compiled
//! into a [`Config`] once. Every error names the offending field.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::jwt::{KeySet, SigningAlg};
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
    #[serde(default)]
    introspection_path: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    client_id: Option<String>,
    /// Kept as a raw JSON value so a mistyped secret is never echoed in a serde error message.
    client_secret: Option<serde_json::Value>,
    #[serde(default)]
    client_secret_env: Option<String>,
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
    #[serde(default)]
    signed_response_alg: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    #[serde(default)]
    jwks_path: Option<String>,
    #[serde(default)]
    jwks_cluster: Option<String>,
    #[serde(default)]
    jwks_authority: Option<String>,
    #[serde(default)]
    discovery_path: Option<String>,
    #[serde(default)]
    jwks_refresh_secs: Option<u64>,
    #[serde(default)]
    jwks_refetch_interval_secs: Option<u64>,
    #[serde(default)]
    iat_leeway_secs: Option<u64>,
    #[serde(default)]
    iat_max_age_secs: Option<u64>,
    #[serde(default)]
    cache: Option<RawCache>,
}

/// `cache` in the configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_entries: Option<u32>,
    max_ttl_secs: Option<u32>,
    no_exp_ttl_secs: Option<u32>,
    inactive_ttl_secs: Option<u32>,
}

impl RawConfig {
    /// Where JWKS keys would come from.
    fn key_settings(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("jwks", self.jwks.is_some()),
            ("jwks_path", self.jwks_path.is_some()),
        ]
    }

    /// Settings that only matter when the JWKS is fetched.
    fn fetch_settings(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("jwks_cluster", self.jwks_cluster.is_some()),
            ("jwks_authority", self.jwks_authority.is_some()),
            ("jwks_refresh_secs", self.jwks_refresh_secs.is_some()),
            (
                "jwks_refetch_interval_secs",
                self.jwks_refetch_interval_secs.is_some(),
            ),
        ]
    }

    /// Settings of signed answers' `iat` checks.
    fn iat_settings(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("iat_leeway_secs", self.iat_leeway_secs.is_some()),
            ("iat_max_age_secs", self.iat_max_age_secs.is_some()),
        ]
    }
}

/// Refuses the first of `fields` that is set: a setting that would do nothing is a mistake
/// worth reporting, like an unknown field.
fn refuse_any(fields: &[(&'static str, bool)], reason: &str) -> Result<(), ConfigError> {
    match fields.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ConfigError::new(*field, reason)),
        None => Ok(()),
    }
}

const DEFAULT_JWKS_REFRESH_SECS: u64 = 600;
const DEFAULT_JWKS_REFETCH_INTERVAL_SECS: u64 = 30;
const DEFAULT_IAT_LEEWAY_SECS: u64 = 30;
const DEFAULT_IAT_MAX_AGE_SECS: u64 = 120;

/// ProConnect's introspection path, the default.
pub const DEFAULT_INTROSPECTION_PATH: &str = "/api/v2/token/introspection";
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

/// Cache settings (`cache` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Number of slots; 0 disables the cache.
    pub max_entries: u32,
    /// Longest life of an active entry, seconds.
    pub max_ttl: i64,
    /// Life of an active answer that carries no expiry; 0: not cached.
    pub no_exp_ttl: i64,
    /// Life of an inactive answer; 0: not cached.
    pub inactive_ttl: i64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            max_entries: 10_000,
            max_ttl: 60,
            no_exp_ttl: 0,
            inactive_ttl: 10,
        }
    }
}

impl CachePolicy {
    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }
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
    /// Signed answers (RFC 9701), or `None` for plain JSON.
    pub signed: Option<Signed>,
    /// Expected `iss`; checked on signed answers, and on plain answers that carry one.
    /// `None` only when it comes from the discovery document.
    pub issuer: Option<String>,
    /// Path of the discovery document to read at start, on `cluster`.
    pub discovery_path: Option<String>,
    /// Whether `introspection_path` was set explicitly (discovery does not override it then).
    pub introspection_path_explicit: bool,
    pub cache: CachePolicy,
}

/// Where the verification keys of signed answers come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// HS256: the raw bytes of the client secret.
    ClientSecret,
    /// A JWKS given in the configuration, parsed once.
    Inline(KeySet),
    /// A JWKS fetched through Envoy; `path` is `None` until discovery provides it.
    Remote {
        cluster: String,
        authority: String,
        path: Option<String>,
    },
}

/// Settings of the signed mode.
#[derive(Debug, Clone)]
pub struct Signed {
    pub alg: SigningAlg,
    pub keys: KeySource,
    pub refresh: Duration,
    pub refetch_interval: Duration,
    pub iat_leeway: i64,
    pub iat_max_age: i64,
}

const MAX_TIMEOUT_MS: u64 = 60_000;

impl Config {
    /// Parses and validates the plugin configuration (no environment: `client_secret_env`
    /// cannot resolve).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::from_json_with_env(bytes, &|_| None)
    }

    /// Parses and validates the plugin configuration; `env` reads the VM's environment
    /// variables (for `client_secret_env`).
    pub fn from_json_with_env(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ConfigError::new(
                "(plugin configuration)",
                "is empty; at least `cluster`, `authority`, `client_id` and `client_secret` are required",
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            let at = format!("line {}, column {}", e.line(), e.column());
            ConfigError::new("(plugin configuration)", format!("is not JSON ({at})"))
        })?;
        if !value.is_object() {
            return Err(ConfigError::new(
                "(plugin configuration)",
                "must be a JSON object",
            ));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(field_error)?;
        Config::compile(raw, env)
    }

    fn compile(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // Which optional settings are present, read before fields are moved out.
        let key_fields = raw.key_settings();
        let fetch_fields = raw.fetch_settings();
        let iat_fields = raw.iat_settings();
        let cluster = required(raw.cluster, "cluster")?;
        let authority = required(raw.authority, "authority")?;
        if !authority.bytes().all(is_authority_byte) {
            return Err(ConfigError::new(
                "authority",
                "must be a host name with an optional port",
            ));
        }
        let introspection_path_explicit = raw.introspection_path.is_some();
        let introspection_path = raw
            .introspection_path
            .unwrap_or_else(|| DEFAULT_INTROSPECTION_PATH.to_string());
        check_path(&introspection_path, "introspection_path")?;
        if let Some(p) = &raw.discovery_path {
            check_path(p, "discovery_path")?;
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
        let client_secret = match (raw.client_secret, raw.client_secret_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "client_secret_env",
                    "give either `client_secret` or `client_secret_env`, not both",
                ))
            }
            (Some(serde_json::Value::String(s)), None) => {
                Secret::new(required(Some(s), "client_secret")?)
            }
            (Some(_), None) => return Err(ConfigError::new("client_secret", "must be a string")),
            (None, Some(name)) => {
                // Echo the name only if it looks like one: a secret pasted here stays unlogged.
                let looks_like_name = !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !looks_like_name {
                    return Err(ConfigError::new(
                        "client_secret_env",
                        "must be an environment variable name (letters, digits, `_`)",
                    ));
                }
                match env(&name) {
                    Some(value) if !value.is_empty() => Secret::new(value),
                    _ => {
                        return Err(ConfigError::new(
                            "client_secret_env",
                            "names an environment variable that is not set in the VM (Envoy: vm_config.environment_variables; Istio: vmConfig.env)",
                        ))
                    }
                }
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "client_secret",
                    "is required (or `client_secret_env`)",
                ))
            }
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
            if identity_headers
                .iter()
                .any(|h: &String| same_header(h.as_bytes(), header.as_bytes()))
            {
                return Err(ConfigError::new(
                    field,
                    "names a header already set by another claim",
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

        let issuer = match raw.issuer {
            Some(i) if i.is_empty() || i.chars().any(char::is_control) => {
                return Err(ConfigError::new("issuer", "must be a non-empty URL"))
            }
            other => other,
        };
        let signed = match raw.signed_response_alg.as_deref() {
            None | Some("none") => {
                refuse_any(
                    &[&key_fields[..], &fetch_fields, &iat_fields].concat(),
                    "only applies with `signed_response_alg` RS256, ES256 or HS256",
                )?;
                None
            }
            Some(name) => {
                let alg = match name {
                    "RS256" => SigningAlg::RS256,
                    "ES256" => SigningAlg::ES256,
                    "HS256" => SigningAlg::HS256,
                    _ => {
                        return Err(ConfigError::new(
                            "signed_response_alg",
                            "must be `RS256`, `ES256`, `HS256` or `none`",
                        ))
                    }
                };
                if issuer.is_none() && raw.discovery_path.is_none() {
                    return Err(ConfigError::new(
                        "issuer",
                        "is required with `signed_response_alg` (or set `discovery_path`)",
                    ));
                }
                let keys = if alg.uses_jwks() {
                    match (raw.jwks, raw.jwks_path) {
                        (Some(_), Some(_)) => {
                            return Err(ConfigError::new(
                                "jwks",
                                "give either `jwks` (inline) or `jwks_path` (fetched), not both",
                            ))
                        }
                        (Some(inline), None) => {
                            refuse_any(
                                &fetch_fields,
                                "only applies when the JWKS is fetched (`jwks_path` or `discovery_path`), not with an inline `jwks`",
                            )?;
                            let set = KeySet::from_jwks(inline.to_string().as_bytes())
                                .map_err(|e| ConfigError::new("jwks", e))?;
                            let usable = match alg {
                                SigningAlg::RS256 => set.has_rsa(),
                                _ => set.has_ec(),
                            };
                            if !usable {
                                return Err(ConfigError::new(
                                    "jwks",
                                    format!("holds no usable {} key", alg.name()),
                                ));
                            }
                            KeySource::Inline(set)
                        }
                        (None, path) => {
                            if let Some(c) = &raw.jwks_cluster {
                                if c.is_empty() {
                                    return Err(ConfigError::new(
                                        "jwks_cluster",
                                        "must not be empty",
                                    ));
                                }
                            }
                            if let Some(a) = &raw.jwks_authority {
                                if a.is_empty() || !a.bytes().all(is_authority_byte) {
                                    return Err(ConfigError::new(
                                        "jwks_authority",
                                        "must be a host name with an optional port",
                                    ));
                                }
                            }
                            if let Some(p) = &path {
                                check_path(p, "jwks_path")?;
                            } else if raw.discovery_path.is_none() {
                                return Err(ConfigError::new(
                                    "jwks_path",
                                    "is required for RS256/ES256 unless `jwks` or `discovery_path` is set",
                                ));
                            }
                            KeySource::Remote {
                                cluster: raw.jwks_cluster.unwrap_or_else(|| cluster.clone()),
                                authority: raw.jwks_authority.unwrap_or_else(|| authority.clone()),
                                path,
                            }
                        }
                    }
                } else {
                    refuse_any(
                        &[&key_fields[..], &fetch_fields].concat(),
                        "HS256 uses the client secret as its key: no JWKS",
                    )?;
                    KeySource::ClientSecret
                };
                let refresh_secs = raw.jwks_refresh_secs.unwrap_or(DEFAULT_JWKS_REFRESH_SECS);
                let refetch_secs = raw
                    .jwks_refetch_interval_secs
                    .unwrap_or(DEFAULT_JWKS_REFETCH_INTERVAL_SECS);
                let leeway_secs = raw.iat_leeway_secs.unwrap_or(DEFAULT_IAT_LEEWAY_SECS);
                let max_age_secs = raw.iat_max_age_secs.unwrap_or(DEFAULT_IAT_MAX_AGE_SECS);
                if !(10..=86_400).contains(&refresh_secs) {
                    return Err(ConfigError::new(
                        "jwks_refresh_secs",
                        "must be between 10 and 86400",
                    ));
                }
                if refetch_secs > 3600 {
                    return Err(ConfigError::new(
                        "jwks_refetch_interval_secs",
                        "must be at most 3600",
                    ));
                }
                if leeway_secs > 600 {
                    return Err(ConfigError::new("iat_leeway_secs", "must be at most 600"));
                }
                if !(1..=86_400).contains(&max_age_secs) {
                    return Err(ConfigError::new(
                        "iat_max_age_secs",
                        "must be between 1 and 86400",
                    ));
                }
                Some(Signed {
                    alg,
                    keys,
                    refresh: Duration::from_secs(refresh_secs),
                    refetch_interval: Duration::from_secs(refetch_secs),
                    iat_leeway: i64::try_from(leeway_secs).unwrap_or(600),
                    iat_max_age: i64::try_from(max_age_secs).unwrap_or(86_400),
                })
            }
        };

        let defaults = CachePolicy::default();
        let cache = match raw.cache {
            None => defaults,
            Some(c) => {
                let policy = CachePolicy {
                    max_entries: c.max_entries.unwrap_or(defaults.max_entries),
                    max_ttl: c.max_ttl_secs.map_or(defaults.max_ttl, i64::from),
                    no_exp_ttl: c.no_exp_ttl_secs.map_or(defaults.no_exp_ttl, i64::from),
                    inactive_ttl: c.inactive_ttl_secs.map_or(defaults.inactive_ttl, i64::from),
                };
                if policy.max_entries > 1_000_000 {
                    return Err(ConfigError::new(
                        "cache.max_entries",
                        "must be at most 1000000 (0 disables the cache)",
                    ));
                }
                if !(1..=86_400).contains(&policy.max_ttl) {
                    return Err(ConfigError::new(
                        "cache.max_ttl_secs",
                        "must be between 1 and 86400",
                    ));
                }
                if policy.no_exp_ttl > 3600 {
                    return Err(ConfigError::new(
                        "cache.no_exp_ttl_secs",
                        "must be at most 3600 (0: answers without expiry are not cached)",
                    ));
                }
                if policy.inactive_ttl > 3600 {
                    return Err(ConfigError::new(
                        "cache.inactive_ttl_secs",
                        "must be at most 3600 (0: inactive answers are not cached)",
                    ));
                }
                policy
            }
        };

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
            signed,
            issuer,
            discovery_path: raw.discovery_path,
            introspection_path_explicit,
            cache,
        })
    }
}

impl Config {
    /// One line for the log at configuration: names and modes, never a secret.
    pub fn summary(&self) -> String {
        format!(
            "cluster `{}`, authority `{}`, client `{}`, {} answers, user claim `{}` -> `{}`",
            self.cluster,
            self.authority,
            self.client_id,
            self.signed.as_ref().map_or("plain JSON", |s| s.alg.name()),
            self.user_claim,
            self.user_header
        )
    }

    /// Whether an incoming header name is one the filter sets, or a spelling an upstream might
    /// read as one: case-insensitive, with `_` and `-` equivalent (CGI-style stacks map both to
    /// `HTTP_X_USER_SUB`).
    pub fn is_identity_header(&self, name: &[u8]) -> bool {
        self.identity_headers
            .iter()
            .any(|h| same_header(h.as_bytes(), name))
    }
}

/// Two header names an upstream may read as one: equal ignoring case, with `_` and `-` alike.
fn same_header(a: &[u8], b: &[u8]) -> bool {
    let normal = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| normal(x) == normal(y))
}

fn check_path(path: &str, field: &str) -> Result<(), ConfigError> {
    if path.starts_with('/') && path.bytes().all(is_path_byte) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            "must start with `/` and contain only URL path characters",
        ))
    }
}

/// Names the field behind a serde error: serde_json says what is wrong but not where. Every
/// field of `RawConfig` is optional, so each member can be tried alone; the first one that fails
/// on its own is the culprit. (The client secret is read as a raw value and cannot fail here,
/// so no secret is ever echoed.)
/// A deserialisation error as field and rule. serde's messages quote the offending value
/// (`invalid type: string "…", expected u32`): only what was expected is kept, never what was
/// found, so a secret pasted into the wrong field never reaches the log.
fn field_error(error: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = error.path().to_string();
    let message = error.inner().to_string();
    let reason = if message.starts_with("unknown field") {
        "unknown field".to_string()
    } else if message.starts_with("missing field") {
        "is required".to_string()
    } else {
        match message.split_once(", expected ") {
            Some((_, expected)) => {
                let expected = expected.split(" at line ").next().unwrap_or(expected);
                format!("expected {expected}")
            }
            None => "invalid value".to_string(),
        }
    };
    let field = if path == "." {
        "(plugin configuration)".to_string()
    } else {
        path
    };
    ConfigError::new(field, reason)
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
    let normal = lower.replace('_', "-");
    if FORBIDDEN_HEADERS.contains(&normal.as_str()) || normal.starts_with("x-envoy-") {
        return Err(ConfigError::new(
            field,
            "names a header that carries routing, framing or credentials: it cannot be an identity header",
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
    fn unknown_or_mistyped_fields_are_named() {
        let err = with("clien_secret", serde_json::json!("x")).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("clien_secret", "unknown field")
        );
        let err = with("timeout_ms", serde_json::json!("soon")).unwrap_err();
        assert_eq!(err.field, "timeout_ms");
        let err = with("required_scopes", serde_json::json!("openid")).unwrap_err();
        assert_eq!(err.field, "required_scopes");
        let err = with("client_auth", serde_json::json!("private_key_jwt")).unwrap_err();
        assert_eq!(err.field, "client_auth");
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
    fn signed_mode() {
        assert!(Config::from_json(minimal().to_string().as_bytes())
            .unwrap()
            .signed
            .is_none());
        assert_eq!(
            with("signed_response_alg", "PS256".into())
                .unwrap_err()
                .field,
            "signed_response_alg"
        );
        // Issuer required.
        assert_eq!(
            with("signed_response_alg", "HS256".into())
                .unwrap_err()
                .field,
            "issuer"
        );
        let mut v = minimal();
        v["signed_response_alg"] = "HS256".into();
        v["issuer"] = "https://as/api/v2".into();
        let c = Config::from_json(v.to_string().as_bytes()).unwrap();
        let s = c.signed.unwrap();
        assert!(matches!(s.keys, KeySource::ClientSecret));
        assert_eq!(s.refresh, Duration::from_secs(600));
        v["jwks_path"] = "/jwks".into();
        assert_eq!(
            Config::from_json(v.to_string().as_bytes())
                .unwrap_err()
                .field,
            "jwks_path"
        );
        // RS256 needs keys from somewhere.
        v["signed_response_alg"] = "RS256".into();
        let c = Config::from_json(v.to_string().as_bytes()).unwrap();
        match c.signed.unwrap().keys {
            KeySource::Remote {
                cluster,
                authority,
                path,
            } => {
                assert_eq!(
                    (cluster.as_str(), authority.as_str(), path.as_deref()),
                    ("proconnect", "auth.agentconnect.gouv.fr", Some("/jwks"))
                );
            }
            other => panic!("{other:?}"),
        }
        v.as_object_mut().unwrap().remove("jwks_path");
        assert_eq!(
            Config::from_json(v.to_string().as_bytes())
                .unwrap_err()
                .field,
            "jwks_path"
        );
        v["jwks"] = serde_json::json!({"keys": []});
        assert_eq!(
            Config::from_json(v.to_string().as_bytes())
                .unwrap_err()
                .field,
            "jwks"
        );
        // JWKS settings without a signed mode are a mistake worth reporting.
        assert_eq!(
            with("jwks_path", "/jwks".into()).unwrap_err().field,
            "jwks_path"
        );
        assert_eq!(
            with("iat_max_age_secs", 60.into()).unwrap_err().field,
            "iat_max_age_secs"
        );
        let mut v = minimal();
        v["signed_response_alg"] = "RS256".into();
        v["issuer"] = "https://as/api/v2".into();
        v["jwks_path"] = "/jwks".into();
        v["jwks_authority"] = "bad host".into();
        assert_eq!(
            Config::from_json(v.to_string().as_bytes())
                .unwrap_err()
                .field,
            "jwks_authority"
        );
        // Discovery can supply the issuer and the JWKS path.
        let mut v = minimal();
        v["signed_response_alg"] = "ES256".into();
        v["discovery_path"] = "/api/v2/.well-known/openid-configuration".into();
        let c = Config::from_json(v.to_string().as_bytes()).unwrap();
        assert!(c.issuer.is_none());
        assert!(!c.introspection_path_explicit);
    }

    #[test]
    fn type_errors_name_the_field_and_the_rule_never_the_value() {
        let base = || {
            serde_json::json!({"cluster": "as", "authority": "as", "client_id": "sr",
                "client_secret": "s"})
        };
        for (field, value, expected_field) in [
            (
                "timeout_ms",
                serde_json::json!("hunter2-secret"),
                "timeout_ms",
            ),
            (
                "required_scopes",
                serde_json::json!("hunter2-secret"),
                "required_scopes",
            ),
            (
                "client_auth",
                serde_json::json!("hunter2-secret"),
                "client_auth",
            ),
            (
                "cache",
                serde_json::json!({"max_entries": "hunter2-secret"}),
                "cache.max_entries",
            ),
            (
                "user_header",
                serde_json::json!("hunter2 secret"),
                "user_header",
            ),
            (
                "claim_headers",
                serde_json::json!({"email": "authorization"}),
                "claim_headers.email",
            ),
        ] {
            let mut v = base();
            v[field] = value;
            let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.field, expected_field, "{err}");
            let shown = err.to_string();
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("authorization"), "{shown}");
        }
        let err = Config::from_json(br#"{"cluster": 5}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: `cluster`: expected a string"
        );
    }

    #[test]
    fn client_secret_from_the_environment() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("client_secret");
        v["client_secret_env"] = "SR_SECRET".into();
        let env = |k: &str| (k == "SR_SECRET").then(|| "from-env".to_string());
        let c = Config::from_json_with_env(v.to_string().as_bytes(), &env).unwrap();
        assert_eq!(c.client_secret.expose(), "from-env");
        let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.field, "client_secret_env");
        assert!(
            !err.reason.contains("SR_SECRET"),
            "the value is never echoed"
        );
        v["client_secret"] = "x".into();
        let err = Config::from_json_with_env(v.to_string().as_bytes(), &env).unwrap_err();
        assert_eq!(err.field, "client_secret_env");
    }

    #[test]
    fn cache_settings() {
        let c = Config::from_json(minimal().to_string().as_bytes()).unwrap();
        assert_eq!(c.cache, CachePolicy::default());
        let c = with("cache", serde_json::json!({"max_entries": 0})).unwrap();
        assert!(!c.cache.enabled());
        let c = with(
            "cache",
            serde_json::json!({"max_ttl_secs": 30, "inactive_ttl_secs": 0}),
        )
        .unwrap();
        assert_eq!((c.cache.max_ttl, c.cache.inactive_ttl), (30, 0));
        assert_eq!(
            with("cache", serde_json::json!({"max_ttl_secs": 0}))
                .unwrap_err()
                .field,
            "cache.max_ttl_secs"
        );
        assert_eq!(
            with("cache", serde_json::json!({"ttl": 5}))
                .unwrap_err()
                .field,
            "cache.ttl"
        );
    }

    #[test]
    fn configured_names_with_underscores_are_matched_too() {
        let c = with("user_header", "x_user_sub".into()).unwrap();
        for name in [&b"x_user_sub"[..], b"x-user-sub", b"X-USER_SUB"] {
            assert!(c.is_identity_header(name));
        }
        // Two names an upstream would read as one are one name.
        let err = with("claim_headers", serde_json::json!({"scope": "X-User_Sub"})).unwrap_err();
        assert_eq!(err.field, "claim_headers.scope");
        let err = with("user_header", "proxy_authorization".into()).unwrap_err();
        assert_eq!(err.field, "user_header");
    }

    #[test]
    fn identity_header_spellings() {
        let c = with(
            "claim_headers",
            serde_json::json!({"scope": "x-token-scope"}),
        )
        .unwrap();
        for name in [
            &b"x-user-sub"[..],
            b"X-User-Sub",
            b"x_user_sub",
            b"X_USER-sub",
            b"x-token_scope",
        ] {
            assert!(
                c.is_identity_header(name),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        for name in [
            &b"x-user-subx"[..],
            b"x-user",
            b"authorization",
            b"x-user-s\xffb",
        ] {
            assert!(!c.is_identity_header(name));
        }
    }

    #[test]
    fn secret_env_name_is_not_echoed_unless_it_is_a_name() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("client_secret");
        v["client_secret_env"] = "pasted secret!".into();
        let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(!err.to_string().contains("pasted"), "{err}");
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

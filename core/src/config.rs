//! Plugin configuration: the JSON Envoy hands to `on_configure`, parsed, validated and compiled
//! into a [`Config`] once. Every error names the offending field.

use serde::Deserialize;
use serde_path_to_error::Segment;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::bearer::BearerEncoding;
use crate::jwt::{KeySet, SigningAlg};
use crate::rules::{self, Access, PathMatch, Requirements, Rule, ScopeMode};
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
    /// `field` is shown only if it looks like a field path: an unknown key is written by the
    /// operator, and a secret pasted there must not reach the log either.
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let field = field.into();
        let shown = field.len() <= 96
            && field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" _-.[]()".contains(&b));
        ConfigError {
            field: if shown {
                field
            } else {
                "(a field whose name is not shown)".to_string()
            },
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
    signature_check: Option<String>,
    #[serde(default)]
    cache: Option<RawCache>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    bearer_encoding: BearerEncoding,
}

/// One entry of `rules`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    route_name: Option<String>,
    path_exact: Option<String>,
    path_prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    public: bool,
    required_scopes: Option<Vec<String>>,
    scope_mode: Option<RawScopeMode>,
    client_ids: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawScopeMode {
    AllOf,
    AnyOf,
}

impl From<RawScopeMode> for ScopeMode {
    fn from(raw: RawScopeMode) -> ScopeMode {
        match raw {
            RawScopeMode::AllOf => ScopeMode::AllOf,
            RawScopeMode::AnyOf => ScopeMode::AnyOf,
        }
    }
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

/// The validated configuration the filter runs with, in sections: each part of the filter
/// takes only the section it needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub client: Client,
    pub endpoints: EndpointSettings,
    pub policy: Policy,
    pub identity: Identity,
    pub limits: Limits,
    /// Signed answers (RFC 9701), or `None` for plain JSON.
    pub signed: Option<Signed>,
    pub cache: CachePolicy,
    /// Per-route rules, first match wins.
    pub rules: Vec<Rule>,
    /// How clients write the token after `Bearer `.
    pub bearer_encoding: BearerEncoding,
}

/// Where callouts go.
#[derive(Debug, Clone)]
pub struct Target {
    /// Envoy cluster of the authorization server.
    pub cluster: String,
    /// `:authority` of the callouts.
    pub authority: String,
    /// Introspection callout timeout.
    pub timeout: Duration,
}

/// How the filter authenticates to the authorization server.
#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub client_secret: Secret,
    pub client_auth: ClientAuth,
    pub token_type_hint: Option<String>,
}

/// The authorization server's endpoints and issuer, as configured (discovery may fill the rest).
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// `:path` of the introspection endpoint.
    pub introspection_path: String,
    /// Whether `introspection_path` was set explicitly (discovery does not override it then).
    pub introspection_path_explicit: bool,
    /// Path of the discovery document to read at start, on the target cluster.
    pub discovery_path: Option<String>,
    /// Expected `iss`; checked on signed answers, and on plain answers that carry one.
    /// `None` only when it comes from the discovery document.
    pub issuer: Option<String>,
}

/// What an answer must say for a request to pass.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The claim that names the user (`sub`; OAuthSD: `user_id`).
    pub user_claim: String,
    /// The claim that carries the expiry in unix seconds (`exp`; OAuthSD: `expires`).
    pub expiry_claim: String,
    /// Accept an active answer with no `token_type` at all (servers that never send one).
    pub allow_missing_token_type: bool,
    /// What a token needs where no rule says otherwise (`required_scopes`, all of them).
    pub requirements: Requirements,
    pub realm: String,
    /// Whether the client's `Authorization` header reaches the upstream.
    pub forward_authorization: bool,
}

/// The headers the filter sets upstream.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Upstream header that receives the user claim.
    pub user_header: String,
    /// Further claims forwarded upstream: (claim, header), sorted by claim.
    pub claim_headers: Vec<(String, String)>,
    /// Every header the filter may set, lowercase: removed from each incoming request.
    pub identity_headers: Vec<String>,
}

/// Bounds on what the filter reads.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_token_length: usize,
    pub max_response_bytes: usize,
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

/// Who checks RS256 and ES256 signatures (`signature_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The proxy's crypto if it passes the known-answer test at configuration, else the module.
    Auto,
    /// The proxy's crypto, or the configuration is refused.
    Envoy,
    /// The module's own (RSA and P-256 compiled to wasm).
    Wasm,
}

/// Settings of the signed mode.
#[derive(Debug, Clone)]
pub struct Signed {
    pub alg: SigningAlg,
    /// RS256 and ES256 only; HS256 is always checked in the module.
    pub check: SignatureCheck,
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
        let target = Target::compile(&raw)?;
        let client = Client::compile(&raw, env)?;
        let endpoints = EndpointSettings::compile(&raw)?;
        let policy = Policy::compile(&raw)?;
        let identity = Identity::compile(&raw)?;
        let limits = Limits::compile(&raw)?;
        let signed = Signed::compile(&raw, &target, &endpoints)?;
        let cache = CachePolicy::compile(raw.cache.as_ref())?;
        let rules = raw
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            rules,
            bearer_encoding: raw.bearer_encoding,
            target,
            client,
            endpoints,
            policy,
            identity,
            limits,
            signed,
            cache,
        })
    }
}

/// `value` if it lies in `range`; otherwise an error naming `field` and the range.
fn in_range<T>(value: T, range: RangeInclusive<T>, field: &str) -> Result<T, ConfigError>
where
    T: PartialOrd + fmt::Display,
{
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

impl Target {
    fn compile(raw: &RawConfig) -> Result<Target, ConfigError> {
        let cluster = required(raw.cluster.clone(), "cluster")?;
        let authority = required(raw.authority.clone(), "authority")?;
        if !authority.bytes().all(is_authority_byte) {
            return Err(ConfigError::new(
                "authority",
                "must be a host name with an optional port",
            ));
        }
        let timeout_ms = in_range(raw.timeout_ms, 1..=MAX_TIMEOUT_MS, "timeout_ms")?;
        Ok(Target {
            cluster,
            authority,
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

impl Client {
    fn compile(
        raw: &RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Client, ConfigError> {
        let client_id = required(raw.client_id.clone(), "client_id")?;
        if client_id.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "client_id",
                "must not contain control characters",
            ));
        }
        let client_secret = match (&raw.client_secret, &raw.client_secret_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "client_secret_env",
                    "give either `client_secret` or `client_secret_env`, not both",
                ))
            }
            (Some(serde_json::Value::String(s)), None) => {
                Secret::new(required(Some(s.clone()), "client_secret")?)
            }
            (Some(_), None) => return Err(ConfigError::new("client_secret", "must be a string")),
            (None, Some(name)) => {
                let looks_like_name = !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !looks_like_name {
                    return Err(ConfigError::new(
                        "client_secret_env",
                        "must be an environment variable name (letters, digits, `_`)",
                    ));
                }
                match env(name) {
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
        Ok(Client {
            client_id,
            client_secret,
            client_auth: raw.client_auth,
            token_type_hint: raw.token_type_hint.clone(),
        })
    }
}

impl EndpointSettings {
    fn compile(raw: &RawConfig) -> Result<EndpointSettings, ConfigError> {
        let introspection_path = raw
            .introspection_path
            .clone()
            .unwrap_or_else(|| DEFAULT_INTROSPECTION_PATH.to_string());
        check_path(&introspection_path, "introspection_path")?;
        if let Some(p) = &raw.discovery_path {
            check_path(p, "discovery_path")?;
        }
        let issuer = match &raw.issuer {
            Some(i) if i.is_empty() || i.chars().any(char::is_control) => {
                return Err(ConfigError::new("issuer", "must be a non-empty URL"))
            }
            other => other.clone(),
        };
        Ok(EndpointSettings {
            introspection_path,
            introspection_path_explicit: raw.introspection_path.is_some(),
            discovery_path: raw.discovery_path.clone(),
            issuer,
        })
    }
}

impl Policy {
    fn compile(raw: &RawConfig) -> Result<Policy, ConfigError> {
        for (field, claim) in [
            ("user_claim", &raw.user_claim),
            ("expiry_claim", &raw.expiry_claim),
        ] {
            if claim.is_empty() {
                return Err(ConfigError::new(field, "must not be empty"));
            }
        }
        let scopes = scope_list(&raw.required_scopes, "required_scopes")?;
        if raw.realm.is_empty() || !raw.realm.bytes().all(is_quoted_string_byte) {
            return Err(ConfigError::new(
                "realm",
                "must be non-empty printable ASCII without `\"` or `\\`",
            ));
        }
        Ok(Policy {
            user_claim: raw.user_claim.clone(),
            expiry_claim: raw.expiry_claim.clone(),
            allow_missing_token_type: raw.allow_missing_token_type,
            requirements: Requirements {
                scopes,
                ..Requirements::default()
            },
            realm: raw.realm.clone(),
            forward_authorization: raw.forward_authorization,
        })
    }
}

impl Identity {
    fn compile(raw: &RawConfig) -> Result<Identity, ConfigError> {
        let mut identity_headers = Vec::new();
        let user_header = header_name(&raw.user_header, "user_header")?;
        identity_headers.push(user_header.clone());
        let mut claim_headers = Vec::new();
        for (claim, header) in &raw.claim_headers {
            let field = format!("claim_headers.{claim}");
            if claim.is_empty() {
                return Err(ConfigError::new("claim_headers", "a claim name is empty"));
            }
            let header = header_name(header, &field)?;
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
            claim_headers.push((claim.clone(), header));
        }
        Ok(Identity {
            user_header,
            claim_headers,
            identity_headers,
        })
    }

    /// Whether an incoming header name is one the filter sets, or a spelling an upstream might
    /// read as one: case-insensitive, with `_` and `-` equivalent (CGI-style stacks map both to
    /// `HTTP_X_USER_SUB`).
    pub fn is_identity_header(&self, name: &[u8]) -> bool {
        self.identity_headers
            .iter()
            .any(|h| same_header(h.as_bytes(), name))
    }

    /// Every name [`Identity::is_identity_header`] accepts, in lowercase (Envoy lowercases
    /// header names, and looks them up case-insensitively): each `-` or `_` of each identity
    /// header either way, so `x-user-sub` has 4 spellings. `None` if there are more than `max`.
    pub fn spellings(&self, max: usize) -> Option<Vec<String>> {
        let mut all = Vec::new();
        for header in &self.identity_headers {
            let separators = header.bytes().filter(|&b| b == b'-' || b == b'_').count();
            let count = 1usize.checked_shl(u32::try_from(separators).ok()?)?;
            if all.len().checked_add(count)? > max {
                return None;
            }
            for mask in 0..count {
                let mut bit = 0;
                let spelling = header
                    .chars()
                    .map(|c| match c {
                        '-' | '_' => {
                            let underscore = mask >> bit & 1 == 1;
                            bit += 1;
                            if underscore {
                                '_'
                            } else {
                                '-'
                            }
                        }
                        c => c,
                    })
                    .collect();
                all.push(spelling);
            }
        }
        Some(all)
    }
}

impl Limits {
    fn compile(raw: &RawConfig) -> Result<Limits, ConfigError> {
        Ok(Limits {
            max_token_length: in_range(raw.max_token_length, 16..=64 * 1024, "max_token_length")?,
            max_response_bytes: in_range(
                raw.max_response_bytes,
                256..=1024 * 1024,
                "max_response_bytes",
            )?,
        })
    }
}

impl Signed {
    fn compile(
        raw: &RawConfig,
        target: &Target,
        endpoints: &EndpointSettings,
    ) -> Result<Option<Signed>, ConfigError> {
        let key_fields = raw.key_settings();
        let fetch_fields = raw.fetch_settings();
        let iat_fields = raw.iat_settings();
        let check = match raw.signature_check.as_deref() {
            None | Some("auto") => SignatureCheck::Auto,
            Some("envoy") => SignatureCheck::Envoy,
            Some("wasm") => SignatureCheck::Wasm,
            Some(_) => {
                return Err(ConfigError::new(
                    "signature_check",
                    "must be `auto`, `envoy` or `wasm`",
                ))
            }
        };
        if raw.signature_check.is_some()
            && !matches!(raw.signed_response_alg.as_deref(), Some("RS256" | "ES256"))
        {
            return Err(ConfigError::new(
                "signature_check",
                "only applies with `signed_response_alg` RS256 or ES256 (HS256 is checked in the module)",
            ));
        }
        let alg = match raw.signed_response_alg.as_deref() {
            None | Some("none") => {
                refuse_any(
                    &[&key_fields[..], &fetch_fields, &iat_fields].concat(),
                    "only applies with `signed_response_alg` RS256, ES256 or HS256",
                )?;
                return Ok(None);
            }
            Some("RS256") => SigningAlg::RS256,
            Some("ES256") => SigningAlg::ES256,
            Some("HS256") => SigningAlg::HS256,
            Some(_) => {
                return Err(ConfigError::new(
                    "signed_response_alg",
                    "must be `RS256`, `ES256`, `HS256` or `none`",
                ))
            }
        };
        if endpoints.issuer.is_none() && endpoints.discovery_path.is_none() {
            return Err(ConfigError::new(
                "issuer",
                "is required with `signed_response_alg` (or set `discovery_path`)",
            ));
        }
        let keys = if alg.uses_jwks() {
            KeySource::compile(raw, alg, target, endpoints)?
        } else {
            refuse_any(
                &[&key_fields[..], &fetch_fields].concat(),
                "HS256 uses the client secret as its key: no JWKS",
            )?;
            KeySource::ClientSecret
        };
        let seconds = |value: Option<u64>, default: u64, range, field| {
            in_range(value.unwrap_or(default), range, field)
        };
        let refresh = seconds(
            raw.jwks_refresh_secs,
            DEFAULT_JWKS_REFRESH_SECS,
            10..=86_400,
            "jwks_refresh_secs",
        )?;
        let refetch = seconds(
            raw.jwks_refetch_interval_secs,
            DEFAULT_JWKS_REFETCH_INTERVAL_SECS,
            0..=3600,
            "jwks_refetch_interval_secs",
        )?;
        let leeway = seconds(
            raw.iat_leeway_secs,
            DEFAULT_IAT_LEEWAY_SECS,
            0..=600,
            "iat_leeway_secs",
        )?;
        let max_age = seconds(
            raw.iat_max_age_secs,
            DEFAULT_IAT_MAX_AGE_SECS,
            1..=86_400,
            "iat_max_age_secs",
        )?;
        Ok(Some(Signed {
            alg,
            check,
            keys,
            refresh: Duration::from_secs(refresh),
            refetch_interval: Duration::from_secs(refetch),
            iat_leeway: i64::try_from(leeway).unwrap_or(600),
            iat_max_age: i64::try_from(max_age).unwrap_or(86_400),
        }))
    }
}

impl KeySource {
    /// RS256/ES256 keys: inline, or fetched (from `jwks_path` or the discovery document).
    fn compile(
        raw: &RawConfig,
        alg: SigningAlg,
        target: &Target,
        endpoints: &EndpointSettings,
    ) -> Result<KeySource, ConfigError> {
        match (&raw.jwks, &raw.jwks_path) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "jwks",
                "give either `jwks` (inline) or `jwks_path` (fetched), not both",
            )),
            (Some(inline), None) => {
                refuse_any(
                    &raw.fetch_settings(),
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
                Ok(KeySource::Inline(set))
            }
            (None, path) => {
                if raw.jwks_cluster.as_deref() == Some("") {
                    return Err(ConfigError::new("jwks_cluster", "must not be empty"));
                }
                if let Some(a) = &raw.jwks_authority {
                    if a.is_empty() || !a.bytes().all(is_authority_byte) {
                        return Err(ConfigError::new(
                            "jwks_authority",
                            "must be a host name with an optional port",
                        ));
                    }
                }
                if let Some(p) = path {
                    check_path(p, "jwks_path")?;
                } else if endpoints.discovery_path.is_none() {
                    return Err(ConfigError::new(
                        "jwks_path",
                        "is required for RS256/ES256 unless `jwks` or `discovery_path` is set",
                    ));
                }
                Ok(KeySource::Remote {
                    cluster: raw
                        .jwks_cluster
                        .clone()
                        .unwrap_or_else(|| target.cluster.clone()),
                    authority: raw
                        .jwks_authority
                        .clone()
                        .unwrap_or_else(|| target.authority.clone()),
                    path: path.clone(),
                })
            }
        }
    }
}

impl CachePolicy {
    fn compile(raw: Option<&RawCache>) -> Result<CachePolicy, ConfigError> {
        let defaults = CachePolicy::default();
        let Some(c) = raw else {
            return Ok(defaults);
        };
        let max_entries = c.max_entries.unwrap_or(defaults.max_entries);
        if max_entries > 1_000_000 {
            return Err(ConfigError::new(
                "cache.max_entries",
                "must be at most 1000000 (0 disables the cache)",
            ));
        }
        let ttl = |value: Option<u32>, default: i64, range, field| {
            in_range(value.map_or(default, i64::from), range, field)
        };
        Ok(CachePolicy {
            max_entries,
            max_ttl: ttl(
                c.max_ttl_secs,
                defaults.max_ttl,
                1..=86_400,
                "cache.max_ttl_secs",
            )?,
            no_exp_ttl: ttl(
                c.no_exp_ttl_secs,
                defaults.no_exp_ttl,
                0..=3600,
                "cache.no_exp_ttl_secs",
            )?,
            inactive_ttl: ttl(
                c.inactive_ttl_secs,
                defaults.inactive_ttl,
                0..=3600,
                "cache.inactive_ttl_secs",
            )?,
        })
    }
}

impl Config {
    /// One line for the log at configuration: names and modes, never a secret.
    pub fn summary(&self) -> String {
        format!(
            "cluster `{}`, authority `{}`, client `{}`, {} answers, user claim `{}` -> `{}`",
            self.target.cluster,
            self.target.authority,
            self.client.client_id,
            self.signed.as_ref().map_or("plain JSON", |s| s.alg.name()),
            self.policy.user_claim,
            self.identity.user_header
        )
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

/// A deserialisation error as field and rule. serde's messages quote the offending value
/// (`invalid type: string "…", expected u32`): only what was expected is kept, never what was
/// found, so a secret pasted into the wrong field never reaches the log.
fn field_error(error: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = error.path().to_string();
    let message = error.inner().to_string();
    if message.starts_with("unknown field") {
        if let Some(Segment::Map { key }) = error.path().iter().next_back() {
            return unknown_field(&path, key, &message);
        }
        return ConfigError::new(path, "unknown field");
    }
    let reason = if message.starts_with("missing field") {
        "is required".to_string()
    } else {
        match message.rsplit_once(", expected ") {
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

/// An unknown member `key` at `path` (which ends with it). Its name is written by the operator
/// and may be a secret pasted in the wrong place (a value turned into a key), so it is shown
/// only when it is a near miss of a known field (a typo, at most two edits away); otherwise
/// the error names the object that holds it. Either way the known fields are listed: serde
/// names them after the unknown one (`unknown field `…`, expected one of `a`, `b``), and only
/// that part of its message, found after the exact key, is kept.
fn unknown_field(path: &str, key: &str, message: &str) -> ConfigError {
    let known: Vec<&str> = message
        .strip_prefix(&format!("unknown field `{key}`, expected "))
        .map(|expected| expected.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    if let Some(near) = known.iter().find(|name| within_two_edits(key, name)) {
        return ConfigError::new(path, format!("unknown field (did you mean `{near}`?)"));
    }
    let list = known
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let holder = path
        .strip_suffix(key)
        .map(|parent| parent.strip_suffix('.').unwrap_or(parent))
        .filter(|parent| !parent.is_empty())
        .unwrap_or("(plugin configuration)");
    let reason = if list.is_empty() {
        "has an unknown field (its name is not shown: it is like no known field)".to_string()
    } else {
        format!(
            "has an unknown field (its name is not shown: it is like no known field); \
             known fields: {list}"
        )
    };
    ConfigError::new(holder, reason)
}

/// Whether `a` becomes `b` with at most two single-byte insertions, deletions or
/// substitutions (Levenshtein distance, bounded: field names are short).
fn within_two_edits(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 2 || a.len() > 96 {
        return false;
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, &y) in b.iter().enumerate() {
            let substitute = previous
                .get(j)
                .map_or(usize::MAX, |d| d + usize::from(x != y));
            let delete = previous.get(j + 1).map_or(usize::MAX, |d| d + 1);
            let insert = current.get(j).map_or(usize::MAX, |d| d + 1);
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().is_some_and(|&d| d <= 2)
}

/// Scope tokens (RFC 6749 §3.3), duplicates dropped.
fn scope_list(scopes: &[String], field: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for scope in scopes {
        if scope.is_empty() || !scope.bytes().all(is_scope_byte) {
            return Err(ConfigError::new(
                field,
                "each scope must be a non-empty scope-token (RFC 6749 §3.3): no spaces, quotes or backslashes",
            ));
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    Ok(out)
}

impl Rule {
    /// Rule `index` of `rules`; errors name it as `rules[index]` (and its name, if any).
    fn compile(index: usize, raw: &RawRule) -> Result<Rule, ConfigError> {
        let at = match &raw.name {
            Some(name) if !name.is_empty() && name.bytes().all(is_token_byte) => {
                format!("rules[{index}] ({name})")
            }
            Some(_) => {
                return Err(ConfigError::new(
                    format!("rules[{index}].name"),
                    "must be a token (letters, digits, `-`, `_`, `.`)",
                ))
            }
            None => format!("rules[{index}]"),
        };
        let field = |f: &str| format!("{at}.{f}");
        let path = match (&raw.path_exact, &raw.path_prefix) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field("path_prefix"),
                    "give either `path_exact` or `path_prefix`, not both",
                ))
            }
            (Some(p), None) => Some(PathMatch::Exact(rule_path(p, &field("path_exact"))?)),
            (None, Some(p)) => Some(PathMatch::Prefix(rule_path(p, &field("path_prefix"))?)),
            (None, None) => None,
        };
        if let Some(route) = &raw.route_name {
            if route.is_empty() || route.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    field("route_name"),
                    "must be a route name",
                ));
            }
        }
        if raw.route_name.is_none() && path.is_none() && raw.methods.is_empty() {
            return Err(ConfigError::new(
                at,
                "matches every request: give `route_name`, `path_exact`, `path_prefix` or `methods`",
            ));
        }
        let mut methods = Vec::new();
        for method in &raw.methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::new(
                    field("methods"),
                    "each method must be upper-case letters (GET, POST...)",
                ));
            }
            methods.push(method.clone());
        }
        let protected =
            raw.required_scopes.is_some() || raw.scope_mode.is_some() || raw.client_ids.is_some();
        let access = if raw.public {
            if protected {
                return Err(ConfigError::new(
                    field("public"),
                    "a public rule takes no `required_scopes`, `scope_mode` or `client_ids`",
                ));
            }
            Access::Public
        } else {
            let scopes = scope_list(
                raw.required_scopes.as_deref().unwrap_or_default(),
                &field("required_scopes"),
            )?;
            let client_ids = raw.client_ids.clone().unwrap_or_default();
            if client_ids
                .iter()
                .any(|c| c.is_empty() || c.chars().any(char::is_control))
            {
                return Err(ConfigError::new(
                    field("client_ids"),
                    "each must be a client_id",
                ));
            }
            Access::Protected(Requirements {
                scopes,
                mode: raw.scope_mode.map_or(ScopeMode::AllOf, ScopeMode::from),
                client_ids,
            })
        };
        Ok(Rule {
            name: raw
                .name
                .clone()
                .unwrap_or_else(|| format!("rules[{index}]")),
            route_name: raw.route_name.clone(),
            path,
            methods,
            access,
        })
    }
}

/// A rule's path: absolute and already normal (as Envoy's path normalisation leaves it).
fn rule_path(path: &str, field: &str) -> Result<String, ConfigError> {
    if !path.starts_with('/') || !rules::is_normal(path.as_bytes()) || path.contains(['?', '#']) {
        return Err(ConfigError::new(
            field,
            "must be a normalised absolute path without query (no `//`, `.`, `..` or escaped `/`)",
        ));
    }
    Ok(path.to_string())
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
        assert_eq!(
            c.endpoints.introspection_path,
            "/api/v2/token/introspection"
        );
        assert_eq!(c.target.timeout, Duration::from_secs(5));
        assert_eq!(c.client.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(c.policy.user_claim, "sub");
        assert_eq!(c.policy.expiry_claim, "exp");
        assert_eq!(c.identity.user_header, "x-user-sub");
        assert_eq!(c.identity.identity_headers, vec!["x-user-sub".to_string()]);
        assert!(!c.policy.forward_authorization);
        assert!(!c.policy.allow_missing_token_type);
        assert_eq!(c.limits.max_token_length, 4096);
        assert_eq!(c.client.token_type_hint, None);
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
            (
                "clien_secret",
                "unknown field (did you mean `client_secret`?)"
            )
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
            c.identity.identity_headers,
            vec!["x-user-sub", "x-token-client-id", "x-token-scope"]
        );
        assert_eq!(
            c.identity.claim_headers,
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
        assert!(c.endpoints.issuer.is_none());
        assert!(!c.endpoints.introspection_path_explicit);
    }

    fn with_rules(rules: serde_json::Value) -> Result<Config, ConfigError> {
        let v = serde_json::json!({"cluster": "as", "authority": "as", "client_id": "sr",
            "client_secret": "s", "rules": rules});
        Config::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn rules_are_compiled_in_order() {
        let c = with_rules(serde_json::json!([
            {"name": "health", "path_exact": "/healthz", "public": true},
            {"path_prefix": "/api/admin/", "methods": ["GET", "POST"],
             "required_scopes": ["admin"], "scope_mode": "any_of", "client_ids": ["fs"]},
            {"route_name": "reports"}
        ]))
        .unwrap();
        assert_eq!(c.rules.len(), 3);
        assert_eq!(c.rules[0].access, Access::Public);
        assert_eq!(c.rules[1].name, "rules[1]");
        assert_eq!(
            c.rules[1].access,
            Access::Protected(Requirements {
                scopes: vec!["admin".into()],
                mode: ScopeMode::AnyOf,
                client_ids: vec!["fs".into()],
            })
        );
        assert_eq!(c.rules[2].route_name.as_deref(), Some("reports"));
    }

    #[test]
    fn invalid_rules_are_refused_naming_the_rule() {
        for (rules, field) in [
            (
                serde_json::json!([{"name": "all", "public": true}]),
                "rules[0] (all)",
            ),
            (
                serde_json::json!([{"path_exact": "/a", "path_prefix": "/a"}]),
                "rules[0].path_prefix",
            ),
            (
                serde_json::json!([{"path_prefix": "api"}]),
                "rules[0].path_prefix",
            ),
            (
                serde_json::json!([{"path_prefix": "/a/../b"}]),
                "rules[0].path_prefix",
            ),
            (
                serde_json::json!([{"path_exact": "/a?x=1"}]),
                "rules[0].path_exact",
            ),
            (
                serde_json::json!([{"path_exact": "/a"}, {"name": "x", "methods": ["get"]}]),
                "rules[1] (x).methods",
            ),
            (
                serde_json::json!([{"path_exact": "/a", "public": true, "required_scopes": ["s"]}]),
                "rules[0].public",
            ),
            (
                serde_json::json!([{"path_exact": "/a", "required_scopes": ["two words"]}]),
                "rules[0].required_scopes",
            ),
            (
                serde_json::json!([{"path_exact": "/a", "scope_mode": "some"}]),
                "rules[0].scope_mode",
            ),
            (
                serde_json::json!([{"path_exact": "/a", "methds": ["GET"]}]),
                "rules[0].methds",
            ),
            (
                serde_json::json!([{"path_exact": "/a", "typo": 1}]),
                "rules[0]",
            ),
            (
                serde_json::json!([{"name": "bad name", "path_exact": "/a"}]),
                "rules[0].name",
            ),
        ] {
            let err = with_rules(rules.clone()).unwrap_err();
            assert_eq!(err.field, field, "{rules}: {err}");
        }
    }

    #[test]
    fn bearer_encoding_is_one_of_three() {
        let base = serde_json::json!({"cluster": "as", "authority": "as", "client_id": "sr",
            "client_secret": "s"});
        let mut v = base.clone();
        v["bearer_encoding"] = "raw_or_base64".into();
        let c = Config::from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.bearer_encoding, BearerEncoding::RawOrBase64);
        let c = Config::from_json(base.to_string().as_bytes()).unwrap();
        assert_eq!(c.bearer_encoding, BearerEncoding::Raw);
        v["bearer_encoding"] = "base32".into();
        let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.field, "bearer_encoding");
    }

    #[test]
    fn ranges_are_checked_with_both_bounds_in_the_message() {
        assert_eq!(in_range(5, 1..=10, "f"), Ok(5));
        assert_eq!(in_range(1, 1..=10, "f"), Ok(1));
        assert_eq!(in_range(10, 1..=10, "f"), Ok(10));
        let err = in_range(0, 1..=10, "f").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: `f`: must be between 1 and 10"
        );
        assert!(in_range(11, 1..=10, "f").is_err());
    }

    #[test]
    fn each_range_setting_is_refused_out_of_range_naming_its_field() {
        for (field, value, name) in [
            ("timeout_ms", serde_json::json!(0), "timeout_ms"),
            ("timeout_ms", serde_json::json!(60_001), "timeout_ms"),
            (
                "max_token_length",
                serde_json::json!(15),
                "max_token_length",
            ),
            (
                "max_response_bytes",
                serde_json::json!(255),
                "max_response_bytes",
            ),
            (
                "cache",
                serde_json::json!({"max_ttl_secs": 0}),
                "cache.max_ttl_secs",
            ),
            (
                "cache",
                serde_json::json!({"no_exp_ttl_secs": 3601}),
                "cache.no_exp_ttl_secs",
            ),
            (
                "cache",
                serde_json::json!({"inactive_ttl_secs": 3601}),
                "cache.inactive_ttl_secs",
            ),
            (
                "cache",
                serde_json::json!({"max_entries": 1_000_001}),
                "cache.max_entries",
            ),
        ] {
            let mut v = serde_json::json!({"cluster": "as", "authority": "as",
                "client_id": "sr", "client_secret": "s"});
            v[field] = value;
            let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.field, name, "{err}");
        }
        for (field, value) in [
            ("jwks_refresh_secs", 9),
            ("jwks_refetch_interval_secs", 3601),
            ("iat_leeway_secs", 601),
            ("iat_max_age_secs", 0),
        ] {
            let mut v = serde_json::json!({"cluster": "as", "authority": "as",
                "client_id": "sr", "client_secret": "s", "signed_response_alg": "ES256",
                "issuer": "https://as", "jwks_path": "/jwks"});
            v[field] = value.into();
            let err = Config::from_json(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn sections_hold_what_the_json_says() {
        let c = Config::from_json(
            br#"{"cluster":"as","authority":"as.example:8443","client_id":"sr",
                "client_secret":"s","timeout_ms":1500,"realm":"locations",
                "required_scopes":["openid","openid","email"],"user_claim":"user_id",
                "claim_headers":{"email":"x-user-email"},"max_token_length":128}"#,
        )
        .unwrap();
        assert_eq!(c.target.authority, "as.example:8443");
        assert_eq!(c.target.timeout, Duration::from_millis(1500));
        assert_eq!(c.client.client_id, "sr");
        assert_eq!(c.policy.requirements.scopes, vec!["openid", "email"]);
        assert_eq!(c.policy.user_claim, "user_id");
        assert_eq!(
            c.identity.identity_headers,
            vec!["x-user-sub", "x-user-email"]
        );
        assert_eq!(c.limits.max_token_length, 128);
        assert_eq!(c.endpoints.introspection_path, DEFAULT_INTROSPECTION_PATH);
        assert!(!c.endpoints.introspection_path_explicit);
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
    fn an_unknown_field_whose_name_could_be_a_secret_is_not_named() {
        // Found by `make fuzz` (config target): a name of any characters.
        let err = Config::from_json(br#"{"!sted-~nv_susignedcret":"ed-~nv_susign"}"#).unwrap_err();
        assert_eq!(err.field, "(plugin configuration)");
        assert!(err.reason.starts_with("has an unknown field"), "{err}");
        assert!(!err.to_string().contains("susign"), "{err}");
        // A value written as a key (an alphanumeric secret looks like a field name), at the
        // top level, in `cache` and in a rule: the object is named, the known fields listed.
        let secret = "Xk39dkFj2mQ7vLp0Zr8sT4uW6yB1nC5e";
        for (config, holder, known) in [
            (
                format!(r#"{{"cluster":"a","{secret}":1}}"#),
                "(plugin configuration)",
                "`client_secret`",
            ),
            (
                format!(r#"{{"cache":{{"{secret}":1}}}}"#),
                "cache",
                "`max_entries`",
            ),
            (
                format!(r#"{{"rules":[{{"name":"a","{secret}":1}}]}}"#),
                "rules[0]",
                "`path_prefix`",
            ),
        ] {
            let err = Config::from_json(config.as_bytes()).unwrap_err();
            let shown = err.to_string();
            assert!(!shown.contains(secret), "{shown}");
            assert_eq!(err.field, holder, "{shown}");
            assert!(err.reason.contains(known), "{shown}");
        }
        // A near miss is a typo: named, with the field it resembles.
        let err = Config::from_json(br#"{"cache":{"max_entires":1}}"#).unwrap_err();
        assert_eq!(err.field, "cache.max_entires");
        assert_eq!(err.reason, "unknown field (did you mean `max_entries`?)");
        let err = Config::from_json(
            br#"{"cluster":"a","authority":"a","client_id":"c","client_secret":"s","timeout":1}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "(plugin configuration)");
        assert!(err.reason.contains("`timeout_ms`"), "{err}");
    }

    /// Found by review: serde quotes the offending key or value before its own `, expected …`;
    /// text holding `, expected ` itself made the first split keep the rest of it.
    #[test]
    fn a_value_or_key_mimicking_serdes_message_is_not_echoed() {
        let secret = "Zq81SECRETvalue";
        for (field, value) in [
            (
                "client_auth",
                serde_json::json!({format!("x, expected {secret}"): null}),
            ),
            (
                "client_auth",
                serde_json::json!(format!("x`, expected one of `{secret}")),
            ),
            (
                "bearer_encoding",
                serde_json::json!({format!("x, expected {secret}"): 1}),
            ),
            (
                "timeout_ms",
                serde_json::json!(format!("x, expected {secret}")),
            ),
            ("cache", serde_json::json!(format!("x, expected {secret}"))),
            (
                "cache",
                serde_json::json!({"max_entries": format!("x, expected {secret}")}),
            ),
            (
                "rules",
                serde_json::json!([{"name": "a", "path_exact": "/a",
                "scope_mode": format!("x, expected {secret}")}]),
            ),
        ] {
            let err = with(field, value).unwrap_err().to_string();
            assert!(!err.contains("SECRET"), "{err}");
            assert!(err.contains("expected"), "{err}");
        }
    }

    #[test]
    fn near_misses_are_at_most_two_edits() {
        assert!(within_two_edits("timeout_ms", "timeout_ms"));
        assert!(within_two_edits("timout_ms", "timeout_ms"));
        assert!(within_two_edits("timeoutms_", "timeout_ms"));
        assert!(!within_two_edits("TIMEOUT_ms", "timeout_ms"));
        assert!(!within_two_edits("timeout", "timeout_ms"));
        assert!(!within_two_edits("", "abc"));
        assert!(within_two_edits("", "ab"));
        assert!(!within_two_edits(&"a".repeat(97), &"a".repeat(97)));
    }

    #[test]
    fn client_secret_from_the_environment() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("client_secret");
        v["client_secret_env"] = "SR_SECRET".into();
        let env = |k: &str| (k == "SR_SECRET").then(|| "from-env".to_string());
        let c = Config::from_json_with_env(v.to_string().as_bytes(), &env).unwrap();
        assert_eq!(c.client.client_secret.expose(), "from-env");
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
            with("cache", serde_json::json!({"max_tll_secs": 5}))
                .unwrap_err()
                .field,
            "cache.max_tll_secs"
        );
    }

    #[test]
    fn configured_names_with_underscores_are_matched_too() {
        let c = with("user_header", "x_user_sub".into()).unwrap();
        for name in [&b"x_user_sub"[..], b"x-user-sub", b"X-USER_SUB"] {
            assert!(c.identity.is_identity_header(name));
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
                c.identity.is_identity_header(name),
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
            assert!(!c.identity.is_identity_header(name));
        }
    }

    #[test]
    fn every_spelling_of_the_identity_headers_is_listed() {
        let c = with(
            "claim_headers",
            serde_json::json!({"scope": "x_token-scope", "uid": "uid"}),
        )
        .unwrap();
        let all = c.identity.spellings(64).unwrap();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "uid",
                "x-token-scope",
                "x-token_scope",
                "x-user-sub",
                "x-user_sub",
                "x_token-scope",
                "x_token_scope",
                "x_user-sub",
                "x_user_sub"
            ]
        );
        assert!(all
            .iter()
            .all(|s| c.identity.is_identity_header(s.as_bytes())));
        assert_eq!(c.identity.spellings(8), None, "more than asked for");
        assert_eq!(c.identity.spellings(9).map(|s| s.len()), Some(9));
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
        assert_eq!(c.client.client_auth, ClientAuth::ClientSecretBasic);
        assert_eq!(c.policy.user_claim, "user_id");
        assert!(c.policy.allow_missing_token_type);
    }
}

//! End-to-end harness: starts the real mock authorization server, the real sample SR and a real
//! Envoy loading the filter, each on a loopback port the OS chooses and in a session of its own;
//! waits for them with a bound; stops them (whole sessions) when dropped, even when a test fails.
//! Starting, waiting, stopping and rendering the Envoy template are the `stack` crate's, shared
//! with the demo and the benchmark.
//!
//! What it needs is built beforehand by `make test` (release binaries and the `.wasm`); it says
//! so and fails, rather than skipping, when something is missing. Locations can be overridden:
//! `E2E_BIN_DIR` (mock-as, sample-sr and stack), `E2E_WASM` (the filter), `ENVOY` (the Envoy
//! command, may be several words such as `func-e run`).

pub mod deploy;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod h2;
use stack::render::{self, Params};
use stack::services::{self, EnvoyOptions};

pub use stack::http::{self, Response};
pub use stack::proc::Proc;

/// How long any component may take to become ready.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a test waits for a condition that should hold promptly.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(15);

/// The client of the SR at the authorization server, as used by the default stack.
pub const CLIENT_ID: &str = "sr-e2e";

/// Repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where mock-as, sample-sr and stack are.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("E2E_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release"));
    for name in ["mock-as", "sample-sr", "stack"] {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} is missing: run `make test` (it builds the servers first) or set E2E_BIN_DIR",
            path.display()
        );
    }
    dir
}

/// The filter's `.wasm`.
pub fn wasm_path() -> PathBuf {
    let path = std::env::var_os("E2E_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/introspection_filter.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make test` (it builds the filter first) or set E2E_WASM",
        path.display()
    );
    path
}

/// The Envoy command: `$ENVOY` (split on spaces), else the project's venv, else `envoy`.
pub fn envoy_command() -> Vec<String> {
    if std::env::var("ENVOY").is_ok_and(|c| !c.trim().is_empty()) {
        return services::envoy_command(None);
    }
    let venv = root().join(".venv/bin/envoy");
    if venv.is_file() {
        return vec![venv.display().to_string()];
    }
    vec!["envoy".to_string()]
}

/// A fresh directory for one test's configs and logs, under `target/e2e/`.
pub fn work_dir(label: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = root()
        .join("target/e2e")
        .join(format!("{label}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create work dir");
    dir
}

/// Waits until `condition` holds, checking every 20 ms, for at most `deadline`; panics with
/// `what` otherwise. Returns how long it took.
pub fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    stack::proc::wait_for(deadline, || condition().then_some(()))
        .unwrap_or_else(|| panic!("not true after {deadline:?}: {what}"));
    start.elapsed()
}

/// The body as JSON, or a panic that shows it.
pub trait ResponseExt {
    fn json(&self) -> Value;
}

impl ResponseExt for Response {
    fn json(&self) -> Value {
        self.parse_json()
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// The ProConnect-like authorization server.
pub struct MockAs {
    pub proc: Proc,
    pub port: u16,
}

impl MockAs {
    /// Starts it with `args` (e.g. `--client id:secret:ALG`).
    pub fn start(dir: &Path, args: &[String]) -> MockAs {
        MockAs::start_on(dir, 0, args)
    }

    /// Starts it on `port` (0: the OS chooses).
    pub fn start_on(dir: &Path, port: u16, args: &[String]) -> MockAs {
        let s = services::start_mock_as(&bin_dir(), dir, port, args, false, START_DEADLINE)
            .unwrap_or_else(|e| panic!("{e}"));
        MockAs {
            proc: s.proc,
            port: s.port,
        }
    }

    /// POSTs JSON to an admin endpoint (`/_mock/...`) and returns the JSON answer.
    pub fn admin(&self, path: &str, body: Value) -> Value {
        let r = http::request(
            self.port,
            "POST",
            path,
            &[("content-type", b"application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("mock-as {path}: {e}"));
        assert_eq!(r.status, 200, "mock-as {path}: {}", r.text());
        if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    /// How many introspection requests named this token (counted when they arrive).
    pub fn introspections(&self, token: &str) -> u64 {
        self.admin("/_mock/count", json!({ "token": token }))["introspections"]
            .as_u64()
            .expect("count")
    }

    /// `GET /_mock/stats`.
    pub fn admin_get_stats(&self) -> Value {
        let r = http::request(self.port, "GET", "/_mock/stats", &[], b"").expect("mock-as stats");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// From now on, introspection answers wait until [`MockAs::release`].
    pub fn hold(&self) {
        self.admin("/_mock/hold", json!({ "hold": true }));
    }

    /// Every held answer goes; no more are held.
    pub fn release(&self) {
        self.admin("/_mock/hold", json!({ "hold": false }));
    }

    /// How many introspection answers are held now.
    pub fn held(&self) -> u64 {
        self.admin_get_stats()["held"].as_u64().expect("held")
    }

    /// Revokes through the RFC 7009 endpoint, authenticated with client_secret_post.
    pub fn revoke_rfc7009(&self, client_id: &str, client_secret: &str, token: &str) {
        let body = format!(
            "token={}&client_id={}&client_secret={}",
            form(token),
            form(client_id),
            form(client_secret)
        );
        let r = http::request(
            self.port,
            "POST",
            "/api/v2/token/revocation",
            &[("content-type", b"application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
        .expect("revocation");
        assert_eq!(r.status, 200, "revocation: {}", r.text());
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/api/v2", self.port)
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn form(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The sample resource server.
pub struct SampleSr {
    pub proc: Proc,
    pub port: u16,
}

impl SampleSr {
    pub fn start(dir: &Path) -> SampleSr {
        let s = services::start_sample_sr(&bin_dir(), dir, 0, false, START_DEADLINE)
            .unwrap_or_else(|e| panic!("{e}"));
        SampleSr {
            proc: s.proc,
            port: s.port,
        }
    }
}

/// Fills the Envoy template (OS-chosen listener and admin ports) with the shared renderer. The
/// plugin configuration is written pretty-printed, so every case also checks that a
/// multi-line configuration reaches the filter intact.
pub fn render_envoy_config(
    template: &str,
    sr_port: u16,
    as_port: u16,
    plugin_config: &Value,
) -> String {
    let plugin = serde_json::to_string_pretty(plugin_config).expect("plugin JSON");
    let wasm = wasm_path().display().to_string();
    let params = Params {
        admin_port: 0,
        listen_port: 0,
        sr_port,
        as_port,
        wasm_path: &wasm,
        plugin_config: &plugin,
    };
    render::render(template, &params, &[]).unwrap_or_else(|e| panic!("render: {e}"))
}

/// A rendered configuration whose listeners let header names with `_` through.
pub fn allow_underscores(config: &str) -> String {
    let mut doc: Value = serde_json::from_str(config).expect("a rendered configuration");
    let listeners = doc
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .expect("listeners");
    for listener in listeners {
        let hcm = listener
            .pointer_mut("/filter_chains/0/filters/0/typed_config")
            .expect("an http_connection_manager");
        hcm["common_http_protocol_options"]["headers_with_underscores_action"] = json!("ALLOW");
    }
    doc.to_string()
}

/// The shipped template.
pub fn template() -> String {
    fs::read_to_string(root().join("envoy/envoy.yaml.in")).expect("envoy/envoy.yaml.in")
}

/// A running Envoy.
pub struct Envoy {
    pub proc: Proc,
    /// The first listener's port.
    pub port: u16,
    pub admin_port: u16,
    /// Every socket listener's port, by listener name.
    pub listeners: std::collections::BTreeMap<String, u16>,
}

impl Envoy {
    /// Starts Envoy on a rendered configuration; `Err` carries the log when it exits or never
    /// gets ready.
    pub fn start(dir: &Path, config: &str) -> Result<Envoy, String> {
        Envoy::start_with_env(dir, config, &[])
    }

    /// Same, with extra environment variables for the Envoy process.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Result<Envoy, String> {
        // A rendered configuration (JSON), or a shipped template filled in as YAML.
        let doc: Value = serde_json::from_str(config)
            .or_else(|_| serde_yaml::from_str::<Value>(config))
            .expect("a rendered configuration");
        let config = &doc.to_string();
        // Listeners on a socket (an internal listener has no port to wait for).
        let names: Vec<String> = render::listener_names(&doc)
            .into_iter()
            .filter(|name| {
                doc.pointer("/static_resources/listeners")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|l| {
                        l["name"].as_str() == Some(name.as_str())
                            && l.pointer("/address/socket_address").is_some()
                    })
            })
            .collect();
        let options = EnvoyOptions {
            command: envoy_command(),
            concurrency: 1,
            log_level: "info".to_owned(),
            component_log_level: Some("wasm:debug".to_owned()),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            env_remove: vec!["INTROSPECTION_CLIENT_SECRET".to_owned()],
            die_with_parent: false,
        };
        let envoy = services::start_envoy(dir, "envoy", config, &names, &options, START_DEADLINE)?;
        let port = names
            .first()
            .and_then(|n| envoy.listeners.get(n))
            .copied()
            .ok_or_else(|| "envoy has no listener".to_owned())?;
        Ok(Envoy {
            proc: envoy.proc,
            port,
            admin_port: envoy.admin_port,
            listeners: envoy.listeners,
        })
    }

    /// A counter or gauge from `/stats` (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        let r = http::request(
            self.admin_port,
            "GET",
            &format!("/stats?filter=^{name}$"),
            &[],
            b"",
        )
        .expect("admin /stats");
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The full `/stats` text.
    pub fn stats_text(&self, prometheus: bool) -> String {
        let path = if prometheus {
            "/stats/prometheus"
        } else {
            "/stats"
        };
        http::request(self.admin_port, "GET", path, &[], b"")
            .expect("admin stats")
            .text()
    }
}

/// The plugin configuration the default stack uses.
pub fn default_plugin_config(as_port: u16, client_secret: &str) -> Value {
    json!({
        "cluster": "authorization_server",
        "authority": format!("127.0.0.1:{as_port}"),
        "client_id": CLIENT_ID,
        "client_secret": client_secret,
        "timeout_ms": 3000,
        "claim_headers": { "client_id": "x-token-client-id", "scope": "x-token-scope" },
        // Most cases check one introspection per request; the cache has its own suite.
        "cache": { "max_entries": 0 }
    })
}

/// The three servers, wired together. Dropping it stops them; if the test did not fail, it
/// also checks that no token or client secret ever reached Envoy's log.
pub struct Stack {
    pub dir: PathBuf,
    pub auth: MockAs,
    pub sr: SampleSr,
    pub envoy: Envoy,
    pub client_secret: String,
    /// The arguments the mock was started with (a restarted one gets them again).
    auth_args: Vec<String>,
    secrets: Mutex<Vec<String>>,
}

/// A per-run secret, so that finding it in a log cannot be a coincidence.
pub fn fresh_secret(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{label}-{}-{nanos:x}", std::process::id())
}

/// How to build a stack.
pub struct StackOptions {
    /// Extra `mock-as` arguments.
    pub as_args: Vec<String>,
    /// The client registered at the mock (`id`, `secret`, alg).
    pub client_alg: &'static str,
    /// Edits applied to the default plugin configuration (`null` removes a field). The string
    /// `"@issuer"` stands for the mock's issuer, known only once it runs.
    pub plugin: Value,
    /// Make the mock's JWKS endpoint answer 503 before Envoy starts.
    pub jwks_down_at_start: bool,
    /// The SR's client secret; default a fresh one per run.
    pub client_secret: Option<String>,
    /// Let header names with `_` through (the shipped template drops them), so that only the
    /// filter stands between a forged `x_user_sub` and the SR.
    pub underscores_allowed: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            as_args: Vec::new(),
            client_alg: "none",
            plugin: json!({}),
            jwks_down_at_start: false,
            client_secret: None,
            underscores_allowed: false,
        }
    }
}

impl Stack {
    pub fn start(label: &str) -> Stack {
        Stack::with(label, StackOptions::default())
    }

    pub fn with(label: &str, options: StackOptions) -> Stack {
        let dir = work_dir(label);
        let client_secret = options
            .client_secret
            .clone()
            .unwrap_or_else(|| fresh_secret("sr-e2e-secret"));
        let mut as_args = vec![
            "--client".to_string(),
            format!("{CLIENT_ID}:{client_secret}:{}", options.client_alg),
        ];
        as_args.extend(options.as_args);
        let auth = MockAs::start(&dir, &as_args);
        let auth_args = as_args;
        let sr = SampleSr::start(&dir);
        let mut plugin = default_plugin_config(auth.port, &client_secret);
        if let Some(edits) = options.plugin.as_object() {
            for (k, v) in edits {
                if v.is_null() {
                    plugin.as_object_mut().expect("object").remove(k);
                } else if v == "@issuer" {
                    plugin[k] = json!(auth.issuer());
                } else {
                    plugin[k] = v.clone();
                }
            }
        }
        if options.jwks_down_at_start {
            auth.admin("/_mock/jwks", json!({ "available": false }));
        }
        let mut config = render_envoy_config(&template(), sr.port, auth.port, &plugin);
        if options.underscores_allowed {
            config = allow_underscores(&config);
        }
        let envoy = Envoy::start_with_env(
            &dir,
            &config,
            &[("INTROSPECTION_CLIENT_SECRET", client_secret.as_str())],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let secrets = Mutex::new(vec![client_secret.clone()]);
        if let Some(s) = plugin["client_secret"].as_str() {
            secrets.lock().expect("lock").push(s.to_string());
        }
        Stack {
            dir,
            auth,
            sr,
            envoy,
            client_secret,
            auth_args,
            secrets,
        }
    }

    /// Starts a new mock authorization server on the port of the previous one (stopped first
    /// if it still runs), with the same clients; Envoy is not touched. Its tokens are new: the
    /// old server's are gone with it. Its log is in a directory of its own.
    pub fn restart_auth(&mut self) {
        self.auth.proc.stop();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = self
            .dir
            .join(format!("mock-as-{}", N.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&dir).expect("create the new mock's dir");
        self.auth = MockAs::start_on(&dir, self.auth.port, &self.auth_args);
    }

    /// Mints a token at the mock (`spec` as in `/_mock/tokens`) and remembers it as a secret.
    pub fn mint(&self, spec: Value) -> String {
        let token = self.auth.admin("/_mock/tokens", spec)["token"]
            .as_str()
            .expect("minted token")
            .to_string();
        self.secrets.lock().expect("lock").push(token.clone());
        token
    }

    /// A user access token for `sub` with the default scope.
    pub fn user_token(&self, sub: &str) -> String {
        self.mint(json!({ "sub": sub }))
    }

    /// Remembers another string that must never appear in Envoy's log.
    pub fn secret(&self, s: &str) {
        self.secrets.lock().expect("lock").push(s.to_string());
    }

    /// GET through Envoy with these headers.
    pub fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> Response {
        http::request(self.envoy.port, "GET", path, headers, b"")
            .unwrap_or_else(|e| panic!("GET {path} through envoy: {e}"))
    }

    /// GET through Envoy over HTTP/2 (cleartext, prior knowledge) with these fields.
    pub fn get_h2(&self, path: &str, headers: &[(&str, &[u8])]) -> Response {
        h2::get(self.envoy.port, path, headers)
            .unwrap_or_else(|e| panic!("GET {path} through envoy over HTTP/2: {e}"))
    }

    /// The status of `GET /api/users/me` with a token freshly minted for `sub`.
    pub fn fresh_user_status(&self, sub: &str) -> u16 {
        self.get_with_token("/api/users/me", &self.user_token(sub))
            .status
    }

    /// GET through Envoy with `Authorization: Bearer <token>`.
    pub fn get_with_token(&self, path: &str, token: &str) -> Response {
        let value = format!("Bearer {token}");
        self.get(path, &[("authorization", value.as_bytes())])
    }

    /// Sends requests with `token` until one gets `status`, for at most `deadline`; returns
    /// that answer, or the last one.
    pub fn eventually(&self, token: &str, status: u16, deadline: Duration) -> Response {
        let mut last = None;
        stack::proc::wait_for(deadline, || {
            let r = self.get_with_token("/api/users/me", token);
            if r.status == status {
                return Some(r);
            }
            last = Some(r);
            None
        })
        .or(last)
        .expect("at least one answer")
    }

    /// A filter metric (`wasmcustom.introspection.<name>` in `/stats`).
    pub fn metric(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("wasmcustom.introspection.{name}"))
    }

    /// Requests the SR has received through Envoy.
    pub fn upstream_requests(&self) -> u64 {
        self.envoy.stat("cluster.sample_sr.upstream_rq_total")
    }

    /// Checks Envoy's log for every secret seen so far.
    pub fn assert_log_clean(&self) {
        let log = self.envoy.proc.log_text();
        for s in self.secrets.lock().expect("lock").iter() {
            assert!(
                !log.contains(s.as_str()),
                "a token or secret appears in Envoy's log ({})",
                self.dir.join("envoy.log").display()
            );
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !thread::panicking() {
            self.assert_log_clean();
        }
        // Envoy first, so no request is in flight when the servers go.
        self.envoy.proc.stop();
    }
}

/// The challenge of a 401 for an invalid, expired or revoked token (a prefix: a description
/// follows).
pub const INVALID_TOKEN: &str = "Bearer realm=\"api\", error=\"invalid_token\"";

/// Asserts a local denial: status, the `WWW-Authenticate` challenge (or its absence), JSON body.
pub fn assert_denied(r: &Response, status: u16, challenge: Option<&str>) {
    assert_eq!(r.status, status, "body: {}", r.text());
    match challenge {
        Some(expected) => {
            let got = r
                .header("www-authenticate")
                .unwrap_or_else(|| panic!("no WWW-Authenticate on {status}: {:?}", r.headers));
            assert!(
                got.starts_with(expected),
                "WWW-Authenticate {got:?} does not start with {expected:?}"
            );
        }
        None => assert_eq!(r.header("www-authenticate"), None),
    }
    assert!(r.json()["error"].is_string());
}

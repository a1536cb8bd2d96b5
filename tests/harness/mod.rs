//! End-to-end harness: starts the real mock authorization server, the real sample SR and a real
//! Envoy loading the filter, each on a loopback port the OS chooses; waits for them with a
//! bound; stops them when dropped, even when a test fails.
//!
//! What it needs is built beforehand by `make test` (release binaries and the `.wasm`); it says
//! so and fails, rather than skipping, when something is missing. Locations can be overridden:
//! `E2E_BIN_DIR` (mock-as and sample-sr), `E2E_WASM` (the filter), `ENVOY` (the Envoy command,
//! may be several words such as `func-e run`).

pub mod deploy;
pub mod http;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use http::Response;

/// How long any component may take to become ready.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// The client of the SR at the authorization server, as used by the default stack.
pub const CLIENT_ID: &str = "sr-e2e";

/// Repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("E2E_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make test` (it builds the servers first) or set E2E_BIN_DIR",
        path.display()
    );
    path
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
    if let Ok(cmd) = std::env::var("ENVOY") {
        let words: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        if !words.is_empty() {
            return words;
        }
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

/// A child process killed and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Whether the process has exited (and its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Stops the process now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for a port file written by one of our servers.
fn wait_port_file(proc: &mut Proc, file: &Path) -> u16 {
    let start = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(file) {
            if let Ok(port) = text.trim().parse() {
                return port;
            }
        }
        if let Some(status) = proc.exited() {
            panic!(
                "{} exited ({status}) before listening:\n{}",
                proc.name,
                proc.log_text()
            );
        }
        assert!(
            start.elapsed() < START_DEADLINE,
            "{} not listening after {START_DEADLINE:?}:\n{}",
            proc.name,
            proc.log_text()
        );
        thread::sleep(Duration::from_millis(20));
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
        let port_file = dir.join("mock-as.port");
        let mut cmd = Command::new(bin("mock-as"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--port-file")
            .arg(&port_file)
            .args(args);
        let mut proc = Proc::spawn("mock-as", cmd, dir.join("mock-as.log"));
        let port = wait_port_file(&mut proc, &port_file);
        MockAs { proc, port }
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

    /// How many introspection requests named this token.
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
        let port_file = dir.join("sample-sr.port");
        let mut cmd = Command::new(bin("sample-sr"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--port-file")
            .arg(&port_file);
        let mut proc = Proc::spawn("sample-sr", cmd, dir.join("sample-sr.log"));
        let port = wait_port_file(&mut proc, &port_file);
        SampleSr { proc, port }
    }
}

/// Fills the shipped Envoy template.
pub fn render_envoy_config(
    template: &str,
    sr_port: u16,
    as_port: u16,
    plugin_config: &Value,
) -> String {
    let plugin = plugin_config.to_string().replace('\'', "''");
    template
        .replace("${ADMIN_PORT}", "0")
        .replace("${LISTEN_PORT}", "0")
        .replace("${SR_PORT}", &sr_port.to_string())
        .replace("${AS_PORT}", &as_port.to_string())
        .replace("${WASM_PATH}", &wasm_path().display().to_string())
        .replace("${PLUGIN_CONFIG}", &plugin)
}

/// A running Envoy.
pub struct Envoy {
    pub proc: Proc,
    pub port: u16,
    pub admin_port: u16,
}

impl Envoy {
    /// Starts Envoy on `config_yaml`; `Err` carries the log when it exits or never gets ready.
    pub fn start(dir: &Path, config_yaml: &str) -> Result<Envoy, String> {
        Envoy::start_with_env(dir, config_yaml, &[])
    }

    /// Same, with extra environment variables for the Envoy process.
    pub fn start_with_env(
        dir: &Path,
        config_yaml: &str,
        env: &[(&str, &str)],
    ) -> Result<Envoy, String> {
        let config = dir.join("envoy.yaml");
        fs::write(&config, config_yaml).expect("write envoy config");
        let admin_file = dir.join("envoy-admin.address");
        let words = envoy_command();
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "info", "--component-log-level", "wasm:debug"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .env_remove("INTROSPECTION_CLIENT_SECRET")
            .envs(env.iter().copied());
        let mut proc = Proc::spawn("envoy", cmd, dir.join("envoy.log"));
        let start = Instant::now();
        loop {
            if let Some(status) = proc.exited() {
                return Err(format!("envoy exited ({status}):\n{}", proc.log_text()));
            }
            if start.elapsed() > START_DEADLINE {
                return Err(format!(
                    "envoy not ready after {START_DEADLINE:?}:\n{}",
                    proc.log_text()
                ));
            }
            if let Some(admin_port) = fs::read_to_string(&admin_file)
                .ok()
                .and_then(|a| a.trim().rsplit(':').next()?.parse::<u16>().ok())
            {
                if let Some(port) = ready_listener_port(admin_port) {
                    return Ok(Envoy {
                        proc,
                        port,
                        admin_port,
                    });
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
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

fn ready_listener_port(admin_port: u16) -> Option<u16> {
    let ready = http::request(admin_port, "GET", "/ready", &[], b"").ok()?;
    if ready.status != 200 {
        return None;
    }
    let listeners = http::request(admin_port, "GET", "/listeners?format=json", &[], b"").ok()?;
    let v: Value = serde_json::from_slice(&listeners.body).ok()?;
    let port =
        v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
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
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            as_args: Vec::new(),
            client_alg: "none",
            plugin: json!({}),
            jwks_down_at_start: false,
        }
    }
}

impl Stack {
    pub fn start(label: &str) -> Stack {
        Stack::with(label, StackOptions::default())
    }

    pub fn with(label: &str, options: StackOptions) -> Stack {
        let dir = work_dir(label);
        let client_secret = fresh_secret("sr-e2e-secret");
        let mut as_args = vec![
            "--client".to_string(),
            format!("{CLIENT_ID}:{client_secret}:{}", options.client_alg),
        ];
        as_args.extend(options.as_args);
        let auth = MockAs::start(&dir, &as_args);
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
        let template = fs::read_to_string(root().join("envoy/envoy.yaml.in")).expect("template");
        let yaml = render_envoy_config(&template, sr.port, auth.port, &plugin);
        let envoy = Envoy::start_with_env(
            &dir,
            &yaml,
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
            secrets,
        }
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

    /// Sends requests with `token` until one gets `status`, for at most `deadline`.
    pub fn eventually(&self, token: &str, status: u16, deadline: Duration) -> Response {
        let start = Instant::now();
        loop {
            let r = self.get_with_token("/api/users/me", token);
            if r.status == status || start.elapsed() > deadline {
                return r;
            }
            thread::sleep(Duration::from_millis(200));
        }
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
                self.envoy.proc.log.display()
            );
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !thread::panicking() {
            self.assert_log_clean();
        }
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

//! mock-as, sample-sr and Envoy: started on 127.0.0.1 (port 0: the OS chooses), each in its
//! own session, and waited for with a bound.

use crate::http;
use crate::proc::{wait_for, Proc, SpawnOptions, POLL};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a component may take to become ready unless told otherwise.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A running mock-as or sample-sr.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// Where it listens, on 127.0.0.1.
    pub port: u16,
}

/// Starts `bin_dir/mock-as` in `dir` (log `mock-as.log`) with extra `args`.
pub fn start_mock_as(
    bin_dir: &Path,
    dir: &Path,
    port: u16,
    args: &[String],
    die_with_parent: bool,
    deadline: Duration,
) -> Result<Server, String> {
    start_server(
        "mock-as",
        bin_dir,
        dir,
        port,
        args,
        die_with_parent,
        deadline,
    )
}

/// Starts `bin_dir/sample-sr` in `dir` (log `sample-sr.log`).
pub fn start_sample_sr(
    bin_dir: &Path,
    dir: &Path,
    port: u16,
    die_with_parent: bool,
    deadline: Duration,
) -> Result<Server, String> {
    start_server(
        "sample-sr",
        bin_dir,
        dir,
        port,
        &[],
        die_with_parent,
        deadline,
    )
}

/// What went wrong, with the process's log.
fn failure(proc: &Proc, what: &str) -> String {
    let log = proc
        .log
        .as_ref()
        .map(|l| l.display().to_string())
        .unwrap_or_default();
    format!("{} {what} (log {log}):\n{}", proc.name, proc.log_text())
}

/// Waits until `check` gives a value, failing early when `proc` exits.
fn wait_ready<T>(
    proc: &mut Proc,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let mut exited = None;
    let found = wait_for(deadline, || {
        if let Some(value) = check() {
            return Some(Some(value));
        }
        exited = proc.exited();
        exited.map(|_| None)
    });
    match (found, exited) {
        (Some(Some(value)), _) => Ok(value),
        (_, Some(status)) => Err(failure(
            proc,
            &format!("exited ({status}) before it was ready"),
        )),
        _ => Err(failure(proc, &format!("not ready after {deadline:?}"))),
    }
}

fn start_server(
    name: &str,
    bin_dir: &Path,
    dir: &Path,
    port: u16,
    args: &[String],
    die_with_parent: bool,
    deadline: Duration,
) -> Result<Server, String> {
    let program = bin_dir.join(name);
    if !program.is_file() {
        return Err(format!("{} is missing (make servers)", program.display()));
    }
    let port_file = dir.join(format!("{name}.port"));
    let _ = fs::remove_file(&port_file);
    let mut cmd = Command::new(&program);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--port-file")
        .arg(&port_file)
        .args(args);
    let options = SpawnOptions {
        log: Some(dir.join(format!("{name}.log"))),
        die_with_parent,
    };
    let mut proc = Proc::spawn(name, cmd, &options)?;
    let port = wait_ready(&mut proc, deadline, || {
        fs::read_to_string(&port_file)
            .ok()?
            .trim()
            .parse::<u16>()
            .ok()
    })?;
    Ok(Server { proc, port })
}

/// How to run Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The command, possibly several words (`func-e run`).
    pub command: Vec<String>,
    /// `--concurrency`.
    pub concurrency: u32,
    /// `--log-level`.
    pub log_level: String,
    /// `--component-log-level`, if any (e.g. `wasm:debug`).
    pub component_log_level: Option<String>,
    /// Variables set in Envoy's environment.
    pub env: Vec<(String, String)>,
    /// Variables removed from Envoy's environment.
    pub env_remove: Vec<String>,
    /// See [`SpawnOptions::die_with_parent`].
    pub die_with_parent: bool,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            command: envoy_command(None),
            concurrency: 1,
            log_level: "info".to_owned(),
            component_log_level: None,
            env: Vec::new(),
            env_remove: Vec::new(),
            die_with_parent: false,
        }
    }
}

/// The Envoy command: `explicit`, else `$ENVOY`, else `envoy`; split on whitespace.
pub fn envoy_command(explicit: Option<&str>) -> Vec<String> {
    let from_env = std::env::var("ENVOY").ok();
    let words: Vec<String> = explicit
        .or(from_env.as_deref())
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if words.is_empty() {
        vec!["envoy".to_owned()]
    } else {
        words
    }
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    /// The process (or its wrapper, e.g. `func-e run`).
    pub proc: Proc,
    /// Admin listener port.
    pub admin_port: u16,
    /// Listener ports by listener name.
    pub listeners: BTreeMap<String, u16>,
    /// The configuration file it runs.
    pub config: PathBuf,
}

/// Writes `config` (rendered JSON) to `dir/NAME.json` and starts Envoy on it (log
/// `dir/NAME.log`); ready when `/ready` says so and every listener in `listeners` has a port.
/// The error carries Envoy's log.
pub fn start_envoy(
    dir: &Path,
    name: &str,
    config: &str,
    listeners: &[String],
    options: &EnvoyOptions,
    deadline: Duration,
) -> Result<Envoy, String> {
    let config_path = dir.join(format!("{name}.json"));
    fs::write(&config_path, config)
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let admin_file = dir.join(format!("{name}.admin"));
    let _ = fs::remove_file(&admin_file);
    let (program, words) = options
        .command
        .split_first()
        .ok_or_else(|| "empty Envoy command".to_owned())?;
    let mut cmd = Command::new(program);
    cmd.args(words)
        .arg("-c")
        .arg(&config_path)
        .arg("--concurrency")
        .arg(options.concurrency.to_string())
        .arg("--disable-hot-restart")
        .arg("--log-level")
        .arg(&options.log_level)
        .arg("--admin-address-path")
        .arg(&admin_file);
    if let Some(levels) = &options.component_log_level {
        cmd.arg("--component-log-level").arg(levels);
    }
    for key in &options.env_remove {
        cmd.env_remove(key);
    }
    cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
    let spawn = SpawnOptions {
        log: Some(dir.join(format!("{name}.log"))),
        die_with_parent: options.die_with_parent,
    };
    let mut proc = Proc::spawn(name, cmd, &spawn)?;
    let started = Instant::now();
    let admin_port = wait_ready(&mut proc, deadline, || {
        let text = fs::read_to_string(&admin_file).ok()?;
        text.trim().rsplit(':').next()?.parse::<u16>().ok()
    })?;
    let left = deadline.saturating_sub(started.elapsed()).max(POLL);
    let ports = wait_ready(&mut proc, left, || ready_listeners(admin_port, listeners))?;
    Ok(Envoy {
        proc,
        admin_port,
        listeners: ports,
        config: config_path,
    })
}

/// Listener ports once Envoy is ready and every expected listener has one.
fn ready_listeners(admin_port: u16, expected: &[String]) -> Option<BTreeMap<String, u16>> {
    if http::get(admin_port, "/ready").ok()?.status != 200 {
        return None;
    }
    let answer = http::get(admin_port, "/listeners?format=json").ok()?;
    let doc = answer.parse_json().ok()?;
    let mut ports = BTreeMap::new();
    for status in doc.get("listener_statuses")?.as_array()? {
        let name = status.get("name")?.as_str()?;
        // An internal listener has no socket: nothing to wait for.
        let Some(port) = status
            .pointer("/local_address/socket_address/port_value")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        ports.insert(name.to_owned(), port);
    }
    expected
        .iter()
        .all(|n| ports.contains_key(n))
        .then_some(ports)
}

//! `stack`: runs the project's components for the demo, the end-to-end suite's own checks and
//! the benchmark.
//!
//! - `stack up`: starts mock-as, sample-sr and Envoy with the filter (or some of them) on
//!   127.0.0.1, each in its own session; waits for each with a bound; writes their ports and
//!   pids to a JSON state file; runs an optional command once ready; stops everything (whole
//!   sessions) on SIGINT, SIGTERM or SIGHUP, when a component exits, or when that command fails.
//! - `stack render`: prints the Envoy configuration rendered from the template.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use stack::proc::{self, Proc, SpawnOptions, POLL};
use stack::render::{self, ListenerSpec, Params};
use stack::services::{self, Envoy, EnvoyOptions, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "stack", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the components, wait until stopped (Ctrl-C, SIGTERM).
    Up(Box<UpArgs>),
    /// Print the rendered Envoy configuration (JSON).
    Render(RenderArgs),
}

/// What goes into the Envoy configuration.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// Envoy template [default: envoy/envoy.yaml.in, built in].
    #[arg(long)]
    template: Option<PathBuf>,
    /// The filter's `.wasm`.
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// The filter's JSON configuration, inserted as given. String values that are exactly
    /// "@authority" or "@issuer" stand for the mock's (127.0.0.1:PORT, its issuer URL).
    #[arg(long)]
    plugin_config: Option<String>,
    /// JSON file listing listeners to derive from the template's, instead of it:
    /// [{"name", "port"?, "plugin_config" | "http_filters"}] (see stack/src/render.rs).
    #[arg(long)]
    listeners: Option<PathBuf>,
    /// Port of the template's listener (0: the OS chooses).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Envoy's admin port (0: the OS chooses).
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Component {
    /// mock-as, the authorization server.
    As,
    /// sample-sr, the resource server.
    Sr,
    /// Envoy with the filter.
    Envoy,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Which components to start.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "as,sr,envoy")]
    components: Vec<Component>,
    /// Where mock-as and sample-sr are [default: this program's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Logs, the rendered configuration and the state file go here.
    #[arg(long, default_value = ".run")]
    work_dir: PathBuf,
    /// JSON file written once everything is ready (ports, pids, logs), removed on exit
    /// [default: WORK_DIR/stack.json].
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// mock-as port (0: the OS chooses); required with Envoy and without mock-as.
    #[arg(long, default_value_t = 0)]
    as_port: u16,
    /// sample-sr port (0: the OS chooses); required with Envoy and without sample-sr.
    #[arg(long, default_value_t = 0)]
    sr_port: u16,
    /// A client registered at mock-as, ID:SECRET[:ALG]. Repeatable.
    #[arg(long = "client", value_name = "ID:SECRET[:ALG]")]
    clients: Vec<String>,
    /// Another mock-as argument, e.g. --as-arg=--quiet. Repeatable.
    #[arg(long = "as-arg", value_name = "ARG", allow_hyphen_values = true)]
    as_args: Vec<String>,
    /// Envoy command, possibly several words [default: $ENVOY, else envoy].
    #[arg(long)]
    envoy: Option<String>,
    /// Envoy --concurrency.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Envoy --log-level.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Envoy --component-log-level, e.g. wasm:debug.
    #[arg(long)]
    component_log_level: Option<String>,
    /// Seconds each component may take to become ready.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
    /// Print only errors.
    #[arg(long)]
    quiet: bool,
    /// Command to run once everything is ready, with STACK_STATE, STACK_AS_PORT,
    /// STACK_SR_PORT, STACK_PORT and STACK_ADMIN_PORT in its environment. If it fails,
    /// everything stops; if it succeeds, everything keeps running.
    #[arg(last = true, value_name = "COMMAND")]
    then: Vec<String>,
}

#[derive(Debug, Args)]
struct RenderArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Port of the authorization server.
    #[arg(long)]
    as_port: u16,
    /// Port of the sample SR.
    #[arg(long)]
    sr_port: u16,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up(args) => up(&args),
        Cmd::Render(args) => render_command(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack: {e}");
            ExitCode::FAILURE
        }
    }
}

fn issuer(as_port: u16) -> String {
    format!("http://127.0.0.1:{as_port}/api/v2")
}

/// Replaces the whole string values "@authority" and "@issuer".
fn fill_mock_refs(value: &mut Value, as_port: u16) -> bool {
    match value {
        Value::String(s) if s == "@authority" => {
            *s = format!("127.0.0.1:{as_port}");
            true
        }
        Value::String(s) if s == "@issuer" => {
            *s = issuer(as_port);
            true
        }
        Value::Array(items) => {
            let mut any = false;
            for item in items {
                any |= fill_mock_refs(item, as_port);
            }
            any
        }
        Value::Object(map) => {
            let mut any = false;
            for item in map.values_mut() {
                any |= fill_mock_refs(item, as_port);
            }
            any
        }
        _ => false,
    }
}

/// The plugin configuration text: as given, unless it names the mock.
fn plugin_text(given: &str, as_port: u16) -> String {
    match serde_json::from_str::<Value>(given) {
        Ok(mut v) => {
            if fill_mock_refs(&mut v, as_port) {
                v.to_string()
            } else {
                given.to_owned()
            }
        }
        Err(_) => given.to_owned(),
    }
}

/// The rendered configuration and its listener names.
fn render_config(
    config: &ConfigArgs,
    as_port: u16,
    sr_port: u16,
) -> Result<(String, Vec<String>), String> {
    let template = match &config.template {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        None => render::TEMPLATE.to_owned(),
    };
    let wasm = config
        .wasm
        .as_ref()
        .ok_or("--wasm is required to configure Envoy")?;
    let wasm = std::path::absolute(wasm).map_err(|e| format!("--wasm: {e}"))?;
    let wasm = wasm
        .to_str()
        .ok_or("--wasm: the path is not UTF-8")?
        .to_owned();
    let mut specs: Vec<ListenerSpec> = match &config.listeners {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            render::parse_listener_specs(&text).map_err(|e| e.to_string())?
        }
        None => Vec::new(),
    };
    for spec in &mut specs {
        if let Some(config) = spec.plugin_config.as_mut() {
            if let Value::String(text) = config {
                *text = plugin_text(text, as_port);
            } else {
                fill_mock_refs(config, as_port);
            }
        }
    }
    let plugin = match (&config.plugin_config, specs.is_empty()) {
        (Some(text), _) => plugin_text(text, as_port),
        // Every listener has its own configuration: the template's is unused.
        (None, false) => "{}".to_owned(),
        (None, true) => return Err("--plugin-config (or --listeners) is required".to_owned()),
    };
    let params = Params {
        admin_port: config.admin_port,
        listen_port: config.port,
        sr_port,
        as_port,
        wasm_path: &wasm,
        plugin_config: &plugin,
    };
    let doc = render::render_document(&template, &params, &specs).map_err(|e| e.to_string())?;
    let names = render::listener_names(&doc);
    Ok((render::to_text(&doc).map_err(|e| e.to_string())?, names))
}

fn render_command(args: &RenderArgs) -> Result<(), String> {
    let (text, _) = render_config(&args.config, args.as_port, args.sr_port)?;
    match &args.output {
        Some(path) => proc::write_atomically(path, &text),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Everything started, stopped in reverse order of start when dropped.
#[derive(Default)]
struct Running {
    hook: Option<Proc>,
    envoy: Option<Envoy>,
    sr: Option<Server>,
    mock: Option<Server>,
    state_file: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(p) = self.hook.as_mut() {
            p.stop();
        }
        if let Some(e) = self.envoy.as_mut() {
            e.proc.stop();
        }
        if let Some(s) = self.sr.as_mut() {
            s.proc.stop();
        }
        if let Some(m) = self.mock.as_mut() {
            m.proc.stop();
        }
        if let Some(path) = &self.state_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Running {
    /// The first component that has exited, with its status and log.
    fn exited(&mut self) -> Option<String> {
        let mut procs: Vec<&mut Proc> = Vec::new();
        if let Some(e) = self.envoy.as_mut() {
            procs.push(&mut e.proc);
        }
        if let Some(s) = self.sr.as_mut() {
            procs.push(&mut s.proc);
        }
        if let Some(m) = self.mock.as_mut() {
            procs.push(&mut m.proc);
        }
        procs.into_iter().find_map(|p| {
            let status = p.exited()?;
            let log = p.log.as_ref().map(|l| l.display().to_string());
            Some(format!(
                "{} exited ({status}); the end of its log ({}):\n{}",
                p.name,
                log.unwrap_or_default(),
                p.log_tail(20)
            ))
        })
    }

    fn state(&self, work_dir: &Path) -> Value {
        let log = |p: &Proc| p.log.as_ref().map(|l| l.display().to_string());
        let server =
            |s: &Server| json!({ "pid": s.proc.pid(), "port": s.port, "log": log(&s.proc) });
        let mut state = serde_json::Map::new();
        state.insert("work_dir".into(), json!(work_dir.display().to_string()));
        if let Some(m) = &self.mock {
            state.insert("mock_as".into(), server(m));
        }
        if let Some(s) = &self.sr {
            state.insert("sample_sr".into(), server(s));
        }
        if let Some(e) = &self.envoy {
            let envoy = json!({
                "pid": e.proc.pid(),
                "admin_port": e.admin_port,
                "listeners": e.listeners,
                "config": e.config.display().to_string(),
                "log": log(&e.proc),
            });
            state.insert("envoy".into(), envoy);
        }
        Value::Object(state)
    }
}

/// Shortens an error that carries a whole log to its first line and last lines.
fn brief(error: String) -> String {
    let lines: Vec<&str> = error.lines().collect();
    if lines.len() <= 30 {
        return error;
    }
    let head = lines.first().copied().unwrap_or_default();
    let tail = lines.get(lines.len() - 25..).unwrap_or_default().join("\n");
    format!("{head}\n…\n{tail}")
}

fn up(args: &UpArgs) -> Result<(), String> {
    proc::install_signal_handlers()?;
    let wants = |c: Component| args.components.contains(&c);
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program: {e}"))?
            .parent()
            .map(Path::to_path_buf)
            .ok_or("cannot find this program's directory")?,
    };
    if wants(Component::Envoy) {
        if !wants(Component::As) && args.as_port == 0 {
            return Err("--as-port is required when Envoy runs without mock-as".to_owned());
        }
        if !wants(Component::Sr) && args.sr_port == 0 {
            return Err("--sr-port is required when Envoy runs without sample-sr".to_owned());
        }
    }
    let mock_options = !(args.clients.is_empty() && args.as_args.is_empty());
    if mock_options && !wants(Component::As) {
        return Err("--client and --as-arg need the `as` component".to_owned());
    }
    std::fs::create_dir_all(&args.work_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.work_dir.display()))?;
    let work_dir = std::path::absolute(&args.work_dir).map_err(|e| e.to_string())?;
    let state_file = args
        .state_file
        .clone()
        .unwrap_or_else(|| work_dir.join("stack.json"));
    let _ = std::fs::remove_file(&state_file);
    let mut running = Running::default();
    match start(args, &bin_dir, &work_dir, &state_file, &mut running) {
        Ok(()) => {}
        // Interrupted while starting: a stop, not a failure.
        Err(_) if proc::interrupted() => {}
        Err(e) => return Err(e),
    }
    let outcome = supervise(&mut running);
    eprintln!("stack: stopping everything");
    drop(running);
    outcome
}

/// Starts the components, writes the state file, starts the ready command.
fn start(
    args: &UpArgs,
    bin_dir: &Path,
    work_dir: &Path,
    state_file: &Path,
    running: &mut Running,
) -> Result<(), String> {
    let wants = |c: Component| args.components.contains(&c);
    let say = |line: String| {
        if !args.quiet {
            eprintln!("stack: {line}");
        }
    };
    let deadline = Duration::from_secs(args.ready_timeout);
    if wants(Component::As) {
        let mut mock_args: Vec<String> = args
            .clients
            .iter()
            .flat_map(|c| ["--client".to_owned(), c.clone()])
            .collect();
        mock_args.extend(args.as_args.iter().cloned());
        let mock =
            services::start_mock_as(bin_dir, work_dir, args.as_port, &mock_args, true, deadline)
                .map_err(brief)?;
        say(format!(
            "mock-as   http://127.0.0.1:{} (pid {})",
            mock.port,
            mock.proc.pid()
        ));
        running.mock = Some(mock);
    }
    if wants(Component::Sr) {
        let sr = services::start_sample_sr(bin_dir, work_dir, args.sr_port, true, deadline)
            .map_err(brief)?;
        say(format!(
            "sample-sr http://127.0.0.1:{} (pid {})",
            sr.port,
            sr.proc.pid()
        ));
        running.sr = Some(sr);
    }
    let as_port = running.mock.as_ref().map_or(args.as_port, |m| m.port);
    let sr_port = running.sr.as_ref().map_or(args.sr_port, |s| s.port);
    let mut first_listener = None;
    if wants(Component::Envoy) {
        let (config, listeners) = render_config(&args.config, as_port, sr_port)?;
        let options = EnvoyOptions {
            command: services::envoy_command(args.envoy.as_deref()),
            concurrency: args.concurrency,
            log_level: args.log_level.clone(),
            component_log_level: args.component_log_level.clone(),
            env: Vec::new(),
            env_remove: Vec::new(),
            die_with_parent: true,
        };
        let envoy =
            services::start_envoy(work_dir, "envoy", &config, &listeners, &options, deadline)
                .map_err(brief)?;
        first_listener = listeners
            .first()
            .and_then(|n| envoy.listeners.get(n))
            .copied();
        let ports: Vec<String> = envoy
            .listeners
            .iter()
            .map(|(name, port)| format!("{name} http://127.0.0.1:{port}"))
            .collect();
        say(format!(
            "envoy     {}; admin http://127.0.0.1:{} (pid {})",
            ports.join(", "),
            envoy.admin_port,
            envoy.proc.pid()
        ));
        running.envoy = Some(envoy);
    }
    if proc::interrupted() {
        return Ok(());
    }
    let state = running.state(work_dir);
    proc::write_atomically(state_file, &format!("{state:#}\n"))?;
    running.state_file = Some(state_file.to_path_buf());
    say(format!(
        "ready; logs and state ({}) in {}; Ctrl-C stops everything",
        state_file.display(),
        work_dir.display()
    ));

    if let Some((program, rest)) = args.then.split_first() {
        let mut cmd = Command::new(program);
        cmd.args(rest).env("STACK_STATE", state_file);
        let port_vars = [
            ("STACK_AS_PORT", Some(as_port)),
            ("STACK_SR_PORT", Some(sr_port)),
            ("STACK_PORT", first_listener),
            (
                "STACK_ADMIN_PORT",
                running.envoy.as_ref().map(|e| e.admin_port),
            ),
        ];
        for (name, port) in port_vars {
            if let Some(port) = port.filter(|p| *p != 0) {
                cmd.env(name, port.to_string());
            }
        }
        let options = SpawnOptions {
            log: None,
            die_with_parent: true,
        };
        running.hook = Some(Proc::spawn(program, cmd, &options)?);
    }
    Ok(())
}

/// Runs until told to stop (Ok), a component exits or the ready command fails (Err).
fn supervise(running: &mut Running) -> Result<(), String> {
    loop {
        if proc::interrupted() {
            return Ok(());
        }
        if let Some(problem) = running.exited() {
            return Err(problem);
        }
        if let Some(hook) = running.hook.as_mut() {
            if let Some(status) = hook.exited() {
                if !status.success() {
                    return Err(format!("{} failed ({status})", hook.name));
                }
                running.hook = None;
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_references_are_filled_only_as_whole_values() {
        let given = r#"{"authority":"@authority","issuer":"@issuer","x":["@issuer"," @issuer"]}"#;
        let filled: Value = serde_json::from_str(&plugin_text(given, 7)).expect("json");
        assert_eq!(
            filled,
            json!({"authority": "127.0.0.1:7", "issuer": "http://127.0.0.1:7/api/v2",
                   "x": ["http://127.0.0.1:7/api/v2", " @issuer"]})
        );
        // Without a reference, the text is kept byte for byte.
        for given in ["{ \"b\": 1,\n \"a\": \"&|\\\\'\" }", "not json @authority"] {
            assert_eq!(plugin_text(given, 7), given);
        }
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "stack",
            "up",
            "--components",
            "as,envoy",
            "--sr-port",
            "5",
            "--as-arg=--quiet",
            "--client",
            "a:b",
            "--",
            "sh",
            "-c",
            "true",
        ])
        .expect("parses");
        let Cmd::Up(args) = cli.command else {
            panic!("not up");
        };
        assert_eq!(args.components, [Component::As, Component::Envoy]);
        assert_eq!(args.as_args, ["--quiet"]);
        assert_eq!(args.then, ["sh", "-c", "true"]);
        assert_eq!(args.work_dir, PathBuf::from(".run"));
        assert!(Cli::try_parse_from(["stack", "up", "--components", "db"]).is_err());
    }
}

//! Helpers for the deployment files (production template, Istio manifests, dashboards): render a
//! template the way the README tells users to, run Envoy's validate mode, read YAML.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::Deserialize as _;
use serde_yaml::Value as Yaml;

use crate::{envoy_command, root};

/// The ProConnect hosts the production template is meant for (integration, production, and the
/// same on the RIE network).
pub const PROCONNECT_HOSTS: [&str; 4] = [
    "fca.integ01.dev-agentconnect.fr",
    "auth.agentconnect.gouv.fr",
    "fca.integ02.agentconnect.rie.gouv.fr",
    "auth.agentconnect.rie.gouv.fr",
];

/// Renders `template` (relative to the repository) with `scripts/fill-template.sh`, with only
/// `vars` (and `PATH`) in its environment. `Err` carries the script's message.
pub fn fill_template(template: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/fill-template.sh"))
        .arg(root().join(template))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied());
    let out = cmd.output().expect("run scripts/fill-template.sh");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("rendered template is UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Sample values for the production template: ports 0, loopback addresses, the built filter.
pub fn production_vars<'a>(
    host: &'a str,
    wasm: &'a str,
    sr_port: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("PROCONNECT_HOST", host),
        ("SR_CLIENT_ID", "sr-e2e"),
        ("SR_PORT", sr_port),
        ("WASM_PATH", wasm),
        ("LISTEN_ADDRESS", "127.0.0.1"),
        ("LISTEN_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("METRICS_ADDRESS", "127.0.0.1"),
        ("METRICS_PORT", "0"),
    ]
}

/// Runs `envoy --mode validate` on `yaml` (written to `dir/name`) with `env`; `Err` carries
/// Envoy's output.
pub fn envoy_validate(
    dir: &Path,
    name: &str,
    yaml: &str,
    env: &[(&str, &str)],
) -> Result<(), String> {
    let file = dir.join(name);
    fs::write(&file, yaml).expect("write config");
    let words = envoy_command();
    let out = Command::new(&words[0])
        .args(&words[1..])
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&file)
        .env_remove("INTROSPECTION_CLIENT_SECRET")
        .envs(env.iter().copied())
        .output()
        .expect("run envoy --mode validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Every YAML document of a repository file.
pub fn yaml_documents(relative: &str) -> Vec<Yaml> {
    let text = fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("read {relative}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
        })
        .collect()
}

/// The one document of `relative` whose `kind` is `kind`.
pub fn yaml_kind(relative: &str, kind: &str) -> Yaml {
    let mut found: Vec<Yaml> = yaml_documents(relative)
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "{relative}: expected one {kind}");
    found.remove(0)
}

/// A YAML value as JSON (for comparisons and for handing a pluginConfig to the filter).
pub fn to_json(value: &Yaml) -> serde_json::Value {
    serde_json::to_value(value).expect("YAML value converts to JSON")
}

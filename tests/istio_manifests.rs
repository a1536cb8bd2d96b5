//! The Istio manifests (envoy/istio/): the settings a first-day deployment depends on, and the
//! names that must agree across files. No Kubernetes here: the YAML is read and checked, and
//! the plugin configuration is loaded into a real Envoy.

use e2e::deploy::{to_json, yaml_kind};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

const WASMPLUGIN: &str = "envoy/istio/wasmplugin.yaml";
const TRAFFIC_EXTENSION: &str = "envoy/istio/trafficextension.yaml";
const EGRESS: &str = "envoy/istio/proconnect-egress.yaml";
const SECRET_PATCH: &str = "envoy/istio/sidecar-secret-patch.yaml";

/// What the two plugin resources (WasmPlugin, TrafficExtension) say, wherever they say it.
struct Plugin {
    file: &'static str,
    namespace: String,
    selector: Json,
    match_: Json,
    phase: Json,
    url: String,
    sha256: String,
    pull_secret: Json,
    fail_strategy: Json,
    env: Json,
    config: Json,
}

fn wasm_plugin() -> Plugin {
    let doc = yaml_kind(WASMPLUGIN, "WasmPlugin");
    assert_eq!(
        doc["apiVersion"].as_str(),
        Some("extensions.istio.io/v1alpha1")
    );
    let spec = &doc["spec"];
    plugin(WASMPLUGIN, &doc, spec, spec)
}

fn traffic_extension() -> Plugin {
    let doc = yaml_kind(TRAFFIC_EXTENSION, "TrafficExtension");
    assert_eq!(
        doc["apiVersion"].as_str(),
        Some("extensions.istio.io/v1alpha1")
    );
    let spec = &doc["spec"];
    plugin(TRAFFIC_EXTENSION, &doc, spec, &spec["wasm"])
}

fn plugin(file: &'static str, doc: &Yaml, spec: &Yaml, wasm: &Yaml) -> Plugin {
    let text = |v: &Yaml, what: &str| -> String {
        v.as_str()
            .unwrap_or_else(|| panic!("{file}: {what} missing"))
            .to_string()
    };
    Plugin {
        file,
        namespace: text(&doc["metadata"]["namespace"], "metadata.namespace"),
        selector: to_json(&spec["selector"]),
        match_: to_json(&spec["match"]),
        phase: to_json(&spec["phase"]),
        url: text(&wasm["url"], "url"),
        sha256: text(&wasm["sha256"], "sha256"),
        pull_secret: to_json(&wasm["imagePullSecret"]),
        fail_strategy: to_json(&wasm["failStrategy"]),
        env: to_json(&wasm["vmConfig"]["env"]),
        config: to_json(&wasm["pluginConfig"]),
    }
}

fn check_plugin(p: &Plugin) {
    let file = p.file;
    // Inbound only, on the API's port: without `match` Istio also runs the plugin on the
    // workload's outbound calls (CLIENT_AND_SERVER).
    let matches = p
        .match_
        .as_array()
        .unwrap_or_else(|| panic!("{file}: no match"));
    assert!(!matches.is_empty(), "{file}: empty match");
    for m in matches {
        assert_eq!(m["mode"], "SERVER", "{file}: {m}");
        let ports = m["ports"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no ports"));
        assert!(
            !ports.is_empty() && ports.iter().all(|p| p["number"].as_u64().is_some()),
            "{file}: match must name the API's port(s)"
        );
    }
    assert_eq!(p.phase, "AUTHN", "{file}");
    assert_eq!(p.fail_strategy, "FAIL_RELOAD", "{file}");
    assert!(p.selector["matchLabels"].is_object(), "{file}: no selector");

    // Pinned: an OCI image and its manifest digest.
    assert!(p.url.starts_with("oci://"), "{file}: {}", p.url);
    assert!(
        p.sha256.len() == 64
            && p.sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{file}: sha256 must be the 64-hex manifest digest"
    );
    if let Some((_, digest)) = p.url.split_once("@sha256:") {
        assert_eq!(digest, p.sha256, "{file}: url and sha256 disagree");
    }
    assert!(
        p.pull_secret.as_str().is_some_and(|s| !s.is_empty()),
        "{file}: imagePullSecret"
    );

    // The secret: named by client_secret_env, taken from the proxy's environment, never inline.
    assert!(
        p.config.get("client_secret").is_none(),
        "{file}: inline client_secret"
    );
    let secret_env = p.config["client_secret_env"]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: client_secret_env"));
    assert!(
        p.env
            .as_array()
            .is_some_and(|env| env.contains(&json!({ "name": secret_env, "valueFrom": "HOST" }))),
        "{file}: vmConfig.env must pass {secret_env} from the host"
    );
}

#[test]
fn the_plugin_runs_inbound_on_the_api_port_fails_closed_and_is_pinned() {
    check_plugin(&wasm_plugin());
    check_plugin(&traffic_extension());
}

#[test]
fn wasmplugin_and_trafficextension_describe_the_same_plugin() {
    let (a, b) = (wasm_plugin(), traffic_extension());
    assert_eq!(a.namespace, b.namespace);
    assert_eq!(a.selector, b.selector);
    assert_eq!(a.match_, b.match_);
    assert_eq!(a.phase, b.phase);
    assert_eq!((&a.url, &a.sha256), (&b.url, &b.sha256));
    assert_eq!(a.pull_secret, b.pull_secret);
    assert_eq!(a.fail_strategy, b.fail_strategy);
    assert_eq!(a.env, b.env);
    assert_eq!(a.config, b.config, "the two pluginConfigs drifted apart");
}

#[test]
fn the_callout_cluster_is_the_tls_originating_service_entry_port() {
    let se = yaml_kind(EGRESS, "ServiceEntry");
    let dr = yaml_kind(EGRESS, "DestinationRule");
    let plugin = wasm_plugin();

    for (what, doc) in [("ServiceEntry", &se), ("DestinationRule", &dr)] {
        assert_eq!(
            doc["metadata"]["namespace"].as_str(),
            Some(plugin.namespace.as_str()),
            "{what} must be in the plugin's namespace"
        );
        assert_eq!(
            to_json(&doc["spec"]["exportTo"]),
            json!(["."]),
            "{what} must not change the rest of the mesh"
        );
    }

    let hosts = se["spec"]["hosts"].as_sequence().expect("hosts");
    assert_eq!(hosts.len(), 1);
    let host = hosts[0].as_str().expect("host");
    assert_eq!(se["spec"]["location"].as_str(), Some("MESH_EXTERNAL"));
    assert_eq!(se["spec"]["resolution"].as_str(), Some("DNS"));

    // Istio names the cluster outbound|<port>|<subset>|<host>: the plugin must call the plain
    // HTTP port whose traffic goes to 443.
    let cluster = plugin.config["cluster"].as_str().expect("cluster");
    let parts: Vec<&str> = cluster.split('|').collect();
    assert_eq!(parts.len(), 4, "{cluster}");
    assert_eq!(
        (parts[0], parts[2], parts[3]),
        ("outbound", "", host),
        "{cluster}"
    );
    let port: u64 = parts[1].parse().expect("cluster port");
    let se_port = se["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["number"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("the ServiceEntry has no port {port}"));
    assert_eq!(se_port["protocol"].as_str(), Some("HTTP"));
    assert_eq!(se_port["targetPort"].as_u64(), Some(443));
    // Port 443 stays HTTPS for code that calls ProConnect over TLS itself.
    assert!(se["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .any(|p| p["number"].as_u64() == Some(443) && p["protocol"].as_str() == Some("HTTPS")));

    // The plugin addresses the same host; the issuer is that host's.
    assert_eq!(plugin.config["authority"], host);
    assert_eq!(plugin.config["issuer"], format!("https://{host}/api/v2"));

    // TLS origination on that port: SNI and SAN are the host; a bounded pool with an idle
    // timeout.
    assert_eq!(dr["spec"]["host"].as_str(), Some(host));
    let settings = dr["spec"]["trafficPolicy"]["portLevelSettings"]
        .as_sequence()
        .expect("portLevelSettings")
        .iter()
        .find(|s| s["port"]["number"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("no DestinationRule settings for port {port}"));
    assert_eq!(settings["tls"]["mode"].as_str(), Some("SIMPLE"));
    assert_eq!(settings["tls"]["sni"].as_str(), Some(host));
    assert_eq!(to_json(&settings["tls"]["subjectAltNames"]), json!([host]));
    let pool = &settings["connectionPool"];
    assert!(pool["tcp"]["maxConnections"].is_u64());
    assert!(pool["tcp"]["connectTimeout"].is_string());
    assert!(pool["http"]["idleTimeout"].is_string());
    assert!(pool["http"]["http1MaxPendingRequests"].is_u64());
}

#[test]
fn the_secret_patch_fills_the_variable_the_plugin_reads() {
    let plugin = wasm_plugin();
    let patch = &e2e::deploy::yaml_documents(SECRET_PATCH)[0];
    let containers = patch["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    let proxy = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("istio-proxy"))
        .expect("the patch targets the istio-proxy container");
    let secret_env = plugin.config["client_secret_env"].as_str().expect("env");
    let env = proxy["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"].as_str() == Some(secret_env))
        .unwrap_or_else(|| panic!("the patch does not set {secret_env}"));
    let from = &env["valueFrom"]["secretKeyRef"];
    assert!(
        from["name"].is_string() && from["key"].is_string(),
        "{env:?}"
    );
    assert!(
        env.get("value").is_none(),
        "the secret written in the patch"
    );
}

#[test]
fn the_istio_plugin_config_loads_in_envoy() {
    // Both resources carry the same configuration (checked above); load it into a real Envoy.
    let plugin = traffic_extension().config;
    let dir = e2e::work_dir("istio-te-config");
    let template =
        std::fs::read_to_string(e2e::root().join("envoy/envoy.yaml.in")).expect("template");
    let yaml = e2e::render_envoy_config(&template, 1, 1, &plugin);
    let envoy = e2e::Envoy::start_with_env(
        &dir,
        &yaml,
        &[("INTROSPECTION_CLIENT_SECRET", "istio-te-secret")],
    )
    .unwrap_or_else(|log| panic!("the TrafficExtension pluginConfig was refused:\n{log}"));
    let log = envoy.proc.log_text();
    assert!(log.contains("introspection filter configured"), "{log}");
    assert!(!log.contains("istio-te-secret"));
}

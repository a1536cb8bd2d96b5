//! The shipped Envoy configurations: each is rendered with sample values the way the README
//! renders it and passes `envoy --mode validate` (which also loads the filter with its
//! configuration); the production template draws everything ProConnect-specific from one host
//! parameter and carries the settings the README promises.

use e2e::deploy::{envoy_validate, fill_template, production_vars, PROCONNECT_HOSTS};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const PRODUCTION: &str = "envoy/proconnect.yaml.in";

fn wasm() -> String {
    e2e::wasm_path().display().to_string()
}

#[test]
fn every_shipped_envoy_config_validates() {
    let dir = e2e::work_dir("deploy-validate");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(e2e::root().join("envoy")).expect("envoy/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            continue; // envoy/istio: Kubernetes resources, see istio_manifests.rs
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name")
            .to_string();
        match name.as_str() {
            "envoy.yaml.in" => {
                let template = std::fs::read_to_string(&path).expect("read");
                let yaml = e2e::render_envoy_config(
                    &template,
                    1,
                    2,
                    &e2e::default_plugin_config(2, "demo-secret"),
                );
                envoy_validate(&dir, "demo.yaml", &yaml, &[])
                    .unwrap_or_else(|log| panic!("{name} does not validate:\n{log}"));
            }
            "proconnect.yaml.in" => {
                for host in PROCONNECT_HOSTS {
                    let wasm = wasm();
                    let yaml = fill_template(PRODUCTION, &production_vars(host, &wasm, "8080"))
                        .unwrap_or_else(|e| panic!("{name} for {host}: {e}"));
                    envoy_validate(
                        &dir,
                        &format!("production-{host}.yaml"),
                        &yaml,
                        &[("INTROSPECTION_CLIENT_SECRET", "validate-secret")],
                    )
                    .unwrap_or_else(|log| panic!("{name} for {host} does not validate:\n{log}"));
                }
            }
            other => panic!(
                "envoy/{other} is shipped but not validated: add how to render it to this test"
            ),
        }
        checked.push(name);
    }
    checked.sort();
    assert_eq!(checked, ["envoy.yaml.in", "proconnect.yaml.in"]);
}

#[test]
fn the_template_refuses_missing_or_unsafe_values() {
    let wasm = wasm();
    let mut vars = production_vars("auth.agentconnect.gouv.fr", &wasm, "8080");
    vars.retain(|(k, _)| *k != "PROCONNECT_HOST");
    let err = fill_template(PRODUCTION, &vars).expect_err("rendered without a host");
    assert!(err.contains("PROCONNECT_HOST is not set"), "{err}");

    for bad in [
        "auth.agentconnect.gouv.fr\"",
        "a b",
        "x\n  evil: 1",
        "${OTHER}",
    ] {
        let vars = production_vars(bad, &wasm, "8080");
        let err = fill_template(PRODUCTION, &vars).expect_err("accepted an unsafe value");
        assert!(err.contains("PROCONNECT_HOST has characters"), "{err}");
    }

    let yaml =
        fill_template(PRODUCTION, &production_vars("h.example", &wasm, "8080")).expect("renders");
    assert!(!yaml.contains("${"), "a placeholder was left in:\n{yaml}");
    // Defaults apply where nothing is given.
    let defaults = fill_template(
        PRODUCTION,
        &[
            ("PROCONNECT_HOST", "h.example"),
            ("SR_CLIENT_ID", "c"),
            ("SR_PORT", "8080"),
            ("WASM_PATH", "/etc/envoy/f.wasm"),
        ],
    )
    .expect("renders with defaults");
    let doc: Yaml = serde_yaml::from_str(&defaults).expect("YAML");
    assert_eq!(
        doc["admin"]["address"]["socket_address"]["port_value"].as_u64(),
        Some(9901)
    );
}

fn listener<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    doc["static_resources"]["listeners"]
        .as_sequence()
        .expect("listeners")
        .iter()
        .find(|l| l["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn cluster<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    doc["static_resources"]["clusters"]
        .as_sequence()
        .expect("clusters")
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

fn hcm(listener: &Yaml) -> &Yaml {
    &listener["filter_chains"][0]["filters"][0]["typed_config"]
}

fn str_of<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

#[test]
fn the_production_template_takes_every_host_dependent_value_from_one_parameter() {
    let host = "fca.integ01.dev-agentconnect.fr";
    let wasm = wasm();
    let doc: Yaml = serde_yaml::from_str(
        &fill_template(PRODUCTION, &production_vars(host, &wasm, "8080")).expect("renders"),
    )
    .expect("YAML");

    // The filter's configuration.
    let ingress = hcm(listener(&doc, "sr_ingress"));
    let wasm_filter = &ingress["http_filters"][0]["typed_config"]["config"];
    assert_eq!(wasm_filter["failure_policy"].as_str(), Some("FAIL_RELOAD"));
    let plugin: Json = serde_json::from_str(str_of(
        &wasm_filter["configuration"]["value"],
        "configuration",
    ))
    .expect("the plugin configuration is JSON");
    assert_eq!(plugin["authority"], host);
    assert_eq!(plugin["issuer"], format!("https://{host}/api/v2"));
    assert!(
        plugin.get("client_secret").is_none(),
        "secret written in the file"
    );
    let secret_env = plugin["client_secret_env"]
        .as_str()
        .expect("client_secret_env");
    let env_keys = &wasm_filter["vm_config"]["environment_variables"]["host_env_keys"];
    assert!(
        env_keys
            .as_sequence()
            .expect("host_env_keys")
            .iter()
            .any(|k| k.as_str() == Some(secret_env)),
        "the VM does not get {secret_env}"
    );

    // The callout path: filter -> internal listener (route with the retry) -> TLS cluster.
    let callout = cluster(&doc, plugin["cluster"].as_str().expect("cluster"));
    let egress_name = str_of(
        &callout["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["envoy_internal_address"]["server_listener_name"],
        "internal listener",
    );
    let egress = hcm(listener(&doc, egress_name));
    let vhost = &egress["route_config"]["virtual_hosts"][0];
    assert_eq!(vhost["domains"][0].as_str(), Some(host));
    let route = &vhost["routes"][0]["route"];
    let retry_on: Vec<&str> = str_of(&route["retry_policy"]["retry_on"], "retry_on")
        .split(',')
        .map(str::trim)
        .collect();
    assert!(retry_on.contains(&"connect-failure") && retry_on.contains(&"reset"));
    for answer in [
        "5xx",
        "gateway-error",
        "retriable-status-codes",
        "retriable-4xx",
    ] {
        assert!(
            !retry_on.contains(&answer),
            "an answer ({answer}) would be retried"
        );
    }
    assert_eq!(route["retry_policy"]["num_retries"].as_u64(), Some(1));

    let upstream = cluster(&doc, str_of(&route["cluster"], "egress cluster"));
    let address = &upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    assert_eq!(address["address"].as_str(), Some(host));
    assert_eq!(address["port_value"].as_u64(), Some(443));
    let tls = &upstream["transport_socket"]["typed_config"];
    assert_eq!(tls["sni"].as_str(), Some(host));
    let san = &tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0];
    assert_eq!(san["san_type"].as_str(), Some("DNS"));
    assert_eq!(san["matcher"]["exact"].as_str(), Some(host));
    let options = &upstream["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(options["common_http_protocol_options"]["idle_timeout"].is_string());
    let breakers = &upstream["circuit_breakers"]["thresholds"][0];
    for limit in [
        "max_connections",
        "max_pending_requests",
        "max_requests",
        "max_retries",
    ] {
        assert!(breakers[limit].is_u64(), "no circuit breaker {limit}");
    }

    // Edge settings.
    assert_eq!(ingress["use_remote_address"].as_bool(), Some(true));
    assert_eq!(ingress["normalize_path"].as_bool(), Some(true));
    assert_eq!(ingress["merge_slashes"].as_bool(), Some(true));
    assert_eq!(
        ingress["path_with_escaped_slashes_action"].as_str(),
        Some("REJECT_REQUEST")
    );
    assert_eq!(
        ingress["common_http_protocol_options"]["headers_with_underscores_action"].as_str(),
        Some("REJECT_REQUEST")
    );
    let log = serde_yaml::to_string(&ingress["access_log"]).expect("access log");
    assert!(log.contains("%RESPONSE_CODE_DETAILS%") && log.contains("%REQ(X-REQUEST-ID)%"));
    assert!(
        !log.contains("AUTHORIZATION"),
        "the access log shows credentials"
    );

    // /healthz: filter off, and every header the filter would set removed.
    let routes = ingress["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence()
        .expect("routes");
    let health = routes
        .iter()
        .find(|r| r["match"]["path"].as_str() == Some("/healthz"))
        .expect("an exact /healthz route");
    assert_eq!(
        health["typed_per_filter_config"]["envoy.filters.http.wasm"]["disabled"].as_bool(),
        Some(true)
    );
    let removed: Vec<&str> = health["request_headers_to_remove"]
        .as_sequence()
        .expect("request_headers_to_remove")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let mut identity = vec![plugin["user_header"].as_str().unwrap_or("x-user-sub")];
    identity.extend(
        plugin["claim_headers"]
            .as_object()
            .expect("claim_headers")
            .values()
            .filter_map(Json::as_str),
    );
    for header in identity {
        assert!(removed.contains(&header), "/healthz lets {header} through");
    }
}

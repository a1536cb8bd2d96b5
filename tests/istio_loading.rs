//! The filter loaded the way Istio loads a `WasmPlugin`: an empty `root_id`, no `vm_id` (so
//! every plugin of the proxy shares one VM namespace and one shared-data namespace), the name
//! `<namespace>.<name>`. Two differently configured instances on one Envoy each serve their
//! own decisions and never read each other's cache.

use e2e::{fresh_secret, wasm_path, work_dir, Envoy, MockAs, ResponseExt, SampleSr};
use serde_json::{json, Value};
use stack::render::{self, ListenerSpec, Params};

const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

/// The Wasm HTTP filter as Istio writes it for a `WasmPlugin` named `name` in `api`.
fn istio_style_filter(name: &str, plugin: &Value) -> Value {
    json!({
        "name": format!("api.{name}"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": format!("api.{name}"),
                "root_id": "",
                "failure_policy": "FAIL_RELOAD",
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm_path().display().to_string() } }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin.to_string()
                }
            }
        }
    })
}

#[test]
fn two_istio_style_plugins_keep_their_own_decisions_and_caches() {
    let dir = work_dir("istio-loading");
    let (secret_a, secret_b) = (fresh_secret("sr-a"), fresh_secret("sr-b"));
    let auth = MockAs::start(
        &dir,
        &[
            "--client".into(),
            format!("sr-a:{secret_a}:none"),
            "--client".into(),
            format!("sr-b:{secret_b}:none"),
        ],
    );
    let sr = SampleSr::start(&dir);
    let plugin = |client: &str, secret: &str, scopes: &[&str]| {
        json!({
            "cluster": "authorization_server",
            "authority": format!("127.0.0.1:{}", auth.port),
            "client_id": client, "client_secret": secret,
            "required_scopes": scopes,
            "cache": { "max_entries": 100 }
        })
    };
    // Same code, same (empty) VM id: one VM, one shared-data namespace for both.
    let a = istio_style_filter("introspection-a", &plugin("sr-a", &secret_a, &["openid"]));
    let b = istio_style_filter("introspection-b", &plugin("sr-b", &secret_b, &["admin"]));
    let listeners = [("plugin_a", a), ("plugin_b", b)].map(|(name, filter)| ListenerSpec {
        name: name.into(),
        port: 0,
        plugin_config: None,
        http_filters: Some(vec![filter]),
    });
    let wasm = wasm_path().display().to_string();
    let params = Params {
        admin_port: 0,
        listen_port: 0,
        sr_port: sr.port,
        as_port: auth.port,
        wasm_path: &wasm,
        plugin_config: "{}",
    };
    let config = render::render(&e2e::template(), &params, &listeners).expect("render");
    let envoy = Envoy::start(&dir, &config).unwrap_or_else(|e| panic!("{e}"));
    let port = |name: &str| envoy.listeners[name];

    let token = auth.admin("/_mock/tokens", json!({ "sub": SUB, "scope": "openid" }))["token"]
        .as_str()
        .expect("token")
        .to_string();
    let get = |listener: &str| {
        let value = format!("Bearer {token}");
        stack::http::request(
            port(listener),
            "GET",
            "/api/users/me",
            &[("authorization", value.as_bytes())],
            b"",
        )
        .expect("request")
    };

    // Each instance decides with its own configuration.
    let r = get("plugin_a");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], SUB);
    let r = get("plugin_b");
    assert_eq!(r.status, 403, "B requires `admin`: {}", r.text());
    // B asked the server itself, as its own client: A's cached answer, in the same
    // shared-data namespace, was not B's to read.
    assert_eq!(auth.introspections(&token), 2);
    let last = auth.admin("/_mock/last-request", json!({ "token": token }));
    assert_eq!(last["client_id"], "sr-b", "{last}");

    // And each serves its own decision from its own cache.
    assert_eq!(get("plugin_a").status, 200);
    assert_eq!(get("plugin_b").status, 403);
    assert_eq!(auth.introspections(&token), 2);
}

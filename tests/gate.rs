//! The gate, end to end: real Envoy + the filter + the sample SR + the mock authorization server.

use e2e::{assert_denied, fresh_secret, ResponseExt, Stack, StackOptions};
use serde_json::json;
use stack::render;

const DEMO_SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";
const DEFAULT_SCOPE: &str = "openid uid given_name usual_name email groups";

#[test]
fn valid_token_reaches_the_sr_with_exactly_its_sub() {
    let stack = Stack::start("valid");
    let token = stack.user_token(DEMO_SUB);

    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let me = r.json();
    assert_eq!(me["sub"], DEMO_SUB);
    assert_eq!(me["identity_headers"]["x-user-sub"], DEMO_SUB);
    assert_eq!(me["identity_headers"]["x-token-client-id"], "fs-demo");
    assert_eq!(me["identity_headers"]["x-token-scope"], DEFAULT_SCOPE);
    // forward_authorization is false by default: the SR never sees the token.
    assert_eq!(me["authorization_present"], false);

    let r = stack.get_with_token("/api/users/locations", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["sub"], DEMO_SUB);
    assert!(!body["locations"].as_array().expect("list").is_empty());

    // Another user gets their own data, not the previous one's.
    let other = stack.user_token("0b4b3c1e-1111-4222-8333-944455556666");
    let r = stack.get_with_token("/api/users/locations", &other);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sub"], "0b4b3c1e-1111-4222-8333-944455556666");
    assert_eq!(r.json()["locations"], json!([]));
    assert_eq!(stack.auth.introspections(&token), 2);
}

#[test]
fn authorization_is_forwarded_only_when_configured() {
    let stack = Stack::with(
        "forward",
        StackOptions {
            plugin: json!({ "forward_authorization": true }),
            ..Default::default()
        },
    );
    let token = stack.user_token(DEMO_SUB);
    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["authorization_present"], true);
}

#[test]
fn forged_identity_headers_never_reach_the_sr() {
    let stack = Stack::with(
        "forged",
        StackOptions {
            plugin: json!({ "claim_headers": {
                "client_id": "x-token-client-id", "scope": "x-token-scope", "uid": "x-user-uid"
            }}),
            ..Default::default()
        },
    );
    let token = stack.user_token(DEMO_SUB);
    let auth = format!("Bearer {token}");

    // With a valid token: the forged values are replaced or removed.
    let r = stack.get(
        "/api/users/me",
        &[
            ("authorization", auth.as_bytes()),
            ("x-user-sub", b"attacker"),
            ("X-User-Sub", b"attacker-2"),
            ("x-token-scope", b"admin"),
            ("x-user-uid", b"forged-uid"),
            ("x_user_sub", b"attacker-underscore"),
            ("X_Token_Scope", b"admin"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let me = r.json();
    assert_eq!(me["sub"], DEMO_SUB);
    assert_eq!(me["identity_headers"]["x-user-sub"], DEMO_SUB);
    assert_eq!(me["identity_headers"]["x-token-scope"], DEFAULT_SCOPE);
    // The answer has no `uid`: the forged header must be gone, not passed through.
    assert!(me["identity_headers"].get("x-user-uid").is_none(), "{me}");
    // Underscore spellings, which CGI-style stacks read as the same header, are gone too.
    let seen = me["identity_headers"].as_object().expect("object");
    assert!(
        seen.keys().all(|k| !k.contains('_')),
        "an underscore identity header reached the SR: {me}"
    );
    assert!(!me.to_string().contains("attacker"), "{me}");

    // Without a token: refused before anything reaches the SR.
    let before = stack.upstream_requests();
    let r = stack.get("/api/users/me", &[("x-user-sub", DEMO_SUB.as_bytes())]);
    assert_denied(&r, 401, Some("Bearer realm=\"api\""));
    assert_eq!(stack.upstream_requests(), before);
}

#[test]
fn health_checks_pass_without_a_token_on_their_exact_path_only() {
    let stack = Stack::start("healthz");
    let r = stack.get("/healthz", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok");
    // Only that exact path: anything else still needs a token.
    assert_denied(
        &stack.get("/healthz/x", &[]),
        401,
        Some("Bearer realm=\"api\""),
    );
    assert_denied(
        &stack.get("/api/users/me?p=/healthz", &[]),
        401,
        Some("Bearer realm=\"api\""),
    );
    assert_eq!(stack.auth.admin_get_stats()["introspections"], 0);
    // The filter does not run there: Envoy drops the underscore spellings of the identity
    // headers on every route, and the route removes the dash spellings.
    let dropped = "http1.dropped_headers_with_underscores";
    let r = stack.get(
        "/healthz",
        &[("X_User_Sub", b"mallory"), ("x_token_scope", b"admin")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stack.envoy.stat(dropped), 2);
}

#[test]
fn no_credentials_gets_a_bare_challenge() {
    let stack = Stack::start("missing");
    let r = stack.get("/api/users/locations", &[]);
    assert_denied(&r, 401, Some("Bearer realm=\"api\""));
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));
    assert_eq!(stack.upstream_requests(), 0);
    assert_eq!(
        stack.auth.admin_get_stats()["introspections"],
        0,
        "no callout for a request without credentials"
    );
}

#[test]
fn unknown_expired_revoked_and_refresh_tokens_are_invalid() {
    let stack = Stack::start("invalid");
    let invalid = e2e::INVALID_TOKEN;

    let unknown = fresh_secret("unknownToken");
    stack.secret(&unknown);
    let r = stack.get_with_token("/api/users/me", &unknown);
    assert_denied(&r, 401, Some(invalid));

    let expired = stack.mint(json!({ "sub": DEMO_SUB, "ttl_secs": -10 }));
    assert_denied(
        &stack.get_with_token("/api/users/me", &expired),
        401,
        Some(invalid),
    );

    let refresh = stack.mint(json!({ "sub": DEMO_SUB, "kind": "refresh" }));
    assert_denied(
        &stack.get_with_token("/api/users/me", &refresh),
        401,
        Some(invalid),
    );
    assert_eq!(stack.auth.introspections(&refresh), 1);

    // Revoked through the RFC 7009 endpoint: works before, refused after.
    let token = stack.user_token(DEMO_SUB);
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    stack
        .auth
        .revoke_rfc7009(e2e::CLIENT_ID, &stack.client_secret, &token);
    assert_denied(
        &stack.get_with_token("/api/users/me", &token),
        401,
        Some(invalid),
    );

    assert_eq!(stack.upstream_requests(), 1);
}

#[test]
fn missing_scope_is_forbidden_with_the_scope_named() {
    let stack = Stack::with(
        "scope",
        StackOptions {
            plugin: json!({ "required_scopes": ["openid", "locations"], "realm": "locations-api" }),
            ..Default::default()
        },
    );
    let narrow = stack.mint(json!({ "sub": DEMO_SUB, "scope": "openid email" }));
    let r = stack.get_with_token("/api/users/locations", &narrow);
    assert_denied(
        &r,
        403,
        Some("Bearer realm=\"locations-api\", error=\"insufficient_scope\", scope=\"openid locations\""),
    );
    let wide = stack.mint(json!({ "sub": DEMO_SUB, "scope": "openid locations email" }));
    assert_eq!(
        stack.get_with_token("/api/users/locations", &wide).status,
        200
    );
    assert_eq!(stack.upstream_requests(), 1);
}

#[test]
fn token_with_plus_slash_and_padding_reaches_the_server_byte_for_byte() {
    let stack = Stack::start("b64token");
    let explicit = format!("{}+a/b.c_d~e==", fresh_secret("Zm9v").replace('-', "_"));
    let token = stack.mint(json!({ "sub": DEMO_SUB, "token": explicit }));
    assert_eq!(token, explicit);
    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], DEMO_SUB);
    let last = stack
        .auth
        .admin("/_mock/last-request", json!({ "token": token }));
    assert_eq!(last["token_bytes_equal"], true, "{last}");
    assert_eq!(last["auth_method"], "client_secret_post", "{last}");
    assert_eq!(last["client_id"], e2e::CLIENT_ID);
    assert_eq!(last["content_type"], "application/x-www-form-urlencoded");
    assert_eq!(last["accept"], "application/json");
}

#[test]
fn client_secret_basic_works() {
    let stack = Stack::with(
        "basic",
        StackOptions {
            plugin: json!({ "client_auth": "client_secret_basic" }),
            ..Default::default()
        },
    );
    let token = stack.user_token(DEMO_SUB);
    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let last = stack
        .auth
        .admin("/_mock/last-request", json!({ "token": token }));
    assert_eq!(last["auth_method"], "client_secret_basic", "{last}");
    assert!(last["form_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .all(|k| k != "client_secret"));
}

#[test]
fn client_secret_can_come_from_envoys_environment() {
    let stack = Stack::with(
        "secret-env",
        StackOptions {
            plugin: json!({ "client_secret": null, "client_secret_env": "INTROSPECTION_CLIENT_SECRET" }),
            ..Default::default()
        },
    );
    let config = std::fs::read_to_string(stack.dir.join("envoy.json")).expect("config");
    assert!(
        !config.contains(&stack.client_secret),
        "the secret is not in the Envoy config"
    );
    let token = stack.user_token(DEMO_SUB);
    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn wrong_client_secret_is_unavailable_not_invalid() {
    let wrong = fresh_secret("wrong-secret");
    let stack = Stack::with(
        "wrong-secret",
        StackOptions {
            plugin: json!({ "client_secret": wrong }),
            ..Default::default()
        },
    );
    stack.secret(&wrong);
    let token = stack.user_token(DEMO_SUB);
    let r = stack.get_with_token("/api/users/me", &token);
    assert_denied(&r, 503, None);
    assert_eq!(stack.upstream_requests(), 0);
    let log = stack.envoy.proc.log_text();
    assert!(log.contains("invalid_client"), "the reason is logged");
}

/// A client secret made of what breaks text substitution into YAML or a shell: it reaches the
/// mock byte for byte (through the renderer, Envoy and the filter's form encoding), or the
/// mock would refuse the client and the request would get 503.
#[test]
fn hostile_characters_in_the_plugin_configuration_reach_the_filter() {
    let secret = format!(
        "{}&a|b\\c'd\"e ${{PLUGIN_CONFIG}} $(id) `id` %41+/=#",
        fresh_secret("hostile")
    );
    let stack = Stack::with(
        "hostile-config",
        StackOptions {
            client_secret: Some(secret.clone()),
            ..Default::default()
        },
    );
    let token = stack.user_token(DEMO_SUB);
    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let last = stack
        .auth
        .admin("/_mock/last-request", json!({ "token": token }));
    assert_eq!(last["authenticated"], true, "{last}");
    assert_eq!(stack.client_secret, secret);
}

#[test]
fn hostile_bytes_do_not_kill_the_vm() {
    let stack = Stack::start("hostile");
    let token = stack.user_token(DEMO_SUB);
    let auth = format!("Bearer {token}");
    for _ in 0..2 {
        let r = stack.get(
            "/api/users/me",
            &[
                ("authorization", auth.as_bytes()),
                ("x-note", b"caf\xe9 \xff\xfe"),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = stack.get("/api/users/me", &[("authorization", b"Bearer \xc3\x28")]);
    assert_eq!(r.status, 400);
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
}

#[test]
fn invalid_plugin_configuration_is_refused_at_load() {
    let dir = e2e::work_dir("bad-config");
    let template = e2e::template();
    for (plugin, field) in [
        (
            json!({ "cluster": "authorization_server", "authority": "a", "client_secret": "s" }),
            "client_id",
        ),
        (
            json!({ "cluster": "c", "authority": "a", "client_id": "i", "client_secret": "s", "timeout_ms": 0 }),
            "timeout_ms",
        ),
        (
            json!({ "cluster": "c", "authority": "a", "client_id": "i", "client_secret": "s", "clientsecret": "x" }),
            "clientsecret",
        ),
    ] {
        let config = e2e::render_envoy_config(&template, 1, 1, &plugin);
        let err = match e2e::Envoy::start(&dir, &config) {
            Ok(_) => panic!("envoy accepted an invalid plugin configuration: {plugin}"),
            Err(log) => log,
        };
        let expected = format!("invalid configuration: `{field}`");
        assert!(
            err.contains(&expected),
            "the log does not say {expected:?}:\n{err}"
        );
    }
    // A value written as a key (a pasted secret looks like a field name): neither the filter's
    // error nor anything Envoy logs about the refused configuration repeats it.
    let secret = "Zk39dkFj2mQ7vLp0Zr8sT4uW6yB1nC5e";
    let plugin = json!({ "cluster": "c", "authority": "a", "client_id": "i",
        "client_secret": "s", secret: 1 });
    let config = e2e::render_envoy_config(&template, 1, 1, &plugin);
    let err = match e2e::Envoy::start(&dir, &config) {
        Ok(_) => panic!("envoy accepted an unknown field"),
        Err(log) => log,
    };
    assert!(
        err.contains("invalid configuration: `(plugin configuration)`: has an unknown field"),
        "{err}"
    );
    assert!(
        !err.contains(&secret[..12]),
        "the log repeats the key:\n{err}"
    );
}

/// The demo template passes `envoy --mode validate` (which also loads the filter and its
/// configuration), rendered with a plugin configuration full of characters that break text
/// substitution, and in the benchmark's multi-listener shape. The other shipped
/// configurations are validated by `deploy_configs.rs`.
#[test]
fn rendered_demo_configs_validate() {
    let dir = e2e::work_dir("validate");
    let template = e2e::template();
    let wasm = e2e::wasm_path().display().to_string();
    let secret = format!("{}&|\\'\"${{AS_PORT}}", fresh_secret("validate"));
    let mut plugin = e2e::default_plugin_config(1, &secret);
    // A claim name may be any JSON string: newlines, U+2028, non-ASCII.
    plugin["claim_headers"]["odd &|\\'\"\n${PLUGIN_CONFIG}\u{2028}\u{85}é"] = json!("x-odd");
    let plugin_text = serde_json::to_string_pretty(&plugin).expect("json");
    let params = render::Params {
        admin_port: 0,
        listen_port: 0,
        sr_port: 1,
        as_port: 2,
        wasm_path: &wasm,
        plugin_config: &plugin_text,
    };
    let bench_like = render::parse_listener_specs(
        &json!([
            { "name": "baseline", "http_filters": [] },
            { "name": "hit", "plugin_config": plugin },
            { "name": "miss", "plugin_config": plugin_text },
            { "name": "lua", "http_filters": [{
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": { "inline_string": "function envoy_on_request(h) end" }
                }
            }] }
        ])
        .to_string(),
    )
    .expect("listener specs");
    let configs = vec![
        (
            "envoy.yaml.in".to_string(),
            render::render(&template, &params, &[]).expect("render"),
        ),
        (
            "envoy.yaml.in-listeners".to_string(),
            render::render(&template, &params, &bench_like).expect("render listeners"),
        ),
    ];
    for (name, text) in configs {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, text).expect("write");
        let words = e2e::envoy_command();
        let out = std::process::Command::new(&words[0])
            .args(&words[1..])
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&file)
            .output()
            .expect("run envoy --mode validate");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name} does not validate:\n{log}");
        assert!(!log.contains(&secret), "{name}: the secret was logged");
    }
}

#[test]
fn istio_plugin_config_is_accepted_by_the_filter() {
    let text = std::fs::read_to_string(e2e::root().join("envoy/istio/wasmplugin.yaml"))
        .expect("wasmplugin.yaml");
    let start = text.find("# BEGIN pluginConfig").expect("BEGIN marker");
    let end = text.find("# END pluginConfig").expect("END marker");
    let block = &text[start..end];
    let json_start = block.find('{').expect("pluginConfig object");
    let plugin: serde_json::Value =
        serde_json::from_str(&block[json_start..]).expect("the pluginConfig block is JSON");
    let dir = e2e::work_dir("istio-config");
    let config = e2e::render_envoy_config(&e2e::template(), 1, 1, &plugin);
    let envoy = e2e::Envoy::start_with_env(
        &dir,
        &config,
        &[("INTROSPECTION_CLIENT_SECRET", "istio-e2e-secret")],
    )
    .unwrap_or_else(|log| panic!("the Istio pluginConfig was refused:\n{log}"));
    let log = envoy.proc.log_text();
    assert!(
        log.contains("RS256 answers"),
        "configured in signed mode:\n{log}"
    );
    assert!(!log.contains("istio-e2e-secret"));
}

//! OAuthSD end to end: the mock authorization server in its OAuthSD profile (endpoints at the
//! root, answers with `user_id`/`expires` and no `token_type`), and the filter configured as
//! the README's OAuthSD example — read from the README itself, only the cluster and the client
//! id pointed at the local mock.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use e2e::{assert_denied, ResponseExt, Stack, StackOptions, CLIENT_ID, INVALID_TOKEN};
use serde_json::{json, Value};

const USER: &str = "jdupont-1742";

/// The JSON block that follows "An OAuthSD configuration" in README.md.
fn readme_oauthsd_config() -> Value {
    let readme = std::fs::read_to_string(e2e::root().join("README.md")).expect("README.md");
    let at = readme
        .find("An OAuthSD configuration")
        .expect("the README has an OAuthSD example");
    let rest = &readme[at..];
    let start = rest.find("```json").expect("a ```json block") + "```json".len();
    let end = start + rest[start..].find("```").expect("end of the block");
    serde_json::from_str(&rest[start..end]).expect("the README's OAuthSD example is JSON")
}

fn oauthsd_stack(label: &str) -> Stack {
    let example = readme_oauthsd_config();
    assert_eq!(example["introspection_path"], "/introspect");
    assert_eq!(example["client_auth"], "client_secret_basic");
    assert_eq!(example["client_secret_env"], "INTROSPECTION_CLIENT_SECRET");
    // The README's configuration exactly, pointed at the mock: defaults the harness would add
    // are removed.
    let defaults = e2e::default_plugin_config(0, "unused");
    let mut plugin = json!({});
    for key in defaults.as_object().expect("object").keys() {
        plugin[key] = Value::Null;
    }
    for (key, value) in example.as_object().expect("object") {
        plugin[key] = value.clone();
    }
    plugin["cluster"] = json!("authorization_server");
    plugin["client_id"] = json!(CLIENT_ID);
    let stack = Stack::with(
        label,
        StackOptions {
            as_args: vec!["--profile".into(), "oauthsd".into()],
            plugin,
            ..Default::default()
        },
    );
    assert!(stack.envoy.proc.log_text().contains("user claim `user_id`"));
    stack
}

#[test]
fn the_readme_oauthsd_configuration_forwards_the_right_user() {
    let stack = oauthsd_stack("oauthsd");
    let token = stack.mint(json!({ "sub": USER, "scope": "openid profile" }));

    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], USER);
    assert_eq!(r.json()["identity_headers"]["x-user-sub"], USER);

    // The callout: HTTP Basic, the token alone in the body, at /introspect.
    let last = stack
        .auth
        .admin("/_mock/last-request", json!({ "token": token }));
    assert_eq!(last["auth_method"], "client_secret_basic");
    assert_eq!(last["authenticated"], true);
    assert_eq!(last["form_keys"], json!(["token"]));
    assert_eq!(stack.auth.introspections(&token), 1);

    // The README's example keeps the default cache: the second request needs no callout.
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    assert_eq!(stack.auth.introspections(&token), 1);
}

#[test]
fn revoked_expired_and_unknown_oauthsd_tokens_are_refused() {
    let stack = oauthsd_stack("oauthsd-denied");

    // Revoked at OAuthSD's /revoke (Basic authentication) before its first use.
    let revoked = stack.mint(json!({ "sub": USER }));
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{}", stack.client_secret))
    );
    let r = e2e::http::request(
        stack.auth.port,
        "POST",
        "/revoke",
        &[
            ("content-type", b"application/x-www-form-urlencoded"),
            ("authorization", basic.as_bytes()),
        ],
        format!("token={}", e2e::form(&revoked)).as_bytes(),
    )
    .expect("revoke");
    assert_eq!(r.status, 200, "{}", r.text());
    stack.secret(&basic);
    assert_denied(
        &stack.get_with_token("/api/users/me", &revoked),
        401,
        Some(INVALID_TOKEN),
    );

    let expired = stack.mint(json!({ "sub": USER, "ttl_secs": 0 }));
    assert_denied(
        &stack.get_with_token("/api/users/me", &expired),
        401,
        Some(INVALID_TOKEN),
    );

    let unknown = "never-issued-by-oauthsd";
    stack.secret(unknown);
    assert_denied(
        &stack.get_with_token("/api/users/me", unknown),
        401,
        Some(INVALID_TOKEN),
    );
    assert_eq!(stack.upstream_requests(), 0);
}

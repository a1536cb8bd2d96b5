//! The filter loaded the way Istio loads a `WasmPlugin`: an empty `root_id`, no `vm_id`, the
//! name `<namespace>.<name>`. Two such instances of the same `.wasm` on one Envoy share one VM
//! key, so one VM per worker and one shared-data namespace (proxy-wasm scopes shared data by
//! `vm_id` only, and Istio sets none).
//!
//! One Envoy, two differently configured instances, `api.introspection-a` and
//! `api.introspection-b`, on three listeners: `a` (A alone), `b` (B alone) and `ab` (A then B in
//! one chain, as two `WasmPlugin`s on one workload are). Each instance has its own realm, so a
//! refusal names the instance that made it. The tests show:
//! - each instance applies its own configuration (scopes, forwarded claims), alone or chained;
//! - with different clients, neither reads the other's entries: at one moment the same token
//!   gets A's cached 200 and B's own 401, and the other way round;
//! - the namespace really is shared: two instances whose cache key scope is the same (same
//!   server, client, secret and claims read) do read each other's entries, and still each
//!   decides with its own policy. So the isolation above comes from the keys (an HMAC keyed by
//!   the client secret over the server, client and claim settings, `core/src/cache.rs`), not
//!   from a namespace of their own; and all four filter instances run in the VMs one plugin
//!   would have;
//! - chained, the first instance must keep `Authorization` (`forward_authorization: true`),
//!   or the second sees no token.

use e2e::{fresh_secret, wasm_path, work_dir, Envoy, MockAs, Response, ResponseExt, SampleSr};
use serde_json::{json, Value};
use stack::render::{self, ListenerSpec, Params};

const ALICE: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";
const BOB: &str = "2f7c1c2e-8a8b-4c1e-9c57-3f1f3b9a1d10";

/// The Wasm HTTP filter as Istio writes it for the `WasmPlugin` `api/<name>`: the filter and
/// the plugin both named `api.<name>`, an empty `root_id`, no `vm_id`, `pluginConfig` as a JSON
/// string, fail closed (`failStrategy: FAIL_CLOSE`, Envoy's default).
fn istio_filter(name: &str, plugin: &Value) -> Value {
    json!({
        "name": format!("api.{name}"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": format!("api.{name}"),
                "root_id": "",
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

/// A client registered at the mock.
struct Client {
    id: &'static str,
    secret: String,
}

/// The mock, the SR and one Envoy with instances A and B.
struct Proxy {
    auth: MockAs,
    _sr: SampleSr,
    envoy: Envoy,
    secrets: Vec<String>,
}

/// A plugin configuration for `client`, with `realm`; `extra` members override.
fn plugin(auth: &MockAs, client: &Client, realm: &str, extra: Value) -> Value {
    let mut p = json!({
        "cluster": "authorization_server",
        "authority": format!("127.0.0.1:{}", auth.port),
        "client_id": client.id,
        "client_secret": client.secret,
        "realm": realm,
        "claim_headers": { "client_id": "x-token-client-id" },
        "cache": { "max_entries": 1000, "max_ttl_secs": 60, "inactive_ttl_secs": 60 }
    });
    for (k, v) in extra.as_object().expect("object") {
        p[k] = v.clone();
    }
    p
}

impl Proxy {
    /// Starts everything; `configs` makes A's and B's plugin configurations.
    fn start(label: &str, configs: impl FnOnce(&MockAs, &[Client]) -> (Value, Value)) -> Proxy {
        let dir = work_dir(label);
        let clients = [
            Client {
                id: "sr-a",
                secret: fresh_secret("sr-a-secret"),
            },
            Client {
                id: "sr-b",
                secret: fresh_secret("sr-b-secret"),
            },
        ];
        let args: Vec<String> = clients
            .iter()
            .flat_map(|c| ["--client".to_owned(), format!("{}:{}:none", c.id, c.secret)])
            .collect();
        let auth = MockAs::start(&dir, &args);
        let sr = SampleSr::start(&dir);
        let (a, b) = configs(&auth, &clients);
        let (fa, fb) = (
            istio_filter("introspection-a", &a),
            istio_filter("introspection-b", &b),
        );
        let listener = |name: &str, filters: Vec<Value>| ListenerSpec {
            name: name.into(),
            port: 0,
            plugin_config: None,
            http_filters: Some(filters),
        };
        let listeners = [
            listener("a", vec![fa.clone()]),
            listener("b", vec![fb.clone()]),
            listener("ab", vec![fa, fb]),
        ];
        let wasm = wasm_path().display().to_string();
        let params = Params {
            admin_port: 0,
            listen_port: 0,
            sr_port: sr.port,
            as_port: auth.port,
            wasm_path: &wasm,
            plugin_config: "{}",
        };
        // Rendered by the shared renderer: the configurations are values in the document,
        // never text spliced into YAML.
        let config = render::render(&e2e::template(), &params, &listeners).expect("render");
        let envoy = Envoy::start(&dir, &config).unwrap_or_else(|e| panic!("{e}"));
        let log = envoy.proc.log_text();
        for name in ["api.introspection-a", "api.introspection-b"] {
            assert!(
                !log.contains(&format!("{name} failed")),
                "{name} did not load:\n{log}"
            );
        }
        Proxy {
            auth,
            _sr: sr,
            envoy,
            secrets: clients.into_iter().map(|c| c.secret).collect(),
        }
    }

    fn mint(&mut self, spec: Value) -> String {
        let token = self.auth.admin("/_mock/tokens", spec)["token"]
            .as_str()
            .expect("token")
            .to_owned();
        self.secrets.push(token.clone());
        token
    }

    fn get(&self, listener: &str, token: &str) -> Response {
        let port = self.envoy.listeners[listener];
        let value = format!("Bearer {token}");
        stack::http::request(
            port,
            "GET",
            "/api/users/me",
            &[("authorization", value.as_bytes())],
            b"",
        )
        .expect("request through Envoy")
    }

    /// The client that sent the last introspection of `token`.
    fn last_client(&self, token: &str) -> Value {
        self.auth
            .admin("/_mock/last-request", json!({ "token": token }))["client_id"]
            .clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let log = self.envoy.proc.log_text();
        for s in &self.secrets {
            assert!(
                !log.contains(s.as_str()),
                "a token or secret is in Envoy's log"
            );
        }
    }
}

/// A 200 naming `sub`; its identity headers.
fn passes(r: &Response, sub: &str) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["sub"], sub, "{body}");
    body["identity_headers"].clone()
}

/// A refusal with this status by the instance whose realm is `realm`.
fn refused(r: &Response, status: u16, realm: &str, error: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    let expected = format!("Bearer realm=\"{realm}\", error=\"{error}\"");
    assert!(
        challenge.starts_with(&expected),
        "{challenge:?} is not {expected:?}"
    );
}

/// A: client sr-a, `openid`, forwards `client_id`. B: client sr-b, `openid locations`, forwards
/// `scope` instead. A keeps `Authorization` (`forward_authorization`): an instance that lets a
/// request through removes it by default, and B, after A in a chain, would then see no token.
fn two_clients(auth: &MockAs, c: &[Client]) -> (Value, Value) {
    (
        plugin(
            auth,
            &c[0],
            "api-a",
            json!({ "required_scopes": ["openid"], "forward_authorization": true }),
        ),
        plugin(
            auth,
            &c[1],
            "api-b",
            json!({
                "required_scopes": ["openid", "locations"],
                "claim_headers": { "scope": "x-token-scope" }
            }),
        ),
    )
}

#[test]
fn each_instance_applies_its_own_configuration_alone_and_chained() {
    let mut p = Proxy::start("istio-own-config", two_clients);
    let narrow = p.mint(json!({ "sub": ALICE, "scope": "openid" }));
    let wide = p.mint(json!({ "sub": BOB, "scope": "openid locations" }));

    // A alone: its scopes, its forwarded claim, its client at the server.
    let headers = passes(&p.get("a", &narrow), ALICE);
    assert_eq!(headers["x-token-client-id"], "fs-demo", "{headers}");
    assert!(headers.get("x-token-scope").is_none(), "{headers}");
    assert_eq!(p.last_client(&narrow), "sr-a");
    // B alone: it requires `locations`; the refusal is B's (its realm).
    refused(&p.get("b", &narrow), 403, "api-b", "insufficient_scope");
    assert_eq!(p.last_client(&narrow), "sr-b", "B asked as its own client");
    let headers = passes(&p.get("b", &wide), BOB);
    assert_eq!(headers["x-token-scope"], "openid locations", "{headers}");
    assert!(headers.get("x-token-client-id").is_none(), "{headers}");
    // Chained, as two WasmPlugins on one workload: A lets `narrow` through, B stops it.
    refused(&p.get("ab", &narrow), 403, "api-b", "insufficient_scope");
    // `wide` passes both, and the SR sees what each forwards.
    let headers = passes(&p.get("ab", &wide), BOB);
    assert_eq!(headers["x-token-client-id"], "fs-demo", "{headers}");
    assert_eq!(headers["x-token-scope"], "openid locations", "{headers}");
}

#[test]
fn with_different_clients_neither_reads_the_others_entries() {
    let mut p = Proxy::start("istio-isolated", two_clients);

    // A caches an active answer. The token is revoked. At the same moment, A still serves its
    // entry (the cache's documented trade-off) while B, asking the server itself, refuses.
    let token = p.mint(json!({ "sub": BOB, "scope": "openid locations" }));
    passes(&p.get("a", &token), BOB);
    assert_eq!(p.auth.introspections(&token), 1);
    p.auth.admin("/_mock/revoke", json!({ "token": token }));
    refused(&p.get("b", &token), 401, "api-b", "invalid_token");
    assert_eq!(p.auth.introspections(&token), 2, "B made its own callout");
    assert_eq!(p.last_client(&token), "sr-b");
    passes(&p.get("a", &token), BOB);
    refused(&p.get("b", &token), 401, "api-b", "invalid_token");
    assert_eq!(p.auth.introspections(&token), 2, "each from its own entry");

    // The other way round: B caches "inactive" for a token not yet issued; once it is, A asks
    // the server itself and lets it through, while B keeps its own cached refusal.
    let later = fresh_secret("issuedLater");
    p.secrets.push(later.clone());
    refused(&p.get("b", &later), 401, "api-b", "invalid_token");
    p.mint(json!({ "sub": ALICE, "scope": "openid locations", "token": later }));
    passes(&p.get("a", &later), ALICE);
    assert_eq!(p.last_client(&later), "sr-a", "A made its own callout");
    refused(&p.get("b", &later), 401, "api-b", "invalid_token");
    assert_eq!(p.auth.introspections(&later), 2);

    // Chained, a new token costs one callout per instance, then none.
    let chained = p.mint(json!({ "sub": ALICE, "scope": "openid locations" }));
    passes(&p.get("ab", &chained), ALICE);
    assert_eq!(p.auth.introspections(&chained), 2);
    passes(&p.get("ab", &chained), ALICE);
    passes(&p.get("a", &chained), ALICE);
    passes(&p.get("b", &chained), ALICE);
    assert_eq!(p.auth.introspections(&chained), 2);
}

#[test]
fn the_namespace_is_shared_so_isolation_comes_from_the_keys() {
    // B as the same client as A, reading the same claims, with its own scopes and realm: its
    // key scope equals A's, so it reads A's entries; it still decides with its own policy.
    let mut p = Proxy::start("istio-shared", |auth, c| {
        (
            plugin(
                auth,
                &c[0],
                "api-a",
                json!({ "required_scopes": ["openid"] }),
            ),
            plugin(
                auth,
                &c[0],
                "api-b",
                json!({ "required_scopes": ["admin"] }),
            ),
        )
    });
    let token = p.mint(json!({ "sub": ALICE, "scope": "openid" }));
    passes(&p.get("a", &token), ALICE);
    refused(&p.get("b", &token), 403, "api-b", "insufficient_scope");
    assert_eq!(
        p.auth.introspections(&token),
        1,
        "B read the entry A stored: one shared-data namespace for both"
    );
    // One VM per thread for all four filter instances (A and B, on three listeners): the base
    // VM, the main thread's and the one worker's, as for a single plugin. Separate VMs would
    // make six.
    let vms = p.envoy.stat("wasm.envoy.wasm.runtime.v8.active");
    assert!((1..=3).contains(&vms), "{vms} VMs");
    // And the other way round.
    let admin = p.mint(json!({ "sub": BOB, "scope": "openid admin" }));
    passes(&p.get("b", &admin), BOB);
    passes(&p.get("a", &admin), BOB);
    assert_eq!(p.auth.introspections(&admin), 1);
    // Neither forwards `Authorization` here (the default): chained, A lets the request through
    // and removes the token, so B sees none. Two instances on one workload need
    // `forward_authorization: true` on the first.
    let r = p.get("ab", &admin);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api-b\""));
}

//! The shared introspection cache, single-flight callouts and metrics, end to end.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use e2e::{assert_denied, fresh_secret, wait_until, ResponseExt, Stack, StackOptions};
use serde_json::{json, Value};

const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

fn cached_stack(label: &str, cache: Value, extra: Value) -> Stack {
    let mut plugin = json!({ "cache": cache });
    for (k, v) in extra.as_object().expect("object") {
        plugin[k] = v.clone();
    }
    Stack::with(
        label,
        StackOptions {
            plugin,
            ..Default::default()
        },
    )
}

#[test]
fn a_second_request_is_served_from_the_cache() {
    let stack = cached_stack("hit", json!({ "max_entries": 1000 }), json!({}));
    let token = stack.user_token(SUB);
    for _ in 0..3 {
        let r = stack.get_with_token("/api/users/me", &token);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["sub"], SUB);
        assert_eq!(r.json()["identity_headers"]["x-token-client-id"], "fs-demo");
    }
    assert_eq!(
        stack.auth.introspections(&token),
        1,
        "one callout for three requests"
    );
    assert_eq!(stack.metric("cache.hit"), 2);
    assert_eq!(stack.metric("cache.miss"), 1);
    assert_eq!(stack.metric("cache.store"), 1);
    assert_eq!(stack.metric("callout.sent"), 1);
    assert_eq!(stack.metric("allowed"), 3);
    // Another token is another entry.
    let other = stack.user_token("2f7c1c2e-8a8b-4c1e-9c57-3f1f3b9a1d10");
    let r = stack.get_with_token("/api/users/me", &other);
    assert_eq!(r.json()["sub"], "2f7c1c2e-8a8b-4c1e-9c57-3f1f3b9a1d10");
}

#[test]
fn a_revoked_token_passes_until_its_entry_expires_and_not_after() {
    let stack = cached_stack("revoked", json!({ "max_ttl_secs": 2 }), json!({}));
    let token = stack.user_token(SUB);
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    stack
        .auth
        .revoke_rfc7009(e2e::CLIENT_ID, &stack.client_secret, &token);
    // The documented trade-off: the entry still answers.
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    assert_eq!(stack.auth.introspections(&token), 1);
    // Then, once the 2 s entry has expired, the revocation shows; until then every answer
    // came from the entry.
    let r = until_denied(&stack, &token, Duration::from_secs(10));
    assert_denied(&r, 401, Some(e2e::INVALID_TOKEN));
    assert_eq!(stack.auth.introspections(&token), 2);
}

/// Requests `token` (every 20 ms, for at most `deadline`) until the answer is no longer 200;
/// every 200 before it must have come from the cache (no new introspection).
fn until_denied(stack: &Stack, token: &str, deadline: Duration) -> e2e::Response {
    let before = stack.auth.introspections(token);
    let mut last = None;
    wait_until("the cache entry expires", deadline, || {
        let r = stack.get_with_token("/api/users/me", token);
        if r.status == 200 {
            assert_eq!(
                stack.auth.introspections(token),
                before,
                "a 200 that did not come from the cache"
            );
            return false;
        }
        last = Some(r);
        true
    });
    last.expect("a denial")
}

#[test]
fn an_expired_token_is_never_served_from_the_cache() {
    let stack = cached_stack("expired", json!({ "max_ttl_secs": 600 }), json!({}));
    let token = stack.mint(json!({ "sub": SUB, "ttl_secs": 2 }));
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    assert_eq!(stack.auth.introspections(&token), 1);
    // The entry may live 600 s, the token 2 s: the token's expiry ends it.
    let r = until_denied(&stack, &token, Duration::from_secs(10));
    assert_denied(&r, 401, Some(e2e::INVALID_TOKEN));
    assert_eq!(
        stack.auth.introspections(&token),
        2,
        "expired entry not served"
    );
}

#[test]
fn scopes_are_enforced_on_a_hit() {
    let stack = cached_stack(
        "scope-hit",
        json!({ "max_entries": 100 }),
        json!({ "required_scopes": ["locations"] }),
    );
    let narrow = stack.mint(json!({ "sub": SUB, "scope": "openid" }));
    for _ in 0..2 {
        assert_denied(
            &stack.get_with_token("/api/users/locations", &narrow),
            403,
            Some("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"locations\""),
        );
    }
    assert_eq!(
        stack.auth.introspections(&narrow),
        1,
        "the second 403 came from the cache"
    );
    assert_eq!(stack.metric("denied.scope"), 2);
    let wide = stack.mint(json!({ "sub": SUB, "scope": "openid locations" }));
    assert_eq!(
        stack.get_with_token("/api/users/locations", &wide).status,
        200
    );
    assert_eq!(
        stack.get_with_token("/api/users/locations", &wide).status,
        200
    );
    assert_eq!(stack.auth.introspections(&wide), 1);
}

#[test]
fn inactive_answers_are_cached_briefly_and_errors_never() {
    let stack = cached_stack("negative", json!({ "inactive_ttl_secs": 30 }), json!({}));
    let unknown = fresh_secret("unknownToken");
    stack.secret(&unknown);
    for _ in 0..3 {
        assert_denied(
            &stack.get_with_token("/api/users/me", &unknown),
            401,
            Some(e2e::INVALID_TOKEN),
        );
    }
    assert_eq!(stack.auth.introspections(&unknown), 1);

    let failing = stack.mint(json!({ "sub": SUB, "tamper": "status_500" }));
    for _ in 0..2 {
        assert_denied(&stack.get_with_token("/api/users/me", &failing), 503, None);
    }
    assert_eq!(
        stack.auth.introspections(&failing),
        2,
        "errors are not cached"
    );
    assert_eq!(stack.metric("callout.failed"), 2);
    assert_eq!(stack.metric("denied.unavailable"), 2);
    assert_eq!(stack.metric("denied.inactive"), 3);
}

#[test]
fn concurrent_requests_with_one_new_token_share_one_callout() {
    // No cache: only the single-flight coalescing can keep this to one callout.
    let stack = Arc::new(cached_stack(
        "flight",
        json!({ "max_entries": 0 }),
        json!({}),
    ));
    let token = stack.user_token(SUB);
    // The mock holds its answer until every request is inside Envoy, waiting.
    stack.auth.hold();
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let stack = Arc::clone(&stack);
            let token = token.clone();
            thread::spawn(move || {
                let r = stack.get_with_token("/api/users/me", &token);
                (r.status, r.json()["sub"].clone())
            })
        })
        .collect();
    wait_until(
        "50 requests in Envoy, one introspection held at the mock",
        e2e::WAIT_DEADLINE,
        || stack.envoy.stat("http.sr_ingress.downstream_rq_active") == 50 && stack.auth.held() >= 1,
    );
    stack.auth.release();
    for h in handles {
        let (status, sub) = h.join().expect("client thread");
        assert_eq!(status, 200);
        assert_eq!(sub, SUB);
    }
    // Envoy runs one worker (--concurrency 1): one callout at most.
    assert_eq!(stack.auth.introspections(&token), 1);
    assert_eq!(stack.metric("callout.sent"), 1);
    assert_eq!(stack.metric("callout.coalesced"), 49);
    assert_eq!(stack.metric("allowed"), 50);
}

#[test]
fn metrics_are_exported() {
    let stack = cached_stack("metrics", json!({ "max_entries": 10 }), json!({}));
    let token = stack.user_token(SUB);
    stack.get_with_token("/api/users/me", &token);
    stack.get("/api/users/me", &[]);
    stack.get("/api/users/me", &[("authorization", b"Basic x")]);
    assert_eq!(stack.metric("allowed"), 1);
    assert_eq!(stack.metric("denied.missing"), 1);
    assert_eq!(stack.metric("denied.malformed"), 1);
    // Envoy 1.40's Prometheus output: the `wasmcustom.` namespace stripped, dots turned into
    // underscores, no `envoy_` prefix.
    let prom = stack.envoy.stats_text(true);
    let samples: Vec<(&str, &str)> = prom
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| *s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in /stats/prometheus:\n{prom}"))
    };
    assert_eq!(value("introspection_allowed{}"), "1");
    assert_eq!(value("introspection_denied_missing{}"), "1");
    assert_eq!(value("introspection_denied_malformed{}"), "1");
    assert_eq!(value("introspection_cache_miss{}"), "1");
    assert_eq!(value("introspection_callout_sent{}"), "1");
    for line in [
        "# TYPE introspection_allowed counter",
        "# TYPE introspection_callout_latency_ms histogram",
    ] {
        assert!(prom.lines().any(|l| l == line), "no {line:?}:\n{prom}");
    }
    assert!(
        samples
            .iter()
            .any(|(s, _)| s.starts_with("introspection_callout_latency_ms_bucket{le=")),
        "latency histogram buckets missing"
    );
    assert!(
        !prom.contains("wasmcustom") && !prom.contains("envoy_introspection"),
        "the filter's metrics under another name:\n{prom}"
    );
}

//! The shared introspection cache, single-flight callouts and metrics, end to end.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use e2e::{assert_denied, fresh_secret, ResponseExt, Stack, StackOptions};
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
    thread::sleep(Duration::from_millis(2600));
    assert_denied(
        &stack.get_with_token("/api/users/me", &token),
        401,
        Some(e2e::INVALID_TOKEN),
    );
    assert_eq!(stack.auth.introspections(&token), 2);
}

#[test]
fn an_expired_token_is_never_served_from_the_cache() {
    let stack = cached_stack("expired", json!({ "max_ttl_secs": 600 }), json!({}));
    let token = stack.mint(json!({ "sub": SUB, "ttl_secs": 2 }));
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    assert_eq!(stack.auth.introspections(&token), 1);
    thread::sleep(Duration::from_millis(2600));
    assert_denied(
        &stack.get_with_token("/api/users/me", &token),
        401,
        Some(e2e::INVALID_TOKEN),
    );
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
    let token = stack.mint(json!({ "sub": SUB, "delay_ms": 1500 }));
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
    let prom = stack.envoy.stats_text(true);
    assert!(
        prom.contains("introspection_allowed"),
        "prometheus output lacks the filter metrics"
    );
    assert!(
        prom.contains("introspection_callout_latency_ms_bucket"),
        "latency histogram missing"
    );
}

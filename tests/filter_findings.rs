//! FILTER BUG reproducers: filter bugs found while writing the soak and the Istio-loading
//! test. Each is `#[ignore]`d so that `make test` stays green until the filter (core/, src/) is
//! fixed; run them with `cargo test -p e2e --test filter_findings -- --ignored`. Remove the
//! `ignore` with the fix.

use e2e::{ResponseExt, Stack, StackOptions};
use serde_json::json;

const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

/// A route rule's `client_ids` reads the answer's `client_id`, but a cache entry keeps only
/// `active`, `token_type`, `scope`, `nbf`, `iss`, the user and expiry claims and the
/// `claim_headers` claims (`core/src/cache.rs`, `kept_claims`). Unless `client_id` is also a
/// claim header, the first request of an accepted client's token passes and every request
/// served from the cache after it is refused (401 `invalid_token`, as for another client's
/// token). Fails closed, but breaks the rule for every cached token.
#[test]
#[ignore = "FILTER BUG (reproducer): client_ids rules refuse cache hits (client_id not kept)"]
fn a_client_ids_rule_accepts_the_same_token_from_the_cache() {
    let stack = Stack::with(
        "finding-client-ids",
        StackOptions {
            plugin: json!({
                // The mock answers with client_id "fs-demo".
                "rules": [{ "name": "api", "path_prefix": "/api/", "client_ids": ["fs-demo"] }],
                "claim_headers": {},
                "cache": { "max_entries": 100 }
            }),
            ..Default::default()
        },
    );
    let token = stack.user_token(SUB);
    let first = stack.get_with_token("/api/users/me", &token);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["sub"], SUB);
    let second = stack.get_with_token("/api/users/me", &token);
    assert_eq!(
        stack.auth.introspections(&token),
        1,
        "served from the cache"
    );
    assert_eq!(
        second.status,
        200,
        "the same token, from the cache: {} {:?}",
        second.text(),
        second.header("www-authenticate")
    );
}

/// The README says a revoked token "keeps passing until its entry expires, at most
/// `cache.max_ttl_secs`". But an entry's life is counted from when the answer *arrives*
/// (`core/src/gate.rs`, `store` is given the time of the answer), not from when the callout
/// left: an answer the server computed before a revocation, delivered late (a slow server, up
/// to `timeout_ms`), is then served for `max_ttl_secs` after its arrival, so the revocation
/// shows up to `max_ttl_secs` + `timeout_ms` after the server acknowledged it. Counting the
/// life from the callout's dispatch (the flight's `sent_at`) would keep the documented bound.
#[test]
#[ignore = "FILTER BUG (reproducer): a late answer makes a revoked token pass longer than max_ttl_secs"]
fn a_revocation_shows_within_max_ttl_even_after_a_late_answer() {
    use std::time::{Duration, Instant};
    let stack = Stack::with(
        "finding-late-answer",
        StackOptions {
            plugin: json!({ "timeout_ms": 5000, "cache": { "max_ttl_secs": 2 } }),
            ..Default::default()
        },
    );
    let token = stack.user_token(SUB);
    stack.auth.hold();
    std::thread::scope(|s| {
        let first = s.spawn(|| stack.get_with_token("/api/users/me", &token));
        // The server has taken the introspection (and its answer, active) when it holds it.
        e2e::wait_until("the introspection is held", e2e::WAIT_DEADLINE, || {
            stack.auth.held() == 1
        });
        stack.auth.admin("/_mock/revoke", json!({ "token": token }));
        let revoked = Instant::now();
        // The answer arrives late: longer after the revocation than max_ttl_secs.
        let late = revoked + Duration::from_millis(2500);
        e2e::wait_until("the answer is late", e2e::WAIT_DEADLINE, || {
            Instant::now() >= late
        });
        stack.auth.release();
        let first = first.join().expect("first request");
        // The request began before the revocation: passing is right.
        assert_eq!(first.status, 200, "{}", first.text());
        let since = revoked.elapsed();
        let after = stack.get_with_token("/api/users/me", &token);
        assert_eq!(
            after.status,
            401,
            "{since:?} after the revocation (max_ttl_secs 2), the token still passes: {}",
            after.text()
        );
    });
}

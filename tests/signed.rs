//! Signed introspection answers (RFC 9701), end to end, for RS256, ES256 and HS256.

use std::time::Duration;

use e2e::{assert_denied, ResponseExt, Stack, StackOptions};
use serde_json::{json, Value};

const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

fn signed_stack(label: &str, alg: &'static str, extra: Value) -> Stack {
    let mut plugin = json!({ "signed_response_alg": alg, "issuer": "@issuer" });
    if alg != "HS256" {
        plugin["jwks_path"] = json!("/api/v2/jwks");
    }
    for (k, v) in extra.as_object().expect("object") {
        plugin[k] = v.clone();
    }
    Stack::with(
        label,
        StackOptions {
            client_alg: alg,
            plugin,
            ..Default::default()
        },
    )
}

fn jwks_requests(stack: &Stack) -> u64 {
    stack.auth.admin_get_stats()["jwks_requests"]
        .as_u64()
        .expect("jwks_requests")
}

/// The JWKS request count once every VM's start-up fetch has landed. Each VM sends its fetch
/// when it is configured, before Envoy is ready, and the caller has had one request pass; so
/// what can still be pending is a fetch the mock has answered and a VM has not yet taken in:
/// wait (with a bound) until every fetch the mock served has been counted by the filter.
fn settled_jwks_requests(stack: &Stack) -> u64 {
    let mut served = 0;
    e2e::wait_until(
        "every JWKS fetch the mock served has reached a VM",
        e2e::WAIT_DEADLINE,
        || {
            served = jwks_requests(stack);
            served == stack.metric("jwks.fetch_ok") + stack.metric("jwks.fetch_failed")
        },
    );
    served
}

/// Every attack or fault on the signed answer gets 503 and nothing reaches the SR.
fn attacks_fail_closed(stack: &Stack) {
    let before = stack.upstream_requests();
    for tamper in [
        "sig_bit",
        "payload",
        "alg_none",
        "hs256_rsa_pubkey",
        "wrong_iss",
        "wrong_aud",
        "no_iat",
        "iat_past",
        "iat_future",
        "wrong_typ",
        "plain_json",
        "unknown_kid",
        "sig_short",
        "sig_long",
        "sig_zero",
        "sig_der",
    ] {
        let token = stack.mint(json!({ "sub": SUB, "tamper": tamper }));
        let r = stack.get_with_token("/api/users/me", &token);
        assert_eq!(r.status, 503, "tamper {tamper}: {}", r.text());
        assert_denied(&r, 503, None);
    }
    assert_eq!(stack.upstream_requests(), before, "nothing reached the SR");
}

fn valid_and_inactive(stack: &Stack) {
    let token = stack.user_token(SUB);
    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], SUB);
    let last = stack
        .auth
        .admin("/_mock/last-request", json!({ "token": token }));
    assert_eq!(
        last["accept"], "application/token-introspection+jwt",
        "{last}"
    );

    // Revoked: the server signs `{"active":false}`; that is a 401, not a 503.
    stack.auth.admin("/_mock/revoke", json!({ "token": token }));
    assert_denied(
        &stack.get_with_token("/api/users/me", &token),
        401,
        Some(e2e::INVALID_TOKEN),
    );
    let refresh = stack.mint(json!({ "sub": SUB, "kind": "refresh" }));
    assert_denied(
        &stack.get_with_token("/api/users/me", &refresh),
        401,
        Some(e2e::INVALID_TOKEN),
    );
}

/// Who checked the answers, from the filter's own log: the choice made at configuration (every
/// VM logs it) and the per-answer debug lines.
fn checked_by(stack: &Stack, alg: &str) -> (&'static str, usize, usize) {
    let log = stack.envoy.proc.log_text();
    let choice = if log.contains(&format!(
        "{alg} signatures checked by the proxy (verify_signature): known-answer test passed"
    )) {
        "proxy"
    } else if log.contains(&format!("{alg} signatures checked in the module")) {
        "wasm"
    } else {
        "none logged"
    };
    let count = |by: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("{alg} answer checked in")) && l.contains(by))
            .count()
    };
    (choice, count("(proxy)"), count("(wasm)"))
}

/// The whole signed suite through Envoy's BoringSSL (chosen by the known-answer test), then
/// again with the proxy's check forced off: both refuse every attack.
fn both_paths(alg: &'static str) {
    let label = alg.to_lowercase();
    let stack = signed_stack(&label, alg, json!({}));
    valid_and_inactive(&stack);
    attacks_fail_closed(&stack);
    let (choice, proxy, wasm) = checked_by(&stack, alg);
    assert_eq!(choice, "proxy", "Envoy 1.40 has verify_signature");
    assert!(
        proxy >= 3 && wasm == 0,
        "answers checked: {proxy} by the proxy, {wasm} in wasm"
    );
    drop(stack);

    let stack = signed_stack(
        &format!("{label}-wasm"),
        alg,
        json!({ "signature_check": "wasm" }),
    );
    valid_and_inactive(&stack);
    attacks_fail_closed(&stack);
    let (choice, proxy, wasm) = checked_by(&stack, alg);
    assert_eq!(choice, "wasm", "forced off");
    assert!(
        proxy == 0 && wasm >= 3,
        "answers checked: {proxy} by the proxy, {wasm} in wasm"
    );
}

#[test]
fn rs256_answers_are_verified_by_envoy_and_by_the_module() {
    both_paths("RS256");
}

#[test]
fn es256_answers_are_verified_by_envoy_and_by_the_module() {
    both_paths("ES256");
}

#[test]
fn signature_check_envoy_starts_on_envoy_1_40() {
    let stack = signed_stack(
        "rs256-envoy",
        "RS256",
        json!({ "signature_check": "envoy" }),
    );
    valid_and_inactive(&stack);
    assert_eq!(checked_by(&stack, "RS256").0, "proxy");
}

#[test]
fn hs256_answers_are_verified() {
    let stack = signed_stack("hs256", "HS256", json!({}));
    valid_and_inactive(&stack);
    attacks_fail_closed(&stack);
    assert_eq!(jwks_requests(&stack), 0, "HS256 needs no JWKS");
}

#[test]
fn unknown_kid_triggers_one_rate_limited_refetch() {
    let stack = signed_stack(
        "unknown-kid",
        "ES256",
        json!({ "jwks_refetch_interval_secs": 60 }),
    );
    // The keys are loaded at start.
    assert_eq!(stack.fresh_user_status(SUB), 200);
    let base = settled_jwks_requests(&stack);
    let bad = stack.mint(json!({ "sub": SUB, "tamper": "unknown_kid" }));
    assert_denied(&stack.get_with_token("/api/users/me", &bad), 503, None);
    assert_eq!(
        jwks_requests(&stack),
        base + 1,
        "one refetch for the unknown kid"
    );
    // A flood of unknown kids does not hammer the JWKS endpoint.
    for _ in 0..5 {
        let bad = stack.mint(json!({ "sub": SUB, "tamper": "unknown_kid" }));
        assert_denied(&stack.get_with_token("/api/users/me", &bad), 503, None);
    }
    assert_eq!(jwks_requests(&stack), base + 1, "rate-limited");
    // Good answers still pass.
    assert_eq!(stack.fresh_user_status(SUB), 200);
}

#[test]
fn key_rotation_needs_no_restart() {
    let stack = signed_stack("rotation", "RS256", json!({}));
    let before = stack.user_token(SUB);
    assert_eq!(stack.get_with_token("/api/users/me", &before).status, 200);
    let rotated = stack.auth.admin("/_mock/keys/rotate", json!({}));
    assert!(
        rotated["kids"].as_array().expect("kids").len() >= 4,
        "{rotated}"
    );
    // The new kid is unknown to the filter: it refetches and verifies.
    let after = stack.user_token(SUB);
    let r = stack.get_with_token("/api/users/me", &after);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], SUB);
    // Old keys retired at the server: new answers still verify.
    stack.auth.admin("/_mock/keys/retire", json!({}));
    assert_eq!(stack.fresh_user_status(SUB), 200);
}

#[test]
fn jwks_down_at_start_is_unavailable_then_recovers() {
    let stack = Stack::with(
        "jwks-down",
        StackOptions {
            client_alg: "RS256",
            plugin: json!({ "signed_response_alg": "RS256", "issuer": "@issuer",
                "jwks_path": "/api/v2/jwks", "jwks_refetch_interval_secs": 0 }),
            jwks_down_at_start: true,
            ..Default::default()
        },
    );
    let token = stack.user_token(SUB);
    assert_denied(&stack.get_with_token("/api/users/me", &token), 503, None);
    assert_eq!(stack.upstream_requests(), 0);
    stack
        .auth
        .admin("/_mock/jwks", json!({ "available": true }));
    let r = stack.eventually(&token, 200, Duration::from_secs(15));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn endpoints_and_issuer_from_discovery() {
    let stack = Stack::with(
        "discovery",
        StackOptions {
            client_alg: "ES256",
            plugin: json!({ "signed_response_alg": "ES256",
                "discovery_path": "/api/v2/.well-known/openid-configuration" }),
            ..Default::default()
        },
    );
    let token = stack.user_token(SUB);
    let r = stack.eventually(&token, 200, Duration::from_secs(15));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], SUB);
    let bad = stack.mint(json!({ "sub": SUB, "tamper": "wrong_iss" }));
    assert_denied(&stack.get_with_token("/api/users/me", &bad), 503, None);
}

#[test]
fn plain_answer_with_the_wrong_issuer_is_refused() {
    let stack = Stack::with(
        "plain-iss",
        StackOptions {
            plugin: json!({ "issuer": "https://another-issuer.example/api/v2" }),
            ..Default::default()
        },
    );
    let token = stack.user_token(SUB);
    assert_denied(&stack.get_with_token("/api/users/me", &token), 503, None);
}

//! What happens to requests while the filter waits — for a JWKS refetch, for a corrected
//! answer — end to end. The native suite (core/tests/gate.rs) covers every branch; these
//! cases show the real Envoy delivers what the core decided.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use e2e::{assert_denied, wait_until, ResponseExt, Stack, StackOptions};
use serde_json::json;

const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

fn es256_stack(label: &str) -> Stack {
    Stack::with(
        label,
        StackOptions {
            client_alg: "ES256",
            // A long interval: a refetch the filter lost would block the new key for a minute.
            plugin: json!({ "signed_response_alg": "ES256", "issuer": "@issuer",
                "jwks_path": "/api/v2/jwks", "jwks_refetch_interval_secs": 60 }),
            ..Default::default()
        },
    )
}

fn held_jwks_requests(stack: &Stack) -> u64 {
    stack.auth.admin_get_stats()["jwks_held"]
        .as_u64()
        .expect("jwks_held")
}

#[test]
fn a_client_gone_during_a_kid_refetch_does_not_block_the_new_key() {
    let stack = es256_stack("kid-refetch-client-gone");
    assert_eq!(stack.fresh_user_status(SUB), 200, "keys loaded at start");
    stack.auth.admin("/_mock/keys/rotate", json!({}));
    stack.auth.admin("/_mock/jwks", json!({ "hold": true }));

    // A client whose answer is signed with the new key, and who leaves during the refetch.
    let token = stack.user_token(SUB);
    let mut client = TcpStream::connect(("127.0.0.1", stack.envoy.port)).expect("connect");
    write!(
        client,
        "GET /api/users/me HTTP/1.1\r\nhost: sr\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .expect("send");
    wait_until("the JWKS refetch", Duration::from_secs(10), || {
        held_jwks_requests(&stack) == 1
    });
    let resets = stack
        .envoy
        .stat("http.sr_ingress.downstream_cx_destroy_remote");
    drop(client);
    wait_until(
        "Envoy to see the client leave",
        Duration::from_secs(10),
        || {
            stack
                .envoy
                .stat("http.sr_ingress.downstream_cx_destroy_remote")
                > resets
        },
    );
    stack.auth.admin("/_mock/jwks", json!({ "hold": false }));
    wait_until("the JWKS answer", Duration::from_secs(10), || {
        stack.metric("jwks.fetch_ok") >= 2
    });

    // The refetch's answer was installed: the next request signed with the new key passes,
    // with no further fetch.
    let fetches = stack.auth.admin_get_stats()["jwks_requests"].clone();
    let r = stack.get_with_token("/api/users/me", &stack.user_token(SUB));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], SUB);
    assert_eq!(stack.auth.admin_get_stats()["jwks_requests"], fetches);
    assert_eq!(stack.upstream_requests(), 2);
}

#[test]
fn requests_meeting_an_unknown_kid_during_a_refetch_wait_for_it() {
    let stack = es256_stack("kid-refetch-waits");
    assert_eq!(stack.fresh_user_status(SUB), 200);
    stack.auth.admin("/_mock/keys/rotate", json!({}));
    stack.auth.admin("/_mock/jwks", json!({ "hold": true }));

    let first = stack.user_token("user-first");
    let second = stack.user_token("user-second");
    thread::scope(|s| {
        let a = s.spawn(|| stack.get_with_token("/api/users/me", &first));
        wait_until("the JWKS refetch", Duration::from_secs(10), || {
            held_jwks_requests(&stack) == 1
        });
        let b = s.spawn(|| stack.get_with_token("/api/users/me", &second));
        // The second answer, signed with the same unknown key, waits for the same refetch.
        wait_until("the second introspection", Duration::from_secs(10), || {
            stack.auth.introspections(&second) == 1
        });
        assert_eq!(held_jwks_requests(&stack), 1, "one refetch for both");
        stack.auth.admin("/_mock/jwks", json!({ "hold": false }));
        let (a, b) = (a.join().expect("first"), b.join().expect("second"));
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["sub"], "user-first");
        assert_eq!(b.status, 200, "{}", b.text());
        assert_eq!(b.json()["sub"], "user-second");
    });
}

#[test]
fn an_answer_the_policy_cannot_use_is_not_cached() {
    let stack = Stack::start("unusable-not-cached");
    let token = "corrected-later-token";
    stack.auth.admin(
        "/_mock/tokens",
        json!({ "token": token, "sub": "abc\r\nx-admin: 1" }),
    );
    let r = stack.get_with_token("/api/users/me", token);
    assert_denied(&r, 503, None);
    // The server corrects its answer: the very next request asks again and passes.
    stack
        .auth
        .admin("/_mock/tokens", json!({ "token": token, "sub": SUB }));
    let r = stack.get_with_token("/api/users/me", token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], SUB);
    assert_eq!(stack.auth.introspections(token), 2);
    assert_eq!(stack.metric("denied.unavailable.bad_claim"), 1);
    assert_eq!(stack.metric("denied.unavailable"), 1);
    stack.assert_log_clean();
}

#[test]
fn waiters_are_served_when_the_request_that_introspected_goes_away() {
    let stack = Stack::start("sender-gone");
    let token = stack.user_token(SUB);
    let held = || stack.auth.admin_get_stats()["held"].as_u64().expect("held");
    stack.auth.admin("/_mock/hold", json!({ "hold": true }));

    // The first client's request sends the introspection; the second waits for it.
    let mut first = TcpStream::connect(("127.0.0.1", stack.envoy.port)).expect("connect");
    write!(
        first,
        "GET /api/users/me HTTP/1.1\r\nhost: sr\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .expect("send");
    wait_until("the introspection", Duration::from_secs(10), || held() == 1);
    thread::scope(|s| {
        let second = s.spawn(|| stack.get_with_token("/api/users/me", &token));
        wait_until(
            "the second request to wait",
            Duration::from_secs(10),
            || stack.metric("callout.coalesced") == 1,
        );
        // The sender leaves: Envoy cancels its callout; the VM sends it again for the waiter.
        drop(first);
        wait_until(
            "the introspection sent again",
            Duration::from_secs(15),
            || held() == 2,
        );
        stack.auth.admin("/_mock/hold", json!({ "hold": false }));
        let r = second.join().expect("second");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["sub"], SUB);
    });
    assert_eq!(stack.metric("callout.sent"), 2);
    assert_eq!(
        stack.upstream_requests(),
        1,
        "only the waiter reached the SR"
    );
}

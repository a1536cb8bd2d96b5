//! The cache-hit path reads `Authorization` alone and removes the identity headers by name
//! (README, "Cost of a cache hit"): what only Envoy can show about it, over HTTP/1.1 and
//! HTTP/2.
//!
//! - Two `Authorization` fields reach the filter as one value joined with `,` (Envoy's inline
//!   header), so reading that header alone still refuses them — for a token the cache holds too.
//! - With a listener that lets `_` names through (the shipped template drops them), every
//!   spelling of every identity header is stripped by the filter itself, on the miss and on the
//!   hit path, whether it removes them by name (few spellings) or finds them in the header map
//!   (many spellings).

use e2e::{assert_denied, Response, ResponseExt, Stack, StackOptions};
use serde_json::{json, Value};

const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

fn stack(label: &str, claim_headers: Value) -> Stack {
    Stack::with(
        label,
        StackOptions {
            plugin: json!({
                "cache": { "max_entries": 1000 },
                "claim_headers": claim_headers,
            }),
            underscores_allowed: true,
            ..Default::default()
        },
    )
}

/// GET /api/users/me over HTTP/1.1 or HTTP/2.
fn get(stack: &Stack, h2: bool, headers: &[(&str, &[u8])]) -> Response {
    if h2 {
        stack.get_h2("/api/users/me", headers)
    } else {
        stack.get("/api/users/me", headers)
    }
}

#[test]
fn two_authorization_fields_are_refused_on_the_hit_path_over_http1_and_http2() {
    let stack = stack("hit-two-authorization", json!({}));
    let token = stack.user_token(SUB);
    let auth = format!("Bearer {token}");
    let r = stack.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stack.auth.introspections(&token), 1);
    for h2 in [false, true] {
        // The token alone is a hit...
        let r = get(&stack, h2, &[("authorization", auth.as_bytes())]);
        assert_eq!(r.status, 200, "h2 {h2}: {}", r.text());
        // ...twice, it is refused before the cache is consulted.
        let before = stack.upstream_requests();
        let hits = stack.metric("cache.hit");
        let r = get(
            &stack,
            h2,
            &[
                ("authorization", auth.as_bytes()),
                ("authorization", auth.as_bytes()),
            ],
        );
        assert_denied(
            &r,
            400,
            Some("Bearer realm=\"api\", error=\"invalid_request\""),
        );
        assert_eq!(stack.upstream_requests(), before, "h2 {h2}");
        assert_eq!(stack.metric("cache.hit"), hits, "h2 {h2}");
    }
    assert_eq!(stack.auth.introspections(&token), 1, "no callout for them");
}

/// Forged identity headers in every spelling (HTTP/2 names are lowercase by protocol).
fn forged(h2: bool, claim_headers: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut names = Vec::new();
    for header in std::iter::once("x-user-sub").chain(claim_headers.iter().copied()) {
        let dashes = header.matches('-').count();
        for mask in 0..(1u32 << dashes) {
            let mut bit = 0;
            let name: String = header
                .chars()
                .map(|c| {
                    if c != '-' {
                        return c;
                    }
                    bit += 1;
                    if mask >> (bit - 1) & 1 == 1 {
                        '_'
                    } else {
                        '-'
                    }
                })
                .collect();
            names.push(name);
        }
        if !h2 {
            names.push(header.to_ascii_uppercase().replace('-', "_"));
            names.push(header.to_ascii_uppercase());
        }
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, format!("attacker-{i}").into_bytes()))
        .collect()
}

/// Sends the token with forged identity headers; the SR must see only the filter's values.
fn assert_stripped(stack: &Stack, h2: bool, token: &str, claim_headers: &[&str], what: &str) {
    let auth = format!("Bearer {token}");
    let forged = forged(h2, claim_headers);
    let mut headers: Vec<(&str, &[u8])> = vec![("authorization", auth.as_bytes())];
    headers.extend(forged.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let r = get(stack, h2, &headers);
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let me = r.json();
    assert!(!me.to_string().contains("attacker"), "{what}: {me}");
    assert_eq!(me["identity_headers"]["x-user-sub"], SUB, "{what}: {me}");
    let seen = me["identity_headers"].as_object().expect("object");
    assert!(
        seen.keys().all(|k| !k.contains('_')),
        "{what}: an underscore identity header reached the SR: {me}"
    );
}

fn every_spelling_is_stripped(label: &str, claim_headers: Value, names: &[&str]) {
    let stack = stack(label, claim_headers);
    for h2 in [false, true] {
        let token = stack.user_token(SUB);
        let (misses, hits) = (stack.metric("cache.miss"), stack.metric("cache.hit"));
        assert_stripped(&stack, h2, &token, names, &format!("miss, h2 {h2}"));
        assert_eq!(stack.metric("cache.miss"), misses + 1);
        assert_stripped(&stack, h2, &token, names, &format!("hit, h2 {h2}"));
        assert_eq!(stack.metric("cache.hit"), hits + 1);
        assert_eq!(stack.auth.introspections(&token), 1);
    }
    // Envoy let every underscore name through: only the filter removed them.
    assert_eq!(
        stack.envoy.stat("http1.dropped_headers_with_underscores"),
        0
    );
}

#[test]
fn every_spelling_is_stripped_by_name_on_the_miss_and_hit_paths() {
    // x-user-sub and x-token-scope: 8 spellings, removed by name.
    every_spelling_is_stripped(
        "hit-strip-by-name",
        json!({ "scope": "x-token-scope" }),
        &["x-token-scope"],
    );
}

#[test]
fn every_spelling_is_stripped_from_the_header_map_on_the_miss_and_hit_paths() {
    // 20 spellings: the filter reads the header map and removes those present.
    every_spelling_is_stripped(
        "hit-strip-scan",
        json!({ "client_id": "x-token-client-id", "scope": "x-token-scope", "uid": "x-user-uid" }),
        &["x-token-client-id", "x-token-scope", "x-user-uid"],
    );
}

//! Hostile client input, end to end, over HTTP/1.1 and HTTP/2: every malformed `Authorization`
//! gets the RFC 6750 answer (400 `invalid_request`, the reason in the challenge) without a
//! callout, and every syntactically valid token reaches the authorization server byte for
//! byte. The native suite (core/src/bearer.rs) covers the parser's table; these cases show what
//! reaches the filter through Envoy's codecs, and what the codecs do themselves:
//!
//! - Envoy joins repeated `Authorization` fields into one value with `,` (it is one of its
//!   inline headers), over both protocols: the filter sees `Bearer a,Bearer a`, which is not a
//!   b64token — still a 400, named "not a b64token" rather than "several headers". An empty
//!   field beside a real one leaves no trace at all: that request passes.
//! - HTTP/1.1: leading and trailing whitespace is trimmed, NUL and other control bytes are a
//!   400 from the codec, a bare CR inside the value is dropped (`ab\rcd` arrives as `abcd`), and
//!   headers over 60 KB are a 431.
//! - HTTP/2: values arrive untrimmed (` Bearer t` has no Bearer scheme), and headers over
//!   60 KB reset the stream. Control bytes cannot be sent at all (the client refuses them, as
//!   RFC 9113 §8.2.1 requires).

use e2e::{assert_denied, fresh_secret, Response, ResponseExt, Stack};
use serde_json::json;

const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    H1,
    H2,
}

/// What a malformed request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The filter's 400 `invalid_request` with this `error_description`.
    Malformed(&'static str),
    /// Envoy's codec answers before any filter runs: this status, no challenge.
    Codec(u16),
}

const EMPTY: Expect = Expect::Malformed("empty Authorization header");
const NO_TOKEN: Expect = Expect::Malformed("Bearer scheme without a token");
const SCHEME: Expect = Expect::Malformed("Authorization scheme is not Bearer");
const TOO_LONG: Expect = Expect::Malformed("bearer token too long");
const SYNTAX: Expect = Expect::Malformed("bearer token is not a b64token");

/// GET /api/users/me with one `Authorization` field per value.
fn send(stack: &Stack, protocol: Protocol, values: &[Vec<u8>]) -> Response {
    let fields: Vec<(&str, &[u8])> = values
        .iter()
        .map(|v| ("authorization", v.as_slice()))
        .collect();
    match protocol {
        Protocol::H1 => stack.get("/api/users/me", &fields),
        Protocol::H2 => stack.get_h2("/api/users/me", &fields),
    }
}

fn introspections(stack: &Stack) -> u64 {
    stack.auth.admin_get_stats()["introspections"]
        .as_u64()
        .expect("introspections")
}

fn bearer(rest: &str) -> Vec<u8> {
    format!("Bearer {rest}").into_bytes()
}

/// Malformed `Authorization` values for `protocol`, around a real token: a label, the field
/// values, what the request must get.
fn malformed(protocol: Protocol, token: &str) -> Vec<(&'static str, Vec<Vec<u8>>, Expect)> {
    let t = token;
    let mut cases = vec![
        ("empty value", vec![Vec::new()], EMPTY),
        ("scheme alone", vec![b"Bearer".to_vec()], NO_TOKEN),
        ("scheme and spaces", vec![b"Bearer    ".to_vec()], NO_TOKEN),
        ("Bearer twice", vec![bearer(&format!("Bearer {t}"))], SYNTAX),
        (
            "two credentials",
            vec![bearer(&format!("{t}, Bearer {t}"))],
            SYNTAX,
        ),
        (
            "tab after the scheme",
            vec![format!("Bearer\t{t}").into_bytes()],
            SCHEME,
        ),
        (
            "no space after the scheme",
            vec![format!("Bearer{t}").into_bytes()],
            SCHEME,
        ),
        (
            "Basic",
            vec![b"Basic c3ItZTJlOnNlY3JldA==".to_vec()],
            SCHEME,
        ),
        (
            "another scheme",
            vec![format!("Token {t}").into_bytes()],
            SCHEME,
        ),
        (
            "ampersand",
            vec![bearer(&format!("{t}&client_id=evil"))],
            SYNTAX,
        ),
        ("percent", vec![bearer(&format!("{t}%26token=x"))], SYNTAX),
        ("equals inside", vec![bearer(&format!("{t}=x"))], SYNTAX),
        ("padding alone", vec![bearer("==")], SYNTAX),
        ("space inside", vec![bearer(&format!("{t} x"))], SYNTAX),
        ("quote", vec![bearer(&format!("{t}\"x"))], SYNTAX),
        ("UTF-8", vec![bearer(&format!("{t}\u{f6}\u{e9}"))], SYNTAX),
        (
            "Latin-1",
            vec![[bearer(t), b"\xf6\xe9".to_vec()].concat()],
            SYNTAX,
        ),
        (
            "max_token_length + 1",
            vec![bearer(&"a".repeat(4097))],
            TOO_LONG,
        ),
        ("50 KB", vec![bearer(&"a".repeat(50_000))], TOO_LONG),
        // Joined by Envoy into one value with `,`.
        ("two fields", vec![bearer(t), bearer(t)], SYNTAX),
        (
            "two fields around an empty one",
            vec![bearer(t), Vec::new(), bearer(t)],
            SYNTAX,
        ),
        (
            "three fields",
            vec![bearer(t), bearer(t), bearer(t)],
            SYNTAX,
        ),
    ];
    match protocol {
        Protocol::H1 => cases.extend([
            (
                "NUL",
                vec![[bearer(t), b"\0x".to_vec()].concat()],
                Expect::Codec(400),
            ),
            (
                "SOH",
                vec![[bearer(t), b"\x01x".to_vec()].concat()],
                Expect::Codec(400),
            ),
            (
                "DEL",
                vec![[bearer(t), b"\x7fx".to_vec()].concat()],
                Expect::Codec(400),
            ),
            (
                "over 60 KB",
                vec![bearer(&"a".repeat(62_000))],
                Expect::Codec(431),
            ),
        ]),
        Protocol::H2 => cases.extend([
            (
                "leading spaces",
                vec![format!("  Bearer {t}").into_bytes()],
                SCHEME,
            ),
            (
                "trailing space",
                vec![format!("Bearer {t} ").into_bytes()],
                SYNTAX,
            ),
        ]),
    }
    cases
}

#[test]
fn malformed_authorization_gets_400_and_no_callout_over_http1_and_http2() {
    let stack = Stack::start("hostile-malformed");
    let token = stack.user_token(SUB);
    let mut filtered = 0;
    for protocol in [Protocol::H1, Protocol::H2] {
        for (label, values, expect) in malformed(protocol, &token) {
            let what = format!("{protocol:?} {label}");
            let r = send(&stack, protocol, &values);
            match expect {
                Expect::Malformed(description) => {
                    let challenge = format!(
                        "Bearer realm=\"api\", error=\"invalid_request\", \
                         error_description=\"{description}\""
                    );
                    assert_eq!(r.status, 400, "{what}: {}", r.text());
                    assert_eq!(
                        r.header("www-authenticate"),
                        Some(challenge.as_str()),
                        "{what}"
                    );
                    assert_denied(&r, 400, Some(&challenge));
                    assert_eq!(r.json()["error_description"], description, "{what}");
                    filtered += 1;
                }
                Expect::Codec(status) => {
                    assert_eq!(r.status, status, "{what}: {}", r.text());
                    assert_eq!(r.header("www-authenticate"), None, "{what}");
                }
            }
            assert_eq!(introspections(&stack), 0, "{what}: a callout was made");
        }
    }
    // Over HTTP/2, headers past Envoy's 60 KB limit reset the stream.
    let err = e2e::h2::get(
        stack.envoy.port,
        "/api/users/me",
        &[("authorization", &bearer(&"a".repeat(62_000)))],
    )
    .expect_err("a stream reset");
    assert!(
        err.contains("Reset(StreamId(1), INTERNAL_ERROR, Remote)"),
        "{err}"
    );

    assert_eq!(stack.metric("denied.malformed"), filtered);
    assert_eq!(stack.auth.introspections(&token), 0);
    assert_eq!(introspections(&stack), 0);
    assert_eq!(stack.upstream_requests(), 0);
    // The VM took all of that: the token itself still works, over both protocols.
    for protocol in [Protocol::H1, Protocol::H2] {
        let r = send(&stack, protocol, &[bearer(&token)]);
        assert_eq!(r.status, 200, "{protocol:?}: {}", r.text());
    }
}

/// The token the server received last for `token`: exactly `token`, decoded from the form.
fn assert_received(stack: &Stack, token: &str, minted: bool, what: &str) {
    let last = stack
        .auth
        .admin("/_mock/last-request", json!({ "token": token }));
    assert_eq!(last["form"]["token"], token, "{what}: {last}");
    assert_eq!(last["token_bytes_equal"], minted, "{what}: {last}");
    assert_eq!(last["authenticated"], true, "{what}: {last}");
}

#[test]
fn valid_tokens_reach_the_server_byte_for_byte_over_http1_and_http2() {
    let stack = Stack::start("hostile-valid");
    for protocol in [Protocol::H1, Protocol::H2] {
        // Unique per run and protocol; every character of RFC 6750's b64token.
        let p = fresh_secret(&format!("{protocol:?}"));
        let tokens = [
            format!("{p}+b/c="),
            format!("../{p}/../admin"),
            format!("{p}~x_y-z.w=="),
            format!("{p}{}", "A".repeat(4096 - p.len())),
        ];
        let mut forms = vec!["Bearer {}", "bearer {}", "BEARER {}", "bEaReR   {}"];
        if protocol == Protocol::H1 {
            // HTTP/1.1 trims the value: this is `Bearer <token>` by the time the filter reads it.
            forms.push(" \tBearer {} \t");
        }
        for token in &tokens {
            let minted = stack.mint(json!({ "sub": SUB, "token": token }));
            assert_eq!(&minted, token);
            for (n, form) in forms.iter().enumerate() {
                let what = format!("{protocol:?} {form:?} with a {}-byte token", token.len());
                let value = form.replace("{}", token).into_bytes();
                let r = send(&stack, protocol, &[value]);
                assert_eq!(r.status, 200, "{what}: {}", r.text());
                assert_eq!(r.json()["sub"], SUB, "{what}");
                assert_eq!(stack.auth.introspections(token), n as u64 + 1, "{what}");
                assert_received(&stack, token, true, &what);
            }
        }
        // Syntactically valid but unknown: it is asked about, exactly, and is invalid.
        let unknown = format!("{p}/../x==");
        stack.secret(&unknown);
        let r = send(&stack, protocol, &[bearer(&unknown)]);
        assert_denied(&r, 401, Some(e2e::INVALID_TOKEN));
        assert_eq!(stack.auth.introspections(&unknown), 1);
        assert_received(&stack, &unknown, false, &format!("{protocol:?} unknown"));
    }
}

/// What Envoy changes before any filter reads the value, written down so that a change in
/// Envoy shows: its HTTP/1.1 codec drops a bare CR inside a value (`ab\rcd` is the token
/// `abcd`), and its header map drops an empty `Authorization` field beside a real one, over both
/// protocols (the filter sees one field, so the request passes: there is one credential).
#[test]
fn envoy_normalises_some_values_before_the_filter_reads_them() {
    let stack = Stack::start("hostile-normalised");
    let p = fresh_secret("cr");
    let joined = format!("{p}abcd");
    stack.mint(json!({ "sub": SUB, "token": joined }));
    let value = [bearer(&format!("{p}ab")), b"\rcd".to_vec()].concat();
    let r = send(&stack, Protocol::H1, &[value]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stack.auth.introspections(&joined), 1);
    assert_received(&stack, &joined, true, "CR dropped");

    let token = stack.user_token(SUB);
    let mut seen = 0;
    for protocol in [Protocol::H1, Protocol::H2] {
        for values in [
            vec![bearer(&token), Vec::new()],
            vec![Vec::new(), bearer(&token)],
        ] {
            let r = send(&stack, protocol, &values);
            assert_eq!(r.status, 200, "{protocol:?} {values:?}: {}", r.text());
            seen += 1;
            assert_eq!(stack.auth.introspections(&token), seen);
            assert_received(&stack, &token, true, "empty field dropped");
        }
    }
}

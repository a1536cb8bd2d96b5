//! The gate's state machines under concurrency, faults and clocks, with the mock host.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::rc::Rc;
use std::time::Duration;

use introspection_core::gate::{Effects, Gate, StartError, Step, Trailers, Verdict};
use introspection_core::jwt::NativeFailure;
use introspection_core::mock::{ForeignFunction, MockAnswer, MockHost};
use introspection_core::selftest::SelfTestFailure;
use introspection_core::Config;
use jwt_compact::alg::Es256;
use jwt_compact::{AlgorithmExt, Claims, Header};
use serde_json::{json, Value};

const NOW: i64 = 1_790_000_000;
const ISS: &str = "https://as.example/api/v2";
const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";
const JWT: &str = "application/token-introspection+jwt";

fn config(extra: Value) -> Config {
    let mut v = json!({"cluster": "as", "authority": "as.example", "client_id": "sr",
        "client_secret": "secret"});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    Config::from_json(v.to_string().as_bytes()).unwrap()
}

fn active(sub: &str) -> String {
    json!({"active": true, "sub": sub, "exp": NOW + 600, "token_type": "Bearer",
        "scope": "openid"})
    .to_string()
}

/// A gate and its mock host, with shorthands for what Envoy would call.
struct Vm {
    gate: Gate,
    host: MockHost,
}

impl Vm {
    fn new(config: Config) -> Vm {
        Vm::on(config, MockHost::at(NOW))
    }

    /// A VM started on this host.
    fn on(config: Config, mut host: MockHost) -> Vm {
        let mut gate = Gate::new(config);
        gate.start(&mut host).unwrap();
        Vm { gate, host }
    }

    fn plain() -> Vm {
        Vm::new(config(json!({})))
    }

    fn uncached() -> Vm {
        Vm::new(config(json!({"cache": {"max_entries": 0}})))
    }

    /// Request `id` arrives with this bearer token.
    fn request(&mut self, id: u32, token: &str) -> Step {
        self.host.bearer(token);
        self.gate.on_request_headers(id, &mut self.host)
    }

    fn request_with(&mut self, id: u32, headers: &[(&str, &[u8])]) -> Step {
        self.host.request_with(headers);
        self.gate.on_request_headers(id, &mut self.host)
    }

    /// The callout with this token answers.
    fn answer(&mut self, token: u32, answer: MockAnswer) -> Effects {
        let (headers, body) = (answer.headers.len(), answer.body.len());
        self.host.answer = answer;
        self.gate
            .on_callout_response(token, headers, body, &mut self.host)
    }

    /// The callout with this token got no answer (reset, refused).
    fn fail(&mut self, token: u32) -> Effects {
        self.gate.on_callout_response(token, 0, 0, &mut self.host)
    }

    fn last_token(&self) -> u32 {
        self.host.last().unwrap().token
    }

    fn tick(&mut self) -> Effects {
        self.gate.on_tick(&mut self.host)
    }

    fn done(&mut self, id: u32) {
        self.gate.on_done(id, &mut self.host);
    }
}

fn allowed_sub(verdict: &Verdict) -> Option<&str> {
    match verdict {
        Verdict::Allow { set, .. } => set
            .iter()
            .find(|(n, _)| n == "x-user-sub")
            .map(|(_, v)| v.as_str()),
        Verdict::Deny(_) => None,
    }
}

fn details(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Deny(reply) => &reply.details,
        Verdict::Allow { .. } => "allowed",
    }
}

fn status(step: &Step) -> u32 {
    match step {
        Step::Verdict(Verdict::Deny(reply)) => reply.status,
        Step::Verdict(Verdict::Allow { .. }) => 200,
        Step::Pause => 0,
    }
}

/// The user a step lets through, if it is an allow (`None` for a pause or a denial).
fn step_sub(step: &Step) -> Option<&str> {
    match step {
        Step::Verdict(v) => allowed_sub(v),
        Step::Pause => None,
    }
}

fn step_details(step: &Step) -> &str {
    match step {
        Step::Verdict(v) => details(v),
        Step::Pause => "paused",
    }
}

// ---- Single flight ------------------------------------------------------------------------

#[test]
fn fifty_requests_for_one_token_share_one_callout_and_each_gets_its_own_verdict() {
    let mut vm = Vm::uncached();
    for id in 1..=50 {
        assert_eq!(vm.request(id, "tok-shared"), Step::Pause);
    }
    assert_eq!(vm.host.dispatched.len(), 1);
    assert_eq!(vm.host.counter("introspection.callout.coalesced"), 49);
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    let ids: Vec<u32> = effects.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
    assert!(effects.iter().all(|(_, v)| allowed_sub(v) == Some(SUB)));
    assert_eq!(vm.host.counter("introspection.allowed"), 50);
    assert_eq!(vm.gate.paused(), 0);
}

#[test]
fn every_waiter_has_every_spelling_of_the_identity_headers_removed() {
    let mut vm = Vm::uncached();
    vm.request(1, "tok");
    vm.request_with(
        2,
        &[("authorization", b"Bearer tok"), ("x_user_sub", b"mallory")],
    );
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    // By name, present or not (no header map read); `x-user-sub` itself is set, which
    // replaces any value it had.
    let expected: Vec<Rc<str>> = ["x_user-sub", "x-user_sub", "x_user_sub", "authorization"]
        .into_iter()
        .map(Rc::from)
        .collect();
    for (_, verdict) in &effects {
        match verdict {
            Verdict::Allow { remove, .. } => assert_eq!(remove, &expected),
            Verdict::Deny(_) => panic!("denied"),
        }
        assert_eq!(allowed_sub(verdict), Some(SUB));
    }
    assert_eq!(effects.len(), 2);
    assert_eq!(vm.host.map_reads.get(), 0);
}

#[test]
fn many_spellings_read_the_header_map_and_remove_those_present() {
    // x-user-sub (4 spellings) + x-token-client-id (8): more than STRIP_BY_NAME_MAX.
    let mut vm = Vm::new(config(
        json!({"claim_headers": {"client_id": "x-token-client-id"}}),
    ));
    vm.host.request_with(&[
        ("authorization", b"Bearer tok"),
        ("x_token-client_id", b"forged"),
        ("x-user-sub", b"mallory"),
    ]);
    vm.gate.on_request_headers(1, &mut vm.host);
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    let expected: Vec<Rc<str>> = ["x_token-client_id", "authorization"]
        .into_iter()
        .map(Rc::from)
        .collect();
    assert_eq!(
        effects[0].1,
        Verdict::Allow {
            remove: expected,
            set: vec![("x-user-sub".into(), SUB.into())]
        }
    );
    assert_eq!(vm.host.map_reads.get(), 1);
}

#[test]
fn a_hit_reads_authorization_alone_and_needs_no_shared_read_once_in_the_vm() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    let shared_before = vm.host.shared.clone();
    vm.host.shared.clear(); // a hit from the VM's own memory never reads shared data
    vm.host.header_reads.set(0);
    assert_eq!(step_sub(&vm.request(2, "tok")), Some(SUB));
    assert_eq!(vm.host.map_reads.get(), 0);
    assert_eq!(vm.host.header_reads.get(), 1, "authorization only");
    assert_eq!(vm.host.counter("introspection.cache.hit"), 1);
    // Another token is not served from it, even one that shares a prefix.
    vm.host.shared = shared_before;
    assert_eq!(vm.request(3, "to"), Step::Pause);
    assert_eq!(vm.request(4, "tok2"), Step::Pause);
}

#[test]
fn another_worker_finds_the_answer_in_shared_data() {
    let mut first = Vm::plain();
    first.request(1, "tok");
    first.answer(first.last_token(), MockAnswer::json(&active(SUB)));
    // A second VM (another worker) with the same shared data: a hit without a callout.
    let mut second = Vm::plain();
    second.host.shared = first.host.shared.clone();
    assert_eq!(step_sub(&second.request(1, "tok")), Some(SUB));
    assert!(second.host.dispatched.is_empty());
    // Then from its own memory.
    second.host.shared.clear();
    assert!(matches!(
        second.request(2, "tok"),
        Step::Verdict(Verdict::Allow { .. })
    ));
}

/// Two workers ask about one token at about the same time and it is revoked in between: the
/// later, inactive answer takes the shared slot from the earlier active one (found by review:
/// it was dropped, and a third worker let the revoked token through until `max_ttl`).
#[test]
fn a_revocation_seen_by_one_worker_reaches_the_others_through_shared_data() {
    let cfg = || config(json!({"cache": {"max_ttl_secs": 60, "inactive_ttl_secs": 10}}));
    let (mut w1, mut w2) = (Vm::new(cfg()), Vm::new(cfg()));
    w1.request(1, "tok");
    w2.request(1, "tok");
    let effects = w1.answer(w1.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    w2.host.shared = w1.host.shared.clone();
    w2.host.advance(1);
    let effects = w2.answer(w2.last_token(), MockAnswer::json(r#"{"active":false}"#));
    assert_eq!(
        details(&effects[0].1),
        "introspection_invalid_token_inactive"
    );
    // A third worker reads the slot: the revocation, then (after its 10 s) a miss.
    let mut w3 = Vm::new(cfg());
    w3.host.shared = w2.host.shared.clone();
    w3.host.advance(5);
    assert_eq!(
        step_details(&w3.request(1, "tok")),
        "introspection_invalid_token_inactive"
    );
    let mut w4 = Vm::new(cfg());
    w4.host.shared = w2.host.shared.clone();
    w4.host.advance(20);
    assert_eq!(w4.request(1, "tok"), Step::Pause, "asked again");
    // An active answer arriving after the revocation (asked before it) does not bring the
    // token back for the others.
    let mut w5 = Vm::new(cfg());
    w5.request(1, "tok");
    w5.host.shared = w2.host.shared.clone();
    w5.host.advance(2);
    w5.answer(w5.last_token(), MockAnswer::json(&active(SUB)));
    let mut w6 = Vm::new(cfg());
    w6.host.shared = w5.host.shared.clone();
    w6.host.advance(3);
    assert_eq!(
        step_details(&w6.request(1, "tok")),
        "introspection_invalid_token_inactive"
    );
    // Nor for the worker that got it (found by review: its own front kept the active answer).
    w5.host.advance(1);
    assert_eq!(
        step_details(&w5.request(2, "tok")),
        "introspection_invalid_token_inactive"
    );
}

#[test]
fn a_request_that_may_wait_reads_its_request_id_for_the_log() {
    let mut vm = Vm::plain();
    vm.host.dispatch_fails = true;
    vm.request_with(
        1,
        &[
            ("authorization", b"Bearer tok"),
            ("x-request-id", b"req-42"),
        ],
    );
    // Authorization, then x-request-id (the 503 is logged with it).
    assert_eq!(vm.host.header_reads.get(), 2);
}

#[test]
fn a_sender_that_goes_away_has_the_vm_send_the_introspection_again_for_the_waiters() {
    let mut vm = Vm::plain();
    for id in 1..=4 {
        vm.request(id, "tok");
    }
    let first = vm.last_token();
    vm.done(1); // the client of the request that sent the callout disconnects
    assert_eq!(
        vm.host.ticks.last(),
        Some(&Duration::from_millis(1)),
        "asks for an early tick"
    );
    assert!(vm.tick().is_empty());
    assert_eq!(vm.host.dispatched.len(), 2, "sent again, by the VM");
    // The cancelled callout's answer, should it still come, is ignored.
    assert!(vm.fail(first).is_empty());
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    let ids: Vec<u32> = effects.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![2, 3, 4]);
    assert!(effects.iter().all(|(_, v)| allowed_sub(v) == Some(SUB)));
    // And the next request is served from the cache.
    assert_eq!(status(&vm.request(5, "tok")), 200);
    assert_eq!(vm.host.dispatched.len(), 2);
}

#[test]
fn a_sender_that_goes_away_alone_leaves_no_flight_behind() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    vm.done(1);
    vm.tick();
    assert_eq!(
        vm.host.dispatched.len(),
        1,
        "nobody waits: nothing sent again"
    );
    assert_eq!(vm.request(2, "tok"), Step::Pause);
    assert_eq!(
        vm.host.dispatched.len(),
        2,
        "a new request starts a new flight"
    );
}

#[test]
fn a_waiter_that_goes_away_gets_no_verdict() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    vm.request(2, "tok");
    vm.done(2);
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].0, 1);
}

#[test]
fn when_the_vm_cannot_send_again_the_waiters_get_503() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    vm.request(2, "tok");
    vm.done(1);
    vm.host.dispatch_fails = true;
    let effects = vm.tick();
    assert_eq!(effects.len(), 1);
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_dispatch_failed"
    );
}

#[test]
fn request_bodies_flow_only_after_an_allow() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    assert!(!vm.gate.is_allowed(1));
    vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    assert!(vm.gate.is_allowed(1));
    vm.done(1);
    assert!(!vm.gate.is_allowed(1));
    vm.host.bearer("other");
    vm.request(2, "other");
    vm.answer(vm.last_token(), MockAnswer::json(r#"{"active":false}"#));
    assert!(!vm.gate.is_allowed(2));
}

// ---- Cache ---------------------------------------------------------------------------------

#[test]
fn a_cas_mismatch_is_retried_once_and_the_entry_stored() {
    let mut vm = Vm::plain();
    vm.host.cas_mismatches = 1;
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    assert_eq!(vm.host.shared_writes, 2);
    assert_eq!(vm.host.counter("introspection.cache.store"), 1);
}

#[test]
fn two_cas_mismatches_give_up_storing_but_still_allow() {
    let mut vm = Vm::plain();
    vm.host.cas_mismatches = 2;
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    assert_eq!(vm.host.shared_writes, 2);
    assert_eq!(vm.host.counter("introspection.cache.store"), 0);
}

#[test]
fn another_worker_reads_the_entry_from_shared_data() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    // A second VM of the same proxy: its own memory, the same shared data.
    let mut other = Vm::plain();
    other.host.shared = vm.host.shared.clone();
    assert_eq!(status(&other.request(7, "tok")), 200);
    assert!(other.host.dispatched.is_empty());
    assert_eq!(other.host.counter("introspection.cache.hit"), 1);
}

#[test]
fn an_entry_is_not_served_past_its_expiry() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    vm.host.advance(60); // max_ttl
    assert_eq!(vm.request(2, "tok"), Step::Pause);
    assert_eq!(vm.host.dispatched.len(), 2);
}

#[test]
fn definite_refusals_are_cached() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), MockAnswer::json(r#"{"active":false}"#));
    assert_eq!(
        details(&effects[0].1),
        "introspection_invalid_token_inactive"
    );
    assert_eq!(status(&vm.request(2, "tok")), 401);
    assert_eq!(vm.host.dispatched.len(), 1);
}

fn assert_fault_not_cached(answer: MockAnswer, expected: &str) {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), answer);
    assert_eq!(details(&effects[0].1), expected);
    assert_eq!(
        vm.request(2, "tok"),
        Step::Pause,
        "{expected}: a new callout"
    );
    assert_eq!(vm.host.dispatched.len(), 2);
    assert_eq!(vm.host.counter("introspection.cache.store"), 0);
    // The server corrects its answer: the next request is allowed.
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
}

#[test]
fn an_answer_with_a_crlf_in_sub_is_a_fault_and_never_cached() {
    let body = json!({"active": true, "sub": "abc\r\nx-admin: 1", "exp": NOW + 600,
        "token_type": "Bearer"});
    assert_fault_not_cached(
        MockAnswer::json(&body.to_string()),
        "introspection_unavailable_bad_claim",
    );
}

#[test]
fn an_answer_with_a_non_numeric_nbf_is_a_fault_and_never_cached() {
    let body = json!({"active": true, "sub": SUB, "exp": NOW + 600, "nbf": "soon",
        "token_type": "Bearer"});
    assert_fault_not_cached(
        MockAnswer::json(&body.to_string()),
        "introspection_unavailable_bad_nbf",
    );
}

#[test]
fn a_whitespace_padded_sub_is_a_fault_and_never_cached() {
    let body = json!({"active": true, "sub": format!(" {SUB} "), "exp": NOW + 600,
        "token_type": "Bearer"});
    assert_fault_not_cached(
        MockAnswer::json(&body.to_string()),
        "introspection_unavailable_bad_claim",
    );
}

#[test]
fn a_server_error_is_never_cached() {
    assert_fault_not_cached(
        MockAnswer::new(500, "application/json", r#"{"error":"server_error"}"#),
        "introspection_unavailable_status_5xx",
    );
}

#[test]
fn a_body_that_is_not_json_is_never_cached() {
    assert_fault_not_cached(
        MockAnswer::json("<html>"),
        "introspection_unavailable_not_json",
    );
}

// ---- Faults --------------------------------------------------------------------------------

#[test]
fn a_callout_with_no_answer_is_callout_failed() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    let effects = vm.fail(vm.last_token());
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_callout_failed"
    );
    assert_eq!(vm.host.counter("introspection.callout.failed"), 1);
    assert_eq!(vm.host.counter("introspection.denied.unavailable"), 1);
    assert_eq!(
        vm.host
            .counter("introspection.denied.unavailable.callout_failed"),
        1
    );
}

#[test]
fn envoys_504_after_the_timeout_is_a_timeout() {
    let mut vm = Vm::plain(); // timeout: 5 s by default
    vm.request(1, "tok");
    vm.host.advance(6);
    let effects = vm.answer(
        vm.last_token(),
        MockAnswer::new(504, "text/plain", "upstream request timeout"),
    );
    assert_eq!(details(&effects[0].1), "introspection_unavailable_timeout");
    assert_eq!(
        vm.host.histograms["introspection.callout.latency_ms"],
        vec![6000]
    );
}

#[test]
fn envoys_timeout_reply_is_a_timeout_even_a_little_early_by_the_filters_clock() {
    // Envoy starts its timer before the filter reads its clock: the 504 may come a few
    // milliseconds before `timeout_ms` by the filter's count.
    let mut vm = Vm::new(config(json!({"timeout_ms": 500})));
    vm.request(1, "tok");
    vm.host.nanos = 498_000_000;
    let effects = vm.answer(
        vm.last_token(),
        MockAnswer::new(504, "text/plain", "upstream request timeout"),
    );
    assert_eq!(details(&effects[0].1), "introspection_unavailable_timeout");
    vm.request(2, "tok");
    vm.host.nanos += 460_000_000; // 92 % of the timeout, another body
    let effects = vm.answer(vm.last_token(), MockAnswer::new(504, "text/plain", "x"));
    assert_eq!(details(&effects[0].1), "introspection_unavailable_timeout");
}

#[test]
fn a_quick_504_from_the_server_is_a_status_fault() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), MockAnswer::new(504, "text/plain", ""));
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_status_5xx"
    );
}

#[test]
fn an_oversized_answer_is_refused_unread() {
    let mut vm = Vm::new(config(json!({"max_response_bytes": 1024})));
    vm.request(1, "tok");
    let big = format!(r#"{{"active":true,"sub":"{}"}}"#, "a".repeat(2000));
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&big));
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_too_large"
    );
}

#[test]
fn a_refused_dispatch_is_503_at_once() {
    let mut vm = Vm::plain();
    vm.host.dispatch_fails = true;
    let step = vm.request(1, "tok");
    assert_eq!(status(&step), 503);
    assert_eq!(
        step_details(&step),
        "introspection_unavailable_dispatch_failed"
    );
}

#[test]
fn a_clock_failure_refuses_with_503_and_never_calls_out() {
    let mut vm = Vm::plain();
    vm.host.now = None;
    let step = vm.request(1, "tok");
    assert_eq!(status(&step), 503);
    assert_eq!(step_details(&step), "introspection_unavailable_clock");
    assert!(vm.host.dispatched.is_empty());
}

#[test]
fn a_clock_failure_when_the_answer_comes_refuses_every_waiter() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    vm.request(2, "tok");
    vm.host.now = None;
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(effects.len(), 2);
    assert!(effects
        .iter()
        .all(|(_, v)| details(v) == "introspection_unavailable_clock"));
    assert_eq!(vm.host.counter("introspection.cache.store"), 0);
}

#[test]
fn unreadable_request_headers_are_a_host_fault() {
    let mut vm = Vm::plain();
    vm.host.request_headers_fail = true;
    let step = vm.request(1, "tok");
    assert_eq!(step_details(&step), "introspection_unavailable_host_error");
}

#[test]
fn the_answer_of_an_unknown_callout_is_ignored() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    assert!(vm
        .answer(9999, MockAnswer::json(&active("mallory")))
        .is_empty());
    assert_eq!(vm.gate.paused(), 1);
}

#[test]
fn an_unregistered_error_code_is_not_repeated() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    let effects = vm.answer(
        vm.last_token(),
        MockAnswer::new(400, "application/json", r#"{"error":"tok"}"#),
    );
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_status_4xx"
    );
}

// ---- Requests refused before any callout ---------------------------------------------------

#[test]
fn a_request_without_authorization_is_401_without_a_callout() {
    let mut vm = Vm::plain();
    let step = vm.request_with(1, &[(":path", b"/")]);
    assert_eq!(status(&step), 401);
    assert_eq!(step_details(&step), "introspection_missing");
    assert!(vm.host.dispatched.is_empty());
}

#[test]
fn a_malformed_authorization_is_400_without_a_callout() {
    let mut vm = Vm::plain();
    let step = vm.request_with(
        1,
        &[
            ("authorization", b"Bearer a"),
            ("authorization", b"Bearer b"),
        ],
    );
    // The hit path reads `Authorization` alone, and gets the fields joined with `,` (as
    // Envoy hands them over): not a b64token, still a 400.
    assert_eq!(status(&step), 400);
    assert_eq!(step_details(&step), "introspection_malformed_not_b64token");
    assert_eq!(vm.host.map_reads.get(), 0);
    let step = vm.request_with(2, &[("authorization", b"Basic dXNlcjpwYXNz")]);
    assert_eq!(step_details(&step), "introspection_malformed_not_bearer");
    assert!(vm.host.dispatched.is_empty());

    // A configuration that reads the whole header map sees both fields.
    let mut vm = Vm::new(config(
        json!({"claim_headers": {"client_id": "x-token-client-id"}}),
    ));
    let step = vm.request_with(
        1,
        &[
            ("authorization", b"Bearer a"),
            ("authorization", b"Bearer b"),
        ],
    );
    assert_eq!(status(&step), 400);
    assert_eq!(
        step_details(&step),
        "introspection_malformed_several_headers"
    );
    assert!(vm.host.dispatched.is_empty());
}

#[test]
fn the_callout_carries_the_token_and_the_client_credentials() {
    let mut vm = Vm::plain();
    vm.request(1, "a+b/c=");
    let sent = vm.host.last().unwrap();
    assert_eq!(sent.cluster, "as");
    assert_eq!(sent.path(), "/api/v2/token/introspection");
    assert_eq!(
        String::from_utf8(sent.body.clone()).unwrap(),
        "token=a%2Bb%2Fc%3D&client_id=sr&client_secret=secret"
    );
}

// ---- Discovery -----------------------------------------------------------------------------

fn discovery_doc() -> String {
    json!({"issuer": ISS,
        "introspection_endpoint": "https://as.example/api/v2/token/introspect2",
        "jwks_uri": "https://as.example/api/v2/jwks"})
    .to_string()
}

#[test]
fn requests_before_discovery_get_503_not_configured() {
    let mut vm = Vm::new(config(
        json!({"discovery_path": "/.well-known/openid-configuration"}),
    ));
    assert_eq!(vm.host.sent_to("/.well-known/openid-configuration"), 1);
    let step = vm.request(1, "tok");
    assert_eq!(
        step_details(&step),
        "introspection_unavailable_not_configured"
    );
}

#[test]
fn discovery_is_retried_after_a_failure_then_used() {
    let mut vm = Vm::new(config(
        json!({"discovery_path": "/.well-known/openid-configuration"}),
    ));
    let first = vm.last_token();
    vm.answer(first, MockAnswer::new(500, "text/plain", "down"));
    vm.host.advance(4);
    vm.tick();
    assert_eq!(vm.host.sent_to("/.well-known/openid-configuration"), 1);
    vm.host.advance(1);
    vm.tick();
    assert_eq!(vm.host.sent_to("/.well-known/openid-configuration"), 2);
    vm.answer(vm.last_token(), MockAnswer::json(&discovery_doc()));
    vm.request(1, "tok");
    assert_eq!(vm.host.last().unwrap().path(), "/api/v2/token/introspect2");
    // Discovery is not fetched again once loaded.
    vm.host.advance(3600);
    vm.tick();
    assert_eq!(vm.host.sent_to("/.well-known/openid-configuration"), 2);
}

// ---- Signed answers and the JWKS -----------------------------------------------------------

fn fixture_keys() -> Value {
    serde_json::from_str(include_str!("fixtures/ec-keys.json")).unwrap()
}

/// The public JWKS with the keys of these ids.
fn jwks(kids: &[&str]) -> String {
    let keys: Vec<Value> = fixture_keys()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .map(|k| {
            let mut k = k.clone();
            k.as_object_mut().unwrap().remove("d");
            k
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// An RFC 9701 answer for `sub`, signed with the fixture key `kid`.
fn signed(kid: &str, sub: &str) -> MockAnswer {
    let all = fixture_keys();
    let jwk = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": jwk["x"], "y": jwk["y"], "d": jwk["d"]})
        .to_string();
    let key = p256::ecdsa::SigningKey::from(p256::SecretKey::from_jwk_str(&jwk).unwrap());
    let header = Header::empty()
        .with_key_id(kid)
        .with_token_type("token-introspection+jwt");
    let mut claims = Claims::new(json!({"iss": ISS, "aud": "sr",
        "token_introspection": serde_json::from_str::<Value>(&active(sub)).unwrap()}));
    claims.issued_at = chrono::DateTime::from_timestamp(NOW, 0);
    MockAnswer::new(200, JWT, Es256.token(&header, &claims, &key).unwrap())
}

/// A VM in ES256 mode that loaded a JWKS holding `ec-1`.
fn signed_vm() -> Vm {
    signed_vm_on(MockHost::at(NOW), json!({}))
}

/// The same on this host, with these settings added.
fn signed_vm_on(host: MockHost, extra: Value) -> Vm {
    let mut settings = json!({"signed_response_alg": "ES256", "issuer": ISS, "jwks_path": "/jwks"});
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    let mut vm = Vm::on(config(settings), host);
    assert_eq!(
        vm.host.sent_to("/jwks"),
        1,
        "the VM fetches the JWKS at start"
    );
    vm.answer(vm.last_token(), MockAnswer::json(&jwks(&["ec-1"])));
    assert_eq!(vm.host.counter("introspection.jwks.fetch_ok"), 1);
    vm
}

#[test]
fn a_signed_answer_with_a_known_key_is_allowed() {
    let mut vm = signed_vm();
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), signed("ec-1", SUB));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
}

#[test]
fn an_unknown_kid_has_the_vm_refetch_the_jwks_and_the_answer_judged_again() {
    let mut vm = signed_vm();
    vm.request(1, "tok");
    vm.request(2, "tok");
    assert!(
        vm.answer(vm.last_token(), signed("ec-2", SUB)).is_empty(),
        "parked"
    );
    assert_eq!(
        vm.host.sent_to("/jwks"),
        1,
        "the request does not fetch itself"
    );
    vm.tick();
    assert_eq!(vm.host.sent_to("/jwks"), 2, "the VM does");
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&jwks(&["ec-1", "ec-2"])));
    assert_eq!(effects.len(), 2);
    assert!(effects.iter().all(|(_, v)| allowed_sub(v) == Some(SUB)));
}

#[test]
fn a_client_gone_during_the_refetch_abandons_nothing_and_the_new_key_serves_the_next() {
    let mut vm = signed_vm();
    vm.request(1, "tok");
    vm.answer(vm.last_token(), signed("ec-2", SUB));
    vm.tick();
    vm.done(1); // the client resets while the JWKS is being fetched
    let jwks_token = vm.last_token();
    let effects = vm.answer(jwks_token, MockAnswer::json(&jwks(&["ec-1", "ec-2"])));
    assert!(effects.is_empty());
    assert_eq!(vm.host.counter("introspection.jwks.fetch_ok"), 2);
    // The next request signed with the new key passes, with no further JWKS fetch.
    vm.request(3, "tok-3");
    let effects = vm.answer(vm.last_token(), signed("ec-2", "u-3"));
    assert_eq!(allowed_sub(&effects[0].1), Some("u-3"));
    assert_eq!(vm.host.sent_to("/jwks"), 2);
}

#[test]
fn answers_meeting_an_unknown_kid_during_a_refetch_wait_for_it() {
    let mut vm = signed_vm();
    vm.request(1, "tok-a");
    let a = vm.last_token();
    vm.request(2, "tok-b");
    let b = vm.last_token();
    assert!(vm.answer(a, signed("ec-2", "u-a")).is_empty());
    vm.tick(); // the JWKS fetch leaves
    assert!(
        vm.answer(b, signed("ec-2", "u-b")).is_empty(),
        "waits, no 503"
    );
    vm.tick();
    assert_eq!(vm.host.sent_to("/jwks"), 2, "one fetch for both");
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&jwks(&["ec-1", "ec-2"])));
    let subs: Vec<_> = effects.iter().map(|(_, v)| allowed_sub(v)).collect();
    assert_eq!(subs.len(), 2);
    assert!(subs.contains(&Some("u-a")) && subs.contains(&Some("u-b")));
}

#[test]
fn a_kid_still_unknown_after_the_refetch_is_503() {
    let mut vm = signed_vm();
    vm.request(1, "tok");
    vm.answer(vm.last_token(), signed("ec-2", SUB));
    vm.tick();
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&jwks(&["ec-1"])));
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_jwt_unknown_kid"
    );
}

#[test]
fn a_failed_refetch_answers_the_waiting_requests_503() {
    let mut vm = signed_vm();
    vm.request(1, "tok");
    vm.answer(vm.last_token(), signed("ec-2", SUB));
    vm.tick();
    let effects = vm.fail(vm.last_token());
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_jwt_unknown_kid"
    );
    assert_eq!(vm.host.counter("introspection.jwks.fetch_failed"), 1);
}

/// Found by review: the JWKS fetch an answer waits for is never answered (the host breaking
/// its timeout promise); the answer waited for the refresh timer (600 s), not for the safety
/// net that declares the fetch lost.
#[test]
fn an_answer_waiting_for_a_lost_jwks_fetch_is_judged_when_the_fetch_is_given_up() {
    let mut vm = signed_vm();
    vm.request(1, "tok");
    assert!(vm.answer(vm.last_token(), signed("ec-2", SUB)).is_empty());
    vm.tick();
    assert_eq!(
        vm.host.sent_to("/jwks"),
        2,
        "the refetch left, and is never answered"
    );
    let mut waited = 0;
    let effects = loop {
        vm.host.advance(1);
        waited += 1;
        let effects = vm.tick();
        if !effects.is_empty() || waited > 60 {
            break effects;
        }
    };
    assert_eq!(waited, 15, "the schedule's safety net");
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_jwt_unknown_kid"
    );
    assert_eq!(vm.gate.paused(), 0);
}

/// Found by review: a wall clock stepping forward while the refetch was under way made it look
/// lost, and the waiting answer got a 503 although the fetch then brought its key.
#[test]
fn a_clock_step_during_a_refetch_does_not_give_up_on_it() {
    let mut vm = signed_vm();
    vm.request(1, "tok");
    assert!(vm.answer(vm.last_token(), signed("ec-2", SUB)).is_empty());
    vm.tick();
    let refetch = vm.last_token();
    vm.host.advance(20);
    assert!(vm.tick().is_empty(), "still waiting for the fetch");
    let effects = vm.answer(refetch, MockAnswer::json(&jwks(&["ec-1", "ec-2"])));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
}

#[test]
fn unknown_kid_refetches_are_rate_limited() {
    let mut vm = signed_vm();
    vm.request(1, "tok-1");
    vm.answer(vm.last_token(), signed("ec-2", SUB));
    vm.tick();
    vm.answer(vm.last_token(), MockAnswer::json(&jwks(&["ec-1"])));
    vm.host.advance(10); // within jwks_refetch_interval_secs (30)
    vm.request(2, "tok-2");
    let effects = vm.answer(vm.last_token(), signed("ec-2", SUB));
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_jwt_unknown_kid"
    );
    vm.tick();
    assert_eq!(vm.host.sent_to("/jwks"), 2);
}

#[test]
fn requests_before_any_jwks_wait_for_the_first_fetch() {
    let mut vm = Vm::new(config(
        json!({"signed_response_alg": "ES256", "issuer": ISS,
        "jwks_path": "/jwks"}),
    ));
    let jwks_token = vm.last_token();
    vm.request(1, "tok");
    assert!(vm.answer(vm.last_token(), signed("ec-1", SUB)).is_empty());
    let effects = vm.answer(jwks_token, MockAnswer::json(&jwks(&["ec-1"])));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    assert_eq!(vm.host.sent_to("/jwks"), 1);
}

#[test]
fn a_tampered_signature_is_503_jwt_signature() {
    let mut vm = signed_vm();
    vm.request(1, "tok");
    let mut answer = signed("ec-1", SUB);
    let last = answer.body.len() - 2;
    answer.body[last] = if answer.body[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let effects = vm.answer(vm.last_token(), answer);
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_jwt_signature"
    );
}

#[test]
fn the_jwks_is_refreshed_on_its_timer() {
    let mut vm = signed_vm();
    vm.host.advance(599);
    vm.tick();
    assert_eq!(vm.host.sent_to("/jwks"), 1);
    vm.host.advance(1);
    vm.tick();
    assert_eq!(vm.host.sent_to("/jwks"), 2);
}

#[test]
fn the_tick_returns_to_its_period_after_an_early_tick() {
    let mut vm = Vm::plain();
    let slow = Duration::from_secs(10);
    assert_eq!(
        vm.host.ticks,
        vec![slow],
        "plain mode ticks only for the log flood control"
    );
    vm.request(1, "tok");
    vm.request(2, "tok");
    vm.done(1);
    vm.tick();
    assert_eq!(vm.host.ticks, vec![slow, Duration::from_millis(1), slow]);
}

// ---- Trailers -------------------------------------------------------------------------------

#[test]
fn identity_fields_in_trailers_are_stripped_in_every_spelling_and_held_until_allowed() {
    let mut vm = Vm::plain();
    vm.request(1, "tok");
    vm.host.trailers = vec![
        (b"x-user-sub".to_vec(), b"mallory".to_vec()),
        (b"X_User_Sub".to_vec(), b"mallory".to_vec()),
        (b"grpc-status".to_vec(), b"0".to_vec()),
    ];
    let step = vm.gate.on_request_trailers(1, &mut vm.host);
    assert_eq!(
        step,
        Trailers::Strip {
            remove: vec!["x-user-sub".into(), "X_User_Sub".into()],
            hold: true
        }
    );
    vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    let step = vm.gate.on_request_trailers(1, &mut vm.host);
    assert!(matches!(step, Trailers::Strip { hold: false, .. }));
}

/// Found by review: an `Authorization` trailer reached the SR although the header is removed
/// (`forward_authorization: false`): a client could hand the SR a credential of its choosing.
#[test]
fn an_authorization_trailer_goes_unless_authorization_is_forwarded() {
    for (forward, removed) in [(false, true), (true, false)] {
        let mut vm = Vm::new(config(json!({"forward_authorization": forward})));
        vm.request(1, "tok");
        vm.host.trailers = vec![
            (b"Authorization".to_vec(), b"Bearer other".to_vec()),
            (b"grpc-status".to_vec(), b"0".to_vec()),
        ];
        let expected: Vec<String> = if removed {
            vec!["Authorization".into()]
        } else {
            vec![]
        };
        assert_eq!(
            vm.gate.on_request_trailers(1, &mut vm.host),
            Trailers::Strip {
                remove: expected,
                hold: true
            },
            "forward_authorization {forward}"
        );
    }
}

// ---- Log flood control ------------------------------------------------------------------------

#[test]
fn an_outage_is_counted_per_cause_and_every_request_still_answered() {
    let mut vm = Vm::plain();
    vm.host.dispatch_fails = true;
    for id in 1..=200 {
        let token = format!("tok-{id}");
        assert_eq!(
            step_details(&vm.request(id, &token)),
            "introspection_unavailable_dispatch_failed"
        );
    }
    assert_eq!(
        vm.host
            .counter("introspection.denied.unavailable.dispatch_failed"),
        200
    );
}

// ---- Per-route rules and bearer encodings -------------------------------------------------

fn ruled() -> Vm {
    Vm::new(config(json!({
        "required_scopes": ["openid"],
        "rules": [
            {"name": "health", "path_exact": "/healthz", "methods": ["GET"], "public": true},
            {"name": "public", "path_prefix": "/public/", "public": true},
            {"name": "admin", "path_prefix": "/api/admin/", "required_scopes": ["admin", "ops"],
             "scope_mode": "any_of", "client_ids": ["fs-admin"]},
            {"name": "by-route", "route_name": "reports", "required_scopes": ["reports"]}
        ]
    })))
}

fn request_at(vm: &mut Vm, id: u32, method: &str, path: &str, token: Option<&str>) -> Step {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", method.as_bytes()),
        (":path", path.as_bytes()),
        ("x-user-sub", b"mallory"),
    ];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_bytes()));
    }
    vm.request_with(id, &headers)
}

fn answer_with(sub: &str, scope: &str, client_id: &str) -> MockAnswer {
    MockAnswer::json(
        &json!({"active": true, "sub": sub, "exp": NOW + 600, "token_type": "Bearer",
            "scope": scope, "client_id": client_id})
        .to_string(),
    )
}

#[test]
fn a_public_rule_lets_the_request_through_without_a_token_and_strips_forged_identities() {
    let mut vm = ruled();
    let step = request_at(&mut vm, 1, "GET", "/healthz", None);
    assert_eq!(
        step,
        Step::Verdict(Verdict::Allow {
            remove: vec!["x-user-sub".into(), "authorization".into()],
            set: vec![]
        })
    );
    assert!(vm.gate.is_allowed(1), "its body may flow");
    assert!(vm.host.dispatched.is_empty());
    assert_eq!(vm.host.counter("introspection.public"), 1);
}

#[test]
fn a_public_rule_limited_to_get_does_not_open_post() {
    let mut vm = ruled();
    assert_eq!(
        step_details(&request_at(&mut vm, 1, "POST", "/healthz", None)),
        "introspection_missing"
    );
}

#[test]
fn path_tricks_do_not_turn_a_protected_route_public() {
    let mut vm = ruled();
    for (i, path) in [
        "/public/../api/users/me",
        "/public/%2e%2e/api",
        "/public%2F..%2Fapi",
        "/public//../api",
    ]
    .iter()
    .enumerate()
    {
        let step = request_at(&mut vm, i as u32 + 1, "GET", path, None);
        assert_eq!(
            step_details(&step),
            "introspection_malformed_path_not_normalised",
            "{path}"
        );
    }
    assert!(vm.host.dispatched.is_empty());
}

/// A path the upstream may read as a stricter rule's (found by review: these fell through to
/// the top-level policy, which only asks for `openid`) is refused before any introspection,
/// with or without a token, and whatever the token would have been granted.
#[test]
fn a_path_that_is_not_normalised_never_escapes_a_stricter_rule() {
    let mut vm = ruled();
    let mut id = 0;
    for path in [
        "/api/admin//users",
        "/api//admin/users",
        "/api/admin/./users",
        "/api/x/../admin/users",
        "/api/%61dmin/users",
        "/api/admin%2Fusers",
        "/api/admin;x=1/users",
    ] {
        for token in [None, Some("tok-user")] {
            id += 1;
            let step = request_at(&mut vm, id, "GET", path, token);
            let Step::Verdict(Verdict::Deny(reply)) = &step else {
                panic!("{path}: {step:?}")
            };
            assert_eq!(reply.status, 400, "{path}");
            assert_eq!(
                reply.details, "introspection_malformed_path_not_normalised",
                "{path}"
            );
            let challenge = &reply
                .headers
                .iter()
                .find(|(n, _)| *n == "www-authenticate")
                .unwrap()
                .1;
            assert!(
                challenge.contains("error=\"invalid_request\""),
                "{challenge}"
            );
        }
    }
    assert!(vm.host.dispatched.is_empty(), "nothing introspected");
    assert_eq!(vm.host.counter("introspection.denied.malformed"), id as u64);
    // The normal spelling of the same path gets the rule: the token is judged by it.
    request_at(&mut vm, 100, "GET", "/api/admin/users", Some("tok-user"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "openid", "fs-other"));
    assert_eq!(
        details(&effects[0].1),
        "introspection_invalid_token_client_not_accepted"
    );
    // A rule read by route name before any path rule decides alone: the path is not read.
    let mut vm = Vm::new(config(json!({"rules": [
        {"name": "by-route", "route_name": "reports", "required_scopes": ["reports"]},
        {"name": "admin", "path_prefix": "/api/admin/", "required_scopes": ["admin"]}
    ]})));
    vm.host.route_name = Some("reports".into());
    let step = request_at(&mut vm, 1, "GET", "/reports//x", None);
    assert_eq!(step_details(&step), "introspection_missing");
    vm.host.route_name = Some("other".into());
    let step = request_at(&mut vm, 2, "GET", "/reports//x", None);
    assert_eq!(
        step_details(&step),
        "introspection_malformed_path_not_normalised"
    );
}

#[test]
fn a_rule_with_its_own_scopes_any_of_and_clients() {
    let mut vm = ruled();
    request_at(&mut vm, 1, "GET", "/api/admin/users", Some("tok-ops"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "openid ops", "fs-admin"));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB), "any of admin, ops");

    request_at(&mut vm, 2, "GET", "/api/admin/users", Some("tok-other-fs"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "admin", "fs-other"));
    assert_eq!(
        details(&effects[0].1),
        "introspection_invalid_token_client_not_accepted"
    );

    request_at(&mut vm, 3, "GET", "/api/admin/users", Some("tok-no-scope"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "openid", "fs-admin"));
    let Verdict::Deny(reply) = &effects[0].1 else {
        panic!("allowed")
    };
    assert_eq!(reply.status, 403);
    let challenge = reply
        .headers
        .iter()
        .find(|(n, _)| *n == "www-authenticate")
        .unwrap();
    assert!(
        challenge.1.ends_with("scope=\"admin ops\""),
        "{}",
        challenge.1
    );
}

/// A worker's hits reuse the policy's last allow on a token only for the same rule: the same
/// token on a route with stricter requirements is judged afresh, every time.
#[test]
fn a_remembered_allow_serves_only_its_own_rule() {
    let mut vm = ruled();
    request_at(&mut vm, 1, "GET", "/api/users/me", Some("tok-user"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "openid", "fs"));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    for round in 0..3 {
        let id = 10 + round * 10;
        for offset in 0..2 {
            let step = request_at(
                &mut vm,
                id + offset,
                "GET",
                "/api/users/me",
                Some("tok-user"),
            );
            assert_eq!(step_sub(&step), Some(SUB), "round {round}");
        }
        let step = request_at(&mut vm, id + 2, "GET", "/api/admin/users", Some("tok-user"));
        assert_eq!(
            step_details(&step),
            "introspection_invalid_token_client_not_accepted"
        );
    }
    assert_eq!(vm.host.dispatched.len(), 1, "every later request was a hit");
    assert_eq!(vm.host.counter("introspection.cache.hit"), 9);
}

/// A token introspected again once its cached entry expired gets the new answer, not the allow
/// remembered for the old one: the entry is replaced whole.
#[test]
fn a_reintrospected_token_gets_its_new_answer_not_the_remembered_allow() {
    let mut vm = Vm::new(config(
        json!({"cache": {"max_ttl_secs": 10, "inactive_ttl_secs": 30}}),
    ));
    vm.request(1, "tok-again");
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    for id in 2..4 {
        assert_eq!(step_sub(&vm.request(id, "tok-again")), Some(SUB));
    }
    // Past the cache lifetime, well before the answer's `exp`: asked again, another user.
    vm.host.now = Some(NOW + 11);
    assert_eq!(vm.request(4, "tok-again"), Step::Pause);
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&active("someone-else")));
    assert_eq!(allowed_sub(&effects[0].1), Some("someone-else"));
    for id in 5..7 {
        assert_eq!(step_sub(&vm.request(id, "tok-again")), Some("someone-else"));
    }
    // Then revoked: the cached inactive answer is refused, whatever was remembered.
    vm.host.now = Some(NOW + 22);
    assert_eq!(vm.request(7, "tok-again"), Step::Pause);
    let effects = vm.answer(vm.last_token(), MockAnswer::json(r#"{"active":false}"#));
    assert_eq!(
        details(&effects[0].1),
        "introspection_invalid_token_inactive"
    );
    assert_eq!(
        step_details(&vm.request(8, "tok-again")),
        "introspection_invalid_token_inactive"
    );
    assert_eq!(vm.host.dispatched.len(), 3);
}

/// A remembered allow holds only while the time checks it passed still pass: a clock that steps
/// back before the answer's `nbf` gets the denial `evaluate` gives, then the allow again.
#[test]
fn a_remembered_allow_follows_the_clock_back_before_nbf() {
    let mut vm = Vm::plain();
    vm.request(1, "tok-nbf");
    let body = json!({"active": true, "sub": SUB, "exp": NOW + 600, "nbf": NOW + 5,
        "token_type": "Bearer"});
    let effects = vm.answer(vm.last_token(), MockAnswer::json(&body.to_string()));
    assert_eq!(
        details(&effects[0].1),
        "introspection_invalid_token_not_yet_valid"
    );
    vm.host.now = Some(NOW + 6);
    for id in 2..4 {
        assert_eq!(step_sub(&vm.request(id, "tok-nbf")), Some(SUB));
    }
    vm.host.now = Some(NOW + 2);
    assert_eq!(
        step_details(&vm.request(4, "tok-nbf")),
        "introspection_invalid_token_not_yet_valid"
    );
    vm.host.now = Some(NOW + 6);
    assert_eq!(step_sub(&vm.request(5, "tok-nbf")), Some(SUB));
    assert_eq!(vm.host.dispatched.len(), 1);
}

/// Found by review: entries carried only their expiry, so a clock stepped back (an NTP step)
/// after an answer was stored kept it alive for the step's length on top of `max_ttl`, in the
/// worker's memory and in shared data. Before its storing, an entry is a miss.
#[test]
fn a_clock_stepped_back_before_an_entry_was_stored_asks_again() {
    let cfg = || config(json!({"cache": {"max_ttl_secs": 60}}));
    let mut vm = Vm::new(cfg());
    vm.request(1, "tok");
    vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(step_sub(&vm.request(2, "tok")), Some(SUB), "a hit");
    vm.host.now = Some(NOW - 600);
    assert_eq!(vm.request(3, "tok"), Step::Pause, "the worker's own entry");
    let mut other = Vm::new(cfg());
    other.host.shared = vm.host.shared.clone();
    other.host.now = Some(NOW - 600);
    assert_eq!(other.request(1, "tok"), Step::Pause, "the shared entry");
    // The new answer, stored at the new time, serves as usual.
    other.answer(other.last_token(), MockAnswer::json(&active(SUB)));
    assert_eq!(step_sub(&other.request(2, "tok")), Some(SUB));
}

#[test]
fn unmatched_requests_get_the_top_level_requirements() {
    let mut vm = ruled();
    request_at(&mut vm, 1, "GET", "/api/users/me", Some("tok"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "email", "fs"));
    assert_eq!(details(&effects[0].1), "introspection_insufficient_scope");
}

#[test]
fn a_rule_on_the_route_name_applies_to_what_envoy_routed() {
    let mut vm = ruled();
    vm.host.route_name = Some("reports".into());
    request_at(&mut vm, 1, "GET", "/anything", Some("tok"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "openid", "fs"));
    assert_eq!(details(&effects[0].1), "introspection_insufficient_scope");
    vm.host.route_name = None;
    request_at(&mut vm, 2, "GET", "/anything", Some("tok"));
    assert_eq!(vm.host.dispatched.len(), 1, "served from the cache");
}

#[test]
fn waiters_on_one_token_each_get_their_own_routes_verdict() {
    let mut vm = ruled();
    request_at(&mut vm, 1, "GET", "/api/users/me", Some("tok"));
    request_at(&mut vm, 2, "GET", "/api/admin/x", Some("tok"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "openid", "fs"));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    assert_eq!(
        details(&effects[1].1),
        "introspection_invalid_token_client_not_accepted"
    );
}

#[test]
fn a_base64_bearer_is_introspected_and_cached_as_the_decoded_token() {
    use base64::Engine as _;
    let mut vm = Vm::new(config(json!({"bearer_encoding": "raw_or_base64"})));
    let encoded = base64::engine::general_purpose::STANDARD.encode("the-raw-token");
    vm.request(1, &encoded);
    let body = String::from_utf8(vm.host.last().unwrap().body.clone()).unwrap();
    assert!(body.starts_with("token=the-raw-token&"), "{body}");
    vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    // The raw form of the same token is a cache hit.
    assert_eq!(status(&vm.request(2, "the-raw-token")), 200);
    assert_eq!(vm.host.dispatched.len(), 1);
}

#[test]
fn a_bearer_that_is_not_base64_is_400_when_base64_is_required() {
    let mut vm = Vm::new(config(json!({"bearer_encoding": "base64"})));
    let step = vm.request(1, "not-base64-token");
    assert_eq!(step_details(&step), "introspection_malformed_not_base64");
    assert!(vm.host.dispatched.is_empty());
}

#[test]
fn a_late_answer_lives_max_ttl_from_when_it_was_asked_for() {
    let mut vm = Vm::plain(); // max_ttl 60 s
    vm.request(1, "tok");
    vm.host.advance(50); // the server took 50 s to answer
    vm.answer(vm.last_token(), MockAnswer::json(&active(SUB)));
    vm.host.advance(9);
    assert_eq!(
        status(&vm.request(2, "tok")),
        200,
        "59 s after the question"
    );
    vm.host.advance(1);
    assert_eq!(vm.request(3, "tok"), Step::Pause, "60 s after: asked again");
}

#[test]
fn a_client_ids_rule_accepts_its_client_from_the_cache_too() {
    let mut vm = ruled();
    request_at(&mut vm, 1, "GET", "/api/admin/x", Some("tok"));
    let effects = vm.answer(vm.last_token(), answer_with(SUB, "admin", "fs-admin"));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    let step = request_at(&mut vm, 2, "GET", "/api/admin/x", Some("tok"));
    assert_eq!(status(&step), 200, "{step:?}");
    assert_eq!(vm.host.dispatched.len(), 1, "a cache hit");
}

// ---- Who checks signatures: the proxy (`verify_signature`) or the module --------------------

#[path = "support/envoy_crypto.rs"]
mod envoy_crypto;

fn proxy(function: Option<ForeignFunction>) -> MockHost {
    let mut host = MockHost::at(NOW);
    host.foreign = function;
    host
}

/// `answer` with one character of its signature changed.
fn tampered(mut answer: MockAnswer) -> MockAnswer {
    let jws = String::from_utf8(answer.body).unwrap();
    let (signed_part, signature) = jws.rsplit_once('.').unwrap();
    let mut signature: Vec<char> = signature.chars().collect();
    let middle = signature.len() / 2;
    signature[middle] = if signature[middle] == 'A' { 'B' } else { 'A' };
    answer.body = format!("{signed_part}.{}", signature.iter().collect::<String>()).into_bytes();
    answer
}

#[test]
fn the_proxys_check_is_chosen_when_it_passes_the_known_answer_test_and_then_used() {
    let mut vm = signed_vm_on(proxy(Some(envoy_crypto::verify_signature)), json!({}));
    assert!(vm.gate.native_crypto());
    assert_eq!(
        vm.host.foreign_calls.get(),
        3,
        "one valid vector, two tampered copies"
    );
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), signed("ec-1", SUB));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    assert_eq!(
        vm.host.foreign_calls.get(),
        4,
        "the answer was checked by the proxy"
    );
    vm.request(2, "other");
    let effects = vm.answer(vm.last_token(), tampered(signed("ec-1", SUB)));
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_jwt_signature"
    );
}

#[test]
fn a_proxy_without_the_function_leaves_the_checks_in_the_module() {
    let mut vm = signed_vm_on(proxy(None), json!({}));
    assert!(!vm.gate.native_crypto());
    let calls = vm.host.foreign_calls.get();
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), signed("ec-1", SUB));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    vm.request(2, "other");
    let effects = vm.answer(vm.last_token(), tampered(signed("ec-1", SUB)));
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_jwt_signature"
    );
    assert_eq!(
        vm.host.foreign_calls.get(),
        calls,
        "the proxy is not asked again"
    );
}

#[test]
fn a_proxy_that_answers_wrongly_is_not_used() {
    for (function, name) in [
        (
            envoy_crypto::always_valid as ForeignFunction,
            "says yes to everything",
        ),
        (envoy_crypto::never_valid, "says no to everything"),
        (envoy_crypto::refusing, "refuses every argument"),
    ] {
        let mut vm = signed_vm_on(proxy(Some(function)), json!({}));
        assert!(!vm.gate.native_crypto(), "a proxy that {name}");
        vm.request(1, "tok");
        let effects = vm.answer(vm.last_token(), tampered(signed("ec-1", SUB)));
        assert_eq!(
            details(&effects[0].1),
            "introspection_unavailable_jwt_signature",
            "a proxy that {name}: the module refuses the forgery"
        );
    }
}

#[test]
fn signature_check_wasm_never_asks_the_proxy() {
    let mut vm = signed_vm_on(
        proxy(Some(envoy_crypto::verify_signature)),
        json!({"signature_check": "wasm"}),
    );
    assert!(!vm.gate.native_crypto());
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), signed("ec-1", SUB));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
    assert_eq!(vm.host.foreign_calls.get(), 0);
}

#[test]
fn signature_check_envoy_refuses_to_start_on_a_proxy_without_the_function() {
    let settings = json!({"signed_response_alg": "RS256", "issuer": ISS, "jwks_path": "/jwks",
        "signature_check": "envoy"});
    let mut host = proxy(None);
    let mut gate = Gate::new(config(settings.clone()));
    let err = gate.start(&mut host).unwrap_err();
    assert_eq!(
        err,
        StartError::NoNativeCrypto(SelfTestFailure::Unavailable(NativeFailure::Missing))
    );
    assert!(err.to_string().contains("signature_check"), "{err}");
    let mut host = proxy(Some(envoy_crypto::verify_signature));
    let mut gate = Gate::new(config(settings));
    gate.start(&mut host).unwrap();
    assert!(gate.native_crypto());
}

#[test]
fn a_proxy_that_fails_after_the_test_gives_503_never_cached_and_no_fallback() {
    let mut vm = signed_vm_on(proxy(Some(envoy_crypto::verify_signature)), json!({}));
    vm.host.foreign = Some(envoy_crypto::refusing);
    vm.request(1, "tok");
    let effects = vm.answer(vm.last_token(), signed("ec-1", SUB));
    assert_eq!(
        details(&effects[0].1),
        "introspection_unavailable_jwt_native_check"
    );
    assert_eq!(
        vm.host
            .counter("introspection.denied.unavailable.jwt_native_check"),
        1
    );
    vm.host.foreign = Some(envoy_crypto::verify_signature);
    assert_eq!(vm.request(2, "tok"), Step::Pause, "nothing was cached");
    let effects = vm.answer(vm.last_token(), signed("ec-1", SUB));
    assert_eq!(allowed_sub(&effects[0].1), Some(SUB));
}

//! Hostile answers from the authorization server, through the real parsers and the policy: each
//! is refused or handled, never a panic, never a pass it should not be. One test per case.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use introspection_core::decision::{self, Decision, Denial, Invalid};
use introspection_core::discovery::Endpoints;
use introspection_core::fault::{Fault, Unusable};
use introspection_core::jwt::Crypto;
use introspection_core::response::{self, Answer, AnswerError};
use introspection_core::Config;

const NOW: i64 = 1_790_000_000;
const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

fn config() -> Config {
    Config::from_json(
        br#"{"cluster":"as","authority":"as","client_id":"sr","client_secret":"s",
            "claim_headers":{"scope":"x-token-scope","groups":"x-user-groups"}}"#,
    )
    .unwrap()
}

/// What the filter makes of a 200 JSON answer with this body: a decision, or the fault.
fn judge(body: &str) -> Result<Decision, Fault> {
    let c = config();
    let endpoints = Endpoints {
        introspection_path: "/i".into(),
        issuer: None,
        jwks_path: None,
    };
    let answer = Answer {
        status: Some(b"200"),
        content_type: Some(b"application/json"),
        body: body.as_bytes(),
    };
    match response::verified_claims(&c, &endpoints, None, Crypto::Wasm, &answer, NOW) {
        Ok(claims) => Ok(decision::evaluate(
            &c.policy,
            &c.policy.requirements,
            &c.identity,
            &claims,
            NOW,
        )),
        Err(AnswerError::Fault(f)) => Err(f),
        Err(AnswerError::UnknownKey) => panic!("no keys in plain mode"),
    }
}

/// A ProConnect-like active answer with one member replaced (raw JSON text).
fn with(member: &str, raw_value: &str) -> String {
    let mut fields = vec![
        ("active", "true".to_string()),
        ("sub", format!("\"{SUB}\"")),
        ("exp", (NOW + 600).to_string()),
        ("token_type", "\"Bearer\"".to_string()),
        ("scope", "\"openid\"".to_string()),
    ];
    match fields.iter_mut().find(|(n, _)| *n == member) {
        Some(field) => field.1 = raw_value.to_string(),
        None => fields.push((member_static(member), raw_value.to_string())),
    }
    let inner: Vec<String> = fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| format!("\"{n}\":{v}"))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn member_static(name: &str) -> &'static str {
    Box::leak(name.to_string().into_boxed_str())
}

fn unavailable(fault: Fault) -> Result<Decision, Fault> {
    Ok(Decision::Deny(Denial::Unavailable(fault)))
}

fn invalid(why: Invalid) -> Result<Decision, Fault> {
    Ok(Decision::Deny(Denial::Invalid(why)))
}

fn allowed_sub(result: &Result<Decision, Fault>) -> Option<String> {
    match result {
        Ok(Decision::Allow(headers)) => headers
            .iter()
            .find(|(n, _)| n == "x-user-sub")
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

#[test]
fn the_reference_answer_is_allowed() {
    assert_eq!(
        allowed_sub(&judge(&with("scope", "\"openid\""))).as_deref(),
        Some(SUB)
    );
}

#[test]
fn active_as_a_string_is_unusable() {
    assert_eq!(
        judge(&with("active", "\"true\"")),
        unavailable(Fault::Unusable(Unusable::Active))
    );
}

#[test]
fn active_as_a_number_is_unusable() {
    assert_eq!(
        judge(&with("active", "1")),
        unavailable(Fault::Unusable(Unusable::Active))
    );
}

#[test]
fn active_missing_is_unusable() {
    assert_eq!(
        judge(&with("active", "")),
        unavailable(Fault::Unusable(Unusable::Active))
    );
}

#[test]
fn a_numeric_user_claim_names_no_user() {
    assert_eq!(judge(&with("sub", "42")), invalid(Invalid::NoUser));
}

#[test]
fn an_empty_user_claim_names_no_user() {
    assert_eq!(judge(&with("sub", "\"\"")), invalid(Invalid::NoUser));
}

#[test]
fn a_whitespace_padded_user_claim_is_unusable() {
    let padded = format!("\" {SUB} \"");
    assert_eq!(
        judge(&with("sub", &padded)),
        unavailable(Fault::Unusable(Unusable::Claim))
    );
    let tab = format!("\"{SUB}\\t\"");
    assert_eq!(
        judge(&with("sub", &tab)),
        unavailable(Fault::Unusable(Unusable::Claim))
    );
}

#[test]
fn a_user_claim_of_spaces_only_is_unusable() {
    assert_eq!(
        judge(&with("sub", "\"   \"")),
        unavailable(Fault::Unusable(Unusable::Claim))
    );
}

#[test]
fn a_user_claim_with_crlf_is_unusable() {
    let crlf = "\"alice\\r\\nx-admin: true\"";
    assert_eq!(
        judge(&with("sub", crlf)),
        unavailable(Fault::Unusable(Unusable::Claim))
    );
}

#[test]
fn a_user_claim_with_nul_is_unusable() {
    assert_eq!(
        judge(&with("sub", "\"alice\\u0000bob\"")),
        unavailable(Fault::Unusable(Unusable::Claim))
    );
}

#[test]
fn a_non_ascii_user_claim_is_unusable() {
    assert_eq!(
        judge(&with("sub", "\"al\u{0131}ce\"")),
        unavailable(Fault::Unusable(Unusable::Claim))
    );
}

#[test]
fn a_duplicated_active_is_ambiguous() {
    let body = format!(r#"{{"active":false,"sub":"{SUB}","token_type":"Bearer","active":true}}"#);
    assert_eq!(judge(&body), Err(Fault::Ambiguous));
}

#[test]
fn a_duplicated_user_claim_is_ambiguous() {
    let body = format!(r#"{{"active":true,"sub":"{SUB}","token_type":"Bearer","sub":"mallory"}}"#);
    assert_eq!(judge(&body), Err(Fault::Ambiguous));
}

#[test]
fn deep_nesting_is_not_json() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(judge(&with("groups", &deep)), Err(Fault::NotJson));
}

#[test]
fn a_huge_exp_is_allowed_like_any_future_exp() {
    let result = judge(&with("exp", "99999999999999"));
    assert_eq!(allowed_sub(&result).as_deref(), Some(SUB));
}

#[test]
fn a_float_exp_is_read_as_seconds() {
    let result = judge(&with("exp", &format!("{}.75", NOW + 10)));
    assert_eq!(allowed_sub(&result).as_deref(), Some(SUB));
    assert_eq!(
        judge(&with("exp", &format!("{}.5", NOW - 1))),
        invalid(Invalid::Expired)
    );
}

#[test]
fn a_negative_exp_is_expired() {
    assert_eq!(judge(&with("exp", "-5")), invalid(Invalid::Expired));
}

#[test]
fn a_string_exp_of_digits_is_read_and_any_other_string_is_unusable() {
    let digits = format!("\"{}\"", NOW + 60);
    assert_eq!(
        allowed_sub(&judge(&with("exp", &digits))).as_deref(),
        Some(SUB)
    );
    assert_eq!(
        judge(&with("exp", "\"soon\"")),
        unavailable(Fault::Unusable(Unusable::Expiry))
    );
    assert_eq!(
        judge(&with("exp", "\"-60\"")),
        unavailable(Fault::Unusable(Unusable::Expiry))
    );
}

#[test]
fn a_3000_digit_exp_is_refused_without_a_crash() {
    let digits = "9".repeat(3000);
    let result = judge(&with("exp", &digits));
    assert_eq!(
        result,
        Err(Fault::NotJson),
        "a number out of range is not JSON to serde_json"
    );
}

#[test]
fn unknown_members_are_ignored() {
    let result = judge(&with("x-admin", "{\"nested\":[1,2,{\"deep\":true}]}"));
    assert_eq!(allowed_sub(&result).as_deref(), Some(SUB));
}

#[test]
fn a_forwarded_claim_holding_an_object_is_unusable() {
    assert_eq!(
        judge(&with("groups", "{\"admin\":true}")),
        unavailable(Fault::Unusable(Unusable::Claim))
    );
}

#[test]
fn a_forwarded_claim_array_with_a_number_is_unusable() {
    assert_eq!(
        judge(&with("groups", "[\"a\",1]")),
        unavailable(Fault::Unusable(Unusable::Claim))
    );
}

#[test]
fn a_json_array_body_is_not_json_object() {
    assert_eq!(judge("[{\"active\":true}]"), Err(Fault::NotJson));
}

#[test]
fn a_truncated_body_is_not_json() {
    let full = with("scope", "\"openid\"");
    assert_eq!(judge(&full[..full.len() - 3]), Err(Fault::NotJson));
}

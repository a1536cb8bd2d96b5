//! From an introspection answer to a decision. Pure: time is an argument.

use serde_json::Value;

use crate::bearer::Malformed;
use crate::config::{Identity, Policy};
use crate::fault::{Fault, Unusable};
use crate::rules::Requirements;

pub use crate::claims::{unix_seconds, Claims};

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through with these (header, value) pairs set.
    Allow(Vec<(String, String)>),
    Deny(Denial),
}

/// Why a token is not (or no longer) a valid access token (401 `invalid_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Inactive,
    Expired,
    NotYetValid,
    NotBearer,
    NoTokenType,
    NoUser,
    /// The token was obtained by a service this route does not accept.
    ClientNotAccepted,
}

impl Invalid {
    /// Stable short code.
    pub fn code(self) -> &'static str {
        match self {
            Invalid::Inactive => "inactive",
            Invalid::Expired => "expired",
            Invalid::NotYetValid => "not_yet_valid",
            Invalid::NotBearer => "not_bearer",
            Invalid::NoTokenType => "no_token_type",
            Invalid::NoUser => "no_user",
            Invalid::ClientNotAccepted => "client_not_accepted",
        }
    }
}

/// Why a request is refused. Every variant holds fixed values only: a denial may be logged,
/// counted and shown in access logs, and never carries a token, a secret or an answer body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No credentials at all → 401 without an error code.
    Missing,
    /// Bad `Authorization` syntax → 400 `invalid_request`.
    Malformed(Malformed),
    /// The token is not (or no longer) a valid access token → 401 `invalid_token`.
    Invalid(Invalid),
    /// Valid, but a required scope is missing → 403 `insufficient_scope`.
    InsufficientScope,
    /// No trustworthy answer from the authorization server → 503.
    Unavailable(Fault),
}

impl Decision {
    /// `allow`, or the denial's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(d) => d.kind(),
        }
    }

    /// Whether this decision may be remembered: an answer the policy could not use is a fault,
    /// and faults are never cached.
    pub fn is_definite(&self) -> bool {
        !matches!(self, Decision::Deny(Denial::Unavailable(_)))
    }
}

impl Denial {
    /// The counter family: `introspection.denied.<kind>`.
    pub fn kind(&self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Malformed(_) => "malformed",
            Denial::Invalid(_) => "inactive",
            Denial::InsufficientScope => "scope",
            Denial::Unavailable(_) => "unavailable",
        }
    }

    /// The precise cause, a stable short code.
    pub fn cause(&self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Malformed(m) => m.code(),
            Denial::Invalid(i) => i.code(),
            Denial::InsufficientScope => "insufficient_scope",
            Denial::Unavailable(f) => f.code(),
        }
    }

    /// The response code details of the local reply (`%RESPONSE_CODE_DETAILS%`): one token,
    /// no spaces, e.g. `introspection_unavailable_timeout`.
    pub fn details(&self) -> String {
        match self {
            Denial::Missing | Denial::InsufficientScope => {
                format!("introspection_{}", self.cause())
            }
            Denial::Malformed(_) => format!("introspection_malformed_{}", self.cause()),
            Denial::Invalid(_) => format!("introspection_invalid_token_{}", self.cause()),
            Denial::Unavailable(_) => format!("introspection_unavailable_{}", self.cause()),
        }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Missing => f.write_str("no Authorization header"),
            Denial::Malformed(m) => f.write_str(m.description()),
            Denial::Invalid(i) => write!(f, "invalid token ({})", i.code()),
            Denial::InsufficientScope => f.write_str("a required scope is missing"),
            Denial::Unavailable(fault) => fault.fmt(f),
        }
    }
}

const fn deny(denial: Denial) -> Decision {
    Decision::Deny(denial)
}

const fn unusable(what: Unusable) -> Decision {
    Decision::Deny(Denial::Unavailable(Fault::Unusable(what)))
}

/// Applies the policy to the claims of an answer, at unix time `now`.
pub fn evaluate(
    policy: &Policy,
    requirements: &Requirements,
    identity: &Identity,
    claims: &Claims,
    now: i64,
) -> Decision {
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return deny(Denial::Invalid(Invalid::Inactive)),
        _ => return unusable(Unusable::Active),
    }

    match claims.get(&policy.expiry_claim) {
        None => {}
        Some(v) => match unix_seconds(v) {
            Some(exp) if exp > now => {}
            Some(_) => return deny(Denial::Invalid(Invalid::Expired)),
            None => return unusable(Unusable::Expiry),
        },
    }
    if let Some(nbf) = claims.get("nbf") {
        match unix_seconds(nbf) {
            Some(nbf) if nbf <= now => {}
            Some(_) => return deny(Denial::Invalid(Invalid::NotYetValid)),
            None => return unusable(Unusable::NotBefore),
        }
    }

    match claims.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return deny(Denial::Invalid(Invalid::NotBearer)),
        None if policy.allow_missing_token_type => {}
        None => return deny(Denial::Invalid(Invalid::NoTokenType)),
    }

    let user = match claims.get(&policy.user_claim) {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return deny(Denial::Invalid(Invalid::NoUser)),
    };

    // The service that obtained the token must be one this route accepts.
    let client_id = claims.get("client_id").and_then(Value::as_str);
    if !requirements.client_accepted(client_id) {
        return deny(Denial::Invalid(Invalid::ClientNotAccepted));
    }
    let granted = match claims.get("scope") {
        Some(Value::String(s)) => s.as_str(),
        _ => "",
    };
    if !requirements.scopes_met(granted) {
        return deny(Denial::InsufficientScope);
    }

    let mut headers = Vec::with_capacity(1 + identity.claim_headers.len());
    match identity_value(user) {
        Some(v) => headers.push((identity.user_header.clone(), v)),
        None => return unusable(Unusable::Claim),
    }
    for (claim, header) in &identity.claim_headers {
        let Some(value) = claims.get(claim) else {
            continue;
        };
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => match exact_number(n) {
                Some(text) => text,
                None => return unusable(Unusable::Claim),
            },
            Value::Bool(b) => b.to_string(),
            // Arrays of strings (e.g. `aud`, `groups`) are joined by spaces.
            Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => parts.push(s.as_str()),
                        _ => return unusable(Unusable::Claim),
                    }
                }
                parts.join(" ")
            }
            Value::Null => continue,
            Value::Object(_) => return unusable(Unusable::Claim),
        };
        match header_value(&text) {
            Some(v) => headers.push((header.clone(), v)),
            None => return unusable(Unusable::Claim),
        }
    }
    Decision::Allow(headers)
}

/// A number claim as header text, if it can be written exactly: a 64-bit integer. Anything
/// else was read as a 64-bit float (`serde_json` keeps no text), which loses what does not fit
/// in 53 bits (`0.1000000000000000000001` would be `0.1`, `12345678901234567890123`
/// `1.2345678901234568e+22`) and respells the rest (`1e2` as `100.0`): not what the server
/// sent, so no header.
fn exact_number(n: &serde_json::Number) -> Option<String> {
    (n.is_i64() || n.is_u64()).then(|| n.to_string())
}

/// An `Allow` of [`evaluate`] remembered with the claims it was made on, for one rule (`None`:
/// the top-level requirements). The policy and the claims fixed, `evaluate` reads the time only
/// in two checks: after the `nbf`, before the expiry claim. So within that window it gives
/// these same headers again, and outside it a denial: [`Remembered::headers`] answers for the
/// window, and `None` sends the caller back to `evaluate`. A worker's hits on one token skip
/// the policy's work; nothing is remembered across a change of configuration (a new VM state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    rule: Option<usize>,
    not_before: Option<i64>,
    expires: Option<i64>,
    headers: Vec<(String, String)>,
}

impl Remembered {
    /// Remembers `headers`, what `evaluate` allowed with on `claims` under `rule`. `None` if a
    /// time claim is there but unreadable (`evaluate` never allows such claims).
    pub fn new(
        policy: &Policy,
        claims: &Claims,
        rule: Option<usize>,
        headers: Vec<(String, String)>,
    ) -> Option<Remembered> {
        let time = |name: &str| match claims.get(name) {
            None => Some(None),
            Some(v) => unix_seconds(v).map(Some),
        };
        Some(Remembered {
            rule,
            not_before: time("nbf")?,
            expires: time(&policy.expiry_claim)?,
            headers,
        })
    }

    /// The headers `evaluate` allows with under `rule` at `now`, if they are these.
    pub fn headers(&self, rule: Option<usize>, now: i64) -> Option<&[(String, String)]> {
        let timely = self.not_before.is_none_or(|nbf| nbf <= now)
            && self.expires.is_none_or(|exp| exp > now);
        (self.rule == rule && timely).then_some(self.headers.as_slice())
    }
}

/// A header value every HTTP parser reads as exactly these characters: no control characters
/// (CR, LF, NUL... could split or truncate headers) and no leading or trailing white space
/// (parsers strip it, so `" alice "` would reach the upstream as `alice`).
fn header_value(s: &str) -> Option<String> {
    let padded = s.starts_with([' ', '\t']) || s.ends_with([' ', '\t']);
    if padded || s.chars().any(char::is_control) {
        None
    } else {
        Some(s.to_string())
    }
}

/// The user's identity: a header value (above) of visible ASCII and inner spaces only, so no
/// parser's character-set handling can turn it into another user.
fn identity_value(s: &str) -> Option<String> {
    if !s.is_empty() && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        header_value(s)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    const NOW: i64 = 1_790_000_100;

    fn config(extra: Value) -> Config {
        let mut v = json!({
            "cluster": "as", "authority": "as.example", "client_id": "sr",
            "client_secret": "secret"
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        Config::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn evaluate_with(c: &Config, claims: &Claims, now: i64) -> Decision {
        evaluate(&c.policy, &c.policy.requirements, &c.identity, claims, now)
    }

    fn proconnect_active() -> Claims {
        json!({"active":true,"sub":"7396c91e-b9f2-4f9d-8547-5e9b3332725b",
            "client_id":"fs","exp":1_790_003_600,"iat":1_790_000_000,
            "iss":"https://auth.agentconnect.gouv.fr/api/v2",
            "scope":"openid uid given_name usual_name email groups","token_type":"Bearer"})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn active_proconnect_answer_is_allowed() {
        let d = evaluate_with(&config(json!({})), &proconnect_active(), NOW);
        assert_eq!(
            d,
            Decision::Allow(vec![(
                "x-user-sub".into(),
                "7396c91e-b9f2-4f9d-8547-5e9b3332725b".into()
            )])
        );
    }

    #[test]
    fn inactive_expired_and_wrong_type_are_invalid() {
        let c = config(json!({}));
        let inactive = json!({"active": false}).as_object().unwrap().clone();
        assert_eq!(evaluate_with(&c, &inactive, NOW).kind(), "inactive");

        let mut expired = proconnect_active();
        expired.insert("exp".into(), json!(NOW));
        assert_eq!(evaluate_with(&c, &expired, NOW).kind(), "inactive");

        let mut refresh = proconnect_active();
        refresh.remove("token_type");
        assert_eq!(evaluate_with(&c, &refresh, NOW).kind(), "inactive");

        let mut other = proconnect_active();
        other.insert("token_type".into(), json!("refresh_token"));
        assert_eq!(evaluate_with(&c, &other, NOW).kind(), "inactive");

        let mut nbf = proconnect_active();
        nbf.insert("nbf".into(), json!(NOW + 10));
        assert_eq!(evaluate_with(&c, &nbf, NOW).kind(), "inactive");

        let mut no_sub = proconnect_active();
        no_sub.remove("sub");
        assert_eq!(evaluate_with(&c, &no_sub, NOW).kind(), "inactive");
        no_sub.insert("sub".into(), json!(""));
        assert_eq!(evaluate_with(&c, &no_sub, NOW).kind(), "inactive");
        no_sub.insert("sub".into(), json!(42));
        assert_eq!(evaluate_with(&c, &no_sub, NOW).kind(), "inactive");
    }

    #[test]
    fn lowercase_bearer_token_type_is_accepted() {
        let mut a = proconnect_active();
        a.insert("token_type".into(), json!("bearer"));
        assert!(matches!(
            evaluate_with(&config(json!({})), &a, NOW),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn malformed_answers_are_unavailable() {
        let c = config(json!({}));
        for bad in [json!({}), json!({"active": "true"}), json!({"active": 1})] {
            assert_eq!(
                evaluate_with(&c, bad.as_object().unwrap(), NOW).kind(),
                "unavailable"
            );
        }
        let mut a = proconnect_active();
        a.insert("exp".into(), json!("soon"));
        assert_eq!(evaluate_with(&c, &a, NOW).kind(), "unavailable");
        let mut a = proconnect_active();
        a.insert("sub".into(), json!("abc\r\nx-admin: 1"));
        assert_eq!(evaluate_with(&c, &a, NOW).kind(), "unavailable");
    }

    #[test]
    fn oauthsd_answer() {
        let c = config(json!({"user_claim": "user_id", "expiry_claim": "expires",
            "allow_missing_token_type": true}));
        let a = json!({"active": true, "user_id": "jdoe", "expires": (NOW + 60).to_string(),
            "client_id": "c", "scope": "openid"});
        assert_eq!(
            evaluate_with(&c, a.as_object().unwrap(), NOW),
            Decision::Allow(vec![("x-user-sub".into(), "jdoe".into())])
        );
        let expired = json!({"active": true, "user_id": "jdoe", "expires": NOW - 1});
        assert_eq!(
            evaluate_with(&c, expired.as_object().unwrap(), NOW).kind(),
            "inactive"
        );
        // Without the switch, a missing token_type is refused.
        let strict = config(json!({"user_claim": "user_id", "expiry_claim": "expires"}));
        assert_eq!(
            evaluate_with(&strict, a.as_object().unwrap(), NOW).kind(),
            "inactive"
        );
    }

    #[test]
    fn required_scopes_must_all_be_present() {
        let c = config(json!({"required_scopes": ["openid", "email"]}));
        assert!(matches!(
            evaluate_with(&c, &proconnect_active(), NOW),
            Decision::Allow(_)
        ));
        let c = config(json!({"required_scopes": ["openid", "locations"]}));
        assert_eq!(
            evaluate_with(&c, &proconnect_active(), NOW),
            Decision::Deny(Denial::InsufficientScope)
        );
        // A prefix is not the scope.
        let c = config(json!({"required_scopes": ["mail"]}));
        assert_eq!(evaluate_with(&c, &proconnect_active(), NOW).kind(), "scope");
        let mut no_scope = proconnect_active();
        no_scope.remove("scope");
        assert_eq!(evaluate_with(&c, &no_scope, NOW).kind(), "scope");
    }

    #[test]
    fn claim_headers_are_mapped() {
        let c = config(json!({"claim_headers": {"client_id": "x-token-client-id",
            "scope": "x-token-scope", "groups": "x-user-groups", "missing": "x-missing",
            "exp": "x-token-exp"}}));
        let mut a = proconnect_active();
        a.insert("groups".into(), json!(["a", "b"]));
        let Decision::Allow(h) = evaluate_with(&c, &a, NOW) else {
            panic!("not allowed")
        };
        assert!(h.contains(&("x-token-client-id".into(), "fs".into())));
        assert!(h.contains(&(
            "x-token-scope".into(),
            "openid uid given_name usual_name email groups".into()
        )));
        assert!(h.contains(&("x-user-groups".into(), "a b".into())));
        assert!(h.contains(&("x-token-exp".into(), "1790003600".into())));
        assert!(!h.iter().any(|(n, _)| n == "x-missing"));

        a.insert("groups".into(), json!({"x": 1}));
        assert_eq!(evaluate_with(&c, &a, NOW).kind(), "unavailable");
    }

    /// Found by review: an integer beyond 64 bits reached the header rounded, in exponent form,
    /// and decimals rounded or respelled.
    #[test]
    fn a_number_claim_is_forwarded_only_if_exact() {
        let c = config(json!({"claim_headers": {"n": "x-n"}}));
        let header = |raw: &str| {
            let mut a = proconnect_active();
            a.insert("n".into(), serde_json::from_str(raw).unwrap());
            match evaluate_with(&c, &a, NOW) {
                Decision::Allow(h) => h.into_iter().find(|(n, _)| n == "x-n").map(|(_, v)| v),
                other => {
                    assert_eq!(other.kind(), "unavailable", "{raw}");
                    None
                }
            }
        };
        assert_eq!(
            header("18446744073709551615").as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(
            header("-9223372036854775808").as_deref(),
            Some("-9223372036854775808")
        );
        assert_eq!(header("0").as_deref(), Some("0"));
        for inexact in [
            "12345678901234567890123",
            "-1e300",
            "0.1000000000000000000001",
            "1712345678.123456789012",
            "1e2",
            "1.5E3",
            "0.25",
            "1.0",
        ] {
            assert_eq!(header(inexact), None, "{inexact}");
        }
    }

    /// A remembered allow answers exactly as `evaluate` would, at every time around its
    /// window: the same headers inside, nothing (so `evaluate`, which denies) outside.
    #[test]
    fn a_remembered_allow_is_what_evaluate_gives_at_every_time() {
        let c = config(json!({"claim_headers": {"exp": "x-token-exp"}}));
        let mut with_nbf = proconnect_active();
        with_nbf.insert("nbf".into(), json!(NOW - 10));
        let mut no_exp = proconnect_active();
        no_exp.remove("exp");
        let mut string_times = proconnect_active();
        string_times.insert("exp".into(), json!("1790000200"));
        string_times.insert("nbf".into(), json!("1790000050"));
        for claims in [proconnect_active(), with_nbf, no_exp, string_times] {
            let Decision::Allow(headers) = evaluate_with(&c, &claims, NOW) else {
                panic!("not allowed")
            };
            let memo = Remembered::new(&c.policy, &claims, None, headers).unwrap();
            // Every second around each of the answer's times, and a sweep in between.
            let edges: Vec<i64> = ["nbf", "exp"]
                .iter()
                .filter_map(|name| claims.get(*name).and_then(unix_seconds))
                .flat_map(|t| t - 2..=t + 2)
                .collect();
            for now in (NOW - 200..NOW + 3_700).step_by(7).chain(edges) {
                let fresh = evaluate_with(&c, &claims, now);
                match memo.headers(None, now) {
                    Some(h) => assert_eq!(fresh, Decision::Allow(h.to_vec()), "at {now}"),
                    None => assert_ne!(fresh.kind(), "allow", "at {now}"),
                }
            }
            // Another rule's requirements: evaluated afresh.
            assert_eq!(memo.headers(Some(0), NOW), None);
        }
        // A time claim `evaluate` cannot read is never remembered.
        let mut odd = proconnect_active();
        odd.insert("nbf".into(), json!("soon"));
        assert_eq!(Remembered::new(&c.policy, &odd, None, Vec::new()), None);
    }
}

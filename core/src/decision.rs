//! From an introspection answer to a decision. Pure: time is an argument.

use serde_json::{Map, Value};

use crate::config::Config;

/// Claims of one introspection answer (the JSON object, or RFC 9701's `token_introspection`).
pub type Claims = Map<String, Value>;

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through with these (header, value) pairs set.
    Allow(Vec<(String, String)>),
    Deny(Denial),
}

/// Why a request is refused. Reasons are fixed strings or built from fixed parts: they may be
/// logged and never contain a token, a secret or a response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials at all → 401 without an error code.
    Missing,
    /// Bad `Authorization` syntax → 400 `invalid_request`.
    Malformed(&'static str),
    /// The token is not (or no longer) a valid access token → 401 `invalid_token`.
    Invalid(&'static str),
    /// Valid, but a required scope is missing → 403 `insufficient_scope`.
    InsufficientScope,
    /// No trustworthy answer from the authorization server → 503.
    Unavailable(String),
}

impl Decision {
    /// `allow`, or the denial's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(d) => d.kind(),
        }
    }
}

impl Denial {
    /// A short, stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Malformed(_) => "malformed",
            Denial::Invalid(_) => "inactive",
            Denial::InsufficientScope => "scope",
            Denial::Unavailable(_) => "unavailable",
        }
    }

    /// The loggable reason.
    pub fn reason(&self) -> &str {
        match self {
            Denial::Missing => "no Authorization header",
            Denial::Malformed(r) | Denial::Invalid(r) => r,
            Denial::InsufficientScope => "a required scope is missing",
            Denial::Unavailable(r) => r,
        }
    }
}

/// Applies the policy to the claims of an answer, at unix time `now`.
pub fn evaluate(config: &Config, claims: &Claims, now: i64) -> Decision {
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Decision::Deny(Denial::Invalid("token is not active")),
        _ => {
            return Decision::Deny(Denial::Unavailable(
                "answer has no boolean `active` member".into(),
            ))
        }
    }

    match claims.get(&config.expiry_claim) {
        None => {}
        Some(v) => match unix_seconds(v) {
            Some(exp) if exp > now => {}
            Some(_) => return Decision::Deny(Denial::Invalid("token has expired")),
            None => {
                return Decision::Deny(Denial::Unavailable(format!(
                    "expiry claim `{}` is not a number",
                    config.expiry_claim
                )))
            }
        },
    }
    if let Some(nbf) = claims.get("nbf") {
        match unix_seconds(nbf) {
            Some(nbf) if nbf <= now => {}
            Some(_) => return Decision::Deny(Denial::Invalid("token is not valid yet (nbf)")),
            None => {
                return Decision::Deny(Denial::Unavailable("`nbf` is not a number".into()));
            }
        }
    }

    match claims.get("token_type") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Decision::Deny(Denial::Invalid("token_type is not Bearer")),
        None if config.allow_missing_token_type => {}
        None => {
            return Decision::Deny(Denial::Invalid(
                "answer has no token_type (a refresh token?)",
            ))
        }
    }

    let user = match claims.get(&config.user_claim) {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Decision::Deny(Denial::Invalid("answer does not name a user")),
    };

    if !config.required_scopes.is_empty() {
        let granted = match claims.get("scope") {
            Some(Value::String(s)) => s.as_str(),
            _ => "",
        };
        let has_all = config
            .required_scopes
            .iter()
            .all(|needed| granted.split(' ').any(|g| g == needed));
        if !has_all {
            return Decision::Deny(Denial::InsufficientScope);
        }
    }

    let mut headers = Vec::with_capacity(1 + config.claim_headers.len());
    match header_value(user) {
        Some(v) => headers.push((config.user_header.clone(), v)),
        None => {
            return Decision::Deny(Denial::Unavailable(format!(
                "claim `{}` holds characters that cannot go in a header",
                config.user_claim
            )))
        }
    }
    for (claim, header) in &config.claim_headers {
        let Some(value) = claims.get(claim) else {
            continue;
        };
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            // Arrays of strings (e.g. `aud`, `groups`) are joined by spaces.
            Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => parts.push(s.as_str()),
                        _ => {
                            return Decision::Deny(Denial::Unavailable(format!(
                                "claim `{claim}` is not a string array"
                            )))
                        }
                    }
                }
                parts.join(" ")
            }
            Value::Null => continue,
            Value::Object(_) => {
                return Decision::Deny(Denial::Unavailable(format!(
                    "claim `{claim}` is an object and cannot go in a header"
                )))
            }
        };
        match header_value(&text) {
            Some(v) => headers.push((header.clone(), v)),
            None => {
                return Decision::Deny(Denial::Unavailable(format!(
                    "claim `{claim}` holds characters that cannot go in a header"
                )))
            }
        }
    }
    Decision::Allow(headers)
}

/// A header value: no control characters (CR, LF, NUL... could split or truncate headers).
fn header_value(s: &str) -> Option<String> {
    if s.chars().any(char::is_control) {
        None
    } else {
        Some(s.to_string())
    }
}

/// A unix time: a JSON integer (or a float, truncated), or a string of digits (some PHP servers).
pub fn unix_seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s)
            if !s.is_empty() && s.len() < 16 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let d = evaluate(&config(json!({})), &proconnect_active(), NOW);
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
        assert_eq!(evaluate(&c, &inactive, NOW).kind(), "inactive");

        let mut expired = proconnect_active();
        expired.insert("exp".into(), json!(NOW));
        assert_eq!(evaluate(&c, &expired, NOW).kind(), "inactive");

        let mut refresh = proconnect_active();
        refresh.remove("token_type");
        assert_eq!(evaluate(&c, &refresh, NOW).kind(), "inactive");

        let mut other = proconnect_active();
        other.insert("token_type".into(), json!("refresh_token"));
        assert_eq!(evaluate(&c, &other, NOW).kind(), "inactive");

        let mut nbf = proconnect_active();
        nbf.insert("nbf".into(), json!(NOW + 10));
        assert_eq!(evaluate(&c, &nbf, NOW).kind(), "inactive");

        let mut no_sub = proconnect_active();
        no_sub.remove("sub");
        assert_eq!(evaluate(&c, &no_sub, NOW).kind(), "inactive");
        no_sub.insert("sub".into(), json!(""));
        assert_eq!(evaluate(&c, &no_sub, NOW).kind(), "inactive");
        no_sub.insert("sub".into(), json!(42));
        assert_eq!(evaluate(&c, &no_sub, NOW).kind(), "inactive");
    }

    #[test]
    fn lowercase_bearer_token_type_is_accepted() {
        let mut a = proconnect_active();
        a.insert("token_type".into(), json!("bearer"));
        assert!(matches!(
            evaluate(&config(json!({})), &a, NOW),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn malformed_answers_are_unavailable() {
        let c = config(json!({}));
        for bad in [json!({}), json!({"active": "true"}), json!({"active": 1})] {
            assert_eq!(
                evaluate(&c, bad.as_object().unwrap(), NOW).kind(),
                "unavailable"
            );
        }
        let mut a = proconnect_active();
        a.insert("exp".into(), json!("soon"));
        assert_eq!(evaluate(&c, &a, NOW).kind(), "unavailable");
        let mut a = proconnect_active();
        a.insert("sub".into(), json!("abc\r\nx-admin: 1"));
        assert_eq!(evaluate(&c, &a, NOW).kind(), "unavailable");
    }

    #[test]
    fn oauthsd_answer() {
        let c = config(json!({"user_claim": "user_id", "expiry_claim": "expires",
            "allow_missing_token_type": true}));
        let a = json!({"active": true, "user_id": "jdoe", "expires": (NOW + 60).to_string(),
            "client_id": "c", "scope": "openid"});
        assert_eq!(
            evaluate(&c, a.as_object().unwrap(), NOW),
            Decision::Allow(vec![("x-user-sub".into(), "jdoe".into())])
        );
        let expired = json!({"active": true, "user_id": "jdoe", "expires": NOW - 1});
        assert_eq!(
            evaluate(&c, expired.as_object().unwrap(), NOW).kind(),
            "inactive"
        );
        // Without the switch, a missing token_type is refused.
        let strict = config(json!({"user_claim": "user_id", "expiry_claim": "expires"}));
        assert_eq!(
            evaluate(&strict, a.as_object().unwrap(), NOW).kind(),
            "inactive"
        );
    }

    #[test]
    fn required_scopes_must_all_be_present() {
        let c = config(json!({"required_scopes": ["openid", "email"]}));
        assert!(matches!(
            evaluate(&c, &proconnect_active(), NOW),
            Decision::Allow(_)
        ));
        let c = config(json!({"required_scopes": ["openid", "locations"]}));
        assert_eq!(
            evaluate(&c, &proconnect_active(), NOW),
            Decision::Deny(Denial::InsufficientScope)
        );
        // A prefix is not the scope.
        let c = config(json!({"required_scopes": ["mail"]}));
        assert_eq!(evaluate(&c, &proconnect_active(), NOW).kind(), "scope");
        let mut no_scope = proconnect_active();
        no_scope.remove("scope");
        assert_eq!(evaluate(&c, &no_scope, NOW).kind(), "scope");
    }

    #[test]
    fn claim_headers_are_mapped() {
        let c = config(json!({"claim_headers": {"client_id": "x-token-client-id",
            "scope": "x-token-scope", "groups": "x-user-groups", "missing": "x-missing",
            "exp": "x-token-exp"}}));
        let mut a = proconnect_active();
        a.insert("groups".into(), json!(["a", "b"]));
        let Decision::Allow(h) = evaluate(&c, &a, NOW) else {
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
        assert_eq!(evaluate(&c, &a, NOW).kind(), "unavailable");
    }

    #[test]
    fn unix_seconds_forms() {
        assert_eq!(unix_seconds(&json!(5)), Some(5));
        assert_eq!(unix_seconds(&json!(5.9)), Some(5));
        assert_eq!(unix_seconds(&json!("17")), Some(17));
        assert_eq!(unix_seconds(&json!("-1")), None);
        assert_eq!(unix_seconds(&json!(null)), None);
        assert_eq!(unix_seconds(&json!(1e300)), None);
    }
}

//! The local answers the filter sends instead of forwarding (RFC 6750 §3).

use crate::config::Policy;
use crate::decision::Denial;
use crate::rules::Requirements;

/// A response the filter sends itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`): the denial's code.
    pub details: String,
}

/// The answer for a denial.
/// The answer for a denial; `requirements` are the ones that applied (their scopes go in the
/// `insufficient_scope` challenge).
pub fn for_denial(policy: &Policy, requirements: &Requirements, denial: &Denial) -> LocalReply {
    let realm = &policy.realm;
    let (status, challenge, error, description) = match denial {
        Denial::Missing => (
            401,
            Some(format!("Bearer realm=\"{realm}\"")),
            "unauthorized",
            "a bearer token is required".to_string(),
        ),
        Denial::Malformed(reason) => (
            400,
            Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{}\"",
                reason.description()
            )),
            "invalid_request",
            reason.description().to_string(),
        ),
        Denial::Invalid(_) => (
            401,
            Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"the access token is invalid, expired or revoked\""
            )),
            "invalid_token",
            "the access token is invalid, expired or revoked".to_string(),
        ),
        Denial::InsufficientScope => {
            let scope = requirements.scopes.join(" ");
            (
                403,
                Some(format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\""
                )),
                "insufficient_scope",
                format!("the access token lacks a required scope: {scope}"),
            )
        }
        Denial::Unavailable(_) => (
            503,
            None,
            "temporarily_unavailable",
            "the access token could not be verified, try again later".to_string(),
        ),
    };
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    if let Some(challenge) = challenge {
        headers.push(("www-authenticate", challenge));
    }
    LocalReply {
        status,
        headers,
        body,
        details: denial.details(),
    }
}

/// The answer when the filter has no valid configuration: 503, like any other fault.
pub fn unconfigured() -> LocalReply {
    LocalReply {
        status: 503,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-store".to_string()),
        ],
        body: r#"{"error":"temporarily_unavailable","error_description":"the access token could not be verified, try again later"}"#.to_string(),
        details: "introspection_unavailable_not_configured".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bearer::Malformed;
    use crate::config::Config;
    use crate::decision::Invalid;
    use crate::fault::Fault;

    fn config() -> Config {
        Config::from_json(
            br#"{"cluster":"a","authority":"a","client_id":"c","client_secret":"s",
                "realm":"locations","required_scopes":["openid","locations"]}"#,
        )
        .unwrap()
    }

    fn challenge(r: &LocalReply) -> Option<&str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == "www-authenticate")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn rfc6750_statuses_and_challenges() {
        let c = config();
        let r = for_denial(&c.policy, &c.policy.requirements, &Denial::Missing);
        assert_eq!(
            (r.status, challenge(&r)),
            (401, Some("Bearer realm=\"locations\""))
        );
        let r = for_denial(
            &c.policy,
            &c.policy.requirements,
            &Denial::Malformed(Malformed::Several),
        );
        assert_eq!(r.status, 400);
        assert!(challenge(&r).unwrap().contains("error=\"invalid_request\""));
        let r = for_denial(
            &c.policy,
            &c.policy.requirements,
            &Denial::Invalid(Invalid::Inactive),
        );
        assert_eq!(r.status, 401);
        assert!(challenge(&r).unwrap().contains("error=\"invalid_token\""));
        assert!(!r.body.contains("not active"));
        let r = for_denial(
            &c.policy,
            &c.policy.requirements,
            &Denial::InsufficientScope,
        );
        assert_eq!(r.status, 403);
        assert!(challenge(&r)
            .unwrap()
            .ends_with("error=\"insufficient_scope\", scope=\"openid locations\""));
        let r = for_denial(
            &c.policy,
            &c.policy.requirements,
            &Denial::Unavailable(Fault::Status {
                status: 500,
                error: None,
            }),
        );
        assert_eq!((r.status, challenge(&r)), (503, None));
        assert!(!r.body.contains("500"));
        assert_eq!(r.details, "introspection_unavailable_status_5xx");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"], "temporarily_unavailable");
    }
}

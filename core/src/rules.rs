//! Per-route rules: an ordered list, the first rule that matches a request decides what it
//! needs — nothing (a public route) or its own scopes and accepted clients. Unmatched requests
//! get the top-level requirements. Matching is on what Envoy routed on (the route name), the
//! path without its query, and the method. A leaf module.

/// What a protected request's token must carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirements {
    /// Scopes from the answer's `scope`.
    pub scopes: Vec<String>,
    pub mode: ScopeMode,
    /// The `client_id`s (the service that obtained the token) accepted; empty: any.
    pub client_ids: Vec<String>,
}

/// How `scopes` combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScopeMode {
    /// Every scope is needed.
    #[default]
    AllOf,
    /// One of them is enough.
    AnyOf,
}

impl Requirements {
    /// Whether a granted `scope` string (space-separated) satisfies the scopes.
    pub fn scopes_met(&self, granted: &str) -> bool {
        let has = |needed: &String| granted.split(' ').any(|g| g == needed);
        match self.mode {
            _ if self.scopes.is_empty() => true,
            ScopeMode::AllOf => self.scopes.iter().all(has),
            ScopeMode::AnyOf => self.scopes.iter().any(has),
        }
    }

    /// Whether the token's `client_id` is one accepted here.
    pub fn client_accepted(&self, client_id: Option<&str>) -> bool {
        self.client_ids.is_empty()
            || client_id.is_some_and(|c| self.client_ids.iter().any(|a| a == c))
    }
}

/// How a rule matches the path (without the query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// What a matching rule decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token needed (identity headers are still stripped).
    Public,
    /// A token is needed, with these requirements.
    Protected(Requirements),
}

/// One rule. Every criterion given must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// For logs and errors.
    pub name: String,
    pub route_name: Option<String>,
    pub path: Option<PathMatch>,
    /// Upper-case methods; empty: any.
    pub methods: Vec<String>,
    pub access: Access,
}

/// What the rules look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Envoy's `route_name` (empty when the route has none); `None` if unread.
    pub route_name: Option<&'a str>,
    /// `:path`, query included (it is cut here).
    pub path: &'a [u8],
    pub method: &'a [u8],
}

impl Rule {
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        if let Some(route) = &self.route_name {
            if facts.route_name != Some(route.as_str()) {
                return false;
            }
        }
        if let Some(path_match) = &self.path {
            let path = without_query(facts.path);
            // A path Envoy did not normalise could be read differently upstream
            // (`/public/../api`): it never matches a path rule.
            if !is_normal(path) {
                return false;
            }
            let ok = match path_match {
                PathMatch::Exact(p) => path == p.as_bytes(),
                PathMatch::Prefix(p) => path.starts_with(p.as_bytes()),
            };
            if !ok {
                return false;
            }
        }
        self.methods.is_empty() || self.methods.iter().any(|m| m.as_bytes() == facts.method)
    }
}

/// The first rule that matches, if any.
pub fn select<'r>(rules: &'r [Rule], facts: &Facts<'_>) -> Option<(usize, &'r Rule)> {
    rules.iter().enumerate().find(|(_, r)| r.matches(facts))
}

/// Whether the rules read Envoy's route name (a host call per request).
pub fn need_route_name(rules: &[Rule]) -> bool {
    rules.iter().any(|r| r.route_name.is_some())
}

fn without_query(path: &[u8]) -> &[u8] {
    match path.iter().position(|&b| b == b'?' || b == b'#') {
        Some(i) => path.get(..i).unwrap_or(path),
        None => path,
    }
}

/// A path as Envoy's `normalize_path` + `merge_slashes` leave it: absolute, no empty, `.` or
/// `..` segment, no escaped `/`, `\` or `.`, no backslash.
pub fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') || path.contains(&b'\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if [&b"%2f"[..], b"%5c", b"%2e"]
        .iter()
        .any(|esc| lower.windows(3).any(|w| w == *esc))
    {
        return false;
    }
    let rest = path.get(1..).unwrap_or_default();
    let segments: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let last = segments.len().saturating_sub(1);
    segments.iter().enumerate().all(|(i, s)| match *s {
        b"." | b".." => false,
        b"" => i == last, // a trailing slash is fine, `//` is not
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(route: Option<&str>, path: Option<PathMatch>, methods: &[&str]) -> Rule {
        Rule {
            name: "r".into(),
            route_name: route.map(String::from),
            path,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            access: Access::Public,
        }
    }

    fn facts<'a>(route: Option<&'a str>, path: &'a str, method: &'a str) -> Facts<'a> {
        Facts {
            route_name: route,
            path: path.as_bytes(),
            method: method.as_bytes(),
        }
    }

    #[test]
    fn path_rules_match_without_the_query() {
        let exact = rule(None, Some(PathMatch::Exact("/healthz".into())), &[]);
        assert!(exact.matches(&facts(None, "/healthz", "GET")));
        assert!(exact.matches(&facts(None, "/healthz?full=1", "GET")));
        assert!(!exact.matches(&facts(None, "/healthz/x", "GET")));
        let prefix = rule(None, Some(PathMatch::Prefix("/public/".into())), &[]);
        assert!(prefix.matches(&facts(None, "/public/a", "GET")));
        assert!(!prefix.matches(&facts(None, "/publicity", "GET")));
    }

    #[test]
    fn path_tricks_never_match_a_path_rule() {
        let public = rule(None, Some(PathMatch::Prefix("/public/".into())), &[]);
        for trick in [
            "/public/../api/users/me",
            "/public/./x",
            "/public//x",
            "/public/%2e%2e/api",
            "/public%2F..%2Fapi",
            "/public/..%2fapi",
            "/public/..\\api",
            "public/x",
        ] {
            assert!(!public.matches(&facts(None, trick, "GET")), "{trick}");
        }
    }

    #[test]
    fn every_given_criterion_must_match() {
        let r = rule(
            Some("api"),
            Some(PathMatch::Prefix("/api".into())),
            &["GET", "HEAD"],
        );
        assert!(r.matches(&facts(Some("api"), "/api/x", "GET")));
        assert!(!r.matches(&facts(Some("other"), "/api/x", "GET")));
        assert!(!r.matches(&facts(None, "/api/x", "GET")));
        assert!(!r.matches(&facts(Some("api"), "/other", "GET")));
        assert!(!r.matches(&facts(Some("api"), "/api/x", "POST")));
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = vec![
            rule(None, Some(PathMatch::Exact("/a".into())), &[]),
            rule(None, Some(PathMatch::Prefix("/".into())), &[]),
        ];
        assert_eq!(
            select(&rules, &facts(None, "/a", "GET")).map(|(i, _)| i),
            Some(0)
        );
        assert_eq!(
            select(&rules, &facts(None, "/b", "GET")).map(|(i, _)| i),
            Some(1)
        );
        assert!(select(&rules[..1], &facts(None, "/b", "GET")).is_none());
    }

    #[test]
    fn scopes_all_of_and_any_of() {
        let mut req = Requirements {
            scopes: vec!["a".into(), "b".into()],
            ..Requirements::default()
        };
        assert!(req.scopes_met("a b c"));
        assert!(!req.scopes_met("a c"));
        req.mode = ScopeMode::AnyOf;
        assert!(req.scopes_met("c b"));
        assert!(!req.scopes_met("c ab"));
        assert!(Requirements::default().scopes_met(""));
    }

    #[test]
    fn accepted_clients() {
        let req = Requirements {
            client_ids: vec!["fs-1".into()],
            ..Requirements::default()
        };
        assert!(req.client_accepted(Some("fs-1")));
        assert!(!req.client_accepted(Some("fs-2")));
        assert!(!req.client_accepted(None));
        assert!(Requirements::default().client_accepted(None));
    }
}

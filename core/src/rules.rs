//! Per-route rules: an ordered list, the first rule that matches a request decides what it
//! needs — nothing (a public route) or its own scopes and accepted clients. Unmatched requests
//! get the top-level requirements. Matching is on what Envoy routed on (the route name), the
//! path without its query, and the method. A path that is not normalised cannot be matched
//! against a path rule: the upstream may read it as another path (`/api//admin`, `/x/../admin`),
//! so whether the rule applies cannot be told. A leaf module.

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
    /// Whether the rule matches the request: `None` when that depends on a path that is not
    /// normalised (its route and methods, checked first, match).
    pub fn matches(&self, facts: &Facts<'_>) -> Option<bool> {
        if let Some(route) = &self.route_name {
            if facts.route_name != Some(route.as_str()) {
                return Some(false);
            }
        }
        if !(self.methods.is_empty() || self.methods.iter().any(|m| m.as_bytes() == facts.method)) {
            return Some(false);
        }
        let Some(path_match) = &self.path else {
            return Some(true);
        };
        let path = without_query(facts.path);
        if !is_normal(path) {
            return None;
        }
        Some(match path_match {
            PathMatch::Exact(p) => path == p.as_bytes(),
            PathMatch::Prefix(p) => path.starts_with(p.as_bytes()),
        })
    }
}

/// What the rules decide for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection<'r> {
    /// The first rule that matches, and its index.
    Rule(usize, &'r Rule),
    /// No rule matches: the top-level requirements apply.
    Unmatched,
    /// Before any rule matched, one whose route and methods match has a path criterion, and
    /// the path is not normalised: the request cannot be judged (400).
    PathNotNormal,
}

/// The first rule that matches, no rule, or a path that cannot be judged.
pub fn select<'r>(rules: &'r [Rule], facts: &Facts<'_>) -> Selection<'r> {
    for (index, rule) in rules.iter().enumerate() {
        match rule.matches(facts) {
            Some(true) => return Selection::Rule(index, rule),
            Some(false) => {}
            None => return Selection::PathNotNormal,
        }
    }
    Selection::Unmatched
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

/// A path as Envoy's `normalize_path` + `merge_slashes` leave it, read one way by every
/// upstream: absolute, no empty, `.` or `..` segment, no backslash, no `;` (servlet containers
/// and others cut a segment's parameters before routing), and no escape of `/`, `\` or an
/// unreserved character (RFC 3986 §2.3: `%61` is `a`, so `/api/%61dmin` is `/api/admin`).
pub fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') || path.contains(&b'\\') || path.contains(&b';') {
        return false;
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let escapes_what_needs_none = path.windows(3).any(|w| match w {
        [b'%', hi, lo] => match (hex(*hi), hex(*lo)) {
            (Some(hi), Some(lo)) => u8::try_from(hi << 4 | lo)
                .is_ok_and(|byte| byte == b'/' || byte == b'\\' || is_unreserved(byte)),
            _ => false,
        },
        _ => false,
    });
    if escapes_what_needs_none {
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

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
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
        assert_eq!(exact.matches(&facts(None, "/healthz", "GET")), Some(true));
        assert_eq!(
            exact.matches(&facts(None, "/healthz?full=1", "GET")),
            Some(true)
        );
        assert_eq!(
            exact.matches(&facts(None, "/healthz/x", "GET")),
            Some(false)
        );
        let prefix = rule(None, Some(PathMatch::Prefix("/public/".into())), &[]);
        assert_eq!(prefix.matches(&facts(None, "/public/a", "GET")), Some(true));
        assert_eq!(
            prefix.matches(&facts(None, "/publicity", "GET")),
            Some(false)
        );
        // Reserved characters escaped stay as they are: `%20`, `%3A`, `%25` are normal.
        assert_eq!(
            prefix.matches(&facts(None, "/public/a%20b%3A%25", "GET")),
            Some(true)
        );
    }

    #[test]
    fn a_path_read_otherwise_upstream_cannot_be_matched() {
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
            "/api//admin/users",
            "/api/%61dmin/users",
            "/api/adm%69n",
            "/api/admin%7e",
            "/api/admin;x=1/users",
            "/api/admin/;/users",
        ] {
            assert_eq!(public.matches(&facts(None, trick, "GET")), None, "{trick}");
            assert!(!is_normal(trick.as_bytes()), "{trick}");
        }
    }

    #[test]
    fn a_rule_whose_route_or_method_differs_does_not_read_the_path() {
        let r = rule(
            Some("api"),
            Some(PathMatch::Prefix("/api/".into())),
            &["GET"],
        );
        assert_eq!(
            r.matches(&facts(Some("other"), "/api//x", "GET")),
            Some(false)
        );
        assert_eq!(
            r.matches(&facts(Some("api"), "/api//x", "POST")),
            Some(false)
        );
        assert_eq!(r.matches(&facts(Some("api"), "/api//x", "GET")), None);
    }

    #[test]
    fn every_given_criterion_must_match() {
        let r = rule(
            Some("api"),
            Some(PathMatch::Prefix("/api".into())),
            &["GET", "HEAD"],
        );
        assert_eq!(r.matches(&facts(Some("api"), "/api/x", "GET")), Some(true));
        assert_eq!(
            r.matches(&facts(Some("other"), "/api/x", "GET")),
            Some(false)
        );
        assert_eq!(r.matches(&facts(None, "/api/x", "GET")), Some(false));
        assert_eq!(r.matches(&facts(Some("api"), "/other", "GET")), Some(false));
        assert_eq!(
            r.matches(&facts(Some("api"), "/api/x", "POST")),
            Some(false)
        );
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = vec![
            rule(None, Some(PathMatch::Exact("/a".into())), &[]),
            rule(None, Some(PathMatch::Prefix("/".into())), &[]),
        ];
        let index = |selection| match selection {
            Selection::Rule(i, _) => Some(i),
            _ => None,
        };
        assert_eq!(index(select(&rules, &facts(None, "/a", "GET"))), Some(0));
        assert_eq!(index(select(&rules, &facts(None, "/b", "GET"))), Some(1));
        assert_eq!(
            select(&rules[..1], &facts(None, "/b", "GET")),
            Selection::Unmatched
        );
    }

    #[test]
    fn a_path_that_is_not_normal_is_judged_only_where_no_rule_reads_it() {
        let by_route = Rule {
            route_name: Some("reports".into()),
            ..rule(None, None, &[])
        };
        let admin = rule(
            None,
            Some(PathMatch::Prefix("/api/admin/".into())),
            &["GET"],
        );
        let rules = vec![by_route, admin];
        // The first rule decides without the path.
        assert!(matches!(
            select(&rules, &facts(Some("reports"), "/api//admin/x", "GET")),
            Selection::Rule(0, _)
        ));
        // A path rule is reached: it cannot be told whether it applies.
        assert_eq!(
            select(&rules, &facts(None, "/api//admin/x", "GET")),
            Selection::PathNotNormal
        );
        // Not for its method: unmatched, whatever the path.
        assert_eq!(
            select(&rules, &facts(None, "/api//admin/x", "POST")),
            Selection::Unmatched
        );
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

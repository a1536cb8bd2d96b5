//! The Grafana dashboard and the Prometheus rules (ops/) use metric names a real Envoy with the
//! filter exports: a stack is started, `/stats/prometheus` scraped, and every name the queries
//! use must be there — except the per-cause 503 counters listed in PER_CAUSE below, which the
//! filter does not export yet.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{Stack, StackOptions};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

const RULES: &str = "ops/prometheus/introspection.rules.yaml";
const DASHBOARD: &str = "ops/grafana/proconnect-introspection.json";

/// Prefix of the per-cause 503 counters (`introspection.denied.unavailable.<cause>` in the
/// filter, one per cause such as `timeout`, `status_4xx`).
const PER_CAUSE_PREFIX: &str = "introspection_denied_unavailable_";

// ---------------------------------------------------------------------------------------------
// ALLOWLIST — per-cause names only, none needed: the filter defines every per-cause 503
// counter at start, so Envoy exports them all (at 0). Every entry must start with
// PER_CAUSE_PREFIX; nothing else may be listed here.
const PER_CAUSE: &[&str] = &[];
/// Name regexes (`{__name__=~"..."}`) over per-cause names.
const PER_CAUSE_PATTERNS: &[&str] = &["introspection_denied_unavailable_.+"];
// ---------------------------------------------------------------------------------------------

/// Queries (PromQL) in the rules file, and the names it records.
fn rule_queries() -> (Vec<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(e2e::root().join(RULES)).expect("rules");
    let doc: Yaml = serde_yaml::from_str(&text).expect("rules YAML");
    let mut queries = Vec::new();
    let mut recorded = BTreeSet::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            queries.push(rule["expr"].as_str().expect("expr").to_string());
            if let Some(name) = rule["record"].as_str() {
                recorded.insert(name.to_string());
            }
        }
    }
    (queries, recorded)
}

/// Queries in the dashboard: panel targets and `label_values(metric, label)` variables.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(e2e::root().join(DASHBOARD)).expect("dashboard");
    let doc: Json = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in doc["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for variable in doc["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = variable["query"]["query"].as_str() {
            queries.push(q.to_string());
        }
    }
    assert!(queries.len() > 5, "the dashboard has queries");
    queries
}

/// The metric names a PromQL query uses (`introspection_*`, `envoy_*`, and recorded names
/// with `:`), and its `__name__` regexes. String literals are not names (label values,
/// `label_replace` arguments), except a `__name__=~` regex.
fn names_in(query: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut patterns = BTreeSet::new();
    let mut code = String::new();
    let mut rest = query;
    while let Some(start) = rest.find('"') {
        code.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('"').expect("closed string literal");
        if code.trim_end().ends_with("__name__=~") {
            patterns.insert(after[..end].to_string());
        }
        code.push(' ');
        rest = &after[end + 1..];
    }
    code.push_str(rest);
    // Neither label matchers `{...}`, ranges `[5m:30s]`, nor label lists `by (job, le)` hold
    // metric names.
    let code = strip_enclosed(&code, '{', '}');
    let code = strip_enclosed(&code, '[', ']');
    let code = strip_label_lists(&code);
    for word in code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with("introspection_") || word.starts_with("envoy_") || word.contains(':') {
            names.insert(word.to_string());
        }
    }
    (names, patterns)
}

/// `text` without what lies between `open` and `close` (not nested in the queries here).
fn strip_enclosed(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.saturating_sub(1);
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

/// `text` without the label lists of `by`, `without`, `on`, `ignoring`, `group_left`,
/// `group_right`.
fn strip_label_lists(text: &str) -> String {
    const KEYWORDS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('(') {
        let before = &rest[..open];
        let keyword = before
            .trim_end()
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        out.push_str(before);
        if KEYWORDS.contains(&keyword) {
            let close = rest[open..].find(')').map_or(rest.len(), |i| open + i + 1);
            rest = &rest[close..];
        } else {
            out.push('(');
            rest = &rest[open + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Metric names in a Prometheus text exposition (histograms as their `_bucket`/`_sum`/`_count`).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Whether `name` matches the PromQL regex `pattern` (fully anchored). Only the forms used
/// in ops/ are supported: literal text with `.+` / `.*`.
fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &str, n: &str) -> bool {
        if let Some(rest) = p.strip_prefix(".+") {
            return (1..=n.len()).any(|i| n.is_char_boundary(i) && go(rest, &n[i..]));
        }
        if let Some(rest) = p.strip_prefix(".*") {
            return (0..=n.len()).any(|i| n.is_char_boundary(i) && go(rest, &n[i..]));
        }
        match (p.chars().next(), n.chars().next()) {
            (None, None) => true,
            (Some(a), Some(b)) if a == b => go(&p[a.len_utf8()..], &n[b.len_utf8()..]),
            _ => false,
        }
    }
    assert!(
        !pattern.contains(['[', '(', '|', '\\', '?', '^', '$']),
        "pattern {pattern:?} needs a real regex engine: extend `matches`"
    );
    go(pattern, name)
}

#[test]
fn the_name_extraction_sees_what_it_should() {
    let (names, patterns) = names_in(
        r#"sum by (cause) (rate(label_replace({__name__=~"introspection_denied_unavailable_.+", job=~"$job"}, "cause", "$1", "__name__", "introspection_x_(.+)")[5m:30s])) / on (envoy_x) group_left job:introspection_decisions:rate5m + sum without (envoy_y) (envoy_cluster_upstream_rq_retry{envoy_cluster_name="proconnect"})"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "envoy_cluster_upstream_rq_retry",
            "job:introspection_decisions:rate5m"
        ]
    );
    assert_eq!(
        patterns.into_iter().collect::<Vec<_>>(),
        ["introspection_denied_unavailable_.+"]
    );
    assert!(matches(
        "envoy_wasm_.+_vm_reload",
        "envoy_wasm_a_b_vm_reload"
    ));
    assert!(!matches(
        "envoy_wasm_.+_vm_reload",
        "envoy_wasm_a_vm_reload_failure"
    ));
    assert!(!matches(
        "introspection_denied_unavailable_.+",
        "introspection_denied_unavailable_"
    ));
}

#[test]
fn dashboard_and_rules_use_metric_names_envoy_exports() {
    for name in PER_CAUSE {
        assert!(
            name.starts_with(PER_CAUSE_PREFIX) && name.len() > PER_CAUSE_PREFIX.len(),
            "{name} is not a per-cause name: only those may be allowlisted"
        );
    }
    for pattern in PER_CAUSE_PATTERNS {
        assert!(pattern.starts_with(PER_CAUSE_PREFIX), "{pattern}");
    }

    // A stack whose filter has done a bit of everything, so every series exists.
    let stack = Stack::with(
        "ops-metrics",
        StackOptions {
            plugin: json!({ "cache": { "max_entries": 100 } }),
            ..Default::default()
        },
    );
    let token = stack.user_token("7396c91e-b9f2-4f9d-8547-5e9b3332725b");
    for _ in 0..2 {
        assert_eq!(stack.get_with_token("/api/users/me", &token).status, 200);
    }
    assert_eq!(stack.get("/api/users/me", &[]).status, 401);

    // The latency histogram reaches /stats/prometheus at Envoy's next stats flush.
    let observed = stack::proc::wait_for(Duration::from_secs(20), || {
        let text = stack.envoy.stats_text(true);
        let seen = text.lines().any(|l| {
            l.starts_with("introspection_callout_latency_ms_count")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)
        });
        seen.then_some(text)
    });
    // Not seen in time: the names are checked anyway, and the missing ones reported.
    let exported = exported_names(&observed.unwrap_or_else(|| stack.envoy.stats_text(true)));

    // Envoy 1.40: the `wasmcustom.` prefix is stripped and no `envoy_` prefix is added.
    assert!(exported.contains("introspection_allowed"), "{exported:?}");
    // IntrospectionCredentialsRefused reads this one.
    assert!(exported.contains("introspection_denied_unavailable_status_4xx"));
    assert!(!exported.iter().any(|n| n.contains("wasmcustom")));
    assert!(!exported.contains("envoy_introspection_allowed"));

    let (rule_queries, recorded) = rule_queries();
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    let queries: Vec<(&str, String)> = rule_queries
        .into_iter()
        .map(|q| (RULES, q))
        .chain(dashboard_queries().into_iter().map(|q| (DASHBOARD, q)))
        .collect();
    for (source, query) in &queries {
        let (names, patterns) = names_in(query);
        for name in names {
            let known = if name.contains(':') {
                recorded.contains(&name)
            } else {
                exported.contains(&name) || PER_CAUSE.contains(&name.as_str())
            };
            if !known {
                missing.push(format!("{source}: {name}"));
            }
            used.insert(name);
        }
        for pattern in patterns {
            let known = PER_CAUSE_PATTERNS.contains(&pattern.as_str())
                || exported.iter().any(|n| matches(&pattern, n));
            if !known {
                missing.push(format!("{source}: {{__name__=~\"{pattern}\"}}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "names used in ops/ that Envoy does not export:\n{}",
        missing.join("\n")
    );
    // The check looked at the filter's names, not nothing.
    for name in [
        "introspection_allowed",
        "introspection_denied_unavailable",
        "introspection_callout_latency_ms_bucket",
        "introspection_cache_hit",
        "introspection_jwks_fetch_failed",
    ] {
        assert!(used.contains(name), "ops/ never uses {name}");
    }
}

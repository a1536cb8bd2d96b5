//! The Envoy configuration renderer: one for `stack up`, `stack render`, the end-to-end suite
//! and the benchmark.
//!
//! The template (`envoy/envoy.yaml.in`) is parsed as YAML first. A placeholder is a whole
//! string value, `"${NAME}"`, and is replaced in the parsed document by a typed value: a number
//! for a port, a string for a path or the plugin configuration. Nothing is substituted as text,
//! so a value may hold any character (`&`, `|`, `\`, `'`, `"`, newlines, `${...}`): it is never
//! read again as YAML nor as a placeholder.
//!
//! The result is written as JSON, which Envoy reads for a `.json` file. Every character outside
//! printable ASCII and below U+10000 is written as a `\uXXXX` escape, so the text also means
//! the same to a YAML parser (YAML refuses some characters JSON allows raw, and YAML 1.1 reads
//! U+2028 or U+0085 as line breaks).

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The shipped template, `envoy/envoy.yaml.in`, as built into this crate.
pub const TEMPLATE: &str = include_str!("../../envoy/envoy.yaml.in");

/// Name of the introspection filter in the template's HTTP filter chain.
pub const WASM_FILTER: &str = "envoy.filters.http.wasm";

const HCM: &str = "envoy.filters.network.http_connection_manager";

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError(pub String);

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RenderError {}

fn fail<T>(message: impl Into<String>) -> Result<T, RenderError> {
    Err(RenderError(message.into()))
}

/// The values of the shipped template's placeholders.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// `${ADMIN_PORT}`: Envoy's admin listener (0: the OS chooses).
    pub admin_port: u16,
    /// `${LISTEN_PORT}`: the SR's ingress listener (0: the OS chooses).
    pub listen_port: u16,
    /// `${SR_PORT}`: the sample SR.
    pub sr_port: u16,
    /// `${AS_PORT}`: the authorization server.
    pub as_port: u16,
    /// `${WASM_PATH}`: the filter's `.wasm`.
    pub wasm_path: &'a str,
    /// `${PLUGIN_CONFIG}`: the filter's JSON configuration, inserted byte for byte.
    pub plugin_config: &'a str,
}

impl Params<'_> {
    /// The placeholder values, by name.
    pub fn values(&self) -> BTreeMap<String, Value> {
        [
            ("ADMIN_PORT", Value::from(self.admin_port)),
            ("LISTEN_PORT", Value::from(self.listen_port)),
            ("SR_PORT", Value::from(self.sr_port)),
            ("AS_PORT", Value::from(self.as_port)),
            ("WASM_PATH", Value::from(self.wasm_path)),
            ("PLUGIN_CONFIG", Value::from(self.plugin_config)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// One listener of a multi-listener configuration (the benchmark's rows), derived from the
/// template's listener: same routes and filter chain, its own name, port and stat prefix.
/// Exactly one of `plugin_config` and `http_filters` is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Listener name, also its `stat_prefix` and, with `plugin_config`, its VM id (so each
    /// listener has its own VM and its own cache).
    pub name: String,
    /// Port; 0 (the default) lets the OS choose.
    #[serde(default)]
    pub port: u16,
    /// The filter's configuration on this listener: a JSON object (written compactly), or a
    /// string used byte for byte.
    #[serde(default)]
    pub plugin_config: Option<Value>,
    /// HTTP filters that take the introspection filter's place (`[]`: none, the router only).
    #[serde(default)]
    pub http_filters: Option<Vec<Value>>,
}

/// Parses a list of listener specifications (a JSON array).
pub fn parse_listener_specs(text: &str) -> Result<Vec<ListenerSpec>, RenderError> {
    serde_json::from_str(text).map_err(|e| RenderError(format!("listener specifications: {e}")))
}

/// Parses a YAML (or JSON) template into a document.
pub fn parse_template(text: &str) -> Result<Value, RenderError> {
    serde_yaml::from_str(text).map_err(|e| RenderError(format!("template is not YAML: {e}")))
}

/// The name inside a whole-value placeholder `${NAME}`.
fn placeholder(s: &str) -> Option<&str> {
    let name = s.strip_prefix("${")?.strip_suffix('}')?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    valid.then_some(name)
}

/// Replaces every placeholder of `doc` by its value. A `${` anywhere else (inside a longer
/// string, in a key) or a placeholder without a value is an error. Values are inserted as
/// they are and never searched for placeholders.
pub fn substitute(doc: Value, values: &BTreeMap<String, Value>) -> Result<Value, RenderError> {
    fn walk(v: Value, values: &BTreeMap<String, Value>, at: &str) -> Result<Value, RenderError> {
        match v {
            Value::String(s) => match placeholder(&s) {
                Some(name) => match values.get(name) {
                    Some(value) => Ok(value.clone()),
                    None => fail(format!("no value for ${{{name}}} (at {at})")),
                },
                None if s.contains("${") => fail(format!(
                    "`${{` in a value that is not a whole placeholder (at {at}): write \"${{NAME}}\" alone"
                )),
                None => Ok(Value::String(s)),
            },
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| walk(item, values, &format!("{at}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, item) in map {
                    if k.contains("${") {
                        return fail(format!("placeholder in a key (at {at}.{k})"));
                    }
                    let child = walk(item, values, &format!("{at}.{k}"))?;
                    out.insert(k, child);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other),
        }
    }
    walk(doc, values, "$")
}

/// Renders `template` with `params`; with `listeners`, the template's listener is replaced by
/// one listener per specification.
pub fn render_document(
    template: &str,
    params: &Params<'_>,
    listeners: &[ListenerSpec],
) -> Result<Value, RenderError> {
    let mut doc = substitute(parse_template(template)?, &params.values())?;
    if !listeners.is_empty() {
        derive_listeners(&mut doc, listeners)?;
    }
    Ok(doc)
}

/// [`render_document`], as the text to write to a `.json` file.
pub fn render(
    template: &str,
    params: &Params<'_>,
    listeners: &[ListenerSpec],
) -> Result<String, RenderError> {
    to_text(&render_document(template, params, listeners)?)
}

/// Pretty JSON in which every character that is not printable ASCII and is below U+10000 is a
/// `\uXXXX` escape: the same document for a JSON and for a YAML parser.
pub fn to_text(doc: &Value) -> Result<String, RenderError> {
    let pretty = serde_json::to_string_pretty(doc)
        .map_err(|e| RenderError(format!("cannot write the document: {e}")))?;
    let mut out = String::with_capacity(pretty.len() + 1);
    for c in pretty.chars() {
        let code = u32::from(c);
        // Outside strings serde_json writes only printable ASCII, spaces and newlines; raw
        // control characters never reach here (serde_json escapes them), DEL and non-ASCII do.
        if (0x7f..=0xffff).contains(&code) {
            let _ = write!(out, "\\u{code:04x}");
        } else {
            out.push(c);
        }
    }
    out.push('\n');
    Ok(out)
}

/// The names of a rendered document's listeners.
pub fn listener_names(doc: &Value) -> Vec<String> {
    doc.pointer("/static_resources/listeners")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The HTTP connection managers' `typed_config` of a listener.
fn managers(listener: &mut Value) -> Vec<&mut Map<String, Value>> {
    let mut out = Vec::new();
    let chains = listener
        .get_mut("filter_chains")
        .and_then(Value::as_array_mut);
    for chain in chains.into_iter().flatten() {
        let filters = chain.get_mut("filters").and_then(Value::as_array_mut);
        for filter in filters.into_iter().flatten() {
            if filter.get("name").and_then(Value::as_str) == Some(HCM) {
                if let Some(typed) = filter
                    .get_mut("typed_config")
                    .and_then(Value::as_object_mut)
                {
                    out.push(typed);
                }
            }
        }
    }
    out
}

fn has_wasm_filter(listener: &Value) -> bool {
    let mut copy = listener.clone();
    managers(&mut copy).into_iter().any(|hcm| {
        hcm.get("http_filters")
            .and_then(Value::as_array)
            .is_some_and(|fs| fs.iter().any(is_wasm_filter))
    })
}

fn is_wasm_filter(filter: &Value) -> bool {
    filter.get("name").and_then(Value::as_str) == Some(WASM_FILTER)
}

fn set(target: &mut Value, pointer: &str, value: Value) -> Result<(), RenderError> {
    match target.pointer_mut(pointer) {
        Some(slot) => {
            *slot = value;
            Ok(())
        }
        None => fail(format!("the template's listener has no {pointer} to set")),
    }
}

/// Removes the per-route settings of the introspection filter (used where it is removed).
fn drop_route_settings(hcm: &mut Map<String, Value>) {
    let hosts = hcm
        .get_mut("route_config")
        .and_then(|r| r.get_mut("virtual_hosts"))
        .and_then(Value::as_array_mut);
    for host in hosts.into_iter().flatten() {
        let routes = host.get_mut("routes").and_then(Value::as_array_mut);
        for route in routes.into_iter().flatten() {
            let Some(route) = route.as_object_mut() else {
                continue;
            };
            let empty = match route
                .get_mut("typed_per_filter_config")
                .and_then(Value::as_object_mut)
            {
                Some(per_filter) => {
                    per_filter.remove(WASM_FILTER);
                    per_filter.is_empty()
                }
                None => false,
            };
            if empty {
                route.remove("typed_per_filter_config");
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Replaces the document's listeners by one per specification, each a copy of the (first)
/// listener that carries the introspection filter.
fn derive_listeners(doc: &mut Value, specs: &[ListenerSpec]) -> Result<(), RenderError> {
    let Some(listeners) = doc
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
    else {
        return fail("the template has no static_resources.listeners");
    };
    let Some(model) = listeners.iter().find(|l| has_wasm_filter(l)).cloned() else {
        return fail(format!(
            "no listener of the template has the {WASM_FILTER} filter"
        ));
    };
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.name.as_str();
        if !valid_name(name) {
            return fail(format!(
                "listener name {name:?}: 1 to 64 of A-Z a-z 0-9 _ - ."
            ));
        }
        if !names.insert(name) {
            return fail(format!("listener name {name:?} given twice"));
        }
        let mut listener = model.clone();
        set(&mut listener, "/name", Value::from(name))?;
        set(
            &mut listener,
            "/address/socket_address/port_value",
            Value::from(spec.port),
        )?;
        for hcm in managers(&mut listener) {
            hcm.insert("stat_prefix".to_owned(), Value::from(name));
            let Some(filters) = hcm.get_mut("http_filters").and_then(Value::as_array_mut) else {
                continue;
            };
            let Some(at) = filters.iter().position(is_wasm_filter) else {
                continue;
            };
            match (&spec.plugin_config, &spec.http_filters) {
                (Some(config), None) => {
                    let text = match config {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let Some(wasm) = filters.get_mut(at) else {
                        continue;
                    };
                    set(
                        wasm,
                        "/typed_config/config/configuration/value",
                        Value::from(text),
                    )?;
                    set(
                        wasm,
                        "/typed_config/config/vm_config/vm_id",
                        Value::from(name),
                    )?;
                }
                (None, Some(replacement)) => {
                    filters.splice(at..=at, replacement.iter().cloned());
                    drop_route_settings(hcm);
                }
                _ => {
                    return fail(format!(
                        "listener {name:?}: give either plugin_config or http_filters"
                    ))
                }
            }
        }
        out.push(listener);
    }
    *listeners = out;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a YAML parser makes of the text (it must be the same document as for JSON).
    fn as_yaml(text: &str) -> Value {
        serde_yaml::from_str(text).expect("the rendered text is YAML")
    }

    fn as_json(text: &str) -> Value {
        serde_json::from_str(text).expect("the rendered text is JSON")
    }

    fn params<'a>(plugin: &'a str, wasm: &'a str) -> Params<'a> {
        Params {
            admin_port: 9901,
            listen_port: 0,
            sr_port: 18081,
            as_port: 18090,
            wasm_path: wasm,
            plugin_config: plugin,
        }
    }

    fn plugin_value(doc: &Value) -> &str {
        let listener = &doc["static_resources"]["listeners"][0];
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .expect("configuration.value is a string")
    }

    /// Plugin configurations with every character a text substitution would trip on.
    const HOSTILE: &[&str] = &[
        r#"{"client_secret":"a&b|c\\d'e\"f","x":"${PLUGIN_CONFIG}","y":"${AS_PORT} ${}"}"#,
        "{\n  \"authority\": \"it's | & \\\\ \\\" \\n\",\n\t\"k\": \"$${WASM_PATH}}\"\r\n}",
        "{\"u\":\"\u{e9}\u{2028}\u{2029}\u{85}\u{feff}\u{7f}\u{fffe}\u{1f600}\"}",
        "' \" & | \\ ${LISTEN_PORT} --- \n: - [ ] { } # % @ `",
        "",
    ];

    #[test]
    fn hostile_plugin_configurations_arrive_byte_for_byte() {
        for plugin in HOSTILE {
            let text = render(TEMPLATE, &params(plugin, "/opt/f.wasm"), &[]).expect("render");
            let json = as_json(&text);
            assert_eq!(plugin_value(&json), *plugin, "JSON reading of {text}");
            assert_eq!(
                as_yaml(&text),
                json,
                "YAML and JSON readings differ: {text}"
            );
        }
    }

    #[test]
    fn hostile_paths_arrive_byte_for_byte() {
        let wasm = "/tmp/a b/it's & | \\ \"q\" ${WASM_PATH}\n/f.wasm";
        let text = render(TEMPLATE, &params("{}", wasm), &[]).expect("render");
        let doc = as_json(&text);
        assert_eq!(as_yaml(&text), doc);
        let listener = &doc["static_resources"]["listeners"][0];
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        let code = &hcm["http_filters"][0]["typed_config"]["config"]["vm_config"]["code"];
        assert_eq!(code["local"]["filename"], wasm);
    }

    #[test]
    fn the_text_is_printable_ascii_apart_from_astral_characters() {
        let text = render(TEMPLATE, &params(HOSTILE[2], "/w"), &[]).expect("render");
        for c in text.chars() {
            assert!(
                c == '\n' || (' '..='~').contains(&c) || u32::from(c) > 0xffff,
                "{c:?} written raw"
            );
        }
        assert!(text.contains("\\u2028") && text.contains('\u{1f600}'));
    }

    #[test]
    fn ports_are_numbers_and_every_placeholder_of_the_template_is_filled() {
        let doc = render_document(TEMPLATE, &params("{}", "/w"), &[]).expect("render");
        assert_eq!(
            doc["admin"]["address"]["socket_address"]["port_value"],
            json!(9901)
        );
        let listener = &doc["static_resources"]["listeners"][0];
        assert_eq!(
            listener["address"]["socket_address"]["port_value"],
            json!(0)
        );
        let ports: Vec<&Value> = doc["static_resources"]["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .map(|c| {
                &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                    ["socket_address"]["port_value"]
            })
            .collect();
        assert_eq!(ports, [&json!(18081), &json!(18090)]);
        assert!(!to_text(&doc).expect("text").contains("${"));
        assert_eq!(listener_names(&doc), ["sr_ingress"]);
    }

    #[test]
    fn a_placeholder_without_a_value_or_inside_a_string_is_refused() {
        let values = params("{}", "/w").values();
        let missing = parse_template("a: \"${NOPE}\"").expect("yaml");
        assert!(substitute(missing, &values)
            .expect_err("unknown placeholder")
            .0
            .contains("${NOPE}"));
        for template in [
            "a: \"x${AS_PORT}\"",
            "a: [1, \"${AS_PORT}/\"]",
            "\"${AS_PORT}\": 1",
        ] {
            let doc = parse_template(template).expect("yaml");
            assert!(substitute(doc, &values).is_err(), "{template}");
        }
        // A `${` that is not a valid whole placeholder is refused too...
        let doc = parse_template("a: \"$x {y}\"\nb: \"${lower}\"").expect("yaml");
        assert!(substitute(doc, &values).is_err());
        // ...while a `$` alone is just text.
        let doc = parse_template("a: \"$ {X}\"").expect("yaml");
        assert_eq!(
            substitute(doc, &values).expect("plain"),
            json!({"a": "$ {X}"})
        );
    }

    #[test]
    fn a_value_is_never_searched_for_placeholders() {
        let values: BTreeMap<String, Value> = [
            ("A".to_owned(), json!("${B}")),
            ("B".to_owned(), json!("unused")),
        ]
        .into_iter()
        .collect();
        let doc = parse_template("a: \"${A}\"").expect("yaml");
        assert_eq!(
            substitute(doc, &values).expect("render"),
            json!({"a": "${B}"})
        );
    }

    fn bench_like_specs() -> Vec<ListenerSpec> {
        parse_listener_specs(
            &json!([
                { "name": "baseline", "http_filters": [] },
                { "name": "hit", "plugin_config": { "cluster": "c", "cache": {} } },
                { "name": "miss-rs256", "port": 12345, "plugin_config": "{\"raw\": \"&|'\"}" },
                { "name": "lua", "http_filters": [ { "name": "envoy.filters.http.lua" } ] }
            ])
            .to_string(),
        )
        .expect("specs")
    }

    #[test]
    fn listeners_are_derived_from_the_template_listener() {
        let doc =
            render_document(TEMPLATE, &params("{}", "/w"), &bench_like_specs()).expect("render");
        assert_eq!(
            listener_names(&doc),
            ["baseline", "hit", "miss-rs256", "lua"]
        );
        let ls = doc["static_resources"]["listeners"]
            .as_array()
            .expect("listeners");
        let hcm = |i: usize| &ls[i]["filter_chains"][0]["filters"][0]["typed_config"];
        let filter_names = |i: usize| -> Vec<&str> {
            hcm(i)["http_filters"]
                .as_array()
                .expect("http_filters")
                .iter()
                .map(|f| f["name"].as_str().expect("name"))
                .collect()
        };
        assert_eq!(filter_names(0), ["envoy.filters.http.router"]);
        assert_eq!(filter_names(1), [WASM_FILTER, "envoy.filters.http.router"]);
        assert_eq!(
            filter_names(3),
            ["envoy.filters.http.lua", "envoy.filters.http.router"]
        );
        for (i, name) in ["baseline", "hit", "miss-rs256", "lua"].iter().enumerate() {
            assert_eq!(hcm(i)["stat_prefix"], *name);
        }
        assert_eq!(ls[2]["address"]["socket_address"]["port_value"], 12345);
        assert_eq!(ls[1]["address"]["socket_address"]["port_value"], 0);
        let config = |i: usize| &hcm(i)["http_filters"][0]["typed_config"]["config"];
        assert_eq!(config(1)["vm_config"]["vm_id"], "hit");
        assert_eq!(config(2)["vm_config"]["vm_id"], "miss-rs256");
        assert_eq!(
            config(1)["configuration"]["value"],
            r#"{"cache":{},"cluster":"c"}"#
        );
        assert_eq!(config(2)["configuration"]["value"], "{\"raw\": \"&|'\"}");
        // Where the filter is gone, so are its per-route settings; elsewhere they stay.
        let text = to_text(&doc).expect("text");
        assert_eq!(text.matches("FilterConfig").count(), 2, "{text}");
    }

    #[test]
    fn bad_listener_specifications_are_refused() {
        let p = params("{}", "/w");
        for specs in [
            json!([{ "name": "a", "http_filters": [] }, { "name": "a", "http_filters": [] }]),
            json!([{ "name": "", "http_filters": [] }]),
            json!([{ "name": "a b", "http_filters": [] }]),
            json!([{ "name": "a" }]),
            json!([{ "name": "a", "http_filters": [], "plugin_config": {} }]),
        ] {
            let specs = parse_listener_specs(&specs.to_string()).expect("parses");
            assert!(render(TEMPLATE, &p, &specs).is_err(), "{specs:?}");
        }
        assert!(parse_listener_specs(r#"[{"name":"a","plugin":{}}]"#).is_err());
        assert!(render("static_resources: {}", &p, &bench_like_specs()).is_err());
    }
}

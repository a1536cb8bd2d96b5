//! The core's modules import each other without cycles: each reads like the RFC it implements
//! and can be understood from the modules below it. The modules of `introspection-jose` and
//! `introspection-jwk` (which the core re-exports under their names, and which cannot import the
//! core's) are in the graph.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `module -> modules it names as crate::<module>` (comments left out), for the core, jose and jwk.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = ["src", "../jose/src", "../jwk/src"].map(|dir| manifest.join(dir));
    let mut graph = BTreeMap::new();
    for entry in dirs.iter().flat_map(|dir| std::fs::read_dir(dir).unwrap()) {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" {
            continue;
        }
        assert!(!graph.contains_key(&name), "two modules named {name}");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut deps = BTreeSet::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for part in line.split("crate::").skip(1) {
                let module: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !module.is_empty() && module != name {
                    deps.insert(module);
                }
            }
        }
        graph.insert(name, deps);
    }
    graph
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = imports();
    assert!(graph.len() > 10, "modules found: {graph:?}");
    // Kahn: repeatedly remove modules whose imports are all removed.
    let mut left = graph.clone();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(!ready.is_empty(), "cycle among {:?}", left.keys());
        for m in ready {
            left.remove(&m);
        }
    }
}

#[test]
fn leaves_import_nothing_of_the_crate() {
    let graph = imports();
    for leaf in [
        "claims",
        "der",
        "bearer",
        "headers",
        "schedule",
        "secret",
        "discovery",
    ] {
        assert_eq!(graph[leaf], BTreeSet::new(), "{leaf}");
    }
}

//! The shipped module's exports (src/exports.txt, applied by `make wasm`): Envoy calls every
//! exported callback on every request and skips the others, so the module must export exactly
//! the callbacks the filter implements — no fewer (Envoy would never call one), no more (a VM
//! entry per request for nothing).

use std::collections::BTreeSet;

use e2e::{root, wasm_path};

/// The adapter's trait methods and the ABI export the SDK routes to each.
const CALLBACKS: &[(&str, &str)] = &[
    ("on_vm_start", "proxy_on_vm_start"),
    ("on_configure", "proxy_on_configure"),
    ("on_tick", "proxy_on_tick"),
    ("on_queue_ready", "proxy_on_queue_ready"),
    ("on_http_call_response", "proxy_on_http_call_response"),
    ("on_grpc_call_response", "proxy_on_grpc_receive"),
    ("on_foreign_function", "proxy_on_foreign_function"),
    ("on_http_request_headers", "proxy_on_request_headers"),
    ("on_http_request_body", "proxy_on_request_body"),
    ("on_http_request_trailers", "proxy_on_request_trailers"),
    ("on_http_response_headers", "proxy_on_response_headers"),
    ("on_http_response_body", "proxy_on_response_body"),
    ("on_http_response_trailers", "proxy_on_response_trailers"),
    ("on_log", "proxy_on_log"),
    ("on_done", "proxy_on_done"),
];

fn leb(bytes: &[u8], pos: &mut usize) -> usize {
    let mut value = 0usize;
    let mut shift = 0;
    loop {
        let byte = bytes[*pos];
        *pos += 1;
        value |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte < 0x80 {
            return value;
        }
    }
}

/// The names in a module's export section.
fn exports(module: &[u8]) -> BTreeSet<String> {
    assert_eq!(&module[..8], b"\0asm\x01\0\0\0", "not a wasm module");
    let mut pos = 8;
    while pos < module.len() {
        let id = module[pos];
        pos += 1;
        let size = leb(module, &mut pos);
        let end = pos + size;
        if id == 7 {
            let mut names = BTreeSet::new();
            for _ in 0..leb(module, &mut pos) {
                let len = leb(module, &mut pos);
                names.insert(String::from_utf8(module[pos..pos + len].to_vec()).unwrap());
                pos += len + 1; // the name, then the kind
                leb(module, &mut pos); // the index
            }
            return names;
        }
        pos = end;
    }
    BTreeSet::new()
}

fn listed() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("src/exports.txt"))
        .unwrap()
        .lines()
        .filter_map(|line| line.split('#').next())
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn the_module_exports_exactly_the_listed_names() {
    let module = std::fs::read(wasm_path()).unwrap();
    let exported = exports(&module);
    let listed = listed();
    assert_eq!(
        exported, listed,
        "the module's exports are not src/exports.txt"
    );
    for not_needed in [
        "proxy_on_response_headers",
        "proxy_on_response_body",
        "proxy_on_log",
        "proxy_on_done",
    ] {
        assert!(!exported.contains(not_needed), "{not_needed} is exported");
    }
    // The SDK creates and drops each request's context on these; the gate forgets a request
    // when its context is dropped.
    for needed in ["proxy_on_context_create", "proxy_on_delete"] {
        assert!(exported.contains(needed), "{needed} is not exported");
    }
}

#[test]
fn every_callback_the_adapter_implements_is_listed() {
    let source = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let listed = listed();
    let mut implemented = 0;
    for (method, export) in CALLBACKS {
        if source.contains(&format!("fn {method}(")) {
            implemented += 1;
            assert!(
                listed.contains(*export),
                "src/lib.rs implements {method}: list {export}"
            );
        } else {
            // Only the SDK's default would run: nothing to enter the VM for.
            assert!(
                !listed.contains(*export),
                "{export} is listed but src/lib.rs does not implement {method}"
            );
        }
    }
    // Every callback src/lib.rs defines is one CALLBACKS maps to its export.
    for line in source.lines() {
        let Some(rest) = line.trim_start().strip_prefix("fn on_") else {
            continue;
        };
        let method = format!("on_{}", rest.split('(').next().unwrap());
        assert!(
            CALLBACKS.iter().any(|(m, _)| *m == method),
            "src/lib.rs defines {method}, which CALLBACKS does not map to an export"
        );
    }
    // The request's own callbacks, the callouts, the timer and the configuration.
    assert_eq!(
        implemented, 7,
        "src/lib.rs implements another set of callbacks than the 7 listed"
    );
    // A request's end reaches the gate from the context's drop, at `proxy_on_delete`.
    assert!(source.contains("impl Drop for Request"));
    assert!(listed.contains("proxy_on_delete"));
}

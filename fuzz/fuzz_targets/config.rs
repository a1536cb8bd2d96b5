//! The configuration parser: never panics, and an error never repeats a value of the input
//! (a secret pasted into the wrong field must not reach the log).
#![no_main]

use introspection_core::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Err(error) = Config::from_json(data) else {
        return;
    };
    let shown = error.to_string();
    // Every string value of the input that is long enough to be a secret.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let mut strings = Vec::new();
        collect(&value, &mut strings);
        for s in strings.iter().filter(|s| s.len() >= 12) {
            assert!(!shown.contains(s.as_str()), "error echoes a value: {shown}");
        }
    }
});

fn collect(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect(v, out)),
        _ => {}
    }
}

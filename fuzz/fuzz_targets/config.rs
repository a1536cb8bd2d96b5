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
        let (mut strings, mut keys) = (Vec::new(), Vec::new());
        collect(&value, &mut strings, &mut keys);
        // A field may be named by its key; a value that is also part of a key is not told apart.
        let in_a_key = |s: &str| keys.iter().any(|k: &String| k.contains(s));
        for s in strings.iter().filter(|s| s.len() >= 12 && !in_a_key(s)) {
            assert!(!shown.contains(s.as_str()), "error echoes a value: {shown}");
        }
    }
});

/// Every string value, and every key, of a JSON document.
fn collect(value: &serde_json::Value, out: &mut Vec<String>, keys: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out, keys)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                keys.push(k.clone());
                collect(v, out, keys);
            }
        }
        _ => {}
    }
}

//! The configuration parser: never panics, and an error never repeats a value of the input
//! (a secret pasted into the wrong field must not reach the log).
#![no_main]

use introspection_core::Config;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Err(error) = Config::from_json(data) else {
        return;
    };
    let shown = error.to_string();
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut strings = Vec::new();
    collect(&value, &mut strings);
    // Twelve bytes of a string value found in the error may still be the filter's own words
    // (`onfiguration` in "invalid configuration", a variant name such as `raw_or_base64`).
    // They are an echo if the error follows them: the same input with those twelve bytes
    // spelled otherwise (the rest of the value kept) gives an error holding the new spelling.
    for s in &strings {
        for (at, part) in windows(s, 12) {
            if !shown.contains(part) {
                continue;
            }
            let other = respell(part);
            if other == part || shown.contains(&other) {
                continue; // nothing to respell (`......`), or shown anyway (in a key): no way to tell
            }
            let respelled = format!("{}{other}{}", &s[..at], &s[at + part.len()..]);
            let mut changed = value.clone();
            replace(&mut changed, s, &respelled);
            if let Err(again) = Config::from_json(changed.to_string().as_bytes()) {
                let again = again.to_string();
                assert!(
                    !again.contains(&other),
                    "error echoes a value: {shown} / {again}"
                );
            }
        }
    }
});

/// The substrings of `s` of `len` bytes that start and end on character boundaries, with
/// their offsets.
fn windows(s: &str, len: usize) -> impl Iterator<Item = (usize, &str)> {
    (0..s.len()).filter_map(move |i| Some((i, s.get(i..i.checked_add(len)?)?)))
}

/// Every string value of a JSON document, but a rule's `name`: a label that errors show on
/// purpose (`rules[2] (admin)`).
fn collect(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                if !(k == "name" && v.is_string()) {
                    collect(v, out);
                }
            }
        }
        _ => {}
    }
}

/// The same length and shape, every ASCII letter and digit moved one place on.
fn respell(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            c if c.is_ascii_alphanumeric() => char::from(c as u8 + 1),
            c => c,
        })
        .collect()
}

/// `value` with every string value equal to `from` replaced by `to` (keys unchanged).
fn replace(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s == from => *s = to.to_string(),
        Value::Array(items) => items.iter_mut().for_each(|v| replace(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| replace(v, from, to)),
        _ => {}
    }
}

//! The proxy-wasm header-map decoder: never panics, and what it accepts is exactly what the
//! encoder writes back.
#![no_main]

use introspection_core::headers::{decode_pairs, encode_pairs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(pairs) = decode_pairs(data) {
        if !data.is_empty() {
            assert_eq!(encode_pairs(&pairs), data);
        }
    }
});

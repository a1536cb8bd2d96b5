//! The `Authorization` parser and the bearer encodings: never panic; a token found is a
//! b64token taken from the input.
#![no_main]

use introspection_core::bearer::{self, BearerEncoding, Credentials};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Up to three header values, split on NUL.
    let values: Vec<&[u8]> = data.split(|&b| b == 0).take(3).collect();
    let values = if data.is_empty() { Vec::new() } else { values };
    if let Credentials::Bearer(token) = bearer::extract(&values, 4096) {
        assert!(bearer::is_b64token(token.as_bytes()));
        assert!(values
            .iter()
            .any(|v| v.windows(token.len()).any(|w| w == token.as_bytes())));
        for encoding in [
            BearerEncoding::Raw,
            BearerEncoding::Base64,
            BearerEncoding::RawOrBase64,
        ] {
            if let Ok(decoded) = bearer::decode(token, encoding) {
                assert!(bearer::is_b64token(decoded.as_bytes()));
            }
        }
    }
});

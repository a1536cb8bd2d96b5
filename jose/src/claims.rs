//! Claims of an introspection answer and the time values they carry. A leaf: every module that
//! reads claims imports it, it imports none of them.

use serde_json::{Map, Value};

/// Claims of one introspection answer (the JSON object, or RFC 9701's `token_introspection`).
pub type Claims = Map<String, Value>;

/// A unix time: a JSON integer (or a float, truncated), or a string of digits (some PHP servers).
pub fn unix_seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s)
            if !s.is_empty() && s.len() < 16 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unix_seconds_forms() {
        assert_eq!(unix_seconds(&json!(5)), Some(5));
        assert_eq!(unix_seconds(&json!(5.9)), Some(5));
        assert_eq!(unix_seconds(&json!("17")), Some(17));
        assert_eq!(unix_seconds(&json!("-1")), None);
        assert_eq!(unix_seconds(&json!(null)), None);
        assert_eq!(unix_seconds(&json!(1e300)), None);
    }
}

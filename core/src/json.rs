//! Strict JSON for answers from the authorization server: an object with the same member twice
//! (`{"active":false,…,"active":true}`) is ambiguous — parsers disagree on which one counts —
//! so it is refused at every depth instead of letting the last one win. A leaf module.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not strict JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON (or nested deeper than serde_json's recursion limit).
    Syntax,
    /// Some object holds the same member twice.
    Duplicate,
}

const DUPLICATE: &str = "duplicate member";

/// Parses `bytes` as JSON, refusing duplicated members in any object.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(value)) => Ok(value),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(JsonError::Duplicate),
        Err(_) => Err(JsonError::Syntax),
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicated_top_level_member_is_refused() {
        assert_eq!(
            parse_strict(br#"{"active":false,"sub":"alice","active":true}"#),
            Err(JsonError::Duplicate)
        );
    }

    #[test]
    fn a_duplicated_nested_member_is_refused() {
        assert_eq!(
            parse_strict(br#"{"token_introspection":{"sub":"a","sub":"b"}}"#),
            Err(JsonError::Duplicate)
        );
        assert_eq!(
            parse_strict(br#"[{"a":1},{"b":1,"b":2}]"#),
            Err(JsonError::Duplicate)
        );
    }

    #[test]
    fn the_same_member_in_sibling_objects_is_fine() {
        let v = parse_strict(br#"{"a":{"x":1},"b":{"x":2},"c":[1,"x",null,true,-2,1.5]}"#);
        assert_eq!(v.unwrap()["b"]["x"], 2);
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_crash() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(parse_strict(deep.as_bytes()), Err(JsonError::Syntax));
    }

    #[test]
    fn escaped_spellings_of_one_member_are_the_same_member() {
        assert_eq!(
            parse_strict(br#"{"active":false,"\u0061ctive":true}"#),
            Err(JsonError::Duplicate)
        );
    }
}

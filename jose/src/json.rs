//! Strict JSON for answers from the authorization server: an object with the same member twice
//! (`{"active":false,…,"active":true}`) is ambiguous — parsers disagree on which one counts —
//! so it is refused at every depth instead of letting the last one win. A leaf module.

use std::borrow::Cow;
use std::collections::BTreeSet;
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

/// Checks that `bytes` is JSON without duplicated members, building nothing: for bodies another
/// parser reads afterwards.
pub fn check_strict(bytes: &[u8]) -> Result<(), JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let checked = deserializer
        .deserialize_any(CheckVisitor)
        .and_then(|()| deserializer.end());
    match checked {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(JsonError::Duplicate),
        Err(_) => Err(JsonError::Syntax),
    }
}

/// A JSON value read strictly, for fields of a type another parser reads: deserializing it
/// fails with an error whose text starts with [`is_duplicate`]'s prefix when an object in it
/// holds the same member twice.
pub struct Strict(pub Value);

/// Whether a deserialization error (its text) is a duplicated member found by [`Strict`],
/// [`Checked`] or a derived `Deserialize` (serde's own "duplicate field").
pub fn is_duplicate(error: &impl fmt::Display) -> bool {
    error.to_string().starts_with("duplicate")
}

/// The error for a duplicated member (recognised by [`is_duplicate`]).
pub fn refuse_duplicate<E: de::Error>() -> E {
    E::custom(DUPLICATE)
}

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

/// Walks a value without keeping it; objects keep only their keys, to find a repeated one.
struct CheckVisitor;

/// A JSON value walked strictly and dropped (see [`Strict`]).
pub struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckVisitor).map(|()| Checked)
    }
}

/// Reads an object's members in order, each name once: a name given again fails with the
/// duplicate error ([`is_duplicate`]). `read` is shown each new name and consumes the member's
/// value when it wants it (returning `true`); any other value is walked strictly ([`Checked`])
/// and dropped. The names seen are kept in a set: the cost stays near-linear in the number of
/// members, however many a hostile body holds.
pub fn members<'de, A: MapAccess<'de>>(
    mut map: A,
    mut read: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<(), A::Error> {
    let mut seen = BTreeSet::new();
    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
        if seen.contains(&key) {
            return Err(refuse_duplicate());
        }
        if !read(&key, &mut map)? {
            map.next_value::<Checked>()?;
        }
        seen.insert(key);
    }
    Ok(())
}

/// A member name, borrowed from the input unless it holds escapes.
pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_string())))
    }
}

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        members(map, |_, _| Ok(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both readers on one input: the same verdict.
    fn both(bytes: &[u8]) -> Result<(), JsonError> {
        let checked = check_strict(bytes);
        assert_eq!(parse_strict(bytes).map(|_| ()), checked, "{bytes:?}");
        checked
    }

    #[test]
    fn the_checker_agrees_with_the_parser() {
        for case in [
            &br#"{"active":false,"sub":"alice","active":true}"#[..],
            br#"{"token_introspection":{"sub":"a","sub":"b"}}"#,
            br#"[{"a":1},{"b":1,"b":2}]"#,
            br#"{"a":{"x":1},"b":{"x":2},"c":[1,"x",null,true,-2,1.5]}"#,
            br#"{"active":false,"\u0061ctive":true}"#,
            br#"{"\u0061":1,"a\u0062":2,"ab":3}"#,
            br#"{"a":1} trailing"#,
            br#"{"a":1}   "#,
            b"",
            b"nul",
            br#"{"a":"\ud800"}"#,
            br#"{"a":18446744073709551616}"#,
        ] {
            both(case).ok();
        }
        assert_eq!(both(br#"{"x":[{"k":1,"k":1}]}"#), Err(JsonError::Duplicate));
        assert_eq!(both(br#"{"x":[{"k":1},{"k":1}]}"#), Ok(()));
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(both(deep.as_bytes()), Err(JsonError::Syntax));
    }

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

//! JSON read with its duplicate keys noticed.
//!
//! RFC 8259 §4 leaves a repeated object key's meaning to the reader, and `serde_json::Value` keeps
//! the last value silently, so a reading `{"temp": 21.5, "temp": 99}` would lose one value with
//! nobody told. [`CheckedJson`] parses exactly like `serde_json::Value` (same parser, same depth
//! limit, same numbers) and records the first repeated key, so the router can refuse the message
//! with a reason. Written here because no maintained crate offers a duplicate-aware `Value`
//! (serde_json's own visitor is private).

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A JSON value and the first key found twice in one of its objects, if any (as a dot path
/// from the root: `readings.3.temp`).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedJson {
    pub value: Value,
    pub duplicate_key: Option<String>,
}

impl From<Value> for CheckedJson {
    /// A value that is already a map cannot hold a key twice.
    fn from(value: Value) -> Self {
        Self {
            value,
            duplicate_key: None,
        }
    }
}

impl Serialize for CheckedJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl CheckedJson {
    /// Parses `bytes` as one JSON document (trailing non-whitespace is an error, as with
    /// `serde_json::from_slice`).
    ///
    /// # Errors
    /// serde_json's error for text that is not one JSON document.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl<'de> Deserialize<'de> for CheckedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let found = RefCell::new(None);
        let value = Seed {
            found: &found,
            path: "",
        }
        .deserialize(deserializer)?;
        Ok(Self {
            value,
            duplicate_key: found.into_inner(),
        })
    }
}

struct Seed<'a> {
    found: &'a RefCell<Option<String>>,
    path: &'a str,
}

impl Seed<'_> {
    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("JSON numbers are finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            // Paths are only built while no duplicate is known, and only for containers' children.
            let path = if self.found.borrow().is_none() {
                self.child(&items.len().to_string())
            } else {
                String::new()
            };
            let seed = Seed {
                found: self.found,
                path: &path,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = self.child(&key);
            let value = map.next_value_seed(Seed {
                found: self.found,
                path: &path,
            })?;
            if fields.insert(key, value).is_some() {
                let mut found = self.found.borrow_mut();
                if found.is_none() {
                    *found = Some(path);
                }
            }
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_like_serde_json() {
        let text = br#"{"a": [1, -2, 3.5, true, null, "x"], "b": {"c": 18446744073709551615}}"#;
        let checked = CheckedJson::from_slice(text).unwrap();
        let plain: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(checked.value, plain);
        assert_eq!(checked.duplicate_key, None);
    }

    #[test]
    fn the_first_repeated_key_is_named_with_its_path() {
        let checked =
            CheckedJson::from_slice(br#"{"temp": 21.5, "temp": 99, "ok": true}"#).unwrap();
        assert_eq!(checked.duplicate_key.as_deref(), Some("temp"));
        let nested = CheckedJson::from_slice(
            br#"{"readings": [{"t": 1}, {"env": {"co2": 1, "co2": 2}}], "x": {"y": 1, "y": 2}}"#,
        )
        .unwrap();
        assert_eq!(nested.duplicate_key.as_deref(), Some("readings.1.env.co2"));
    }

    #[test]
    fn trailing_documents_are_errors() {
        assert!(CheckedJson::from_slice(br#"{"a": 1} {"b": 2}"#).is_err());
        assert!(CheckedJson::from_slice(b"{\"a\": 1}\n  ").is_ok());
    }

    #[test]
    fn deep_nesting_hits_serde_json_s_recursion_limit() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(CheckedJson::from_slice(deep.as_bytes()).is_err());
    }

    #[test]
    fn serializes_as_its_value() {
        let checked = CheckedJson::from(json!({"a": 1}));
        assert_eq!(serde_json::to_string(&checked).unwrap(), r#"{"a":1}"#);
    }
}

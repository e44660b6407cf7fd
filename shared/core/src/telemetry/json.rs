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
    /// The parsed document; of a repeated key's values it keeps the first.
    pub value: Value,
    /// The first repeated key as a dot path (`readings.3.temp`); `None` when no key repeats.
    pub duplicate_key: Option<String>,
    /// Objects and arrays the document held (0 when made from a `Value`).
    pub containers: usize,
}

impl From<Value> for CheckedJson {
    /// A value that is already a map cannot hold a key twice.
    fn from(value: Value) -> Self {
        Self {
            value,
            duplicate_key: None,
            containers: 0,
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
    /// `serde_json::from_slice`), refusing more than [`MAX_CONTAINERS`] objects and arrays as
    /// soon as the count is passed.
    ///
    /// # Errors
    /// serde_json's error for text that is not one JSON document or holds too many containers.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let checked = Self::read(&mut deserializer, MAX_CONTAINERS)?;
        deserializer.end()?;
        Ok(checked)
    }

    /// Reads one value, failing once more than `limit` containers were read.
    fn read<'de, D: Deserializer<'de>>(deserializer: D, limit: usize) -> Result<Self, D::Error> {
        let state = RefCell::new(State {
            limit,
            ..State::default()
        });
        let value = Seed {
            state: &state,
            depth: 0,
        }
        .deserialize(deserializer)?;
        let state = state.into_inner();
        let duplicate_key = state.duplicate.map(|d| {
            let mut segments = d.segments;
            segments.reverse();
            segments.join(".")
        });
        Ok(Self {
            value,
            duplicate_key,
            containers: state.containers,
        })
    }
}

/// One scalar (number, boolean, string or null) as `serde_json::Value` holds it, read with the
/// same visitor as a document; an object or array is an error before any of it is read (a
/// container limit of 0). The flat reader's values (`flat`).
///
/// # Errors
/// The deserializer's error, or a custom one for an object or array.
pub(crate) fn scalar<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    let state = RefCell::new(State::default());
    Seed {
        state: &state,
        depth: 0,
    }
    .deserialize(deserializer)
}

/// Most objects and arrays one document may hold. Each costs an allocation of several hundred
/// bytes once parsed, so a 1 MiB payload of tiny nested objects (`{"":{"":1}}` × 100,000) would
/// otherwise take over 100 MB; a 10,000-reading batch with a nested object per reading needs
/// about 20,000.
pub const MAX_CONTAINERS: usize = 40_000;

/// The first duplicate found, its path collected on the way back up: segments from the
/// duplicate's level upward, and the depth of the object that held it (the root is 0); the
/// container at depth `j` above it adds its segment when `depth - j` segments are there.
struct Duplicate {
    segments: Vec<String>,
    depth: usize,
}

#[derive(Default)]
struct State {
    duplicate: Option<Duplicate>,
    containers: usize,
    limit: usize,
}

/// As a whole Lambda event (a direct rule invocation carries the device's payload inside it),
/// the document is read without the container limit — the event is bounded by IoT Core's 128 KB
/// — and the count is kept in [`CheckedJson::containers`] for the router to refuse the message
/// with a reason instead of failing the invocation.
impl<'de> Deserialize<'de> for CheckedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::read(deserializer, usize::MAX)
    }
}

struct Seed<'a> {
    state: &'a RefCell<State>,
    depth: usize,
}

impl Seed<'_> {
    fn child(&self) -> Seed<'_> {
        Seed {
            state: self.state,
            depth: self.depth + 1,
        }
    }

    /// Counts a container against [`MAX_CONTAINERS`].
    fn container<E: de::Error>(&self) -> Result<(), E> {
        let mut state = self.state.borrow_mut();
        state.containers += 1;
        if state.containers > state.limit {
            return Err(match state.limit {
                0 => E::custom("an object or array where a scalar was expected"),
                _ => E::custom(format_args!(
                    "more than {MAX_CONTAINERS} objects and arrays in one payload"
                )),
            });
        }
        Ok(())
    }

    /// After a child returned: when the duplicate was found below it and its path has reached
    /// this level, this level adds its own segment (built only then: no path is copied while
    /// parsing, so long keys cost nothing extra).
    fn on_the_way_up(&self, segment: impl FnOnce() -> String) {
        let mut state = self.state.borrow_mut();
        if let Some(d) = &mut state.duplicate
            && d.depth > self.depth
            && d.segments.len() == d.depth - self.depth
        {
            d.segments.push(segment());
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
        self.container()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(self.child())? {
            let index = items.len();
            self.on_the_way_up(|| index.to_string());
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.container()?;
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.child())?;
            self.on_the_way_up(|| key.clone());
            match fields.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                serde_json::map::Entry::Occupied(slot) => {
                    let mut state = self.state.borrow_mut();
                    if state.duplicate.is_none() {
                        state.duplicate = Some(Duplicate {
                            segments: vec![slot.key().clone()],
                            depth: self.depth,
                        });
                    }
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
    fn a_duplicate_s_path_is_built_once_however_long_the_keys() {
        // A 64 KB key and a long array before the duplicate: no path is copied per element.
        let long = "k".repeat(65_536);
        let zeros = vec!["0"; 30_000].join(",");
        let text = format!(r#"{{"{long}": [{zeros}], "x": [{{"a": 1, "a": 2}}]}}"#);
        let checked = CheckedJson::from_slice(text.as_bytes()).unwrap();
        assert_eq!(checked.duplicate_key.as_deref(), Some("x.0.a"));
        let later = CheckedJson::from_slice(
            br#"{"a": [1, {"b": 1}], "c": {"d": 1, "d": 2}, "e": {"f": 1, "f": 1}}"#,
        )
        .unwrap();
        assert_eq!(later.duplicate_key.as_deref(), Some("c.d"));
    }

    #[test]
    fn objects_and_arrays_are_budgeted() {
        let many = format!("[{}]", vec![r#"{"":{"":1}}"#; MAX_CONTAINERS / 2].join(","));
        let err = CheckedJson::from_slice(many.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("objects and arrays"), "{err}");
        // As a whole Lambda event it is read, and counted, for the router to refuse.
        let event: CheckedJson = serde_json::from_str(&many).unwrap();
        assert_eq!(event.containers, MAX_CONTAINERS + 1);
        let fits = format!("[{}]", vec![r#"{"":1}"#; MAX_CONTAINERS - 1].join(","));
        assert!(CheckedJson::from_slice(fits.as_bytes()).is_ok());
    }

    #[test]
    fn a_scalar_is_read_as_a_value_and_a_container_is_refused_unread() {
        let read = |text: &str| scalar(&mut serde_json::Deserializer::from_str(text));
        for text in [
            "1.5",
            "-7",
            "18446744073709551615",
            "true",
            "null",
            "\"x\\u0041\"",
        ] {
            assert_eq!(
                read(text).unwrap(),
                serde_json::from_str::<Value>(text).unwrap()
            );
        }
        assert!(read("[1]").is_err());
        assert!(read("{\"a\": 1}").is_err());
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

//! Payload → readings.
//!
//! JSON shapes, detected by their keys:
//! - single reading: `{"ts": <ms>, "temp": 21.5, "hum": 40}`; `ts` is optional (IoT Core's receive
//!   time is used) and every other key is a measure;
//! - batch: `{"readings": [{"ts": …, …}, …]}`, each element a single reading.
//!
//! Nested objects flatten into `parent_child` measure names up to [`MAX_NESTING`] levels, the
//! payload's own depth; arrays are not measures and refuse the reading.

use serde_json::{Map, Number, Value};
use thiserror::Error;

use super::reading::{MeasureName, MeasureValue, Reading};
use crate::ids::ThingName;

/// Deepest object nesting accepted inside one reading (a reading is level 1).
pub const MAX_NESTING: usize = 4;

/// Why a payload, or one reading in it, could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("payload is not a JSON object")]
    NotAnObject,
    #[error("\"readings\" must be a non-empty array of objects")]
    BadBatch,
    #[error("\"ts\" must be an integer number of milliseconds since the epoch")]
    BadTimestamp,
    #[error("measure {0:?} is an array; arrays are not measures")]
    ArrayMeasure(String),
    #[error("measure {0:?} is null")]
    NullMeasure(String),
    #[error("measure {0:?} is not representable: {1}")]
    BadNumber(String, String),
    #[error("nesting deeper than {MAX_NESTING} levels at {0:?}")]
    TooDeep(String),
}

/// The outcome per reading of a payload: each is decoded, or refused with its reason, so one bad
/// reading never hides the good ones beside it.
pub type Decoded = Vec<Result<Reading, DecodeError>>;

/// Decodes a JSON payload of `thing`; `received_at_ms` stands in for a missing `ts`.
/// Takes the payload by value: names and strings move into the readings instead of being copied.
pub fn decode_json(
    thing: &ThingName,
    received_at_ms: i64,
    mut payload: Map<String, Value>,
) -> Result<Decoded, DecodeError> {
    match payload.remove("readings") {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items
            .into_iter()
            .map(|item| match item {
                Value::Object(fields) => reading(thing, received_at_ms, fields),
                _ => Err(DecodeError::BadBatch),
            })
            .collect()),
        Some(_) => Err(DecodeError::BadBatch),
        None => Ok(vec![reading(thing, received_at_ms, payload)]),
    }
}

fn reading(
    thing: &ThingName,
    received_at_ms: i64,
    mut fields: Map<String, Value>,
) -> Result<Reading, DecodeError> {
    let time_ms = match fields.remove("ts") {
        None => received_at_ms,
        Some(Value::Number(n)) => n.as_i64().ok_or(DecodeError::BadTimestamp)?,
        Some(_) => return Err(DecodeError::BadTimestamp),
    };
    let mut measures = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        flatten(name, value, 1, &mut measures)?;
    }
    Ok(Reading {
        thing: thing.clone(),
        time_ms,
        measures,
    })
}

fn flatten(
    name: String,
    value: Value,
    depth: usize,
    out: &mut Vec<(MeasureName, MeasureValue)>,
) -> Result<(), DecodeError> {
    let measure = match value {
        Value::Number(n) => number(&name, &n)?,
        Value::Bool(b) => MeasureValue::Boolean(b),
        Value::String(s) => MeasureValue::Varchar(s),
        Value::Null => return Err(DecodeError::NullMeasure(name)),
        Value::Array(_) => return Err(DecodeError::ArrayMeasure(name)),
        Value::Object(children) => {
            if depth >= MAX_NESTING {
                return Err(DecodeError::TooDeep(name));
            }
            for (child, v) in children {
                flatten(format!("{name}_{child}"), v, depth + 1, out)?;
            }
            return Ok(());
        }
    };
    out.push((MeasureName(name), measure));
    Ok(())
}

/// serde_json keeps `23.0` as a float and `23` as an integer: that spelling picks the type.
fn number(name: &str, n: &Number) -> Result<MeasureValue, DecodeError> {
    if let Some(i) = n.as_i64() {
        Ok(MeasureValue::Bigint(i))
    } else if n.is_u64() {
        Err(DecodeError::BadNumber(
            name.to_owned(),
            format!("{n} exceeds BIGINT's range"),
        ))
    } else {
        n.as_f64()
            .map(MeasureValue::Double)
            .ok_or_else(|| DecodeError::BadNumber(name.to_owned(), n.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn thing() -> ThingName {
        ThingName::parse("dev-1").unwrap()
    }

    fn decode(v: Value) -> Result<Decoded, DecodeError> {
        match v {
            Value::Object(fields) => decode_json(&thing(), 999, fields),
            _ => panic!("test payloads are objects"),
        }
    }

    fn measures(r: &Reading) -> Vec<(&str, &MeasureValue)> {
        r.measures.iter().map(|(n, v)| (n.0.as_str(), v)).collect()
    }

    #[test]
    fn single_reading_keeps_json_types() {
        let out = decode(json!({"ts": 1000, "temp": 23.0, "count": 23, "ok": true, "fw": "1.2.0"}))
            .unwrap();
        let r = out[0].as_ref().unwrap();
        assert_eq!(r.time_ms, 1000);
        assert_eq!(
            measures(r),
            vec![
                ("count", &MeasureValue::Bigint(23)),
                ("fw", &MeasureValue::Varchar("1.2.0".into())),
                ("ok", &MeasureValue::Boolean(true)),
                ("temp", &MeasureValue::Double(23.0)),
            ]
        );
    }

    #[test]
    fn missing_ts_uses_receive_time() {
        let out = decode(json!({"temp": 1.5})).unwrap();
        assert_eq!(out[0].as_ref().unwrap().time_ms, 999);
    }

    #[test]
    fn batch_decodes_each_reading_on_its_own() {
        let out = decode(json!({"readings": [
            {"ts": 1, "temp": 1.0},
            {"ts": "yesterday", "temp": 2.0},
            {"ts": 3, "temp": [1, 2]},
            7
        ]}))
        .unwrap();
        assert_eq!(out.len(), 4);
        assert!(out[0].is_ok());
        assert_eq!(out[1], Err(DecodeError::BadTimestamp));
        assert_eq!(out[2], Err(DecodeError::ArrayMeasure("temp".into())));
        assert_eq!(out[3], Err(DecodeError::BadBatch));
    }

    #[test]
    fn malformed_batches_are_refused_whole() {
        assert_eq!(decode(json!({"readings": []})), Err(DecodeError::BadBatch));
        assert_eq!(decode(json!({"readings": {}})), Err(DecodeError::BadBatch));
    }

    #[test]
    fn nested_objects_flatten_until_too_deep() {
        let out = decode(json!({"env": {"air": {"temp": 20.5}}})).unwrap();
        assert_eq!(
            measures(out[0].as_ref().unwrap()),
            vec![("env_air_temp", &MeasureValue::Double(20.5))]
        );
        // The reading is level 1: a, b and c are levels 2 to 4, the deepest allowed.
        let out = decode(json!({"a": {"b": {"c": {"d": 1}}}})).unwrap();
        assert_eq!(
            measures(out[0].as_ref().unwrap()),
            vec![("a_b_c_d", &MeasureValue::Bigint(1))]
        );
        let out = decode(json!({"a": {"b": {"c": {"d": {"e": 1}}}}})).unwrap();
        assert_eq!(out[0], Err(DecodeError::TooDeep("a_b_c_d".into())));
    }

    #[test]
    fn nulls_and_huge_integers_are_refused() {
        assert_eq!(
            decode(json!({"temp": null})).unwrap()[0],
            Err(DecodeError::NullMeasure("temp".into()))
        );
        assert!(matches!(
            decode(json!({"n": u64::MAX})).unwrap()[0],
            Err(DecodeError::BadNumber(..))
        ));
    }
}

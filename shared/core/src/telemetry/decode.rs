//! Payload → readings.
//!
//! JSON shapes, detected by their keys:
//! - single reading: `{"ts": <ms>, "temp": 21.5, "hum": 40}`; `ts` is optional (IoT Core's receive
//!   time is used) and every other key is a measure;
//! - batch: `{"readings": [{"ts": …, …}, …]}`, each element a single reading, nothing beside
//!   `readings`;
//! - interval series: `{"ts": <ms of the first>, "interval": <s>, "values": [{"temp": 21.0}, …]}`
//!   (or scalar `values` with `"measure": "temp"`); reading i is at `ts + i × interval` (rounded to
//!   the millisecond; the interval is at least 1 ms); without `ts` the last value is at the
//!   receive time;
//! - edge aggregate: any object of `count`, `mean`, `min`, `max`, `std` (a reading's top level or a
//!   measure's value, e.g. `{"temp": {"count": 60, "mean": 21.3, "min": 20.9, "max": 21.8,
//!   "std": 0.2}}`); it must be consistent: count ≥ 1, min ≤ mean ≤ max, std ≥ 0.
//!
//! Nested objects flatten into `parent_child` measure names up to [`MAX_NESTING`] levels, the
//! payload's own depth; arrays are not measures and refuse the reading. A measure's type comes
//! from its name ([`MeasureTypes`]), never from how the number was spelled. Nothing in a payload
//! is ignored: a key that belongs to no shape refuses what it sits in, with the reason.

use serde_json::{Map, Value};
use thiserror::Error;

use super::reading::{MeasureName, MeasureValue, Reading};
use super::schema::MeasureTypes;
use super::validate::{MAX_MEASURE_NAME, MAX_MEASURES_PER_RECORD};
use crate::ids::ThingName;

use shoal_wire::telemetry::MAX_INTERVAL_S;
/// The contract's limits (`shoal-wire`): nesting depth, readings per message, shortest series
/// interval.
pub use shoal_wire::telemetry::{MAX_NESTING, MAX_READINGS_PER_MESSAGE, MIN_INTERVAL_S};

/// Why a payload, or one reading in it, could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The payload (or a CBOR item of it) is not an object.
    #[error("payload is not a JSON object")]
    NotAnObject,
    /// `readings` is empty, not an array, holds a non-object, or has a key beside it; holds the
    /// detail (`"; unexpected key …"`), or nothing.
    #[error("\"readings\" must be a non-empty array of objects{0}")]
    BadBatch(String),
    /// An interval series is malformed (its `interval`, `values` or `measure`, or a stray key);
    /// holds why.
    #[error("interval series: {0}")]
    BadSeries(String),
    /// An edge aggregate breaks count ≥ 1, min ≤ mean ≤ max or std ≥ 0; holds its measure name
    /// (empty at a reading's top level) and why.
    #[error("aggregate {0:?} is inconsistent: {1}")]
    InconsistentAggregate(String, String),
    /// A binary payload could not be read (decompression, CBOR, packed record length, invalid
    /// JSON); holds the whole message.
    #[error("{0}")]
    Malformed(String),
    /// A CBOR float is NaN or infinite; holds the measure's flattened name.
    #[error("measure {0:?} is not a finite number")]
    NotFinite(String),
    /// A packed payload's topic names no device model, or one with no packed schema; holds the
    /// whole message.
    #[error("{0}")]
    UnknownSchema(String),
    /// `ts` is not an integer (or integral float) number of ms since the Unix epoch.
    #[error("\"ts\" must be an integer number of milliseconds since the epoch")]
    BadTimestamp,
    /// A measure's value is an array; holds the measure's flattened name.
    #[error("measure {0:?} is an array; arrays are not measures")]
    ArrayMeasure(String),
    /// A measure's value is `null`; holds the measure's flattened name.
    #[error("measure {0:?} is null")]
    NullMeasure(String),
    /// A number fits no 64-bit type (e.g. a CBOR integer beyond 64 bits); holds the measure's
    /// name and why.
    #[error("measure {0:?} is not representable: {1}")]
    BadNumber(String, String),
    /// Objects nest deeper than [`MAX_NESTING`] levels; holds the flattened name of the object
    /// that is too deep.
    #[error("nesting deeper than {MAX_NESTING} levels at {0:?}")]
    TooDeep(String),
    /// A value cannot be its measure's declared type ([`MeasureTypes`]); holds the measure name
    /// and `declared <TYPE>, got <value>`.
    #[error("measure {0:?}: {1}")]
    TypeMismatch(String, String),
    /// An object holds a key twice; holds the key's path (dot path from JSON, flattened name from
    /// CBOR).
    #[error("key {0:?} appears twice in one object; which value is meant is unknowable")]
    DuplicateKey(String),
    /// The message holds more than [`MAX_READINGS_PER_MESSAGE`] readings; holds the count.
    #[error("message holds {0} readings; at most {MAX_READINGS_PER_MESSAGE} are accepted")]
    TooManyReadings(usize),
    /// A (flattened) measure name is longer than [`MAX_MEASURE_NAME`] bytes; holds its first
    /// [`MAX_MEASURE_NAME`] characters.
    #[error("measure name {0:?}… is longer than {MAX_MEASURE_NAME} characters")]
    NameTooLong(String),
    /// A reading flattens into more than [`MAX_MEASURES_PER_RECORD`] measures.
    #[error("a reading has more than {MAX_MEASURES_PER_RECORD} measures")]
    TooManyMeasures,
    /// A measure's value is `{}`; holds the measure's flattened name.
    #[error("measure {0:?} is an empty object; it holds no measure")]
    EmptyObject(String),
}

impl DecodeError {
    /// The quarantine reason code.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooDeep(_) => "nesting_too_deep",
            DecodeError::NotFinite(_) => "not_finite",
            DecodeError::UnknownSchema(_) => "unknown_binary_schema",
            DecodeError::InconsistentAggregate(..) => "inconsistent_aggregate",
            DecodeError::TypeMismatch(..) => "type_mismatch",
            DecodeError::DuplicateKey(_) => "duplicate_key",
            DecodeError::TooManyReadings(_) => "too_many_readings",
            DecodeError::NameTooLong(_) => "bad_measure_name",
            DecodeError::TooManyMeasures => "too_many_measures",
            _ => "undecodable",
        }
    }

    /// Readings a payload refused whole with this error is known to hold (at least 1): what the
    /// router counts as received and quarantined for it.
    pub fn readings_held(&self) -> usize {
        match self {
            DecodeError::TooManyReadings(n) => (*n).max(1),
            _ => 1,
        }
    }
}

/// The outcome per reading of a payload: each is decoded, or refused with its reason, so one bad
/// reading never hides the good ones beside it.
pub type Decoded = Vec<Result<Reading, DecodeError>>;

/// What every reading of one message shares: its device, the time IoT Core received it (for
/// readings without `ts`) and the declared measure types.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The device that published the message (from its topic).
    pub thing: &'a ThingName,
    /// When IoT Core received the message, in ms since the Unix epoch: the time of readings
    /// without `ts`, and the anchor of a series without `ts`.
    pub received_at_ms: i64,
    /// The declared measure types (`SHOAL_MEASURE_TYPES`).
    pub types: &'a MeasureTypes,
}

/// Readings a JSON payload holds as far as its shape says (the `readings` or `values` array's
/// length, else 1), for counting a payload refused whole.
pub fn readings_in(payload: &Map<String, Value>) -> usize {
    match (payload.get("readings"), payload.get("values")) {
        (Some(Value::Array(items)), _) | (None, Some(Value::Array(items))) => items.len().max(1),
        _ => 1,
    }
}

/// A `ts`: integer milliseconds since the epoch; an integral float (`1795600000000.0`, as CBOR
/// or a JSON writer may spell it) is the same instant.
///
/// # Errors
/// [`DecodeError::BadTimestamp`] when the value is not a number, or a float that is fractional or
/// of magnitude 9e15 or more.
pub(crate) fn timestamp(value: &Value) -> Result<i64, DecodeError> {
    let Value::Number(n) = value else {
        return Err(DecodeError::BadTimestamp);
    };
    if let Some(ms) = n.as_i64() {
        return Ok(ms);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(DecodeError::BadTimestamp),
    }
}

/// Refuses a payload that would hold more than [`MAX_READINGS_PER_MESSAGE`] readings.
///
/// # Errors
/// [`DecodeError::TooManyReadings`] with the count.
pub fn check_reading_count(count: usize) -> Result<(), DecodeError> {
    if count > MAX_READINGS_PER_MESSAGE {
        return Err(DecodeError::TooManyReadings(count));
    }
    Ok(())
}

/// Decodes a JSON payload. Takes the payload by value: names and strings move into the readings
/// instead of being copied.
///
/// # Errors
/// A [`DecodeError`] when the payload as a whole has no valid shape; refusals of single readings
/// are inside the `Ok` list.
pub fn decode_json(
    ctx: &Context<'_>,
    mut payload: Map<String, Value>,
) -> Result<Decoded, DecodeError> {
    match payload.remove("readings") {
        Some(Value::Array(items)) if !items.is_empty() => {
            if let Some(extra) = payload.keys().next() {
                return Err(DecodeError::BadBatch(format!(
                    "; unexpected key {extra:?} beside it"
                )));
            }
            check_reading_count(items.len())?;
            Ok(items
                .into_iter()
                .map(|item| match item {
                    Value::Object(fields) => reading(ctx, ctx.received_at_ms, fields),
                    _ => Err(DecodeError::BadBatch(String::new())),
                })
                .collect())
        }
        Some(_) => Err(DecodeError::BadBatch(String::new())),
        None if payload.contains_key("values") && payload.contains_key("interval") => {
            series(ctx, payload)
        }
        None => Ok(vec![reading(ctx, ctx.received_at_ms, payload)]),
    }
}

/// One reading of a payload in the common shapes, read without a JSON map (`flat`): its `ts`,
/// if given, and its measures sorted by name, each a scalar (number, boolean, string or null),
/// no name twice, and not an edge aggregate's keys alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FlatReading {
    /// Milliseconds since the epoch.
    pub ts: Option<i64>,
    /// The measures as name and scalar JSON value (not yet typed), sorted by name.
    pub measures: Vec<(String, Value)>,
}

/// Decodes readings read by the flat reader: the same readings, in the same order, with the
/// same refusals as [`decode_json`] makes of the same payload (property-tested in `flat`). The
/// reading count is checked again, though the flat reader never hands over more.
///
/// # Errors
/// [`DecodeError::TooManyReadings`]; refusals of single readings are inside the `Ok` list.
pub fn decode_flat(ctx: &Context<'_>, readings: Vec<FlatReading>) -> Result<Decoded, DecodeError> {
    check_reading_count(readings.len())?;
    Ok(readings
        .into_iter()
        .map(|r| reading_of(ctx, r.ts.unwrap_or(ctx.received_at_ms), r.measures))
        .collect())
}

fn series(ctx: &Context<'_>, mut payload: Map<String, Value>) -> Result<Decoded, DecodeError> {
    let bad = |why: &str| DecodeError::BadSeries(why.to_owned());
    let interval_ms = match payload.remove("interval") {
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= MIN_INTERVAL_S && *s <= MAX_INTERVAL_S)
            .map(|s| s * 1000.0)
            .ok_or_else(|| bad("\"interval\" must be seconds in [0.001, 86400]"))?,
        _ => return Err(bad("\"interval\" must be a number of seconds")),
    };
    let Some(Value::Array(values)) = payload.remove("values") else {
        return Err(bad("\"values\" must be a non-empty array"));
    };
    if values.is_empty() {
        return Err(bad("\"values\" must be a non-empty array"));
    }
    check_reading_count(values.len())?;
    let measure = match payload.remove("measure") {
        Some(Value::String(m)) => Some(m),
        None => None,
        Some(_) => return Err(bad("\"measure\" must be a string")),
    };
    // values.len() ≤ MAX_READINGS_PER_MESSAGE and interval ≤ 1 day: offsets fit easily.
    let offset = |i: usize| (i as f64 * interval_ms).round() as i64;
    let first_ms = match payload.remove("ts") {
        None => ctx.received_at_ms.saturating_sub(offset(values.len() - 1)),
        Some(ts) => timestamp(&ts)?,
    };
    if let Some(extra) = payload.keys().next() {
        return Err(DecodeError::BadSeries(format!("unexpected key {extra:?}")));
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let time_ms = first_ms.saturating_add(offset(i));
            let fields = match (value, &measure) {
                (Value::Object(fields), None) => fields,
                (scalar, Some(name)) if !scalar.is_object() => {
                    Map::from_iter([(name.clone(), scalar)])
                }
                _ => {
                    return Err(bad(
                        "values are objects of measures, or scalars with \"measure\" naming them",
                    ));
                }
            };
            if fields.contains_key("ts") {
                return Err(bad(
                    "a value carries its own \"ts\"; a series' times come from ts and interval",
                ));
            }
            reading(ctx, time_ms, fields)
        })
        .collect())
}

/// Whether an object of these keys is an edge aggregate (the contract's rule; the general reader
/// checks one for consistency, the flat reader leaves it to the general one).
pub(crate) use shoal_wire::telemetry::is_aggregate;

/// An object of aggregate statistics (`count` plus any of mean/min/max/std) must be consistent.
fn check_aggregate(path: &str, fields: &Map<String, Value>) -> Result<(), DecodeError> {
    if !is_aggregate(fields.keys().map(String::as_str)) {
        return Ok(());
    }
    let bad = |why: String| DecodeError::InconsistentAggregate(path.to_owned(), why);
    // `60.0` is as good a count as `60` (SQL 2016-03-23 may have rewritten either).
    match fields["count"].as_f64() {
        Some(n) if n >= 1.0 && n.fract() == 0.0 => {}
        _ => return Err(bad("count must be an integer ≥ 1".into())),
    }
    let stat = |k: &str| fields.get(k).and_then(Value::as_f64);
    if let (Some(min), Some(max)) = (stat("min"), stat("max"))
        && min > max
    {
        return Err(bad(format!("min {min} > max {max}")));
    }
    if let Some(mean) = stat("mean")
        && (stat("min").is_some_and(|min| mean < min) || stat("max").is_some_and(|max| mean > max))
    {
        return Err(bad(format!("mean {mean} is outside [min, max]")));
    }
    if stat("std").is_some_and(|std| std < 0.0) {
        return Err(bad("std is negative".into()));
    }
    Ok(())
}

/// One reading; `default_ms` stands in for a missing `ts`.
fn reading(
    ctx: &Context<'_>,
    default_ms: i64,
    mut fields: Map<String, Value>,
) -> Result<Reading, DecodeError> {
    let time_ms = match fields.remove("ts") {
        None => default_ms,
        Some(ts) => timestamp(&ts)?,
    };
    check_aggregate("", &fields)?;
    reading_of(ctx, time_ms, fields)
}

/// The reading at `time_ms` of `fields` (no `ts` among them), each flattened into measures in
/// the order given: the last step of both the general and the flat reader.
fn reading_of(
    ctx: &Context<'_>,
    time_ms: i64,
    fields: impl IntoIterator<Item = (String, Value), IntoIter: ExactSizeIterator>,
) -> Result<Reading, DecodeError> {
    let fields = fields.into_iter();
    let mut measures = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        flatten(ctx.types, name, value, 1, &mut measures)?;
    }
    Ok(Reading {
        thing: ctx.thing.clone(),
        time_ms,
        measures,
    })
}

fn flatten(
    types: &MeasureTypes,
    name: String,
    value: Value,
    depth: usize,
    out: &mut Vec<(MeasureName, MeasureValue)>,
) -> Result<(), DecodeError> {
    // Bounded while flattening, not after: a nested name only grows, and a reading past the
    // measure limit is refused anyway, so neither may cost more than the limits allow.
    if name.len() > MAX_MEASURE_NAME {
        let head: String = name.chars().take(MAX_MEASURE_NAME).collect();
        return Err(DecodeError::NameTooLong(head));
    }
    if out.len() >= MAX_MEASURES_PER_RECORD {
        return Err(DecodeError::TooManyMeasures);
    }
    let measure = match value {
        Value::Number(n) => types.number(&name, &n)?,
        Value::Bool(b) => types.boolean(&name, b)?,
        Value::String(s) => types.text(&name, s)?,
        Value::Null => return Err(DecodeError::NullMeasure(name)),
        Value::Array(_) => return Err(DecodeError::ArrayMeasure(name)),
        Value::Object(children) => {
            if depth >= MAX_NESTING {
                return Err(DecodeError::TooDeep(name));
            }
            if children.is_empty() {
                return Err(DecodeError::EmptyObject(name));
            }
            check_aggregate(&name, &children)?;
            for (child, v) in children {
                flatten(types, format!("{name}_{child}"), v, depth + 1, out)?;
            }
            return Ok(());
        }
    };
    out.push((MeasureName(name), measure));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn thing() -> ThingName {
        ThingName::parse("dev-1").unwrap()
    }

    fn decode_typed(v: Value, types: &MeasureTypes) -> Result<Decoded, DecodeError> {
        let thing = thing();
        let ctx = Context {
            thing: &thing,
            received_at_ms: 999,
            types,
        };
        match v {
            Value::Object(fields) => decode_json(&ctx, fields),
            _ => panic!("test payloads are objects"),
        }
    }

    fn decode(v: Value) -> Result<Decoded, DecodeError> {
        decode_typed(v, &MeasureTypes::empty())
    }

    fn measures(r: &Reading) -> Vec<(&str, &MeasureValue)> {
        r.measures.iter().map(|(n, v)| (n.0.as_str(), v)).collect()
    }

    #[test]
    fn numbers_are_double_unless_declared_however_spelled() {
        let out = decode(json!({"ts": 1000, "temp": 23, "count": 23, "ok": true, "fw": "1.2.0"}))
            .unwrap();
        let r = out[0].as_ref().unwrap();
        assert_eq!(r.time_ms, 1000);
        assert_eq!(
            measures(r),
            vec![
                ("count", &MeasureValue::Double(23.0)),
                ("fw", &MeasureValue::Varchar("1.2.0".into())),
                ("ok", &MeasureValue::Boolean(true)),
                ("temp", &MeasureValue::Double(23.0)),
            ]
        );
        // 21.5 then 22.0 (which SQL 2016-03-23 turns into 22): the same type both times.
        let types: MeasureTypes = "bigint=rssi".parse().unwrap();
        for (temp, rssi) in [(json!(21.5), json!(-70)), (json!(22), json!(-71.0))] {
            let out = decode_typed(json!({"temp": temp, "rssi": rssi}), &types).unwrap();
            let r = out[0].as_ref().unwrap();
            assert_eq!(r.measures[0].1.type_name(), "BIGINT");
            assert_eq!(r.measures[1].1.type_name(), "DOUBLE");
        }
        let out = decode_typed(json!({"rssi": 7.5}), &types).unwrap();
        assert_eq!(out[0].as_ref().unwrap_err().code(), "type_mismatch");
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
        assert_eq!(out[3], Err(DecodeError::BadBatch(String::new())));
    }

    #[test]
    fn malformed_batches_are_refused_whole() {
        assert_eq!(
            decode(json!({"readings": []})),
            Err(DecodeError::BadBatch(String::new()))
        );
        assert_eq!(
            decode(json!({"readings": {}})),
            Err(DecodeError::BadBatch(String::new()))
        );
        // Nothing beside the readings is dropped unseen: it refuses the batch.
        assert!(matches!(
            decode(json!({"readings": [{"temp": 1.0}], "ts": 5})),
            Err(DecodeError::BadBatch(why)) if why.contains("\"ts\"")
        ));
    }

    #[test]
    fn more_readings_than_the_cap_are_refused_whole_before_decoding() {
        let many: Vec<Value> = (0..=MAX_READINGS_PER_MESSAGE)
            .map(|_| json!({"t": 1}))
            .collect();
        let err = decode(json!({ "readings": many })).unwrap_err();
        assert_eq!(err, DecodeError::TooManyReadings(10_001));
        assert_eq!(err.readings_held(), 10_001);
        let values: Vec<Value> = vec![json!(1); 524_258];
        let err = decode(json!({"interval": 0.001, "measure": "t", "values": values})).unwrap_err();
        assert_eq!(err.code(), "too_many_readings");
        assert_eq!(err.readings_held(), 524_258);
        let ok: Vec<Value> = vec![json!(1); MAX_READINGS_PER_MESSAGE];
        assert_eq!(
            decode(json!({"interval": 1, "measure": "t", "values": ok}))
                .unwrap()
                .len(),
            MAX_READINGS_PER_MESSAGE
        );
    }

    #[test]
    fn names_and_measure_counts_are_bounded_while_flattening() {
        let long = "k".repeat(60_000);
        let children: Map<String, Value> =
            (0..8000).map(|i| (format!("a{i:04}"), json!(1))).collect();
        let out = decode(json!({ long: Value::Object(children.clone()) })).unwrap();
        assert_eq!(out[0].as_ref().unwrap_err().code(), "bad_measure_name");
        let out = decode(json!({ "env": Value::Object(children) })).unwrap();
        assert_eq!(out[0], Err(DecodeError::TooManyMeasures));
        let out = decode(json!({"temp": 21.5, "env": {}})).unwrap();
        assert_eq!(out[0], Err(DecodeError::EmptyObject("env".into())));
    }

    #[test]
    fn an_integral_float_ts_is_the_same_instant() {
        let out = decode(json!({"ts": 1_795_600_000_000.0_f64, "temp": 1.5})).unwrap();
        assert_eq!(out[0].as_ref().unwrap().time_ms, 1_795_600_000_000);
        let out = decode(json!({"ts": 1_795_600_000_000.5_f64, "temp": 1.5})).unwrap();
        assert_eq!(out[0], Err(DecodeError::BadTimestamp));
        assert_eq!(
            readings_in(json!({"readings": [1, 2, 3]}).as_object().unwrap()),
            3
        );
        assert_eq!(
            readings_in(json!({"values": [1, 2]}).as_object().unwrap()),
            2
        );
        assert_eq!(readings_in(json!({"temp": 1}).as_object().unwrap()), 1);
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
            vec![("a_b_c_d", &MeasureValue::Double(1.0))]
        );
        let out = decode(json!({"a": {"b": {"c": {"d": {"e": 1}}}}})).unwrap();
        assert_eq!(out[0], Err(DecodeError::TooDeep("a_b_c_d".into())));
    }

    #[test]
    fn interval_series_of_objects_and_scalars() {
        let out =
            decode(json!({"ts": 1000, "interval": 60, "values": [{"temp": 1.5}, {"temp": 2.5}]}))
                .unwrap();
        let times: Vec<i64> = out.iter().map(|r| r.as_ref().unwrap().time_ms).collect();
        assert_eq!(times, vec![1000, 61_000]);
        // Without ts, the last value is at the receive time (999 here).
        let out =
            decode(json!({"interval": 0.5, "measure": "rpm", "values": [100, 120, 130]})).unwrap();
        let r: Vec<(i64, &MeasureValue)> = out
            .iter()
            .map(|r| {
                let r = r.as_ref().unwrap();
                (r.time_ms, &r.measures[0].1)
            })
            .collect();
        assert_eq!(
            r,
            vec![
                (-1, &MeasureValue::Double(100.0)),
                (499, &MeasureValue::Double(120.0)),
                (999, &MeasureValue::Double(130.0))
            ]
        );
        // Offsets are rounded per value, so a fractional interval does not drift.
        let out =
            decode(json!({"ts": 0, "interval": 0.0015, "measure": "t", "values": [1, 2, 3, 4]}))
                .unwrap();
        let times: Vec<i64> = out.iter().map(|r| r.as_ref().unwrap().time_ms).collect();
        assert_eq!(times, vec![0, 2, 3, 5]);
    }

    #[test]
    fn malformed_series_are_refused() {
        for bad in [
            json!({"interval": 0, "values": [{"t": 1}]}),
            json!({"interval": 0.0009, "values": [{"t": 1}]}),
            json!({"interval": 86_401, "values": [{"t": 1}]}),
            json!({"interval": "60", "values": [{"t": 1}]}),
            json!({"interval": 60, "values": []}),
            json!({"interval": 60, "values": {}}),
            json!({"interval": 60, "values": [{"t": 1}], "extra": 1}),
        ] {
            assert!(
                matches!(decode(bad.clone()), Err(DecodeError::BadSeries(_))),
                "{bad}"
            );
        }
        // Each value that does not fit is refused on its own.
        let out = decode(json!({"interval": 60, "measure": "t", "values": [1, {"a": 1}]})).unwrap();
        assert!(out[0].is_ok());
        assert!(matches!(out[1], Err(DecodeError::BadSeries(_))));
        // A value's own ts would be silently overridden: refused instead.
        let out = decode(json!({"ts": 0, "interval": 60, "values": [{"t": 1}, {"ts": 5, "t": 2}]}))
            .unwrap();
        assert!(out[0].is_ok());
        assert!(matches!(&out[1], Err(DecodeError::BadSeries(why)) if why.contains("ts")));
        let out = decode(json!({"interval": 60, "values": [1, 2]})).unwrap();
        assert!(
            out.iter()
                .all(|r| matches!(r, Err(DecodeError::BadSeries(_))))
        );
    }

    #[test]
    fn edge_aggregates_must_be_consistent() {
        let ok = decode(
            json!({"temp": {"count": 60, "mean": 21.3, "min": 20.9, "max": 21.8, "std": 0.2}}),
        )
        .unwrap();
        assert_eq!(ok[0].as_ref().unwrap().measures.len(), 5);
        let top = decode(json!({"count": 60, "mean": 21.3, "min": 20.9, "max": 21.8})).unwrap();
        assert!(top[0].is_ok());
        for bad in [
            json!({"temp": {"count": 0, "mean": 1.0}}),
            json!({"temp": {"count": 5, "min": 3.0, "max": 1.0}}),
            json!({"temp": {"count": 5, "mean": 9.0, "min": 1.0, "max": 2.0}}),
            json!({"temp": {"count": 5, "std": -1.0}}),
            json!({"count": 5, "mean": 0.5, "min": 1.0}),
        ] {
            let out = decode(bad.clone()).unwrap();
            let err = out[0].clone().unwrap_err();
            assert_eq!(err.code(), "inconsistent_aggregate", "{bad}: {err}");
        }
        // An integral float is a count (the rules engine may have rewritten 60 either way).
        assert!(decode(json!({"temp": {"count": 60.0, "mean": 1.0}})).unwrap()[0].is_ok());
        // Not an aggregate (other keys beside count): no check.
        assert!(decode(json!({"count": 0, "temp": 1.0})).unwrap()[0].is_ok());
    }

    #[test]
    fn nulls_and_huge_integers_are_refused() {
        assert_eq!(
            decode(json!({"temp": null})).unwrap()[0],
            Err(DecodeError::NullMeasure("temp".into()))
        );
        assert_eq!(
            decode(json!({"n": u64::MAX})).unwrap()[0]
                .as_ref()
                .unwrap()
                .measures[0]
                .1,
            MeasureValue::Double(u64::MAX as f64)
        );
        let types: MeasureTypes = "bigint=n".parse().unwrap();
        assert_eq!(
            decode_typed(json!({"n": u64::MAX}), &types).unwrap()[0]
                .as_ref()
                .unwrap_err()
                .code(),
            "type_mismatch"
        );
    }
}

//! The JSON telemetry a device publishes on `dt/<app>/<thing>/telemetry`: its shapes, the names
//! a measure may have, and the limits the cloud enforces — so a device can build a message the
//! cloud stores whole, and the cloud reads exactly what devices write.
//!
//! Shapes ([`Message`]):
//! - one reading: `{"ts": <ms>, "temp": 21.5, "hum": 40}`; `ts` is optional (the cloud then uses
//!   the time AWS IoT received the message) and every other key is a measure;
//! - a batch: `{"readings": [<reading>, …]}`, nothing beside `readings`;
//! - an interval series: `{"ts": <ms of the first>, "interval": <s>, "values": [{…}, …]}`;
//!   reading i is at `ts + i × interval`; without `ts` the last value is at the receive time.
//!
//! A measure is a number, a boolean, a non-empty string, an edge aggregate (`count` with any of
//! `mean`, `min`, `max`, `std`) or an object of measures, stored flattened as `parent_child`. A
//! measure's stored type comes from its name (the cloud's declared schema), never from how the
//! number is spelled. The cloud's reader is `shoal-core`'s `telemetry::decode`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use thiserror::Error;

use crate::topics::TelemetryTopic;

/// Most readings one message may hold; more is refused whole.
pub const MAX_READINGS_PER_MESSAGE: usize = 10_000;
/// Deepest object nesting inside one reading (the reading itself is level 1).
pub const MAX_NESTING: usize = 4;
/// Shortest interval of a series, in seconds (Timestream keeps time to the millisecond).
pub const MIN_INTERVAL_S: f64 = 0.001;
/// Longest interval of a series, in seconds (one day).
pub const MAX_INTERVAL_S: f64 = 86_400.0;
/// Most measures in one reading, after flattening: Timestream's limit per multi-measure record.
pub const MAX_MEASURES_PER_RECORD: usize = 256;
/// Longest measure name, after flattening: it is also a Parquet and an Athena column.
pub const MAX_MEASURE_NAME: usize = 64;
/// The keys of an edge aggregate; an object of `count` and only these keys is one.
pub const AGGREGATE_KEYS: [&str; 5] = ["count", "mean", "min", "max", "std"];
/// Keys that give a message its shape; none of them is a measure at a reading's top level.
pub const SHAPE_KEYS: [&str; 5] = ["ts", "readings", "interval", "values", "measure"];
/// Names Timestream or Shoal's own columns use; a measure may not shadow them (any case).
pub const RESERVED_NAMES: [&str; 5] = ["time", "measure_name", "thing_name", "app", "version"];
/// Timestream's limit on one record's size, in bytes.
pub const MAX_RECORD_BYTES: usize = 2048;
/// What every record of a reading holds beside its measures and dimension values: the dimension
/// names `thing_name` and `app`, the record's measure name `reading`, time and version (8 bytes
/// each). A record's size is this, the thing's and app's lengths, and per measure its name,
/// value text and type name (the cloud's `records` module, checked equal there).
pub const RECORD_OVERHEAD_BYTES: usize = "thing_name".len() + "app".len() + "reading".len() + 16;
/// Prefixes no measure name may start with (any case).
pub const RESERVED_PREFIXES: [&str; 2] = ["measure_value", "ts_"];

/// Whether `name` may name a stored measure: an ASCII letter, then letters, digits and `_`, at
/// most [`MAX_MEASURE_NAME`] characters, not reserved.
///
/// # Errors
/// Why it may not, as a phrase after the name (`must start with a letter`, `is reserved`, …).
pub fn check_measure_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return Err("must start with a letter");
    }
    if name.len() > MAX_MEASURE_NAME {
        return Err("is longer than 64 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("may only contain letters, digits and '_'");
    }
    let has_prefix = |p: &str| {
        name.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    if RESERVED_NAMES.iter().any(|r| name.eq_ignore_ascii_case(r))
        || RESERVED_PREFIXES.iter().any(|p| has_prefix(p))
    {
        return Err("is reserved");
    }
    Ok(())
}

/// An edge aggregate of one measure over a window: `count` samples and their statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    /// Samples aggregated (at least 1).
    pub count: u64,
    /// Their mean, within `[min, max]`.
    pub mean: Option<f64>,
    /// The smallest sample.
    pub min: Option<f64>,
    /// The largest sample.
    pub max: Option<f64>,
    /// Their standard deviation (at least 0).
    pub std: Option<f64>,
}

impl Aggregate {
    /// The statistics present, by key, after `count`.
    fn stats(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("mean", self.mean),
            ("min", self.min),
            ("max", self.max),
            ("std", self.std),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }

    fn check(&self) -> Result<(), &'static str> {
        if self.count == 0 {
            return Err("count must be at least 1");
        }
        if self.stats().any(|(_, v)| !v.is_finite()) {
            return Err("statistics must be finite");
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err("min is above max");
        }
        if let Some(mean) = self.mean
            && (self.min.is_some_and(|min| mean < min) || self.max.is_some_and(|max| mean > max))
        {
            return Err("mean is outside [min, max]");
        }
        if self.std.is_some_and(|std| std < 0.0) {
            return Err("std is negative");
        }
        Ok(())
    }
}

/// One measure's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// A number (finite).
    Number(f64),
    /// An integer (stored as DOUBLE unless the cloud declares the name BIGINT; a DOUBLE holds
    /// integers exactly only within ±2^53).
    Integer(i64),
    /// A boolean.
    Bool(bool),
    /// A non-empty string.
    Text(String),
    /// An edge aggregate, stored as `<name>_count`, `<name>_mean`, …
    Aggregate(Aggregate),
    /// Measures under a common prefix, stored as `<name>_<child>`.
    Group(Vec<(String, Measure)>),
}

/// One reading: when, and its measures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    /// Milliseconds since the Unix epoch; `None`: when AWS IoT received the message.
    pub ts: Option<u64>,
    /// The measures, by name (no name twice, none of [`SHAPE_KEYS`]).
    pub measures: Vec<(String, Measure)>,
}

/// Readings at a fixed interval, sent as values only.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The first value's time, ms since the Unix epoch; `None`: the last value is at the
    /// receive time.
    pub ts: Option<u64>,
    /// Seconds between values, in [[`MIN_INTERVAL_S`], [`MAX_INTERVAL_S`]].
    pub interval_s: f64,
    /// Each value's measures.
    pub values: Vec<Vec<(String, Measure)>>,
}

/// A telemetry message a device publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// One reading.
    Reading(Reading),
    /// Several readings, each with its own time.
    Batch(Vec<Reading>),
    /// Readings at a fixed interval.
    Series(Series),
}

/// Why a message would not be stored whole by the cloud.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EncodeError {
    /// A (flattened) measure name the cloud refuses.
    #[error("measure name {name:?} {why}")]
    BadName {
        /// The flattened name.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A key given twice in one object, or two measures of one reading that flatten to the same
    /// name.
    #[error("measure name {0:?} appears twice")]
    Duplicate(String),
    /// A top-level measure named like a shape key.
    #[error("measure name {0:?} is a key of the message's shape")]
    ShapeKey(String),
    /// A number that is NaN or infinite (JSON cannot carry it).
    #[error("measure {0:?} is not a finite number")]
    NotFinite(String),
    /// An empty string (Timestream stores no empty value).
    #[error("measure {0:?} is an empty string")]
    EmptyText(String),
    /// An empty group, or a group (or a reading's own measures, named `""` here) of aggregate
    /// keys only, which reads as an aggregate: send a [`Measure::Aggregate`] instead.
    #[error("measure {0:?} is an empty group or a group that reads as an aggregate")]
    BadGroup(String),
    /// A reading whose Timestream record would pass [`MAX_RECORD_BYTES`].
    #[error("a reading's record would be {0} bytes; Timestream allows {MAX_RECORD_BYTES}")]
    RecordTooLarge(usize),
    /// Groups nested deeper than [`MAX_NESTING`].
    #[error("measure {0:?} is nested deeper than {MAX_NESTING} levels")]
    TooDeep(String),
    /// An inconsistent aggregate.
    #[error("aggregate {0:?}: {1}")]
    Aggregate(String, &'static str),
    /// A reading without measures, or with more than [`MAX_MEASURES_PER_RECORD`].
    #[error("a reading has {0} measures; 1 to {MAX_MEASURES_PER_RECORD} are stored")]
    MeasureCount(usize),
    /// A message without readings, or with more than [`MAX_READINGS_PER_MESSAGE`].
    #[error("a message has {0} readings; 1 to {MAX_READINGS_PER_MESSAGE} are accepted")]
    ReadingCount(usize),
    /// A timestamp past `i64::MAX` ms.
    #[error("ts {0} is out of range")]
    Timestamp(u64),
    /// A series interval outside [[`MIN_INTERVAL_S`], [`MAX_INTERVAL_S`]].
    #[error("interval {0} s is outside [0.001, 86400]")]
    Interval(f64),
}

fn flattened(prefix: &str, name: &str) -> String {
    let mut full = String::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        full.push_str(prefix);
        full.push('_');
    }
    full.push_str(name);
    full
}

/// Bytes of a DOUBLE's text as the cloud writes it for Timestream (Rust's `Display`, which never
/// uses an exponent, with `.0` after an integral finite value).
#[must_use]
pub fn double_text_len(value: f64) -> usize {
    struct Count(usize);
    impl fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into Count cannot fail.
    let _ = fmt::write(&mut count, format_args!("{value}"));
    if is_integral(value) {
        count.0 + 2
    } else {
        count.0
    }
}

/// Whether `value` is finite with no fractional part (`f64::fract` needs `std`): every double of
/// magnitude 2^52 or more is an integer, and below that it fits an `i64` exactly.
fn is_integral(value: f64) -> bool {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    if !value.is_finite() {
        return false;
    }
    if value >= TWO_52 || value <= -TWO_52 {
        return true;
    }
    value == (value as i64) as f64
}

/// What one reading flattens to: its stored names and its record's bytes so far.
#[derive(Default)]
struct Flattened {
    names: Vec<String>,
    bytes: usize,
}

impl Flattened {
    /// Adds a stored measure `name` whose value text takes `value_len` bytes, of a Timestream
    /// type whose name takes `type_len` (`DOUBLE` 6, `BOOLEAN` and `VARCHAR` 7).
    fn push(&mut self, name: String, value_len: usize, type_len: usize) -> Result<(), EncodeError> {
        if let Err(why) = check_measure_name(&name) {
            return Err(EncodeError::BadName { name, why });
        }
        if self.names.contains(&name) {
            return Err(EncodeError::Duplicate(name));
        }
        self.bytes += name.len() + value_len + type_len;
        self.names.push(name);
        if self.names.len() > MAX_MEASURES_PER_RECORD {
            return Err(EncodeError::MeasureCount(self.names.len()));
        }
        Ok(())
    }
}

/// Whether an object of these keys is an edge aggregate: `count` and nothing but
/// [`AGGREGATE_KEYS`]. The cloud's decoder reads objects by this rule.
pub fn is_aggregate<'a>(mut keys: impl Iterator<Item = &'a str> + Clone) -> bool {
    keys.clone().any(|k| k == "count") && keys.all(|k| AGGREGATE_KEYS.contains(&k))
}

/// Whether these measures, as one object, read as an edge aggregate.
fn reads_as_aggregate(measures: &[(String, Measure)]) -> bool {
    is_aggregate(measures.iter().map(|(k, _)| k.as_str()))
}

/// Checks measures at `depth` (a reading's own measures are at 1; an object measure may sit at
/// most at `MAX_NESTING - 1`, the reading counting as the first level) under `prefix`,
/// collecting the flattened names and the record's bytes.
fn check_measures(
    prefix: &str,
    measures: &[(String, Measure)],
    depth: usize,
    out: &mut Flattened,
) -> Result<(), EncodeError> {
    const DOUBLE: usize = "DOUBLE".len();
    const BOOLEAN: usize = "BOOLEAN".len();
    const VARCHAR: usize = "VARCHAR".len();
    for (i, (name, measure)) in measures.iter().enumerate() {
        let full = flattened(prefix, name);
        if name.is_empty() {
            return Err(EncodeError::BadName {
                name: full,
                why: "has an empty level",
            });
        }
        if measures[..i].iter().any(|(before, _)| before == name) {
            return Err(EncodeError::Duplicate(full));
        }
        match measure {
            Measure::Number(v) if !v.is_finite() => return Err(EncodeError::NotFinite(full)),
            Measure::Text(t) if t.is_empty() => return Err(EncodeError::EmptyText(full)),
            Measure::Number(v) => out.push(full, double_text_len(*v), DOUBLE)?,
            // Stored as DOUBLE unless declared BIGINT, whose text is never longer.
            Measure::Integer(v) => out.push(full, double_text_len(*v as f64), DOUBLE)?,
            Measure::Bool(v) => out.push(full, if *v { 4 } else { 5 }, BOOLEAN)?,
            Measure::Text(t) => out.push(full, t.len(), VARCHAR)?,
            Measure::Aggregate(_) | Measure::Group(_) if depth >= MAX_NESTING => {
                return Err(EncodeError::TooDeep(full));
            }
            Measure::Aggregate(a) => {
                a.check()
                    .map_err(|why| EncodeError::Aggregate(full.clone(), why))?;
                out.push(
                    flattened(&full, "count"),
                    double_text_len(a.count as f64),
                    DOUBLE,
                )?;
                for (key, value) in a.stats() {
                    out.push(flattened(&full, key), double_text_len(value), DOUBLE)?;
                }
            }
            Measure::Group(children) => {
                if children.is_empty() || reads_as_aggregate(children) {
                    return Err(EncodeError::BadGroup(full));
                }
                check_measures(&full, children, depth + 1, out)?;
            }
        }
    }
    Ok(())
}

fn check_ts(ts: Option<u64>) -> Result<(), EncodeError> {
    match ts {
        Some(ts) if i64::try_from(ts).is_err() => Err(EncodeError::Timestamp(ts)),
        _ => Ok(()),
    }
}

fn check_reading(
    topic: &TelemetryTopic<'_>,
    ts: Option<u64>,
    measures: &[(String, Measure)],
) -> Result<(), EncodeError> {
    check_ts(ts)?;
    if let Some((name, _)) = measures
        .iter()
        .find(|(n, _)| SHAPE_KEYS.contains(&n.as_str()))
    {
        return Err(EncodeError::ShapeKey(name.clone()));
    }
    if reads_as_aggregate(measures) {
        return Err(EncodeError::BadGroup(String::new()));
    }
    let mut out = Flattened::default();
    check_measures("", measures, 1, &mut out)?;
    if out.names.is_empty() {
        return Err(EncodeError::MeasureCount(0));
    }
    let bytes = RECORD_OVERHEAD_BYTES + topic.thing.len() + topic.app.len() + out.bytes;
    if bytes > MAX_RECORD_BYTES {
        return Err(EncodeError::RecordTooLarge(bytes));
    }
    Ok(())
}

fn check_count(count: usize) -> Result<(), EncodeError> {
    if count == 0 || count > MAX_READINGS_PER_MESSAGE {
        return Err(EncodeError::ReadingCount(count));
    }
    Ok(())
}

impl Message {
    /// Checks the message, to be published on `topic`, against what the cloud stores whole:
    /// names, values, nesting, counts and each reading's record size (which counts the thing and
    /// app). A message that passes is read by the cloud into exactly its readings and each is
    /// stored (property-tested in `shoal-core`), with two things this side cannot know: a measure
    /// the cloud declares of another type (`SHOAL_MEASURE_TYPES`: a text where a number is
    /// declared is refused) and the time window (a reading more than 15 minutes ahead of the
    /// cloud's clock, or older than the table keeps, is refused).
    ///
    /// # Errors
    /// The first [`EncodeError`] found.
    pub fn check(&self, topic: &TelemetryTopic<'_>) -> Result<(), EncodeError> {
        match self {
            Message::Reading(r) => check_reading(topic, r.ts, &r.measures),
            Message::Batch(readings) => {
                check_count(readings.len())?;
                readings
                    .iter()
                    .try_for_each(|r| check_reading(topic, r.ts, &r.measures))
            }
            Message::Series(s) => {
                check_count(s.values.len())?;
                if !(MIN_INTERVAL_S..=MAX_INTERVAL_S).contains(&s.interval_s) {
                    return Err(EncodeError::Interval(s.interval_s));
                }
                check_ts(s.ts)?;
                s.values
                    .iter()
                    .try_for_each(|v| check_reading(topic, None, v))
            }
        }
    }

    /// The message as JSON text, after [`Message::check`] for `topic`.
    ///
    /// # Errors
    /// The [`EncodeError`] [`Message::check`] finds.
    pub fn to_json(&self, topic: &TelemetryTopic<'_>) -> Result<String, EncodeError> {
        self.check(topic)?;
        Ok(serde_json::to_string(self).unwrap_or_default())
    }
}

struct Measures<'a>(Option<u64>, &'a [(String, Measure)]);

impl Serialize for Measures<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map =
            serializer.serialize_map(Some(self.1.len() + usize::from(self.0.is_some())))?;
        if let Some(ts) = self.0 {
            map.serialize_entry("ts", &ts)?;
        }
        for (name, measure) in self.1 {
            map.serialize_entry(name, measure)?;
        }
        map.end()
    }
}

impl Serialize for Measure {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Measure::Number(v) => serializer.serialize_f64(*v),
            Measure::Integer(v) => serializer.serialize_i64(*v),
            Measure::Bool(v) => serializer.serialize_bool(*v),
            Measure::Text(v) => serializer.serialize_str(v),
            Measure::Aggregate(a) => {
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("count", &a.count)?;
                for (key, value) in a.stats() {
                    map.serialize_entry(key, &value)?;
                }
                map.end()
            }
            Measure::Group(children) => Measures(None, children).serialize(serializer),
        }
    }
}

impl Serialize for Reading {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Measures(self.ts, &self.measures).serialize(serializer)
    }
}

struct Values<'a>(&'a [Vec<(String, Measure)>]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for value in self.0 {
            seq.serialize_element(&Measures(None, value))?;
        }
        seq.end()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Message::Reading(r) => r.serialize(serializer),
            Message::Batch(readings) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("readings", readings)?;
                map.end()
            }
            Message::Series(s) => {
                let mut map = serializer.serialize_map(Some(3))?;
                if let Some(ts) = s.ts {
                    map.serialize_entry("ts", &ts)?;
                }
                map.serialize_entry("interval", &s.interval_s)?;
                map.serialize_entry("values", &Values(&s.values))?;
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    const TOPIC: TelemetryTopic<'static> = TelemetryTopic {
        app: "farm",
        thing: "dev-1",
        model: None,
    };

    fn m(name: &str, measure: Measure) -> (String, Measure) {
        (name.to_string(), measure)
    }

    #[test]
    fn integral_doubles_are_told_without_std() {
        for (v, integral) in [
            (0.0, true),
            (-0.0, true),
            (22.0, true),
            (-3.5, false),
            (0.1, false),
            (4_503_599_627_370_495.5, false),
            (4_503_599_627_370_496.0, true),
            (1e300, true),
            (-1e300, true),
            (f64::INFINITY, false),
            (f64::NAN, false),
        ] {
            assert_eq!(is_integral(v), integral, "{v}");
            assert_eq!(is_integral(v), v.fract() == 0.0, "{v}");
        }
    }

    #[test]
    fn shapes_are_written_as_the_cloud_reads_them() {
        let reading = Message::Reading(Reading {
            ts: Some(1_795_600_000_000),
            measures: vec![
                m("temp", Measure::Number(22.0)),
                m("ok", Measure::Bool(true)),
                m(
                    "env",
                    Measure::Group(vec![m(
                        "co2",
                        Measure::Aggregate(Aggregate {
                            count: 60,
                            mean: Some(410.5),
                            min: Some(400.0),
                            max: Some(420.0),
                            std: None,
                        }),
                    )]),
                ),
            ],
        });
        assert_eq!(
            reading.to_json(&TOPIC).unwrap(),
            r#"{"ts":1795600000000,"temp":22.0,"ok":true,"env":{"co2":{"count":60,"mean":410.5,"min":400.0,"max":420.0}}}"#
        );
        let series = Message::Series(Series {
            ts: None,
            interval_s: 1.5,
            values: vec![
                vec![m("t", Measure::Integer(1))],
                vec![m("t", Measure::Integer(2))],
            ],
        });
        assert_eq!(
            series.to_json(&TOPIC).unwrap(),
            r#"{"interval":1.5,"values":[{"t":1},{"t":2}]}"#
        );
        let batch = Message::Batch(vec![Reading {
            ts: None,
            measures: vec![m("s", Measure::Text("on".into()))],
        }]);
        assert_eq!(
            batch.to_json(&TOPIC).unwrap(),
            r#"{"readings":[{"s":"on"}]}"#
        );
    }

    #[test]
    fn what_the_cloud_would_refuse_is_refused_before_sending() {
        let one = |measures| Message::Reading(Reading { ts: None, measures });
        let cases = [
            (one(vec![m("ts", Measure::Integer(1))]), "shape"),
            (
                one(vec![m("1st", Measure::Integer(1))]),
                "must start with a letter",
            ),
            (one(vec![m("time", Measure::Integer(1))]), "reserved"),
            (one(vec![m("t", Measure::Number(f64::NAN))]), "not a finite"),
            (
                one(vec![m("t", Measure::Text(String::new()))]),
                "empty string",
            ),
            (
                one(vec![
                    m("a_b", Measure::Integer(1)),
                    m("a", Measure::Group(vec![m("b", Measure::Integer(2))])),
                ]),
                "appears twice",
            ),
            (
                one(vec![m(
                    "g",
                    Measure::Group(vec![m("count", Measure::Integer(2))]),
                )]),
                "reads as an aggregate",
            ),
            (
                one(vec![m(
                    "a",
                    Measure::Aggregate(Aggregate {
                        count: 3,
                        mean: Some(5.0),
                        min: Some(1.0),
                        max: Some(2.0),
                        std: None,
                    }),
                )]),
                "mean is outside",
            ),
            (one(vec![]), "0 measures"),
            (one(vec![m("", Measure::Integer(1))]), "empty level"),
            (
                one(vec![m(
                    "",
                    Measure::Group(vec![m("x", Measure::Integer(1))]),
                )]),
                "empty level",
            ),
            (
                one(vec![
                    m("count", Measure::Integer(2)),
                    m("min", Measure::Integer(1)),
                ]),
                "reads as an aggregate",
            ),
            (
                one(vec![m("s", Measure::Text("x".repeat(2000)))]),
                "Timestream allows 2048",
            ),
            (Message::Batch(vec![]), "0 readings"),
            (
                Message::Series(Series {
                    ts: None,
                    interval_s: 0.0001,
                    values: vec![vec![m("t", Measure::Integer(1))]],
                }),
                "interval",
            ),
        ];
        for (message, expected) in cases {
            let err = message.to_json(&TOPIC).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        let deep = (0..MAX_NESTING).fold(Measure::Integer(1), |inner, _| {
            Measure::Group(vec![m("g", inner)])
        });
        assert!(matches!(
            one(vec![m("g", deep)]).check(&TOPIC),
            Err(EncodeError::TooDeep(_))
        ));
    }
}

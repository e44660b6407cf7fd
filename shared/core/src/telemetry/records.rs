//! Timestream multi-measure records, as plain data: the SDK edge converts them one to one.

use super::reading::{MeasureValue, Reading};

/// Timestream's limit of records per WriteRecords call.
pub const MAX_RECORDS_PER_WRITE: usize = 100;
/// Timestream's limit on one record's size.
pub const MAX_RECORD_BYTES: usize = 2048;
/// Every record's measure name: one multi-measure record per reading.
pub const MEASURE_NAME: &str = "reading";
/// The dimension that names the device.
pub const THING_DIMENSION: &str = "thing_name";
/// The application, from the topic `dt/<app>/<thing>/telemetry`: low cardinality, so a useful
/// dimension. A high-cardinality value (a message id, a reading value) never becomes one.
pub const APP_DIMENSION: &str = "app";

/// One Timestream multi-measure record: one reading's measures under one measure name, time and
/// set of dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestreamRecord {
    /// Dimension names are Shoal's own constants; values come from the message.
    pub dimensions: Vec<(&'static str, String)>,
    /// The record's measure name; always [`MEASURE_NAME`].
    pub measure_name: &'static str,
    /// The multi-measure record's measure values: each name and typed value (its
    /// `MeasureValueType` from [`MeasureValue::type_name`]).
    pub measures: Vec<(String, MeasureValue)>,
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// Higher versions overwrite lower ones for the same dimensions and time; a retry with the
    /// same version and values is accepted as a no-op. The router uses the IoT receive time, so a
    /// redelivered message upserts idempotently and a later correction wins.
    pub version: i64,
}

impl TimestreamRecord {
    /// The record of `reading`, dimensioned by its thing and the `extra` low-cardinality
    /// dimensions.
    pub fn from_reading(reading: Reading, extra: &[(&'static str, &str)]) -> Self {
        let mut dimensions = Vec::with_capacity(1 + extra.len());
        dimensions.push((THING_DIMENSION, reading.thing.into()));
        dimensions.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
        Self {
            dimensions,
            measure_name: MEASURE_NAME,
            measures: reading
                .measures
                .into_iter()
                .map(|(n, v)| (n.0, v))
                .collect(),
            time_ms: reading.time_ms,
            version: 1,
        }
    }

    /// Bytes Timestream counts for the record: every name and value it stores, as text, plus the
    /// time and version (8 bytes each). An overestimate refuses a record a few bytes early rather
    /// than letting Timestream reject it.
    pub fn size_bytes(&self) -> usize {
        self.size_with(MeasureValue::timestream_string_len)
    }

    /// An upper bound of [`Self::size_bytes`] found without formatting doubles
    /// ([`MeasureValue::timestream_string_len_bound`]): the size check formats a record's values
    /// only when the bound passes the limit.
    pub fn size_bytes_bound(&self) -> usize {
        self.size_with(MeasureValue::timestream_string_len_bound)
    }

    /// The record's size with each value's text counted by `value_len`.
    fn size_with(&self, value_len: impl Fn(&MeasureValue) -> usize) -> usize {
        let dimensions: usize = self.dimensions.iter().map(|(n, v)| n.len() + v.len()).sum();
        let measures: usize = self
            .measures
            .iter()
            .map(|(n, v)| n.len() + value_len(v) + v.type_name().len())
            .sum();
        dimensions + self.measure_name.len() + measures + 16
    }
}

/// The WriteRecords calls for `n` records, as index ranges: chunks of at most 100, so n records
/// take ceil(n/100) calls.
pub fn write_ranges(n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n)
        .step_by(MAX_RECORDS_PER_WRITE)
        .map(move |start| start..n.min(start + MAX_RECORDS_PER_WRITE))
}

/// Dimensions every record of `batch` shares, to send once as the call's common attributes.
pub fn common_dimensions(batch: &[TimestreamRecord]) -> Option<&[(&'static str, String)]> {
    let first = &batch.first()?.dimensions;
    batch
        .iter()
        .all(|r| &r.dimensions == first)
        .then_some(first.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ThingName;
    use crate::telemetry::reading::MeasureName;

    #[test]
    fn the_contracts_record_size_is_this_records_size() {
        // Devices check their readings' record size with the contract's figures.
        assert_eq!(shoal_wire::telemetry::MAX_RECORD_BYTES, MAX_RECORD_BYTES);
        let record = TimestreamRecord {
            dimensions: vec![(THING_DIMENSION, "d".into()), (APP_DIMENSION, "a".into())],
            measure_name: MEASURE_NAME,
            measures: vec![],
            time_ms: 0,
            version: 0,
        };
        assert_eq!(
            record.size_bytes(),
            shoal_wire::telemetry::RECORD_OVERHEAD_BYTES + 2
        );
    }
    use proptest::prelude::*;

    fn record(thing: &str) -> TimestreamRecord {
        TimestreamRecord::from_reading(
            Reading {
                thing: ThingName::parse(thing).unwrap(),
                time_ms: 5,
                measures: vec![(MeasureName("temp".into()), MeasureValue::Double(23.0))],
            },
            &[],
        )
    }

    #[test]
    fn reading_becomes_a_multi_measure_record() {
        let r = record("dev-1");
        assert_eq!(r.dimensions, vec![("thing_name", "dev-1".to_owned())]);
        assert_eq!(r.measure_name, "reading");
        assert_eq!(r.measures[0].1.to_timestream_string(), "23.0");
        assert_eq!(r.measures[0].1.type_name(), "DOUBLE");
        // thing_name + dev-1 + reading + temp + 23.0 + DOUBLE + 16
        assert_eq!(r.size_bytes(), 10 + 5 + 7 + 4 + 4 + 6 + 16);
    }

    #[test]
    fn extra_dimensions_follow_the_thing() {
        let r = TimestreamRecord::from_reading(
            Reading {
                thing: ThingName::parse("dev-1").unwrap(),
                time_ms: 5,
                measures: vec![],
            },
            &[(APP_DIMENSION, "farm")],
        );
        assert_eq!(
            r.dimensions,
            vec![
                ("thing_name", "dev-1".to_owned()),
                ("app", "farm".to_owned())
            ]
        );
    }

    #[test]
    fn common_dimensions_only_when_shared() {
        let same = vec![record("a-1"), record("a-1")];
        assert_eq!(common_dimensions(&same).unwrap()[0].1, "a-1");
        assert!(common_dimensions(&[record("a-1"), record("b-1")]).is_none());
        assert!(common_dimensions(&[]).is_none());
    }

    proptest! {
        #[test]
        fn batches_are_ceil_n_over_100_and_cover_every_record_once(n in 0usize..1000) {
            let ranges: Vec<_> = write_ranges(n).collect();
            prop_assert_eq!(ranges.len(), n.div_ceil(100));
            prop_assert!(ranges.iter().all(|r| !r.is_empty() && r.len() <= 100));
            let covered: Vec<usize> = ranges.into_iter().flatten().collect();
            prop_assert_eq!(covered, (0..n).collect::<Vec<_>>());
        }
    }
}

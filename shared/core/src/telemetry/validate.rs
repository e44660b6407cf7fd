//! Checks a decoded reading against Timestream's limits and Shoal's rules. A reading that fails
//! is never dropped: its [`Rejection`] is the quarantine reason.

use thiserror::Error;

use super::reading::{MeasureValue, Reading};
use super::records::{MAX_RECORD_BYTES, TimestreamRecord};

/// Timestream accepts records at most 15 minutes ahead of its clock.
pub const MAX_FUTURE_MS: i64 = 15 * 60 * 1000;
pub(crate) use shoal_wire::telemetry::check_measure_name;
/// The contract's limits on measures (`shoal-wire`): per record, and a name's length.
pub use shoal_wire::telemetry::{MAX_MEASURE_NAME, MAX_MEASURES_PER_RECORD};

/// The time window a reading must fall in, relative to now.
///
/// Timestream writes a record younger than the memory-store retention to the memory store; an
/// older one goes to the magnetic store when the table enables magnetic-store writes (and is
/// rejected otherwise), up to the magnetic-store retention
/// (<https://docs.aws.amazon.com/timestream/latest/developerguide/storage.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Now, in ms since the epoch.
    pub now_ms: i64,
    /// The table's memory-store retention, in ms.
    pub memory_retention_ms: i64,
    /// The table's magnetic-store retention in ms when magnetic-store writes are enabled; `None`
    /// when they are not (readings older than the memory store are then refused).
    pub magnetic_retention_ms: Option<i64>,
}

impl Limits {
    /// The oldest a reading may be, in ms before now.
    pub fn max_age_ms(&self) -> i64 {
        self.magnetic_retention_ms
            .unwrap_or(self.memory_retention_ms)
            .max(self.memory_retention_ms)
    }

    /// A reading at `time_ms` goes to the magnetic store (late data).
    pub fn is_late(&self, time_ms: i64) -> bool {
        self.now_ms.saturating_sub(time_ms) > self.memory_retention_ms
    }
}

/// Why a reading is refused; the text is what the quarantine records.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Rejection {
    /// The reading's time is more than [`MAX_FUTURE_MS`] (15 minutes) ahead of now.
    #[error(
        "timestamp {time_ms} is {ahead_ms} ms in the future; Timestream accepts at most 15 minutes"
    )]
    InFuture {
        /// The reading's time, in ms since the Unix epoch.
        time_ms: i64,
        /// How far ahead of [`Limits::now_ms`] it is, in ms.
        ahead_ms: i64,
    },
    /// The reading is older than the table keeps ([`Limits::max_age_ms`]).
    #[error("timestamp {time_ms} is older than the {store}-store retention ({retention_ms} ms)")]
    TooOld {
        /// The reading's time, in ms since the Unix epoch.
        time_ms: i64,
        /// The oldest age accepted, in ms ([`Limits::max_age_ms`]).
        retention_ms: i64,
        /// The store whose retention was passed: `"magnetic"` when magnetic-store writes are
        /// enabled, else `"memory"`.
        store: &'static str,
    },
    /// The reading holds no measure (a record needs at least one).
    #[error("reading has no measures")]
    NoMeasures,
    /// The reading holds more than [`MAX_MEASURES_PER_RECORD`] measures.
    #[error("{count} measures; a Timestream record holds at most {MAX_MEASURES_PER_RECORD}")]
    TooManyMeasures {
        /// How many measures the reading holds.
        count: usize,
    },
    /// A DOUBLE measure is NaN or infinite.
    #[error("measure {name:?} is {value}; only finite numbers are stored")]
    NotFinite {
        /// The measure's name.
        name: String,
        /// The non-finite value.
        value: f64,
    },
    /// A measure name breaks the contract's naming rules (pattern, length, reserved names).
    #[error("measure name {name:?} {why}")]
    BadMeasureName {
        /// The name as the device wrote it.
        name: String,
        /// Which rule it breaks, as a predicate (`"must start with a letter"`).
        why: &'static str,
    },
    /// Two measures of the reading share a name (e.g. flattening `a_b` beside `a: {b}`).
    #[error("measure name {name:?} appears twice")]
    DuplicateMeasure {
        /// The repeated name.
        name: String,
    },
    /// The built record exceeds Timestream's [`MAX_RECORD_BYTES`].
    #[error("record is {bytes} bytes; Timestream allows {MAX_RECORD_BYTES}")]
    RecordTooLarge {
        /// The record's size as [`TimestreamRecord::size_bytes`] counts it.
        bytes: usize,
    },
    /// A VARCHAR measure is the empty string, which Timestream refuses.
    #[error("measure {name:?} is an empty string; Timestream stores no empty value")]
    EmptyValue {
        /// The measure's name.
        name: String,
    },
}

impl Rejection {
    /// A short stable code for counters and quarantine keys.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InFuture { .. } => "timestamp_in_future",
            Rejection::TooOld { .. } => "timestamp_too_old",
            Rejection::NoMeasures => "no_measures",
            Rejection::TooManyMeasures { .. } => "too_many_measures",
            Rejection::NotFinite { .. } => "not_finite",
            Rejection::BadMeasureName { .. } => "bad_measure_name",
            Rejection::DuplicateMeasure { .. } => "duplicate_measure",
            Rejection::RecordTooLarge { .. } => "record_too_large",
            Rejection::EmptyValue { .. } => "empty_value",
        }
    }
}

/// Checks `reading` and builds its record (moving the measures into it); the record's size is
/// part of the check.
///
/// # Errors
/// The first [`Rejection`] found: the time window ([`Rejection::InFuture`],
/// [`Rejection::TooOld`]), the measure count, each measure's name and value, then the record's
/// size.
pub fn validate(reading: Reading, limits: &Limits) -> Result<TimestreamRecord, Rejection> {
    validate_with_dimensions(reading, limits, &[])
}

/// [`validate`], the record also carrying the `extra` low-cardinality dimensions (they count
/// toward its size).
///
/// # Errors
/// As [`validate`]; [`Rejection::RecordTooLarge`] also counts the `extra` dimensions.
pub fn validate_with_dimensions(
    reading: Reading,
    limits: &Limits,
    extra: &[(&'static str, &str)],
) -> Result<TimestreamRecord, Rejection> {
    let ahead_ms = reading.time_ms.saturating_sub(limits.now_ms);
    if ahead_ms > MAX_FUTURE_MS {
        return Err(Rejection::InFuture {
            time_ms: reading.time_ms,
            ahead_ms,
        });
    }
    if limits.now_ms.saturating_sub(reading.time_ms) > limits.max_age_ms() {
        return Err(Rejection::TooOld {
            time_ms: reading.time_ms,
            retention_ms: limits.max_age_ms(),
            store: if limits.magnetic_retention_ms.is_some() {
                "magnetic"
            } else {
                "memory"
            },
        });
    }
    if reading.measures.is_empty() {
        return Err(Rejection::NoMeasures);
    }
    if reading.measures.len() > MAX_MEASURES_PER_RECORD {
        return Err(Rejection::TooManyMeasures {
            count: reading.measures.len(),
        });
    }
    for (i, (name, value)) in reading.measures.iter().enumerate() {
        check_measure_name(&name.0).map_err(|why| Rejection::BadMeasureName {
            name: name.0.clone(),
            why,
        })?;
        // Keys of one JSON object are unique; flattening (`a_b` beside `a: {b}`) can collide.
        // Readings are small: a scan beats hashing every name.
        if reading.measures[..i]
            .iter()
            .any(|(earlier, _)| earlier == name)
        {
            return Err(Rejection::DuplicateMeasure {
                name: name.0.clone(),
            });
        }
        match value {
            MeasureValue::Double(v) if !v.is_finite() => {
                return Err(Rejection::NotFinite {
                    name: name.0.clone(),
                    value: *v,
                });
            }
            // Timestream's MeasureValue.Value is at least one character: an empty one fails the
            // whole WriteRecords call, not just this record.
            MeasureValue::Varchar(v) if v.is_empty() => {
                return Err(Rejection::EmptyValue {
                    name: name.0.clone(),
                });
            }
            _ => {}
        }
    }
    let record = TimestreamRecord::from_reading(reading, extra);
    if record.size_bytes_bound() > MAX_RECORD_BYTES {
        let bytes = record.size_bytes();
        if bytes > MAX_RECORD_BYTES {
            return Err(Rejection::RecordTooLarge { bytes });
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ThingName;
    use crate::telemetry::reading::MeasureName;

    const NOW: i64 = 1_764_064_800_000;
    const LIMITS: Limits = Limits {
        now_ms: NOW,
        memory_retention_ms: 24 * 3600 * 1000,
        magnetic_retention_ms: None,
    };

    fn reading(time_ms: i64, measures: Vec<(&str, MeasureValue)>) -> Reading {
        Reading {
            thing: ThingName::parse("dev-1").unwrap(),
            time_ms,
            measures: measures
                .into_iter()
                .map(|(n, v)| (MeasureName(n.into()), v))
                .collect(),
        }
    }

    #[test]
    fn time_window_edges() {
        let temp = || vec![("temp", MeasureValue::Double(1.0))];
        assert!(validate(reading(NOW + MAX_FUTURE_MS, temp()), &LIMITS).is_ok());
        assert!(matches!(
            validate(reading(NOW + MAX_FUTURE_MS + 1, temp()), &LIMITS),
            Err(Rejection::InFuture {
                ahead_ms: 900_001,
                ..
            })
        ));
        assert!(validate(reading(NOW - LIMITS.memory_retention_ms, temp()), &LIMITS).is_ok());
        assert!(matches!(
            validate(
                reading(NOW - LIMITS.memory_retention_ms - 1, temp()),
                &LIMITS
            ),
            Err(Rejection::TooOld { .. })
        ));
    }

    #[test]
    fn late_readings_are_written_when_the_magnetic_store_takes_them() {
        let temp = || vec![("temp", MeasureValue::Double(1.0))];
        let day = 24 * 3_600_000;
        let with_magnetic = Limits {
            magnetic_retention_ms: Some(365 * day),
            ..LIMITS
        };
        let three_days_old = reading(NOW - 3 * day, temp());
        assert!(with_magnetic.is_late(NOW - 3 * day));
        assert!(!with_magnetic.is_late(NOW - day));
        assert!(validate(three_days_old.clone(), &with_magnetic).is_ok());
        assert_eq!(
            validate(three_days_old, &LIMITS).unwrap_err().to_string(),
            format!(
                "timestamp {} is older than the memory-store retention (86400000 ms)",
                NOW - 3 * day
            )
        );
        assert!(validate(reading(NOW - 365 * day, temp()), &with_magnetic).is_ok());
        let err = validate(reading(NOW - 365 * day - 1, temp()), &with_magnetic).unwrap_err();
        assert_eq!(err.code(), "timestamp_too_old");
        assert!(
            err.to_string().contains("magnetic-store retention"),
            "{err}"
        );
    }

    #[test]
    fn non_finite_values_are_refused() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = validate(
                reading(NOW, vec![("temp", MeasureValue::Double(v))]),
                &LIMITS,
            )
            .unwrap_err();
            assert_eq!(err.code(), "not_finite");
        }
    }

    #[test]
    fn measure_names() {
        let ok = |n: &str| validate(reading(NOW, vec![(n, MeasureValue::Bigint(1))]), &LIMITS);
        assert!(ok("temp").is_ok());
        assert!(ok("env_air_temp2").is_ok());
        assert!(ok(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "app",
            "2temp",
            "_x",
            "te mp",
            "t-1",
            "time",
            "Thing_Name",
            "ts_x",
            "measure_value_x",
            &"a".repeat(65),
        ] {
            assert_eq!(ok(bad).unwrap_err().code(), "bad_measure_name", "{bad:?}");
        }
    }

    #[test]
    fn empty_duplicate_and_oversized_readings() {
        assert_eq!(
            validate(reading(NOW, vec![]), &LIMITS),
            Err(Rejection::NoMeasures)
        );
        let dup = reading(
            NOW,
            vec![
                ("a", MeasureValue::Bigint(1)),
                ("a", MeasureValue::Bigint(2)),
            ],
        );
        assert_eq!(
            validate(dup, &LIMITS).unwrap_err().code(),
            "duplicate_measure"
        );
        let empty = reading(NOW, vec![("fw", MeasureValue::Varchar(String::new()))]);
        assert_eq!(validate(empty, &LIMITS).unwrap_err().code(), "empty_value");
        let big = reading(NOW, vec![("note", MeasureValue::Varchar("x".repeat(2100)))]);
        assert_eq!(
            validate(big, &LIMITS).unwrap_err().code(),
            "record_too_large"
        );
        let many: Vec<_> = (0..257)
            .map(|i| (format!("m{i}"), MeasureValue::Bigint(i)))
            .collect();
        let many = Reading {
            measures: many.into_iter().map(|(n, v)| (MeasureName(n), v)).collect(),
            ..reading(NOW, vec![])
        };
        assert_eq!(
            validate(many, &LIMITS).unwrap_err().code(),
            "too_many_measures"
        );
    }
}

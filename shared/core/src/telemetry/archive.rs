//! The Parquet archive: every reading Timestream accepted, one object per invocation batch.
//!
//! Long format, one row per measure, so one fixed schema (and one Glue table) holds every device
//! model:
//!
//! | Column | Parquet type | Meaning |
//! | --- | --- | --- |
//! | `thing_name` | BYTE_ARRAY (STRING), required | the device |
//! | `app` | BYTE_ARRAY (STRING), required | the application (`dt/<app>/…`), empty if none |
//! | `time` | INT64 TIMESTAMP(MILLIS, UTC), required | the reading's time |
//! | `measure_name` | BYTE_ARRAY (STRING), required | e.g. `temp` |
//! | `measure_type` | BYTE_ARRAY (STRING), required | DOUBLE, BIGINT, BOOLEAN or VARCHAR |
//! | `value_double` | DOUBLE, optional | set when the type is DOUBLE |
//! | `value_bigint` | INT64, optional | set when the type is BIGINT |
//! | `value_boolean` | BOOLEAN, optional | set when the type is BOOLEAN |
//! | `value_varchar` | BYTE_ARRAY (STRING), optional | set when the type is VARCHAR |
//! | `received_at` | INT64 TIMESTAMP(MILLIS, UTC), required | when IoT Core received the message (the record's Timestream version) |
//! | `reading_id` | BYTE_ARRAY (STRING), required | [`reading_id`]: the same for every delivery of one reading |
//!
//! A redelivered message (MQTT QoS 1 resend, SQS redelivery, Kinesis retry) is archived again —
//! IoT Core gives it a new receive time, Timestream upserts it — so a reader counts each reading
//! once by `reading_id` and measure, keeping the row with the latest `received_at` (the
//! `telemetry_latest` view in infra/template.yaml), exactly the value Timestream keeps.
//!
//! Objects live at `telemetry/year=YYYY/month=MM/day=DD/hour=HH/<batch-id>.parquet`, partitioned by
//! the hour the batch was archived (UTC), Snappy-compressed.

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;
use thiserror::Error;

use super::reading::MeasureValue;
use super::records::{APP_DIMENSION, THING_DIMENSION, TimestreamRecord};

/// The archive's Parquet schema (the Glue table in infra/template.yaml matches it).
pub const SCHEMA: &str = "message telemetry {
  REQUIRED BYTE_ARRAY thing_name (STRING);
  REQUIRED BYTE_ARRAY app (STRING);
  REQUIRED INT64 time (TIMESTAMP(MILLIS,true));
  REQUIRED BYTE_ARRAY measure_name (STRING);
  REQUIRED BYTE_ARRAY measure_type (STRING);
  OPTIONAL DOUBLE value_double;
  OPTIONAL INT64 value_bigint;
  OPTIONAL BOOLEAN value_boolean;
  OPTIONAL BYTE_ARRAY value_varchar (STRING);
  REQUIRED INT64 received_at (TIMESTAMP(MILLIS,true));
  REQUIRED BYTE_ARRAY reading_id (STRING);
}";

/// A reading's identity, as Timestream's: the device, the application and the time (a record is
/// identified by its dimensions, measure name and time; a second write of the same is an upsert).
/// 32 hex digits: the first 128 bits of SHA-256 over `thing \0 app \0 time_ms`.
pub fn reading_id(thing: &str, app: &str, time_ms: i64) -> String {
    let id = reading_id_bytes(thing, app, time_ms);
    // The bytes are ASCII hex digits.
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

/// [`reading_id`] as its 32 ASCII bytes, without formatting machinery: the archive computes one
/// per reading.
fn reading_id_bytes(thing: &str, app: &str, time_ms: i64) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Sha256::new();
    hasher.update(thing.as_bytes());
    hasher.update([0]);
    hasher.update(app.as_bytes());
    hasher.update([0]);
    hasher.update(time_ms.to_be_bytes());
    let digest = hasher.finalize();
    let mut id = [0u8; 32];
    for (pair, byte) in id.chunks_exact_mut(2).zip(&digest[..16]) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    id
}

/// The Parquet writer failed (schema, column or file write); wraps the `parquet` crate's error.
#[derive(Debug, Error)]
#[error("cannot write the Parquet archive: {0}")]
pub struct ArchiveError(#[from] parquet::errors::ParquetError);

/// Hive partition folders for a UTC instant: `year=YYYY/month=MM/day=DD/hour=HH`.
pub fn hour_partitions(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "year={:04}/month={:02}/day={:02}/hour={:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour()
    )
}

/// `telemetry/year=YYYY/month=MM/day=DD/hour=HH/<batch_id>.parquet` for a batch archived at
/// `archived_at_ms`.
pub fn archive_key(archived_at_ms: i64, batch_id: &str) -> String {
    format!(
        "telemetry/{}/{batch_id}.parquet",
        hour_partitions(archived_at_ms)
    )
}

/// Columns of the long format, filled row by row.
#[derive(Default)]
struct Columns {
    thing: Vec<ByteArray>,
    app: Vec<ByteArray>,
    time: Vec<i64>,
    name: Vec<ByteArray>,
    kind: Vec<ByteArray>,
    double: (Vec<f64>, Vec<i16>),
    bigint: (Vec<i64>, Vec<i16>),
    boolean: (Vec<bool>, Vec<i16>),
    varchar: (Vec<ByteArray>, Vec<i16>),
    received_at: Vec<i64>,
    reading_id: Vec<ByteArray>,
    /// Values repeated row after row share one buffer (a `ByteArray` clone is a reference
    /// count): the last thing and app, every measure name and type seen.
    last_thing: Option<ByteArray>,
    last_app: Option<ByteArray>,
    names: std::collections::HashMap<String, ByteArray>,
    recent_names: Vec<ByteArray>,
    kinds: [Option<ByteArray>; 4],
}

/// `cached` when it holds `text`, else a new buffer that becomes the cached one.
fn shared(cached: &mut Option<ByteArray>, text: &str) -> ByteArray {
    match cached {
        Some(bytes) if bytes.data() == text.as_bytes() => bytes.clone(),
        _ => cached.insert(ByteArray::from(text)).clone(),
    }
}

fn push_optional<T>(column: &mut (Vec<T>, Vec<i16>), value: Option<T>) {
    match value {
        Some(v) => {
            column.0.push(v);
            column.1.push(1);
        }
        None => column.1.push(0),
    }
}

impl Columns {
    /// Columns with room for `rows` rows: no column grows while it is filled.
    fn with_capacity(rows: usize) -> Self {
        Self {
            thing: Vec::with_capacity(rows),
            app: Vec::with_capacity(rows),
            time: Vec::with_capacity(rows),
            name: Vec::with_capacity(rows),
            kind: Vec::with_capacity(rows),
            double: (Vec::with_capacity(rows), Vec::with_capacity(rows)),
            bigint: (Vec::new(), Vec::with_capacity(rows)),
            boolean: (Vec::new(), Vec::with_capacity(rows)),
            varchar: (Vec::new(), Vec::with_capacity(rows)),
            received_at: Vec::with_capacity(rows),
            reading_id: Vec::with_capacity(rows),
            ..Self::default()
        }
    }

    /// The shared buffer of a measure name: readings of one device model name their measures in
    /// the same order, so the previous reading's name at the same position usually is the one;
    /// else the table of every name seen.
    fn name_bytes(&mut self, position: usize, name: &str) -> ByteArray {
        if let Some(recent) = self.recent_names.get(position)
            && recent.data() == name.as_bytes()
        {
            return recent.clone();
        }
        let bytes = match self.names.get(name) {
            Some(cached) => cached.clone(),
            None => {
                let fresh = ByteArray::from(name);
                self.names.insert(name.to_owned(), fresh.clone());
                fresh
            }
        };
        let known = self.recent_names.len();
        match self.recent_names.get_mut(position) {
            Some(slot) => *slot = bytes.clone(),
            None if position == known => self.recent_names.push(bytes.clone()),
            None => {}
        }
        bytes
    }

    /// The rows of `record`, whose reading id is `id`.
    fn push(&mut self, record: &TimestreamRecord, id: &ByteArray) {
        let (thing, app) = thing_and_app(record);
        let thing = shared(&mut self.last_thing, thing);
        let app = shared(&mut self.last_app, app);
        for (position, (name, value)) in record.measures.iter().enumerate() {
            self.thing.push(thing.clone());
            self.app.push(app.clone());
            self.time.push(record.time_ms);
            let name = self.name_bytes(position, name);
            self.name.push(name);
            let slot = match value {
                MeasureValue::Double(_) => 0,
                MeasureValue::Bigint(_) => 1,
                MeasureValue::Boolean(_) => 2,
                MeasureValue::Varchar(_) => 3,
            };
            let kind = self.kinds[slot].get_or_insert_with(|| ByteArray::from(value.type_name()));
            self.kind.push(kind.clone());
            let (d, b, t, v) = match value {
                MeasureValue::Double(x) => (Some(*x), None, None, None),
                MeasureValue::Bigint(x) => (None, Some(*x), None, None),
                MeasureValue::Boolean(x) => (None, None, Some(*x), None),
                MeasureValue::Varchar(x) => (None, None, None, Some(ByteArray::from(x.as_str()))),
            };
            push_optional(&mut self.double, d);
            push_optional(&mut self.bigint, b);
            push_optional(&mut self.boolean, t);
            push_optional(&mut self.varchar, v);
            self.received_at.push(record.version);
            self.reading_id.push(id.clone());
        }
    }
}

/// The record's `thing_name` and `app` dimensions (empty when absent).
fn thing_and_app(record: &TimestreamRecord) -> (&str, &str) {
    let dimension = |wanted: &str| {
        record
            .dimensions
            .iter()
            .find(|(name, _)| *name == wanted)
            .map_or("", |(_, value)| value.as_str())
    };
    (dimension(THING_DIMENSION), dimension(APP_DIMENSION))
}

/// One Parquet file holding `records` (one row group).
///
/// # Errors
/// [`ArchiveError`] when the Parquet writer fails.
pub fn to_parquet<'a>(
    records: impl IntoIterator<Item = &'a TimestreamRecord>,
) -> Result<Vec<u8>, ArchiveError> {
    let records: Vec<&TimestreamRecord> = records.into_iter().collect();
    // Every reading id in one buffer, each row's value a slice of it (a reference count, not an
    // allocation per reading).
    const ID: usize = 32;
    let mut ids = Vec::with_capacity(records.len() * ID);
    for record in &records {
        let (thing, app) = thing_and_app(record);
        ids.extend_from_slice(&reading_id_bytes(thing, app, record.time_ms));
    }
    let ids = bytes::Bytes::from(ids);
    let mut columns = Columns::with_capacity(records.iter().map(|r| r.measures.len()).sum());
    for (i, record) in records.into_iter().enumerate() {
        columns.push(record, &ByteArray::from(ids.slice(i * ID..(i + 1) * ID)));
    }
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            // Column-chunk statistics are what Athena prunes by; page-level ones only cost.
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by("shoal telemetry-router".into())
            // Statistics where a reader prunes: the device, the times and the values (after the
            // hour partition). An SQS batch's object holds many devices, but a direct
            // invocation's holds one and a Kinesis shard's a few, so `thing_name`'s min/max can
            // exclude whole objects. The app, measure names and types, and reading ids hold
            // every value of a batch: their min/max would rarely exclude one, and comparing every
            // row's bytes for them cost about a sixth of the encoding.
            .set_column_statistics_enabled(ColumnPath::from("app"), EnabledStatistics::None)
            .set_column_statistics_enabled(
                ColumnPath::from("measure_name"),
                EnabledStatistics::None,
            )
            .set_column_statistics_enabled(
                ColumnPath::from("measure_type"),
                EnabledStatistics::None,
            )
            .set_column_statistics_enabled(ColumnPath::from("reading_id"), EnabledStatistics::None)
            // Plain encoding and Snappy instead of dictionaries: a dictionary costs a hash of
            // every row's value, and Snappy shrinks the repeated names, types and things almost
            // as well (the object is about 10% larger, so about 10% more bytes for Athena to
            // scan; its encoding about a third cheaper: BENCHMARKS.md). Readers lose dictionary
            // filtering of row groups (Trino's, by `measure_name`), not pruning by statistics.
            // `received_at` keeps its dictionary: one value per message, hashed cheaply.
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("received_at"), true)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, properties)?;
    let mut group = writer.next_row_group()?;
    // Columns in SCHEMA order; `next_column` hands them out in that order.
    macro_rules! write_column {
        ($kind:ty, $values:expr, $levels:expr) => {{
            let mut column = group
                .next_column()?
                .expect("SCHEMA and the columns written agree");
            column
                .typed::<$kind>()
                .write_batch($values, $levels, None)?;
            column.close()?;
        }};
    }
    write_column!(ByteArrayType, &columns.thing, None);
    write_column!(ByteArrayType, &columns.app, None);
    write_column!(Int64Type, &columns.time, None);
    write_column!(ByteArrayType, &columns.name, None);
    write_column!(ByteArrayType, &columns.kind, None);
    write_column!(DoubleType, &columns.double.0, Some(&columns.double.1));
    write_column!(Int64Type, &columns.bigint.0, Some(&columns.bigint.1));
    write_column!(BoolType, &columns.boolean.0, Some(&columns.boolean.1));
    write_column!(ByteArrayType, &columns.varchar.0, Some(&columns.varchar.1));
    write_column!(Int64Type, &columns.received_at, None);
    write_column!(ByteArrayType, &columns.reading_id, None);
    group.close()?;
    Ok(writer.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::{Field, Row};

    fn record(thing: &str, time_ms: i64, measures: Vec<(&str, MeasureValue)>) -> TimestreamRecord {
        TimestreamRecord {
            dimensions: vec![
                (THING_DIMENSION, thing.into()),
                (APP_DIMENSION, "farm".into()),
            ],
            measure_name: "reading",
            measures: measures.into_iter().map(|(n, v)| (n.into(), v)).collect(),
            time_ms,
            version: time_ms + 5,
        }
    }

    fn rows(bytes: Vec<u8>) -> Vec<Row> {
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        reader
            .get_row_iter(None)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn every_measure_becomes_a_row_with_its_typed_value() {
        let records = vec![
            record(
                "dev-1",
                1000,
                vec![
                    ("temp", MeasureValue::Double(23.0)),
                    ("rssi", MeasureValue::Bigint(-70)),
                ],
            ),
            record(
                "dev-2",
                2000,
                vec![
                    ("door", MeasureValue::Boolean(true)),
                    ("fw", MeasureValue::Varchar("1.2.0".into())),
                ],
            ),
        ];
        let rows = rows(to_parquet(&records).unwrap());
        assert_eq!(rows.len(), 4);
        let fields: Vec<Vec<(String, Field)>> =
            rows.into_iter().map(|r| r.into_columns()).collect();
        let get = |row: usize, name: &str| {
            fields[row]
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        assert_eq!(get(0, "thing_name"), Field::Str("dev-1".into()));
        assert_eq!(get(0, "app"), Field::Str("farm".into()));
        assert_eq!(get(0, "time"), Field::TimestampMillis(1000));
        assert_eq!(get(0, "measure_name"), Field::Str("temp".into()));
        assert_eq!(get(0, "measure_type"), Field::Str("DOUBLE".into()));
        assert_eq!(get(0, "value_double"), Field::Double(23.0));
        assert_eq!(get(0, "value_bigint"), Field::Null);
        assert_eq!(get(1, "value_bigint"), Field::Long(-70));
        assert_eq!(get(2, "value_boolean"), Field::Bool(true));
        assert_eq!(get(3, "value_varchar"), Field::Str("1.2.0".into()));
        assert_eq!(get(3, "value_double"), Field::Null);
        assert_eq!(get(3, "received_at"), Field::TimestampMillis(2005));
        // One id per reading, shared by its measures' rows.
        assert_eq!(get(0, "reading_id"), get(1, "reading_id"));
        assert_ne!(get(1, "reading_id"), get(2, "reading_id"));
        assert_eq!(
            get(0, "reading_id"),
            Field::Str(reading_id("dev-1", "farm", 1000))
        );
    }

    #[test]
    fn reading_ids_follow_timestream_s_identity() {
        let id = reading_id("dev-1", "farm", 1000);
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        // SHA-256("dev-1\0farm\0" ‖ 1000 as 8 big-endian bytes), first 16 bytes, lowercase hex
        // (Python: hashlib.sha256(b"dev-1\0farm\0" + struct.pack(">q", 1000)).hexdigest()[:32]).
        assert_eq!(id, "5a4bd84d4fc146b0808a5b014eeecf00");
        assert_ne!(id, reading_id("dev-1", "farm", 1001));
        assert_ne!(id, reading_id("dev-2", "farm", 1000));
        assert_ne!(id, reading_id("dev-1", "farms", 1000));
        // The separator keeps "ab"+"c" apart from "a"+"bc".
        assert_ne!(reading_id("ab", "c", 1), reading_id("a", "bc", 1));
    }

    #[test]
    fn an_empty_batch_is_a_valid_empty_file() {
        assert!(rows(to_parquet(&[]).unwrap()).is_empty());
    }

    #[test]
    fn keys_are_hive_partitioned_by_utc_hour() {
        // 2026-11-25T09:46:40Z
        assert_eq!(
            archive_key(1_795_600_000_000, "req-1"),
            "telemetry/year=2026/month=11/day=25/hour=09/req-1.parquet"
        );
        assert_eq!(
            archive_key(0, "b"),
            "telemetry/year=1970/month=01/day=01/hour=00/b.parquet"
        );
        // 2024-02-29T23:59:59.999Z, a leap day.
        assert_eq!(
            archive_key(1_709_251_199_999, "b"),
            "telemetry/year=2024/month=02/day=29/hour=23/b.parquet"
        );
        // 2000-03-01T00:00:00Z
        assert_eq!(
            archive_key(951_868_800_000, "b"),
            "telemetry/year=2000/month=03/day=01/hour=00/b.parquet"
        );
    }
}

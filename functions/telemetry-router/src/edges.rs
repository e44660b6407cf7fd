//! The router's AWS edges: Timestream WriteRecords, the S3 quarantine and the S3 Parquet archive.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_timestreamwrite::operation::write_records::WriteRecordsError;
use aws_sdk_timestreamwrite::types::{
    Dimension, MeasureValue as SdkMeasureValue, MeasureValueType, Record, TimeUnit,
};
use shoal_aws::client::{AwsResultExt, EdgeError};
use shoal_aws::config::{BucketName, TimestreamTarget};
use shoal_core::telemetry::archive::hour_partitions;
use shoal_core::telemetry::records::common_dimensions;
use shoal_core::telemetry::{MeasureValue, TimestreamRecord};

use crate::router::{ArchiveStore, QuarantineItem, QuarantineStore, RejectedRecord, TelemetrySink};

/// Writes records to one Timestream table. Throttling is retried by the SDK's standard retry
/// mode (exponential backoff with jitter); configure attempts on the client.
pub struct TimestreamSink {
    client: aws_sdk_timestreamwrite::Client,
    target: TimestreamTarget,
}

impl TimestreamSink {
    pub fn new(client: aws_sdk_timestreamwrite::Client, target: TimestreamTarget) -> Self {
        Self { client, target }
    }
}

fn measure_type(value: &MeasureValue) -> MeasureValueType {
    match value {
        MeasureValue::Double(_) => MeasureValueType::Double,
        MeasureValue::Bigint(_) => MeasureValueType::Bigint,
        MeasureValue::Boolean(_) => MeasureValueType::Boolean,
        MeasureValue::Varchar(_) => MeasureValueType::Varchar,
    }
}

fn dimensions(pairs: &[(&'static str, String)]) -> Result<Vec<Dimension>, EdgeError> {
    pairs
        .iter()
        .map(|(name, value)| {
            Dimension::builder()
                .name(*name)
                .value(value)
                .build()
                .map_err(|e| build_error(e.to_string()))
        })
        .collect()
}

fn build_error(message: String) -> EdgeError {
    EdgeError::request("timestream-write", "WriteRecords", message)
}

/// The SDK request for `batch`: measure name, type and time unit always hoisted into the common
/// attributes, and the dimensions too when every record shares them. Each record is built from
/// its parts in one go (no builder moved per value, every vector sized once): the router builds
/// one per reading.
pub fn to_sdk(batch: &[TimestreamRecord]) -> Result<(Record, Vec<Record>), EdgeError> {
    let shared = common_dimensions(batch);
    let common = Record::builder()
        .measure_value_type(MeasureValueType::Multi)
        .time_unit(TimeUnit::Milliseconds)
        .set_measure_name(batch.first().map(|r| r.measure_name.to_owned()))
        .set_dimensions(shared.map(dimensions).transpose()?)
        .build();
    let mut time = itoa::Buffer::new();
    let mut records = Vec::with_capacity(batch.len());
    for r in batch {
        let mut values = Vec::with_capacity(r.measures.len());
        for (name, value) in &r.measures {
            values.push(
                SdkMeasureValue::builder()
                    .set_name(Some(name.clone()))
                    .set_value(Some(value.to_timestream_string()))
                    .set_type(Some(measure_type(value)))
                    .build()
                    .map_err(|e| build_error(e.to_string()))?,
            );
        }
        let own_dimensions = match shared {
            Some(_) => None,
            None => Some(dimensions(&r.dimensions)?),
        };
        records.push(
            Record::builder()
                .set_time(Some(time.format(r.time_ms).to_owned()))
                .set_version(Some(r.version))
                .set_dimensions(own_dimensions)
                .set_measure_values(Some(values))
                .build(),
        );
    }
    Ok((common, records))
}

impl TelemetrySink for TimestreamSink {
    async fn write(&self, batch: &[TimestreamRecord]) -> Result<Vec<RejectedRecord>, EdgeError> {
        let (common, records) = to_sdk(batch)?;
        let sent = self
            .client
            .write_records()
            .database_name(self.target.database.as_str())
            .table_name(self.target.table.as_str())
            .common_attributes(common)
            .set_records(Some(records))
            .send()
            .await;
        let err = match sent {
            Ok(_) => return Ok(Vec::new()),
            Err(err) => err,
        };
        // Some records refused: the call wrote the others; report the refused ones by index.
        let rejected = match err.as_service_error() {
            Some(WriteRecordsError::RejectedRecordsException(rejected)) => Some(
                rejected
                    .rejected_records()
                    .iter()
                    .map(|r| RejectedRecord {
                        index: usize::try_from(r.record_index()).unwrap_or(usize::MAX),
                        reason: match r.existing_version() {
                            Some(v) => format!(
                                "{} (existing version {v})",
                                r.reason().unwrap_or("rejected")
                            ),
                            None => r.reason().unwrap_or("rejected").to_owned(),
                        },
                    })
                    .collect(),
            ),
            _ => None,
        };
        rejected
            .ok_or_else(|| shoal_aws::client::sdk_error("timestream-write", "WriteRecords", err))
    }
}

/// Stores refused input under `quarantine/` in the archive bucket: the object's body is the
/// message exactly as delivered; reason and source ride along as object metadata.
pub struct S3Quarantine {
    client: aws_sdk_s3::Client,
    bucket: BucketName,
}

impl S3Quarantine {
    pub fn new(client: aws_sdk_s3::Client, bucket: BucketName) -> Self {
        Self { client, bucket }
    }
}

/// FNV-1a: a stable fingerprint of the original bytes, so a redelivered message overwrites its
/// own quarantine object instead of adding a second one.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `quarantine/year=YYYY/month=MM/day=DD/hour=HH/<thing>/<received_at>-<fingerprint>.json`, one
/// object per message, filed under the hour IoT Core received it (else the hour the queue or
/// stream took it, else the invocation's). The same message always gets the same key.
pub fn quarantine_key(item: &QuarantineItem) -> String {
    format!(
        "quarantine/{}/{}/{}-{:016x}.json",
        hour_partitions(item.filed_at_ms),
        item.thing.as_deref().unwrap_or("unknown-thing"),
        item.received_at_ms.unwrap_or(item.filed_at_ms),
        fingerprint(&item.original),
    )
}

/// S3 user metadata is ASCII and at most 2 KB in all: keep each value within 512 bytes.
fn metadata_value(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect()
}

impl QuarantineStore for S3Quarantine {
    async fn put(&self, item: &QuarantineItem) -> Result<(), EdgeError> {
        let mut request = self
            .client
            .put_object()
            .bucket(self.bucket.as_str())
            .key(quarantine_key(item))
            .content_type("application/json")
            .body(ByteStream::from(item.body()))
            .metadata(
                "reason-codes",
                metadata_value(&item.reason_codes().join(",")),
            )
            .metadata("readings", item.readings.to_string())
            .metadata("refused-readings", item.refused_readings().to_string());
        if let Some(topic) = &item.topic {
            request = request.metadata("topic", metadata_value(topic));
        }
        if !item.message_id.is_empty() {
            request = request.metadata("message-id", metadata_value(&item.message_id));
        }
        request.send().await.aws("s3", "PutObject")?;
        Ok(())
    }
}

/// Writes Parquet archive objects to the archive bucket.
pub struct S3Archive {
    client: aws_sdk_s3::Client,
    bucket: BucketName,
}

impl S3Archive {
    pub fn new(client: aws_sdk_s3::Client, bucket: BucketName) -> Self {
        Self { client, bucket }
    }
}

impl ArchiveStore for S3Archive {
    async fn put(&self, key: &str, parquet: Vec<u8>) -> Result<(), EdgeError> {
        self.client
            .put_object()
            .bucket(self.bucket.as_str())
            .key(key)
            .content_type("application/vnd.apache.parquet")
            .body(ByteStream::from(parquet))
            .send()
            .await
            .aws("s3", "PutObject")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(original: &[u8], received_at_ms: Option<i64>) -> QuarantineItem {
        QuarantineItem {
            topic: Some("dt/app/dev-1/telemetry".into()),
            thing: Some("dev-1".into()),
            received_at_ms,
            filed_at_ms: received_at_ms.unwrap_or(1_795_600_000_000),
            message_id: String::new(),
            readings: 2,
            refused: Vec::new(),
            original: original.to_vec(),
        }
    }

    #[test]
    fn quarantine_keys_are_partitioned_and_deterministic() {
        let key = quarantine_key(&item(b"{}", Some(1_764_064_800_000)));
        assert!(
            key.starts_with("quarantine/year=2025/month=11/day=25/hour=10/dev-1/1764064800000-"),
            "{key}"
        );
        assert!(key.ends_with(".json"), "{key}");
        assert_eq!(key, quarantine_key(&item(b"{}", Some(1_764_064_800_000))));
        assert_ne!(key, quarantine_key(&item(b"{ }", Some(1_764_064_800_000))));
        // Without a receive time: filed under the time it was handed over, never 1970.
        let key = quarantine_key(&item(b"x", None));
        assert!(
            key.starts_with("quarantine/year=2026/month=11/day=25/hour=09/dev-1/1795600000000-"),
            "{key}"
        );
    }

    #[test]
    fn metadata_is_ascii_and_bounded() {
        assert_eq!(metadata_value("caf\u{e9}\n"), "caf??");
        assert_eq!(metadata_value(&"x".repeat(5000)).len(), 512);
    }
}

//! Routing an invocation's messages: decode and validate each, write every accepted reading to
//! the telemetry sink in chunks of 100 across the whole invocation, quarantine the rest, and
//! archive what was written as one Parquet object. Nothing is dropped: for every invocation,
//! `accepted + quarantined + returned-for-retry = received`.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;
use serde_json::Value;
use shoal_shared::aws::AwsError;
use shoal_shared::telemetry::archive::{archive_key, to_parquet};
use shoal_shared::telemetry::records::{APP_DIMENSION, write_ranges};
use shoal_shared::telemetry::{
    Envelope, EnvelopeError, Limits, PackedSchemas, Payload, TimestreamRecord, decode_binary,
    decode_json, validate_with_dimensions,
};

/// AWS IoT Core's payload limit: nothing larger can have come from a device.
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// A record Timestream refused, by its index in the batch written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    pub index: usize,
    pub reason: String,
}

/// Where accepted readings go (Timestream in production).
pub trait TelemetrySink: Sync {
    /// Writes at most 100 records in one call; returns those the store refused.
    fn write(
        &self,
        batch: &[TimestreamRecord],
    ) -> impl Future<Output = Result<Vec<RejectedRecord>, AwsError>> + Send;
}

/// Where refused input goes, with its reason (S3 `quarantine/` in production).
pub trait QuarantineStore: Sync {
    fn put(&self, item: &QuarantineItem) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// Where the written readings are archived (S3 `telemetry/` in production).
pub trait ArchiveStore: Sync {
    fn put(&self, key: &str, parquet: Vec<u8>)
    -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// The three edges a router writes to.
pub struct Edges<'a, S, Q, A> {
    pub sink: &'a S,
    pub quarantine: &'a Q,
    pub archive: &'a A,
}

/// What a message is checked against: the time window and the packed-record schemas.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub limits: Limits,
    pub schemas: &'a PackedSchemas,
}

/// Input that could not be stored, with everything needed to find out why and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineItem {
    pub reason_code: &'static str,
    pub reason: String,
    pub topic: Option<String>,
    pub thing: Option<String>,
    pub received_at_ms: Option<i64>,
    /// SQS message id or Kinesis sequence number; empty for a direct invocation.
    pub message_id: String,
    /// The reading's index within the message; `None` when the whole message was refused.
    pub reading_index: Option<usize>,
    /// The message exactly as the rule delivered it.
    pub original: Vec<u8>,
}

/// What happened to one invocation's input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub received: usize,
    pub accepted: usize,
    pub quarantined: BTreeMap<&'static str, usize>,
    pub retried: usize,
}

impl Counts {
    /// Adds another message's counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.received += other.received;
        self.accepted += other.accepted;
        self.retried += other.retried;
        for (reason, n) in &other.quarantined {
            *self.quarantined.entry(reason).or_default() += n;
        }
    }

    pub fn quarantined_total(&self) -> usize {
        self.quarantined.values().sum()
    }

    /// The invariant every invocation keeps.
    pub fn balanced(&self) -> bool {
        self.accepted + self.quarantined_total() + self.retried == self.received
    }
}

/// The message must be delivered again: a store could not be reached. Timestream writes are
/// idempotent upserts (same version), quarantine keys deterministic and the archive key is the
/// invocation's, so a redelivery never duplicates anything.
#[derive(Debug, thiserror::Error)]
#[error("{cause}; {} of {} readings returned for retry", counts.retried, counts.received)]
pub struct RetryLater {
    pub counts: Counts,
    pub cause: AwsError,
}

/// One message of an invocation, as delivered.
#[derive(Debug)]
pub struct Incoming {
    /// SQS message id or Kinesis sequence number; empty for a direct invocation.
    pub id: String,
    original: Vec<u8>,
    envelope: Result<Envelope, EnvelopeError>,
}

impl Incoming {
    /// A direct IoT rule event (the rule's output as JSON).
    pub fn from_rule_event(event: Value) -> Self {
        Self {
            id: String::new(),
            original: serde_json::to_vec(&event).unwrap_or_default(),
            envelope: Envelope::from_rule_event(event),
        }
    }

    /// A message as SQS or Kinesis deliver it: the rule's output as bytes, which may be anything.
    pub fn from_bytes(id: String, original: Vec<u8>) -> Self {
        let envelope = Envelope::from_bytes(&original);
        Self {
            id,
            original,
            envelope,
        }
    }
}

/// How messages of a batch fail together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// SQS: each message is retried on its own.
    Independent,
    /// Kinesis: Lambda resumes a shard at the first failed record, so every later record is
    /// retried too.
    Ordered,
}

/// The outcome of an invocation's batch.
#[derive(Debug)]
pub struct BatchOutcome {
    pub counts: Counts,
    /// Ids of the messages to deliver again, in delivery order.
    pub failed: Vec<String>,
    /// Why, when anything failed.
    pub cause: Option<AwsError>,
}

/// Where a message came from, for its quarantine items.
struct Source {
    topic: String,
    thing: String,
    received_at_ms: i64,
}

/// One message on its way through the router.
struct Pending {
    id: String,
    received: usize,
    quarantine: Vec<QuarantineItem>,
    /// How many of `quarantine` are stored.
    stored: usize,
    written: usize,
    rejected: usize,
    failed: bool,
    source: Option<Source>,
    original: Vec<u8>,
}

impl Pending {
    fn refuse(&mut self, reason_code: &'static str, reason: String, index: Option<usize>) {
        self.quarantine.push(QuarantineItem {
            reason_code,
            reason,
            topic: self.source.as_ref().map(|s| s.topic.clone()),
            thing: self.source.as_ref().map(|s| s.thing.clone()),
            received_at_ms: self.source.as_ref().map(|s| s.received_at_ms),
            message_id: self.id.clone(),
            reading_index: index,
            original: self.original.clone(),
        });
    }

    /// A failed message is retried whole: only the quarantine items already stored count as
    /// quarantined; everything else is returned for retry.
    fn counts(&self) -> Counts {
        let mut counts = Counts {
            received: self.received,
            ..Counts::default()
        };
        let settled = if self.failed {
            self.stored
        } else {
            self.quarantine.len()
        };
        for item in &self.quarantine[..settled] {
            *counts.quarantined.entry(item.reason_code).or_default() += 1;
        }
        if self.failed {
            counts.retried = self.received - settled;
        } else {
            counts.accepted = self.written - self.rejected;
        }
        counts
    }
}

/// Marks `from` as failed, and with [`FailurePolicy::Ordered`] every later message too.
fn fail(pending: &mut [Pending], from: usize, policy: FailurePolicy) {
    match policy {
        FailurePolicy::Independent => pending[from].failed = true,
        FailurePolicy::Ordered => pending[from..].iter_mut().for_each(|p| p.failed = true),
    }
}

/// A record on its way: which message and reading it came from, and whether Timestream took it.
struct Tagged {
    message: usize,
    reading: usize,
    record: TimestreamRecord,
    rejected: bool,
}

/// Routes one invocation's messages. Timestream gets ceil(n/100) calls for n valid readings, the
/// archive one object named after `batch_id` (the Lambda request id: a retried asynchronous
/// invocation keeps it, so its archive object is overwritten, not doubled).
pub async fn route_batch(
    messages: Vec<Incoming>,
    rules: &Rules<'_>,
    edges: &Edges<'_, impl TelemetrySink, impl QuarantineStore, impl ArchiveStore>,
    batch_id: &str,
    policy: FailurePolicy,
) -> BatchOutcome {
    let mut pending = Vec::with_capacity(messages.len());
    let mut tagged = Vec::new();
    for (message, incoming) in messages.into_iter().enumerate() {
        let mut p = Pending {
            id: incoming.id,
            received: 0,
            quarantine: Vec::new(),
            stored: 0,
            written: 0,
            rejected: 0,
            failed: false,
            source: incoming.envelope.as_ref().ok().map(|e| Source {
                topic: e.topic.clone(),
                thing: e.thing.to_string(),
                received_at_ms: e.received_at_ms,
            }),
            original: incoming.original,
        };
        for (reading, record) in decode_and_validate(incoming.envelope, rules, &mut p) {
            tagged.push(Tagged {
                message,
                reading,
                record,
                rejected: false,
            });
        }
        pending.push(p);
    }
    let mut cause = None;

    // 1. Timestream, in chunks of 100 across messages. A failed chunk fails every message with a
    //    record in it or after it: nothing after a failure is written out of order.
    for range in write_ranges(tagged.len()) {
        let start = range.start;
        let records: Vec<TimestreamRecord> = tagged[range.clone()]
            .iter()
            .map(|t| t.record.clone())
            .collect();
        match edges.sink.write(&records).await {
            Ok(rejected) => {
                for t in &tagged[range.clone()] {
                    pending[t.message].written += 1;
                }
                for r in rejected.into_iter().filter(|r| r.index < range.len()) {
                    let t = &mut tagged[start + r.index];
                    t.rejected = true;
                    pending[t.message].rejected += 1;
                    pending[t.message].refuse("timestream_rejected", r.reason, Some(t.reading));
                }
            }
            Err(e) => {
                for t in &tagged[start..] {
                    pending[t.message].failed = true;
                }
                fail(&mut pending, tagged[start].message, policy);
                cause = Some(e);
                break;
            }
        }
    }

    // 2. The quarantine, for messages that are not coming back anyway.
    for m in 0..pending.len() {
        if pending[m].failed {
            continue;
        }
        for i in 0..pending[m].quarantine.len() {
            match edges.quarantine.put(&pending[m].quarantine[i]).await {
                Ok(()) => pending[m].stored += 1,
                Err(e) => {
                    fail(&mut pending, m, policy);
                    cause = Some(e);
                    break;
                }
            }
        }
    }

    // 3. The archive: one object with every reading written for a message that succeeded.
    let archived: Vec<TimestreamRecord> = tagged
        .iter()
        .filter(|t| !t.rejected && !pending[t.message].failed)
        .map(|t| t.record.clone())
        .collect();
    if !archived.is_empty() {
        let stored = match to_parquet(&archived) {
            Ok(parquet) => {
                let key = archive_key(rules.limits.now_ms, batch_id);
                edges.archive.put(&key, parquet).await
            }
            Err(e) => Err(AwsError::local("archive", "EncodeParquet", e)),
        };
        if let Err(e) = stored {
            let contributed: Vec<usize> = tagged
                .iter()
                .filter(|t| !t.rejected && !pending[t.message].failed)
                .map(|t| t.message)
                .collect();
            for m in contributed {
                fail(&mut pending, m, policy);
            }
            cause = Some(e);
        }
    }

    let mut counts = Counts::default();
    for p in &pending {
        counts.add(&p.counts());
    }
    BatchOutcome {
        counts,
        failed: pending
            .iter()
            .filter(|p| p.failed)
            .map(|p| p.id.clone())
            .collect(),
        cause,
    }
}

/// Routes one direct IoT rule event; `Err` asks Lambda to deliver it again.
pub async fn route_rule_event(
    event: Value,
    rules: &Rules<'_>,
    edges: &Edges<'_, impl TelemetrySink, impl QuarantineStore, impl ArchiveStore>,
    batch_id: &str,
) -> Result<Counts, RetryLater> {
    let outcome = route_batch(
        vec![Incoming::from_rule_event(event)],
        rules,
        edges,
        batch_id,
        FailurePolicy::Independent,
    )
    .await;
    match outcome.cause {
        Some(cause) if !outcome.failed.is_empty() => Err(RetryLater {
            counts: outcome.counts,
            cause,
        }),
        _ => Ok(outcome.counts),
    }
}

/// Records to write, each with its reading's index in the message; everything else is refused
/// into `pending`.
fn decode_and_validate(
    envelope: Result<Envelope, EnvelopeError>,
    rules: &Rules<'_>,
    pending: &mut Pending,
) -> Vec<(usize, TimestreamRecord)> {
    let envelope = match envelope {
        Ok(e) => e,
        Err(e) => {
            pending.received = 1;
            pending.refuse("bad_envelope", e.to_string(), None);
            return Vec::new();
        }
    };
    if pending.original.len() > MAX_PAYLOAD_BYTES {
        pending.received = 1;
        let reason = format!(
            "message is {} bytes; AWS IoT Core allows {MAX_PAYLOAD_BYTES}",
            pending.original.len()
        );
        pending.refuse("payload_too_large", reason, None);
        return Vec::new();
    }
    let app = envelope.app().to_owned();
    let decoded = match envelope.payload {
        Payload::Json(fields) => decode_json(&envelope.thing, envelope.received_at_ms, fields),
        Payload::Binary(ref bytes) => decode_binary(
            &envelope.thing,
            envelope.received_at_ms,
            envelope.topic_model(),
            bytes,
            rules.schemas,
        ),
    };
    let readings = match decoded {
        Ok(readings) => readings,
        Err(e) => {
            pending.received = 1;
            pending.refuse(e.code(), e.to_string(), None);
            return Vec::new();
        }
    };
    pending.received = readings.len();
    let dimensions = [(APP_DIMENSION, app.as_str())];
    let mut records = Vec::with_capacity(readings.len());
    for (index, reading) in readings.into_iter().enumerate() {
        match reading {
            Err(e) => pending.refuse(e.code(), e.to_string(), Some(index)),
            Ok(reading) => match validate_with_dimensions(reading, &rules.limits, &dimensions) {
                Err(rejection) => {
                    pending.refuse(rejection.code(), rejection.to_string(), Some(index))
                }
                Ok(mut record) => {
                    record.version = envelope.received_at_ms;
                    records.push((index, record));
                }
            },
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeArchive, FakeQuarantine, FakeSink};
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: i64 = 1_764_064_800_000;
    const RULES: Rules<'static> = Rules {
        limits: Limits {
            now_ms: NOW,
            memory_retention_ms: 24 * 3_600_000,
        },
        schemas: &PackedSchemas::empty(),
    };

    fn event(payload: Value) -> Value {
        let mut event = payload;
        event["_topic"] = json!("dt/farm/dev-1/telemetry");
        event["_received_at"] = json!(NOW);
        event["_client_id"] = json!("dev-1");
        event
    }

    async fn route_with(
        event: Value,
        sink: &FakeSink,
        q: &FakeQuarantine,
        archive: &FakeArchive,
    ) -> Result<Counts, RetryLater> {
        let edges = Edges {
            sink,
            quarantine: q,
            archive,
        };
        route_rule_event(event, &RULES, &edges, "req-1").await
    }

    async fn route(
        event: Value,
        sink: &FakeSink,
        q: &FakeQuarantine,
    ) -> Result<Counts, RetryLater> {
        route_with(event, sink, q, &FakeArchive::default()).await
    }

    #[tokio::test]
    async fn a_single_reading_is_written_with_the_receive_time_as_version() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(
            event(json!({"ts": NOW - 1000, "temp": 23.0, "rssi": -70})),
            &sink,
            &q,
        )
        .await
        .unwrap();
        assert_eq!(
            (counts.received, counts.accepted, counts.retried),
            (1, 1, 0)
        );
        let calls = sink.calls.lock().unwrap();
        let record = &calls[0][0];
        assert_eq!(record.time_ms, NOW - 1000);
        assert_eq!(record.version, NOW);
        assert_eq!(
            record.dimensions,
            vec![("thing_name", "dev-1".into()), ("app", "farm".into())]
        );
        assert!(q.items.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_batch_of_250_takes_three_writes() {
        let readings: Vec<Value> = (0..250)
            .map(|i| json!({"ts": NOW - i, "temp": 1.5}))
            .collect();
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(event(json!({ "readings": readings })), &sink, &q)
            .await
            .unwrap();
        assert_eq!(counts.accepted, 250);
        let sizes: Vec<usize> = sink.calls.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[tokio::test]
    async fn bad_readings_are_quarantined_with_reason_and_index() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(
            event(json!({"readings": [
                {"ts": NOW + 3_600_000, "temp": 1.0},
                {"ts": NOW, "temp": 2.0},
                {"ts": NOW, "bad name": 3.0},
                {"ts": NOW, "temp": 666.0},
                {"ts": NOW, "temp": [1]},
            ]})),
            &sink,
            &q,
        )
        .await
        .unwrap();
        assert_eq!(counts.received, 5);
        assert_eq!(counts.accepted, 1);
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([
                ("bad_measure_name", 1),
                ("timestamp_in_future", 1),
                ("timestream_rejected", 1),
                ("undecodable", 1)
            ])
        );
        let items = q.items.lock().unwrap();
        let by_index: BTreeMap<_, _> = items
            .iter()
            .map(|i| (i.reading_index.unwrap(), i.reason_code))
            .collect();
        assert_eq!(
            by_index,
            BTreeMap::from([
                (0, "timestamp_in_future"),
                (2, "bad_measure_name"),
                (3, "timestream_rejected"),
                (4, "undecodable")
            ])
        );
        assert!(items.iter().all(|i| i.thing.as_deref() == Some("dev-1")));
        // The original message, exactly as delivered, travels with every item.
        let original: Value = serde_json::from_slice(&items[0].original).unwrap();
        assert_eq!(original["readings"].as_array().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_message_without_a_topic_is_quarantined_whole() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(json!({"temp": 1.0}), &sink, &q).await.unwrap();
        assert_eq!(counts.received, 1);
        assert_eq!(counts.quarantined, BTreeMap::from([("bad_envelope", 1)]));
        let items = q.items.lock().unwrap();
        assert_eq!(items[0].reading_index, None);
        assert_eq!(items[0].original, br#"{"temp":1.0}"#);
    }

    #[tokio::test]
    async fn binary_payloads_without_a_schema_are_quarantined() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let mut e = event(json!({}));
        e["_payload"] = json!("AAEC");
        let counts = route(e, &sink, &q).await.unwrap();
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("unknown_binary_schema", 1)])
        );
    }

    #[tokio::test]
    async fn oversized_messages_are_quarantined() {
        let (sink, q) = (FakeSink::default(), FakeQuarantine::default());
        let counts = route(
            event(json!({"note": "x".repeat(MAX_PAYLOAD_BYTES)})),
            &sink,
            &q,
        )
        .await
        .unwrap();
        assert_eq!(
            counts.quarantined,
            BTreeMap::from([("payload_too_large", 1)])
        );
    }

    #[tokio::test]
    async fn a_failing_store_returns_the_unwritten_readings_for_retry() {
        let readings: Vec<Value> = (0..250)
            .map(|i| json!({"ts": NOW - i, "temp": 1.5}))
            .collect();
        let sink = FakeSink {
            fail_call: Some(1),
            ..FakeSink::default()
        };
        let q = FakeQuarantine::default();
        let retry = route(event(json!({ "readings": readings })), &sink, &q)
            .await
            .unwrap_err();
        // The first 100 were written, but the message comes back whole (the rewrite is an
        // idempotent upsert), so nothing of it counts as accepted yet.
        assert_eq!(sink.calls.lock().unwrap().len(), 1);
        assert_eq!(retry.counts.accepted, 0);
        assert_eq!(retry.counts.retried, 250);
        assert!(retry.counts.balanced());
        assert!(
            retry
                .to_string()
                .contains("250 of 250 readings returned for retry"),
            "{retry}"
        );
    }

    #[tokio::test]
    async fn a_failing_quarantine_returns_the_unstored_items_for_retry() {
        let sink = FakeSink::default();
        let q = FakeQuarantine {
            fail_after: Some(1),
            ..FakeQuarantine::default()
        };
        let retry = route(
            event(json!({"readings": [{"a b": 1}, {"c d": 2}, {"temp": 3.0}]})),
            &sink,
            &q,
        )
        .await
        .unwrap_err();
        assert_eq!(retry.counts.accepted, 0);
        assert_eq!(
            retry.counts.quarantined,
            BTreeMap::from([("bad_measure_name", 1)])
        );
        assert_eq!(retry.counts.retried, 2);
    }

    #[tokio::test]
    async fn accepted_readings_are_archived_once_per_invocation() {
        let (sink, q, archive) = (
            FakeSink::default(),
            FakeQuarantine::default(),
            FakeArchive::default(),
        );
        let counts = route_with(
            event(json!({"readings": [{"temp": 1.0}, {"temp": 666.0}, {"a b": 1}]})),
            &sink,
            &q,
            &archive,
        )
        .await
        .unwrap();
        assert_eq!(counts.accepted, 1);
        let objects = archive.objects.lock().unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(
            objects[0].0,
            "telemetry/year=2025/month=11/day=25/hour=10/req-1.parquet"
        );
        // Only the reading Timestream took is archived.
        let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(
            objects[0].1.clone(),
        ))
        .unwrap();
        use parquet::file::reader::FileReader as _;
        assert_eq!(reader.metadata().file_metadata().num_rows(), 1);
    }

    #[tokio::test]
    async fn a_failing_archive_returns_the_message_for_retry() {
        let archive = FakeArchive {
            fail: true,
            ..FakeArchive::default()
        };
        let retry = route_with(
            event(json!({"readings": [{"temp": 1.0}, {"a b": 1}]})),
            &FakeSink::default(),
            &FakeQuarantine::default(),
            &archive,
        )
        .await
        .unwrap_err();
        assert_eq!(retry.cause.operation, "PutObject");
        assert_eq!(
            (
                retry.counts.accepted,
                retry.counts.quarantined_total(),
                retry.counts.retried
            ),
            (0, 1, 1)
        );
        // Nothing to archive, nothing to fail.
        let counts = route_with(
            event(json!({"a b": 1})),
            &FakeSink::default(),
            &FakeQuarantine::default(),
            &archive,
        )
        .await
        .unwrap();
        assert_eq!(counts.quarantined_total(), 1);
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6..1e6f64).prop_map(Value::from),
            "[a-z _]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-z_ ]{1,6}|ts|readings", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arbitrary_event() -> impl Strategy<Value = Value> {
        (arbitrary_json(), any::<bool>(), any::<bool>()).prop_map(|(payload, topic, batch)| {
            let mut payload = if batch {
                json!({"readings": [payload.clone(), payload, {"temp": 1.0}]})
            } else if payload.is_object() {
                payload
            } else {
                json!({"value": payload})
            };
            if topic {
                payload["_topic"] = json!("dt/farm/dev-9/telemetry");
                payload["_received_at"] = json!(NOW);
            }
            payload
        })
    }

    proptest! {
        #[test]
        fn nothing_is_ever_lost(
            e in arbitrary_event(),
            fail_call in prop::option::of(0usize..2),
            fail_after in prop::option::of(0usize..3),
            archive_down in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let sink = FakeSink { fail_call, ..FakeSink::default() };
            let q = FakeQuarantine { fail_after, ..FakeQuarantine::default() };
            let archive = FakeArchive { fail: archive_down, ..FakeArchive::default() };
            let counts = match rt.block_on(route_with(e, &sink, &q, &archive)) {
                Ok(counts) => {
                    prop_assert_eq!(counts.retried, 0);
                    // Accepted readings are archived, in exactly one object.
                    prop_assert_eq!(archive.objects.lock().unwrap().len(), usize::from(counts.accepted > 0));
                    counts
                }
                Err(retry) => {
                    prop_assert_eq!(retry.counts.accepted, 0);
                    retry.counts
                }
            };
            prop_assert!(counts.received >= 1);
            prop_assert!(counts.balanced(), "{:?}", counts);
            // Quarantined means stored; accepted means written and not refused.
            prop_assert_eq!(q.items.lock().unwrap().len(), counts.quarantined_total());
            let written: usize = sink.calls.lock().unwrap().iter().map(Vec::len).sum();
            let refused = counts.quarantined.get("timestream_rejected").copied().unwrap_or(0);
            prop_assert!(counts.accepted <= written);
            prop_assert!(counts.accepted + refused <= written);
        }
    }
}

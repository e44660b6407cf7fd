//! Routing one IoT rule message: decode, validate, write to the telemetry sink, quarantine the
//! rest. Nothing is dropped: for every message,
//! `accepted + quarantined + returned-for-retry = received`.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;
use serde_json::Value;
use shoal_shared::aws::AwsError;
use shoal_shared::telemetry::records::write_batches;
use shoal_shared::telemetry::{
    Envelope, EnvelopeError, Limits, PackedSchemas, Payload, TimestreamRecord, decode_binary,
    decode_json, validate,
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

/// The message must be delivered again: the store or the quarantine could not be reached.
/// Timestream writes are idempotent upserts (same version) and quarantine keys deterministic, so
/// a redelivery never duplicates anything.
#[derive(Debug, thiserror::Error)]
#[error("{cause}; {} of {} readings returned for retry", counts.retried, counts.received)]
pub struct RetryLater {
    pub counts: Counts,
    pub cause: AwsError,
}

/// Where a message came from, for its quarantine items.
struct Source {
    topic: String,
    thing: String,
    received_at_ms: i64,
}

struct Pending<'a> {
    counts: Counts,
    quarantine: Vec<QuarantineItem>,
    source: Option<Source>,
    original: &'a [u8],
}

impl Pending<'_> {
    fn refuse(&mut self, reason_code: &'static str, reason: String, index: Option<usize>) {
        *self.counts.quarantined.entry(reason_code).or_default() += 1;
        self.quarantine.push(QuarantineItem {
            reason_code,
            reason,
            topic: self.source.as_ref().map(|s| s.topic.clone()),
            thing: self.source.as_ref().map(|s| s.thing.clone()),
            received_at_ms: self.source.as_ref().map(|s| s.received_at_ms),
            reading_index: index,
            original: self.original.to_vec(),
        });
    }
}

/// Routes one direct IoT rule event (the rule's output as JSON).
pub async fn route_rule_event(
    event: Value,
    rules: &Rules<'_>,
    sink: &impl TelemetrySink,
    quarantine: &impl QuarantineStore,
) -> Result<Counts, RetryLater> {
    let original = serde_json::to_vec(&event).unwrap_or_default();
    route(
        &original,
        Envelope::from_rule_event(event),
        rules,
        sink,
        quarantine,
    )
    .await
}

/// Routes one message as SQS or Kinesis deliver it: the rule's output as bytes, which may be
/// anything at all.
pub async fn route_message(
    original: &[u8],
    rules: &Rules<'_>,
    sink: &impl TelemetrySink,
    quarantine: &impl QuarantineStore,
) -> Result<Counts, RetryLater> {
    route(
        original,
        Envelope::from_bytes(original),
        rules,
        sink,
        quarantine,
    )
    .await
}

async fn route(
    original: &[u8],
    envelope: Result<Envelope, EnvelopeError>,
    rules: &Rules<'_>,
    sink: &impl TelemetrySink,
    quarantine: &impl QuarantineStore,
) -> Result<Counts, RetryLater> {
    let mut pending = Pending {
        counts: Counts::default(),
        quarantine: Vec::new(),
        source: envelope.as_ref().ok().map(|e| Source {
            topic: e.topic.clone(),
            thing: e.thing.to_string(),
            received_at_ms: e.received_at_ms,
        }),
        original,
    };
    let records = decode_and_validate(envelope, rules, &mut pending);

    for batch in write_batches(&records) {
        let batch_records: Vec<TimestreamRecord> = batch.iter().map(|(_, r)| r.clone()).collect();
        match sink.write(&batch_records).await {
            Ok(rejected) => {
                for r in &rejected {
                    let index = batch.get(r.index).map(|(i, _)| *i);
                    pending.refuse("timestream_rejected", r.reason.clone(), index);
                }
                pending.counts.accepted += batch.len() - rejected.len();
            }
            Err(cause) => return Err(pending.fail(0, cause)),
        }
    }
    for (stored, item) in pending.quarantine.iter().enumerate() {
        if let Err(cause) = quarantine.put(item).await {
            return Err(pending.fail(stored, cause));
        }
    }
    Ok(pending.counts)
}

impl Pending<'_> {
    /// Everything not yet written or stored goes back for retry; only the first `stored`
    /// quarantine items count as quarantined.
    fn fail(mut self, stored: usize, cause: AwsError) -> RetryLater {
        let mut quarantined = BTreeMap::new();
        for item in &self.quarantine[..stored] {
            *quarantined.entry(item.reason_code).or_default() += 1;
        }
        self.counts.quarantined = quarantined;
        self.counts.retried =
            self.counts.received - self.counts.accepted - self.counts.quarantined_total();
        RetryLater {
            counts: self.counts,
            cause,
        }
    }
}

/// Records to write, each with its reading's index in the message; everything else is refused
/// into `pending`.
fn decode_and_validate(
    envelope: Result<Envelope, EnvelopeError>,
    rules: &Rules<'_>,
    pending: &mut Pending<'_>,
) -> Vec<(usize, TimestreamRecord)> {
    let envelope = match envelope {
        Ok(e) => e,
        Err(e) => {
            pending.counts.received = 1;
            pending.refuse("bad_envelope", e.to_string(), None);
            return Vec::new();
        }
    };
    if pending.original.len() > MAX_PAYLOAD_BYTES {
        pending.counts.received = 1;
        let reason = format!(
            "message is {} bytes; AWS IoT Core allows {MAX_PAYLOAD_BYTES}",
            pending.original.len()
        );
        pending.refuse("payload_too_large", reason, None);
        return Vec::new();
    }
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
            pending.counts.received = 1;
            pending.refuse(e.code(), e.to_string(), None);
            return Vec::new();
        }
    };
    pending.counts.received = readings.len();
    let mut records = Vec::with_capacity(readings.len());
    for (index, reading) in readings.into_iter().enumerate() {
        match reading {
            Err(e) => pending.refuse(e.code(), e.to_string(), Some(index)),
            Ok(reading) => match validate(reading, &rules.limits) {
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
    use crate::fakes::{FakeQuarantine, FakeSink};
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

    async fn route(
        event: Value,
        sink: &FakeSink,
        q: &FakeQuarantine,
    ) -> Result<Counts, RetryLater> {
        route_rule_event(event, &RULES, sink, q).await
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
            vec![("thing_name".into(), "dev-1".into())]
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
        assert_eq!(retry.counts.accepted, 100);
        assert_eq!(retry.counts.retried, 150);
        assert!(retry.counts.balanced());
        assert!(
            retry
                .to_string()
                .contains("150 of 250 readings returned for retry"),
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
        assert_eq!(retry.counts.accepted, 1);
        assert_eq!(
            retry.counts.quarantined,
            BTreeMap::from([("bad_measure_name", 1)])
        );
        assert_eq!(retry.counts.retried, 1);
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
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let sink = FakeSink { fail_call, ..FakeSink::default() };
            let q = FakeQuarantine { fail_after, ..FakeQuarantine::default() };
            let counts = match rt.block_on(route(e, &sink, &q)) {
                Ok(counts) => {
                    prop_assert_eq!(counts.retried, 0);
                    counts
                }
                Err(retry) => retry.counts,
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

//! SQS and Kinesis batches, for fleets too large for one invocation per message: the rule's SQS
//! or Kinesis action queues the rule's output, Lambda hands the router a batch, and the router
//! answers with `batchItemFailures` so only the messages that must be retried come back.

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::sqs::SqsBatchResponse;
use aws_lambda_events::event::streams::KinesisEventResponse;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use shoal_core::edge::Retryable;
use shoal_core::telemetry::CheckedJson;
use shoal_core::telemetry::envelope::TOPIC_KEY;

use crate::router::{
    ArchiveStore, Counts, Edges, FailurePolicy, Incoming, QuarantineStore, Rules, TelemetrySink,
    route_batch,
};

/// What invoked the function, told apart by the event's shape.
#[derive(Debug, PartialEq)]
pub enum Trigger {
    /// The IoT rule's Lambda action: the rule's output itself.
    Direct(CheckedJson),
    Sqs(SqsBatch),
    Kinesis(KinesisEvent),
}

/// An SQS event as the router reads it: each message's id, body and `SentTimestamp` attribute.
/// The rest of AWS's SQS record (`aws_lambda_events`' `SqsMessage`: receipt handle, digests,
/// other attributes, message attributes, source ARN, region) is skipped unread — the router
/// uses none of it, and reading it built maps and strings for every message. A field read here
/// that is given twice, or of the wrong type, makes the event no SQS batch (it is then routed
/// whole as a direct event, as any malformed batch is); a field skipped here is not checked
/// (a `receiptHandle` of 7 no longer makes the event malformed — Lambda never sends one).
/// <https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html>
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SqsBatch {
    #[serde(rename = "Records")]
    pub records: Vec<SqsRecord>,
}

/// One SQS message of an [`SqsBatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsRecord {
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    /// `null` is no attributes, as AWS's own type reads it.
    #[serde(default)]
    pub attributes: Option<SqsAttributes>,
}

/// The one attribute the router reads: when SQS took the message, in ms since the epoch, as text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SqsAttributes {
    #[serde(rename = "SentTimestamp", default)]
    pub sent_timestamp: Option<String>,
}

/// How the template hands telemetry to the router (`SHOAL_TELEMETRY_DELIVERY`, the
/// `TelemetryDelivery` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Direct,
    Sqs,
    Kinesis,
}

impl std::str::FromStr for Delivery {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "direct" => Ok(Delivery::Direct),
            "sqs" => Ok(Delivery::Sqs),
            "kinesis" => Ok(Delivery::Kinesis),
            _ => Err("must be direct, sqs or kinesis".into()),
        }
    }
}

impl Trigger {
    /// [`Self::classify_for`] when the delivery mode is not known.
    pub fn classify(event: impl Into<CheckedJson>) -> Self {
        Self::classify_for(event, None)
    }

    /// SQS and Kinesis events are `{"Records": [{"eventSource": "aws:sqs" | "aws:kinesis", …}]}`;
    /// anything else is a direct rule invocation. A device's own payload can look like a batch
    /// (`{"Records": […]}` on its telemetry topic), so an event the rule made — it carries
    /// `_topic` — is always direct, and with the delivery mode known only that mode's shape is a
    /// batch. An event that claims to be a batch but does not parse as one is routed (and
    /// quarantined whole) as a direct event: it is kept, and retrying it could never succeed.
    pub fn classify_for(event: impl Into<CheckedJson>, delivery: Option<Delivery>) -> Self {
        let event = event.into();
        if delivery == Some(Delivery::Direct) || event.value.get(TOPIC_KEY).is_some() {
            return Trigger::Direct(event);
        }
        let source = event.value["Records"][0]["eventSource"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let parsed = match (source.as_str(), delivery) {
            ("aws:sqs", None | Some(Delivery::Sqs)) => {
                SqsBatch::deserialize(&event.value).map(Trigger::Sqs)
            }
            ("aws:kinesis", None | Some(Delivery::Kinesis)) => {
                KinesisEvent::deserialize(&event.value).map(Trigger::Kinesis)
            }
            _ => return Trigger::Direct(event),
        };
        parsed.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "malformed {source} event, routed as a direct event");
            Trigger::Direct(event)
        })
    }

    /// [`Self::classify_for`] of an event as Lambda delivers it (bytes), without building a JSON
    /// tree of a whole batch: a first pass reads only the keys that decide the shape (`_topic`,
    /// `Records[0].eventSource`), then a batch is read straight into its SQS ([`SqsBatch`]) or
    /// Kinesis type.
    /// Whatever that cannot read exactly (not an object, a deciding key or a record's field
    /// given twice, a batch that does not parse) takes [`Self::classify_for`]'s path, so both
    /// agree (a property test checks it). Differences are left only in what Lambda never sends
    /// (AWS writes the envelope; the device's payload is the `body` or `data` text, read later
    /// with its duplicate keys noticed): a field the SQS and Kinesis types do not read is
    /// skipped unchecked here (a number out of range, a lone surrogate, nesting past
    /// serde_json's limit), refused on the tree path.
    ///
    /// # Errors
    /// [`InvalidEvent`] when `bytes` is not one JSON document.
    pub fn from_slice(bytes: &[u8], delivery: Option<Delivery>) -> Result<Self, InvalidEvent> {
        let batch = match serde_json::from_slice::<Shape>(bytes) {
            Ok(Shape {
                topic: false,
                source,
            }) => match (source.as_deref(), delivery) {
                (Some("aws:sqs"), None | Some(Delivery::Sqs)) => {
                    serde_json::from_slice(bytes).ok().map(Trigger::Sqs)
                }
                (Some("aws:kinesis"), None | Some(Delivery::Kinesis)) => {
                    serde_json::from_slice(bytes).ok().map(Trigger::Kinesis)
                }
                _ => None,
            },
            _ => None,
        };
        match batch {
            Some(trigger) => Ok(trigger),
            None => Ok(Self::classify_for(
                serde_json::from_slice::<CheckedJson>(bytes)?,
                delivery,
            )),
        }
    }
}

/// An invocation event that is not one JSON document: Lambda never sends one, and no retry could
/// read it (not retryable).
#[derive(Debug, thiserror::Error)]
#[error("the event is not one JSON document: {0}")]
pub struct InvalidEvent(#[from] pub serde_json::Error);

impl Retryable for InvalidEvent {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// What decides an event's shape: whether the top-level object has `_topic` (any value) and
/// the `eventSource` of its first record. Reading it fails (and the caller takes the general
/// path) for anything else than an object, and for a deciding key given twice.
struct Shape {
    topic: bool,
    source: Option<String>,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let (mut topic, mut records) = (false, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key.0 {
                        Some(TOPIC_KEY) if topic => {
                            return Err(de::Error::duplicate_field(TOPIC_KEY));
                        }
                        Some(TOPIC_KEY) => {
                            map.next_value::<IgnoredAny>()?;
                            topic = true;
                        }
                        Some("Records") if records.is_some() => {
                            return Err(de::Error::duplicate_field("Records"));
                        }
                        Some("Records") => records = Some(map.next_value::<FirstSource>()?.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Shape {
                    topic,
                    source: records.flatten(),
                })
            }
        }
        deserializer.deserialize_map(Top)
    }
}

/// An object key, told apart without allocating: one of the keys that decide a shape, or `None`.
struct Key(Option<&'static str>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(Key([TOPIC_KEY, "Records", "eventSource"]
                    .into_iter()
                    .find(|k| *k == key)))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// The `eventSource` of an array's first element, when that is an object whose `eventSource`
/// is a string (given once); `None` for an empty array or `null`.
struct FirstSource(Option<String>);

impl<'de> Deserialize<'de> for FirstSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The first record's `eventSource`, read from an object only (a derived struct would
        /// also read an array).
        struct First(Option<String>);
        impl<'de> Deserialize<'de> for First {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> Visitor<'de> for Fields {
                    type Value = First;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a record object")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<First, A::Error> {
                        let mut source = None;
                        while let Some(key) = map.next_key::<Key>()? {
                            if key.0 != Some("eventSource") {
                                map.next_value::<IgnoredAny>()?;
                            } else if source.is_some() {
                                return Err(de::Error::duplicate_field("eventSource"));
                            } else {
                                source = Some(map.next_value::<Option<String>>()?);
                            }
                        }
                        Ok(First(source.flatten()))
                    }
                }
                deserializer.deserialize_map(Fields)
            }
        }
        struct Records;
        impl<'de> Visitor<'de> for Records {
            type Value = FirstSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of records")
            }
            fn visit_unit<E>(self) -> Result<FirstSource, E> {
                Ok(FirstSource(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstSource, A::Error> {
                let first = seq.next_element::<First>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstSource(first.and_then(|f| f.0)))
            }
        }
        deserializer.deserialize_any(Records)
    }
}

/// Routes an SQS batch; each message that must be retried is listed by message id. Messages are
/// independent: one failure does not hold back the others.
pub async fn route_sqs(
    event: SqsBatch,
    rules: &Rules<'_>,
    edges: &Edges<'_, impl TelemetrySink, impl QuarantineStore, impl ArchiveStore>,
    batch_id: &str,
) -> (Counts, SqsBatchResponse) {
    // A message without an id cannot be named: an empty identifier makes Lambda retry the whole
    // batch, which is safe (every write is idempotent).
    let messages = event
        .records
        .into_iter()
        .map(|m| {
            let sent_at = m
                .attributes
                .and_then(|a| a.sent_timestamp)
                .and_then(|t| t.parse::<i64>().ok());
            Incoming::from_bytes(
                m.message_id.unwrap_or_default(),
                m.body.unwrap_or_default().into_bytes(),
            )
            .arrived_at(sent_at)
        })
        .collect();
    let outcome = route_batch(messages, rules, edges, batch_id, FailurePolicy::Independent).await;
    if let Some(cause) = &outcome.cause {
        tracing::warn!(failed = ?outcome.failed, error = %cause, "messages returned for retry");
    }
    let mut response = SqsBatchResponse::default();
    for id in outcome.failed {
        response.add_failure(id);
    }
    (outcome.counts, response)
}

/// Routes a Kinesis batch in order. Lambda resumes a shard at the first failed sequence number,
/// so only that one is reported, and every record after it counts as returned for retry.
pub async fn route_kinesis(
    event: KinesisEvent,
    rules: &Rules<'_>,
    edges: &Edges<'_, impl TelemetrySink, impl QuarantineStore, impl ArchiveStore>,
    batch_id: &str,
) -> (Counts, KinesisEventResponse) {
    let messages = event
        .records
        .into_iter()
        .map(|r| {
            let arrived_at = r.kinesis.approximate_arrival_timestamp.0.timestamp_millis();
            Incoming::from_bytes(r.kinesis.sequence_number, r.kinesis.data.0)
                .arrived_at(Some(arrived_at))
        })
        .collect();
    let outcome = route_batch(messages, rules, edges, batch_id, FailurePolicy::Ordered).await;
    if let Some(cause) = &outcome.cause {
        tracing::warn!(first_failed = ?outcome.failed.first(), error = %cause, "records returned for retry");
    }
    let mut response = KinesisEventResponse::default();
    if let Some(first) = outcome.failed.into_iter().next() {
        response.add_failure(first);
    }
    (outcome.counts, response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{FakeQuarantine, FakeSink, Fakes};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const NOW: i64 = 1_795_600_000_000;
    const RULES: Rules<'static> = Rules {
        limits: shoal_core::telemetry::Limits {
            now_ms: NOW,
            memory_retention_ms: 3_600_000,
            magnetic_retention_ms: None,
        },
        schemas: &shoal_core::telemetry::PackedSchemas::empty(),
        types: &shoal_core::telemetry::MeasureTypes::empty(),
        apps: &shoal_core::telemetry::TelemetryApps::ANY,
        deadline: &crate::router::NoDeadline,
    };

    fn message(temp: f64) -> String {
        json!({"temp": temp, "_topic": "dt/farm/dev-1/telemetry", "_received_at": NOW}).to_string()
    }

    fn sqs(bodies: &[&str]) -> Value {
        json!({"Records": bodies.iter().enumerate().map(|(i, body)| json!({
            "messageId": format!("m{i}"),
            "receiptHandle": "rh",
            "body": body,
            "attributes": {},
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:shoal-telemetry",
            "awsRegion": "us-east-1"
        })).collect::<Vec<_>>()})
    }

    fn kinesis(datas: &[&[u8]]) -> Value {
        use base64::Engine as _;
        json!({"Records": datas.iter().enumerate().map(|(i, data)| json!({
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "dev-1",
                "sequenceNumber": format!("4959000000000000000000000000000000000000000000000000000{i}"),
                "data": base64::engine::general_purpose::STANDARD.encode(data),
                "approximateArrivalTimestamp": 1795600000.123
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": format!("shardId-000000000000:{i}"),
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/shoal",
            "awsRegion": "us-east-1",
            "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/shoal-telemetry"
        })).collect::<Vec<_>>()})
    }

    #[test]
    fn triggers_are_told_apart_by_shape() {
        assert!(matches!(Trigger::classify(sqs(&["{}"])), Trigger::Sqs(_)));
        assert!(matches!(
            Trigger::classify(kinesis(&[b"{}"])),
            Trigger::Kinesis(_)
        ));
        assert!(matches!(
            Trigger::classify(json!({"temp": 1})),
            Trigger::Direct(_)
        ));
        assert!(matches!(
            Trigger::classify(json!({"Records": []})),
            Trigger::Direct(_)
        ));
        // A device's payload shaped like a batch, as the rule delivers it: direct, always.
        let posing = json!({"Records": [{"eventSource": "aws:sqs", "messageId": "x", "body": "{}"}],
            "_topic": "dt/farm/dev-1/telemetry", "_received_at": 1});
        assert!(matches!(Trigger::classify(posing), Trigger::Direct(_)));
        // With the delivery mode known, only that mode's shape is a batch.
        assert!(matches!(
            Trigger::classify_for(sqs(&["{}"]), Some(Delivery::Direct)),
            Trigger::Direct(_)
        ));
        assert!(matches!(
            Trigger::classify_for(sqs(&["{}"]), Some(Delivery::Kinesis)),
            Trigger::Direct(_)
        ));
        assert!(matches!(
            Trigger::classify_for(sqs(&["{}"]), Some(Delivery::Sqs)),
            Trigger::Sqs(_)
        ));
        // Claims to be SQS but is not: kept whole, as a direct event.
        let odd = json!({"Records": [{"eventSource": "aws:sqs", "body": 7}]});
        assert!(matches!(Trigger::classify(odd.clone()), Trigger::Direct(e) if e.value == odd));
    }

    /// AWS's sample SQS record (every field Lambda sends, FIFO attributes too) reads its id, body
    /// and `SentTimestamp`; a null or missing id or body reads as none, as AWS's own type reads
    /// them (a message without an id is then retried with its whole batch).
    #[test]
    fn sqs_records_read_their_id_body_and_sent_timestamp() {
        let sample = json!({"Records": [
            {
                "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
                "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
                "body": "{}",
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1545082649183",
                    "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                    "ApproximateFirstReceiveTimestamp": "1545082649185",
                    "MessageGroupId": "dev-1",
                    "SequenceNumber": "18849496460467696128"
                },
                "messageAttributes": {"trace": {"stringValue": "x", "binaryListValues": [],
                    "stringListValues": [], "dataType": "String"}},
                "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue",
                "awsRegion": "us-east-2"
            },
            {"messageId": null, "body": null, "attributes": null, "eventSource": "aws:sqs"},
            {"eventSource": "aws:sqs"}
        ]});
        let bytes = serde_json::to_vec(&sample).unwrap();
        let Ok(Trigger::Sqs(batch)) = Trigger::from_slice(&bytes, None) else {
            panic!("an SQS batch")
        };
        assert_eq!(
            batch.records[0],
            SqsRecord {
                message_id: Some("059f36b4-87a3-44ab-83d2-661975830a7d".into()),
                body: Some("{}".into()),
                attributes: Some(SqsAttributes {
                    sent_timestamp: Some("1545082649183".into())
                }),
            }
        );
        assert_eq!(batch.records[1], SqsRecord::default());
        assert_eq!(batch.records[2], SqsRecord::default());
    }

    /// Every way of delivering `value`'s text, and texts no Value can hold (a key twice).
    fn texts(value: &Value) -> Vec<String> {
        let text = value.to_string();
        let mut texts = vec![text.clone()];
        // The deciding keys given twice, at the top and in the first record.
        for (key, twice) in [
            ("{\"Records\":", "{\"Records\":null,\"Records\":"),
            ("{\"_topic\":", "{\"_topic\":1,\"_topic\":"),
            (
                "\"eventSource\":",
                "\"eventSource\":\"aws:sqs\",\"eventSource\":",
            ),
            ("\"body\":", "\"body\":\"{}\",\"body\":"),
            (
                "\"SentTimestamp\":",
                "\"SentTimestamp\":\"1\",\"SentTimestamp\":",
            ),
        ] {
            if text.contains(key) {
                texts.push(text.replacen(key, twice, 1));
            }
        }
        texts
    }

    fn arbitrary_event() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            Just(json!(7)),
            Just(json!("aws:sqs")),
            Just(json!("aws:kinesis")),
            Just(json!("{}")),
            Just(json!([])),
            Just(json!({})),
        ];
        let source = prop_oneof![
            Just(json!("aws:sqs")),
            Just(json!("aws:kinesis")),
            Just(json!("aws:s3")),
            scalar.clone()
        ];
        let attributes = prop_oneof![
            Just(json!({"SentTimestamp": "1795600000123", "SenderId": "x"})),
            Just(json!({"SentTimestamp": 7})),
            Just(json!({"SenderId": 7})),
            scalar.clone(),
        ];
        let record = (
            source,
            prop::option::of(scalar.clone()),
            prop::option::of(scalar.clone()),
            any::<bool>(),
            prop::option::of(attributes),
        )
            .prop_map(|(source, body, kinesis, with_source, attributes)| {
                let mut r = serde_json::Map::new();
                if with_source {
                    r.insert("eventSource".into(), source);
                }
                if let Some(b) = body {
                    r.insert("body".into(), b);
                }
                if let Some(k) = kinesis {
                    r.insert("kinesis".into(), k);
                }
                if let Some(a) = attributes {
                    r.insert("attributes".into(), a);
                }
                r.insert("messageId".into(), json!("m"));
                Value::Object(r)
            });
        let records = prop_oneof![
            prop::collection::vec(record.clone(), 0..3).prop_map(Value::from),
            prop::collection::vec(prop_oneof![record, scalar.clone()], 0..3).prop_map(Value::from),
            scalar.clone(),
        ];
        let valid = prop_oneof![
            Just(sqs(&["{}", "x"])),
            Just(kinesis(&[b"{}", b"y"])),
            Just(json!({"Records": [{"eventSource": "aws:sqs", "attributes": null}]})),
            Just(json!({"Records": [{"eventSource": "aws:sqs", "body": "{}",
                "attributes": {"SentTimestamp": "1795600000123", "ApproximateReceiveCount": "1"}}]})),
        ];
        let top = (
            prop::option::of(records),
            prop::option::of(scalar.clone()),
            any::<bool>(),
        )
            .prop_map(|(records, topic, extra)| {
                let mut top = serde_json::Map::new();
                if let Some(r) = records {
                    top.insert("Records".into(), r);
                }
                if let Some(t) = topic {
                    top.insert("_topic".into(), t);
                }
                if extra {
                    top.insert("temp".into(), json!(1.5));
                }
                Value::Object(top)
            });
        let with_topic = valid.clone().prop_map(|mut v| {
            v["_topic"] = json!("dt/farm/dev-1/telemetry");
            v
        });
        prop_oneof![
            valid,
            with_topic,
            top,
            scalar,
            prop::collection::vec(Just(sqs(&["{}"])), 1..2).prop_map(Value::from)
        ]
    }

    proptest! {
        /// Reading the bytes straight into the batch types decides exactly as reading a JSON tree
        /// first, for every delivery mode, whatever the event holds.
        #[test]
        fn the_bytes_path_classifies_as_the_tree_path(event in arbitrary_event()) {
            for text in texts(&event) {
                for delivery in [None, Some(Delivery::Direct), Some(Delivery::Sqs), Some(Delivery::Kinesis)] {
                    let tree: CheckedJson = serde_json::from_str(&text).unwrap();
                    let expected = Trigger::classify_for(tree, delivery);
                    let read = Trigger::from_slice(text.as_bytes(), delivery).unwrap();
                    prop_assert_eq!(&read, &expected, "{} with {:?}", text, delivery);
                }
            }
        }
    }

    #[test]
    fn the_bytes_path_reads_batches_and_refuses_what_is_not_json() {
        let bytes = serde_json::to_vec(&sqs(&["{}"])).unwrap();
        assert!(
            matches!(Trigger::from_slice(&bytes, None), Ok(Trigger::Sqs(e)) if e.records.len() == 1)
        );
        let bytes = serde_json::to_vec(&kinesis(&[b"{}"])).unwrap();
        assert!(matches!(
            Trigger::from_slice(&bytes, Some(Delivery::Kinesis)),
            Ok(Trigger::Kinesis(_))
        ));
        assert!(Trigger::from_slice(b"{\"Records\": [", None).is_err());
    }

    #[test]
    fn the_runtime_hands_main_the_event_s_bytes() {
        // lambda_runtime reads the payload into main's event type through serde_path_to_error.
        let text = serde_json::to_string(&sqs(&["{\"temp\": 1}"])).unwrap();
        let reader = &mut serde_json::Deserializer::from_slice(text.as_bytes());
        let raw: Box<serde_json::value::RawValue> =
            serde_path_to_error::deserialize(reader).unwrap();
        assert_eq!(raw.get(), text);
        assert!(matches!(
            Trigger::from_slice(raw.get().as_bytes(), None),
            Ok(Trigger::Sqs(_))
        ));
    }

    fn many(n: usize) -> String {
        let readings: Vec<Value> = (0..n).map(|i| json!({"temp": i as f64 + 0.5})).collect();
        json!({"readings": readings, "_topic": "dt/farm/dev-2/telemetry", "_received_at": NOW})
            .to_string()
    }

    #[tokio::test]
    async fn sqs_writes_across_messages_and_reports_only_the_messages_to_retry() {
        let Trigger::Sqs(event) = Trigger::classify(sqs(&[
            &many(100),
            "\u{0}definitely not json",
            &message(2.0),
            &message(3.0),
        ])) else {
            panic!("sqs")
        };
        // The second write (records 100..102: messages m2 and m3) fails.
        let fakes = Fakes {
            sink: FakeSink {
                fail_call: Some(1),
                ..FakeSink::default()
            },
            ..Fakes::default()
        };
        let edges = fakes.edges();
        let (counts, response) = route_sqs(event, &RULES, &edges, "req-7").await;
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": "m2"}, {"itemIdentifier": "m3"}]})
        );
        assert_eq!(counts.received, 103);
        assert_eq!(counts.accepted, 100);
        assert_eq!(counts.quarantined.get("bad_envelope"), Some(&1));
        assert_eq!(counts.retried, 2);
        assert!(counts.balanced());
        assert_eq!(
            fakes.quarantine.items.lock().unwrap()[0].original,
            b"\x00definitely not json"
        );
        assert_eq!(fakes.archive.objects.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn one_message_per_reading_still_takes_ceil_n_over_100_writes() {
        let bodies: Vec<String> = (0..150).map(|i| message(f64::from(i))).collect();
        let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let Trigger::Sqs(event) = Trigger::classify(sqs(&refs)) else {
            panic!("sqs")
        };
        let fakes = Fakes::default();
        let edges = fakes.edges();
        let (counts, response) = route_sqs(event, &RULES, &edges, "req-8").await;
        assert!(response.batch_item_failures.is_empty());
        assert_eq!(counts.accepted, 150);
        let sizes: Vec<usize> = fakes
            .sink
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![100, 50]);
        assert_eq!(fakes.archive.objects.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn kinesis_fails_from_the_first_record_to_retry() {
        let (a, b, c, d) = (many(100), message(2.0), message(3.0), message(4.0));
        let Trigger::Kinesis(event) = Trigger::classify(kinesis(&[
            a.as_bytes(),
            b.as_bytes(),
            c.as_bytes(),
            d.as_bytes(),
        ])) else {
            panic!("kinesis")
        };
        let fakes = Fakes {
            sink: FakeSink {
                fail_call: Some(1),
                ..FakeSink::default()
            },
            ..Fakes::default()
        };
        let edges = fakes.edges();
        let (counts, response) = route_kinesis(event, &RULES, &edges, "req-9").await;
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": "49590000000000000000000000000000000000000000000000000001"}]})
        );
        assert_eq!(
            (counts.received, counts.accepted, counts.retried),
            (103, 100, 3)
        );
        assert!(counts.balanced());
    }

    #[tokio::test]
    async fn kinesis_quarantine_failure_holds_back_every_later_record() {
        let (a, c) = (message(1.0), message(3.0));
        let Trigger::Kinesis(event) =
            Trigger::classify(kinesis(&[a.as_bytes(), b"not json", c.as_bytes()]))
        else {
            panic!("kinesis")
        };
        let fakes = Fakes {
            quarantine: FakeQuarantine {
                fail_after: Some(0),
                ..FakeQuarantine::default()
            },
            ..Fakes::default()
        };
        let edges = fakes.edges();
        let (counts, response) = route_kinesis(event, &RULES, &edges, "req-10").await;
        assert_eq!(
            response.batch_item_failures[0].item_identifier.as_deref(),
            Some("49590000000000000000000000000000000000000000000000000001")
        );
        assert_eq!(
            (counts.received, counts.accepted, counts.retried),
            (3, 1, 2)
        );
        assert!(counts.balanced());
    }

    /// Issue 11, case 6: a message without a receive time is filed under the hour the queue took
    /// it (the same on every redelivery), never under 1970.
    #[tokio::test]
    async fn a_bad_envelope_is_filed_under_the_queue_s_time() {
        let mut event = sqs(&["not json"]);
        // Every attribute AWS sends; the router reads SentTimestamp only (the event's bytes,
        // as Lambda hands them over).
        event["Records"][0]["attributes"] = json!({
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1795600000123",
            "SenderId": "AROAEXAMPLE:shoal-telemetry-rule",
            "ApproximateFirstReceiveTimestamp": "1795600000130"
        });
        event["Records"][0]["messageAttributes"] =
            json!({"trace": {"stringValue": "x", "dataType": "String"}});
        let bytes = serde_json::to_vec(&event).unwrap();
        let Ok(Trigger::Sqs(event)) = Trigger::from_slice(&bytes, None) else {
            panic!("sqs")
        };
        let fakes = Fakes::default();
        let (counts, _) = route_sqs(event, &RULES, &fakes.edges(), "req-12").await;
        assert_eq!(counts.quarantined.get("bad_envelope"), Some(&1));
        {
            let items = fakes.quarantine.items.lock().unwrap();
            assert_eq!(items[0].filed_at_ms, 1_795_600_000_123);
            assert_eq!(items[0].received_at_ms, None);
        }
        // Kinesis: the record's approximate arrival time.
        let Trigger::Kinesis(event) = Trigger::classify(kinesis(&[b"not json"])) else {
            panic!("kinesis")
        };
        let fakes = Fakes::default();
        route_kinesis(event, &RULES, &fakes.edges(), "req-13").await;
        assert_eq!(
            fakes.quarantine.items.lock().unwrap()[0].filed_at_ms,
            1_795_600_000_123
        );
    }

    #[tokio::test]
    async fn a_clean_batch_reports_no_failures() {
        let Trigger::Kinesis(event) = Trigger::classify(kinesis(&[message(1.0).as_bytes()])) else {
            panic!("kinesis")
        };
        let fakes = Fakes::default();
        let edges = fakes.edges();
        let (counts, response) = route_kinesis(event, &RULES, &edges, "req-11").await;
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"batchItemFailures": []})
        );
        assert_eq!(counts.accepted, 1);
    }
}

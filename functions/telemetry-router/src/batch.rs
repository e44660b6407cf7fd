//! SQS and Kinesis batches, for fleets too large for one invocation per message: the rule's SQS
//! or Kinesis action queues the rule's output, Lambda hands the router a batch, and the router
//! answers with `batchItemFailures` so only the messages that must be retried come back.

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_lambda_events::event::streams::KinesisEventResponse;
use serde_json::Value;

use crate::router::{Counts, QuarantineStore, Rules, TelemetrySink, route_message};

/// What invoked the function, told apart by the event's shape.
#[derive(Debug)]
pub enum Trigger {
    /// The IoT rule's Lambda action: the rule's output itself.
    Direct(Value),
    Sqs(SqsEvent),
    Kinesis(KinesisEvent),
}

impl Trigger {
    /// SQS and Kinesis events are `{"Records": [{"eventSource": "aws:sqs" | "aws:kinesis", …}]}`;
    /// anything else is a direct rule invocation (which quarantines what it cannot read).
    pub fn classify(event: Value) -> Result<Self, serde_json::Error> {
        let source = event["Records"][0]["eventSource"]
            .as_str()
            .unwrap_or_default();
        match source {
            "aws:sqs" => serde_json::from_value(event).map(Trigger::Sqs),
            "aws:kinesis" => serde_json::from_value(event).map(Trigger::Kinesis),
            _ => Ok(Trigger::Direct(event)),
        }
    }
}

/// Routes every SQS message; each one that must be retried is listed by message id. Messages
/// are independent: one failure does not stop the others.
pub async fn route_sqs(
    event: SqsEvent,
    rules: &Rules<'_>,
    sink: &impl TelemetrySink,
    quarantine: &impl QuarantineStore,
) -> (Counts, SqsBatchResponse) {
    let mut total = Counts::default();
    let mut response = SqsBatchResponse::default();
    for message in event.records {
        let body = message.body.unwrap_or_default();
        match route_message(body.as_bytes(), rules, sink, quarantine).await {
            Ok(counts) => total.add(&counts),
            Err(retry) => {
                tracing::warn!(message_id = ?message.message_id, error = %retry, "returned for retry");
                total.add(&retry.counts);
                // A message without an id cannot be named: an empty identifier makes Lambda
                // retry the whole batch, which is safe (every write is idempotent).
                response.add_failure(message.message_id.unwrap_or_default());
            }
        }
    }
    (total, response)
}

/// Routes Kinesis records in order. Lambda retries a shard from the first failed sequence
/// number, so the router stops there: the records after it come back anyway and are counted as
/// returned for retry, one each (they were not decoded).
pub async fn route_kinesis(
    event: KinesisEvent,
    rules: &Rules<'_>,
    sink: &impl TelemetrySink,
    quarantine: &impl QuarantineStore,
) -> (Counts, KinesisEventResponse) {
    let mut total = Counts::default();
    let mut response = KinesisEventResponse::default();
    let mut records = event.records.into_iter();
    while let Some(record) = records.next() {
        match route_message(&record.kinesis.data, rules, sink, quarantine).await {
            Ok(counts) => total.add(&counts),
            Err(retry) => {
                tracing::warn!(sequence_number = %record.kinesis.sequence_number, error = %retry, "returned for retry");
                total.add(&retry.counts);
                let rest = records.len();
                total.received += rest;
                total.retried += rest;
                response.add_failure(record.kinesis.sequence_number);
                break;
            }
        }
    }
    (total, response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeQuarantine, FakeSink};
    use serde_json::json;

    const NOW: i64 = 1_795_600_000_000;
    const RULES: Rules<'static> = Rules {
        limits: shoal_shared::telemetry::Limits {
            now_ms: NOW,
            memory_retention_ms: 3_600_000,
        },
        schemas: &shoal_shared::telemetry::PackedSchemas::empty(),
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
        assert!(matches!(
            Trigger::classify(sqs(&["{}"])),
            Ok(Trigger::Sqs(_))
        ));
        assert!(matches!(
            Trigger::classify(kinesis(&[b"{}"])),
            Ok(Trigger::Kinesis(_))
        ));
        assert!(matches!(
            Trigger::classify(json!({"temp": 1})),
            Ok(Trigger::Direct(_))
        ));
        assert!(matches!(
            Trigger::classify(json!({"Records": []})),
            Ok(Trigger::Direct(_))
        ));
        assert!(
            Trigger::classify(json!({"Records": [{"eventSource": "aws:sqs", "body": 7}]})).is_err()
        );
    }

    #[tokio::test]
    async fn sqs_reports_only_the_messages_to_retry() {
        let Ok(Trigger::Sqs(event)) = Trigger::classify(sqs(&[
            &message(1.0),
            "\u{0}definitely not json",
            &message(2.0),
            &message(3.0),
        ])) else {
            panic!("sqs")
        };
        // The second write (message m2) fails.
        let sink = FakeSink {
            fail_call: Some(1),
            ..FakeSink::default()
        };
        let q = FakeQuarantine::default();
        let (counts, response) = route_sqs(event, &RULES, &sink, &q).await;
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": "m2"}]})
        );
        assert_eq!(counts.received, 4);
        assert_eq!(counts.accepted, 2);
        assert_eq!(counts.quarantined.get("bad_envelope"), Some(&1));
        assert_eq!(counts.retried, 1);
        assert!(counts.balanced());
        assert_eq!(
            q.items.lock().unwrap()[0].original,
            b"\x00definitely not json"
        );
    }

    #[tokio::test]
    async fn kinesis_stops_at_the_first_record_to_retry() {
        let (a, b, c, d) = (message(1.0), message(2.0), message(3.0), message(4.0));
        let Ok(Trigger::Kinesis(event)) = Trigger::classify(kinesis(&[
            a.as_bytes(),
            b.as_bytes(),
            c.as_bytes(),
            d.as_bytes(),
        ])) else {
            panic!("kinesis")
        };
        let sink = FakeSink {
            fail_call: Some(1),
            ..FakeSink::default()
        };
        let q = FakeQuarantine::default();
        let (counts, response) = route_kinesis(event, &RULES, &sink, &q).await;
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": "49590000000000000000000000000000000000000000000000000001"}]})
        );
        assert_eq!(
            sink.calls.lock().unwrap().len(),
            1,
            "nothing after the failure is written"
        );
        assert_eq!(
            (counts.received, counts.accepted, counts.retried),
            (4, 1, 3)
        );
        assert!(counts.balanced());
    }

    #[tokio::test]
    async fn a_clean_batch_reports_no_failures() {
        let Ok(Trigger::Kinesis(event)) = Trigger::classify(kinesis(&[message(1.0).as_bytes()]))
        else {
            panic!("kinesis")
        };
        let (counts, response) = route_kinesis(
            event,
            &RULES,
            &FakeSink::default(),
            &FakeQuarantine::default(),
        )
        .await;
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"batchItemFailures": []})
        );
        assert_eq!(counts.accepted, 1);
    }
}

//! The template's IoT rules run by the local IoT Core: a device's telemetry publish goes through
//! `TelemetrySqsRule` (or `TelemetryBinarySqsRule`) into the stack's telemetry queue as the rule
//! writes it (the payload's fields, `_topic`, `_received_at`, `_client_id`; SQL 2016-03-23 turns
//! `22.0` into `22`), and the router, handed that very message as Lambda's SQS event, stores
//! the readings with stable types.
//!
//! The tests in this file are the queue's only consumers: they run one at a time (a lock) and
//! delete what they receive, their own messages and the leftovers of other tests' publishes.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use shoal_aws::config::{TimestreamTarget, vars};
use shoal_cli::resources::init_local;
use shoal_core::clock::now_ms;
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::mqtt5::{Client, certificate};
use shoal_integration_tests::router::RealEdges;
use telemetry_router::handler::{RouterConfig, handle};
use telemetry_router::router::NoDeadline;
use tokio::sync::Mutex;

static QUEUE: Mutex<()> = Mutex::const_new(());

/// A message the rule sent: (message id, body, SentTimestamp in ms).
type Queued = (String, String, String);

/// Receives from the stack's telemetry queue until `count` messages whose `_topic` names
/// `thing` came (within 20 s); deletes every message it receives.
async fn take(thing: &str, count: usize) -> Vec<Queued> {
    let sqs = aws_sdk_sqs::Client::new(local::factory().await.sdk_config());
    let url = sqs
        .get_queue_url()
        .queue_name("shoal-local-telemetry")
        .send()
        .await
        .expect("the stack's telemetry queue (tools/localstack/stack creates it)")
        .queue_url
        .unwrap();
    let mut mine = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while mine.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} messages for {thing} within 20 s",
            mine.len()
        );
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
            )
            .send()
            .await
            .expect("ReceiveMessage");
        for message in received.messages() {
            let body = message.body().unwrap_or_default().to_owned();
            let topic = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|b| b["_topic"].as_str().map(str::to_owned));
            if topic.is_some_and(|t| t.split('/').nth(2) == Some(thing)) {
                let sent = message
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp)
                    })
                    .cloned()
                    .unwrap_or_default();
                mine.push((
                    message.message_id().unwrap_or_default().to_owned(),
                    body,
                    sent,
                ));
            }
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("DeleteMessage");
        }
    }
    mine
}

#[tokio::test]
async fn telemetry_publishes_reach_the_queue_as_the_templates_sqs_rules_write_them() {
    let _one_consumer = QUEUE.lock().await;
    let thing = unique_name("rule");
    let device = Client::connect(&thing, &certificate().await).await;
    device
        .publish(
            &format!("dt/farm/{thing}/telemetry"),
            r#"{"temp": 22.0, "hum": 40.5, "seq": 123456789012345678901}"#,
        )
        .await;
    let packed = vec![0x01, 0x00, 0xff, 0x7f, 0x80];
    device
        .publish(&format!("dt/farm/{thing}/telemetry/th-v2"), packed.clone())
        .await;
    let before = now_ms();

    let queued = take(&thing, 2).await;
    assert!(
        queued
            .iter()
            .any(|(_, body, _)| body.contains(r#""seq":123456789012345678901"#)),
        "a number beyond a double passes digit for digit: {queued:?}"
    );
    let mut bodies: Vec<Value> = queued
        .iter()
        .map(|(_, body, _)| serde_json::from_str(body).unwrap())
        .collect();
    bodies.sort_by_key(|b| b["_topic"].as_str().map(str::len));
    let (json_body, binary_body) = (&bodies[0], &bodies[1]);
    assert_eq!(json_body["_topic"], format!("dt/farm/{thing}/telemetry"));
    assert_eq!(json_body["_client_id"], thing.as_str());
    assert!(
        json_body["temp"].is_i64(),
        "SQL 2016-03-23 writes 22.0 as 22: {json_body}"
    );
    assert_eq!(json_body["temp"], 22);
    assert_eq!(json_body["hum"], 40.5);
    let received_at = json_body["_received_at"]
        .as_i64()
        .expect("ms since the epoch");
    assert!(
        (received_at - before).abs() < 60_000,
        "{received_at} vs {before}"
    );

    assert_eq!(
        binary_body["_topic"],
        format!("dt/farm/{thing}/telemetry/th-v2")
    );
    let payload = base64::engine::general_purpose::STANDARD
        .decode(binary_body["_payload"].as_str().expect("_payload"))
        .unwrap();
    assert_eq!(
        payload, packed,
        "the binary payload, base64 as the rule encodes it"
    );
    let mut keys: Vec<&str> = binary_body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["_client_id", "_payload", "_received_at", "_topic"]);
}

#[tokio::test]
async fn the_router_stores_what_the_rule_queued_with_stable_types() {
    let _one_consumer = QUEUE.lock().await;
    let thing = unique_name("rule");
    let device = Client::connect(&thing, &certificate().await).await;
    let topic = format!("dt/farm/{thing}/telemetry");
    let now = now_ms();
    // The second reading's 22.0 reaches the router as 22: its type must stay DOUBLE.
    device
        .publish(&topic, json!({"ts": now - 1000, "temp": 21.5}).to_string())
        .await;
    device
        .publish(&topic, json!({"ts": now, "temp": 22.0}).to_string())
        .await;
    let queued = take(&thing, 2).await;

    let factory = local::factory().await;
    let database = unique_name("rules-db");
    let bucket = unique_name("rules-archive");
    let env: BTreeMap<&str, &str> = [
        (vars::TIMESTREAM_DATABASE, database.as_str()),
        (vars::TIMESTREAM_TABLE, "telemetry"),
        (vars::ARCHIVE_BUCKET, bucket.as_str()),
    ]
    .into();
    let config = RouterConfig::from_source(&env).unwrap();
    let target: TimestreamTarget = config.timestream.clone();
    init_local(&factory, &target, &config.archive_bucket, &mut Vec::new())
        .await
        .unwrap();
    let real = RealEdges::new(&factory, &config).await;
    let edges = real.edges();
    // Lambda's SQS event for the messages the rule queued.
    let records: Vec<Value> = queued
        .iter()
        .map(|(id, body, sent)| {
            json!({
                "messageId": id,
                "body": body,
                "attributes": {"SentTimestamp": sent},
                "eventSource": "aws:sqs",
            })
        })
        .collect();
    let event = serde_json::to_vec(&json!({ "Records": records })).unwrap();
    let trigger = telemetry_router::batch::Trigger::from_slice(&event, None).unwrap();
    let (counts, answer) = handle(trigger, &config, &edges, "req-rules", &NoDeadline).await;
    assert_eq!(answer.unwrap(), json!({"batchItemFailures": []}));
    assert_eq!((counts.received, counts.accepted), (2, 2), "{counts:?}");

    let mut stored: Vec<(String, Value)> = local::moto_timestream_records(&database, "telemetry")
        .into_iter()
        .map(|r| {
            (
                r["Time"].as_str().unwrap_or_default().to_owned(),
                r["MeasureValues"].clone(),
            )
        })
        .collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        stored,
        [
            (
                (now - 1000).to_string(),
                json!([{"Name": "temp", "Value": "21.5", "Type": "DOUBLE"}])
            ),
            (
                now.to_string(),
                json!([{"Name": "temp", "Value": "22.0", "Type": "DOUBLE"}])
            ),
        ]
    );
}

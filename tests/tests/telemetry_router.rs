//! The telemetry router's edges against the local endpoint: readings land in Timestream, refused
//! input lands in the S3 quarantine with its reason, and a store that fails returns the message
//! for retry with nothing lost.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use shoal_cli::resources::{ensure_bucket, init_local};
use shoal_integration_tests::local::{self, unique_name};
use shoal_shared::aws::{AwsError, AwsResultExt, ClientFactory};
use shoal_shared::config::{BucketName, TimestreamTarget};
use shoal_shared::telemetry::{Limits, PackedSchemas, TimestreamRecord};
use telemetry_router::edges::{S3Quarantine, TimestreamSink};
use telemetry_router::router::{RejectedRecord, Rules, TelemetrySink, route_rule_event};

/// Counts WriteRecords calls on their way to the real sink.
struct Counting<S> {
    inner: S,
    calls: AtomicUsize,
}

impl<S: TelemetrySink> TelemetrySink for Counting<S> {
    async fn write(&self, batch: &[TimestreamRecord]) -> Result<Vec<RejectedRecord>, AwsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.write(batch).await
    }
}

struct Stack {
    factory: ClientFactory,
    target: TimestreamTarget,
    bucket: BucketName,
}

/// A fresh database, table (unless `create_table` is false: then no database either) and bucket.
async fn stack(create_table: bool) -> Stack {
    let factory = local::factory().await;
    let target = TimestreamTarget {
        database: unique_name("router-db").parse().unwrap(),
        table: "telemetry".parse().unwrap(),
    };
    let bucket: BucketName = unique_name("router-archive").parse().unwrap();
    if create_table {
        init_local(&factory, &target, &bucket, &mut Vec::new())
            .await
            .unwrap();
    } else {
        ensure_bucket(&factory.s3(), &bucket).await.unwrap();
    }
    Stack {
        factory,
        target,
        bucket,
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

static NO_SCHEMAS: PackedSchemas = PackedSchemas::empty();

fn rules(now: i64) -> Rules<'static> {
    Rules {
        limits: Limits {
            now_ms: now,
            memory_retention_ms: 24 * 3_600_000,
        },
        schemas: &NO_SCHEMAS,
    }
}

fn event(payload: Value, now: i64) -> Value {
    let mut e = payload;
    e["_topic"] = json!("dt/farm/dev-42/telemetry");
    e["_received_at"] = json!(now);
    e["_client_id"] = json!("dev-42");
    e
}

/// Timestream records moto holds for the table (see aws_clients.rs: moto's state endpoint).
fn stored_records(target: &TimestreamTarget) -> Vec<Value> {
    let state: Value = serde_json::from_str(&local::get("/moto-api/data.json").unwrap()).unwrap();
    state["timestreamwrite"]["TimestreamTable"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["db_name"] == target.database.as_str() && t["name"] == target.table.as_str())
        .flat_map(|t| t["records"].as_array().cloned().unwrap_or_default())
        .collect()
}

async fn quarantine_keys(stack: &Stack) -> Vec<String> {
    let listed = stack
        .factory
        .s3()
        .list_objects_v2()
        .bucket(stack.bucket.as_str())
        .prefix("quarantine/")
        .send()
        .await
        .aws("s3", "ListObjectsV2")
        .unwrap();
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn readings_land_in_timestream_and_bad_ones_in_the_quarantine() {
    let stack = stack(true).await;
    let sink = TimestreamSink::new(
        stack.factory.timestream_write().await.unwrap(),
        stack.target.clone(),
    );
    let quarantine = S3Quarantine::new(stack.factory.s3(), stack.bucket.clone());
    let now = now_ms();
    let message = event(
        json!({"readings": [
            {"ts": now - 2000, "temp": 23.0, "rssi": -70, "door_open": false},
            {"ts": now - 1000, "temp": 23.5, "rssi": -71, "door_open": true},
            {"ts": now + 3_600_000, "temp": 99.0},
            {"ts": now, "bad-name": 1}
        ]}),
        now,
    );
    let counts = route_rule_event(message.clone(), &rules(now), &sink, &quarantine)
        .await
        .unwrap();
    assert_eq!((counts.received, counts.accepted), (4, 2));
    assert!(counts.balanced());

    let records = stored_records(&stack.target);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0]["Time"], (now - 2000).to_string());
    assert_eq!(records[0]["Version"], now);
    assert_eq!(
        records[0]["MeasureValues"],
        json!([
            {"Name": "door_open", "Value": "false", "Type": "BOOLEAN"},
            {"Name": "rssi", "Value": "-70", "Type": "BIGINT"},
            {"Name": "temp", "Value": "23.0", "Type": "DOUBLE"}
        ])
    );

    let keys = quarantine_keys(&stack).await;
    assert_eq!(keys.len(), 2, "{keys:#?}");
    assert!(
        keys[0].contains("/reason=bad_measure_name/dev-42/"),
        "{}",
        keys[0]
    );
    assert!(keys[0].ends_with("-reading-3.json"));
    assert!(
        keys[1].contains("/reason=timestamp_in_future/dev-42/"),
        "{}",
        keys[1]
    );
    let object = stack
        .factory
        .s3()
        .get_object()
        .bucket(stack.bucket.as_str())
        .key(&keys[1])
        .send()
        .await
        .aws("s3", "GetObject")
        .unwrap();
    let metadata = object.metadata().cloned().unwrap_or_default();
    assert_eq!(metadata["reason-code"], "timestamp_in_future");
    assert!(metadata["reason"].contains("in the future"), "{metadata:?}");
    assert_eq!(metadata["reading-index"], "2");
    let body: Value =
        serde_json::from_slice(&object.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(
        body, message,
        "the quarantine keeps the message exactly as delivered"
    );

    // Redelivering the same message changes nothing: same upserts, same quarantine keys.
    route_rule_event(message, &rules(now), &sink, &quarantine)
        .await
        .unwrap();
    assert_eq!(quarantine_keys(&stack).await, keys);
}

#[tokio::test]
async fn a_batch_takes_ceil_n_over_100_write_calls() {
    let stack = stack(true).await;
    let sink = Counting {
        inner: TimestreamSink::new(
            stack.factory.timestream_write().await.unwrap(),
            stack.target.clone(),
        ),
        calls: AtomicUsize::new(0),
    };
    let quarantine = S3Quarantine::new(stack.factory.s3(), stack.bucket.clone());
    let now = now_ms();
    let readings: Vec<Value> = (0..250)
        .map(|i| json!({"ts": now - i, "temp": 20.5}))
        .collect();
    let counts = route_rule_event(
        event(json!({ "readings": readings }), now),
        &rules(now),
        &sink,
        &quarantine,
    )
    .await
    .unwrap();
    assert_eq!(counts.accepted, 250);
    assert_eq!(sink.calls.load(Ordering::SeqCst), 3);
    assert_eq!(stored_records(&stack.target).len(), 250);
}

#[tokio::test]
async fn a_missing_database_returns_every_reading_for_retry() {
    let stack = stack(false).await;
    let sink = TimestreamSink::new(
        stack.factory.timestream_write().await.unwrap(),
        stack.target.clone(),
    );
    let quarantine = S3Quarantine::new(stack.factory.s3(), stack.bucket.clone());
    let now = now_ms();
    let retry = route_rule_event(
        event(
            json!({"readings": [{"temp": 1.0}, {"temp": 2.0}, {"bad-name": 3}]}),
            now,
        ),
        &rules(now),
        &sink,
        &quarantine,
    )
    .await
    .unwrap_err();
    assert!(
        retry.cause.is_code("ResourceNotFoundException"),
        "{}",
        retry.cause
    );
    assert_eq!(retry.counts.received, 3);
    assert_eq!(retry.counts.retried, 3, "{:?}", retry.counts);
    assert!(retry.counts.balanced());
    assert!(quarantine_keys(&stack).await.is_empty());
}

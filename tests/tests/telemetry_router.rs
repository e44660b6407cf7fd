//! The telemetry router's edges against the local endpoint: readings land in Timestream and in the
//! Parquet archive, refused input lands in the S3 quarantine with its reason, and a store that
//! fails returns the message for retry with nothing lost.

use std::sync::atomic::{AtomicUsize, Ordering};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Value, json};
use shoal_aws::client::{AwsResultExt, ClientFactory, EdgeError};
use shoal_aws::config::{BucketName, TimestreamTarget};
use shoal_cli::resources::{ensure_bucket, init_local};
use shoal_core::clock::now_ms;
use shoal_core::telemetry::{Limits, MeasureTypes, PackedSchemas, TimestreamRecord};
use shoal_integration_tests::local::{self, unique_name};
use telemetry_router::edges::{S3Archive, S3Quarantine, TimestreamSink};
use telemetry_router::router::{
    ArchiveStore, Edges, NoDeadline, RejectedRecord, RetryCause, Rules, TelemetrySink,
    route_rule_event,
};

/// Counts the calls on their way to the real edge.
struct Counted<T> {
    inner: T,
    calls: AtomicUsize,
}

impl<T> Counted<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            calls: AtomicUsize::new(0),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<S: TelemetrySink> TelemetrySink for Counted<S> {
    async fn write(&self, batch: &[TimestreamRecord]) -> Result<Vec<RejectedRecord>, EdgeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.write(batch).await
    }
}

impl<A: ArchiveStore> ArchiveStore for Counted<A> {
    async fn put(&self, key: &str, parquet: Vec<u8>) -> Result<(), EdgeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, parquet).await
    }
}

/// A fresh database and table (unless `create_database` is false) and bucket, with the real
/// edges on them.
struct Stack {
    factory: ClientFactory,
    target: TimestreamTarget,
    bucket: BucketName,
    sink: Counted<TimestreamSink>,
    quarantine: S3Quarantine,
    archive: Counted<S3Archive>,
}

impl Stack {
    async fn new(create_database: bool) -> Self {
        let factory = local::factory().await;
        let target = TimestreamTarget {
            database: unique_name("router-db").parse().unwrap(),
            table: "telemetry".parse().unwrap(),
        };
        let bucket: BucketName = unique_name("router-archive").parse().unwrap();
        if create_database {
            init_local(&factory, &target, &bucket, &mut Vec::new())
                .await
                .unwrap();
        } else {
            ensure_bucket(&factory.s3(), &bucket).await.unwrap();
        }
        let sink = TimestreamSink::new(factory.timestream_write().await.unwrap(), target.clone());
        Self {
            sink: Counted::new(sink),
            quarantine: S3Quarantine::new(factory.s3(), bucket.clone()),
            archive: Counted::new(S3Archive::new(factory.s3(), bucket.clone())),
            factory,
            target,
            bucket,
        }
    }

    /// The router's configuration for this stack's table and bucket, defaults otherwise.
    fn router_config(&self) -> telemetry_router::handler::RouterConfig {
        telemetry_router::handler::RouterConfig {
            timestream: self.target.clone(),
            archive_bucket: self.bucket.clone(),
            memory_retention_ms: 24 * 3_600_000,
            magnetic_retention_ms: None,
            packed_schemas: PackedSchemas::empty(),
            measure_types: MeasureTypes::empty(),
            delivery: None,
            telemetry_apps: shoal_core::telemetry::TelemetryApps::ANY,
        }
    }

    fn edges(&self) -> Edges<'_, Counted<TimestreamSink>, S3Quarantine, Counted<S3Archive>> {
        Edges {
            sink: &self.sink,
            quarantine: &self.quarantine,
            archive: &self.archive,
        }
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .factory
            .s3()
            .list_objects_v2()
            .bucket(self.bucket.as_str())
            .prefix(prefix)
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

    async fn object(&self, key: &str) -> aws_sdk_s3::operation::get_object::GetObjectOutput {
        self.factory
            .s3()
            .get_object()
            .bucket(self.bucket.as_str())
            .key(key)
            .send()
            .await
            .aws("s3", "GetObject")
            .unwrap()
    }

    /// Every archived row, as (column, value) pairs, from every archive object.
    async fn archived_columns(&self) -> Vec<Vec<(String, Field)>> {
        let mut rows = Vec::new();
        for key in self.keys("telemetry/").await {
            let bytes = self
                .object(&key)
                .await
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            let reader = SerializedFileReader::new(bytes).unwrap();
            for row in reader.get_row_iter(None).unwrap() {
                rows.push(row.unwrap().into_columns());
            }
        }
        rows
    }

    /// The archive's rows as (thing, app, time, measure, type, value as text, received_at).
    async fn archived_rows(&self) -> Vec<(String, String, i64, String, String, String, i64)> {
        let mut rows = Vec::new();
        for columns in self.archived_columns().await {
            {
                let get = |name: &str| columns.iter().find(|(n, _)| n == name).unwrap().1.clone();
                let text = |f: Field| match f {
                    Field::Str(s) => s,
                    Field::Double(d) => d.to_string(),
                    Field::Long(l) => l.to_string(),
                    Field::Bool(b) => b.to_string(),
                    other => panic!("unexpected {other:?}"),
                };
                let millis = |f: Field| match f {
                    Field::TimestampMillis(t) => t,
                    other => panic!("unexpected {other:?}"),
                };
                let value = [
                    "value_double",
                    "value_bigint",
                    "value_boolean",
                    "value_varchar",
                ]
                .into_iter()
                .map(get)
                .find(|f| *f != Field::Null)
                .map(text)
                .unwrap();
                rows.push((
                    text(get("thing_name")),
                    text(get("app")),
                    millis(get("time")),
                    text(get("measure_name")),
                    text(get("measure_type")),
                    value,
                    millis(get("received_at")),
                ));
            }
        }
        rows.sort();
        rows
    }
}

static NO_SCHEMAS: PackedSchemas = PackedSchemas::empty();
static NO_TYPES: MeasureTypes = MeasureTypes::empty();

fn rules(now: i64) -> Rules<'static> {
    Rules {
        limits: Limits {
            now_ms: now,
            memory_retention_ms: 24 * 3_600_000,
            magnetic_retention_ms: None,
        },
        schemas: &NO_SCHEMAS,
        types: &NO_TYPES,
        apps: &shoal_core::telemetry::TelemetryApps::ANY,
        deadline: &NoDeadline,
    }
}

fn event(payload: Value, now: i64) -> Value {
    let mut e = payload;
    e["_topic"] = json!("dt/farm/dev-42/telemetry");
    e["_received_at"] = json!(now);
    e["_client_id"] = json!("dev-42");
    e
}

/// An event as Lambda delivers it (bytes), read as the function reads it.
fn delivered(event: &Value) -> telemetry_router::batch::Trigger {
    telemetry_router::batch::Trigger::from_slice(&serde_json::to_vec(event).unwrap(), None).unwrap()
}

/// Timestream records moto holds for the table (see aws_clients.rs: moto's state endpoint).
fn stored_records(target: &TimestreamTarget) -> Vec<Value> {
    local::moto_timestream_records(target.database.as_str(), target.table.as_str())
}

#[tokio::test]
async fn readings_land_in_timestream_and_the_archive_and_bad_ones_in_the_quarantine() {
    let stack = Stack::new(true).await;
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
    let counts = route_rule_event(message.clone().into(), &rules(now), &stack.edges(), "req-a")
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
            {"Name": "rssi", "Value": "-70.0", "Type": "DOUBLE"},
            {"Name": "temp", "Value": "23.0", "Type": "DOUBLE"}
        ])
    );

    // The archive holds the same two readings, measure by measure, in one object.
    assert_eq!(stack.archive.calls(), 1);
    let archived = stack.archived_rows().await;
    let row = |t: i64, m: &str, ty: &str, v: &str| {
        (
            "dev-42".to_owned(),
            "farm".to_owned(),
            t,
            m.to_owned(),
            ty.to_owned(),
            v.to_owned(),
            now,
        )
    };
    assert_eq!(
        archived,
        vec![
            row(now - 2000, "door_open", "BOOLEAN", "false"),
            row(now - 2000, "rssi", "DOUBLE", "-70"),
            row(now - 2000, "temp", "DOUBLE", "23"),
            row(now - 1000, "door_open", "BOOLEAN", "true"),
            row(now - 1000, "rssi", "DOUBLE", "-71"),
            row(now - 1000, "temp", "DOUBLE", "23.5"),
        ]
    );
    let archive_keys = stack.keys("telemetry/").await;
    assert!(
        archive_keys[0].ends_with("/req-a.parquet"),
        "{archive_keys:?}"
    );

    // One quarantine object for the message, listing both refused readings.
    let keys = stack.keys("quarantine/").await;
    assert_eq!(keys.len(), 1, "{keys:#?}");
    assert!(keys[0].contains("/dev-42/"), "{}", keys[0]);
    let object = stack.object(&keys[0]).await;
    let metadata = object.metadata().cloned().unwrap_or_default();
    assert_eq!(
        metadata["reason-codes"],
        "bad_measure_name,timestamp_in_future"
    );
    assert_eq!(metadata["readings"], "4");
    assert_eq!(metadata["refused-readings"], "2");
    let body: Value =
        serde_json::from_slice(&object.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(body["refused"][0]["reading"], 2);
    assert_eq!(body["refused"][0]["reason_code"], "timestamp_in_future");
    assert!(
        body["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("in the future")
    );
    assert_eq!(body["refused"][1]["reading"], 3);
    assert_eq!(body["refused"][1]["reason_code"], "bad_measure_name");
    let delivered: Value = serde_json::from_str(body["message"].as_str().unwrap()).unwrap();
    assert_eq!(
        delivered, message,
        "the quarantine keeps the message exactly as delivered"
    );

    // Redelivering the same invocation changes nothing: same upserts, same quarantine keys, the
    // same archive object.
    route_rule_event(message.into(), &rules(now), &stack.edges(), "req-a")
        .await
        .unwrap();
    assert_eq!(stack.keys("quarantine/").await, keys);
    assert_eq!(stack.keys("telemetry/").await, archive_keys);
}

#[tokio::test]
async fn a_batch_takes_ceil_n_over_100_writes_and_one_archive_object() {
    let stack = Stack::new(true).await;
    let now = now_ms();
    let readings: Vec<Value> = (0..250)
        .map(|i| json!({"ts": now - i, "temp": 20.5}))
        .collect();
    let counts = route_rule_event(
        event(json!({ "readings": readings }), now).into(),
        &rules(now),
        &stack.edges(),
        "req-b",
    )
    .await
    .unwrap();
    assert_eq!(counts.accepted, 250);
    assert_eq!(stack.sink.calls(), 3);
    assert_eq!(stack.archive.calls(), 1);
    assert_eq!(stored_records(&stack.target).len(), 250);
    assert_eq!(stack.archived_rows().await.len(), 250);
}

#[tokio::test]
async fn a_missing_database_returns_every_reading_for_retry() {
    let stack = Stack::new(false).await;
    let now = now_ms();
    let retry = route_rule_event(
        event(
            json!({"readings": [{"temp": 1.0}, {"temp": 2.0}, {"bad-name": 3}]}),
            now,
        )
        .into(),
        &rules(now),
        &stack.edges(),
        "req-c",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&retry.cause, RetryCause::Store(e) if e.is_code("ResourceNotFoundException")),
        "{}",
        retry.cause
    );
    // The messages go back (nothing is lost), but the Lambda error says a retry cannot help
    // until the table exists.
    let diagnostic = shoal_aws::lambda::diagnostic(&retry);
    assert_eq!(diagnostic.error_type, shoal_aws::lambda::NON_RETRYABLE);
    assert!(
        diagnostic
            .error_message
            .contains("ResourceNotFoundException"),
        "{}",
        diagnostic.error_message
    );
    assert_eq!(retry.counts.received, 3);
    assert_eq!(retry.counts.retried, 3, "{:?}", retry.counts);
    assert!(retry.counts.balanced());
    assert!(stack.keys("quarantine/").await.is_empty());
    assert!(stack.keys("telemetry/").await.is_empty());
}

#[tokio::test]
async fn an_unreachable_endpoint_returns_the_whole_sqs_batch_as_failures() {
    use shoal_aws::config::vars;
    use std::collections::BTreeMap;
    use telemetry_router::handler::{RouterConfig, handle};

    // A port nobody listens on stands for a stopped endpoint; the stack is not needed.
    let factory = local::unreachable_factory();
    let env: BTreeMap<&str, &str> = [
        (vars::TIMESTREAM_DATABASE, "shoal_down"),
        (vars::TIMESTREAM_TABLE, "telemetry"),
        (vars::ARCHIVE_BUCKET, "shoal-down-archive"),
    ]
    .into();
    let router_config = RouterConfig::from_source(&env).unwrap();
    let real = shoal_integration_tests::router::RealEdges::new(&factory, &router_config).await;
    let edges = real.edges();
    let now = now_ms();
    let body = |temp: f64| {
        json!({"temp": temp, "_topic": "dt/farm/dev-1/telemetry", "_received_at": now}).to_string()
    };
    let sqs = json!({"Records": [
        {"messageId": "a", "body": body(1.0), "eventSource": "aws:sqs"},
        {"messageId": "b", "body": "not json", "eventSource": "aws:sqs"},
        {"messageId": "c", "body": body(2.0), "eventSource": "aws:sqs"},
    ]});
    let (counts, answer) = handle(
        delivered(&sqs),
        &router_config,
        &edges,
        "req-down",
        &NoDeadline,
    )
    .await;
    // Every message comes back: the readings could not be written, and the bad one could not be
    // quarantined either.
    assert_eq!(
        answer.unwrap(),
        json!({"batchItemFailures": [
            {"itemIdentifier": "a"}, {"itemIdentifier": "b"}, {"itemIdentifier": "c"}
        ]})
    );
    assert_eq!((counts.received, counts.retried), (3, 3));
    assert!(counts.balanced());
}

#[tokio::test]
async fn sqs_quarantine_items_name_their_message() {
    use telemetry_router::handler::handle;
    let stack = Stack::new(true).await;
    let config = stack.router_config();
    let now = now_ms();
    let good = event(json!({"temp": 1.5}), now).to_string();
    let sqs = json!({"Records": [
        {"messageId": "msg-good", "body": good, "eventSource": "aws:sqs"},
        {"messageId": "msg-bad", "body": "temp=1.5", "eventSource": "aws:sqs"},
    ]});
    let (counts, answer) = handle(
        delivered(&sqs),
        &config,
        &stack.edges(),
        "req-sqs",
        &NoDeadline,
    )
    .await;
    assert_eq!(answer.unwrap(), json!({"batchItemFailures": []}));
    assert_eq!((counts.received, counts.accepted), (2, 1));
    let keys = stack.keys("quarantine/").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let object = stack.object(&keys[0]).await;
    let metadata = object.metadata().cloned().unwrap_or_default();
    assert_eq!(metadata["message-id"], "msg-bad");
    assert_eq!(metadata["reason-codes"], "bad_envelope");
    assert_eq!(stack.archived_rows().await.len(), 1);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn packed(time: i64, temp: f32, hum: f32) -> Vec<u8> {
    let mut out = (time as u64).to_be_bytes().to_vec();
    out.extend_from_slice(&temp.to_be_bytes());
    out.extend_from_slice(&hum.to_be_bytes());
    out
}

impl Stack {
    /// (reading_id, measure, received_at) of every archived row.
    async fn archived_ids(&self) -> Vec<(String, String, i64)> {
        let mut rows = Vec::new();
        for columns in self.archived_columns().await {
            {
                let get = |name: &str| columns.iter().find(|(n, _)| n == name).unwrap().1.clone();
                let (Field::Str(id), Field::Str(measure), Field::TimestampMillis(at)) =
                    (get("reading_id"), get("measure_name"), get("received_at"))
                else {
                    panic!("unexpected row {columns:?}")
                };
                rows.push((id, measure, at));
            }
        }
        rows.sort();
        rows
    }
}

/// Issue 11, case 1 against the local stack: a payload of two gzip members (two packed th-v2
/// records each) lands whole: four records in Timestream, four readings in the archive.
#[tokio::test]
async fn every_gzip_member_lands_in_timestream_and_the_archive() {
    use base64::Engine as _;
    let stack = Stack::new(true).await;
    let now = now_ms();
    let mut payload = gzip(
        &[
            packed(now - 4000, 21.5, 40.0),
            packed(now - 3000, 21.75, 41.0),
        ]
        .concat(),
    );
    payload.extend(gzip(
        &[
            packed(now - 2000, 22.0, 42.0),
            packed(now - 1000, 22.25, 43.0),
        ]
        .concat(),
    ));
    let schemas: PackedSchemas = "th-v2=temp,hum".parse().unwrap();
    let rules = Rules {
        schemas: &schemas,
        ..rules(now)
    };
    let message = json!({
        "_payload": base64::engine::general_purpose::STANDARD.encode(&payload),
        "_topic": "dt/greenhouse/dev-7/telemetry/th-v2",
        "_received_at": now,
        "_client_id": "dev-7",
    });
    let counts = route_rule_event(message.into(), &rules, &stack.edges(), "req-gz")
        .await
        .unwrap();
    assert_eq!((counts.received, counts.accepted), (4, 4));
    let records = stored_records(&stack.target);
    let times: Vec<String> = records
        .iter()
        .map(|r| r["Time"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        times,
        [4000, 3000, 2000, 1000]
            .map(|ago| (now - ago).to_string())
            .to_vec()
    );
    assert_eq!(
        stack.archived_rows().await.len(),
        8,
        "4 readings × 2 measures"
    );
}

/// Issue 11, cases 2 and 3 against the local stack: `21.5` then `22.0` (delivered as `22`) are
/// both DOUBLE in Timestream and in the archive's `value_double`; the same message delivered
/// twice (QoS 1 resend: a new receive time, another invocation) is two archive rows per measure
/// with one reading id, and counting by reading id counts it once.
#[tokio::test]
async fn types_stay_stable_and_a_redelivered_reading_counts_once() {
    let stack = Stack::new(true).await;
    let now = now_ms();
    for (i, temp) in [json!(21.5), json!(22)].into_iter().enumerate() {
        let message = event(json!({"ts": now - 10_000 + i as i64, "temp": temp}), now);
        route_rule_event(
            message.into(),
            &rules(now),
            &stack.edges(),
            &format!("req-t{i}"),
        )
        .await
        .unwrap();
    }
    let records = stored_records(&stack.target);
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["MeasureValues"][0]["Type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["DOUBLE", "DOUBLE"]);
    let archived = stack.archived_rows().await;
    let doubles: Vec<(&str, &str)> = archived
        .iter()
        .map(|r| (r.4.as_str(), r.5.as_str()))
        .collect();
    assert_eq!(doubles, vec![("DOUBLE", "21.5"), ("DOUBLE", "22")]);

    // The same reading delivered again, received 30 s later by another invocation.
    let again = event(json!({"ts": now - 10_000, "temp": 21.5}), now + 30_000);
    route_rule_event(again.into(), &rules(now + 30_000), &stack.edges(), "req-t2")
        .await
        .unwrap();
    let rows = stack.archived_ids().await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut readings: Vec<(&str, &str)> = rows
        .iter()
        .map(|(id, m, _)| (id.as_str(), m.as_str()))
        .collect();
    readings.dedup();
    assert_eq!(readings.len(), 2, "two readings, whatever the deliveries");
    // Both deliveries of the first reading share its id; the view keeps the later one.
    assert_eq!(
        shoal_core::telemetry::archive::reading_id("dev-42", "farm", now - 10_000),
        rows.iter()
            .find(|(_, _, at)| *at == now + 30_000)
            .unwrap()
            .0
    );
}

/// Issue 11, case 4 against the local stack: with magnetic-store writes on, a reading buffered
/// offline for three days is written; one older than the magnetic retention is quarantined.
#[tokio::test]
async fn late_readings_are_written_to_the_magnetic_store() {
    let stack = Stack::new(true).await;
    let now = now_ms();
    let day = 86_400_000;
    let rules = Rules {
        limits: Limits {
            magnetic_retention_ms: Some(30 * day),
            ..rules(now).limits
        },
        ..rules(now)
    };
    let message = event(
        json!({"readings": [
            {"ts": now - 3 * day, "temp": 19.5},
            {"ts": now - 31 * day, "temp": 18.5},
        ]}),
        now,
    );
    let counts = route_rule_event(message.into(), &rules, &stack.edges(), "req-late")
        .await
        .unwrap();
    assert_eq!(
        (counts.received, counts.accepted, counts.accepted_late),
        (2, 1, 1)
    );
    assert_eq!(counts.quarantined.get("timestamp_too_old"), Some(&1));
    let records = stored_records(&stack.target);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["Time"], (now - 3 * day).to_string());
    assert_eq!(stack.archived_rows().await.len(), 1);
    assert_eq!(stack.keys("quarantine/").await.len(), 1);
}

/// Issue 11, cases 5b and 6 against the local stack: 8,192 refused readings are one quarantine
/// object listing each; a bad envelope from SQS is filed under the hour SQS took it.
#[tokio::test]
async fn refusals_are_one_object_per_message_filed_by_a_real_time() {
    use telemetry_router::handler::handle;
    let stack = Stack::new(true).await;
    let now = now_ms();
    let values = vec![json!(1); 8192];
    let ahead = event(
        json!({"ts": now + 10 * 86_400_000, "interval": 1, "measure": "t", "values": values}),
        now,
    );
    let counts = route_rule_event(ahead.into(), &rules(now), &stack.edges(), "req-q")
        .await
        .unwrap();
    assert_eq!(counts.quarantined.get("timestamp_in_future"), Some(&8192));
    let keys = stack.keys("quarantine/").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let body: Value = serde_json::from_slice(
        &stack
            .object(&keys[0])
            .await
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes(),
    )
    .unwrap();
    assert_eq!(body["refused"].as_array().unwrap().len(), 8192);
    assert_eq!(body["refused"][8191]["reading"], 8191);

    let config = stack.router_config();
    // 2026-11-25T09:46:40.123Z
    let sqs = json!({"Records": [{
        "messageId": "msg-bad", "body": "temp=1.5", "eventSource": "aws:sqs",
        "attributes": {"SentTimestamp": "1795600000123"}
    }]});
    let (counts, answer) = handle(
        delivered(&sqs),
        &config,
        &stack.edges(),
        "req-sqs-bad",
        &NoDeadline,
    )
    .await;
    assert_eq!(answer.unwrap(), json!({"batchItemFailures": []}));
    assert_eq!(counts.quarantined.get("bad_envelope"), Some(&1));
    let keys = stack
        .keys("quarantine/year=2026/month=11/day=25/hour=09/")
        .await;
    assert_eq!(keys.len(), 1, "{:?}", stack.keys("quarantine/").await);
    assert!(stack.keys("quarantine/year=1970").await.is_empty());
}

/// Issue 11, case 3, end to end: the template's Athena view `telemetry_latest`, run by DuckDB over
/// the real archive objects (Athena is not emulated; this SQL is the same in both), counts a
/// redelivered reading once, with the value of its latest delivery — what Timestream keeps.
#[tokio::test]
async fn the_template_s_latest_view_counts_each_reading_once_over_the_real_archive() {
    let stack = Stack::new(true).await;
    let now = now_ms();
    let readings = |late_temp: f64| {
        json!({"readings": [
            {"ts": now - 3000, "temp": 20.5, "hum": 40},
            {"ts": now - 2000, "temp": 21.5, "hum": 41},
            {"ts": now - 1000, "temp": late_temp, "hum": 42},
        ]})
    };
    // First delivery, then a resend received 30 s later (a correction on the last reading).
    route_rule_event(
        event(readings(22.5), now).into(),
        &rules(now),
        &stack.edges(),
        "req-v1",
    )
    .await
    .unwrap();
    route_rule_event(
        event(readings(23.5), now + 30_000).into(),
        &rules(now + 30_000),
        &stack.edges(),
        "req-v2",
    )
    .await
    .unwrap();
    let keys = stack.keys("telemetry/").await;
    assert_eq!(keys.len(), 2, "{keys:?}");

    let dir = std::env::temp_dir().join(unique_name("archive-view"));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, key) in keys.iter().enumerate() {
        let bytes = stack
            .object(key)
            .await
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        std::fs::write(dir.join(format!("{i}.parquet")), bytes).unwrap();
    }
    let root = shoal_integration_tests::repo_root();
    let template: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(root.join("infra/template.yaml")).unwrap())
            .unwrap();
    let view = template["Resources"]["ArchiveLatestViewQuery"]["Properties"]["QueryString"]
        .as_str()
        .expect("the view's saved query")
        .to_owned();
    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
con.execute(f"CREATE VIEW telemetry AS SELECT * FROM read_parquet('{sys.argv[1]}/*.parquet')")
con.execute(sys.argv[2])
rows = con.execute(
    "SELECT reading_id, measure_name, value_double, count(*) OVER () FROM telemetry_latest "
    "ORDER BY reading_id, measure_name").fetchall()
total = con.execute("SELECT count(*) FROM telemetry").fetchone()[0]
print(json.dumps({"rows": rows, "archived": total}))
"#;
    let python = root.join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap(), &view])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `make venv`)", python.display()));
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["archived"], 12,
        "two deliveries of 3 readings × 2 measures"
    );
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "each reading and measure once: {rows:?}");
    let id = shoal_core::telemetry::archive::reading_id("dev-42", "farm", now - 1000);
    let corrected = rows
        .iter()
        .find(|r| r[0] == id.as_str() && r[1] == "temp")
        .unwrap();
    assert_eq!(
        corrected[2], 23.5,
        "the latest delivery wins, as in Timestream"
    );
}

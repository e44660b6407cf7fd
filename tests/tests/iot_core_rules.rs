//! The template's rules and functions run together as deployed: a device publishes on MQTT to
//! the local IoT Core, `TelemetrySqsRule` (or `TelemetryBinarySqsRule`) queues the rule's output
//! on the stack's telemetry queue, `TelemetryQueueMapping` hands it to the real router process in
//! the local Lambda host, and the readings land in Timestream (or, refused, in the quarantine
//! with their reason). Lifecycle events reach the presence function through `PresenceRule` and
//! the device table. The `kinesis` and `direct` deliveries run in a second deployment of the
//! template beside the stack's ([`Deployment`]). Nothing here calls a function directly.

use std::time::Duration;

use serde_json::{Value, json};
use shoal_aws::device_table::{DEVICE_RECORD, DeviceTable};
use shoal_core::clock::now_ms;
use shoal_integration_tests::deployment::Deployment;
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::mqtt5::Client;

/// The stack's names (tools/localstack/stack, `shoal init-local`'s defaults).
const DATABASE: &str = "shoal_local";
const TABLE: &str = "telemetry";
const ARCHIVE: &str = "shoal-local-archive";
const DEVICES: &str = "shoal-local-devices";

/// Polls `probe` every 250 ms until it gives a value, for at most `seconds`.
async fn eventually<T>(seconds: u64, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {seconds} s (function logs: .local/lambda/)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The stack's Timestream records at `times` (ms text): (time, measure values), by time. moto
/// keeps a record without the batch's common attributes, so the thing's dimension is not there:
/// tests tell their readings apart by their times.
fn stored(times: &[String]) -> Vec<(String, Value)> {
    let mut found: Vec<(String, Value)> = local::moto_timestream_records(DATABASE, TABLE)
        .into_iter()
        .filter_map(|r| {
            let time = r["Time"].as_str()?.to_owned();
            times
                .contains(&time)
                .then(|| (time, r["MeasureValues"].clone()))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The archive's rows of `thing` (every Parquet object under `telemetry/` in the stack's archive
/// bucket): (measure, value as text) pairs, sorted.
async fn archived(thing: &str) -> Vec<(String, String)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let s3 = local::factory().await.s3();
    let mut rows = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(ARCHIVE)
        .prefix("telemetry/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for object in page.expect("ListObjectsV2").contents() {
            let bytes = s3
                .get_object()
                .bucket(ARCHIVE)
                .key(object.key().unwrap_or_default())
                .send()
                .await
                .expect("GetObject")
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            let reader = SerializedFileReader::new(bytes).expect("Parquet");
            for row in reader.get_row_iter(None).unwrap() {
                let columns = row.unwrap().into_columns();
                let get = |name: &str| columns.iter().find(|(n, _)| n == name).map(|c| c.1.clone());
                if get("thing_name") != Some(Field::Str(thing.to_owned())) {
                    continue;
                }
                let value = [
                    "value_double",
                    "value_bigint",
                    "value_varchar",
                    "value_boolean",
                ]
                .iter()
                .find_map(|c| match get(c) {
                    Some(Field::Double(d)) => Some(d.to_string()),
                    Some(Field::Long(l)) => Some(l.to_string()),
                    Some(Field::Str(s)) => Some(s),
                    Some(Field::Bool(b)) => Some(b.to_string()),
                    _ => None,
                })
                .unwrap_or_default();
                let measure = match get("measure_name") {
                    Some(Field::Str(m)) => m,
                    other => format!("{other:?}"),
                };
                rows.push((measure, value));
            }
        }
    }
    rows.sort();
    rows
}

#[tokio::test]
async fn telemetry_reaches_timestream_through_the_rule_the_queue_and_the_router() {
    let thing = unique_name("rule");
    let certificate = shoal_integration_tests::mqtt5::certificate().await;
    let device = Client::connect(&thing, &certificate).await;
    let topic = format!("dt/farm/{thing}/telemetry");
    // A time of this test's own (an hour back at most, a random millisecond).
    let now = now_ms() - i64::from(uuid::Uuid::new_v4().as_fields().1) * 50;
    let times = [(now - 1000).to_string(), now.to_string()];
    // The rule's SQL 2016-03-23 writes 22.0 as 22: its type must stay DOUBLE in the store.
    device
        .publish(&topic, json!({"ts": now - 1000, "temp": 21.5}).to_string())
        .await;
    device
        .publish(&topic, json!({"ts": now, "temp": 22.0}).to_string())
        .await;
    // The mapping's batching window is 5 s.
    let records = eventually(60, "both readings in Timestream", async || {
        let found = stored(&times);
        (found.len() >= 2).then_some(found)
    })
    .await;
    assert_eq!(
        records,
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
    // The same readings in the archive (Parquet, written in the same invocation).
    assert_eq!(
        archived(&thing).await,
        [
            ("temp".to_owned(), "21.5".to_owned()),
            ("temp".to_owned(), "22".to_owned())
        ]
    );
}

/// Two readings published to `deployment`'s core as `thing` reach Timestream and the archive.
async fn two_readings_land(deployment: &Deployment) {
    let thing = unique_name("mode");
    let certificate = shoal_integration_tests::mqtt5::certificate().await;
    let device = Client::connect_with(deployment.options(&thing, &certificate)).await;
    let now = now_ms() - i64::from(uuid::Uuid::new_v4().as_fields().1) * 50;
    let times = [(now - 1000).to_string(), now.to_string()];
    let topic = format!("dt/greenhouse/{thing}/telemetry");
    for (ts, temp) in [(now - 1000, 19.25), (now, 20.0)] {
        device
            .publish(&topic, json!({"ts": ts, "temp": temp}).to_string())
            .await;
    }
    let records = eventually(60, "both readings in Timestream", async || {
        let found = stored(&times);
        (found.len() >= 2).then_some(found)
    })
    .await;
    assert_eq!(
        records,
        [
            (
                times[0].clone(),
                json!([{"Name": "temp", "Value": "19.25", "Type": "DOUBLE"}])
            ),
            (
                times[1].clone(),
                json!([{"Name": "temp", "Value": "20.0", "Type": "DOUBLE"}])
            ),
        ],
        "logs: {}",
        deployment.dir.display()
    );
    assert_eq!(
        archived(&thing).await,
        [
            ("temp".to_owned(), "19.25".to_owned()),
            ("temp".to_owned(), "20".to_owned())
        ]
    );
}

#[tokio::test]
async fn with_kinesis_delivery_telemetry_goes_through_the_stream_and_its_mapping() {
    let stream = unique_name("shoal-test-telemetry");
    let kinesis = aws_sdk_kinesis::Client::new(local::factory().await.sdk_config());
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(1)
        .send()
        .await
        .expect("CreateStream");
    let deployment = Deployment::start(
        &[("TelemetryDelivery", "kinesis")],
        &[("TelemetryStream", &stream)],
    );
    two_readings_land(&deployment).await;
}

#[tokio::test]
async fn with_direct_delivery_the_rule_invokes_the_router_for_each_message() {
    let deployment = Deployment::start(&[("TelemetryDelivery", "direct")], &[]);
    two_readings_land(&deployment).await;
}

#[tokio::test]
async fn binary_telemetry_the_router_cannot_read_is_quarantined_with_its_reason() {
    let thing = unique_name("rule");
    let device =
        Client::connect(&thing, &shoal_integration_tests::mqtt5::certificate().await).await;
    // No packed schema is configured for th-v2 locally (PackedSchemas is empty by default).
    let packed = vec![0x01, 0x00, 0xff, 0x7f, 0x80];
    device
        .publish(&format!("dt/farm/{thing}/telemetry/th-v2"), packed.clone())
        .await;
    let s3 = local::factory().await.s3();
    let key = eventually(60, "the message in the quarantine", async || {
        let listed = s3
            .list_objects_v2()
            .bucket(ARCHIVE)
            .prefix("quarantine/")
            .send()
            .await
            .expect("ListObjectsV2");
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .find(|k| k.contains(&format!("/{thing}/")))
            .map(str::to_owned)
    })
    .await;
    let object = s3
        .get_object()
        .bucket(ARCHIVE)
        .key(&key)
        .send()
        .await
        .expect("GetObject");
    let metadata = object.metadata().cloned().unwrap_or_default();
    assert_eq!(
        metadata.get("reason-codes").map(String::as_str),
        Some("unknown_binary_schema"),
        "the reason rides along: {metadata:?}"
    );
    assert_eq!(
        metadata.get("refused-readings").map(String::as_str),
        Some("1")
    );
    let body = object.body.collect().await.unwrap().into_bytes();
    let envelope: Value = serde_json::from_slice(&body).expect("the quarantine record");
    assert_eq!(envelope["thing_name"], thing.as_str());
    assert_eq!(
        envelope["refused"][0]["reason"], "no packed schema for model \"th-v2\"",
        "{envelope}"
    );
    let message: Value = serde_json::from_str(envelope["message"].as_str().unwrap())
        .expect("the message as the rule delivered it");
    assert_eq!(
        message["_topic"],
        format!("dt/farm/{thing}/telemetry/th-v2")
    );
    assert_eq!(message["_client_id"], thing.as_str());
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(message["_payload"].as_str().unwrap())
            .unwrap(),
        packed,
        "the payload as the binary rule encodes it"
    );
}

#[tokio::test]
async fn lifecycle_events_reach_the_device_table_through_the_presence_function() {
    let factory = local::factory().await;
    let devices = DeviceTable::new(factory.dynamodb(), DEVICES.parse().unwrap());
    let thing = unique_name("presence");
    let (certificate_id, pem, key) = local::device_certificate(true).await;
    // As the provisioning hook records it: this certificate is the thing's.
    devices
        .record_certificate(&thing, &certificate_id, now_ms().unsigned_abs())
        .await
        .expect("the stack's device table");
    let device = Client::connect(&thing, &(pem.clone(), key.clone())).await;
    let online = eventually(30, "the device online in the device table", async || {
        let item = devices.get(&thing, DEVICE_RECORD).await.ok()??;
        (item["online"] == true).then_some(item)
    })
    .await;
    assert!(
        online["connected_at"].is_number() || online["connected_at"].is_string(),
        "{online}"
    );
    // A DISCONNECT (dropping the client alone leaves its connection to the keep-alive).
    device.client.disconnect().await.expect("DISCONNECT");
    eventually(30, "the device offline after its disconnect", async || {
        let item = devices.get(&thing, DEVICE_RECORD).await.ok()??;
        (item["online"] == false).then_some(())
    })
    .await;

    // A client id that is no provisioned device's: its events change nothing.
    let stranger = unique_name("presence");
    let other = Client::connect(&stranger, &(pem, key)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    other.client.disconnect().await.expect("DISCONNECT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(devices.get(&stranger, DEVICE_RECORD).await.unwrap(), None);
}

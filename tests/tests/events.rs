//! Every sample event in events/ goes through its function against the local stack, with the
//! outcome events/README.md documents.

use serde_json::Value;
use shoal_aws::config::TimestreamTarget;
use shoal_cli::resources::init_local;
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::repo_root;
use shoal_integration_tests::router::RealEdges;
use telemetry_router::batch::Trigger;
use telemetry_router::handler::{RouterConfig, handle};

/// The `_received_at` all sample events share.
const SAMPLE_RECEIVED_AT: i64 = 1_795_600_000_000;

/// Moves the sample's times so that `_received_at` is `now`, keeping every offset: in JSON
/// fields, inside SQS bodies (JSON text), Kinesis data (base64 JSON) and the timestamps of
/// packed `th-v2` records (16 bytes each, a big-endian u64 first).
fn shift_to(value: &mut Value, now: i64) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let shift = |t: i64| t - SAMPLE_RECEIVED_AT + now;
    match value {
        Value::Object(fields) => {
            let packed = fields
                .get("_topic")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("/th-v2"));
            for (key, v) in fields.iter_mut() {
                match (key.as_str(), &*v) {
                    ("_received_at" | "ts", Value::Number(n)) => {
                        *v = Value::from(shift(n.as_i64().unwrap()))
                    }
                    ("body", Value::String(text)) => {
                        if let Ok(mut inner) = serde_json::from_str::<Value>(text) {
                            shift_to(&mut inner, now);
                            *v = Value::from(inner.to_string());
                        }
                    }
                    ("data", Value::String(text)) => {
                        let mut inner: Value =
                            serde_json::from_slice(&b64.decode(text).unwrap()).unwrap();
                        shift_to(&mut inner, now);
                        *v = Value::from(b64.encode(inner.to_string()));
                    }
                    ("_payload", Value::String(text)) if packed => {
                        let mut bytes = b64.decode(text).unwrap();
                        for record in bytes.chunks_exact_mut(16) {
                            let t = i64::from_be_bytes(record[..8].try_into().unwrap());
                            record[..8].copy_from_slice(&shift(t).to_be_bytes());
                        }
                        *v = Value::from(b64.encode(bytes));
                    }
                    _ => shift_to(v, now),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| shift_to(v, now)),
        _ => {}
    }
}

#[test]
fn samples_are_shifted_everywhere_their_times_are() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let now = SAMPLE_RECEIVED_AT + 86_400_000;
    let packed = b64.encode([SAMPLE_RECEIVED_AT.to_be_bytes(), [0; 8]].concat());
    let kinesis_data = b64.encode(r#"{"ts":1795599999000}"#);
    let mut event = serde_json::json!({
        "_received_at": SAMPLE_RECEIVED_AT,
        "readings": [{"ts": SAMPLE_RECEIVED_AT - 1000}],
        "Records": [{"body": r#"{"_received_at":1795600000000}"#, "data": kinesis_data}],
        "_topic": "dt/a/d-1/telemetry/th-v2",
        "_payload": packed,
    });
    shift_to(&mut event, now);
    assert_eq!(event["_received_at"], now);
    assert_eq!(event["readings"][0]["ts"], now - 1000);
    let body: Value = serde_json::from_str(event["Records"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["_received_at"], now);
    let data: Value = serde_json::from_slice(
        &b64.decode(event["Records"][0]["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data["ts"], now - 1000);
    let payload = b64.decode(event["_payload"].as_str().unwrap()).unwrap();
    assert_eq!(i64::from_be_bytes(payload[..8].try_into().unwrap()), now);
}

fn expected(file: &str) -> Option<(usize, usize, Vec<&'static str>)> {
    Some(match file {
        "telemetry-router-json-single.json" => (1, 1, vec![]),
        "telemetry-router-json-batch.json" => (3, 3, vec![]),
        "telemetry-router-json-mixed-bad.json" => (
            5,
            1,
            vec![
                "bad_measure_name",
                "no_measures",
                "timestamp_in_future",
                "undecodable",
            ],
        ),
        "telemetry-router-bad-topic.json" => (1, 0, vec!["bad_envelope"]),
        "telemetry-router-binary-no-schema.json" => (1, 0, vec!["unknown_binary_schema"]),
        "telemetry-router-sqs-batch.json" => (4, 3, vec!["bad_envelope"]),
        "telemetry-router-binary-packed.json" => (2, 1, vec!["not_finite"]),
        "telemetry-router-binary-gzip-json.json" => (2, 2, vec![]),
        "telemetry-router-binary-gzip-members.json" => (4, 4, vec![]),
        "telemetry-router-binary-cbor.json" => (1, 1, vec![]),
        "telemetry-router-kinesis-batch.json" => (3, 3, vec![]),
        _ => return None,
    })
}

#[tokio::test]
async fn telemetry_router_sample_events_have_their_documented_outcome() {
    let factory = local::factory().await;
    let config = RouterConfig {
        timestream: TimestreamTarget {
            database: unique_name("events-db").parse().unwrap(),
            table: "telemetry".parse().unwrap(),
        },
        archive_bucket: unique_name("events-archive").parse().unwrap(),
        memory_retention_ms: 24 * 3_600_000,
        magnetic_retention_ms: None,
        packed_schemas: "th-v2=temp,hum".parse().unwrap(),
        measure_types: shoal_core::telemetry::MeasureTypes::empty(),
        delivery: None,
        // The template's default TelemetryApps.
        telemetry_apps: "farm,greenhouse".parse().unwrap(),
    };
    init_local(
        &factory,
        &config.timestream,
        &config.archive_bucket,
        &mut Vec::new(),
    )
    .await
    .unwrap();
    let real = RealEdges::new(&factory, &config).await;
    let edges = real.edges();

    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("telemetry-router-")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (received, accepted, reasons) =
            expected(&name).unwrap_or_else(|| panic!("{name}: no expected outcome in this test"));
        let mut event: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        shift_to(&mut event, now);
        // As Lambda delivers it: bytes.
        let bytes = serde_json::to_vec(&event).unwrap();
        let (counts, answer) = handle(
            Trigger::from_slice(&bytes, config.delivery).unwrap(),
            &config,
            &edges,
            &name,
            &telemetry_router::router::NoDeadline,
        )
        .await;
        let answer = answer.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(counts.received, received, "{name}");
        assert_eq!(counts.accepted, accepted, "{name}");
        assert_eq!(
            counts.quarantined.keys().copied().collect::<Vec<_>>(),
            reasons,
            "{name}"
        );
        assert!(counts.balanced(), "{name}: nothing lost: {counts:?}");
        if name.contains("-sqs-") || name.contains("-kinesis-") {
            assert_eq!(
                answer,
                serde_json::json!({"batchItemFailures": []}),
                "{name}"
            );
        } else {
            assert_eq!(answer, serde_json::to_value(&counts).unwrap(), "{name}");
        }
    }
}

#[tokio::test]
async fn pre_provisioning_hook_sample_events_get_their_documented_answer() {
    use provisioning::hook::{DEFAULT_CLAIM_LEASE, DEFAULT_DEADLINE, Gate, handle};
    use provisioning::registry::IotCertificates;
    use shoal_aws::manifest_table::ManifestTable;
    use shoal_core::provisioning::{HookRequest, TemplateModels};

    let factory = local::factory().await;
    let table = ManifestTable::new(
        factory.dynamodb(),
        unique_name("events-manifest").parse().unwrap(),
    );
    table.ensure_exists().await.unwrap();
    let csv = std::fs::read_to_string(repo_root().join("tests/fixtures/manifest.csv")).unwrap();
    shoal_cli::manifest::import(&table, &csv, |_| {})
        .await
        .unwrap();
    let models: TemplateModels = "shoal-fleet=th-v2".parse().unwrap();
    let certificates = IotCertificates::new(factory.iot());
    let devices = shoal_aws::device_table::DeviceTable::new(
        factory.dynamodb(),
        unique_name("events-devices").parse().unwrap(),
    );
    devices.ensure_exists().await.unwrap();
    let gate = Gate {
        manifest: &table,
        certificates: &certificates,
        devices: &devices,
        models: &models,
        claim_lease: DEFAULT_CLAIM_LEASE,
    };

    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("events")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(case) = name
            .strip_prefix("pre-provisioning-hook-")
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let request: HookRequest =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let answer = handle(&request, &gate, DEFAULT_DEADLINE).await;
        match case {
            "allowed" => {
                assert!(answer.allow_provisioning, "{name}");
                assert_eq!(answer.parameter_overrides["ThingName"], "SN-EVT-0001");
                assert_eq!(answer.parameter_overrides["ThingGroup"], "greenhouse");
                assert_eq!(answer.parameter_overrides["site"], "lyon");
            }
            "unknown-serial" | "no-serial" | "model-not-allowed" | "wrong-factory-secret" => {
                assert!(!answer.allow_provisioning, "{name}");
                assert!(answer.parameter_overrides.is_empty(), "{name}");
            }
            other => panic!("{name}: no expected answer for case {other}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 5);
}

fn sample(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join("events").join(name)).unwrap())
        .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

fn sample_names(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn shadow_documents_sample_events_have_their_documented_outcome() {
    use aws_smithy_types::Blob;
    use shadow_sync::documents::{SyncConfig, handle};
    use shadow_sync::edges::Registry;
    use shoal_aws::client::AwsResultExt;
    use shoal_aws::device_table::DeviceTable;
    use shoal_aws::shadow_store::IotShadowStore;
    use shoal_core::shadow::ShadowRef;
    use shoal_core::shadow::store::ShadowStore;

    assert_eq!(
        sample_names("shadow-documents-"),
        ["shadow-documents-classic.json", "shadow-documents-ota.json"]
    );
    let factory = local::factory().await;
    let table = DeviceTable::new(
        factory.dynamodb(),
        unique_name("events-devices").parse().unwrap(),
    );
    table.ensure_exists().await.unwrap();
    let registry = Registry(table.clone());
    let store = IotShadowStore::new(factory.iot_data());
    let config = SyncConfig::from_source(&std::collections::BTreeMap::from([(
        shoal_aws::config::vars::DEVICE_TABLE,
        table.name().as_str(),
    )]))
    .unwrap();
    let data = factory.iot_data();

    // classic: the thing's shadow reaches the message's versions with the same two updates.
    let thing = unique_name("sample");
    factory
        .iot()
        .create_thing()
        .thing_name(&thing)
        .send()
        .await
        .aws("iot", "CreateThing")
        .unwrap();
    let mut event = sample("shadow-documents-classic.json");
    for section in ["desired", "reported"] {
        let state = &event["current"]["state"][section];
        data.update_thing_shadow()
            .thing_name(&thing)
            .payload(Blob::new(
                serde_json::json!({"state": {section: state}}).to_string(),
            ))
            .send()
            .await
            .aws("iot-data", "UpdateThingShadow")
            .unwrap();
    }
    event["topic"] = Value::from(format!("$aws/things/{thing}/shadow/update/documents"));
    let summary = handle(event, &config, &store, &registry).await.unwrap();
    assert_eq!(summary.converged, ["sample_interval_s"], "{summary:?}");
    assert_eq!(summary.written_version, Some(3));
    assert_eq!(summary.facts, Some("recorded"));
    let at = ShadowRef {
        thing: thing.parse().unwrap(),
        name: None,
    };
    let shadow = store.get(&at).await.unwrap().unwrap();
    assert_eq!(
        Value::Object(shadow.state.desired.unwrap()),
        serde_json::json!({"mode": "eco"})
    );
    let item = table.get(&thing, "device").await.unwrap().unwrap();
    assert_eq!(item["firmware_version"], "1.4.0");
    assert_eq!(
        item["reported_config"],
        serde_json::json!({"units": "metric"})
    );

    // ota: handed over, desired left alone.
    let mut event = sample("shadow-documents-ota.json");
    event["topic"] = Value::from(format!(
        "$aws/things/{thing}/shadow/name/ota/update/documents"
    ));
    let summary = handle(event, &config, &store, &registry).await.unwrap();
    assert_eq!(summary.ota.as_deref(), Some("recorded"), "{summary:?}");
    assert_eq!(summary.written_version, None);
    let item = table.get(&thing, "device").await.unwrap().unwrap();
    assert_eq!(item["ota_status"], "failed");
    assert_eq!(item["ota_target_version"], "1.5.0");
    assert_eq!(item["ota_running_version"], "1.4.0");
    assert_eq!(item["ota_reason"], "boot check failed; rolled back");
    assert_eq!(item["ota_shadow_version"], 5);
}

#[tokio::test]
async fn presence_sample_events_have_their_documented_outcome() {
    use shadow_sync::edges::IotAlerts;
    use shadow_sync::presence::{PresenceAnswer, PresenceConfig, handle};
    use shoal_core::provisioning::HookRequest;

    assert_eq!(
        sample_names("presence-"),
        [
            "presence-connected-foreign-principal.json",
            "presence-connected.json",
            "presence-disconnected.json",
            "presence-offline-sweep.json"
        ]
    );
    let factory = local::factory().await;
    // SN-EVT-0001 provisioned as the hook sample provisions it, which records its certificate
    // (the samples' principal) in the device table.
    let csv = std::fs::read_to_string(repo_root().join("tests/fixtures/manifest.csv")).unwrap();
    let hook_sample: HookRequest =
        serde_json::from_value(sample("pre-provisioning-hook-allowed.json")).unwrap();
    let (registry, table) =
        shoal_integration_tests::provisioned::through_the_hook(&factory, &csv, &hook_sample).await;
    let alerts = IotAlerts(factory.iot_data());
    // The tables' names as the template sets them; the handler works on `registry`'s.
    let config = PresenceConfig::from_source(&std::collections::BTreeMap::from([
        (shoal_aws::config::vars::DEVICE_TABLE, "devices"),
        (shoal_aws::config::vars::MANIFEST_TABLE, "manifest"),
    ]))
    .unwrap();
    assert_eq!(config.offline_threshold_s, 3600);
    let disconnected_at = 1_795_600_900_000u64;
    let outcome = |answer: PresenceAnswer| serde_json::to_value(answer).unwrap();
    let now = disconnected_at;
    for (file, expected) in [
        ("presence-connected.json", "applied"),
        ("presence-connected-foreign-principal.json", "ignored"),
        ("presence-disconnected.json", "applied"),
        ("presence-disconnected.json", "stale"),
    ] {
        let answer = outcome(
            handle(sample(file), &config, &registry, &alerts, now)
                .await
                .unwrap(),
        );
        assert_eq!(answer["outcome"], expected, "{file}: {answer}");
        if expected == "ignored" {
            assert_eq!(answer["ignored_because"], "foreign_principal", "{answer}");
        }
    }
    let item = table.get("SN-EVT-0001", "device").await.unwrap().unwrap();
    assert_eq!(item["online"], false);
    assert_eq!(item["offline_since"], disconnected_at);
    assert_eq!(item["session_id"], "00000000-0000-0000-0000-000000000001");
    let sweep = sample("presence-offline-sweep.json");
    let answer = handle(
        sweep,
        &config,
        &registry,
        &alerts,
        disconnected_at + 3_601_000,
    )
    .await
    .unwrap();
    assert_eq!(
        outcome(answer),
        serde_json::json!({"offline_past_threshold": 1, "alerted": 1, "returned_meanwhile": 0, "failed": 0})
    );
    let item = table.get("SN-EVT-0001", "device").await.unwrap().unwrap();
    assert!(item["offline_alerted_at"].as_u64().is_some());
}

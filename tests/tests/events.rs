//! Every sample event in events/ goes through its function against the local stack, with the
//! outcome events/README.md documents.

use serde_json::Value;
use shoal_cli::resources::init_local;
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::repo_root;
use shoal_shared::config::TimestreamTarget;
use telemetry_router::edges::{S3Quarantine, TimestreamSink};
use telemetry_router::handler::{RouterConfig, handle};

/// The `_received_at` all sample events share.
const SAMPLE_RECEIVED_AT: i64 = 1_795_600_000_000;

/// Moves the sample's times so that `_received_at` is `now`, keeping every offset.
fn shift_to(value: &mut Value, now: i64) {
    match value {
        Value::Object(fields) => {
            for (key, v) in fields.iter_mut() {
                match (key.as_str(), v.as_i64()) {
                    ("_received_at" | "ts", Some(t)) => {
                        *v = Value::from(t - SAMPLE_RECEIVED_AT + now)
                    }
                    _ => shift_to(v, now),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| shift_to(v, now)),
        _ => {}
    }
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
    };
    init_local(
        &factory,
        &config.timestream,
        &config.archive_bucket,
        &mut Vec::new(),
    )
    .await
    .unwrap();
    let ts = factory.timestream_write().await.unwrap();
    let sink = TimestreamSink::new(ts, config.timestream.clone());
    let quarantine = S3Quarantine::new(factory.s3(), config.archive_bucket.clone());

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
    assert!(files.len() >= 7, "{files:?}");
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
        let (counts, answer) = handle(event, &config, &sink, &quarantine).await;
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

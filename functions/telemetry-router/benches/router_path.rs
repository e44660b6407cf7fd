//! The router's whole path without I/O, on one core: an SQS event of 100 messages × 10 readings
//! (as Lambda hands it over, bytes) → event read into its SQS type → bodies read flat (straight
//! into readings; no key twice) → envelopes →
//! readings → validated records → the SDK's WriteRecords inputs (`edges::to_sdk`, 10 calls) and
//! the Parquet archive object. Then the refusal path: one message with 250 and with 2,000 refused
//! readings → its one quarantine object's body.
//!
//! `cargo bench -p telemetry-router --features test-util --bench router_path` (release profile, as
//! the Lambda zip).
//! Prints medians; no assertions: BENCHMARKS.md records the numbers.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_core::telemetry::archive::to_parquet;
use shoal_core::telemetry::records::APP_DIMENSION;
use shoal_core::telemetry::{
    CheckedJson, Context, Envelope, Limits, MeasureTypes, PackedSchemas, Payload, decode_flat,
    validate_with_dimensions,
};
use telemetry_router::batch::{Trigger, route_sqs};
use telemetry_router::edges::to_sdk;
use telemetry_router::memory::{BodyQuarantine, SdkSink, SizeArchive};
use telemetry_router::router::{Edges, NoDeadline, Rules, route_rule_event};

const NOW: i64 = 1_795_600_000_000;
const MESSAGES: usize = 100;
const PER_MESSAGE: usize = 10;
const RUNS: usize = 101;

/// The three edges, fresh for each run.
#[derive(Default)]
struct Fixture {
    sink: SdkSink,
    quarantine: BodyQuarantine,
    archive: SizeArchive,
}

impl Fixture {
    fn edges(&self) -> Edges<'_, SdkSink, BodyQuarantine, SizeArchive> {
        Edges {
            sink: &self.sink,
            quarantine: &self.quarantine,
            archive: &self.archive,
        }
    }
}

fn sqs_event() -> Vec<u8> {
    let records: Vec<Value> = (0..MESSAGES)
        .map(|m| {
            let readings: Vec<Value> = (0..PER_MESSAGE)
                .map(|i| {
                    json!({
                        "ts": NOW - (m * PER_MESSAGE + i) as i64 * 100,
                        "temp": 20.0 + (i % 100) as f64 / 10.0,
                        "hum": 40 + (i % 20) as i64,
                        "door_open": i % 2 == 0,
                    })
                })
                .collect();
            let body = json!({
                "readings": readings,
                "_topic": format!("dt/bench/dev-{}/telemetry", m % 10),
                "_received_at": NOW,
                "_client_id": format!("dev-{}", m % 10),
            });
            json!({
                "messageId": format!("m{m}"),
                "receiptHandle": "rh",
                "body": body.to_string(),
                "attributes": {"SentTimestamp": NOW.to_string()},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:shoal-telemetry",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "Records": records })).unwrap()
}

fn median(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let schemas = PackedSchemas::empty();
    let types = MeasureTypes::empty();
    let rules = Rules {
        limits: Limits {
            now_ms: NOW,
            memory_retention_ms: 24 * 3_600_000,
            magnetic_retention_ms: Some(365 * 86_400_000),
        },
        schemas: &schemas,
        types: &types,
        apps: &shoal_core::telemetry::TelemetryApps::ANY,
        deadline: &NoDeadline,
    };

    // 1. The full path of an SQS batch.
    let bytes = sqs_event();
    let readings = MESSAGES * PER_MESSAGE;
    let run = || {
        let fixture = Fixture::default();
        let (sink, archive, edges) = (&fixture.sink, &fixture.archive, fixture.edges());
        let Trigger::Sqs(event) = Trigger::from_slice(black_box(&bytes), None).unwrap() else {
            panic!("an SQS event")
        };
        let (counts, _) = rt.block_on(route_sqs(event, &rules, &edges, "bench"));
        assert_eq!(counts.accepted, readings);
        assert_eq!(sink.records.load(Ordering::Relaxed), readings);
        archive.bytes.load(Ordering::Relaxed)
    };
    let parquet_bytes = run();
    let warm = if std::env::var_os("ROUTER_PATH_ONLY").is_some() {
        1
    } else {
        RUNS
    };
    let times: Vec<Duration> = (0..warm)
        .map(|_| {
            let start = Instant::now();
            black_box(run());
            start.elapsed()
        })
        .collect();
    let (mid, min, max) = median(times);
    println!(
        "router_path/sqs: {MESSAGES} messages x {PER_MESSAGE} readings ({} KiB event, {} KiB Parquet) \
         median {:.2} ms (min {:.2}, max {:.2}) over {warm} runs = {:.0} readings/s",
        bytes.len() / 1024,
        parquet_bytes / 1024,
        ms(mid),
        ms(min),
        ms(max),
        readings as f64 / mid.as_secs_f64()
    );

    if let Some(only) = std::env::var_os("ROUTER_PATH_ONLY") {
        // For a profiler: the whole path alone, ROUTER_PATH_ONLY times (a number; else 1,010).
        let runs = only
            .to_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(RUNS * 10);
        for _ in 0..runs {
            black_box(run());
        }
        return;
    }

    // Where the time goes: the event read alone, and decode + validate without the edges' work.
    let parse: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(Trigger::from_slice(black_box(&bytes), None).unwrap());
            start.elapsed()
        })
        .collect();
    println!(
        "router_path/sqs_event_read_only: median {:.2} ms",
        ms(median(parse).0)
    );

    // The stages one by one, on the same batch: bodies → envelopes → readings → records; the
    // SDK requests; the Parquet object.
    let Trigger::Sqs(event) = Trigger::from_slice(&bytes, None).unwrap() else {
        panic!("an SQS event")
    };
    let bodies: Vec<String> = event.records.into_iter().map(|r| r.body.unwrap()).collect();
    let decode_all = || {
        let mut records = Vec::with_capacity(readings);
        for body in &bodies {
            let envelope = Envelope::from_bytes(body.as_bytes()).unwrap();
            let app = envelope.app().to_owned();
            let thing = envelope.thing.clone();
            let ctx = Context {
                thing: &thing,
                received_at_ms: envelope.received_at_ms,
                types: &types,
            };
            // The common shape: read flat, as the router does.
            let Payload::Flat(readings) = envelope.payload else {
                panic!("a flat message")
            };
            for reading in decode_flat(&ctx, readings).unwrap() {
                records.push(
                    validate_with_dimensions(
                        reading.unwrap(),
                        &rules.limits,
                        &[(APP_DIMENSION, &app)],
                    )
                    .unwrap(),
                );
            }
        }
        records
    };
    let stage = |label: &str, f: &dyn Fn()| {
        let times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        println!(
            "router_path/stage_{label}: median {:.2} ms",
            ms(median(times).0)
        );
    };
    stage("bodies_to_envelopes", &|| {
        for body in &bodies {
            black_box(Envelope::from_bytes(body.as_bytes()).unwrap());
        }
    });
    stage("bodies_to_records", &|| {
        black_box(decode_all());
    });
    let records = decode_all();
    stage("sdk_requests", &|| {
        for chunk in records.chunks(100) {
            black_box(to_sdk(chunk).unwrap());
        }
    });
    stage("reading_ids", &|| {
        for r in &records {
            black_box(shoal_core::telemetry::archive::reading_id(
                &r.dimensions[0].1,
                &r.dimensions[1].1,
                r.time_ms,
            ));
        }
    });
    stage("parquet", &|| {
        black_box(to_parquet(&records).unwrap());
    });

    // 2. The refusal path: one message whose readings are all refused (stamped a day ahead).
    let mut refusal = Vec::new();
    for n in [250usize, 2000] {
        let values = vec![json!(1.5); n];
        let event = json!({
            "ts": NOW + 86_400_000, "interval": 1, "measure": "t", "values": values,
            "_topic": "dt/bench/dev-1/telemetry", "_received_at": NOW,
        });
        let times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let fixture = Fixture::default();
                let (quarantine, edges) = (&fixture.quarantine, fixture.edges());
                let event = CheckedJson::from(event.clone());
                let start = Instant::now();
                let counts = rt
                    .block_on(route_rule_event(event, &rules, &edges, "bench"))
                    .unwrap();
                let elapsed = start.elapsed();
                assert_eq!(counts.quarantined_total(), n);
                black_box(quarantine.bytes.load(Ordering::Relaxed));
                elapsed
            })
            .collect();
        let (mid, _, _) = median(times);
        println!(
            "router_path/refused_{n}: one message, {n} refused readings, one quarantine object: median {:.3} ms",
            ms(mid)
        );
        refusal.push(mid);
    }
    println!(
        "router_path/refusal_scaling: 8x the refused readings cost {:.1}x the time",
        refusal[1].as_secs_f64() / refusal[0].as_secs_f64()
    );
}

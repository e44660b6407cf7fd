//! Decode → validate → record-build throughput for one 10,000-reading message, on one core.
//!
//! `cargo bench -p shoal-core --bench telemetry_pipeline` (release profile: the same code
//! generation the Lambda zip gets). Prints the median of 30 runs and readings/s; no assertions:
//! BENCHMARKS.md records the numbers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_core::ids::ThingName;
use shoal_core::telemetry::records::APP_DIMENSION;
use shoal_core::telemetry::{
    CheckedJson, Context, Envelope, Limits, MeasureTypes, PackedSchemas, Payload, decode_binary,
    decode_json, validate_with_dimensions,
};

const READINGS: usize = 10_000;
const RUNS: usize = 30;
const NOW: i64 = 1_795_600_000_000;

fn message() -> Vec<u8> {
    let readings: Vec<Value> = (0..READINGS)
        .map(|i| {
            json!({
                "ts": NOW - i as i64 * 10,
                "temp": 20.0 + (i % 100) as f64 / 10.0,
                "hum": 40 + (i % 20) as i64,
                "door_open": i % 2 == 0,
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "readings": readings,
        "_topic": "dt/bench/dev-1/telemetry",
        "_received_at": NOW,
    }))
    .unwrap()
}

/// One full pass, as the router does it for a direct rule event (a batch's bodies take the flat
/// reader, measured by the router's `router_path` bench): bytes → event → envelope → readings → validated records
/// (dimensioned by thing and app). Returns the number of records built.
fn pipeline(bytes: &[u8], limits: &Limits) -> usize {
    let event = CheckedJson::from_slice(bytes).unwrap();
    let envelope = Envelope::from_checked(event).unwrap();
    let app = envelope.app().to_owned();
    let dimensions = [(APP_DIMENSION, app.as_str())];
    let types = MeasureTypes::empty();
    let ctx = Context {
        thing: &envelope.thing,
        received_at_ms: envelope.received_at_ms,
        types: &types,
    };
    let Payload::Json(fields) = envelope.payload else {
        unreachable!()
    };
    decode_json(&ctx, fields)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.ok())
        .filter_map(|r| validate_with_dimensions(r, limits, &dimensions).ok())
        .count()
}

/// 10,000 packed `th-v2` records (u64 ms + two f32, big-endian): 160 KB.
fn packed_message() -> Vec<u8> {
    let mut out = Vec::with_capacity(READINGS * 16);
    for i in 0..READINGS {
        out.extend_from_slice(&((NOW - i as i64 * 10) as u64).to_be_bytes());
        out.extend_from_slice(&(20.0 + (i % 100) as f32 / 10.0).to_be_bytes());
        out.extend_from_slice(&(40.0 + (i % 20) as f32).to_be_bytes());
    }
    out
}

/// Packed bytes → readings → validated records (the base64 step of the envelope excluded).
fn packed_pipeline(
    bytes: &[u8],
    schemas: &PackedSchemas,
    thing: &ThingName,
    limits: &Limits,
) -> usize {
    let types = MeasureTypes::empty();
    let ctx = Context {
        thing,
        received_at_ms: NOW,
        types: &types,
    };
    decode_binary(&ctx, Some("th-v2"), bytes, schemas)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.ok())
        .filter_map(|r| validate_with_dimensions(r, limits, &[(APP_DIMENSION, "bench")]).ok())
        .count()
}

/// Runs `f` RUNS times and prints the median, min, max and readings/s.
fn measure(label: &str, bytes: &[u8], f: impl Fn() -> usize) {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "telemetry_pipeline/{label}: {READINGS} readings ({} KiB) median {:.2} ms over {RUNS} runs \
         (min {:.2} ms, max {:.2} ms) = {:.0} readings/s",
        bytes.len() / 1024,
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3,
        READINGS as f64 / median.as_secs_f64()
    );
}

fn main() {
    let bytes = message();
    let limits = Limits {
        now_ms: NOW,
        memory_retention_ms: 24 * 3_600_000,
        magnetic_retention_ms: None,
    };
    assert_eq!(
        pipeline(&bytes, &limits),
        READINGS,
        "every reading is valid"
    );
    measure("json", &bytes, || pipeline(black_box(&bytes), &limits));
    let packed = packed_message();
    let schemas: PackedSchemas = "th-v2=temp,hum".parse().unwrap();
    let thing = ThingName::parse("dev-1").unwrap();
    assert_eq!(
        packed_pipeline(&packed, &schemas, &thing, &limits),
        READINGS
    );
    measure("packed", &packed, || {
        packed_pipeline(black_box(&packed), &schemas, &thing, &limits)
    });
    // The JSON parse alone (bytes -> serde_json::Value): the floor for this design.
    measure("json_parse_only", &bytes, || {
        serde_json::from_slice::<Value>(black_box(&bytes))
            .map(|v| v["readings"].as_array().map_or(0, Vec::len))
            .unwrap()
    });
}

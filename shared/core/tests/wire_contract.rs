//! The device↔cloud contract, tried from both sides: any telemetry message a device builds with
//! `shoal_wire::telemetry` (and that its `check` passes) is read by the cloud's decoder into
//! exactly the readings the device meant — every reading, at its time, with every measure
//! flattened and typed — whichever reader (flat or general) takes it — and validation stores
//! every one (record size included).

use proptest::prelude::*;
use serde_json::Value;
use shoal_core::telemetry::decode::{Context, decode_flat, decode_json};
use shoal_core::telemetry::envelope::{Envelope, Payload};
use shoal_core::telemetry::reading::MeasureValue;
use shoal_core::telemetry::records::APP_DIMENSION;
use shoal_core::telemetry::schema::MeasureTypes;
use shoal_core::telemetry::validate::{Limits, validate_with_dimensions};
use shoal_wire::telemetry::{Aggregate, Measure, Message, Reading, Series};
use shoal_wire::topics::TelemetryTopic;

const RECEIVED_AT: i64 = 1_795_600_000_000;
const DAY_MS: i64 = 86_400_000;

fn topic() -> impl Strategy<Value = (String, String)> {
    ("[a-zA-Z0-9:_-]{1,128}", "[a-z0-9-]{1,40}")
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9_]{0,7}",
        1 => "[A-Za-z][A-Za-z0-9_]{0,63}",
    ]
}

fn aggregate() -> impl Strategy<Value = Aggregate> {
    (1..1000u64, -1e6..1e6f64, 0.0..1e3f64, any::<[bool; 4]>()).prop_map(
        |(count, mid, spread, [mean, min, max, std])| Aggregate {
            count,
            mean: mean.then_some(mid),
            min: min.then_some(mid - spread),
            max: max.then_some(mid + spread),
            std: std.then_some(spread / 2.0),
        },
    )
}

fn measure() -> impl Strategy<Value = Measure> {
    let leaf = prop_oneof![
        (-1e12..1e12f64).prop_map(Measure::Number),
        (-(1i64 << 53)..(1i64 << 53)).prop_map(Measure::Integer),
        any::<bool>().prop_map(Measure::Bool),
        "[ -~]{1,12}".prop_map(Measure::Text),
        "\\PC{1,400}".prop_map(Measure::Text),
        aggregate().prop_map(Measure::Aggregate),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        proptest::collection::vec((name(), inner), 1..4).prop_map(Measure::Group)
    })
}

fn measures() -> impl Strategy<Value = Vec<(String, Measure)>> {
    prop_oneof![
        4 => proptest::collection::vec((name(), measure()), 1..6),
        1 => proptest::collection::vec((name(), measure()), 20..80),
    ]
}

/// Times the cloud keeps: within the last 30 days (a series' last value stays in the past).
fn ts() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of((RECEIVED_AT - 30 * DAY_MS) as u64..(RECEIVED_AT - 5 * DAY_MS) as u64)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (ts(), measures()).prop_map(|(ts, measures)| Message::Reading(Reading { ts, measures })),
        proptest::collection::vec(
            (ts(), measures()).prop_map(|(ts, measures)| Reading { ts, measures }),
            1..4
        )
        .prop_map(Message::Batch),
        (
            ts(),
            prop_oneof![Just(0.001), Just(1.5), Just(60.0), 0.001..86_400.0f64],
            proptest::collection::vec(measures(), 1..4)
        )
            .prop_map(|(ts, interval_s, values)| Message::Series(Series {
                ts,
                interval_s,
                values
            })),
    ]
}

/// What the cloud should store for `measures`: flattened names, each typed (numbers DOUBLE by
/// default), sorted by name.
fn expected_measures(
    prefix: &str,
    measures: &[(String, Measure)],
    out: &mut Vec<(String, MeasureValue)>,
) {
    for (name, measure) in measures {
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}_{name}")
        };
        match measure {
            Measure::Number(v) => out.push((full, MeasureValue::Double(*v))),
            Measure::Integer(v) => out.push((full, MeasureValue::Double(*v as f64))),
            Measure::Bool(v) => out.push((full, MeasureValue::Boolean(*v))),
            Measure::Text(v) => out.push((full, MeasureValue::Varchar(v.clone()))),
            Measure::Aggregate(a) => {
                out.push((
                    format!("{full}_count"),
                    MeasureValue::Double(a.count as f64),
                ));
                for (key, value) in [
                    ("mean", a.mean),
                    ("min", a.min),
                    ("max", a.max),
                    ("std", a.std),
                ] {
                    if let Some(value) = value {
                        out.push((format!("{full}_{key}"), MeasureValue::Double(value)));
                    }
                }
            }
            Measure::Group(children) => expected_measures(&full, children, out),
        }
    }
}

/// Each reading the device meant: its time and sorted measures.
fn expected(message: &Message) -> Vec<(i64, Vec<(String, MeasureValue)>)> {
    let sorted = |measures: &[(String, Measure)]| {
        let mut out = Vec::new();
        expected_measures("", measures, &mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let at = |ts: Option<u64>| ts.map_or(RECEIVED_AT, |ts| ts as i64);
    match message {
        Message::Reading(r) => vec![(at(r.ts), sorted(&r.measures))],
        Message::Batch(readings) => readings
            .iter()
            .map(|r| (at(r.ts), sorted(&r.measures)))
            .collect(),
        Message::Series(s) => {
            let offset = |i: usize| (i as f64 * s.interval_s * 1000.0).round() as i64;
            let first =
                s.ts.map_or(RECEIVED_AT - offset(s.values.len() - 1), |ts| ts as i64);
            s.values
                .iter()
                .enumerate()
                .map(|(i, v)| (first + offset(i), sorted(v)))
                .collect()
        }
    }
}

/// The cloud's side: the rule's output for `json` on `topic` (its keys spliced into the text, as
/// the rule's `*, topic() AS _topic, timestamp() AS _received_at` does), read and validated as
/// the router does. Every reading must be stored.
fn cloud_reads(json: &str, topic: &TelemetryTopic<'_>) -> Vec<(i64, Vec<(String, MeasureValue)>)> {
    let body = json.strip_suffix('}').expect("a JSON object");
    let comma = if body.len() > 1 { "," } else { "" };
    let event = format!(
        "{body}{comma}\"_topic\":{},\"_received_at\":{RECEIVED_AT}}}",
        Value::from(topic.to_string())
    );
    let envelope = Envelope::from_bytes(event.as_bytes()).unwrap();
    assert_eq!(envelope.duplicate_key, None, "{json}");
    let types = MeasureTypes::empty();
    let ctx = Context {
        thing: &envelope.thing,
        received_at_ms: envelope.received_at_ms,
        types: &types,
    };
    let decoded = match envelope.payload {
        Payload::Json(fields) => decode_json(&ctx, fields),
        Payload::Flat(readings) => decode_flat(&ctx, readings),
        Payload::Binary(_) => panic!("a JSON topic's message read as binary"),
    }
    .unwrap_or_else(|e| panic!("refused whole: {e}\n{json}"));
    decoded
        .into_iter()
        .map(|r| {
            let r = r.unwrap_or_else(|e| panic!("a reading refused: {e}\n{json}"));
            let limits = Limits {
                now_ms: RECEIVED_AT,
                memory_retention_ms: DAY_MS,
                magnetic_retention_ms: Some(365 * DAY_MS),
            };
            let stored =
                validate_with_dimensions(r.clone(), &limits, &[(APP_DIMENSION, topic.app)])
                    .unwrap_or_else(|e| panic!("a reading not stored: {e}\n{json}"));
            assert_eq!(stored.measures.len(), r.measures.len());
            let mut measures: Vec<_> = r.measures.into_iter().map(|(n, v)| (n.0, v)).collect();
            measures.sort_by(|a, b| a.0.cmp(&b.0));
            (r.time_ms, measures)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn what_a_device_builds_the_cloud_reads_exactly(message in message(), (thing, app) in topic()) {
        let topic = TelemetryTopic { app: &app, thing: &thing, model: None };
        prop_assume!(message.check(&topic).is_ok());
        let json = message.to_json(&topic).unwrap();
        prop_assert_eq!(cloud_reads(&json, &topic), expected(&message), "{}", json);
    }
}

#[test]
fn the_documented_example_is_read_as_meant() {
    let message = Message::Reading(Reading {
        ts: Some(1_795_600_000_000),
        measures: vec![
            ("temp".into(), Measure::Number(22.0)),
            ("hum".into(), Measure::Integer(40)),
            (
                "env".into(),
                Measure::Group(vec![(
                    "co2".into(),
                    Measure::Aggregate(Aggregate {
                        count: 60,
                        mean: Some(410.5),
                        min: Some(400.0),
                        max: Some(420.0),
                        std: Some(3.0),
                    }),
                )]),
            ),
        ],
    });
    let topic = TelemetryTopic::parse("dt/farm/dev-1/telemetry").unwrap();
    let read = cloud_reads(&message.to_json(&topic).unwrap(), &topic);
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, 1_795_600_000_000);
    let names: Vec<&str> = read[0].1.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "env_co2_count",
            "env_co2_max",
            "env_co2_mean",
            "env_co2_min",
            "env_co2_std",
            "hum",
            "temp"
        ]
    );
    assert_eq!(read[0].1[6].1, MeasureValue::Double(22.0));
}

//! The common JSON messages read straight into readings.
//!
//! Most telemetry arrives in two shapes: one reading (`{"ts": …, "temp": 21.5, …}`) or a batch
//! (`{"readings": [{…}, …]}`), with scalar measures, plus the rule's `_topic`, `_received_at` and
//! `_client_id`. Reading those into [`serde_json::Value`] maps first (a tree node and a key per
//! measure, then taken apart again) was half of the router's decoding time. This reader takes
//! the message's bytes directly into [`FlatReading`]s and gives up — returns `None`, and the
//! caller reads the message as before ([`super::json::CheckedJson`]) — on anything else: a key
//! given twice; a nested object or array as a value; a top-level `values` or `interval` (perhaps
//! an interval series); a reading that holds only an edge aggregate's keys; a `ts` that is not
//! a time; `readings` that is empty, not an array of objects, holds more than
//! [`MAX_READINGS_PER_MESSAGE`] readings or has keys other than the metadata beside it; a
//! missing `_topic` or `_received_at`, or one of the wrong type (a `_client_id` that is not a
//! string is no client id, on both paths); or text that is not one JSON document. So every
//! refusal keeps the general reader's exact reason, and the property test below checks that
//! whatever this reader takes decodes to exactly what the general reader makes of it.
//!
//! Written here because serde's derive cannot express "these keys, else every other key is a
//! measure, in name order, refusing a key given twice" without a map per reading.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::decode::{FlatReading, MAX_READINGS_PER_MESSAGE, is_aggregate, timestamp};
use super::envelope::{CLIENT_ID_KEY, RECEIVED_AT_KEY, TOPIC_KEY};

/// A message the flat reader took: the rule's metadata and the readings.
#[derive(Debug)]
pub(crate) struct FlatMessage {
    pub topic: String,
    pub received_at_ms: i64,
    pub client_id: Option<String>,
    pub readings: Vec<FlatReading>,
}

/// Reads `bytes` as a flat message, or `None` when the general reader must (see the module). The
/// topic is not checked here: [`super::envelope::Envelope::from_bytes`] leaves binary topics and
/// topics without a valid thing name to the general reader.
pub(crate) fn read(bytes: &[u8]) -> Option<FlatMessage> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let message = MessageSeed.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(message)
}

/// Gives up on the message: the general reader takes it.
fn give_up<T, E: de::Error>() -> Result<T, E> {
    Err(E::custom("not a flat message"))
}

/// A top-level key.
enum TopKey {
    Topic,
    ReceivedAt,
    ClientId,
    Readings,
    Ts,
    /// `values` or `interval`: perhaps an interval series.
    Series,
    Measure(String),
}

struct TopKeySeed;

impl<'de> DeserializeSeed<'de> for TopKeySeed {
    type Value = TopKey;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<TopKey, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for TopKeySeed {
    type Value = TopKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<TopKey, E> {
        Ok(match key {
            TOPIC_KEY => TopKey::Topic,
            RECEIVED_AT_KEY => TopKey::ReceivedAt,
            CLIENT_ID_KEY => TopKey::ClientId,
            "readings" => TopKey::Readings,
            "ts" => TopKey::Ts,
            "values" | "interval" => TopKey::Series,
            _ => TopKey::Measure(key.to_owned()),
        })
    }
}

/// A key inside a reading: `ts` or a measure's name.
struct ReadingKeySeed;

impl<'de> DeserializeSeed<'de> for ReadingKeySeed {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for ReadingKeySeed {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok((key != "ts").then(|| key.to_owned()))
    }
}

/// A scalar, as `serde_json::Value` would hold it (the same numbers); an object or array gives
/// up before any of it is read.
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        super::json::scalar(deserializer)
    }
}

/// A reading being read (an element of `readings`, or a single-reading message's top level):
/// its measures so far and whether `ts` was given.
#[derive(Default)]
struct Collected {
    ts_seen: bool,
    reading: FlatReading,
}

impl Collected {
    fn ts<E: de::Error>(&mut self, value: &Value) -> Result<(), E> {
        if std::mem::replace(&mut self.ts_seen, true) {
            return give_up();
        }
        // A bad `ts` is refused by the general reader, with its reason.
        self.reading.ts = Some(timestamp(value).or_else(|_| give_up())?);
        Ok(())
    }

    /// The reading, its measures in name order (as a map iterates them); a name given twice or
    /// an aggregate's keys alone give up.
    fn finish<E: de::Error>(self) -> Result<FlatReading, E> {
        let mut reading = self.reading;
        reading.measures.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if reading.measures.windows(2).any(|w| w[0].0 == w[1].0) {
            return give_up();
        }
        if is_aggregate(reading.measures.iter().map(|(name, _)| name.as_str())) {
            return give_up();
        }
        Ok(reading)
    }
}

struct MessageSeed;

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = FlatMessage;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<FlatMessage, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed {
    type Value = FlatMessage;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a telemetry message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FlatMessage, A::Error> {
        let mut topic = None;
        let mut received_at_ms = None;
        let mut client_id = None;
        let mut readings = None;
        let mut single = Collected::default();
        while let Some(key) = map.next_key_seed(TopKeySeed)? {
            match key {
                TopKey::Topic => match map.next_value_seed(ScalarSeed)? {
                    Value::String(t) if topic.is_none() => topic = Some(t),
                    _ => return give_up(),
                },
                TopKey::ReceivedAt => match map.next_value_seed(ScalarSeed)?.as_i64() {
                    Some(ms) if received_at_ms.is_none() => received_at_ms = Some(ms),
                    _ => return give_up(),
                },
                TopKey::ClientId => {
                    let value = map.next_value_seed(ScalarSeed)?;
                    if client_id.is_some() {
                        return give_up();
                    }
                    client_id = Some(match value {
                        Value::String(c) => Some(c),
                        _ => None,
                    });
                }
                TopKey::Readings if readings.is_none() => {
                    readings = Some(map.next_value_seed(ReadingsSeed)?);
                }
                TopKey::Ts => single.ts(&map.next_value_seed(ScalarSeed)?)?,
                TopKey::Measure(name) => {
                    let value = map.next_value_seed(ScalarSeed)?;
                    single.reading.measures.push((name, value));
                }
                TopKey::Readings | TopKey::Series => return give_up(),
            }
        }
        let (Some(topic), Some(received_at_ms)) = (topic, received_at_ms) else {
            return give_up();
        };
        let readings = match readings {
            // A batch holds nothing beside `readings`.
            Some(_) if single.ts_seen || !single.reading.measures.is_empty() => return give_up(),
            Some(readings) => readings,
            None => vec![single.finish()?],
        };
        Ok(FlatMessage {
            topic,
            received_at_ms,
            client_id: client_id.flatten(),
            readings,
        })
    }
}

/// `readings`: a non-empty array of flat readings, at most [`MAX_READINGS_PER_MESSAGE`].
struct ReadingsSeed;

impl<'de> DeserializeSeed<'de> for ReadingsSeed {
    type Value = Vec<FlatReading>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ReadingsSeed {
    type Value = Vec<FlatReading>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("readings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut readings = Vec::new();
        while let Some(reading) = seq.next_element_seed(ReadingSeed)? {
            if readings.len() == MAX_READINGS_PER_MESSAGE {
                return give_up();
            }
            readings.push(reading);
        }
        if readings.is_empty() {
            return give_up();
        }
        Ok(readings)
    }
}

struct ReadingSeed;

impl<'de> DeserializeSeed<'de> for ReadingSeed {
    type Value = FlatReading;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<FlatReading, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReadingSeed {
    type Value = FlatReading;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FlatReading, A::Error> {
        let mut reading = Collected::default();
        reading.reading.measures.reserve(4);
        while let Some(key) = map.next_key_seed(ReadingKeySeed)? {
            let value = map.next_value_seed(ScalarSeed)?;
            match key {
                None => reading.ts(&value)?,
                Some(name) => reading.reading.measures.push((name, value)),
            }
        }
        reading.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::decode::{Context, decode_flat, decode_json, readings_in};
    use crate::telemetry::envelope::{Envelope, Payload};
    use crate::telemetry::json::CheckedJson;
    use crate::telemetry::schema::MeasureTypes;
    use proptest::prelude::*;
    use serde_json::json;

    /// What the general reader makes of `bytes`: the envelope's metadata, the readings the
    /// payload's shape says it holds, and the decoded readings (or the whole payload's refusal).
    fn general(bytes: &[u8], types: &MeasureTypes) -> Option<(Envelope, usize, String)> {
        let checked = CheckedJson::from_slice(bytes).ok()?;
        let mut envelope = Envelope::from_checked(checked).ok()?;
        let Payload::Json(fields) =
            std::mem::replace(&mut envelope.payload, Payload::Binary(vec![]))
        else {
            return None;
        };
        let held = readings_in(&fields);
        let ctx = Context {
            thing: &envelope.thing,
            received_at_ms: envelope.received_at_ms,
            types,
        };
        let decoded = format!("{:?}", decode_json(&ctx, fields));
        Some((envelope, held, decoded))
    }

    /// The same through the flat reader, when it takes the message.
    fn flat(bytes: &[u8], types: &MeasureTypes) -> Option<(Envelope, usize, String)> {
        let mut envelope = Envelope::from_bytes(bytes).ok()?;
        let Payload::Flat(readings) =
            std::mem::replace(&mut envelope.payload, Payload::Binary(vec![]))
        else {
            return None;
        };
        let held = readings.len();
        let ctx = Context {
            thing: &envelope.thing,
            received_at_ms: envelope.received_at_ms,
            types,
        };
        let decoded = format!("{:?}", decode_flat(&ctx, readings));
        Some((envelope, held, decoded))
    }

    fn types() -> MeasureTypes {
        "bigint=n;varchar=fw".parse().unwrap()
    }

    #[test]
    fn the_common_shapes_are_read_flat_and_decode_as_the_general_reader_does() {
        let batch = json!({
            "readings": [
                {"ts": 1_795_600_000_000_i64, "temp": 21.5, "hum": 40, "door_open": true},
                {"temp": 22.0, "ts": 1_795_600_000_100.0, "fw": "1.2.0", "n": 7},
                {"n": 7.5, "bad name": 1, "nothing": null},
            ],
            "_topic": "dt/farm/dev-1/telemetry",
            "_received_at": 1_795_600_000_500_i64,
            "_client_id": "dev-1",
        });
        let single = json!({
            "_topic": "dt/farm/dev-1/telemetry", "_received_at": 5, "temp": 1.5, "ok": false,
            "_payload": "x", "measure": "m", "readings_count": 3,
        });
        for message in [batch, single] {
            let bytes = serde_json::to_vec(&message).unwrap();
            let taken = flat(&bytes, &types()).expect("read flat");
            assert_eq!(Some(taken), general(&bytes, &types()));
        }
        // The batch's readings, as the router will store them: sorted names, the receive time
        // for a reading without `ts`, types from the names, refusals per reading.
        let bytes = br#"{"readings":[{"ts":1000,"t":1,"a":true},{"t":2.5}],"_topic":"dt/a/d-1/telemetry","_received_at":9}"#;
        let (_, held, decoded) = flat(bytes, &types()).unwrap();
        assert_eq!(held, 2);
        assert!(decoded.starts_with("Ok([Ok(Reading { thing: ThingName(\"d-1\"), time_ms: 1000, measures: [(MeasureName(\"a\"), Boolean(true)), (MeasureName(\"t\"), Double(1.0))]"), "{decoded}");
        assert!(
            decoded.contains("time_ms: 9, measures: [(MeasureName(\"t\"), Double(2.5))]"),
            "{decoded}"
        );
    }

    #[test]
    fn everything_else_is_left_to_the_general_reader() {
        let topic = r#""_topic":"dt/a/d-1/telemetry","_received_at":9"#;
        for payload in [
            r#""t":1,"t":2"#,
            r#""readings":[{"t":1,"t":2}]"#,
            r#""readings":[{"ts":1,"ts":2,"t":1}]"#,
            r#""readings":[{"env":{"co2":1}}]"#,
            r#""readings":[[1]]"#,
            r#""readings":[]"#,
            r#""readings":[{"t":1}],"t":2"#,
            r#""readings":[{"t":1}],"ts":2"#,
            r#""ts":1,"interval":1,"values":[1],"measure":"t""#,
            r#""interval":1,"t":1"#,
            r#""t":{"count":60,"mean":21.3}"#,
            r#""count":60,"mean":21.3"#,
            r#""ts":"yesterday","t":1"#,
            r#""t":[1,2]"#,
            r#""_topic":"dt/a/d-2/telemetry","t":1"#,
        ] {
            let text = format!("{{{topic},{payload}}}");
            assert!(read(text.as_bytes()).is_none(), "{text}");
        }
        for text in [
            r#"{"_topic":"dt/a/d-1/telemetry","t":1}"#,
            r#"{"_received_at":9,"t":1}"#,
            r#"{"_topic":"dt/a/d-1/telemetry","_received_at":9.5,"t":1}"#,
            r#"{"_topic":7,"_received_at":9,"t":1}"#,
            r#"{"_topic":"dt/a/d-1/telemetry","_received_at":9,"t":1} {}"#,
            r#"[1]"#,
        ] {
            assert!(read(text.as_bytes()).is_none(), "{text}");
        }
        let many = format!(
            r#"{{{topic},"readings":[{}]}}"#,
            vec![r#"{"t":1}"#; MAX_READINGS_PER_MESSAGE + 1].join(",")
        );
        assert!(read(many.as_bytes()).is_none());
        // A binary topic's message is bytes, however flat it looks.
        let binary = br#"{"_topic":"dt/a/d-1/telemetry/th-v2","_received_at":9,"_payload":"AA=="}"#;
        let envelope = Envelope::from_bytes(binary).unwrap();
        assert_eq!(envelope.payload, Payload::Binary(vec![0]));
    }

    /// A JSON scalar, or now and then something that is not one.
    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => any::<i64>().prop_map(Value::from),
            2 => any::<u64>().prop_map(Value::from),
            4 => (-1e6f64..1e6).prop_map(Value::from),
            1 => (-1000i64..1000).prop_map(|n| json!(n as f64)),
            2 => any::<bool>().prop_map(Value::from),
            2 => "[a-z0-9. ]{0,6}".prop_map(Value::from),
            1 => Just(Value::Null),
            // Now and then a value only the general reader takes.
            1 => prop_oneof![
                (0i64..3).prop_map(|n| json!({"count": n, "mean": 1.0})),
                Just(json!([1, 2])),
                Just(json!({"a": {"b": 1}})),
            ],
        ]
    }

    /// Keys a reading or message may hold: measures, the shape's keys and the rule's.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-z]{1,3}",
            1 => prop::sample::select(vec![
                "ts", "n", "fw", "count", "mean", "min", "max", "std", "values", "interval",
                "measure", "readings", "_payload", "_x", "Temp", "temp_c", "t\\u0065",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// A key's JSON text, where a `\u` written in the key stays an escape (`t\u0065` is the
    /// key `te`).
    fn key_text(key: &str) -> String {
        serde_json::to_string(key).unwrap().replace("\\\\u", "\\u")
    }

    /// An object's text from its entries (keys may repeat, as a device's text may).
    fn object(entries: &[(String, String)]) -> String {
        let fields: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}:{v}", key_text(k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    fn entries(n: usize) -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((key(), value().prop_map(|v| v.to_string())), 0..n)
    }

    /// Message texts: metadata (sometimes missing, mistyped or twice) around a single reading or
    /// a batch of readings.
    fn message() -> impl Strategy<Value = String> {
        let timestamp = prop_oneof![
            3 => Just("1795600000000".to_owned()),
            1 => Just("1795600000000.0".to_owned()),
            1 => Just("\"now\"".to_owned()),
            3 => (0i64..2000).prop_map(|n| n.to_string()),
        ];
        let reading: BoxedStrategy<String> = (entries(6), prop::option::weighted(0.7, timestamp))
            .prop_map(|(mut fields, ts)| {
                if let Some(ts) = ts {
                    fields.insert(0, ("ts".to_owned(), ts));
                }
                object(&fields)
            })
            .boxed();
        let topic = prop_oneof![
            6 => Just("\"dt/farm/dev-1/telemetry\""),
            1 => prop::sample::select(vec![
                "\"dt/farm/dev-2/telemetry/th-v2\"",
                "\"dt/farm/bad thing/telemetry\"",
                "\"st/farm/dev-1/telemetry\"",
                "7",
            ]),
        ];
        let received = prop_oneof![
            6 => Just("1795600000500"),
            1 => prop::sample::select(vec![
                "9.5", "\"x\"", "-0", "1e2", "-5", "18446744073709551615", "9223372036854775808",
            ]),
        ];
        let meta = (
            prop::option::weighted(0.95, topic),
            prop::option::weighted(0.95, received),
            prop::option::of(prop_oneof![Just("\"dev-1\""), Just("null"), Just("3")]),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.25),
        );
        (
            meta,
            prop_oneof![
                reading.clone().prop_map(Err).boxed(),
                prop::collection::vec(reading, 0..4).prop_map(Ok),
            ],
            prop::option::weighted(0.2, entries(2)),
        )
            .prop_map(
                |((topic, received, client, twice, escaped), shape, extra)| {
                    let mut fields: Vec<(String, String)> = Vec::new();
                    let mut meta = vec![];
                    if let Some(t) = topic {
                        // Now and then with its key spelled with an escape.
                        let key = if escaped { "\\u005ftopic" } else { "_topic" };
                        meta.push((key.to_owned(), t.to_owned()));
                    }
                    if let Some(r) = received {
                        meta.push(("_received_at".to_owned(), r.to_owned()));
                    }
                    if let Some(c) = client {
                        meta.push(("_client_id".to_owned(), c.to_owned()));
                    }
                    if twice && let Some(first) = meta.first().cloned() {
                        meta.push(first);
                    }
                    let body = match shape {
                        // One reading: its fields at the top, metadata among them.
                        Err(reading) => reading[1..reading.len() - 1].to_owned(),
                        Ok(readings) => format!("\"readings\":[{}]", readings.join(",")),
                    };
                    fields.extend(extra.unwrap_or_default());
                    let mut parts: Vec<String> = meta
                        .iter()
                        .chain(&fields)
                        .map(|(k, v)| format!("{}:{v}", key_text(k)))
                        .collect();
                    if !body.is_empty() {
                        parts.insert(parts.len() / 2, body);
                    }
                    format!("{{{}}}", parts.join(","))
                },
            )
    }

    /// Whatever the flat reader takes decodes as the general reader does; and it takes a fair
    /// share of the generated messages, so the comparison is not empty.
    #[test]
    fn the_flat_reader_decodes_as_the_general_reader() {
        let taken = std::cell::Cell::new(0usize);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(2000));
        let outcome = runner.run(&message(), |text| {
            let bytes = text.as_bytes();
            if let Some(flat) = flat(bytes, &types()) {
                taken.set(taken.get() + 1);
                prop_assert_eq!(Some(flat), general(bytes, &types()), "{}", text);
            }
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{e}");
        }
        assert!(
            taken.get() >= 300,
            "only {} of 2,000 read flat",
            taken.get()
        );
    }
}

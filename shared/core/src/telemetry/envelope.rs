//! What the IoT rule hands the router for one MQTT message.
//!
//! Topic convention: `dt/<app>/<thing>/telemetry` (`dt` = data telemetry, AWS's guidance for
//! telemetry topics: a fixed prefix, the application, the thing name, then the message type).
//! The rule adds metadata under `_`-prefixed keys so they cannot collide with measure names
//! (which must start with a letter):
//!
//! ```sql
//! -- JSON payloads
//! SELECT *, topic() AS _topic, timestamp() AS _received_at, clientid() AS _client_id
//!   FROM 'dt/+/+/telemetry'
//! -- binary payloads (CBOR, packed records, compressed)
//! SELECT encode(*, 'base64') AS _payload, topic() AS _topic, timestamp() AS _received_at,
//!        clientid() AS _client_id FROM 'dt/+/+/telemetry/bin'
//! ```

use serde_json::{Map, Value};
use thiserror::Error;

use super::decode::FlatReading;
use super::json::{CheckedJson, MAX_CONTAINERS};
use crate::ids::ThingName;
use shoal_wire::topics::{TelemetryTopic, TopicError};

/// Event key holding the MQTT topic the message was published on (the rule's `topic()`).
pub const TOPIC_KEY: &str = "_topic";
/// Event key holding when the rules engine received the message (the rule's `timestamp()`, ms
/// since the Unix epoch).
pub const RECEIVED_AT_KEY: &str = "_received_at";
/// Event key holding the publishing MQTT client's id (the rule's `clientid()`); may be absent.
pub const CLIENT_ID_KEY: &str = "_client_id";
/// Event key holding a binary message's bytes, base64-encoded (the rule's
/// `encode(*, 'base64')`); read only on binary topics.
pub const PAYLOAD_KEY: &str = "_payload";

/// The payload as the device sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// The rule selected `*` from a JSON message: the object itself, metadata removed.
    Json(Map<String, Value>),
    /// The rule selected `encode(*, 'base64')`: the decoded bytes.
    Binary(Vec<u8>),
    /// A JSON message of the common shapes (one reading, or `readings`, of scalar measures; no
    /// key twice), read straight into its readings by the flat reader (`telemetry::flat`): it
    /// decodes ([`super::decode::decode_flat`]) exactly as `Json` would.
    Flat(Vec<FlatReading>),
}

/// One message with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The full MQTT topic, `dt/<app>/<thing>/telemetry[/<model>]`.
    pub topic: String,
    /// The thing name read from the topic's third level.
    pub thing: ThingName,
    /// When the rules engine received the message, in ms since the Unix epoch.
    pub received_at_ms: i64,
    /// The MQTT client id that published it; `None` when the event carried none (or not a string).
    pub client_id: Option<String>,
    /// The device's payload, metadata keys removed.
    pub payload: Payload,
    /// The first object key the message held twice (a dot path), if any: such a message is
    /// refused, since which value the device meant is unknowable.
    pub duplicate_key: Option<String>,
}

/// Why a rule event could not be read into an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// The bytes are not JSON; holds the parser's message.
    #[error("message is not JSON: {0}")]
    NotJson(String),
    /// The event is JSON but not an object.
    #[error("event is not a JSON object")]
    NotAnObject,
    /// A key the rule SQL must add is absent or of the wrong type; holds the key.
    #[error("event has no {0} (is the rule SQL the documented one?)")]
    MissingField(&'static str),
    /// The topic is not `dt/<app>/<thing>/telemetry[/<model>]`; holds the topic.
    #[error("topic {0:?} does not follow dt/<app>/<thing>/telemetry")]
    BadTopic(String),
    /// The topic's thing level is not a valid thing name; holds why.
    #[error("thing name in topic: {0}")]
    BadThing(String),
    /// A binary message's `_payload` is not standard base64.
    #[error("{PAYLOAD_KEY} is not valid base64: {0}")]
    BadBase64(base64::DecodeError),
    /// A binary message has a key besides `_payload`; holds the first such key.
    #[error(
        "a binary message (dt/<app>/<thing>/telemetry/<model>) holds only {PAYLOAD_KEY}; it also has {0:?}"
    )]
    BesideBinary(String),
    /// The message nests more objects and arrays than [`MAX_CONTAINERS`]; holds its count.
    #[error("message holds {0} objects and arrays; at most {MAX_CONTAINERS} are read")]
    TooManyContainers(usize),
}

/// Whether `topic` is a binary one, `dt/<app>/<thing>/telemetry/<model>`: the rule delivers its
/// bytes as `_payload`; on `dt/<app>/<thing>/telemetry` every key is the device's own.
pub fn is_binary_topic(topic: &str) -> bool {
    topic.split('/').nth(4).is_some()
}

/// The thing name from `dt/<app>/<thing>/telemetry[/<format>]` (read by
/// [`shoal_wire::topics::TelemetryTopic`]).
///
/// # Errors
/// [`EnvelopeError::BadThing`] when the thing level is not a thing name,
/// [`EnvelopeError::BadTopic`] when the topic is not a telemetry topic.
pub fn thing_from_topic(topic: &str) -> Result<ThingName, EnvelopeError> {
    match TelemetryTopic::parse(topic) {
        Ok(parsed) => {
            ThingName::parse(parsed.thing).map_err(|e| EnvelopeError::BadThing(e.to_string()))
        }
        Err(TopicError::Name(e)) => Err(EnvelopeError::BadThing(e.to_string())),
        Err(_) => Err(EnvelopeError::BadTopic(topic.to_owned())),
    }
}

impl Envelope {
    /// The `<app>` level of `dt/<app>/<thing>/telemetry`.
    pub fn app(&self) -> &str {
        self.topic.split('/').nth(1).unwrap_or_default()
    }

    /// The topic level after `telemetry`, if any: the device model that selects a packed schema.
    pub fn topic_model(&self) -> Option<&str> {
        self.topic.split('/').nth(4).filter(|m| !m.is_empty())
    }

    /// Reads a message as the rule's SQS or Kinesis action delivers it: the rule's JSON output as
    /// bytes.
    ///
    /// # Errors
    /// [`EnvelopeError`] naming what is missing or malformed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        // The common shapes straight into readings; anything else, and every refusal, through
        // the general reader.
        if let Some(message) = super::flat::read(bytes)
            && !is_binary_topic(&message.topic)
            && let Ok(thing) = thing_from_topic(&message.topic)
        {
            return Ok(Self {
                topic: message.topic,
                thing,
                received_at_ms: message.received_at_ms,
                client_id: message.client_id,
                payload: Payload::Flat(message.readings),
                duplicate_key: None,
            });
        }
        let event =
            CheckedJson::from_slice(bytes).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        Self::from_checked(event)
    }

    /// Reads a rule event parsed with its duplicate keys noticed.
    ///
    /// # Errors
    /// [`EnvelopeError`] naming what is missing or malformed.
    pub fn from_checked(event: CheckedJson) -> Result<Self, EnvelopeError> {
        if event.containers > MAX_CONTAINERS {
            return Err(EnvelopeError::TooManyContainers(event.containers));
        }
        let mut envelope = Self::from_rule_event(event.value)?;
        envelope.duplicate_key = event.duplicate_key;
        Ok(envelope)
    }

    /// Reads a direct IoT rule event.
    ///
    /// # Errors
    /// [`EnvelopeError`] naming what is missing or malformed.
    pub fn from_rule_event(event: Value) -> Result<Self, EnvelopeError> {
        let Value::Object(mut fields) = event else {
            return Err(EnvelopeError::NotAnObject);
        };
        let topic = match fields.remove(TOPIC_KEY) {
            Some(Value::String(t)) => t,
            _ => return Err(EnvelopeError::MissingField(TOPIC_KEY)),
        };
        let received_at_ms = fields
            .remove(RECEIVED_AT_KEY)
            .and_then(|v| v.as_i64())
            .ok_or(EnvelopeError::MissingField(RECEIVED_AT_KEY))?;
        let client_id = match fields.remove(CLIENT_ID_KEY) {
            Some(Value::String(c)) => Some(c),
            _ => None,
        };
        let thing = thing_from_topic(&topic)?;
        // The topic says which rule delivered it: `dt/+/+/telemetry/+` selects the bytes as
        // `_payload` and nothing else; on `dt/+/+/telemetry` every key is the device's own (a
        // device key named `_payload` there is a measure name, refused as such, never bytes).
        let payload = if is_binary_topic(&topic) {
            let encoded = match fields.remove(PAYLOAD_KEY) {
                Some(Value::String(encoded)) => encoded,
                _ => return Err(EnvelopeError::MissingField(PAYLOAD_KEY)),
            };
            if let Some(extra) = fields.keys().next() {
                return Err(EnvelopeError::BesideBinary(extra.clone()));
            }
            Payload::Binary(base64_decode(&encoded).map_err(EnvelopeError::BadBase64)?)
        } else {
            Payload::Json(fields)
        };
        Ok(Self {
            topic,
            thing,
            received_at_ms,
            client_id,
            payload,
            duplicate_key: None,
        })
    }
}

/// The closed set of `<app>` levels a stack accepts (`SHOAL_TELEMETRY_APPS`, template parameter
/// `TelemetryApps`): each becomes a value of Timestream's `app` dimension, so devices must not be
/// able to invent new ones: the router refuses any other (`unknown_app`).
/// [`TelemetryApps::ANY`] (unset) accepts every app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryApps(Option<std::collections::BTreeSet<String>>);

impl TelemetryApps {
    /// Every app accepted (no closed set configured).
    pub const ANY: TelemetryApps = TelemetryApps(None);

    /// Whether `app` is in the set.
    pub fn allows(&self, app: &str) -> bool {
        self.0.as_ref().is_none_or(|apps| apps.contains(app))
    }
}

impl std::str::FromStr for TelemetryApps {
    type Err = String;

    /// `app,app,…`: each one MQTT topic level of `[A-Za-z0-9_-]` (no wildcard, no `/`).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut apps = std::collections::BTreeSet::new();
        for app in text.split(',').map(str::trim) {
            if app.is_empty()
                || !app
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            {
                return Err(format!(
                    "app {app:?} must be 1 or more of letters, digits, '_' and '-'"
                ));
            }
            apps.insert(app.to_owned());
        }
        Ok(Self(Some(apps)))
    }
}

/// Standard base64 (RFC 4648, with padding), as the rules engine's `encode(*, 'base64')` writes it.
///
/// # Errors
/// base64's [`DecodeError`](base64::DecodeError) naming the offending byte or length.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn telemetry_apps_are_a_closed_set_of_topic_levels() {
        let apps: TelemetryApps = "farm, greenhouse".parse().unwrap();
        assert!(apps.allows("farm") && apps.allows("greenhouse"));
        assert!(!apps.allows("Farm") && !apps.allows("farm/dev-2") && !apps.allows(""));
        assert!(TelemetryApps::ANY.allows("anything"));
        for bad in ["", "farm,", "a/b", "+", "#", "farm,gr een"] {
            assert!(bad.parse::<TelemetryApps>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_event_keeps_device_fields_and_strips_metadata() {
        let env = Envelope::from_rule_event(json!({
            "ts": 1764064800000_i64, "temp": 21.5,
            "_topic": "dt/greenhouse/dev-1/telemetry",
            "_received_at": 1764064800123_i64,
            "_client_id": "dev-1"
        }))
        .unwrap();
        assert_eq!(env.thing.as_str(), "dev-1");
        assert_eq!(env.app(), "greenhouse");
        assert_eq!(env.received_at_ms, 1764064800123);
        assert_eq!(env.client_id.as_deref(), Some("dev-1"));
        let Payload::Json(fields) = env.payload else {
            panic!("json")
        };
        assert_eq!(fields.len(), 2);
        assert_eq!(fields["temp"], 21.5);
    }

    #[test]
    fn binary_event_is_base64_decoded() {
        let env = Envelope::from_rule_event(json!({
            "_payload": "AAECAw==",
            "_topic": "dt/greenhouse/dev-1/telemetry/bin",
            "_received_at": 1
        }))
        .unwrap();
        assert_eq!(env.payload, Payload::Binary(vec![0, 1, 2, 3]));
        assert_eq!(env.topic_model(), Some("bin"));
        assert_eq!(env.client_id, None);
    }

    #[test]
    fn the_topic_decides_between_json_and_binary() {
        // On the JSON topic a `_payload` key is the device's own field, never bytes.
        let env = Envelope::from_rule_event(json!({
            "temp": 21.5, "_payload": "eyJ0ZW1wIjo5OX0=",
            "_topic": "dt/farm/dev-1/telemetry", "_received_at": 1
        }))
        .unwrap();
        let Payload::Json(fields) = env.payload else {
            panic!("json")
        };
        assert_eq!(fields.len(), 2);
        // On the binary topic nothing may stand beside the bytes.
        assert_eq!(
            Envelope::from_rule_event(json!({
                "temp": 21.5, "_payload": "AAEC",
                "_topic": "dt/farm/dev-1/telemetry/th-v2", "_received_at": 1
            })),
            Err(EnvelopeError::BesideBinary("temp".into()))
        );
        assert_eq!(
            Envelope::from_rule_event(json!({
                "temp": 21.5, "_topic": "dt/farm/dev-1/telemetry/th-v2", "_received_at": 1
            })),
            Err(EnvelopeError::MissingField("_payload"))
        );
    }

    #[test]
    fn bad_events_say_what_is_wrong() {
        assert_eq!(
            Envelope::from_rule_event(json!([1])),
            Err(EnvelopeError::NotAnObject)
        );
        assert_eq!(
            Envelope::from_rule_event(json!({"_received_at": 1})),
            Err(EnvelopeError::MissingField("_topic"))
        );
        assert_eq!(
            Envelope::from_rule_event(json!({"_topic": "dt/a/b/telemetry"})),
            Err(EnvelopeError::MissingField("_received_at"))
        );
        assert!(matches!(
            Envelope::from_rule_event(
                json!({"_topic": "dt/a/b/telemetry/m", "_received_at": 1, "_payload": "!!"})
            ),
            Err(EnvelopeError::BadBase64(_))
        ));
    }

    #[test]
    fn bytes_that_are_not_json_are_refused() {
        assert!(matches!(
            Envelope::from_bytes(b"\x00\x01 not json"),
            Err(EnvelopeError::NotJson(_))
        ));
        let env =
            Envelope::from_bytes(br#"{"t":1,"_topic":"dt/a/d-1/telemetry","_received_at":5}"#)
                .unwrap();
        assert_eq!(env.received_at_ms, 5);
    }

    #[test]
    fn a_key_given_twice_is_kept_for_the_router_to_refuse() {
        let env = Envelope::from_bytes(
            br#"{"temp":21.5,"temp":22.0,"_topic":"dt/a/d-1/telemetry","_received_at":5}"#,
        )
        .unwrap();
        assert_eq!(env.duplicate_key.as_deref(), Some("temp"));
        assert_eq!(env.thing.as_str(), "d-1");
    }

    #[test]
    fn topics() {
        assert_eq!(
            thing_from_topic("dt/app/t-1/telemetry").unwrap().as_str(),
            "t-1"
        );
        assert_eq!(
            thing_from_topic("dt/app/t-1/telemetry/bin")
                .unwrap()
                .as_str(),
            "t-1"
        );
        for bad in [
            "dt/app/t-1",
            "cmd/app/t-1/telemetry",
            "dt//t-1/telemetry",
            "dt/app/t-1/telemetry/a/b",
            "",
        ] {
            assert!(
                matches!(thing_from_topic(bad), Err(EnvelopeError::BadTopic(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            thing_from_topic("dt/app/t 1/telemetry"),
            Err(EnvelopeError::BadThing(_))
        ));
    }
}

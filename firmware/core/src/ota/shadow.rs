//! The `ota` named shadow as a device reads it: the cloud's request is the shadow's whole
//! `desired` state (`{rollout, version, url, url_expires_ms, sha256, signature, size}`, written
//! by the rollout advancer), the device's report its `reported` state ([`OtaReport`]).
//!
//! A `delta` carries only the desired fields that differ from what is reported — `version` is in
//! both, so a delta may lack it — so the device never acts on a delta: it reads the whole shadow
//! (`get`) on connect and after each delta, and takes the request from `get/accepted`. An answer
//! older than one already read (AWS promises no order) is ignored by the shadow's version.
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-mqtt.html>)

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value, json};
use shoal_wire::ota::{OtaDesired, OtaReport};
use shoal_wire::topics::{ShadowOperation, ShadowResponse, ShadowTopic};

use crate::shadow::Publish;

/// The named shadow's name.
pub const OTA_SHADOW: &str = "ota";

/// What an `ota` shadow message means for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtaNews {
    /// The cloud's request as it stands now: `None` when there is none (no shadow, or the
    /// request was withdrawn). Hand it to [`Ota::request`](super::Ota::request).
    Request(Option<OtaDesired>),
    /// The desired state is not a request the device can read: why (report it `failed`).
    Unreadable(String),
    /// Publish this (a `get` after a delta).
    Publish(Publish),
    /// Nothing to do (another thing's or shadow's topic, a stale or duplicate answer).
    Ignored,
}

/// The device's side of its `ota` named shadow.
#[derive(Debug, Clone)]
pub struct OtaShadow {
    thing: String,
    version: Option<u64>,
    tokens: u64,
}

impl OtaShadow {
    /// The `ota` shadow of `thing`.
    pub fn new(thing: &str) -> Self {
        Self {
            thing: thing.to_string(),
            version: None,
            tokens: 0,
        }
    }

    fn topic(&self, operation: ShadowOperation, response: Option<ShadowResponse>) -> String {
        ShadowTopic {
            thing: &self.thing,
            name: Some(OTA_SHADOW),
            operation,
            response,
        }
        .to_string()
    }

    /// The topics to subscribe to before [`get`](Self::get).
    pub fn subscriptions(&self) -> Vec<String> {
        [
            (ShadowOperation::Get, ShadowResponse::Accepted),
            (ShadowOperation::Get, ShadowResponse::Rejected),
            (ShadowOperation::Update, ShadowResponse::Delta),
        ]
        .into_iter()
        .map(|(operation, response)| self.topic(operation, Some(response)))
        .collect()
    }

    /// A `get` of the whole shadow (on connect).
    pub fn get(&mut self) -> Publish {
        self.tokens += 1;
        Publish {
            topic: self.topic(ShadowOperation::Get, None),
            payload: json!({"clientToken": format!("{}-ota-{}", self.thing, self.tokens)})
                .to_string()
                .into_bytes(),
        }
    }

    /// The update reporting `report`: every field of a report is written, absent ones as `null`
    /// (deleted), so a `reason` or `version` of an earlier report never lingers.
    pub fn report(&mut self, report: &OtaReport) -> Publish {
        self.tokens += 1;
        let mut reported = Map::new();
        reported.insert(
            "status".into(),
            serde_json::to_value(report.status).unwrap_or(Value::Null),
        );
        for (key, value) in [
            ("version", &report.target_version),
            ("running_version", &report.running_version),
            ("reason", &report.reason),
        ] {
            reported.insert(key.into(), value.clone().map_or(Value::Null, Value::from));
        }
        Publish {
            topic: self.topic(ShadowOperation::Update, None),
            payload: json!({
                "state": {"reported": reported},
                "clientToken": format!("{}-ota-{}", self.thing, self.tokens),
            })
            .to_string()
            .into_bytes(),
        }
    }

    /// Reads a message of one of [`subscriptions`](Self::subscriptions).
    pub fn handle(&mut self, topic: &str, payload: &[u8]) -> OtaNews {
        let Ok(parsed) = ShadowTopic::parse(topic) else {
            return OtaNews::Ignored;
        };
        if parsed.thing != self.thing || parsed.name != Some(OTA_SHADOW) {
            return OtaNews::Ignored;
        }
        let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(payload) else {
            return OtaNews::Ignored;
        };
        match (parsed.operation, parsed.response) {
            (ShadowOperation::Update, Some(ShadowResponse::Delta)) => OtaNews::Publish(self.get()),
            (ShadowOperation::Get, Some(ShadowResponse::Rejected)) => {
                if document.get("code").and_then(Value::as_u64) == Some(404) {
                    OtaNews::Request(None)
                } else {
                    OtaNews::Ignored
                }
            }
            (ShadowOperation::Get, Some(ShadowResponse::Accepted)) => {
                let version = document.get("version").and_then(Value::as_u64);
                if let (Some(seen), Some(version)) = (self.version, version)
                    && version < seen
                {
                    return OtaNews::Ignored;
                }
                if version.is_some() {
                    self.version = version;
                }
                let desired = document
                    .get("state")
                    .and_then(|s| s.get("desired"))
                    .and_then(Value::as_object)
                    .filter(|d| !d.is_empty());
                match desired {
                    None => OtaNews::Request(None),
                    Some(desired) => {
                        match serde_json::from_value::<OtaDesired>(Value::Object(desired.clone())) {
                            Ok(request) => OtaNews::Request(Some(request)),
                            Err(e) => OtaNews::Unreadable(format!(
                                "the ota shadow's desired state is not an OTA request: {e}"
                            )),
                        }
                    }
                }
            }
            _ => OtaNews::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_wire::ota::OtaStatus;

    fn desired(version: &str) -> Value {
        json!({"rollout": "r-1", "version": version, "url": "https://x/y", "url_expires_ms": 9,
               "sha256": "ab".repeat(32), "signature": "c2ln", "size": 3})
    }

    #[test]
    fn the_request_is_read_from_the_whole_shadow_never_from_a_delta() {
        let mut ota = OtaShadow::new("t-1");
        let delta = ota.handle(
            "$aws/things/t-1/shadow/name/ota/update/delta",
            json!({"version": 3, "state": {"url": "https://x/z"}})
                .to_string()
                .as_bytes(),
        );
        let OtaNews::Publish(get) = delta else {
            panic!("{delta:?}")
        };
        assert_eq!(get.topic, "$aws/things/t-1/shadow/name/ota/get");
        let accepted = json!({"version": 3, "state": {"desired": desired("1.2.0"),
                              "reported": {"status": "downloading"}}});
        let news = ota.handle(
            "$aws/things/t-1/shadow/name/ota/get/accepted",
            accepted.to_string().as_bytes(),
        );
        let OtaNews::Request(Some(request)) = news else {
            panic!("{news:?}")
        };
        assert_eq!(request.version.to_string(), "1.2.0");
        // An older answer arriving late is ignored; a withdrawn request reads as none.
        let older = json!({"version": 2, "state": {"desired": desired("1.1.0")}});
        assert_eq!(
            ota.handle(
                "$aws/things/t-1/shadow/name/ota/get/accepted",
                older.to_string().as_bytes()
            ),
            OtaNews::Ignored
        );
        let withdrawn = json!({"version": 4, "state": {"reported": {"status": "success"}}});
        assert_eq!(
            ota.handle(
                "$aws/things/t-1/shadow/name/ota/get/accepted",
                withdrawn.to_string().as_bytes()
            ),
            OtaNews::Request(None)
        );
        // Another thing's shadow, or the classic one, is not this.
        assert_eq!(
            ota.handle(
                "$aws/things/t-2/shadow/name/ota/update/delta",
                b"{\"version\":9}"
            ),
            OtaNews::Ignored
        );
        assert_eq!(
            ota.handle("$aws/things/t-1/shadow/update/delta", b"{\"version\":9}"),
            OtaNews::Ignored
        );
        let bad = json!({"version": 5, "state": {"desired": {"version": "x"}}});
        assert!(matches!(
            ota.handle(
                "$aws/things/t-1/shadow/name/ota/get/accepted",
                bad.to_string().as_bytes()
            ),
            OtaNews::Unreadable(_)
        ));
    }

    #[test]
    fn a_report_deletes_the_fields_it_does_not_carry() {
        let mut ota = OtaShadow::new("t-1");
        let publish = ota.report(&OtaReport {
            status: OtaStatus::Success,
            target_version: Some("1.2.0".into()),
            running_version: Some("1.2.0".into()),
            reason: None,
        });
        assert_eq!(publish.topic, "$aws/things/t-1/shadow/name/ota/update");
        let body: Value = serde_json::from_slice(&publish.payload).unwrap();
        assert_eq!(
            body["state"]["reported"],
            json!({"status": "success", "version": "1.2.0", "running_version": "1.2.0",
                   "reason": null})
        );
        // What the cloud reads back (nulls deleted) is the same report.
        let mut stored = body["state"]["reported"].as_object().unwrap().clone();
        stored.retain(|_, v| !v.is_null());
        let read = OtaReport::from_reported(&Value::Object(stored)).unwrap();
        assert_eq!(read.status, OtaStatus::Success);
        assert_eq!(read.reason, None);
    }
}

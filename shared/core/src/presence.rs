//! Presence from AWS IoT lifecycle events (`$aws/events/presence/connected|disconnected/<clientId>`).
//!
//! AWS documents that these events can arrive out of order and more than once, that their
//! timestamps are approximate, and that `versionNumber` — one number per connection of a client
//! id, increasing with each new connection, shared by that connection's `connected` and
//! `disconnected` — is how a subscriber orders them; it is reset to 0 once a client has been
//! disconnected for about an hour
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/life-cycle-events.html>). So an event
//! [`supersedes`] the recorded one when it is more than [`REORDER_WINDOW_MS`] newer (a reset
//! version may be lower), never when it is that much older, and within the window by its
//! [`order`](LifecycleEvent::order): connection (`versionNumber`), then disconnected after
//! connected, then timestamp. An event of an older connection than the one recorded therefore
//! never changes presence when the two are close in time — a session taken over by a reconnect
//! (`DUPLICATE_CLIENTID`, stamped after the new connect) cannot mark the new session offline.

use serde::{Deserialize, Serialize};

use crate::ids::ThingName;

/// A lifecycle event's kind (`eventType`), the last level of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEvent {
    /// The client connected (`$aws/events/presence/connected/<clientId>`).
    Connected,
    /// The client disconnected, or AWS IoT closed its connection
    /// (`$aws/events/presence/disconnected/<clientId>`).
    Disconnected,
}

/// A connect/disconnect lifecycle event, as AWS IoT publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleEvent {
    /// The MQTT client id of the connection (`clientId`).
    pub client_id: String,
    /// Milliseconds since the epoch.
    pub timestamp: u64,
    /// Whether the client connected or disconnected (`eventType`).
    pub event_type: PresenceEvent,
    /// AWS IoT's id of the MQTT session (`sessionIdentifier`); `None` when the event has none.
    #[serde(default)]
    pub session_identifier: Option<String>,
    /// The credential that authenticated the connection (`principalIdentifier`): for an X.509
    /// client, its certificate id. `None` when the event has none.
    #[serde(default)]
    pub principal_identifier: Option<String>,
    /// The client's IP address (`ipAddress`); `None` when the event has none.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// The connection's number: required, since it is the only reliable order between a client's
    /// connections.
    pub version_number: u64,
    /// On a disconnect, whether the client closed the connection itself
    /// (`clientInitiatedDisconnect`); `None` on a connect or when absent.
    #[serde(default)]
    pub client_initiated_disconnect: Option<bool>,
    /// On a disconnect, AWS IoT's reason (`disconnectReason`), e.g. `CLIENT_INITIATED_DISCONNECT`,
    /// `MQTT_KEEP_ALIVE_TIMEOUT` or `DUPLICATE_CLIENTID`; `None` on a connect or when absent.
    #[serde(default)]
    pub disconnect_reason: Option<String>,
    /// Present only when the client connected with the exclusive-thing feature.
    #[serde(default)]
    pub thing_name: Option<String>,
}

/// What recording a lifecycle event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The registry holds it now.
    Applied,
    /// The registry holds a later (or the same) event: nothing changed.
    Stale,
    /// Its principal is not the certificate recorded for the thing at provisioning: nothing
    /// changed.
    ForeignPrincipal,
    /// No certificate is recorded for the thing (none provisioned it, or it was provisioned
    /// before Shoal recorded certificates): nothing changed.
    Unrecorded,
}

/// Timestamps are clamped below this (ms, the year 5138) so the order fits one DynamoDB number:
/// u64::MAX × 2 × 10^14 has 34 digits, DynamoDB keeps 38.
const TIMESTAMP_SPAN: u128 = 100_000_000_000_000;

/// Within this many ms of each other, two events of a client are ordered by connection
/// (`versionNumber`), not by their approximate timestamps; further apart, the timestamp decides.
/// Well above the timestamps' error (seconds to a couple of minutes), well below the hour of
/// disconnection after which AWS resets `versionNumber` (no reset can fall inside it).
pub const REORDER_WINDOW_MS: u64 = 15 * 60 * 1000;

/// Whether `event` replaces the recorded event, given the recorded one's timestamp and
/// [`order`](LifecycleEvent::order) (`None`: nothing recorded). The device table's conditional
/// write states the same rule (`DeviceTable::record_presence`).
pub fn supersedes(event: &LifecycleEvent, recorded: Option<(u64, u128)>) -> bool {
    let Some((recorded_ts, recorded_order)) = recorded else {
        return true;
    };
    if recorded_ts < event.timestamp.saturating_sub(REORDER_WINDOW_MS) {
        return true;
    }
    recorded_ts <= event.timestamp.saturating_add(REORDER_WINDOW_MS)
        && recorded_order < event.order()
}

/// A device that went offline before a cutoff and has not been alerted on (the offline sweep's
/// input, read from the device registry's offline index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineDevice {
    /// Its thing name.
    pub thing: String,
    /// When it went offline (ms since the Unix epoch): the disconnect event's timestamp.
    pub offline_since_ms: u64,
    /// The lifecycle event's `disconnectReason`, when it gave one.
    pub disconnect_reason: Option<String>,
}

/// Why a lifecycle event names no device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// Neither `thingName` nor the client id is a thing name.
    #[error("client {client_id:?} names no thing: {source}")]
    NoThing {
        /// The event's client id.
        client_id: String,
        /// Why the name (`thingName`, else the client id) is not a valid thing name.
        source: crate::ids::IdError,
    },
    /// The event carries no `principalIdentifier`.
    #[error("the event has no principalIdentifier")]
    NoPrincipal,
    /// The principal is not an X.509 certificate id (64 hex digits).
    #[error(
        "principal {principal:?} is not a certificate id (a device connects with its certificate)"
    )]
    NotACertificate {
        /// The `principalIdentifier` the event carried.
        principal: String,
    },
}

impl LifecycleEvent {
    /// The thing this event is about: `thingName` when AWS sends it, else the client id (Shoal's
    /// devices connect with their thing name as client id).
    ///
    /// # Errors
    /// [`LifecycleError::NoThing`] when that name is not a thing name.
    pub fn thing(&self) -> Result<ThingName, LifecycleError> {
        let name = self.thing_name.as_deref().unwrap_or(&self.client_id);
        name.parse().map_err(|source| LifecycleError::NoThing {
            client_id: self.client_id.clone(),
            source,
        })
    }

    /// The certificate id that authenticated the connection: `principalIdentifier`, which for an
    /// X.509 client is the certificate id (64 hex digits).
    ///
    /// # Errors
    /// [`LifecycleError::NoPrincipal`], or [`LifecycleError::NotACertificate`] for a principal
    /// that is no certificate id (IAM, Cognito, a custom authorizer): such a connection is no
    /// device of the manifest.
    pub fn certificate_principal(&self) -> Result<&str, LifecycleError> {
        let principal = self
            .principal_identifier
            .as_deref()
            .ok_or(LifecycleError::NoPrincipal)?;
        if principal.len() == 64 && principal.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(principal)
        } else {
            Err(LifecycleError::NotACertificate {
                principal: principal.to_owned(),
            })
        }
    }

    /// Order of one client's events close in time: connection (`versionNumber`), then
    /// disconnected after connected, then timestamp (see [`supersedes`]).
    pub fn order(&self) -> u128 {
        let rank = match self.event_type {
            PresenceEvent::Connected => 0,
            PresenceEvent::Disconnected => 1,
        };
        let timestamp = u128::from(self.timestamp).min(TIMESTAMP_SPAN - 1);
        (u128::from(self.version_number) * 2 + rank) * TIMESTAMP_SPAN + timestamp
    }
}

/// The message published when a device stayed offline longer than the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineAlert {
    /// The alert's kind: always `device_offline`.
    pub alert: String,
    /// The thing that is offline.
    pub thing_name: String,
    /// When the device went offline (ms since the epoch).
    pub offline_since_ms: u64,
    /// How long it had been offline when the alert was made (whole seconds).
    pub offline_for_s: u64,
    /// The offline time after which an alert is due (seconds).
    pub threshold_s: u64,
    /// The `disconnectReason` of the disconnect that took it offline; `None` when unknown (then
    /// left out of the JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<String>,
}

impl OfflineAlert {
    /// An alert for `thing`, offline since `offline_since_ms` and seen offline at `now_ms` (both
    /// ms since the epoch); `offline_for_s` is their difference in whole seconds (0 if `now_ms`
    /// is earlier).
    pub fn new(
        thing: &str,
        offline_since_ms: u64,
        now_ms: u64,
        threshold_s: u64,
        disconnect_reason: Option<String>,
    ) -> Self {
        Self {
            alert: "device_offline".into(),
            thing_name: thing.into(),
            offline_since_ms,
            offline_for_s: now_ms.saturating_sub(offline_since_ms) / 1000,
            threshold_s,
            disconnect_reason,
        }
    }

    /// `<prefix>/offline/<thing>`.
    pub fn topic(&self, prefix: &str) -> String {
        format!(
            "{}/offline/{}",
            prefix.trim_end_matches('/'),
            self.thing_name
        )
    }
}

/// The offline index is split in this many partitions so that a fleet disconnecting at once
/// does not write one hot partition.
pub const OFFLINE_SHARDS: u32 = 16;

/// The offline-index partition of a thing (FNV-1a: stable across processes and releases).
pub fn offline_shard(thing: &str) -> u32 {
    let hash = thing.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % OFFLINE_SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, ts: u64, version: u64) -> LifecycleEvent {
        serde_json::from_value(json!({
            "clientId": "d-1", "timestamp": ts, "eventType": kind,
            "sessionIdentifier": "s", "principalIdentifier": "p", "versionNumber": version
        }))
        .unwrap()
    }

    #[test]
    fn order_is_connection_then_disconnect_last_then_time() {
        // A later connection wins whatever the timestamps say (they are approximate).
        assert!(event("connected", 1, 42).order() > event("disconnected", 9_000, 41).order());
        // Within one connection, its disconnect follows its connect.
        assert!(event("disconnected", 1, 7).order() > event("connected", 5, 7).order());
        assert!(event("connected", 2, 7).order() > event("connected", 1, 7).order());
        assert_eq!(
            event("connected", 1, 1).order(),
            event("connected", 1, 1).order()
        );
        let huge = event("disconnected", u64::MAX, u64::MAX).order();
        assert!(huge.to_string().len() <= 38, "fits a DynamoDB number");
        assert!(huge > event("connected", u64::MAX, u64::MAX).order());
    }

    #[test]
    fn far_apart_the_time_decides_close_together_the_connection() {
        let recorded = |e: &LifecycleEvent| Some((e.timestamp, e.order()));
        let t = 1_800_000_000_000;
        // AWS reset the version after an hour offline: the new connection is newer.
        let gone = event("disconnected", t, 7);
        assert!(supersedes(
            &event("connected", t + 2 * 3_600_000, 0),
            recorded(&gone)
        ));
        // …and the old connection's late events never come back over it.
        let back = event("connected", t + 2 * 3_600_000, 0);
        assert!(!supersedes(&event("disconnected", t, 7), recorded(&back)));
        assert!(!supersedes(
            &event("connected", t - 60_000, 7),
            recorded(&back)
        ));
        // Close together: the connection decides whatever the timestamps say.
        let b = event("connected", t + 600_000, 42);
        assert!(!supersedes(
            &event("disconnected", t + 600_250, 41),
            recorded(&b)
        ));
        assert!(supersedes(
            &event("disconnected", t + 599_000, 42),
            recorded(&b)
        ));
        assert!(supersedes(&b, None));
        // At exactly the window's edge the connection still decides; one ms past it, the time.
        let edge = event("connected", t + REORDER_WINDOW_MS, 3);
        assert!(!supersedes(&edge, recorded(&event("connected", t, 4))));
        let past = event("connected", t + REORDER_WINDOW_MS + 1, 3);
        assert!(supersedes(&past, recorded(&event("connected", t, 4))));
        assert!(!supersedes(&event("connected", t, 4), recorded(&past)));
        assert!(!supersedes(&b, recorded(&b)), "a duplicate changes nothing");
    }

    #[test]
    fn the_version_number_is_required() {
        let err = serde_json::from_value::<LifecycleEvent>(json!({
            "clientId": "d-1", "timestamp": 1, "eventType": "connected"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("versionNumber"), "{err}");
    }

    #[test]
    fn aws_sample_disconnect_parses() {
        let e: LifecycleEvent = serde_json::from_value(json!({
            "clientId": "d-1", "timestamp": 1_573_002_340_451u64, "eventType": "disconnected",
            "clientInitiatedDisconnect": true, "sessionIdentifier": "00000000-0000-0000-0000-000000000000",
            "principalIdentifier": "000000000000/ABCDEFGHIJKLMNOPQRSTU:some-user/ABCDEFGHIJKLMNOPQRSTU:some-user",
            "disconnectReason": "CLIENT_INITIATED_DISCONNECT", "versionNumber": 0
        }))
        .unwrap();
        assert_eq!(e.event_type, PresenceEvent::Disconnected);
        assert_eq!(e.thing().unwrap().as_str(), "d-1");
        let bad = LifecycleEvent {
            client_id: "a b".into(),
            ..e
        };
        assert!(bad.thing().unwrap_err().to_string().contains("a b"));
    }

    #[test]
    fn alerts_name_the_thing_and_duration() {
        let alert = OfflineAlert::new(
            "d-1",
            1_000,
            3_601_000,
            3_600,
            Some("MQTT_KEEP_ALIVE_TIMEOUT".into()),
        );
        assert_eq!(alert.offline_for_s, 3_600);
        assert_eq!(alert.topic("shoal/alerts/"), "shoal/alerts/offline/d-1");
        assert!(offline_shard("d-1") < OFFLINE_SHARDS);
        assert_eq!(offline_shard("d-1"), offline_shard("d-1"));
    }
}

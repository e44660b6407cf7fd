//! AWS IoT Core's lifecycle events: a message on `$aws/events/presence/connected/<clientId>` when a
//! client connects and on `$aws/events/presence/disconnected/<clientId>` when its connection ends
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/life-cycle-events.html>).
//!
//! The documents carry `clientId`, `timestamp` (ms since the Unix epoch), `eventType`
//! (`connected` / `disconnected`), `sessionIdentifier` (one UUID per connection),
//! `principalIdentifier` (the certificate id), `ipAddress` (connected only) and `versionNumber`;
//! a disconnection adds `clientInitiatedDisconnect` and `disconnectReason`. AWS says the version
//! number is monotonically increasing per client id so that subscribers can order the events
//! (which may arrive out of order or twice): here it comes from one process-wide counter, so it
//! increases for every client id too; both events of one connection carry the same number, as in
//! AWS's examples. Client ids holding `#` or `+` get no events, as on AWS.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use crate::wire::Close;

/// Why a connection ended, as `disconnectReason` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client failed authentication or authorisation (a certificate made inactive, a policy
    /// denial that closes an MQTT 3.1.1 connection).
    AuthError,
    /// The client sent DISCONNECT.
    ClientInitiatedDisconnect,
    /// The client broke the protocol or a limit (a malformed packet, QoS 2, a payload too large).
    ClientError,
    /// The network connection ended without DISCONNECT, or the client stopped reading.
    ConnectionLost,
    /// Another connection with the same client id took over.
    DuplicateClientId,
    /// Silent past 1.5 times its keep-alive.
    MqttKeepAliveTimeout,
    /// The broker ended the session.
    ServerInitiatedDisconnect,
}

impl DisconnectReason {
    /// The name AWS gives it (`MQTT_KEEP_ALIVE_TIMEOUT`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthError => "AUTH_ERROR",
            Self::ClientInitiatedDisconnect => "CLIENT_INITIATED_DISCONNECT",
            Self::ClientError => "CLIENT_ERROR",
            Self::ConnectionLost => "CONNECTION_LOST",
            Self::DuplicateClientId => "DUPLICATE_CLIENTID",
            Self::MqttKeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            Self::ServerInitiatedDisconnect => "SERVER_INITIATED_DISCONNECT",
        }
    }

    /// The reason for a connection the broker closes with `close`.
    pub fn of_close(close: Close) -> Self {
        match close {
            Close::TakenOver => Self::DuplicateClientId,
            Close::KeepAlive => Self::MqttKeepAliveTimeout,
            Close::NotAuthorized => Self::AuthError,
            Close::QoS2 | Close::TopicInvalid | Close::ProtocolError | Close::PacketTooLarge => {
                Self::ClientError
            }
        }
    }
}

/// The version numbers handed to connections: one process-wide, increasing counter.
static VERSION: AtomicU64 = AtomicU64::new(0);

/// One connection, as its lifecycle events describe it.
#[derive(Debug, Clone)]
pub struct Session {
    pub client_id: String,
    /// `sessionIdentifier`: a UUID of this connection.
    pub session_identifier: String,
    /// `principalIdentifier`: the certificate id.
    pub principal_identifier: String,
    pub ip_address: IpAddr,
    /// `versionNumber`, the same in both events of the connection.
    pub version_number: u64,
}

impl Session {
    /// A new connection of `client_id` with certificate `certificate_id` from `ip_address`; its
    /// version number is greater than every earlier connection's.
    pub fn new(client_id: &str, certificate_id: &str, ip_address: IpAddr) -> Self {
        Self {
            client_id: client_id.to_owned(),
            session_identifier: uuid::Uuid::new_v4().to_string(),
            principal_identifier: certificate_id.to_owned(),
            ip_address,
            version_number: VERSION.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Whether AWS publishes events for this client id (not when it holds `#` or `+`).
    fn has_events(&self) -> bool {
        !self.client_id.contains(['#', '+'])
    }

    /// The `connected` event: (topic, JSON payload); `None` for a client id without events.
    pub fn connected(&self, timestamp_ms: i64) -> Option<(String, Vec<u8>)> {
        self.has_events().then(|| {
            let document = json!({
                "clientId": self.client_id,
                "timestamp": timestamp_ms,
                "eventType": "connected",
                "sessionIdentifier": self.session_identifier,
                "principalIdentifier": self.principal_identifier,
                "ipAddress": self.ip_address.to_string(),
                "versionNumber": self.version_number,
            });
            (
                format!("$aws/events/presence/connected/{}", self.client_id),
                document.to_string().into_bytes(),
            )
        })
    }

    /// The `disconnected` event: (topic, JSON payload); `None` for a client id without events.
    pub fn disconnected(
        &self,
        timestamp_ms: i64,
        reason: DisconnectReason,
    ) -> Option<(String, Vec<u8>)> {
        self.has_events().then(|| {
            let document = json!({
                "clientId": self.client_id,
                "timestamp": timestamp_ms,
                "eventType": "disconnected",
                "clientInitiatedDisconnect": reason == DisconnectReason::ClientInitiatedDisconnect,
                "sessionIdentifier": self.session_identifier,
                "principalIdentifier": self.principal_identifier,
                "disconnectReason": reason.as_str(),
                "versionNumber": self.version_number,
            });
            (
                format!("$aws/events/presence/disconnected/{}", self.client_id),
                document.to_string().into_bytes(),
            )
        })
    }
}

/// Now, in milliseconds since the Unix epoch (`shoal-core`'s clock).
pub use shoal_core::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn session(client_id: &str) -> Session {
        Session::new(client_id, "abc123", "192.0.2.10".parse().unwrap())
    }

    #[test]
    fn events_carry_aws_s_fields_and_one_version_per_connection() {
        let first = session("dev-1");
        let (topic, payload) = first.connected(1_795_600_000_000).unwrap();
        assert_eq!(topic, "$aws/events/presence/connected/dev-1");
        let connected: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(connected["clientId"], "dev-1");
        assert_eq!(connected["timestamp"], 1_795_600_000_000_i64);
        assert_eq!(connected["eventType"], "connected");
        assert_eq!(connected["principalIdentifier"], "abc123");
        assert_eq!(connected["ipAddress"], "192.0.2.10");
        assert_eq!(connected["sessionIdentifier"].as_str().unwrap().len(), 36);
        assert!(connected.get("disconnectReason").is_none());

        let (topic, payload) = first
            .disconnected(1_795_600_900_000, DisconnectReason::MqttKeepAliveTimeout)
            .unwrap();
        assert_eq!(topic, "$aws/events/presence/disconnected/dev-1");
        let disconnected: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(disconnected["eventType"], "disconnected");
        assert_eq!(disconnected["disconnectReason"], "MQTT_KEEP_ALIVE_TIMEOUT");
        assert_eq!(disconnected["clientInitiatedDisconnect"], false);
        assert_eq!(disconnected["versionNumber"], connected["versionNumber"]);
        assert_eq!(
            disconnected["sessionIdentifier"],
            connected["sessionIdentifier"]
        );

        let second = session("dev-1");
        assert!(second.version_number > first.version_number);
        assert_ne!(second.session_identifier, first.session_identifier);
        let (_, payload) = second
            .disconnected(0, DisconnectReason::ClientInitiatedDisconnect)
            .unwrap();
        let disconnected: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(disconnected["clientInitiatedDisconnect"], true);
    }

    #[test]
    fn client_ids_with_mqtt_wildcards_get_no_events() {
        for id in ["a#", "+b", "c/+/d"] {
            assert!(session(id).connected(0).is_none(), "{id}");
            assert!(
                session(id)
                    .disconnected(0, DisconnectReason::ConnectionLost)
                    .is_none()
            );
        }
    }

    #[test]
    fn a_closed_connection_s_reason_follows_why_it_was_closed() {
        assert_eq!(
            DisconnectReason::of_close(Close::TakenOver).as_str(),
            "DUPLICATE_CLIENTID"
        );
        assert_eq!(
            DisconnectReason::of_close(Close::NotAuthorized).as_str(),
            "AUTH_ERROR"
        );
        assert_eq!(
            DisconnectReason::of_close(Close::PacketTooLarge).as_str(),
            "CLIENT_ERROR"
        );
    }
}

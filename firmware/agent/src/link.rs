//! The MQTT connection a device holds: rumqttc over rustls, MQTT 3.1.1 or 5, with the device's
//! X.509 certificate, to AWS IoT Core (port 8883, or 443 with ALPN `x-amzn-mqtt-ca`:
//! <https://docs.aws.amazon.com/iot/latest/developerguide/protocols.html>) or the local IoT Core.
//!
//! One task polls rumqttc's event loop and hands over what the device acts on ([`LinkEvent`]).
//! A lost connection is retried with full-jitter backoff ([`Backoff`], from `shoal-firmware`) so
//! a fleet that lost the broker at once does not come back at once (the thundering herd).

use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rumqttc::{TlsConfiguration, Transport};
use shoal_firmware::sampling::Backoff;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a TCP + TLS + CONNECT may take before it counts as failed, s (rumqttc's default
/// of 5 s turned a slow broker into a reconnect storm: every retry redoes the work).
pub const CONNECT_TIMEOUT_S: u64 = 30;

/// QoS 1 publishes a connection keeps unacknowledged at most (AWS IoT Core allows 100; the
/// device's telemetry waits for a batch's PUBACKs before the next, so few are ever out).
pub const INFLIGHT: u16 = 32;

/// The ALPN protocol AWS IoT Core's port 443 takes for MQTT over TLS with a client certificate.
pub const AWS_MQTT_ALPN: &[u8] = b"x-amzn-mqtt-ca";

/// The MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "5")]
    V5,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The broker's host (`<prefix>-ats.iot.<region>.amazonaws.com`, `localhost`).
    pub host: String,
    /// 8883, or 443 with [`Endpoint::alpn`].
    pub port: u16,
    /// Offer ALPN `x-amzn-mqtt-ca` (AWS IoT Core's port 443 needs it).
    pub alpn: bool,
    /// The CA certificates (PEM) the broker's certificate is checked against.
    pub ca_pem: Vec<u8>,
    /// The protocol version.
    pub version: MqttVersion,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Reconnect backoff (full jitter).
    pub backoff: Backoff,
}

/// What the connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// CONNACK accepted: (re)subscribe and resync.
    Connected,
    /// A SUBACK: every filter of the SUBSCRIBE granted (`false`: one was refused).
    Subscribed(bool),
    /// A message on a subscribed topic.
    Message {
        /// The topic.
        topic: String,
        /// The payload.
        payload: Bytes,
    },
    /// A PUBACK of a QoS 1 publish.
    PubAck,
    /// The connection is lost (or refused): why. rumqttc reconnects after a jittered pause.
    Disconnected(String),
}

#[derive(Clone)]
enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A device's MQTT connection.
pub struct Link {
    client: Client,
    events: mpsc::Receiver<LinkEvent>,
    task: JoinHandle<()>,
}

fn transport(endpoint: &Endpoint, certificate: &[u8], key: &[u8]) -> Transport {
    Transport::tls_with_config(TlsConfiguration::Simple {
        ca: endpoint.ca_pem.clone(),
        alpn: endpoint.alpn.then(|| vec![AWS_MQTT_ALPN.to_vec()]),
        client_auth: Some((certificate.to_vec(), key.to_vec())),
    })
}

impl Link {
    /// Connects `client_id` with `certificate` and `key` (PEM) and keeps the connection up until
    /// the link is dropped; `seed` seeds the reconnect jitter.
    pub fn connect(
        endpoint: &Endpoint,
        client_id: &str,
        certificate: &[u8],
        key: &[u8],
        seed: u64,
    ) -> Self {
        let (sender, events) = mpsc::channel(256);
        let backoff = endpoint.backoff;
        let (client, task) = match endpoint.version {
            MqttVersion::V311 => {
                let mut options =
                    rumqttc::MqttOptions::new(client_id, endpoint.host.as_str(), endpoint.port);
                options.set_transport(transport(endpoint, certificate, key));
                options.set_keep_alive(endpoint.keep_alive);
                options.set_max_packet_size(128 * 1024, 128 * 1024);
                options.set_inflight(INFLIGHT);
                let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
                events
                    .network_options
                    .set_connection_timeout(CONNECT_TIMEOUT_S);
                (
                    Client::V311(client),
                    tokio::spawn(poll(events, sender, backoff, seed)),
                )
            }
            MqttVersion::V5 => {
                let mut options =
                    rumqttc::v5::MqttOptions::new(client_id, endpoint.host.as_str(), endpoint.port);
                options.set_transport(transport(endpoint, certificate, key));
                options.set_keep_alive(endpoint.keep_alive);
                options.set_max_packet_size(Some(128 * 1024));
                // rumqttc sizes its table of unacknowledged publishes by this limit: left
                // unset it is 65,535 slots, ~13 MB a connection (found by the simulator).
                options.set_outgoing_inflight_upper_limit(INFLIGHT);
                options.set_connection_timeout(CONNECT_TIMEOUT_S);
                let (client, events) = rumqttc::v5::AsyncClient::new(options, 64);
                (
                    Client::V5(client),
                    tokio::spawn(poll(events, sender, backoff, seed)),
                )
            }
        };
        Self {
            client,
            events,
            task,
        }
    }

    /// The next event; `None` once the polling task ended.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }

    /// Subscribes to `filters` in one SUBSCRIBE (AWS IoT Core takes at most 8), QoS 1.
    ///
    /// # Errors
    /// The client's request queue is closed.
    pub async fn subscribe(&self, filters: &[String]) -> Result<(), String> {
        match &self.client {
            Client::V311(client) => {
                client
                    .subscribe_many(filters.iter().map(|f| {
                        rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce)
                    }))
                    .await
                    .map_err(|e| e.to_string())
            }
            Client::V5(client) => client
                .subscribe_many(filters.iter().map(|f| {
                    rumqttc::v5::mqttbytes::v5::Filter::new(
                        f.clone(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    )
                }))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Publishes `payload` on `topic`, QoS 1 (`acknowledged`: a [`LinkEvent::PubAck`] follows)
    /// or QoS 0.
    ///
    /// # Errors
    /// The client's request queue is closed.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        acknowledged: bool,
    ) -> Result<(), String> {
        match &self.client {
            Client::V311(client) => {
                let qos = if acknowledged {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                client.publish(topic, qos, false, payload).await
            }
            .map_err(|e| e.to_string()),
            Client::V5(client) => {
                let qos = if acknowledged {
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                } else {
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce
                };
                client.publish(topic, qos, false, payload).await
            }
            .map_err(|e| e.to_string()),
        }
    }

    /// Disconnects cleanly (DISCONNECT sent, so no will and an orderly lifecycle event).
    pub async fn disconnect(mut self) {
        let sent = match &self.client {
            Client::V311(client) => client.disconnect().await.is_ok(),
            Client::V5(client) => client.disconnect().await.is_ok(),
        };
        if sent {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        }
        self.task.abort();
    }

    /// Drops the connection without a word (a power loss, a network cut).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Cuts the connection without a word, keeping the link: [`Link::next`] hands over what
    /// was already received, then `None`.
    pub fn abort_in_place(&mut self) {
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one poll of rumqttc's event loop means for the device.
enum Polled {
    /// Hand this over.
    Event(LinkEvent),
    /// Nothing the device acts on.
    Skip,
    /// The connection is over for good (our DISCONNECT went out, or the client is gone).
    Done,
    /// The connection was lost or refused: why (reconnect after a pause).
    Lost(String),
}

/// One MQTT version's event loop, read as [`Polled`].
trait Poll: Send {
    fn next(&mut self) -> impl std::future::Future<Output = Polled> + Send;
}

impl Poll for rumqttc::EventLoop {
    async fn next(&mut self) -> Polled {
        use rumqttc::{ConnectReturnCode, Event, Outgoing, Packet, SubscribeReasonCode};
        Polled::Event(match self.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code == ConnectReturnCode::Success {
                    LinkEvent::Connected
                } else {
                    LinkEvent::Disconnected(format!("CONNACK refused: {:?}", ack.code))
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => LinkEvent::Subscribed(
                ack.return_codes
                    .iter()
                    .all(|c| !matches!(c, SubscribeReasonCode::Failure)),
            ),
            Ok(Event::Incoming(Packet::Publish(publish))) => LinkEvent::Message {
                topic: publish.topic,
                payload: publish.payload,
            },
            Ok(Event::Incoming(Packet::PubAck(_))) => LinkEvent::PubAck,
            Ok(Event::Incoming(Packet::Disconnect)) => {
                LinkEvent::Disconnected("the broker disconnected".into())
            }
            Ok(Event::Outgoing(Outgoing::Disconnect))
            | Err(rumqttc::ConnectionError::RequestsDone) => return Polled::Done,
            Ok(_) => return Polled::Skip,
            Err(e) => return Polled::Lost(e.to_string()),
        })
    }
}

impl Poll for rumqttc::v5::EventLoop {
    async fn next(&mut self) -> Polled {
        use rumqttc::Outgoing;
        use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, SubscribeReasonCode};
        use rumqttc::v5::{ConnectionError, Event};
        Polled::Event(match self.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code == ConnectReturnCode::Success {
                    LinkEvent::Connected
                } else {
                    LinkEvent::Disconnected(format!("CONNACK refused: {:?}", ack.code))
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => LinkEvent::Subscribed(
                ack.return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
            ),
            Ok(Event::Incoming(Packet::Publish(publish))) => LinkEvent::Message {
                topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                payload: publish.payload,
            },
            Ok(Event::Incoming(Packet::PubAck(_))) => LinkEvent::PubAck,
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                LinkEvent::Disconnected(format!("the broker disconnected: {:?}", d.reason_code))
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return Polled::Done;
            }
            Ok(_) => return Polled::Skip,
            Err(e) => return Polled::Lost(e.to_string()),
        })
    }
}

/// Polls `events` until the connection is over for good, handing events to `sender`; a lost
/// connection is reported and retried after a full-jitter pause (reset by a CONNACK).
async fn poll(mut events: impl Poll, sender: mpsc::Sender<LinkEvent>, backoff: Backoff, seed: u64) {
    let mut random = StdRng::seed_from_u64(seed);
    let mut attempt: u32 = 0;
    loop {
        let event = match events.next().await {
            Polled::Event(event) => event,
            Polled::Skip => continue,
            Polled::Done => return,
            Polled::Lost(why) => {
                tracing::debug!(error = %why, "MQTT connection lost or refused");
                if sender.send(LinkEvent::Disconnected(why)).await.is_err() {
                    return;
                }
                let delay = backoff.delay_ms(attempt, random.random::<u32>());
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                continue;
            }
        };
        if event == LinkEvent::Connected {
            attempt = 0;
        }
        if sender.send(event).await.is_err() {
            return;
        }
    }
}

//! MQTT 5 clients of the local IoT Core (rumqttc's v5 client over rustls, as AWS's device SDKs v2
//! connect by default), shared by the `iot_core*` tests.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::local;

/// A registered, active device certificate with an allow-all policy: (PEM, key PEM).
pub async fn certificate() -> (Vec<u8>, Vec<u8>) {
    let (_, cert, key) = local::device_certificate(true).await;
    (cert, key)
}

/// Options for `client_id` with the device's certificate (PEM, key PEM) on the local IoT Core's
/// TLS port; keep-alive 30 s.
pub fn options(client_id: &str, (cert, key): &(Vec<u8>, Vec<u8>)) -> MqttOptions {
    let (_, port, ca) = local::iot_core();
    let mut options = MqttOptions::new(client_id, "localhost", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth: Some((cert.clone(), key.clone())),
    }));
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Polls `events` in a task of its own and hands over every PUBLISH it receives.
pub fn forward(mut events: EventLoop) -> mpsc::UnboundedReceiver<Publish> {
    let (sender, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event {
                let _ = sender.send(publish);
            }
        }
    });
    received
}

/// The next PUBLISH `forward` handed over, within 10 s.
pub async fn next(received: &mut mpsc::UnboundedReceiver<Publish>) -> Publish {
    tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("a message within 10 s")
        .expect("the connection is open")
}

/// A connected client whose incoming packets are read by a task of its own.
pub struct Client {
    /// The client, to publish and subscribe with.
    pub client: AsyncClient,
    packets: mpsc::UnboundedReceiver<Packet>,
}

impl Client {
    /// Connects `client_id` with `device`'s certificate and waits for a successful CONNACK.
    pub async fn connect(client_id: &str, device: &(Vec<u8>, Vec<u8>)) -> Self {
        Self::connect_with(options(client_id, device)).await
    }

    /// Connects with `options` (another endpoint than the stack's) and waits for a successful
    /// CONNACK.
    pub async fn connect_with(options: MqttOptions) -> Self {
        let (client, mut events) = AsyncClient::new(options, 64);
        let (sender, packets) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(packet) = event
                    && sender.send(packet).is_err()
                {
                    return;
                }
            }
        });
        let mut this = Self { client, packets };
        this.until(|p| matches!(p, Packet::ConnAck(_)).then_some(()))
            .await;
        this
    }

    /// Reads packets until `wanted` returns something; within 10 s.
    pub async fn until<T>(&mut self, mut wanted: impl FnMut(&Packet) -> Option<T>) -> T {
        let wait = async {
            loop {
                let packet = self.packets.recv().await.expect("the connection is open");
                if let Some(found) = wanted(&packet) {
                    return found;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("within 10 s")
    }

    /// Subscribes to `filter` at QoS 1 and waits for its SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("SUBSCRIBE queued");
        self.until(|p| matches!(p, Packet::SubAck(_)).then_some(()))
            .await;
    }

    /// Publishes `payload` on `topic` at QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("PUBLISH queued");
    }

    /// The reason of the next PUBACK that is not a success (a refused publish).
    pub async fn refused_puback(&mut self) -> PubAckReason {
        self.until(|p| match p {
            Packet::PubAck(ack) if ack.reason != PubAckReason::Success => Some(ack.reason),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH: its topic and its payload read as JSON.
    pub async fn next_json(&mut self) -> (String, Value) {
        self.until(|p| match p {
            Packet::Publish(p) => Some((
                String::from_utf8_lossy(&p.topic).into_owned(),
                serde_json::from_slice(&p.payload).expect("a JSON payload"),
            )),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH on `topic` (others are skipped), read as JSON.
    pub async fn next_on(&mut self, topic: &str) -> Value {
        loop {
            let (on, document) = self.next_json().await;
            if on == topic {
                return document;
            }
        }
    }
}

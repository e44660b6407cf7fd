//! The local IoT Core with MQTT 5 clients (rumqttc's v5 client over rustls), as AWS IoT's device
//! SDKs v2 connect by default: publish properties travel to MQTT 5 subscribers, MQTT 3.1.1 and 5
//! clients talk to each other, and the session expiry interval decides whether a session outlives
//! its connection.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::mqtt5::{certificate, forward, next, options};
use tokio::sync::mpsc;

/// Polls until CONNACK; returns its session-present flag and the server's keep-alive.
async fn connack(events: &mut EventLoop) -> (bool, Option<u16>) {
    let wait = async {
        loop {
            match events.poll().await.expect("connected") {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    return (
                        ack.session_present,
                        ack.properties.and_then(|p| p.server_keep_alive),
                    );
                }
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("CONNACK within 20 s")
}

#[tokio::test]
async fn mqtt5_messages_keep_their_properties_and_reach_mqtt311_clients_too() {
    let prefix = unique_name("v5");
    let (subscriber, mut events) =
        AsyncClient::new(options(&unique_name("sub"), &certificate().await), 16);
    let (_, server_keep_alive) = connack(&mut events).await;
    assert_eq!(
        server_keep_alive,
        Some(30),
        "the keep-alive the broker applies"
    );
    let mut inbox = forward(events);
    subscriber
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (publisher, mut events) =
        AsyncClient::new(options(&unique_name("pub"), &certificate().await), 16);
    connack(&mut events).await;
    let _publisher_events = forward(events);
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some(format!("{prefix}/reply")),
        correlation_data: Some(Bytes::from_static(b"req-1")),
        user_properties: vec![("trace".into(), "abc".into())],
        ..PublishProperties::default()
    };
    publisher
        .publish_with_properties(
            format!("{prefix}/cmd"),
            QoS::AtLeastOnce,
            false,
            b"{\"on\":true}".to_vec(),
            properties.clone(),
        )
        .await
        .unwrap();
    let got = next(&mut inbox).await;
    assert_eq!(&got.topic[..], format!("{prefix}/cmd").as_bytes());
    assert_eq!(&got.payload[..], b"{\"on\":true}");
    let received = got.properties.expect("properties travel with the message");
    assert_eq!(received.content_type, properties.content_type);
    assert_eq!(received.response_topic, properties.response_topic);
    assert_eq!(received.correlation_data, properties.correlation_data);
    assert_eq!(received.user_properties, properties.user_properties);

    // An MQTT 3.1.1 client on the same broker receives it too, without properties.
    let (v4_client, mut v4_events) = rumqttc::AsyncClient::new(
        {
            let (_, port, ca) = local::iot_core();
            let device = certificate().await;
            let mut o = rumqttc::MqttOptions::new(unique_name("v4"), "localhost", port);
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: Some(device),
            }));
            o
        },
        16,
    );
    let (sender, mut v4_inbox) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = v4_events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let _ = sender.send(p);
            }
        }
    });
    v4_client
        .subscribe(format!("{prefix}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher
        .publish(
            format!("{prefix}/to-both"),
            QoS::AtLeastOnce,
            false,
            b"hi".to_vec(),
        )
        .await
        .unwrap();
    let v4_got = tokio::time::timeout(Duration::from_secs(10), v4_inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v4_got.topic, format!("{prefix}/to-both"));
    assert_eq!(&next(&mut inbox).await.payload[..], b"hi");
}

/// A session with a 300 s expiry interval that subscribed to `topic` at QoS 1 and disconnected
/// cleanly; the options to come back with (`clean_start` off).
async fn away_session(topic: &str) -> MqttOptions {
    let device = certificate().await;
    let mut persistent = options(&unique_name("away"), &device);
    persistent.set_session_expiry_interval(Some(300));
    let (client, mut events) = AsyncClient::new(persistent.clone(), 16);
    let (present, _) = connack(&mut events).await;
    assert!(!present);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    // Let the SUBACK and a clean DISCONNECT through.
    for _ in 0..2 {
        let _ = tokio::time::timeout(Duration::from_millis(300), events.poll()).await;
    }
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    persistent.set_clean_start(false);
    persistent
}

/// A connected client to publish with (its incoming messages drained).
async fn publisher() -> AsyncClient {
    let (publisher, mut events) =
        AsyncClient::new(options(&unique_name("pub"), &certificate().await), 16);
    connack(&mut events).await;
    drop(forward(events));
    publisher
}

#[tokio::test]
async fn a_session_with_an_expiry_interval_keeps_qos1_messages_while_its_client_is_away() {
    let topic = unique_name("away");
    let back = away_session(&topic).await;
    publisher()
        .await
        .publish(&topic, QoS::AtLeastOnce, false, b"while away".to_vec())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (_client, mut events) = AsyncClient::new(back, 16);
    let (present, _) = connack(&mut events).await;
    assert!(present, "the session outlived its connection");
    let mut inbox = forward(events);
    assert_eq!(&next(&mut inbox).await.payload[..], b"while away");
}

#[tokio::test]
async fn an_expired_message_is_not_delivered_and_a_live_one_carries_what_is_left() {
    let topic = unique_name("expiry");
    let back = away_session(&topic).await;
    let publisher = publisher().await;
    let expiring = |seconds| PublishProperties {
        message_expiry_interval: Some(seconds),
        ..PublishProperties::default()
    };
    publisher
        .publish_with_properties(
            &topic,
            QoS::AtLeastOnce,
            false,
            b"short".to_vec(),
            expiring(1),
        )
        .await
        .unwrap();
    publisher
        .publish_with_properties(
            &topic,
            QoS::AtLeastOnce,
            false,
            b"long".to_vec(),
            expiring(600),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let (_client, mut events) = AsyncClient::new(back, 16);
    connack(&mut events).await;
    let mut inbox = forward(events);
    let got = next(&mut inbox).await;
    assert_eq!(
        &got.payload[..],
        b"long",
        "the expired message is not delivered"
    );
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    assert!((590..600).contains(&left), "{left} s left");
}
